"""Raw data in the open: each landed object version as Parquet in the bucket, with a ledger.

What DuckDB's ``raw`` schema holds is also written to the bucket, where any
engine (Spark, Athena, Trino, DuckDB) can read it::

    lake/raw/<dataset>/load_date=<YYYY-MM-DD>/<load id>.parquet
                          one file per object version landed: the rows
                          raw.<dataset> holds for that load (every column as
                          text, with _source_row_number, _load_id, _loaded_at)
    lake/elt/ledger/ledger.parquet
                          the entry point: one row per object version (key,
                          ETag, sha256, status, rows, and its file, lake_key)
    lake/seeds/<seed>/<seed>.parquet
                          each dbt seed of the project (``seeds/<seed>.csv``,
                          every column as text, as the models read it),
                          written again when the CSV changes

A reader takes the ledger first and reads the files of the loads it lists as
``loaded``: a file not (or no longer) listed there is not data. The writer
keeps that order: a load's file is written (one object, whole or absent),
then the ledger that lists it (one object); the files of superseded loads
are deleted only after a ledger that no longer lists them. A crash anywhere
leaves a ledger that names only whole files, and the next sync finishes the
work. ``elt.lake_files`` (in the DuckDB file) records which files are
written, so a load is written once; a load whose rows changed since (a
changed contract quarantined some) is written again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from loaders import faults
from loaders.datasets import Dataset
from loaders.land.ledger import LEDGER, STATE, raw_table
from loaders.s3 import delete_object
from loaders.warehouse import sql_literal

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

PREFIX = "lake/"
LEDGER_KEY = f"{PREFIX}elt/ledger/ledger.parquet"
FILES = "elt.lake_files"
# The ledger's columns in the lake, as every reader sees them.
LEDGER_SELECT = """
    ledger.load_id,
    ledger.dataset,
    ledger.key,
    ledger.etag,
    ledger.sha256,
    ledger.size_bytes,
    case when files.load_id is null and ledger.status = 'loaded' then 'pending'
        else ledger.status end as status,
    ledger.rows_in,
    ledger.rows_loaded,
    ledger.rows_rejected,
    ledger.started_at as loaded_at,
    ledger.superseded_by,
    files.lake_key
"""


def seed_key(seed: str) -> str:
    """``lake/seeds/<seed>/<seed>.parquet``: a folder per seed, as a table's location."""
    return f"{PREFIX}seeds/{seed}/{seed}.parquet"


def raw_key(dataset: str, load_id: str, load_date: str) -> str:
    """``lake/raw/<dataset>/load_date=<YYYY-MM-DD>/<load id>.parquet`` (the load's UTC date)."""
    return f"{PREFIX}raw/{dataset}/load_date={load_date}/{load_id}.parquet"


@dataclass
class Synced:
    """What one :func:`sync` wrote.

    Attributes:
        written: Lake keys of the load files written (new loads, changed ones).
        deleted: Lake keys of superseded loads' files deleted.
        seeds: Lake keys of the seeds written (new or changed CSVs).
        ledger: Whether the lake ledger was written (it changed).
        seconds: Wall-clock time of the sync.
    """

    written: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    seeds: list[str] = field(default_factory=list)
    ledger: bool = False
    seconds: float = 0.0


def ensure_tables(conn: duckdb.DuckDBPyConnection) -> None:
    """Create ``elt.lake_files``: one row per load file written to the lake."""
    conn.execute(
        f"""
        create table if not exists {FILES} (
            load_id varchar primary key,
            dataset varchar not null,
            lake_key varchar not null,
            rows bigint not null,
            written_at timestamptz not null
        )
        """
    )


