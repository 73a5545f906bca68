"""Land raw objects from ``s3://<bucket>/raw/<dataset>/`` into ``raw.<dataset>``.

Every column lands as text (no type sniffing: staging casts with explicit
formats), matched to the table by its normalised header name, never by
position. Columns a file has that the source YAML does not declare are added
to the table as text: nothing in a file is dropped. Each row carries lineage::

    _source_row_number  1-based record number within the object
    _load_id            ledger id of the load that wrote it: elt.ledger.load_id
                        gives the object's bucket, key, ETag and sha256
    _loaded_at          when that load started (UTC)

The key and ETag live once per object in the ledger, not on every row: as two
long strings per row they cost 11% of landing time (measured at 32 weeks,
10.8 s against 12.1 s), and staging joins them back by ``_load_id``.

``elt.ledger`` has one row per object version seen, with its sha256, status
(``loaded``, ``failed``, ``duplicate``, ``refused``, ``superseded``), rows in,
loaded and rejected, and timings. Rows that do not parse go to ``elt.rejects``
with their line, error type, message and raw text; so do rows with a value
the source contract refuses (:mod:`loaders.contract`), naming the column and
the value: whatever lands, staging can convert. For each object the rows,
the rejects and the ledger row are written in one DuckDB transaction: a crash
at any point leaves either all of it or none of it, and the next run finishes
the job. A new version of a key replaces the rows of the previous one in that
same transaction; the ledger keeps both versions.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import logging
import secrets
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import zstandard
from botocore.exceptions import BotoCoreError, ClientError

from loaders import contract, faults
from loaders.datasets import RAW_SCHEMA, Dataset, normalise_name
from loaders.errors import LoadError, StorageError
from loaders.formats import PARQUET_MAGIC, ContentMeter, format_of
from loaders.s3 import ObjectInfo, list_objects
from loaders.warehouse import quote_identifier, sql_literal

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

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
CHUNK = 8 * 2**20
MAX_HEADER_BYTES = 1 << 20
JSON_DELIMITER = "\x1e"  # cannot occur raw in valid JSON text: one line, one field


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
class _Attempt:
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
    """A sortable, unique load id: ``20240113T120000Z-3fa2c1``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


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
        conn.execute(f"create table if not exists {_table(dataset)} ({', '.join(declared)})")
        # Warehouses landed before the key and ETag moved to the ledger: drop
        # the per-row copies (the ledger row of every load holds the same values).
        for column in _LEGACY_LINEAGE:
            conn.execute(f"alter table {_table(dataset)} drop column if exists {column}")


def _table(dataset: Dataset) -> str:
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


def _download(
    s3: S3Client,
    bucket: str,
    obj: ObjectInfo,
    path: Path,
    meter: ContentMeter,
    on_bytes: Callable[[int], None] | None,
) -> None:
    """Stream ``obj`` to ``path``, feeding every chunk to ``meter``.

    ``IfMatch`` pins the version listed: if the key is overwritten meanwhile,
    the read fails rather than mixing versions (the next run takes the new one).

    Raises:
        StorageError: the read failed; nothing is recorded, so it is retried.
    """
    try:
        body = s3.get_object(Bucket=bucket, Key=obj.key, IfMatch=obj.etag)["Body"]
        with open(path, "wb") as out:
            for chunk in body.iter_chunks(CHUNK):
                meter.update(chunk)
                out.write(chunk)
                faults.point("download")
                if on_bytes:
                    on_bytes(len(chunk))
    except (ClientError, BotoCoreError, OSError) as exc:
        raise StorageError(f"cannot read s3://{bucket}/{obj.key}: {exc}") from exc


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _new_columns(conn: duckdb.DuckDBPyConnection, dataset: Dataset, names: list[str]) -> list[str]:
    existing = {
        r[0]
        for r in conn.execute(
            "select column_name from duckdb_columns() where schema_name = ? and table_name = ?",
            [RAW_SCHEMA, dataset.name],
        ).fetchall()
    }
    return [name for name in names if name not in existing]


def _add_new_columns(
    conn: duckdb.DuckDBPyConnection, dataset: Dataset, names: list[str], key: str
) -> None:
    """Add columns the table does not have yet, as text (kept, never dropped)."""
    for name in _new_columns(conn, dataset, names):
        log.warning("%s: new column %r added to %s", key, name, _table(dataset))
        conn.execute(f"alter table {_table(dataset)} add column {quote_identifier(name)} varchar")


