"""Partitioned publish: a mart as one CSV per month (or year), a manifest, and the whole file.

A mart opts in with ``meta: {export: csv, partition_by: <date column>,
granularity: month}``. Its post-hook (``export_partitions()`` in
``macros/export_mart.sql``) writes to a local candidate folder,
``<ELT_HOME>/exports/<invocation>/<model>/``, only the partitions whose rows
changed since the last published manifest (``_refreshed_at`` newer than the
manifest's ``refreshed_through``, or every partition of a model without it),
each ``<partition>.csv`` with its header and ordered by the primary key, plus:

    _parts.json    one JSON line per exported partition: rows, first and last date
    _state.json    every live partition, and the model's latest _refreshed_at
    _header.csv    the header line alone

If the model and its tests passed, :func:`publish_partitions` (the
``on-run-end`` publish) then, in this order:

1. PUTs each exported partition to ``marts/<model>/<partition>.csv`` unless
   its bytes equal the published part's (a full refresh leaves unchanged
   months untouched, same ETag);
2. composes ``marts/<model>.csv``, the parts end to end with one header, on
   the server (S3 UploadPartCopy of byte ranges); parts under S3's 5 MiB
   part floor are read and sent as bytes, merged until they reach it;
3. PUTs ``marts/<model>/_manifest.json``, the entry point: every live part
   with its key, ETag, rows, bytes, date range and the run that wrote it;
4. deletes the parts the new manifest no longer lists.

A reader of the manifest who GETs each part with ``If-Match: <its ETag>``
never mixes parts of two runs: a 412 means a newer run is publishing, and the
manifest is to be read again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from loaders import faults
from loaders.errors import StorageError
from loaders.s3 import MARTS_PREFIX, ObjectInfo

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
# S3: every part of a multipart upload but the last is at least 5 MiB.
MIN_PART_BYTES = 5 * 2**20
GRANULARITIES = {"month": "%Y-%m", "year": "%Y", "day": "%Y-%m-%d"}


@dataclass(frozen=True)
class Part:
    """One published partition of a mart, as the manifest lists it.

    Attributes:
        partition: ``2024-01`` (month), ``2024`` (year) or ``2024-01-05`` (day).
        key: ``marts/<model>/<partition>.csv``.
        etag: The object's ETag.
        rows: Data rows (below the header).
        bytes: Object size, header included.
        header_bytes: Size of the header line, its line feed included.
        first: Earliest value of the partition column (ISO date).
        last: Latest value of the partition column (ISO date).
        run_id: The run that wrote this version of the part.
        sha256: sha256 of the part's bytes.
    """

    partition: str
    key: str
    etag: str
    rows: int
    bytes: int
    header_bytes: int
    first: str | None
    last: str | None
    run_id: str
    sha256: str


def manifest_key(model: str) -> str:
    """``marts/<model>/_manifest.json``."""
    return f"{MARTS_PREFIX}{model}/{MANIFEST}"


def part_key(model: str, partition: str) -> str:
    """``marts/<model>/<partition>.csv``."""
    return f"{MARTS_PREFIX}{model}/{partition}.csv"


def read_manifest(client: S3Client, bucket: str, model: str) -> dict[str, Any] | None:
    """The published manifest of ``model``, or ``None`` if there is none yet.

    Raises:
        StorageError: the read failed for another reason than a missing object.
    """
    try:
        body = client.get_object(Bucket=bucket, Key=manifest_key(model))["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise StorageError(f"cannot read s3://{bucket}/{manifest_key(model)}: {exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"cannot read s3://{bucket}/{manifest_key(model)}: {exc}") from exc
    manifest: dict[str, Any] = json.loads(body)
    return manifest


def published_state(client: S3Client, bucket: str, model: str) -> dict[str, Any]:
    """What the post-hook needs from the last manifest: its watermark and partitions.

    Returns:
        ``{"refreshed_through": <ISO timestamp or None>, "partitions": [...]}``;
        no watermark and no partitions when nothing was published yet.
    """
    manifest = read_manifest(client, bucket, model) or {}
    return {
        "refreshed_through": manifest.get("refreshed_through"),
        "partitions": [p["partition"] for p in manifest.get("parts", [])],
    }


def _json_lines(path: Path) -> Iterator[dict[str, Any]]:
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                yield json.loads(line)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as body:
        for chunk in iter(lambda: body.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def publish_partitions(
    client: S3Client, bucket: str, folder: Path, model: str, run_id: str
) -> tuple[list[tuple[ObjectInfo, int | None]], int]:
    """Publish a partitioned mart's candidate folder: changed parts, the whole file, the manifest.

    Args:
        client: S3 client with GetObject, PutObject and DeleteObject on ``marts/*``.
        bucket: The lake bucket.
        folder: ``<ELT_HOME>/exports/<invocation>/<model>/``, from the post-hook.
        model: The mart's name.
        run_id: Recorded in the manifest for the parts written now.

    Returns:
        Every object written, with its rows (``None`` for the manifest), in
        the order written, and the bytes sent to S3 for them (what the server
        copied itself is not sent); the folder is deleted.

    Raises:
        StorageError: a request failed, or a live partition is neither in the
            folder nor in the published manifest. Nothing is deleted then,
            and the previous manifest stays the entry point.
    """
    faults.point("publish")
    state = next(_json_lines(folder / "_state.json"), {})
    live: list[str] = sorted(state.get("live") or [])
    stats = {row["partition"]: row for row in _json_lines(folder / "_parts.json")}
    header = (folder / "_header.csv").read_bytes()
    previous = read_manifest(client, bucket, model) or {}
    published = {p["partition"]: Part(**p) for p in previous.get("parts", [])}
    written: list[tuple[ObjectInfo, int | None]] = []
    sent = 0
    parts: list[Part] = []
    for partition in live:
        path = folder / f"{partition}.csv"
        old = published.get(partition)
        if not path.exists():
            if old is None:
                raise StorageError(
                    f"{model}: partition {partition} was neither exported nor published"
                )
            parts.append(old)
            continue
        sha256 = _sha256(path)
        if old is not None and old.sha256 == sha256:
            parts.append(old)  # the same bytes: the object stays as it is
            continue
        info = _put_file(client, bucket, path, part_key(model, partition))
        sent += info.size
        row = stats.get(partition, {})
        part = Part(
            partition=partition,
            key=info.key,
            etag=info.etag,
            rows=int(row.get("rows") or 0),
            bytes=info.size,
            header_bytes=len(header),
            first=_iso(row.get("first")),
            last=_iso(row.get("last")),
            run_id=run_id,
            sha256=sha256,
        )
        parts.append(part)
        written.append((info, part.rows))
    changed = bool(written) or set(published) != set(live) or "whole" not in previous
    whole_key = f"{MARTS_PREFIX}{model}.csv"
    if changed:
        whole, whole_sent = compose(client, bucket, whole_key, parts, header, folder)
        sent += whole_sent
        written.append((whole, sum(p.rows for p in parts)))
        whole_entry = {"key": whole.key, "etag": whole.etag, "bytes": whole.size}
    else:
        whole_entry = previous["whole"]
    manifest = {
        "model": model,
        "run_id": run_id,
        "published_at": datetime.now(UTC).isoformat(),
        "partition_by": state.get("partition_by"),
        "granularity": state.get("granularity"),
        "refreshed_through": _iso(state.get("refreshed_through")),
        "rows": sum(p.rows for p in parts),
        "bytes": sum(p.bytes for p in parts),
        "whole": whole_entry,
        "parts": [asdict(p) for p in parts],
    }
    body = (json.dumps(manifest, indent=2) + "\n").encode()
    faults.point("manifest")
    written.append(
        (_put_bytes(client, bucket, manifest_key(model), body, "application/json"), None)
    )
    sent += len(body)
    for partition, old in published.items():
        if partition not in live:
            _delete(client, bucket, old.key)
    shutil.rmtree(folder, ignore_errors=True)
    log.info(
        "published %s: %d of %d part(s) written, manifest %s",
        model,
        sum(1 for info, _ in written if info.key.endswith(".csv") and info.key != whole_key),
        len(parts),
        manifest_key(model),
    )
    return written, sent


def _iso(value: Any) -> str | None:
    """An ISO text of a date or timestamp from DuckDB's JSON output."""
    if value is None:
        return None
    return str(value).replace(" ", "T") if ":" in str(value) else str(value)


def compose(
    client: S3Client, bucket: str, key: str, parts: list[Part], header: bytes, folder: Path
) -> tuple[ObjectInfo, int]:
    """Write ``key`` as the ``parts`` end to end with one header, mostly on the server.

    Each part's bytes after its header are a range of its object: a range of
    at least 5 MiB is copied by the server (UploadPartCopy); smaller ones are
    read (from the candidate folder when the part was just exported, else
    from S3) and merged, topped up to 5 MiB from the head of the next range,
    whose rest is copied when it is 5 MiB or more (or the last). A whole file under 10 MiB is
    simply assembled and sent in one PUT.

    Returns:
        The object written, and the bytes sent to S3 for it.

    Raises:
        StorageError: a request failed; an unfinished upload is aborted.
    """
    ranges = [
        (part, 0 if i == 0 else part.header_bytes, part.bytes) for i, part in enumerate(parts)
    ]
    total = sum(end - start for _, start, end in ranges)
    if not parts or total < 2 * MIN_PART_BYTES:
        body = b"".join(_read(client, bucket, part, folder, s, e) for part, s, e in ranges)
        body = body if parts else header
        return _put_bytes(client, bucket, key, body, "text/csv; charset=utf-8"), len(body)
    started = time.monotonic()
    try:
        upload = client.create_multipart_upload(
            Bucket=bucket, Key=key, ContentType="text/csv; charset=utf-8"
        )["UploadId"]
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot start composing s3://{bucket}/{key}: {exc}") from exc
    sent: list[CompletedPartTypeDef] = []
    uploaded = 0
    pending = bytearray()
    try:

        def copy(part: Part, first: int, end: int) -> None:
            copied = client.upload_part_copy(
                Bucket=bucket,
                Key=key,
                UploadId=upload,
                PartNumber=len(sent) + 1,
                CopySource={"Bucket": bucket, "Key": part.key},
                CopySourceIfMatch=part.etag,
                CopySourceRange=f"bytes={first}-{end - 1}",
            )
            sent.append({"PartNumber": len(sent) + 1, "ETag": copied["CopyPartResult"]["ETag"]})

        def flush() -> int:
            response = client.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=upload,
                PartNumber=len(sent) + 1,
                Body=bytes(pending),
            )
            sent.append({"PartNumber": len(sent) + 1, "ETag": response["ETag"]})
            size = len(pending)
            pending.clear()
            return size

        for index, (part, start, end) in enumerate(ranges):
            last = index == len(ranges) - 1
            if pending:
                # Small parts before this one: top them up to 5 MiB from its head.
                take = min(MIN_PART_BYTES - len(pending), end - start)
                pending += _read(client, bucket, part, folder, start, start + take)
                start += take
                if len(pending) >= MIN_PART_BYTES:
                    uploaded += flush()
            if start < end:
                if not pending and (end - start >= MIN_PART_BYTES or last):
                    copy(part, start, end)  # the server copies it: not sent
                else:
                    pending += _read(client, bucket, part, folder, start, end)
            if pending and (last or len(pending) >= MIN_PART_BYTES):
                uploaded += flush()
        done = client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": sent}
        )
    except (ClientError, BotoCoreError) as exc:
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        except (ClientError, BotoCoreError):
            log.warning("could not abort the upload of s3://%s/%s", bucket, key)
        raise StorageError(f"composing s3://{bucket}/{key} failed: {exc}") from exc
    log.info(
        "composed s3://%s/%s from %d part(s) in %.1fs",
        bucket,
        key,
        len(parts),
        time.monotonic() - started,
    )
    return ObjectInfo(key=key, etag=str(done["ETag"]).strip('"'), size=total), uploaded


def _read(client: S3Client, bucket: str, part: Part, folder: Path, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a part: from the candidate file if it is there, else from S3."""
    local = folder / f"{part.partition}.csv"
    if local.exists() and local.stat().st_size == part.bytes:
        with local.open("rb") as body:
            body.seek(start)
            return body.read(end - start)
    try:
        response = client.get_object(
            Bucket=bucket, Key=part.key, IfMatch=part.etag, Range=f"bytes={start}-{end - 1}"
        )
        return bytes(response["Body"].read())
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot read s3://{bucket}/{part.key}: {exc}") from exc


def _put_file(client: S3Client, bucket: str, path: Path, key: str) -> ObjectInfo:
    with path.open("rb") as body:
        return _put_bytes(client, bucket, key, body, "text/csv; charset=utf-8", path.stat().st_size)


def _put_bytes(
    client: S3Client,
    bucket: str,
    key: str,
    body: Any,
    content_type: str,
    size: int | None = None,
) -> ObjectInfo:
    try:
        response = client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"publishing s3://{bucket}/{key} failed: {exc}") from exc
    length = size if size is not None else len(body)
    return ObjectInfo(key=key, etag=response["ETag"].strip('"'), size=length)


def _delete(client: S3Client, bucket: str, key: str) -> None:
    try:
        client.delete_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as exc:
        # The manifest no longer lists it: a stale part is garbage, not an error.
        log.warning("could not delete s3://%s/%s (no longer listed): %s", bucket, key, exc)
