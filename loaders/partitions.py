"""Partitioned publish: a mart as one CSV per month (or year), a manifest, and the whole file.

A mart opts in with ``meta: {export: csv, partition_by: <date column>,
granularity: month}``. Its post-hook (``export_partitions()`` in
``macros/export_mart.sql``) writes to a local candidate folder,
``<ELT_HOME>/exports/<invocation>/<model>/``, only the partitions whose rows
changed since the last published manifest (``_refreshed_at`` newer than the
manifest's ``refreshed_through``, or every partition of a model without it),
each ``<partition>.csv`` with its header, ordered by the partition column
and then the primary key (so a part that gains days gains them at its end),
plus:

    _parts.json    one JSON line per exported partition: rows, first and last date
    _state.json    every live partition, the model's latest _refreshed_at, its columns
    _header.csv    the header line alone

If the model and its tests passed, :func:`publish_partitions` (the
``on-run-end`` publish) then, in this order:

1. writes each exported partition to ``marts/<model>/<partition>.csv``
   unless its bytes equal the published part's (a full refresh leaves
   unchanged months untouched, same ETag); the head it shares with the
   published part (compared in 1 MiB blocks, whose digests the manifest
   keeps) is copied by the server, only the rest is sent;
2. composes ``marts/<model>.csv``, the parts end to end with one header, on
   the server (:mod:`loaders.compose`): what the previous whole file already
   holds is copied from it, the changed ranges from the new parts;
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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from loaders import faults
from loaders.compose import (
    MIN_PART_BYTES,
    Segment,
    block_digests,
    common_head,
    compose,
    put_bytes,
)
from loaders.errors import StorageError
from loaders.s3 import MARTS_PREFIX, ObjectInfo

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
CSV = "text/csv; charset=utf-8"
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
        blocks: Digest of each 1 MiB block of the part
            (:func:`loaders.compose.block_digests`): the next run compares
            its version with them to copy the head they share.
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
    blocks: list[str] = field(default_factory=list)


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
    """What the post-hook needs from the last manifest: watermark, parts' rows, columns.

    Returns:
        ``{"refreshed_through": <ISO timestamp or None>, "partitions":
        {<partition>: <rows>}, "columns": [<exported column>, ...] or None}``;
        no watermark and no partitions when nothing was published yet.
    """
    manifest = read_manifest(client, bucket, model) or {}
    return {
        "refreshed_through": manifest.get("refreshed_through"),
        "partitions": {p["partition"]: p["rows"] for p in manifest.get("parts", [])},
        "columns": manifest.get("columns"),
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
    header = folder / "_header.csv"
    previous = read_manifest(client, bucket, model) or {}
    published = {p["partition"]: Part(**p) for p in previous.get("parts", [])}
    written: list[tuple[ObjectInfo, int | None]] = []
    sent = 0
    parts: list[Part] = []
    # Per written part, the head it shares with its published version.
    shared: dict[str, int] = {}
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
        blocks = block_digests(path)
        size = path.stat().st_size
        head = common_head(old.blocks, blocks, old.bytes, size) if old else 0
        segments = [Segment(0, size, path=path)]
        if old is not None and head >= MIN_PART_BYTES:
            # The part's unchanged head (earlier days) is copied from its published version.
            segments = [
                Segment(0, head, key=old.key, etag=old.etag, path=path),
                Segment(head, size, path=path),
            ]
        info, part_sent = compose(client, bucket, part_key(model, partition), segments, CSV)
        sent += part_sent
        shared[partition] = head
        row = stats.get(partition, {})
        part = Part(
            partition=partition,
            key=info.key,
            etag=info.etag,
            rows=int(row.get("rows") or 0),
            bytes=info.size,
            header_bytes=header.stat().st_size,
            first=_iso(row.get("first")),
            last=_iso(row.get("last")),
            run_id=run_id,
            sha256=sha256,
            blocks=blocks,
        )
        parts.append(part)
        written.append((info, part.rows))
    columns = state.get("columns")
    changed = bool(written) or set(published) != set(live) or "whole" not in previous
    whole_key = f"{MARTS_PREFIX}{model}.csv"
    if changed:
        reusable = previous if previous.get("columns") == columns else {}
        segments = whole_segments(reusable, parts, shared, header, folder)
        whole, whole_sent = compose(client, bucket, whole_key, segments, CSV)
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
        "columns": columns,
        "refreshed_through": _iso(state.get("refreshed_through")),
        "rows": sum(p.rows for p in parts),
        "bytes": sum(p.bytes for p in parts),
        "whole": whole_entry,
        "parts": [asdict(p) for p in parts],
    }
    body = (json.dumps(manifest, indent=1) + "\n").encode()
    faults.point("manifest")
    written.append((put_bytes(client, bucket, manifest_key(model), body, "application/json"), None))
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


def whole_segments(
    previous: dict[str, Any],
    parts: list[Part],
    shared: dict[str, int],
    header: Path,
    folder: Path,
) -> list[Segment]:
    """The whole file's bytes as ranges: one header, then each part's rows in order.

    What the previous whole file (``previous["whole"]``, made of
    ``previous["parts"]``) already holds, an unchanged part or the head a
    changed part shares with its published version (``shared``), is a range
    of it; the rest is a range of the new part (read from ``folder`` when it
    has to be sent). With no usable previous whole file (none yet, or other
    columns), every range comes from the parts.

    Args:
        previous: The last manifest, or ``{}``.
        parts: The live parts, in partition order, as the new manifest lists them.
        shared: Bytes at the start of each part written now that equal its
            published version's.
        header: Local file holding the header line.
        folder: The candidate folder (local copies of the parts written now).
    """
    whole = previous.get("whole") or {}
    # Where each previously published part's rows sit in the previous whole file.
    offsets: dict[str, tuple[Part, int]] = {}
    if whole.get("etag"):
        at = 0
        for index, entry in enumerate(previous.get("parts", [])):
            old = Part(**entry)
            at += old.header_bytes if index == 0 else 0
            offsets[old.partition] = (old, at)
            at += old.bytes - old.header_bytes
        if at != whole.get("bytes"):
            offsets = {}  # not the file its manifest describes: compose from the parts
    header_bytes = header.stat().st_size
    # Same columns (the caller checks), so the same header line: the file's first bytes.
    in_whole = Segment(0, header_bytes, key=whole["key"], etag=whole["etag"]) if offsets else None
    segments = [in_whole or Segment(0, header_bytes, path=header)]

    def from_whole(old: Part, at: int, first: int, end: int) -> Segment:
        """Bytes [first, end) of ``old`` (part offsets), as a range of the previous whole file."""
        return Segment(
            at + first - old.header_bytes,
            at + end - old.header_bytes,
            key=whole["key"],
            etag=whole["etag"],
        )

    for part in parts:
        local = folder / f"{part.partition}.csv"
        path = local if local.exists() and local.stat().st_size == part.bytes else None
        found = offsets.get(part.partition) if in_whole else None
        rows_from = part.header_bytes
        if found is not None:
            old, at = found
            if old.etag == part.etag:
                segments.append(from_whole(old, at, part.header_bytes, part.bytes))
                continue
            head = shared.get(part.partition, 0)
            if head > part.header_bytes:
                segments.append(from_whole(old, at, part.header_bytes, head))
                rows_from = head
        segments.append(Segment(rows_from, part.bytes, key=part.key, etag=part.etag, path=path))
    return segments


def _iso(value: Any) -> str | None:
    """An ISO text of a date or timestamp from DuckDB's JSON output."""
    if value is None:
        return None
    return str(value).replace(" ", "T") if ":" in str(value) else str(value)


def _delete(client: S3Client, bucket: str, key: str) -> None:
    try:
        client.delete_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as exc:
        # The manifest no longer lists it: a stale part is garbage, not an error.
        log.warning("could not delete s3://%s/%s (no longer listed): %s", bucket, key, exc)