def _insert_rows(
    conn: duckdb.DuckDBPyConnection,
    attempt: _Attempt,
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
        f"insert into {_table(attempt.dataset)} ({target}{lineage}) "
        f"select {source}{row_number}, ?, ? from {scan}",
        [attempt.load_id, attempt.started_at],
    ).fetchone()
    return int(row[0]) if row else 0


def _scan_csv(
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


def _numbered(scan: str, *virtual: str) -> str:
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


def _land_csv(
    conn: duckdb.DuckDBPyConnection,
    attempt: _Attempt,
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
    scan = _numbered(_scan_csv([path], names, dataset, compression))
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
    rejected, rejected_lines = _reject_counts(conn, attempt.load_id)
    if rejected:
        _renumber_rows(conn, attempt, inserted + rejected)
    inserted_lines = inserted
    if has_quote and inserted:
        # A quoted field can span lines: add the line feeds inside inserted fields.
        inserted_lines += _line_feeds_in_fields(conn, dataset, names, attempt.load_id)
    attempt.rows_loaded = inserted
    return inserted_lines, rejected_lines


def _reject_counts(conn: duckdb.DuckDBPyConnection, load_id: str) -> tuple[int, int]:
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
    conn: duckdb.DuckDBPyConnection, dataset: Dataset, names: list[str], load_id: str
) -> int:
    quoted = [quote_identifier(n) for n in names]
    feeds = " + ".join(f"coalesce(len({q}) - len(replace({q}, chr(10), '')), 0)" for q in quoted)
    row = conn.execute(
        f"select coalesce(sum({feeds}), 0) from {_table(dataset)} where _load_id = ?", [load_id]
    ).fetchone()
    return int(row[0]) if row else 0


def _renumber_rows(conn: duckdb.DuckDBPyConnection, attempt: _Attempt, records: int) -> None:
    """Set ``_source_row_number`` to the record number when records were rejected.

    The scan numbers the rows it returns; with rejects, the n-th returned row is
    the n-th record that was not rejected (DuckDB's reject ``line`` counts the
    header as line 1).
    """
    conn.execute(
        f"""
        update {_table(attempt.dataset)} as landed
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
        where landed._load_id = ? and landed._source_row_number = kept.returned_number
        """,
        [records, attempt.load_id, attempt.load_id],
    )


def _check_required(dataset: Dataset, names: list[str], key: str) -> None:
    missing = dataset.missing_columns(set(names))
    if missing:
        raise LoadError(f"{key}: line 1: missing required column(s) {', '.join(missing)}")


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
    return (
        f"(select elt_record as line_number, line from {_numbered(lines)} where trim(line) != '')"
    )


JSON_OBJECT = "coalesce(json_valid(line) and json_type(line) = 'OBJECT', false)"


def _land_jsonl(
    conn: duckdb.DuckDBPyConnection,
    attempt: _Attempt,
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
    return attempt.rows_loaded, _reject_counts(conn, attempt.load_id)[1]


def _land_parquet(
    conn: duckdb.DuckDBPyConnection,
    attempt: _Attempt,
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


def _quarantine_contract_breaches(
    conn: duckdb.DuckDBPyConnection, attempts: list[_Attempt]
) -> None:
    """Move landed rows that break the source contract to the quarantine.

    The contract (:mod:`loaders.contract`, from the source YAML) says which
    columns must have a value and what each typed value must convert to.
    A row breaking it stays out of ``raw`` (staging could not compute it) and
    goes to ``elt.rejects`` naming its first such column, the value and why.
    One scan of the just-landed rows covers every rule and every load in
    ``attempts`` (one dataset, one file format); each attempt's
    ``rows_loaded`` drops by the rows it had moved.
    """
    dataset, first_line = attempts[0].dataset, attempts[0].first_line
    found = contract.table_checks(dataset.rules)
    if not found:
        return
    first = contract.first_failure(found)
    load_ids = [a.load_id for a in attempts]
    keys = [a.obj.key for a in attempts]
    bad = f"_load_id in (select unnest($load_ids)) and ({first['any']})"
    quarantined = conn.execute(
        f"""
        insert into {REJECTS} ({REJECT_COLUMNS})
        select
            _load_id, $dataset, loads.key, _source_row_number + $offset, {first["column"]},
            {first["error_type"]}, {first["message"]}, null, _loaded_at, {first["value"]}
        from {_table(dataset)}
        inner join (select unnest($load_ids) as load_id, unnest($keys) as key) as loads
            on _load_id = loads.load_id
        where {bad}
        """,
        {"load_ids": load_ids, "keys": keys, "dataset": dataset.name, "offset": first_line - 1},
    ).fetchone()
    if not (quarantined and quarantined[0]):
        return  # the usual case: no second scan to delete nothing
    conn.execute(f"delete from {_table(dataset)} where {bad}", {"load_ids": load_ids})
    moved = dict(
        conn.execute(
            f"select load_id, count(*) from {REJECTS} where load_id in (select unnest(?)) "
            f"and error_type in {(contract.CAST_ERROR, contract.MISSING)} group by 1",
            [load_ids],
        ).fetchall()
    )
    for attempt in attempts:
        attempt.rows_loaded -= moved.get(attempt.load_id, 0)


def _note_reasons(conn: duckdb.DuckDBPyConnection, attempts: list[_Attempt]) -> None:
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


def _set_state(conn: duckdb.DuckDBPyConnection, name: str, value: str) -> None:
    conn.execute(
        f"insert or replace into {STATE} values (?, ?, ?)", [name, value, datetime.now(UTC)]
    )


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
                attempt = _Attempt(dataset, ObjectInfo(key, etag, size), load_id=load_id)
                attempt.rows_loaded, attempt.rows_rejected = loaded, rejected
                attempt.first_line = 2 if (format_of(key) or "csv") == "csv" else 1
                attempts.append(attempt)
            moved = 0
            for first_line in sorted({a.first_line for a in attempts}):
                group = [a for a in attempts if a.first_line == first_line]
                before = {a.load_id: a.rows_loaded for a in group}
                _quarantine_contract_breaches(conn, group)
                for attempt in group:
                    gone = before[attempt.load_id] - attempt.rows_loaded
                    if gone:
                        moved += gone
                        conn.execute(
                            f"update {LEDGER} set rows_loaded = rows_loaded - ?, "
                            "rows_rejected = coalesce(rows_rejected, 0) + ? where load_id = ?",
                            [gone, gone, attempt.load_id],
                        )
            _set_state(conn, f"contract:{dataset.name}", fingerprint)
            if moved:
                _set_state(conn, "rows_removed_at", datetime.now(UTC).isoformat())
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
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
        _set_state(conn, "full_refresh_at", started_at.isoformat())


def warehouse_has_state(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether the loader's tables exist (a warehouse that never landed has none)."""
    row = conn.execute(
        "select count(*) from duckdb_tables() where schema_name = 'elt' and table_name = 'state'"
    ).fetchone()
    return bool(row and row[0])


def _replace_previous(conn: duckdb.DuckDBPyConnection, attempt: _Attempt, bucket: str) -> None:
    """Delete the rows of the key's previously loaded version and mark it superseded."""
    previous = conn.execute(
        f"select load_id from {LEDGER} where bucket = ? and key = ? and status = 'loaded'",
        [bucket, attempt.obj.key],
    ).fetchall()
    for (load_id,) in previous:
        conn.execute(f"delete from {_table(attempt.dataset)} where _load_id = ?", [load_id])
        conn.execute(
            f"update {LEDGER} set status = 'superseded', superseded_by = ? where load_id = ?",
            [attempt.load_id, load_id],
        )
        attempt.replaced = load_id


def _record(conn: duckdb.DuckDBPyConnection, attempt: _Attempt, bucket: str) -> None:
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


def _duplicate_of(conn: duckdb.DuckDBPyConnection, attempt: _Attempt, bucket: str) -> str | None:
    """Another key whose loaded version has these very bytes, if any."""
    row = conn.execute(
        f"select key from {LEDGER} where bucket = ? and dataset = ? and sha256 = ? "
        "and status = 'loaded' and key != ? order by started_at limit 1",
        [bucket, attempt.dataset.name, attempt.sha256, attempt.obj.key],
    ).fetchone()
    return str(row[0]) if row else None


def _settle(
    conn: duckdb.DuckDBPyConnection, attempt: _Attempt, bucket: str, status: str, error: str
) -> LoadResult:
    """Record a version that loads nothing (refused, duplicate) in its own transaction."""
    attempt.status, attempt.error = status, error
    conn.execute("begin transaction")
    _record(conn, attempt, bucket)
    conn.execute("commit")
    log.warning("%s %s: %s", status, attempt.obj.key, error)
    return attempt.result()


class _SchemaGuard:
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
class _Run:
    """What the parallel loads of one run share."""

    guard: _SchemaGuard = field(default_factory=_SchemaGuard)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # sha256 -> set once the object holding those bytes has settled.
    claims: dict[str, threading.Event] = field(default_factory=dict)


def _columns_of(
    conn: duckdb.DuckDBPyConnection,
    attempt: _Attempt,
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
            raise LoadError(f"{key}: not a readable Parquet file ({_first_line(exc)})") from exc
        written = [str(r[0]) for r in described]
    elif fmt == "jsonl":
        try:
            found = conn.execute(
                f"select distinct unnest(json_keys(line)) as k "
                f"from {_json_lines(path, compression)} where {JSON_OBJECT} order by k"
            ).fetchall()
        except duckdb.Error as exc:
            raise LoadError(f"{key}: unreadable JSON lines ({_first_line(exc)})") from exc
        written = [str(r[0]) for r in found]
    else:
        written = _csv_header(path, compression, key, dataset.delimiter)
    names = _column_names(written, key)
    if written or fmt != "jsonl":  # a JSON file of bad lines only is all quarantine
        _check_required(dataset, names, key)
    return written, names


def _land(
    conn: duckdb.DuckDBPyConnection,
    attempt: _Attempt,
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
    _replace_previous(conn, attempt, bucket)
    if fmt == "parquet":
        attempt.first_line = 1
        attempt.rows_in = _land_parquet(conn, attempt, path, written, names)
        seen = attempt.rows_loaded
    elif fmt == "jsonl":
        attempt.rows_in, attempt.first_line = lines, 1
        seen = sum(_land_jsonl(conn, attempt, path, written, names, meter.compression))
    else:
        attempt.rows_in = max(lines - 1, 0)  # the header line holds no row
        seen = sum(_land_csv(conn, attempt, path, names, meter.compression, has_quote))
    if seen != attempt.rows_in:
        raise LoadError(
            f"{attempt.obj.key}: reconciliation failed: {attempt.rows_in} row(s) in the file, "
            f"{seen} loaded or rejected"
        )
    _quarantine_contract_breaches(conn, [attempt])
    attempt.rows_rejected = _reject_counts(conn, attempt.load_id)[0]
    _note_reasons(conn, [attempt])
    attempt.status = "loaded"


def _prepare(
    conn: duckdb.DuckDBPyConnection,
    attempt: _Attempt,
    path: Path,
    meter: ContentMeter,
    fmt: str,
    run: _Run,
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
    columns = _columns_of(conn, attempt, path, fmt, meter.compression)
    if _new_columns(conn, attempt.dataset, columns[1]):
        with run.guard.exclusive():
            _add_columns_alone(conn, attempt.dataset, columns[1], key)
    return columns, has_quote, lines


@dataclass
class _Staged:
    """An object streamed to a local file, hashed and counted, before any transaction."""

    attempt: _Attempt
    path: Path
    meter: ContentMeter
    fmt: str
    corrupt: LoadError | None = None


def _stage(
    s3: S3Client,
    bucket: str,
    dataset: Dataset,
    obj: ObjectInfo,
    folder: Path,
    on_bytes: Callable[[int], None] | None,
) -> _Staged:
    """Download ``obj`` into ``folder`` while hashing it and counting its lines.

    Raises:
        StorageError: the object could not be read (the run retries it next time).
    """
    attempt = _Attempt(dataset=dataset, obj=obj)
    fmt = format_of(obj.key) or "csv"
    staged = _Staged(attempt, folder / "object", ContentMeter(text=fmt != "parquet"), fmt)
    folder.mkdir(parents=True, exist_ok=True)
    clock = time.monotonic()
    try:
        _download(s3, bucket, obj, staged.path, staged.meter, on_bytes)
    except LoadError as exc:  # a corrupt compressed stream fails the object
        staged.corrupt = LoadError(f"{obj.key}: {exc}")
    attempt.download_seconds = time.monotonic() - clock
    attempt.sha256 = staged.meter.sha256.hexdigest()
    return staged


class _NotBatchable(Exception):
    """A batch met something only the one-object path handles; nothing was kept."""


def _batchable(
    conn: duckdb.DuckDBPyConnection, staged: _Staged, bucket: str
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
        if has_quote or lines < 1 or _duplicate_of(conn, attempt, bucket):
            return None
        _, names = _columns_of(conn, attempt, staged.path, "csv", meter.compression)
    except (LoadError, duckdb.Error):
        return None
    attempt.rows_in = lines - 1
    return tuple(names)


def _land_batch(
    conn: duckdb.DuckDBPyConnection, group: list[_Staged], names: list[str], bucket: str
) -> list[LoadResult]:
    """Land several clean CSV objects of one dataset in one statement and one transaction.

    One multi-file scan reads them; :func:`_numbered` numbers rows across
    the files in order, so each row's record number is its ordinal minus the
    rows of the files before it. Every object still gets its own load id,
    lineage, reconciliation and ledger row, and the batch commits as a whole.
    Rows breaking the source contract are quarantined within the batch.
    Run one batch per worker, each on its own cursor, to use every core.

    Raises:
        _NotBatchable: a row did not parse, or the counts do not reconcile;
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
            _replace_previous(conn, attempt, bucket)
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
        scan = _numbered(_scan_csv(paths, names, dataset, compression), "file_index")
        lineage = ", ".join(name for name, _ in LINEAGE_COLUMNS)
        target = ", ".join(quote_identifier(n) for n in names)
        source = ", ".join(f"scan.c{i}" for i in range(len(names)))
        conn.execute(
            f"insert into {_table(dataset)} ({target}, {lineage}) "
            f"select {source}, scan.elt_record - files.rows_before, files.load_id, files.loaded_at "
            f"from {scan} as scan "
            f"inner join elt_batch_files as files on scan.file_index = files.file_index"
        )
        rejected = conn.execute("select count(*) from elt_reject_errors").fetchone()
        if rejected and rejected[0]:
            raise _NotBatchable(f"{rejected[0]} rejected row(s)")
        counts = {
            load_id: (n, first, last)
            for load_id, n, first, last in conn.execute(
                f"select _load_id, count(*), min(_source_row_number), max(_source_row_number) "
                f"from {_table(dataset)} where _load_id in (select load_id from elt_batch_files) "
                "group by 1"
            ).fetchall()
        }
        for staged in group:
            attempt = staged.attempt
            n, first, last = counts.get(attempt.load_id, (0, 1, 0))
            # Distinct record numbers within 1..rows_in account for every line exactly once.
            if n != attempt.rows_in or first < 1 or last > attempt.rows_in:
                raise _NotBatchable(f"{attempt.obj.key}: {n} rows for {attempt.rows_in} lines")
            attempt.rows_loaded = n
        # Values the contract refuses: one scan of the landed rows, where
        # DuckDB's compressed storage runs each check once per distinct
        # value of a low-cardinality column (dates, times).
        attempts = [s.attempt for s in group]
        _quarantine_contract_breaches(conn, attempts)
        _note_reasons(conn, attempts)
        for attempt in attempts:
            attempt.rows_rejected = attempt.rows_in - attempt.rows_loaded
            attempt.status = "loaded"
            _record(conn, attempt, bucket)
        conn.execute("drop table elt_batch_files")
        faults.point("insert")
        conn.execute("commit")
        faults.point("commit")
    except (_NotBatchable, duckdb.Error) as exc:
        conn.execute("rollback")
        for staged in group:
            staged.attempt.replaced = None
            staged.attempt.rows_loaded = staged.attempt.rows_rejected = 0
            staged.attempt.reasons = ()
            staged.attempt.status = "failed"
        raise _NotBatchable(str(exc)) from exc
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


def _add_columns_alone(
    conn: duckdb.DuckDBPyConnection, dataset: Dataset, names: list[str], key: str
) -> None:
    """Add new columns in a transaction of their own, while no load is in flight."""
    if _new_columns(conn, dataset, names):
        conn.execute("begin transaction")
        try:
            _add_new_columns(conn, dataset, names, key)
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
            raise


def _finish(conn: duckdb.DuckDBPyConnection, staged: _Staged, bucket: str, run: _Run) -> LoadResult:
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
        duplicate = _duplicate_of(conn, attempt, bucket)
        if duplicate:
            return _settle(conn, attempt, bucket, "duplicate", f"same bytes as {duplicate}")
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
    attempt: _Attempt,
    bucket: str,
    path: Path,
    meter: ContentMeter,
    fmt: str,
    run: _Run,
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
                _record(conn, attempt, bucket)
                faults.point("insert")
                conn.execute("commit")
                faults.point("commit")
            except BaseException:
                # DuckDB keeps a transaction open after some errors: always roll back.
                conn.execute("rollback")
                raise
    except (LoadError, duckdb.Error) as exc:
        key = attempt.obj.key
        attempt.error = str(exc) if isinstance(exc, LoadError) else _duckdb_error(key, exc)
        attempt.status, attempt.rows_loaded, attempt.rows_rejected = "failed", 0, 0
        attempt.reasons = ()
        attempt.replaced = None
        conn.execute("begin transaction")
        _record(conn, attempt, bucket)
        conn.execute("commit")


def _duckdb_error(key: str, exc: duckdb.Error) -> str:
    """One readable line from a DuckDB error: the object, and what was wrong where."""
    parts = [f"{key}: {_first_line(exc)}"]
    parts += [
        ln.strip()
        for ln in str(exc).splitlines()
        if ln.startswith(("Expected", "Error when", "Original Line"))
    ]
    return " | ".join(parts)


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
    run = _Run()
    threads = conn.execute("select current_setting('threads')").fetchone()
    workers = max(1, min(len(jobs), int(threads[0]) if threads else 1))
    results: dict[int, LoadResult] = {}
    staged: dict[int, _Staged] = {}
    workdir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=workdir) as tmp,
        _one_thread_per_statement(conn, workers),
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="land") as pool,
    ):

        def stage(index: int, dataset: Dataset, obj: ObjectInfo) -> _Staged | None:
            if dataset.refusal(obj.key):
                return None
            on_bytes = on_object(obj) if on_object else None
            return _stage(s3, bucket, dataset, obj, Path(tmp) / str(index), on_bytes)

        staging = [pool.submit(stage, i, dataset, obj) for i, (dataset, obj) in enumerate(jobs)]
        for index, future in enumerate(staging):
            done = future.result()
            dataset, obj = jobs[index]
            if done is None:
                refusal = dataset.refusal(obj.key) or "refused"
                results[index] = _settle(conn, _Attempt(dataset, obj), bucket, "refused", refusal)
            else:
                staged[index] = done

        def land_batch(members: list[int], names: list[str]) -> list[LoadResult]:
            cursor = conn.cursor()
            try:
                return _land_batch(cursor, [staged[i] for i in members], names, bucket)
            finally:
                cursor.close()

        for members, names in _batches(conn, staged, bucket):
            first = staged[members[0]].attempt
            _add_columns_alone(conn, first.dataset, names, first.obj.key)
            # One statement per worker: a multi-file scan numbering rows in order
            # (`row_number() over ()`) reads its files one after the other.
            shares = [members[w::workers] for w in range(workers) if members[w::workers]]
            batches = [(share, pool.submit(land_batch, share, names)) for share in shares]
            for share, batch in batches:
                try:
                    landed = batch.result()
                except _NotBatchable as exc:
                    log.info("batch of %d objects: %s; landing them one by one", len(share), exc)
                    continue
                for index, result in zip(share, landed, strict=True):
                    results[index] = result
                    del staged[index]

        def finish(index: int) -> LoadResult:
            cursor = conn.cursor()
            try:
                return _finish(cursor, staged[index], bucket, run)
            finally:
                cursor.close()

        finishing = {index: pool.submit(finish, index) for index in staged}
        for index, finished in finishing.items():
            results[index] = finished.result()
    return [results[i] for i in range(len(jobs))]


@contextlib.contextmanager
def _one_thread_per_statement(conn: duckdb.DuckDBPyConnection, workers: int) -> Iterator[None]:
    """Run DuckDB on the calling threads alone while ``workers`` statements run at once.

    Every landing statement numbers its rows (``row_number() over ()``), which
    DuckDB runs on one thread, so the loader runs one statement per core. With
    ``threads`` left at the core count, DuckDB's own worker threads compete
    with those statements for the cores: measured at 32 weeks, two batches
    took 16.9 s and 32 CPU-s, against 12.6 s and 23 CPU-s with ``threads = 1``.
    ``threads`` is a database-wide setting; it is restored on the way out.
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


def _batches(
    conn: duckdb.DuckDBPyConnection, staged: dict[int, _Staged], bucket: str
) -> list[tuple[list[int], list[str]]]:
    """Groups of two or more staged objects that can land in one statement."""
    copies = Counter(s.attempt.sha256 for s in staged.values())
    groups: dict[tuple[str, tuple[str, ...], str], list[int]] = {}
    for index, item in staged.items():
        if copies[item.attempt.sha256] > 1:
            continue  # the same bytes twice: the one-object path settles the duplicate
        names = _batchable(conn, item, bucket)
        if names is not None:
            group = (item.attempt.dataset.name, names, item.meter.compression)
            groups.setdefault(group, []).append(index)
    return [(members, list(key[1])) for key, members in groups.items() if len(members) > 1]


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
        raise StorageError(f"cannot write s3://{bucket}/{key}: {_first_line(exc)}") from exc
    return key
