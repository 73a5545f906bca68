"""Land raw objects from ``s3://<bucket>/raw/<dataset>/`` into ``raw.<dataset>``, exactly once.

The stages, in the order data flows through them:

1. :mod:`~loaders.land.ledger`: which object versions are pending (the
   ledger has not settled their key and ETag).
2. :mod:`~loaders.land.stage`: each is downloaded, hashed and its lines
   counted, in parallel, before any transaction.
3. :mod:`~loaders.land.batch`: plain CSVs sharing a header land together,
   one statement per worker; :mod:`~loaders.land.single`: anything else, one
   object per transaction. Both read files with :mod:`~loaders.land.readers`
   (every column as text, by header name, with lineage).
4. :mod:`~loaders.land.quarantine`: rows that do not parse, or that the
   source contract refuses, go to ``elt.rejects`` with their reason; rows in
   = loaded + rejected, or nothing of the object is kept; the ledger row
   commits with the rows.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
from botocore.exceptions import BotoCoreError, ClientError

from loaders.datasets import Dataset
from loaders.errors import StorageError
from loaders.land.batch import NotBatchable, batch_groups, one_thread_per_statement
from loaders.land.batch import land_batch as _land_batch
from loaders.land.ledger import (
    LEDGER,
    REJECTS,
    SETTLED,
    STATE,
    Attempt,
    LoadResult,
    ensure_tables,
    full_refresh_done,
    full_refresh_pending,
    new_load_id,
    pending,
    recent,
    settle,
)
from loaders.land.quarantine import export_rejects, recheck_contracts
from loaders.land.single import Run, add_columns_alone, land_one
from loaders.land.stage import Staged, stage_object
from loaders.s3 import ObjectInfo

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

__all__ = [
    "LEDGER",
    "REJECTS",
    "SETTLED",
    "STATE",
    "LoadResult",
    "ensure_tables",
    "export_rejects",
    "full_refresh_done",
    "full_refresh_pending",
    "land_all",
    "new_load_id",
    "pending",
    "recent",
    "recheck_contracts",
    "undeclared_prefixes",
]


def undeclared_prefixes(s3: S3Client, bucket: str, datasets: dict[str, Dataset]) -> list[str]:
    """Prefixes under ``raw/`` that no source declares (their objects are never loaded)."""
    found = set()
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="raw/", Delimiter="/"
        )
        for page in pages:
            for prefix in page.get("CommonPrefixes", []):
                if prefix["Prefix"][len("raw/") : -1] not in datasets:
                    found.add(prefix["Prefix"])
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot list s3://{bucket}/raw/: {exc}") from exc
    return sorted(found)


def land_all(
    conn: duckdb.DuckDBPyConnection,
    s3: S3Client,
    bucket: str,
    datasets: dict[str, Dataset],
    workdir: Path,
    on_object: Callable[[ObjectInfo], Callable[[int], None] | None] | None = None,
) -> list[LoadResult]:
    """Land every pending object version of every dataset.

    All pending objects are first staged (downloaded, hashed, counted) in
    parallel. Plain CSV objects of one dataset sharing a header then land
    together in one multi-file statement and one transaction (the fast path,
    as parallel as a bare ``create table as``); if such a batch meets a bad
    row, it is rolled back and its objects take the one-object path with the
    rest: each object in its own transaction on its own cursor, several at a
    time, so one object's failure never touches another's rows.

    Args:
        conn: Read-write connection to the warehouse.
        s3: Client for ``bucket`` (boto3 clients are thread-safe).
        bucket: Bucket holding ``raw/<dataset>/`` prefixes.
        datasets: Registry from :func:`loaders.datasets.discover`.
        workdir: Where objects are staged while loading (under ``$ELT_HOME``).
        on_object: Called before each object; may return a callback that is
            fed the size of each chunk read (progress bars).

    Returns:
        One ``LoadResult`` per object version attempted, in key order; empty
        when nothing was new.

    Raises:
        StorageError: listing or reading from S3 failed.
    """
    ensure_tables(conn, datasets.values())
    for prefix in undeclared_prefixes(s3, bucket, datasets):
        log.warning("s3://%s/%s: no dbt source declares this dataset; skipped", bucket, prefix)
    jobs = [
        (dataset, obj)
        for dataset in datasets.values()
        for obj in sorted(pending(conn, s3, bucket, dataset), key=lambda o: o.key)
    ]
    if not jobs:
        return []
    run = Run()
    threads = conn.execute("select current_setting('threads')").fetchone()
    workers = max(1, min(len(jobs), int(threads[0]) if threads else 1))
    results: dict[int, LoadResult] = {}
    staged: dict[int, Staged] = {}
    workdir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=workdir) as tmp,
        one_thread_per_statement(conn, workers),
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="land") as pool,
    ):

        def stage(index: int, dataset: Dataset, obj: ObjectInfo) -> Staged | None:
            if dataset.refusal(obj.key):
                return None
            on_bytes = on_object(obj) if on_object else None
            return stage_object(s3, bucket, dataset, obj, Path(tmp) / str(index), on_bytes)

        staging = [pool.submit(stage, i, dataset, obj) for i, (dataset, obj) in enumerate(jobs)]
        for index, future in enumerate(staging):
            done = future.result()
            dataset, obj = jobs[index]
            if done is None:
                refusal = dataset.refusal(obj.key) or "refused"
                results[index] = settle(conn, Attempt(dataset, obj), bucket, "refused", refusal)
            else:
                staged[index] = done

        def land_batch(members: list[int], names: list[str]) -> list[LoadResult]:
            cursor = conn.cursor()
            try:
                return _land_batch(cursor, [staged[i] for i in members], names, bucket)
            finally:
                cursor.close()

        for members, names in batch_groups(conn, staged, bucket):
            first = staged[members[0]].attempt
            add_columns_alone(conn, first.dataset, names, first.obj.key)
            # One statement per worker: a multi-file scan numbering rows in order
            # (`row_number() over ()`) reads its files one after the other.
            shares = [members[w::workers] for w in range(workers) if members[w::workers]]
            batches = [(share, pool.submit(land_batch, share, names)) for share in shares]
            for share, batch in batches:
                try:
                    landed = batch.result()
                except NotBatchable as exc:
                    log.info("batch of %d objects: %s; landing them one by one", len(share), exc)
                    continue
                for index, result in zip(share, landed, strict=True):
                    results[index] = result
                    del staged[index]

        def finish(index: int) -> LoadResult:
            cursor = conn.cursor()
            try:
                return land_one(cursor, staged[index], bucket, run)
            finally:
                cursor.close()

        finishing = {index: pool.submit(finish, index) for index in staged}
        for index, finished in finishing.items():
            results[index] = finished.result()
    return [results[i] for i in range(len(jobs))]
