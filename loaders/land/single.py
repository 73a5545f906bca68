"""One object in one transaction: the path for anything a batch cannot take.

Several objects land at once, each on its own cursor and in its own
transaction, so one object's failure never touches another's rows. An
object whose bytes were already loaded under another key is settled as a
duplicate; otherwise its previous version (same key) is replaced, its rows
inserted, its bad records quarantined, ``rows in = loaded + rejected``
reconciled and its ledger row written, all in one transaction.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from loaders import faults
from loaders.datasets import Dataset
from loaders.errors import LoadError
from loaders.formats import PARQUET_MAGIC, ContentMeter
from loaders.land.ledger import (
    Attempt,
    LoadResult,
    duplicate_of,
    record,
    replace_previous,
    settle,
)
from loaders.land.quarantine import note_reasons, quarantine_contract_breaches
from loaders.land.readers import (
    add_new_columns,
    columns_of,
    first_line,
    land_csv,
    land_jsonl,
    land_parquet,
    new_columns,
    reject_counts,
)
from loaders.land.stage import Staged
from loaders.warehouse import roll_back

# One logger for the whole loader (log lines and filters keep the name
# `loaders.land` they had before the package split).
log = logging.getLogger(__package__)


class SchemaGuard:
    """Data transactions share the raw tables; adding a column needs them alone.

    DuckDB fails the commit of an insert into a table that another transaction
    altered meanwhile, so a new column waits for in-flight loads to finish and
    holds new ones back until it is committed.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._altering = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._altering:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._altering or self._active:
                self._cond.wait()
            self._altering = True
        try:
            yield
        finally:
            with self._cond:
                self._altering = False
                self._cond.notify_all()


@dataclass
class Run:
    """What the parallel loads of one run share."""

    guard: SchemaGuard = field(default_factory=SchemaGuard)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # sha256 -> set once the object holding those bytes has settled.
    claims: dict[str, threading.Event] = field(default_factory=dict)


def add_columns_alone(
    conn: duckdb.DuckDBPyConnection, dataset: Dataset, names: list[str], key: str
) -> None:
    """Add new columns in a transaction of their own, while no load is in flight."""
    if new_columns(conn, dataset, names):
        conn.execute("begin transaction")
        try:
            add_new_columns(conn, dataset, names, key)
            conn.execute("commit")
        except BaseException:
            roll_back(conn)
            raise


def land_one(conn: duckdb.DuckDBPyConnection, staged: Staged, bucket: str, run: Run) -> LoadResult:
    """Settle one staged object on the one-object path, in its own transaction.

    Skips it as a duplicate if the same bytes are loaded under another key
    (waiting for an in-flight object with those bytes first); otherwise reads
    its columns (adding new ones to the table) and, in one transaction,
    replaces the key's previous version, inserts the good rows, quarantines
    the bad ones, reconciles ``rows in = loaded + rejected`` and writes the
    ledger row. ``failed`` means nothing of the object was kept; its ledger
    row keeps it from being tried again until a new version arrives.
    """
    attempt = staged.attempt
    assert attempt.sha256 is not None
    with run.lock:
        settled = run.claims.get(attempt.sha256)
        mine = settled is None
        if mine:
            run.claims[attempt.sha256] = threading.Event()
    if settled is not None:
        settled.wait()  # the same bytes are loading under another key: let it finish
    try:
        duplicate = duplicate_of(conn, attempt, bucket)
        if duplicate:
            return settle(conn, attempt, bucket, "duplicate", f"same bytes as {duplicate}")
        _land_version(
            conn, attempt, bucket, staged.path, staged.meter, staged.fmt, run, staged.corrupt
        )
    finally:
        if mine:
            run.claims[attempt.sha256].set()
    result = attempt.result()
    if result.error:
        log.error("failed to load %s", result.error)
    else:
        log.info(
            "loaded %s: %d rows, %d rejected, in %.1fs",
            result.key,
            result.rows_loaded,
            result.rows_rejected,
            result.seconds,
        )
        if quarantined := result.quarantine_line():
            log.warning("%s", quarantined)
    return result


