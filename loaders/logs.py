"""Logging for the CLI: every line carries the run id, as text or JSON lines.

The run id is set by :func:`run_context` for the length of a run (``-``
outside one). It is process-wide, not per thread: one process runs one run at
a time (the run lock), and dbt's and the loader's worker threads log for it
too. dbt, invoked in-process, reports through :func:`dbt_event`.

Secrets never reach a handler: a filter masks presigned-URL signatures and
every value registered with :func:`register_secret` (the S3 secret key and
session token, registered when credentials are resolved).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

NO_RUN = "-"
_run_id = NO_RUN
MASK = "****"
_SIGNATURE = re.compile(
    r"((?:X-Amz-Signature|Signature|X-Amz-Credential|X-Amz-Security-Token)=)[^&\s\"']+"
)
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it would appear in a log line (8 characters or more)."""
    if value and len(value) >= 8:
        _secrets.add(value)


def redact(text: str) -> str:
    """``text`` with registered secrets and presigned-URL signatures masked."""
    for value in _secrets:
        if value in text:
            text = text.replace(value, MASK)
    return _SIGNATURE.sub(lambda m: m.group(1) + MASK, text)


@contextlib.contextmanager
def run_context(run_id: str) -> Iterator[None]:
    """Tag every log line written inside the block with ``run_id``."""
    global _run_id
    previous, _run_id = _run_id, run_id
    try:
        yield
    finally:
        _run_id = previous


def current_run_id() -> str:
    """The id of the run going on in this process, ``-`` when none is."""
    return _run_id


class _RunIdFilter(logging.Filter):
    """Adds ``record.run_id`` and masks secrets in the rendered message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = _run_id
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC ISO 8601), level, logger, run_id, message."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "run_id": getattr(record, "run_id", _run_id),
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


def setup(verbose: bool = False, log_format: str = "text") -> None:
    """Configure the root logger on stderr.

    Args:
        verbose: Debug level for our loggers (boto's stay at warning: they
            print request headers).
        log_format: ``text`` (``time level [run id] logger: message``) or
            ``json`` (one object per line, see :class:`JsonFormatter`).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RunIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s [%(run_id)s] %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


_DBT_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING}
_dbt_log = logging.getLogger("dbt")


def dbt_event(event: Any) -> None:
    """dbtRunner callback: re-emit a dbt event through our logging (with the run id)."""
    info = event.info
    message = info.msg
    if not message or not str(message).strip():
        return
    _dbt_log.log(_DBT_LEVELS.get(info.level, logging.ERROR), "%s", message)
