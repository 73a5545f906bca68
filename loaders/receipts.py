"""Run receipts: what each ``elt run`` (manual or by ``elt watch``) did.

A receipt is a JSON document::

    {"run_id": "20261121T190000Z-3fa2c1d4e5f60718", "trigger": "watch", "status": "success",
     "started_at": "...", "finished_at": "...", "seconds": 12.3, "errors": [],
     "objects": [{"key", "etag", "sha256", "status", "rows_loaded", "rows_rejected", ...}],
     "dbt_nodes": [{"unique_id", "status", "seconds"}],
     "exports": [{"key", "etag", "size_bytes", "rows"}],
     "lake": {"written": [...], "deleted": [...], "seeds": [...], "ledger": true}}

kept in DuckDB (``elt.runs``, one row per run with the document in
``receipt``) and written to ``s3://<bucket>/marts/_runs/<run id>.json``.
Receipts hold keys, ETags, hashes and counts: never credentials or URLs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import duckdb
from botocore.exceptions import BotoCoreError, ClientError

from loaders.errors import StorageError
from loaders.s3 import MARTS_PREFIX, list_objects

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

RUNS = "elt.runs"
RUNS_PREFIX = f"{MARTS_PREFIX}_runs/"
TRIGGERS = ("manual", "watch")


@dataclass
class Receipt:
    """One run's receipt (see the module docstring for the JSON shape).

    Attributes:
        run_id: Sortable id, ``<UTC start>-<6 hex>``.
        trigger: ``manual`` (``elt run``) or ``watch`` (``elt watch``).
        status: ``running``, then ``success`` or ``failed``.
        seconds: Wall-clock duration of the run.
        errors: One line per failure (failed objects, the failed step).
        objects: Object versions the run attempted to load.
        dbt_nodes: dbt nodes built or tested, with status and seconds.
        exports: Marts published by this run: key, ETag, size in bytes, rows.
        selected: dbt selectors of the build (empty: the whole project).
        timings: Seconds per step: ``load``, ``build`` (dbt, exports included)
            and ``export`` (the PUTs of the published marts).
        uploaded_bytes: Bytes the run sent to S3 to publish marts (objects
            the server composed from published parts are not sent again).
        lake: What the run wrote to the raw data in the open (``lake/``):
            load files ``written`` and ``deleted``, the ``seeds`` written,
            and whether the ``ledger`` was written; empty when the target
            does not write it.
    """

    run_id: str
    trigger: str
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    finished_at: str | None = None
    seconds: float | None = None
    status: str = "running"
    errors: list[str] = field(default_factory=list)
    selected: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    objects: list[dict[str, Any]] = field(default_factory=list)
    dbt_nodes: list[dict[str, Any]] = field(default_factory=list)
    exports: list[dict[str, Any]] = field(default_factory=list)
    uploaded_bytes: int = 0
    lake: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False, default=str)

    @property
    def key(self) -> str:
        """``marts/_runs/<run id>.json``."""
        return f"{RUNS_PREFIX}{self.run_id}.json"


def ensure_table(conn: duckdb.DuckDBPyConnection) -> None:
    """Create ``elt.runs`` (idempotent)."""
    conn.execute("create schema if not exists elt")
    conn.execute(
        f"""
        create table if not exists {RUNS} (
            run_id varchar primary key,
            trigger varchar not null,
            status varchar not null,
            started_at timestamptz not null,
            finished_at timestamptz,
            seconds double,
            objects integer,
            rows_loaded bigint,
            rows_rejected bigint,
            errors varchar,
            receipt json not null
        )
        """
    )


def save(conn: duckdb.DuckDBPyConnection, receipt: Receipt) -> None:
    """Insert or replace the receipt's row in ``elt.runs``."""
    ensure_table(conn)
    conn.execute(
        f"insert or replace into {RUNS} values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            receipt.run_id,
            receipt.trigger,
            receipt.status,
            receipt.started_at,
            receipt.finished_at,
            receipt.seconds,
            len(receipt.objects),
            sum(o.get("rows_loaded") or 0 for o in receipt.objects),
            sum(o.get("rows_rejected") or 0 for o in receipt.objects),
            "\n".join(receipt.errors) or None,
            receipt.to_json(),
        ],
    )


def publish(s3: S3Client, bucket: str, receipt: Receipt) -> str:
    """Write the receipt to ``s3://<bucket>/marts/_runs/<run id>.json``; return the key.

    Raises:
        StorageError: the PUT failed.
    """
    try:
        s3.put_object(
            Bucket=bucket,
            Key=receipt.key,
            Body=receipt.to_json().encode(),
            ContentType="application/json",
        )
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot write s3://{bucket}/{receipt.key}: {exc}") from exc
    return receipt.key


def recent(conn: duckdb.DuckDBPyConnection, limit: int = 10) -> list[dict[str, Any]]:
    """The latest runs from ``elt.runs``, newest first (what ``elt status`` shows)."""
    cursor = conn.execute(
        f"select run_id, trigger, status, round(seconds, 1) as seconds, objects, "
        f"rows_loaded, rows_rejected, errors from {RUNS} order by run_id desc limit ?",
        [limit],
    )
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def published(s3: S3Client, bucket: str, limit: int = 20) -> Iterator[dict[str, Any]]:
    """The latest receipts under ``marts/_runs/``, newest first (read by ``elt serve``).

    Raises:
        StorageError: listing or reading failed.
    """
    keys = sorted((o.key for o in list_objects(s3, bucket, RUNS_PREFIX)), reverse=True)
    for key in keys[:limit]:
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot read s3://{bucket}/{key}: {exc}") from exc
        yield json.loads(body)
