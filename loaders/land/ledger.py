"""The loader's own tables: the ledger of object versions, the quarantine, the state.

``elt.ledger`` has one row per object version seen (key, ETag, size, our
sha256, status ``loaded``, ``failed``, ``duplicate``, ``refused`` or
``superseded``, rows in, loaded and rejected, timings), written in the same
DuckDB transaction as the rows it describes: a version it has settled is
never landed again. ``elt.rejects`` holds the quarantined records;
``elt.state`` the contract fingerprints and the full-refresh bookkeeping.
Rows landed in ``raw.<dataset>`` carry :data:`LINEAGE_COLUMNS`; the key and
ETag of their object are kept once, in its ledger row (``load_id``).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import duckdb

from loaders.datasets import RAW_SCHEMA, Dataset
from loaders.s3 import ObjectInfo, list_objects
from loaders.warehouse import quote_identifier

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# One logger for the whole loader (log lines and filters keep the name
# `loaders.land` they had before the package split).
log = logging.getLogger(__package__)

LEDGER = "elt.ledger"

# Loader state: each dataset's contract fingerprint (``contract:<dataset>``),
# when landed rows were last removed (``rows_removed_at``) and when the models
# were last rebuilt in full (``full_refresh_at``).
STATE = "elt.state"

REJECTS = "elt.rejects"

# The columns an insert into elt.rejects gives, in this order.
REJECT_COLUMNS = (
    "load_id, dataset, key, line, column_name, error_type, message, raw_line, rejected_at, value"
)

# Every landed row's lineage. _loaded_at is its load's started_at in the
# ledger, on every landing path: the loader bounds its scans of a load's rows
# by it (tests/test_land.py checks it).
LINEAGE_COLUMNS = (
    ("_source_row_number", "bigint"),
    ("_load_id", "varchar"),
    ("_loaded_at", "timestamptz"),
)

_LEGACY_LINEAGE = ("_source_key", "_source_etag")

LEDGER_COLUMNS = (
    ("load_id", "varchar primary key"),
    ("dataset", "varchar not null"),
    ("bucket", "varchar not null"),
    ("key", "varchar not null"),
    ("etag", "varchar not null"),
    ("size_bytes", "bigint not null"),
    ("sha256", "varchar"),
    ("status", "varchar not null"),
    ("rows_in", "bigint"),
    ("rows_loaded", "bigint not null"),
    ("rows_rejected", "bigint"),
    ("error", "varchar"),
    ("started_at", "timestamptz not null"),
    ("finished_at", "timestamptz not null"),
    ("download_seconds", "double"),
    ("load_seconds", "double"),
    ("superseded_by", "varchar"),
)

# Statuses that settle an object version: it is not tried again.
SETTLED = ("loaded", "failed", "duplicate", "refused", "superseded")


@dataclass(frozen=True)
class LoadResult:
    """Outcome of one object version.

    Attributes:
        status: ``loaded``, ``failed`` (nothing kept), ``duplicate`` (same
            bytes already loaded under another key) or ``refused`` (key not
            allowed for the dataset).
        rows_in: Records the object holds, counted apart from the parser.
        rows_loaded: Rows now in ``raw.<dataset>``.
        rows_rejected: Rows put in ``elt.rejects`` with their reason.
        replaced: Load id of the previous version of the key this one replaced.
        reasons: Why rows were quarantined: ``(column or None, error type,
            rows)``, most rows first.
    """

    load_id: str
    dataset: str
    key: str
    etag: str
    size: int
    sha256: str | None
    status: str
    rows_in: int
    rows_loaded: int
    rows_rejected: int
    seconds: float
    error: str | None = None
    replaced: str | None = None
    reasons: tuple[tuple[str | None, str, int], ...] = ()

    def quarantine_line(self) -> str | None:
        """One line saying how many rows were quarantined and why, or ``None`` if none were."""
        if not self.rows_rejected:
            return None
        why = ", ".join(
            f"{count} {error_type}" + (f" in {column}" if column else "")
            for column, error_type, count in self.reasons
        )
        return f"quarantined {self.rows_rejected} of {self.rows_in} row(s) of {self.key}" + (
            f": {why}" if why else ""
        )


@dataclass
class Attempt:
    """Mutable state of one load, turned into a ledger row and a LoadResult."""

    dataset: Dataset
    obj: ObjectInfo
    load_id: str = field(default_factory=lambda: new_load_id())
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    clock: float = field(default_factory=time.monotonic)
    sha256: str | None = None
    status: str = "failed"
    rows_in: int = 0
    rows_loaded: int = 0
    rows_rejected: int = 0
    error: str | None = None
    download_seconds: float = 0.0
    replaced: str | None = None
    reasons: tuple[tuple[str | None, str, int], ...] = ()
    # Line of the file holding row 1: 2 under a CSV header, 1 in JSON lines.
    first_line: int = 2

    def result(self) -> LoadResult:
        return LoadResult(
            load_id=self.load_id,
            dataset=self.dataset.name,
            key=self.obj.key,
            etag=self.obj.etag,
            size=self.obj.size,
            sha256=self.sha256,
            status=self.status,
            rows_in=self.rows_in,
            rows_loaded=self.rows_loaded,
            rows_rejected=self.rows_rejected,
            seconds=time.monotonic() - self.clock,
            error=self.error,
            replaced=self.replaced,
            reasons=self.reasons,
        )


def new_load_id() -> str:
    """A sortable, unique load id: ``20240113T120000Z-3fa2c1d4e5f60718``.

    The second it was made, then 64 random bits: a run makes an id per object
    version, a backfill thousands in the same second. With 24 bits, 1,005 ids
    made in one second share one with a chance of about 3% (seen once in
    ``tests/test_land.py``: a duplicate ledger key at commit).
    """
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(8)}"


def ensure_tables(conn: duckdb.DuckDBPyConnection, datasets: Iterable[Dataset]) -> None:
    """Create the ``raw`` and ``elt`` schemas, ledger, rejects and raw tables (idempotent).

    A ledger from an older version of the loader gains its new columns.
    """
    conn.execute(f"create schema if not exists {RAW_SCHEMA}")
    conn.execute("create schema if not exists elt")
    columns = ", ".join(f"{name} {kind}" for name, kind in LEDGER_COLUMNS)
    conn.execute(f"create table if not exists {LEDGER} ({columns})")
    for name, kind in LEDGER_COLUMNS[1:]:
        base_type = kind.replace(" not null", "")
        conn.execute(f"alter table {LEDGER} add column if not exists {name} {base_type}")
    conn.execute(
        f"""
        create table if not exists {REJECTS} (
            load_id varchar not null,
            dataset varchar not null,
            key varchar not null,
            line bigint,
            column_name varchar,
            error_type varchar not null,
            message varchar not null,
            raw_line varchar,
            rejected_at timestamptz not null,
            value varchar
        )
        """
    )
    # Rejects from before the contract named the offending value.
    conn.execute(f"alter table {REJECTS} add column if not exists value varchar")
    conn.execute(
        f"create table if not exists {STATE} "
        "(name varchar primary key, value varchar, updated_at timestamptz not null)"
    )
    for dataset in datasets:
        declared = [f"{quote_identifier(c)} varchar" for c in dataset.columns]
        declared += [f"{name} {kind}" for name, kind in LINEAGE_COLUMNS]
        conn.execute(f"create table if not exists {raw_table(dataset)} ({', '.join(declared)})")
        # Warehouses landed before the key and ETag moved to the ledger: drop
        # the per-row copies (the ledger row of every load holds the same values).
        for column in _LEGACY_LINEAGE:
            conn.execute(f"alter table {raw_table(dataset)} drop column if exists {column}")


def raw_table(dataset: Dataset) -> str:
    return f"{RAW_SCHEMA}.{quote_identifier(dataset.name)}"


def pending(
    conn: duckdb.DuckDBPyConnection, s3: S3Client, bucket: str, dataset: Dataset
) -> Iterator[ObjectInfo]:
    """Objects under the dataset's prefix whose version (key, ETag) the ledger has not settled.

    Directory placeholder keys (ending in ``/``) are not objects to load.
    """
    seen = {
        (key, etag)
        for key, etag in conn.execute(
            f"select key, etag from {LEDGER} where bucket = ? and dataset = ? "
            f"and status in {SETTLED}",
            [bucket, dataset.name],
        ).fetchall()
    }
    for obj in list_objects(s3, bucket, dataset.prefix):
        if not obj.key.endswith("/") and (obj.key, obj.etag) not in seen:
            yield obj


def replace_previous(conn: duckdb.DuckDBPyConnection, attempt: Attempt, bucket: str) -> None:
    """Delete the rows of the key's previously loaded version and mark it superseded."""
    previous = conn.execute(
        f"select load_id from {LEDGER} where bucket = ? and key = ? and status = 'loaded'",
        [bucket, attempt.obj.key],
    ).fetchall()
    for (load_id,) in previous:
        conn.execute(f"delete from {raw_table(attempt.dataset)} where _load_id = ?", [load_id])
        conn.execute(
            f"update {LEDGER} set status = 'superseded', superseded_by = ? where load_id = ?",
            [attempt.load_id, load_id],
        )
        attempt.replaced = load_id


