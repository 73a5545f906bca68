"""Fault injection for the fault tests (never set in normal use).

``ELT_KILL_AT=<point>``: the process SIGKILLs itself at that point, as a
crash would. ``ELT_PAUSE_AT=<point>`` with ``ELT_PAUSE_FILE=<path>``: the
first time the point is reached, the process creates the file and waits
(up to 10 minutes) until the test deletes it, so the test can break
something (stop the S3 server) at exactly that moment.

Points: ``download`` (after the first chunk of an object is read), ``insert``
and ``commit`` (landing), ``loaded`` (landing done, dbt not started: the run
lock is held and no DuckDB connection is open), ``build`` (in dbt's post-hook of the first
exported mart: its table is committed, the rest of the build is not done),
``publish`` (before a mart's PUT), ``manifest`` (a partitioned mart's parts and
whole file are written, its manifest not yet).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

_paused: set[str] = set()


def point(name: str) -> None:
    """Crash or pause here if the environment asks for it at ``name``."""
    if os.environ.get("ELT_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("ELT_PAUSE_AT") == name and name not in _paused:
        _paused.add(name)
        flag = Path(os.environ["ELT_PAUSE_FILE"])
        flag.write_text(str(os.getpid()))
        deadline = time.monotonic() + 600
        while flag.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