def _land_version(
    conn: duckdb.DuckDBPyConnection,
    attempt: Attempt,
    bucket: str,
    path: Path,
    meter: ContentMeter,
    fmt: str,
    run: Run,
    corrupt: LoadError | None,
) -> None:
    """Load the staged object in one transaction, or record its failure."""
    try:
        if corrupt:
            raise corrupt
        columns, has_quote, lines = _prepare(conn, attempt, path, meter, fmt, run)
        with run.guard.shared():
            conn.execute("begin transaction")
            try:
                _land(conn, attempt, bucket, path, meter, fmt, columns, has_quote, lines)
                record(conn, attempt, bucket)
                faults.point("insert")
                conn.execute("commit")
                faults.point("commit")
            except BaseException:
                # DuckDB keeps a transaction open after some errors: always roll back.
                roll_back(conn)
                raise
    except (LoadError, duckdb.Error) as exc:
        key = attempt.obj.key
        attempt.error = str(exc) if isinstance(exc, LoadError) else duckdb_error(key, exc)
        attempt.status, attempt.rows_loaded, attempt.rows_rejected = "failed", 0, 0
        attempt.reasons = ()
        attempt.replaced = None
        conn.execute("begin transaction")
        record(conn, attempt, bucket)
        conn.execute("commit")


def _prepare(
    conn: duckdb.DuckDBPyConnection,
    attempt: Attempt,
    path: Path,
    meter: ContentMeter,
    fmt: str,
    run: Run,
) -> tuple[tuple[list[str], list[str]], bool, int]:
    """Checks made before the data transaction: bytes, format, columns (added if new).

    Returns:
        ``(columns, the text has a quote, non-blank lines)``.
    """
    key = attempt.obj.key
    try:
        _, lines, has_quote = meter.finish()
    except LoadError as exc:
        raise LoadError(f"{key}: {exc}") from exc
    if meter.size == 0:
        raise LoadError(f"{key}: empty object (0 bytes)")
    if fmt == "parquet" and not meter.head.startswith(PARQUET_MAGIC):
        raise LoadError(f"{key}: not a Parquet file (no PAR1 magic bytes)")
    columns = columns_of(conn, attempt, path, fmt, meter.compression)
    if new_columns(conn, attempt.dataset, columns[1]):
        with run.guard.exclusive():
            add_columns_alone(conn, attempt.dataset, columns[1], key)
    return columns, has_quote, lines


def _land(
    conn: duckdb.DuckDBPyConnection,
    attempt: Attempt,
    bucket: str,
    path: Path,
    meter: ContentMeter,
    fmt: str,
    columns: tuple[list[str], list[str]],
    has_quote: bool,
    lines: int,
) -> None:
    """Everything of one object inside the open transaction; raises LoadError to fail it."""
    written, names = columns
    replace_previous(conn, attempt, bucket)
    if fmt == "parquet":
        attempt.first_line = 1
        attempt.rows_in = land_parquet(conn, attempt, path, written, names)
        seen = attempt.rows_loaded
    elif fmt == "jsonl":
        attempt.rows_in, attempt.first_line = lines, 1
        seen = sum(land_jsonl(conn, attempt, path, written, names, meter.compression))
    else:
        attempt.rows_in = max(lines - 1, 0)  # the header line holds no row
        seen = sum(land_csv(conn, attempt, path, names, meter.compression, has_quote))
    if seen != attempt.rows_in:
        raise LoadError(
            f"{attempt.obj.key}: reconciliation failed: {attempt.rows_in} row(s) in the file, "
            f"{seen} loaded or rejected"
        )
    quarantine_contract_breaches(conn, [attempt], attempt.started_at)
    attempt.rows_rejected = reject_counts(conn, attempt.load_id)[0]
    note_reasons(conn, [attempt])
    attempt.status = "loaded"


def duckdb_error(key: str, exc: duckdb.Error) -> str:
    """One readable line from a DuckDB error: the object, and what was wrong where."""
    parts = [f"{key}: {first_line(exc)}"]
    parts += [
        ln.strip()
        for ln in str(exc).splitlines()
        if ln.startswith(("Expected", "Error when", "Original Line"))
    ]
    return " | ".join(parts)
