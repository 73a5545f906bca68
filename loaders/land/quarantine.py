"""Quarantine: rows the source contract refuses, their reasons, and the rejects export.

A landed row whose value staging could not convert, or that lacks a value
the contract says it must have (:mod:`loaders.contract`), moves from
``raw.<dataset>`` to ``elt.rejects`` in its load's transaction, naming the
column, the value and why. When a dataset's contract changes, the rows
landed under the old one are checked again. The rejects of the loaded object
versions are published as ``marts/_rejects/<dataset>.csv``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import duckdb

from loaders import contract
from loaders.datasets import Dataset
from loaders.errors import StorageError
from loaders.formats import format_of
from loaders.land.ledger import (
    LEDGER,
    REJECT_COLUMNS,
    REJECTS,
    STATE,
    Attempt,
    ensure_tables,
    raw_table,
    set_state,
)
from loaders.land.readers import first_line
from loaders.s3 import ObjectInfo
from loaders.warehouse import roll_back, sql_literal

# One logger for the whole loader (log lines and filters keep the name
# `loaders.land` they had before the package split).
log = logging.getLogger(__package__)


def quarantine_contract_breaches(
    conn: duckdb.DuckDBPyConnection, attempts: list[Attempt], landed_since: datetime | None = None
) -> None:
    """Move landed rows that break the source contract to the quarantine.

    The contract (:mod:`loaders.contract`, from the source YAML) says which
    columns must have a value and what each typed value must convert to.
    A row breaking it stays out of ``raw`` (staging could not compute it) and
    goes to ``elt.rejects`` naming its first such column, the value and why.
    One scan of the just-landed rows covers every rule and every load in
    ``attempts`` (one dataset, one file format); each attempt's
    ``rows_loaded`` drops by the rows it had moved.

    ``landed_since`` is the earliest ``_loaded_at`` of those rows (for rows
    this run landed: the attempts' ``started_at``). As a constant it lets
    the scan skip the row groups of older loads by their minimum and
    maximum, which ``_load_id`` cannot do (DuckDB keeps only a text
    column's first 8 bytes there, the same date for every load of a day).
    ``None`` reads every row group (a re-check of the whole history).
    """
    dataset, first_line = attempts[0].dataset, attempts[0].first_line
    found = contract.table_checks(dataset.rules)
    if not found:
        return
    first = contract.first_failure(found)
    load_ids = [a.load_id for a in attempts]
    keys = [a.obj.key for a in attempts]
    bound: dict[str, object] = {"since": landed_since} if landed_since else {}
    since = "_loaded_at >= $since and " if bound else ""
    bad = f"{since}_load_id in (select unnest($load_ids)) and ({first['any']})"
    quarantined = conn.execute(
        f"""
        insert into {REJECTS} ({REJECT_COLUMNS})
        select
            _load_id, $dataset, loads.key, _source_row_number + $offset, {first["column"]},
            {first["error_type"]}, {first["message"]}, null, _loaded_at, {first["value"]}
        from {raw_table(dataset)}
        inner join (select unnest($load_ids) as load_id, unnest($keys) as key) as loads
            on _load_id = loads.load_id
        where {bad}
        """,
        {
            "load_ids": load_ids,
            "keys": keys,
            "dataset": dataset.name,
            "offset": first_line - 1,
            **bound,
        },
    ).fetchone()
    if not (quarantined and quarantined[0]):
        return  # the usual case: no second scan to delete nothing
    conn.execute(f"delete from {raw_table(dataset)} where {bad}", {"load_ids": load_ids, **bound})
    moved = dict(
        conn.execute(
            f"select load_id, count(*) from {REJECTS} where load_id in (select unnest(?)) "
            f"and error_type in {(contract.CAST_ERROR, contract.MISSING)} group by 1",
            [load_ids],
        ).fetchall()
    )
    for attempt in attempts:
        attempt.rows_loaded -= moved.get(attempt.load_id, 0)


def note_reasons(conn: duckdb.DuckDBPyConnection, attempts: list[Attempt]) -> None:
    """Set each attempt's ``reasons``: its quarantined rows counted by column and error type."""
    found: dict[str, list[tuple[str | None, str, int]]] = {}
    for load_id, column, error_type, count in conn.execute(
        f"select load_id, column_name, error_type, count(*) from {REJECTS} "
        "where load_id in (select unnest(?)) group by all order by 4 desc, 2, 3",
        [[a.load_id for a in attempts]],
    ).fetchall():
        found.setdefault(load_id, []).append((column, error_type, int(count)))
    for attempt in attempts:
        attempt.reasons = tuple(found.get(attempt.load_id, ()))


def recheck_contracts(conn: duckdb.DuckDBPyConnection, datasets: list[Dataset]) -> dict[str, int]:
    """Check the landed rows of each dataset whose source contract changed since they landed.

    A warehouse landed under an older contract (or before there was one) may
    hold rows the current contract refuses, which staging could not convert:
    they move to ``elt.rejects`` like rows refused at landing, and each load's
    ledger counts follow. One transaction per dataset; the new fingerprint is
    stored with it, so an unchanged contract costs one lookup.

    Returns:
        Rows moved to quarantine, per dataset that had any (the models then
        need a full refresh: :func:`full_refresh_pending` says so until
        :func:`full_refresh_done`).
    """
    ensure_tables(conn, datasets)
    moved_by_dataset = {}
    for dataset in datasets:
        fingerprint = contract.fingerprint(dataset.rules)
        stored = conn.execute(
            f"select value from {STATE} where name = ?", [f"contract:{dataset.name}"]
        ).fetchone()
        if stored and stored[0] == fingerprint:
            continue
        conn.execute("begin transaction")
        try:
            attempts = []
            for load_id, key, etag, size, loaded, rejected in conn.execute(
                f"select load_id, key, etag, size_bytes, rows_loaded, coalesce(rows_rejected, 0) "
                f"from {LEDGER} where dataset = ? and status = 'loaded' and rows_loaded > 0",
                [dataset.name],
            ).fetchall():
                attempt = Attempt(dataset, ObjectInfo(key, etag, size), load_id=load_id)
                attempt.rows_loaded, attempt.rows_rejected = loaded, rejected
                attempt.first_line = 2 if (format_of(key) or "csv") == "csv" else 1
                attempts.append(attempt)
            moved = 0
            for first_line in sorted({a.first_line for a in attempts}):
                group = [a for a in attempts if a.first_line == first_line]
                before = {a.load_id: a.rows_loaded for a in group}
                quarantine_contract_breaches(conn, group)
                for attempt in group:
                    gone = before[attempt.load_id] - attempt.rows_loaded
                    if gone:
                        moved += gone
                        conn.execute(
                            f"update {LEDGER} set rows_loaded = rows_loaded - ?, "
                            "rows_rejected = coalesce(rows_rejected, 0) + ? where load_id = ?",
                            [gone, gone, attempt.load_id],
                        )
            set_state(conn, f"contract:{dataset.name}", fingerprint)
            if moved:
                set_state(conn, "rows_removed_at", datetime.now(UTC).isoformat())
            conn.execute("commit")
        except BaseException:
            roll_back(conn)
            raise
        if moved:
            log.warning(
                "the contract of %s changed: %d landed row(s) it refuses moved to %s",
                dataset.name,
                moved,
                REJECTS,
            )
            moved_by_dataset[dataset.name] = moved
    return moved_by_dataset


CSV_SAFE = "case when regexp_matches({c}, '^[=+\\-@\\t\\r]') then '''' || {c} else {c} end"


def export_rejects(conn: duckdb.DuckDBPyConnection, bucket: str, dataset: Dataset) -> str:
    """Write the dataset's rejects to ``s3://<bucket>/marts/_rejects/<dataset>.csv``.

    Lists rejects of the object versions currently loaded (a replaced version's
    rejects go with it); text a spreadsheet would run is escaped with a quote.

    Returns:
        The key written.

    Raises:
        StorageError: the object could not be written.
    """
    key = f"marts/_rejects/{dataset.name}.csv"
    text = ", ".join(
        CSV_SAFE.format(c=f"rejects.{c}") + f" as {c}"
        for c in ("key", "column_name", "value", "error_type", "message", "raw_line")
    )
    statement = f"""
        copy (
            select rejects.load_id, {text}, rejects.line, rejects.rejected_at
            from {REJECTS} as rejects
            inner join {LEDGER} as ledger on rejects.load_id = ledger.load_id
            where rejects.dataset = ? and ledger.status = 'loaded'
            order by rejects.key, rejects.line
        ) to {sql_literal(f"s3://{bucket}/{key}")} (format csv, header true)
        """
    try:
        conn.execute(statement, [dataset.name])
    except duckdb.IOException as exc:
        raise StorageError(f"cannot write s3://{bucket}/{key}: {first_line(exc)}") from exc
    return key
