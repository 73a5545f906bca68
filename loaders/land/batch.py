"""The fast path: plain CSV objects of one dataset sharing a header, landed by one statement.

One multi-file scan per worker reads a share of the objects; each object
still gets its own load id, lineage, reconciliation and ledger row, and the
batch commits as a whole. A batch that meets a record that does not parse
is rolled back, and its objects take the one-object path
(:mod:`loaders.land.single`).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator

import duckdb

from loaders import faults
from loaders.errors import LoadError
from loaders.land.ledger import (
    LINEAGE_COLUMNS,
    LoadResult,
    duplicate_of,
    raw_table,
    record,
    replace_previous,
)
from loaders.land.quarantine import note_reasons, quarantine_contract_breaches
from loaders.land.readers import columns_of, numbered, scan_csv
from loaders.land.stage import Staged
from loaders.warehouse import quote_identifier, roll_back

# One logger for the whole loader (log lines and filters keep the name
# `loaders.land` they had before the package split).
log = logging.getLogger(__package__)


class NotBatchable(Exception):
    """A batch met something only the one-object path handles; nothing was kept."""


def batch_groups(
    conn: duckdb.DuckDBPyConnection, staged: dict[int, Staged], bucket: str
) -> list[tuple[list[int], list[str]]]:
    """Groups of two or more staged objects that can land in one statement."""
    copies = Counter(s.attempt.sha256 for s in staged.values())
    groups: dict[tuple[str, tuple[str, ...], str], list[int]] = {}
    for index, item in staged.items():
        if copies[item.attempt.sha256] > 1:
            continue  # the same bytes twice: the one-object path settles the duplicate
        names = batchable(conn, item, bucket)
        if names is not None:
            group = (item.attempt.dataset.name, names, item.meter.compression)
            groups.setdefault(group, []).append(index)
    return [(members, list(key[1])) for key, members in groups.items() if len(members) > 1]


def batchable(
    conn: duckdb.DuckDBPyConnection, staged: Staged, bucket: str
) -> tuple[str, ...] | None:
    """The normalised header of a plain CSV that can share a batch, or ``None``.

    Anything unusual (another format, a quote that could hide a multi-line
    field, a known duplicate, an unreadable header) takes the one-object path.
    """
    attempt, meter = staged.attempt, staged.meter
    if staged.fmt != "csv" or staged.corrupt or meter.size == 0:
        return None
    try:
        _, lines, has_quote = meter.finish()
        if has_quote or lines < 1 or duplicate_of(conn, attempt, bucket):
            return None
        _, names = columns_of(conn, attempt, staged.path, "csv", meter.compression)
    except (LoadError, duckdb.Error):
        return None
    attempt.rows_in = lines - 1
    return tuple(names)


def land_batch(
    conn: duckdb.DuckDBPyConnection, group: list[Staged], names: list[str], bucket: str
) -> list[LoadResult]:
    """Land several clean CSV objects of one dataset in one statement and one transaction.

    One multi-file scan reads them; :func:`numbered` numbers rows across
    the files in order, so each row's record number is its ordinal minus the
    rows of the files before it. Every object still gets its own load id,
    lineage, reconciliation and ledger row, and the batch commits as a whole.
    Rows breaking the source contract are quarantined within the batch.
    Run one batch per worker, each on its own cursor, to use every core.

    Raises:
        NotBatchable: a row did not parse, or the counts do not reconcile;
            the transaction was rolled back and the objects take the
            one-object path (which quarantines what it must).
    """
    dataset = group[0].attempt.dataset
    compression = group[0].meter.compression
    conn.execute("begin transaction")
    try:
        conn.execute(
            "create or replace temp table elt_batch_files (file_index bigint, "
            "load_id varchar, loaded_at timestamptz, rows_before bigint)"
        )
        rows_before = 0
        for file_index, staged in enumerate(group):
            attempt = staged.attempt
            replace_previous(conn, attempt, bucket)
            conn.execute(
                "insert into elt_batch_files values (?, ?, ?, ?)",
                [file_index, attempt.load_id, attempt.started_at, rows_before],
            )
            rows_before += attempt.rows_in
        conn.execute("drop table if exists elt_reject_errors")
        conn.execute("drop table if exists elt_reject_scans")
        paths = [str(s.path) for s in group]
        # file_index (the file's place in the list) tells the rows' object:
        # an integer join, where a filename column would be a string per row.
        scan = numbered(scan_csv(paths, names, dataset, compression), "file_index")
        lineage = ", ".join(name for name, _ in LINEAGE_COLUMNS)
        target = ", ".join(quote_identifier(n) for n in names)
        source = ", ".join(f"scan.c{i}" for i in range(len(names)))
        conn.execute(
            f"insert into {raw_table(dataset)} ({target}, {lineage}) "
            f"select {source}, scan.elt_record - files.rows_before, files.load_id, files.loaded_at "
            f"from {scan} as scan "
            f"inner join elt_batch_files as files on scan.file_index = files.file_index"
        )
        rejected = conn.execute("select count(*) from elt_reject_errors").fetchone()
        if rejected and rejected[0]:
            raise NotBatchable(f"{rejected[0]} rejected row(s)")
        # The batch's rows carry their load's started_at as _loaded_at: as a
        # constant bound it skips the history's row groups (the load ids'
        # own minimum and maximum cannot: see quarantine_contract_breaches).
        landed_since = min(s.attempt.started_at for s in group)
        counts = {
            load_id: (n, first, last)
            for load_id, n, first, last in conn.execute(
                f"select _load_id, count(*), min(_source_row_number), max(_source_row_number) "
                f"from {raw_table(dataset)} "
                "where _loaded_at >= ? and _load_id in (select load_id from elt_batch_files) "
                "group by 1",
                [landed_since],
            ).fetchall()
        }
        for staged in group:
            attempt = staged.attempt
            n, first, last = counts.get(attempt.load_id, (0, 1, 0))
            # Distinct record numbers within 1..rows_in account for every line exactly once.
            if n != attempt.rows_in or first < 1 or last > attempt.rows_in:
                raise NotBatchable(f"{attempt.obj.key}: {n} rows for {attempt.rows_in} lines")
            attempt.rows_loaded = n
        # Values the contract refuses: one scan of the landed rows, where
        # DuckDB's compressed storage runs each check once per distinct
        # value of a low-cardinality column (dates, times).
        attempts = [s.attempt for s in group]
        quarantine_contract_breaches(conn, attempts, landed_since)
        note_reasons(conn, attempts)
        for attempt in attempts:
            attempt.rows_rejected = attempt.rows_in - attempt.rows_loaded
            attempt.status = "loaded"
            record(conn, attempt, bucket)
        conn.execute("drop table elt_batch_files")
        faults.point("insert")
        conn.execute("commit")
        faults.point("commit")
    except (NotBatchable, duckdb.Error) as exc:
        roll_back(conn)
        for staged in group:
            staged.attempt.replaced = None
            staged.attempt.rows_loaded = staged.attempt.rows_rejected = 0
            staged.attempt.reasons = ()
            staged.attempt.status = "failed"
        raise NotBatchable(str(exc)) from exc
    results = [s.attempt.result() for s in group]
    for result in results:
        log.info(
            "loaded %s: %d rows, %d rejected (batch of %d)",
            result.key,
            result.rows_loaded,
            result.rows_rejected,
            len(group),
        )
        if quarantined := result.quarantine_line():
            log.warning("%s", quarantined)
    return results


@contextlib.contextmanager
def one_thread_per_statement(conn: duckdb.DuckDBPyConnection, workers: int) -> Iterator[None]:
    """Run DuckDB on the calling threads alone while ``workers`` statements run at once.

    Every landing statement numbers its rows (``row_number() over ()``), which
    DuckDB runs on one thread, so the loader runs one statement per core. With
    ``threads`` left at the core count, DuckDB's own worker threads would
    compete with those statements for the cores (the figures are in the
    README's benchmark notes). ``threads`` is a database-wide setting; it is
    restored on the way out.
    """
    if workers < 2:
        yield
        return
    row = conn.execute("select current_setting('threads')").fetchone()
    conn.execute("set threads = 1")
    try:
        yield
    finally:
        conn.execute(f"set threads = {int(row[0]) if row else workers}")
