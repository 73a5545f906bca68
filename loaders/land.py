"""Land raw objects from ``s3://<bucket>/raw/<dataset>/`` into ``raw.<dataset>``.

Every column lands as text (no type sniffing: staging casts with explicit
formats), matched to the table by its normalised header name, never by
position. Each row carries lineage columns::

    _source_key         object key the row came from
    _source_etag        ETag of the object version read
    _source_row_number  1-based data row number within the object
    _load_id            ledger id of the load that wrote it
    _loaded_at          when that load committed (UTC)

The ledger ``elt.ledger`` has one row per object version attempted. The data
and its ledger row are written in one DuckDB transaction, so an object is
either wholly loaded and recorded, or not at all: a second run finds it in
the ledger and loads nothing.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import logging
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
from botocore.exceptions import BotoCoreError, ClientError

from loaders.datasets import RAW_SCHEMA, Dataset, normalise_name
from loaders.errors import LoadError, StorageError
from loaders.s3 import ObjectInfo, list_objects
from loaders.warehouse import quote_identifier, sql_literal

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

LEDGER = "elt.ledger"
LINEAGE_COLUMNS = (
    ("_source_key", "varchar"),
    ("_source_etag", "varchar"),
    ("_source_row_number", "bigint"),
    ("_load_id", "varchar"),
    ("_loaded_at", "timestamptz"),
)
CHUNK = 8 * 2**20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class LoadResult:
    """Outcome of one object: ``status`` is ``loaded`` or ``failed``."""

    load_id: str
    dataset: str
    key: str
    etag: str
    size: int
    sha256: str
    status: str
    rows_loaded: int
    seconds: float
    error: str | None = None


def ensure_tables(conn: duckdb.DuckDBPyConnection, datasets: Iterable[Dataset]) -> None:
    """Create the ``raw`` and ``elt`` schemas, the ledger and each dataset's raw table."""
    conn.execute(f"create schema if not exists {RAW_SCHEMA}")
    conn.execute("create schema if not exists elt")
    conn.execute(
        f"""
        create table if not exists {LEDGER} (
            load_id varchar primary key,
            dataset varchar not null,
            bucket varchar not null,
            key varchar not null,
            etag varchar not null,
            size_bytes bigint not null,
            sha256 varchar,
            status varchar not null,
            rows_loaded bigint not null,
            error varchar,
            started_at timestamptz not null,
            finished_at timestamptz not null
        )
        """
    )
    for dataset in datasets:
        columns = [f"{quote_identifier(c)} varchar" for c in dataset.columns]
        columns += [f"{name} {kind}" for name, kind in LINEAGE_COLUMNS]
        conn.execute(f"create table if not exists {_table(dataset)} ({', '.join(columns)})")


def _table(dataset: Dataset) -> str:
    return f"{RAW_SCHEMA}.{quote_identifier(dataset.name)}"


def pending(
    conn: duckdb.DuckDBPyConnection, s3: S3Client, bucket: str, dataset: Dataset
) -> Iterator[ObjectInfo]:
    """Objects under the dataset's prefix whose (key, ETag) the ledger has not seen.

    Directory placeholder keys (ending in ``/``) are not objects to load.
    """
    seen = {
        (key, etag)
        for key, etag in conn.execute(
            f"select key, etag from {LEDGER} where bucket = ? and dataset = ?",
            [bucket, dataset.name],
        ).fetchall()
    }
    for obj in list_objects(s3, bucket, dataset.prefix):
        if not obj.key.endswith("/") and (obj.key, obj.etag) not in seen:
            yield obj


