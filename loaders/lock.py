"""One writer per state directory: a lock file held for the whole of ``elt run``.

DuckDB already refuses a second read-write process on the warehouse file, but
``elt run`` opens it several times (landing, then dbt), so a second run could
slip in between. The lock is an ``flock`` on ``<ELT_HOME>/run.lock``: the
kernel drops it when its holder exits, even by ``kill -9``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from loaders.errors import BusyError


@contextlib.contextmanager
def exclusive(
    home: Path,
    wait_s: float = 60.0,
    name: str = "run",
    busy: str | None = None,
    *,
    shared: bool = False,
) -> Iterator[None]:
    """Hold ``<home>/<name>.lock``, waiting up to ``wait_s`` seconds for another holder.

    Args:
        busy: Message of the ``BusyError``, ``{pid}`` standing for the holder's pid.
        shared: Take it as a reader: readers hold it together, and only keep
            out (and are kept out by) an exclusive holder, whose pid the file
            keeps.

    Raises:
        BusyError: still held by another process after ``wait_s`` seconds.
    """
    home.mkdir(parents=True, exist_ok=True)
    path = home / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = path.read_text().strip() or "?"
                    if busy:
                        raise BusyError(busy.replace("{pid}", holder)) from None
                    raise BusyError(
                        f"busy: another elt {name} (pid {holder}) is using {home}; "
                        f"waited {wait_s:.0f}s, try again later"
                    ) from None
                time.sleep(0.2)
        if not shared:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
