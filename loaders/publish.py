"""Publish exported candidates to their keys (the "publish" of write-audit-publish).

dbt's post-hook writes a mart to a local candidate file,
``<ELT_HOME>/exports/<invocation>/<model>.csv`` (:func:`candidate_path`); the
``on-run-end`` hook calls the SQL functions registered here to upload a
candidate whose tests passed to ``marts/<model>.csv`` or to delete it.

An upload is one ``PutObject`` (up to 5 GB): readers see the old object or
the new one, never part of one, and a run needs no permission on the bucket
but ``PutObject`` on ``marts/*`` to publish. Each published object is
appended to ``<ELT_HOME>/exports/published.jsonl`` (key, ETag, size), which
``elt run`` reads to check and report its exports without listing ``marts/``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
from botocore.exceptions import BotoCoreError, ClientError

from loaders import faults, partitions
from loaders import s3 as s3_mod
from loaders.errors import StorageError
from loaders.s3 import ObjectInfo

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

EXPORTS_DIR = "exports"
MANIFEST = "published.jsonl"
# Seconds spent in PUTs since start(): the export share of a run, in its receipt.
put_seconds = 0.0
# Bytes sent to S3 since start() (what the server copied itself not counted).
uploaded_bytes = 0
_SAFE = re.compile(r"^[A-Za-z0-9_.-]+$")


def candidate_folder(home: Path, invocation: str, model: str) -> Path:
    """``<home>/exports/<invocation>/<model>/``, created: a partitioned mart's candidates.

    Raises:
        ValueError: the invocation id or model name is not a plain file name.
    """
    folder = candidate_path(home, invocation, model).with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def candidate_path(home: Path, invocation: str, model: str) -> Path:
    """``<home>/exports/<invocation>/<model>.csv``, its folder created.

    Raises:
        ValueError: the invocation id or model name is not a plain file name.
    """
    faults.point("build")  # dbt is mid-build: a mart's table is committed, its export not
    for part in (invocation, model):
        if not _SAFE.match(part):
            raise ValueError(f"not a plain file name: {part!r}")
    folder = home / EXPORTS_DIR / invocation
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{model}.csv"


def publish_object(client: S3Client, bucket: str, candidate: Path, key: str, home: Path) -> int:
    """Upload the ``candidate`` file to ``s3://bucket/key`` in one PUT, then delete the file.

    Returns:
        Size in bytes of the published object.

    Raises:
        StorageError: the candidate is missing, or the PUT failed (the
            previous object at ``key`` is then untouched).
    """
    global put_seconds, uploaded_bytes
    faults.point("publish")
    started = time.monotonic()
    try:
        size = candidate.stat().st_size
        with candidate.open("rb") as body:
            response = client.put_object(
                Bucket=bucket, Key=key, Body=body, ContentType="text/csv; charset=utf-8"
            )
    except (ClientError, BotoCoreError, OSError) as exc:
        raise StorageError(f"publishing {candidate} to s3://{bucket}/{key} failed: {exc}") from exc
    put_seconds += time.monotonic() - started
    uploaded_bytes += size
    published = ObjectInfo(key=key, etag=response["ETag"].strip('"'), size=size)
    _note(home, published, None)
    candidate.unlink()
    log.info("published s3://%s/%s (%d bytes)", bucket, key, size)
    return size


def publish_partitioned(
    client: S3Client, bucket: str, folder: Path, model: str, home: Path, run_id: str
) -> int:
    """Publish a partitioned mart's folder (:func:`loaders.partitions.publish_partitions`).

    Returns:
        Bytes written to S3 by this publish (parts, whole file, manifest).

    Raises:
        StorageError: a request failed; the previous manifest stays the entry point.
    """
    global put_seconds, uploaded_bytes
    started = time.monotonic()
    written, sent = partitions.publish_partitions(client, bucket, folder, model, run_id)
    put_seconds += time.monotonic() - started
    uploaded_bytes += sent
    for info, rows in written:
        _note(home, info, rows)
    return sum(info.size for info, _ in written)


def _note(home: Path, published: ObjectInfo, rows: int | None) -> None:
    """Append a published object to ``published.jsonl`` (read by ``elt run``'s report)."""
    entry = {**published.__dict__, **({"rows": rows} if rows is not None else {})}
    with (home / EXPORTS_DIR / MANIFEST).open("a") as manifest:
        manifest.write(json.dumps(entry) + "\n")


def discard_object(candidate: Path) -> None:
    """Delete an unpublished candidate file or folder (absent is fine)."""
    if candidate.is_dir():
        shutil.rmtree(candidate, ignore_errors=True)
    else:
        candidate.unlink(missing_ok=True)


def start(home: Path) -> None:
    """Forget earlier candidates, the manifest and the PUT clock (called before a build)."""
    global put_seconds, uploaded_bytes
    put_seconds = 0.0
    uploaded_bytes = 0
    shutil.rmtree(home / EXPORTS_DIR, ignore_errors=True)
    (home / EXPORTS_DIR).mkdir(parents=True)


def published(home: Path) -> dict[str, ObjectInfo]:
    """Objects published since :func:`start`, by key (the latest upload of each)."""
    return {key: info for key, (info, _) in published_rows(home).items()}


def published_rows(home: Path) -> dict[str, tuple[ObjectInfo, int | None]]:
    """Objects published since :func:`start` with their rows when recorded, by key."""
    path = home / EXPORTS_DIR / MANIFEST
    if not path.exists():
        return {}
    found = {}
    for line in path.read_text().splitlines():
        if line:
            entry = json.loads(line)
            rows = entry.pop("rows", None)
            found[entry["key"]] = (ObjectInfo(**entry), rows)
    return found


def register_functions(
    conn: duckdb.DuckDBPyConnection,
    bucket: str,
    home: Path,
    connection: Callable[[], s3_mod.Connection | None],
) -> None:
    """Register the SQL functions of ``macros/export_mart.sql``.

    ``elt_candidate_path(invocation, model)`` returns the local candidate file;
    ``elt_publish_object(candidate, key)`` and ``elt_discard_object(candidate)``
    publish or delete it. For partitioned marts, ``elt_candidate_folder()``,
    ``elt_published_state(model)`` (the last manifest's watermark and
    partitions, as JSON) and ``elt_publish_partitions(folder, model, invocation)``.
    ``connection`` is called when a publish runs, so credentials are resolved
    lazily (a missing server fails the publish, not the connection).
    """

    def client() -> S3Client:
        resolved = connection()
        if resolved is None:
            raise StorageError("S3 is not configured for dbt: is the local server up (`elt up`)?")
        return s3_mod.client(resolved)

    def path(invocation: str, model: str) -> str:
        return str(candidate_path(home, invocation, model))

    def folder(invocation: str, model: str) -> str:
        return str(candidate_folder(home, invocation, model))

    def state(model: str) -> str:
        return json.dumps(partitions.published_state(client(), bucket, model))

    def publish_parts(candidate: str, model: str, invocation: str) -> int:
        run_id = os.environ.get("ELT_RUN_ID") or invocation
        return publish_partitioned(client(), bucket, Path(candidate), model, home, run_id)

    def publish(candidate: str, key: str) -> int:
        return publish_object(client(), bucket, Path(candidate), key, home)

    def discard(candidate: str) -> str:
        discard_object(Path(candidate))
        return candidate

    conn.create_function(
        "elt_candidate_path", path, ["varchar", "varchar"], "varchar", side_effects=True
    )
    conn.create_function(
        "elt_publish_object", publish, ["varchar", "varchar"], "bigint", side_effects=True
    )
    conn.create_function("elt_discard_object", discard, ["varchar"], "varchar", side_effects=True)
    conn.create_function(
        "elt_candidate_folder", folder, ["varchar", "varchar"], "varchar", side_effects=True
    )
    conn.create_function("elt_published_state", state, ["varchar"], "varchar", side_effects=True)
    conn.create_function(
        "elt_publish_partitions",
        publish_parts,
        ["varchar", "varchar", "varchar"],
        "bigint",
        side_effects=True,
    )