def record(conn: duckdb.DuckDBPyConnection, attempt: Attempt, bucket: str) -> None:
    """Insert the attempt's ledger row (inside the caller's transaction)."""
    values = {
        "load_id": attempt.load_id,
        "dataset": attempt.dataset.name,
        "bucket": bucket,
        "key": attempt.obj.key,
        "etag": attempt.obj.etag,
        "size_bytes": attempt.obj.size,
        "sha256": attempt.sha256,
        "status": attempt.status,
        "rows_in": attempt.rows_in,
        "rows_loaded": attempt.rows_loaded,
        "rows_rejected": attempt.rows_rejected,
        "error": attempt.error,
        "started_at": attempt.started_at,
        "finished_at": datetime.now(UTC),
        "download_seconds": attempt.download_seconds,
        "load_seconds": time.monotonic() - attempt.clock - attempt.download_seconds,
        "superseded_by": None,
    }
    marks = ", ".join("?" for _ in values)
    conn.execute(
        f"insert into {LEDGER} ({', '.join(values)}) values ({marks})", list(values.values())
    )


def duplicate_of(conn: duckdb.DuckDBPyConnection, attempt: Attempt, bucket: str) -> str | None:
    """Another key whose loaded version has these very bytes, if any."""
    row = conn.execute(
        f"select key from {LEDGER} where bucket = ? and dataset = ? and sha256 = ? "
        "and status = 'loaded' and key != ? order by started_at limit 1",
        [bucket, attempt.dataset.name, attempt.sha256, attempt.obj.key],
    ).fetchone()
    return str(row[0]) if row else None


