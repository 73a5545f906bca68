"""The DuckDB warehouse file and its S3 access.

Both the loader and dbt (through :mod:`loaders.dbt_plugin`) open DuckDB
through :func:`configure`: httpfs is loaded from the signed binary shipped in
the ``duckdb-extension-httpfs`` wheel (no download at run time), and S3
credentials become a temporary DuckDB secret, which ``duckdb_secrets()``
redacts and which is never written to the database file.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import duckdb_extension_httpfs

from loaders.errors import BusyError, ConfigError, WarehouseError
from loaders.lock import exclusive
from loaders.s3 import Connection, duckdb_secret_options

log = logging.getLogger(__name__)

SECRET_NAME = "lake"


def sql_literal(value: Any) -> str:
    """Render a Python value as a DuckDB SQL literal (strings single-quoted, escaped)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def quote_identifier(name: str) -> str:
    """Quote an identifier for DuckDB: ``a"b`` becomes ``"a""b"``."""
    return '"' + name.replace('"', '""') + '"'


def httpfs_path() -> Path:
    """The httpfs extension binary for the installed DuckDB version.

    Raises:
        ConfigError: the wheel does not match the DuckDB version.
    """
    root = Path(duckdb_extension_httpfs.__file__).parent / "extensions"
    path = root / f"v{duckdb.__version__}" / "httpfs.duckdb_extension"
    if not path.exists():
        raise ConfigError(
            f"duckdb-extension-httpfs has no build for DuckDB {duckdb.__version__} ({path})"
        )
    return path


def configure(conn: duckdb.DuckDBPyConnection, s3: Connection | None) -> None:
    """Load httpfs offline and, given ``s3``, create the temporary secret ``lake``."""
    conn.execute("set autoinstall_known_extensions = false")
    conn.execute(f"load {sql_literal(str(httpfs_path()))}")
    if s3 is not None:
        options = ", ".join(
            f"{key} {sql_literal(value)}" for key, value in duckdb_secret_options(s3).items()
        )
        conn.execute(f"create or replace temporary secret {SECRET_NAME} (type s3, {options})")


def unopenable(path: Path, exc: duckdb.Error) -> WarehouseError:
    """The error for a warehouse DuckDB cannot open; its WAL is never touched.

    DuckDB replays ``<file>.wal`` on open; when that fails (a damaged log) the
    committed loads it holds are not lost, but not in the file yet either. We
    stop and say so, and leave both files as they are for a human to decide.
    """
    wal = path.with_name(path.name + ".wal")
    first = " ".join(str(exc).split())
    if "WAL" in str(exc) and wal.exists():
        return WarehouseError(
            f"cannot open {path}: replaying its write-ahead log failed ({first}); "
            f"nothing was changed or deleted: {wal.name} is kept next to it. "
            "Restore both from a backup, or move the .wal aside to open the file "
            "without its latest commits (the next `elt run` loads those objects again)"
        )
    return WarehouseError(f"cannot open {path}: {first}")


@contextlib.contextmanager
def connect(
    path: Path,
    s3: Connection | None = None,
    *,
    wait_s: float = 30.0,
    config: dict[str, Any] | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse read-write, waiting up to ``wait_s`` for another writer.

    DuckDB allows one read-write process per file; a second one fails to take
    the lock. We retry for a bounded time, then give up with ``BusyError``.

    Raises:
        BusyError: another process held the file for longer than ``wait_s``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn = duckdb.connect(str(path), config=config or {})
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise unopenable(path, exc) from exc
            if time.monotonic() >= deadline:
                raise BusyError(
                    f"{path} is in use by another process (waited {wait_s:.0f}s): "
                    "another `elt run`, dbt, or a SQL client holds it"
                ) from exc
            time.sleep(0.5)
    try:
        configure(conn, s3)
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def read_only(
    path: Path, home: Path, *, wait_s: float = 0.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse read-only while holding the run lock of ``home``, shared.

    DuckDB lets a reader and a writer of one file shut each other out: a
    reader that opens the file just as a run's dbt step does makes that step
    fail. Taking the run lock (``<home>/run.lock``) first means no run of ours
    is between two opens while we read; the run waits for us instead.

    Args:
        path: The warehouse file (``<home>/warehouse.duckdb``).
        home: The state directory holding ``run.lock``.
        wait_s: Seconds to wait for a run to finish before giving up.

    Raises:
        BusyError: a run held the lock for longer than ``wait_s``, or another
            process (a SQL client) holds the file read-write.
        WarehouseError: the file exists but cannot be opened (e.g. damaged WAL).
    """
    with exclusive(
        home,
        wait_s=wait_s,
        busy="warehouse busy: a run (pid {pid}) is going on; try again when it ends",
        shared=True,  # readers read together; a run waits for all of them
    ):
        try:
            conn = duckdb.connect(str(path), read_only=True)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise unopenable(path, exc) from exc
            raise BusyError(f"warehouse busy: another process holds {path} read-write") from exc
        try:
            yield conn
        finally:
            conn.close()


def has_table(conn: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether ``schema.table`` (as written, unquoted) exists in the connected database."""
    schema, _, table = name.partition(".")
    found = conn.execute(
        "select 1 from information_schema.tables where table_schema = ? and table_name = ?",
        [schema, table],
    ).fetchone()
    return found is not None


def roll_back(conn: duckdb.DuckDBPyConnection) -> None:
    """Roll back the connection's open transaction; none open is not an error.

    DuckDB keeps a transaction open after most errors inside it, so the
    caller rolls back before it re-raises. A COMMIT that fails (a key that
    another cursor committed first) has ended the transaction already, and a
    plain ROLLBACK would then raise "no transaction is active" in place of
    the error that matters.

    Raises:
        duckdb.TransactionException: the rollback itself failed otherwise.
    """
    try:
        conn.execute("rollback")
    except duckdb.TransactionException as exc:
        if "no transaction is active" not in str(exc):
            raise