def sync(
    conn: duckdb.DuckDBPyConnection,
    s3: S3Client,
    bucket: str,
    datasets: dict[str, Dataset],
    seeds: Path | None = None,
) -> Synced:
    """Bring the lake up to the warehouse: load files, then the ledger, then deletions.

    Args:
        conn: Read-write warehouse connection with S3 access (a DuckDB secret
            for ``bucket``), after landing.
        s3: Client with PutObject and DeleteObject on ``lake/*``.
        bucket: The lake bucket.
        datasets: The declared datasets (their raw tables).
        seeds: The project's seed folder (``<project>/seeds``): each
            ``*.csv`` is written to :func:`seed_key` when its bytes changed.

    Returns:
        What was written and deleted; nothing when the lake is up to date.

    Raises:
        duckdb.Error: a write to S3 failed (the ledger then still names
            only files written before; the next sync writes the rest).
    """
    started = time.monotonic()
    ensure_tables(conn)
    done = Synced()
    for load_id, dataset, load_date, rows in conn.execute(
        f"""
        select
            ledger.load_id,
            ledger.dataset,
            strftime(ledger.started_at at time zone 'UTC', '%Y-%m-%d'),
            ledger.rows_loaded
        from {LEDGER} as ledger
        left join {FILES} as files on ledger.load_id = files.load_id
        where
            ledger.status = 'loaded'
            and (files.load_id is null or files.rows != ledger.rows_loaded)
        order by ledger.started_at, ledger.load_id
        """
    ).fetchall():
        if dataset not in datasets:
            continue
        key = raw_key(dataset, load_id, load_date)
        # One object per load: DuckDB writes it as a multipart upload, so it
        # appears whole or not at all.
        conn.execute(
            f"copy (select * from {raw_table(datasets[dataset])} "
            f"where _load_id = {sql_literal(load_id)} order by _source_row_number) "
            f"to {sql_literal(f's3://{bucket}/{key}')} (format parquet, compression zstd)"
        )
        conn.execute(
            f"insert or replace into {FILES} values (?, ?, ?, ?, now())",
            [load_id, dataset, key, rows],
        )
        done.written.append(key)
        faults.point("lake")
    for path in sorted(seeds.glob("*.csv")) if seeds else []:
        # Read as dbt's seeds are declared (seeds/_seeds.yml): every column text.
        seed_digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if seed_digest != _state(conn, f"lake_seed:{path.stem}"):
            key = seed_key(path.stem)
            conn.execute(
                f"copy (select * from read_csv({sql_literal(str(path))}, header = true, "
                f"all_varchar = true)) to {sql_literal(f's3://{bucket}/{key}')} (format parquet)"
            )
            _set_state(conn, f"lake_seed:{path.stem}", seed_digest)
            done.seeds.append(key)
    digest = _ledger_digest(conn)
    if digest != _state(conn, "lake_ledger"):
        conn.execute(
            f"copy (select {LEDGER_SELECT} from {LEDGER} as ledger "
            f"left join {FILES} as files on ledger.load_id = files.load_id "
            f"order by ledger.started_at, ledger.load_id) "
            f"to {sql_literal(f's3://{bucket}/{LEDGER_KEY}')} (format parquet)"
        )
        _set_state(conn, "lake_ledger", digest)
        done.ledger = True
    # Each dataset's folder (a key ending in "/"), once, even before its first
    # load: a reader that lists it finds it.
    for name in datasets:
        if _state(conn, f"lake_folder:{name}") is None:
            s3.put_object(Bucket=bucket, Key=f"{PREFIX}raw/{name}/", Body=b"")
            _set_state(conn, f"lake_folder:{name}", "written")
    # Files of loads the ledger now names superseded: garbage, once it is written.
    for load_id, key in conn.execute(
        f"select files.load_id, files.lake_key from {FILES} as files "
        f"inner join {LEDGER} as ledger on files.load_id = ledger.load_id "
        f"where ledger.status != 'loaded'"
    ).fetchall():
        delete_object(s3, bucket, key)
        conn.execute(f"delete from {FILES} where load_id = ?", [load_id])
        done.deleted.append(key)
    done.seconds = time.monotonic() - started
    if done.written or done.deleted or done.seeds:
        log.info(
            "lake: %d load file(s) written, %d deleted, %d seed(s), ledger %s in %.1fs",
            len(done.written),
            len(done.deleted),
            len(done.seeds),
            "written" if done.ledger else "unchanged",
            done.seconds,
        )
    return done


def _ledger_digest(conn: duckdb.DuckDBPyConnection) -> str:
    """A digest of the ledger as the lake would show it: unchanged means nothing to write."""
    row = conn.execute(
        f"select md5(coalesce(string_agg(cast(shown as varchar), '|' order by shown.load_id), '')) "
        f"from (select {LEDGER_SELECT} from {LEDGER} as ledger "
        f"left join {FILES} as files on ledger.load_id = files.load_id) as shown"
    ).fetchone()
    return str(row[0]) if row else ""


def _state(conn: duckdb.DuckDBPyConnection, name: str) -> str | None:
    row = conn.execute(f"select value from {STATE} where name = ?", [name]).fetchone()
    return str(row[0]) if row else None


def _set_state(conn: duckdb.DuckDBPyConnection, name: str, value: str) -> None:
    conn.execute(f"insert or replace into {STATE} values (?, ?, now())", [name, value])