def _download(s3: S3Client, bucket: str, obj: ObjectInfo, path: Path) -> str:
    """Stream ``obj`` to ``path``; return the sha256 of its bytes.

    ``IfMatch`` pins the version listed: if the key is overwritten meanwhile,
    the read fails rather than mixing versions.
    """
    digest = hashlib.sha256()
    try:
        body = s3.get_object(Bucket=bucket, Key=obj.key, IfMatch=obj.etag)["Body"]
        with open(path, "wb") as out:
            for chunk in body.iter_chunks(CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot read s3://{bucket}/{obj.key}: {exc}") from exc
    return digest.hexdigest()


def _compression(path: Path) -> str:
    """DuckDB ``compression`` option from the file's magic bytes, not its name."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic.startswith(GZIP_MAGIC):
        return "gzip"
    if magic.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def _header(path: Path, compression: str, key: str, delimiter: str) -> list[str]:
    """The first CSV record of the file: its column names as written.

    Raises:
        LoadError: empty file, or a header that is not UTF-8 text.
    """
    if compression == "zstd":
        raise LoadError(f"{key}: zstd-compressed CSV is not supported yet")
    opener = gzip.open if compression == "gzip" else open
    try:
        with opener(path, "rb") as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
            row = next(csv.reader(text, delimiter=delimiter), None)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise LoadError(f"{key}: line 1: unreadable header ({exc})") from exc
    if not row:
        raise LoadError(f"{key}: line 1: empty file, no header row")
    return row


def _column_names(header: list[str], key: str) -> list[str]:
    """Normalised names of the header cells.

    Raises:
        LoadError: two header cells normalise to the same name.
    """
    names = [normalise_name(cell, i) for i, cell in enumerate(header, start=1)]
    seen: dict[str, int] = {}
    for i, name in enumerate(names, start=1):
        if name in seen:
            raise LoadError(f"{key}: line 1: columns {seen[name]} and {i} both name {name!r}")
        if name.startswith("_"):
            raise LoadError(f"{key}: line 1, column {i}: {name!r} collides with lineage columns")
        seen[name] = i
    return names


def _existing_columns(conn: duckdb.DuckDBPyConnection, dataset: Dataset) -> set[str]:
    rows = conn.execute(
        "select column_name from duckdb_columns() where schema_name = ? and table_name = ?",
        [RAW_SCHEMA, dataset.name],
    ).fetchall()
    return {r[0] for r in rows}


def _insert(
    conn: duckdb.DuckDBPyConnection,
    dataset: Dataset,
    obj: ObjectInfo,
    path: Path,
    names: list[str],
    compression: str,
    load_id: str,
    loaded_at: datetime,
) -> int:
    """Insert the file's rows into ``raw.<dataset>``; return how many.

    Columns unknown to the table (not declared in the source YAML) are added as
    ``varchar`` so nothing in the file is dropped.
    """
    existing = _existing_columns(conn, dataset)
    for name in names:
        if name not in existing:
            log.warning("%s: new column %r added to %s", obj.key, name, _table(dataset))
            conn.execute(
                f"alter table {_table(dataset)} add column {quote_identifier(name)} varchar"
            )
    positional = ", ".join(f"{sql_literal(f'c{i}')}: 'varchar'" for i in range(len(names)))
    target = ", ".join(quote_identifier(n) for n in names)
    source = ", ".join(f"c{i}" for i in range(len(names)))
    read = (
        f"read_csv({sql_literal(str(path))}, header = true, auto_detect = false, "
        f"columns = {{{positional}}}, delim = {sql_literal(dataset.delimiter)}, "
        f"quote = '\"', escape = '\"', compression = {sql_literal(compression)}, "
        "strict_mode = true)"
    )
    lineage = ", ".join(name for name, _ in LINEAGE_COLUMNS)
    row = conn.execute(
        f"insert into {_table(dataset)} ({target}, {lineage}) "
        f"select {source}, ?, ?, ordinality, ?, ? from {read} with ordinality",
        [obj.key, obj.etag, load_id, loaded_at],
    ).fetchone()
    return int(row[0]) if row else 0


def _csv_error(key: str, exc: duckdb.Error) -> str:
    """One readable line from a DuckDB CSV error: file, line, what was wrong."""
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    original = next((ln for ln in text.splitlines() if ln.startswith("Original Line")), None)
    detail = next(
        (ln.strip() for ln in text.splitlines() if ln.startswith(("Expected", "Error when"))),
        None,
    )
    parts = [f"{key}: {first}"] + [p for p in (detail, original) if p]
    return " | ".join(parts)


def new_load_id() -> str:
    """A sortable, unique load id: ``20240113T120000Z-3fa2c1``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def land_object(
    conn: duckdb.DuckDBPyConnection,
    s3: S3Client,
    bucket: str,
    dataset: Dataset,
    obj: ObjectInfo,
    workdir: Path,
) -> LoadResult:
    """Land one object, or record why it could not be landed.

    The object is streamed to a temporary file under ``workdir`` (and hashed),
    its header checked against the dataset's required columns, then its rows
    and a ledger row are inserted in one transaction.

    Returns:
        A ``LoadResult``: ``loaded`` with the row count, or ``failed`` with the
        reason (bad header, unparseable row with its line number, ...). A failed
        object leaves no rows behind; its ledger row keeps it from being retried
        until a new version is uploaded.

    Raises:
        StorageError: the object could not be read from S3 (nothing recorded,
            so the next run tries again).
    """
    load_id = new_load_id()
    started_at = datetime.now(UTC)
    clock = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "object"
        sha256 = _download(s3, bucket, obj, path)
        rows, error = 0, None
        conn.execute("begin transaction")
        try:
            compression = _compression(path)
            names = _column_names(_header(path, compression, obj.key, dataset.delimiter), obj.key)
            missing = dataset.missing_columns(set(names))
            if missing:
                raise LoadError(
                    f"{obj.key}: line 1: missing required column(s) {', '.join(missing)}"
                )
            rows = _insert(conn, dataset, obj, path, names, compression, load_id, started_at)
        except (LoadError, duckdb.Error) as exc:
            # DuckDB keeps a transaction open after some errors: always roll back.
            conn.execute("rollback")
            error = str(exc) if isinstance(exc, LoadError) else _csv_error(obj.key, exc)
            rows = 0
            conn.execute("begin transaction")
        except BaseException:
            conn.execute("rollback")
            raise
        status = "failed" if error else "loaded"
        conn.execute(
            f"insert into {LEDGER} values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                load_id,
                dataset.name,
                bucket,
                obj.key,
                obj.etag,
                obj.size,
                sha256,
                status,
                rows,
                error,
                started_at,
                datetime.now(UTC),
            ],
        )
        conn.execute("commit")
    result = LoadResult(
        load_id=load_id,
        dataset=dataset.name,
        key=obj.key,
        etag=obj.etag,
        size=obj.size,
        sha256=sha256,
        status=status,
        rows_loaded=rows,
        seconds=time.monotonic() - clock,
        error=error,
    )
    if error:
        log.error("failed to load %s: %s", obj.key, error)
    else:
        log.info("loaded %s: %d rows in %.1fs", obj.key, rows, result.seconds)
    return result


def land_all(
    conn: duckdb.DuckDBPyConnection,
    s3: S3Client,
    bucket: str,
    datasets: dict[str, Dataset],
    workdir: Path,
    on_object: Callable[[ObjectInfo], None] | None = None,
) -> list[LoadResult]:
    """Land every pending object of every dataset, oldest key first.

    Args:
        conn: Read-write connection to the warehouse.
        s3: Client for ``bucket``.
        bucket: Bucket holding ``raw/<dataset>/`` prefixes.
        datasets: Registry from :func:`loaders.datasets.discover`.
        workdir: Where objects are staged while loading (under ``$ELT_HOME``).
        on_object: Called before each object is landed (progress reporting).

    Returns:
        One ``LoadResult`` per object attempted; empty when nothing was new.

    Raises:
        StorageError: listing or reading from S3 failed.
    """
    ensure_tables(conn, datasets.values())
    results = []
    for dataset in datasets.values():
        for obj in sorted(pending(conn, s3, bucket, dataset), key=lambda o: o.key):
            if on_object:
                on_object(obj)
            results.append(land_object(conn, s3, bucket, dataset, obj, workdir))
    return results
