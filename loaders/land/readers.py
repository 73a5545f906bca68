"""Readers: where a staged file becomes rows of ``raw.<dataset>``, for CSV, JSON lines and Parquet.

Columns are matched by their normalised header name, never by position, and
land as text; a column the source YAML does not declare is added to the
table as text. Records DuckDB's CSV reader cannot parse go to
``elt.rejects`` with their line, error type, message and raw text (its
``store_rejects`` tables are copied in the load's transaction); JSON lines
that are not an object, likewise. Each row gets its record number in the
object (``_source_row_number``).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import logging
from pathlib import Path
from typing import Any

import duckdb
import zstandard

from loaders.datasets import RAW_SCHEMA, Dataset, normalise_name
from loaders.errors import LoadError
from loaders.land.ledger import LINEAGE_COLUMNS, REJECT_COLUMNS, REJECTS, Attempt, raw_table
from loaders.warehouse import quote_identifier, sql_literal

# One logger for the whole loader (log lines and filters keep the name
# `loaders.land` they had before the package split).
log = logging.getLogger(__package__)

MAX_HEADER_BYTES = 1 << 20

JSON_DELIMITER = "\x1e"  # cannot occur raw in valid JSON text: one line, one field


def _column_names(header: list[str], key: str) -> list[str]:
    """Normalised names of the header cells.

    Raises:
        LoadError: two header cells normalise to one name, or one would shadow
            a lineage column.
    """
    names = [normalise_name(cell, i) for i, cell in enumerate(header, start=1)]
    seen: dict[str, int] = {}
    for i, name in enumerate(names, start=1):
        if name in seen:
            raise LoadError(f"{key}: line 1, columns {seen[name]} and {i}: both are named {name!r}")
        seen[name] = i
    return names


def _csv_header(path: Path, compression: str, key: str, delimiter: str) -> list[str]:
    """The header cells of a CSV file: its first line, decompressed as needed.

    Raises:
        LoadError: no first line, or one that is not UTF-8.
    """
    try:
        with contextlib.ExitStack() as stack:
            raw: Any = stack.enter_context(open(path, "rb"))
            if compression == "gzip":
                raw = stack.enter_context(gzip.open(raw))
            elif compression == "zstd":
                reader = zstandard.ZstdDecompressor().stream_reader(raw)
                raw = stack.enter_context(io.BufferedReader(reader))
            first = raw.readline(MAX_HEADER_BYTES)
        text = first.decode("utf-8-sig").rstrip("\r\n")
        row = next(csv.reader([text], delimiter=delimiter), None)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, zstandard.ZstdError) as exc:
        raise LoadError(f"{key}: line 1: unreadable header ({exc})") from exc
    if not row:
        raise LoadError(f"{key}: line 1: no header row")
    return row


def _check_required(dataset: Dataset, names: list[str], key: str) -> None:
    missing = dataset.missing_columns(set(names))
    if missing:
        raise LoadError(f"{key}: line 1: missing required column(s) {', '.join(missing)}")


def columns_of(
    conn: duckdb.DuckDBPyConnection,
    attempt: Attempt,
    path: Path,
    fmt: str,
    compression: str,
) -> tuple[list[str], list[str]]:
    """The object's columns as written and as normalised, read before loading.

    Raises:
        LoadError: unreadable header, a name given twice, a required column
            missing, or not a Parquet file.
    """
    dataset, key = attempt.dataset, attempt.obj.key
    if fmt == "parquet":
        try:
            described = conn.execute(
                f"describe select * from read_parquet({sql_literal(str(path))})"
            ).fetchall()
        except duckdb.Error as exc:
            raise LoadError(f"{key}: not a readable Parquet file ({first_line(exc)})") from exc
        written = [str(r[0]) for r in described]
    elif fmt == "jsonl":
        try:
            found = conn.execute(
                f"select distinct unnest(json_keys(line)) as k "
                f"from {_json_lines(path, compression)} where {JSON_OBJECT} order by k"
            ).fetchall()
        except duckdb.Error as exc:
            raise LoadError(f"{key}: unreadable JSON lines ({first_line(exc)})") from exc
        written = [str(r[0]) for r in found]
    else:
        written = _csv_header(path, compression, key, dataset.delimiter)
    names = _column_names(written, key)
    if written or fmt != "jsonl":  # a JSON file of bad lines only is all quarantine
        _check_required(dataset, names, key)
    return written, names


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def new_columns(conn: duckdb.DuckDBPyConnection, dataset: Dataset, names: list[str]) -> list[str]:
    existing = {
        r[0]
        for r in conn.execute(
            "select column_name from duckdb_columns() where schema_name = ? and table_name = ?",
            [RAW_SCHEMA, dataset.name],
        ).fetchall()
    }
    return [name for name in names if name not in existing]


def add_new_columns(
    conn: duckdb.DuckDBPyConnection, dataset: Dataset, names: list[str], key: str
) -> None:
    """Add columns the table does not have yet, as text (kept, never dropped)."""
    for name in new_columns(conn, dataset, names):
        log.warning("%s: new column %r added to %s", key, name, raw_table(dataset))
        conn.execute(
            f"alter table {raw_table(dataset)} add column {quote_identifier(name)} varchar"
        )


def _insert_rows(
    conn: duckdb.DuckDBPyConnection,
    attempt: Attempt,
    names: list[str],
    values: list[str],
    row_number: str,
    scan: str,
) -> int:
    """``insert into raw.<dataset>`` the ``values`` (SQL expressions) as ``names``, plus lineage.

    Args:
        row_number: SQL expression of the row's record number in the object.
        scan: The ``from`` clause reading the object.

    Returns:
        Rows inserted.
    """
    lineage = ", ".join(name for name, _ in LINEAGE_COLUMNS)
    target = "".join(f"{quote_identifier(n)}, " for n in names)
    source = "".join(f"{v}, " for v in values)
    row = conn.execute(
        f"insert into {raw_table(attempt.dataset)} ({target}{lineage}) "
        f"select {source}{row_number}, ?, ? from {scan}",
        [attempt.load_id, attempt.started_at],
    ).fetchone()
    return int(row[0]) if row else 0


def scan_csv(
    paths: list[Path] | list[str],
    names: list[str],
    dataset: Dataset,
    compression: str,
    store_rejects: bool = True,
) -> str:
    """``read_csv`` over local files: the columns by position, named c0, c1, ..., as text.

    Args:
        store_rejects: Keep going past bad records, noting them in the temp
            tables ``elt_reject_errors`` and ``elt_reject_scans``; ``False``
            for a file already read cleanly once.
    """
    files = "[" + ", ".join(sql_literal(str(p)) for p in paths) + "]"
    positional = ", ".join(f"{sql_literal(f'c{i}')}: 'varchar'" for i in range(len(names)))
    rejects = (
        ", store_rejects = true, ignore_errors = true, "
        "rejects_table = 'elt_reject_errors', rejects_scan = 'elt_reject_scans'"
    )
    return (
        f"read_csv({files}, header = true, auto_detect = false, "
        f"columns = {{{positional}}}, delim = {sql_literal(dataset.delimiter)}, "
        f"quote = '\"', escape = '\"', compression = {sql_literal(compression)}, "
        f"strict_mode = true{rejects if store_rejects else ''})"
    )


def numbered(scan: str, *virtual: str) -> str:
    """``scan`` with ``elt_record``: each returned row's number in scan order, from 1.

    ``row_number() over ()`` on a single scan is DuckDB's documented way to turn
    the row order into a column (files in list order, rows in file order). It
    streams (``STREAMING_WINDOW`` in the plan): the scan is never buffered.

    Args:
        virtual: Virtual columns of the scan to keep (``*`` leaves them out),
            e.g. ``file_index``.
    """
    kept = "".join(f"{name}, " for name in virtual)
    return f"(select *, {kept}row_number() over () as elt_record from {scan})"


def land_csv(
    conn: duckdb.DuckDBPyConnection,
    attempt: Attempt,
    path: Path,
    names: list[str],
    compression: str,
    has_quote: bool,
) -> tuple[int, int]:
    """Insert a CSV's good rows and quarantine its bad records.

    Returns:
        ``(lines the inserted rows span, lines the rejected records span)``.
    """
    dataset, obj = attempt.dataset, attempt.obj
    conn.execute("drop table if exists elt_reject_errors")
    conn.execute("drop table if exists elt_reject_scans")
    scan = numbered(scan_csv([path], names, dataset, compression))
    positions = [f"c{i}" for i in range(len(names))]
    inserted = _insert_rows(conn, attempt, names, positions, "elt_record", scan)
    # DuckDB keeps rejects in temporary tables: copy them within this transaction,
    # one row per rejected record (a record can break several rules).
    conn.execute(
        f"""
        insert into {REJECTS} ({REJECT_COLUMNS})
        select
            ?, ?, ?, line, arg_min(column_name, column_idx),
            string_agg(distinct error_type, ', '),
            arg_min(error_message, column_idx),
            any_value(csv_line), ?, null
        from elt_reject_errors
        group by line
        """,
        [attempt.load_id, dataset.name, obj.key, attempt.started_at],
    )
    rejected, rejected_lines = reject_counts(conn, attempt.load_id)
    if rejected:
        _renumber_rows(conn, attempt, inserted + rejected)
    inserted_lines = inserted
    if has_quote and inserted:
        # A quoted field can span lines: add the line feeds inside inserted fields.
        inserted_lines += _line_feeds_in_fields(conn, dataset, names, attempt)
    attempt.rows_loaded = inserted
    return inserted_lines, rejected_lines


def reject_counts(conn: duckdb.DuckDBPyConnection, load_id: str) -> tuple[int, int]:
    """Rejected records of a load, and the non-blank lines they span."""
    row = conn.execute(
        f"""
        select
            count(*),
            coalesce(sum(
                1 + len(rtrim(coalesce(raw_line, ''), chr(10) || chr(13)))
                - len(replace(rtrim(coalesce(raw_line, ''), chr(10) || chr(13)), chr(10), ''))
            ), 0)
        from {REJECTS}
        where load_id = ?
        """,
        [load_id],
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _line_feeds_in_fields(
    conn: duckdb.DuckDBPyConnection, dataset: Dataset, names: list[str], attempt: Attempt
) -> int:
    quoted = [quote_identifier(n) for n in names]
    feeds = " + ".join(f"coalesce(len({q}) - len(replace({q}, chr(10), '')), 0)" for q in quoted)
    # _loaded_at, the load's start, as a constant: the scan skips the history's
    # row groups, which the load id's own minimum and maximum cannot.
    row = conn.execute(
        f"select coalesce(sum({feeds}), 0) from {raw_table(dataset)} "
        "where _loaded_at = ? and _load_id = ?",
        [attempt.started_at, attempt.load_id],
    ).fetchone()
    return int(row[0]) if row else 0


def _renumber_rows(conn: duckdb.DuckDBPyConnection, attempt: Attempt, records: int) -> None:
    """Set ``_source_row_number`` to the record number when records were rejected.

    The scan numbers the rows it returns; with rejects, the n-th returned row is
    the n-th record that was not rejected (DuckDB's reject ``line`` counts the
    header as line 1).
    """
    conn.execute(
        f"""
        update {raw_table(attempt.dataset)} as landed
        set _source_row_number = kept.record_number
        from (
            select
                row_number() over (order by record_number) as returned_number,
                record_number
            from range(1, ? + 1) as records (record_number)
            where record_number not in (
                select line - 1 from {REJECTS} where load_id = ?
            )
        ) as kept
        where
            landed._loaded_at = ?
            and landed._load_id = ?
            and landed._source_row_number = kept.returned_number
        """,
        [records, attempt.load_id, attempt.started_at, attempt.load_id],
    )


def _json_lines(path: Path, compression: str) -> str:
    """JSON lines as ``(line_number, line)``: each line one text field.

    The delimiter, a raw 0x1E byte, cannot occur in valid JSON, so a line is
    never split and a bad line is known by its number and text.
    """
    lines = (
        f"read_csv({sql_literal(str(path))}, header = false, auto_detect = false, "
        f"columns = {{'line': 'varchar'}}, delim = {sql_literal(JSON_DELIMITER)}, "
        f"quote = '', escape = '', compression = {sql_literal(compression)})"
    )
    # Numbered before blank lines are dropped, so numbers are the file's lines.
    return f"(select elt_record as line_number, line from {numbered(lines)} where trim(line) != '')"


JSON_OBJECT = "coalesce(json_valid(line) and json_type(line) = 'OBJECT', false)"


def land_jsonl(
    conn: duckdb.DuckDBPyConnection,
    attempt: Attempt,
    path: Path,
    keys: list[str],
    names: list[str],
    compression: str,
) -> tuple[int, int]:
    """Insert JSON-lines objects by key; lines that are not a JSON object are quarantined.

    Returns:
        ``(lines inserted, lines rejected)``.
    """
    dataset, obj = attempt.dataset, attempt.obj
    conn.execute(
        "create or replace temp table elt_json_lines as "
        f"select * from {_json_lines(path, compression)}"
    )
    conn.execute(
        f"""
        insert into {REJECTS} ({REJECT_COLUMNS})
        select
            ?, ?, ?, line_number, null,
            case when json_valid(line) then 'NOT AN OBJECT' else 'INVALID JSON' end,
            case when json_valid(line) then 'the line is JSON but not an object'
                else 'the line is not valid JSON' end,
            line, ?, null
        from elt_json_lines
        where not {JSON_OBJECT}
        """,
        [attempt.load_id, dataset.name, obj.key, attempt.started_at],
    )
    # JSON path of each key, quoted: keys can hold any character.
    paths = ['$."' + k.replace("\\", "\\\\").replace('"', '\\"') + '"' for k in keys]
    values = [f"json_extract_string(line, {sql_literal(p)})" for p in paths]
    scan = f"elt_json_lines where {JSON_OBJECT}"
    attempt.rows_loaded = _insert_rows(conn, attempt, names, values, "line_number", scan)
    conn.execute("drop table elt_json_lines")
    return attempt.rows_loaded, reject_counts(conn, attempt.load_id)[1]


def land_parquet(
    conn: duckdb.DuckDBPyConnection,
    attempt: Attempt,
    path: Path,
    columns: list[str],
    names: list[str],
) -> int:
    """Insert a Parquet file's rows, every column cast to text.

    Returns:
        The rows the file's footer says it holds (the independent count).
    """
    literal = sql_literal(str(path))
    footer = conn.execute(
        f"select coalesce(sum(num_rows), 0) from parquet_file_metadata({literal})"
    ).fetchone()
    values = [f"cast({quote_identifier(c)} as varchar)" for c in columns]
    scan = f"read_parquet({literal}, file_row_number = true)"
    attempt.rows_loaded = _insert_rows(conn, attempt, names, values, "file_row_number + 1", scan)
    return int(footer[0]) if footer else 0