def settle(
    conn: duckdb.DuckDBPyConnection, attempt: Attempt, bucket: str, status: str, error: str
) -> LoadResult:
    """Record a version that loads nothing (refused, duplicate) in its own transaction."""
    attempt.status, attempt.error = status, error
    conn.execute("begin transaction")
    record(conn, attempt, bucket)
    conn.execute("commit")
    log.warning("%s %s: %s", status, attempt.obj.key, error)
    return attempt.result()


def recent(conn: duckdb.DuckDBPyConnection, limit: int = 20) -> list[dict[str, object]]:
    """The latest ledger rows, newest first (what ``elt status`` shows)."""
    cursor = conn.execute(
        f"select key, etag, status, rows_in, rows_loaded, rows_rejected, "
        f"round(coalesce(download_seconds, 0) + coalesce(load_seconds, 0), 2) as seconds, "
        f"error, started_at from {LEDGER} order by started_at desc limit ?",
        [limit],
    )
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def set_state(conn: duckdb.DuckDBPyConnection, name: str, value: str) -> None:
    conn.execute(
        f"insert or replace into {STATE} values (?, ?, ?)", [name, value, datetime.now(UTC)]
    )


def full_refresh_pending(conn: duckdb.DuckDBPyConnection) -> str | None:
    """Why the incremental models must be rebuilt from all history, or ``None``.

    Incremental models only see rows added since their last build. Rows taken
    away (a key's new version superseding the old rows, or a changed contract
    quarantining landed rows) are only reflected by a full refresh; this holds
    until one succeeds, also across a crash between landing and the build.
    """
    if not warehouse_has_state(conn):
        return None
    row = conn.execute(
        f"""
        select
            (select max(newer.started_at)
                from {LEDGER} as older
                inner join {LEDGER} as newer on older.superseded_by = newer.load_id
                where older.status = 'superseded'),
            (select cast(value as timestamptz) from {STATE} where name = 'rows_removed_at'),
            (select cast(value as timestamptz) from {STATE} where name = 'full_refresh_at')
        """
    ).fetchone()
    superseded_at, removed_at, refreshed_at = row if row else (None, None, None)
    if superseded_at and (refreshed_at is None or superseded_at > refreshed_at):
        return "a key got a new version"
    if removed_at and (refreshed_at is None or removed_at > refreshed_at):
        return "a changed contract quarantined landed rows"
    return None


def full_refresh_done(conn: duckdb.DuckDBPyConnection, started_at: datetime) -> None:
    """Record that the models were rebuilt in full from what was landed before ``started_at``."""
    if warehouse_has_state(conn):
        set_state(conn, "full_refresh_at", started_at.isoformat())


def warehouse_has_state(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether the loader's tables exist (a warehouse that never landed has none)."""
    row = conn.execute(
        "select count(*) from duckdb_tables() where schema_name = 'elt' and table_name = 'state'"
    ).fetchone()
    return bool(row and row[0])
