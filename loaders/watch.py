"""``elt watch``: an upload is all a user does; the watcher runs the rest.

Every ``interval`` seconds the watcher lists ``raw/<dataset>/`` of each
declared dataset (paginated) and compares the object versions (key, ETag)
with the ledger. When some are new, it waits until the listing has been
still for ``settle`` seconds (a burst of uploads makes one run), then runs
``elt run --trigger watch --downstream-only`` as a child process: load, then
``dbt build`` of only the models downstream of the datasets that gained rows,
which exports only the affected marts.

The run is a child process so that each run starts clean and the watcher
never holds the DuckDB file between runs (dbt keeps its connection open for
the life of the process), leaving it free for a manual ``elt run``.

- S3 unreachable (or the local server down): logged, retried with
  exponential backoff (up to ``max_backoff`` seconds) with a fresh client;
  the watcher never exits for it.
- SIGTERM or Ctrl-C: the current step (a poll, or the child run) finishes,
  then the watcher exits 0. The child runs in its own session, so a terminal's
  Ctrl-C reaches only the watcher.
- One watcher per state directory (``<ELT_HOME>/watch.lock``); a second one
  exits with ``BusyError``.
- Its state (idle, settling, running, waiting for S3, stopped) is kept in
  ``<ELT_HOME>/watch.json`` for ``elt status``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loaders import datasets as datasets_mod
from loaders import land, warehouse
from loaders import s3 as s3_mod
from loaders.config import Settings
from loaders.errors import BusyError, ServerError, StorageError
from loaders.lock import exclusive

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

STATE_FILE = "watch.json"
Versions = dict[str, str]  # key -> ETag


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class WatchState:
    """What the watcher is doing, as ``elt status`` shows it.

    Attributes:
        state: ``starting`` (parsing the dbt project), ``idle``, ``settling``,
            ``running``, ``waiting for S3`` or ``stopped``.
        last_poll_at: When ``raw/`` was last listed (UTC, ISO 8601).
        last_run_at: When the last run it started finished.
        last_run_exit: That run's exit code (0 success, 1 a step failed, 75 busy).
        error: The last S3 error while waiting for the server.
    """

    pid: int = field(default_factory=os.getpid)
    started_at: str = field(default_factory=_now)
    interval_s: float = 10.0
    state: str = "idle"
    last_poll_at: str | None = None
    last_run_at: str | None = None
    last_run_exit: int | None = None
    runs: int = 0
    error: str | None = None


def _save(home: Path, state: WatchState) -> None:
    path = home / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(path)


def read_state(home: Path) -> WatchState | None:
    """The watcher's last saved state, with ``state`` ``stopped`` if none is running."""
    path = home / STATE_FILE
    if not path.exists():
        return None
    try:
        state = WatchState(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None
    if not _watcher_running(home):
        state.state = "stopped"
    return state


def _watcher_running(home: Path) -> bool:
    """Whether some process holds ``<home>/watch.lock`` (the kernel drops it on exit)."""
    path = home / "watch.lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def listing(s3: S3Client, bucket: str, registry: dict[str, datasets_mod.Dataset]) -> Versions:
    """Every object version under the declared datasets' prefixes (paginated).

    Raises:
        StorageError: S3 could not be listed.
    """
    return {
        obj.key: obj.etag
        for dataset in registry.values()
        for obj in s3_mod.list_objects(s3, bucket, dataset.prefix)
        if not obj.key.endswith("/")
    }


def settled_versions(settings: Settings) -> set[tuple[str, str]]:
    """``(key, ETag)`` of every object version the ledger has settled.

    Opened read-only under the run lock, so no run of ours is writing.

    Raises:
        BusyError: a run, or another process, holds the warehouse.
    """
    path = settings.warehouse_path
    if not path.exists():
        return set()
    with warehouse.read_only(path, settings.home, wait_s=5.0) as conn:
        if not warehouse.has_table(conn, land.LEDGER):
            return set()
        rows = conn.execute(
            f"select key, etag from {land.LEDGER} where bucket = ? and status in {land.SETTLED}",
            [settings.lake.bucket],
        ).fetchall()
    return {(key, etag) for key, etag in rows}


def _parse_project(settings: Settings) -> None:
    """Parse the dbt project once, before the first poll.

    dbt saves the parse (``$ELT_HOME/target/partial_parse.msgpack``), so the first run an
    upload triggers reparses only what changed instead of the whole project:
    a few seconds off the upload-to-CSV latency. A failure only costs that.
    """
    from loaders import pipeline  # imports dbt: only the watcher needs it here

    try:
        result = pipeline.dbt(settings, ["parse"])
        failure = None if result.success else pipeline.failure_line(result)
    except Exception as exc:  # whatever it is, the runs will parse and report it
        failure = str(exc)
    if failure is not None:
        log.warning("dbt parse failed, the first run will parse the project: %s", failure)


def run_command(settings: Settings, verbose: bool, log_format: str) -> list[str]:
    """The child ``elt run`` a watch triggers (same Python, same target)."""
    return [
        sys.executable,
        "-m",
        "loaders.cli",
        *(["--verbose"] if verbose else []),
        "--log-format",
        log_format,
        "run",
        "--target",
        settings.target,
        "--trigger",
        "watch",
        "--downstream-only",
    ]


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` instead of interrupting the current step."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if not stop.is_set():
            log.info("%s: finishing the current step, then exiting", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def watch(
    settings: Settings,
    command: list[str],
    interval_s: float = 10.0,
    settle_s: float = 2.0,
    max_backoff_s: float = 60.0,
    stop: threading.Event | None = None,
    client: Callable[[], S3Client] | None = None,
) -> int:
    """Poll ``raw/`` and run ``command`` for each burst of new object versions.

    Args:
        settings: Target and state directory.
        command: The run to start as a child process (:func:`run_command`).
        interval_s: Seconds between two listings.
        settle_s: Quiet time after the last new object before a run starts.
        max_backoff_s: Cap of the wait between retries while S3 is unreachable.
        stop: Set to stop after the current step (signals set it too).
        client: Factory of the S3 client (default: from the settings).

    Returns:
        How many runs it started.

    Raises:
        BusyError: another watcher holds this state directory.
    """
    stop = stop or threading.Event()
    registry = datasets_mod.discover(settings.project_dir)
    make_client = client or (lambda: s3_mod.client(s3_mod.connection(settings.lake, settings.home)))
    one_watcher = exclusive(
        settings.home,
        wait_s=0,
        name="watch",
        busy=f"busy: another elt watch (pid {{pid}}) is already watching {settings.home}",
    )
    with one_watcher, _stop_on_signals(stop):
        state = WatchState(interval_s=interval_s, state="starting")  # idle after a poll
        _save(settings.home, state)
        log.info(
            "watching s3://%s/%s every %gs (%s)",
            settings.lake.bucket,
            ", ".join(d.prefix for d in registry.values()),
            interval_s,
            settings.home,
        )
        _parse_project(settings)
        s3: S3Client | None = None
        failures = 0
        try:
            while not stop.is_set():
                try:
                    # A fresh client after a failure: a restarted local server
                    # listens on new ports.
                    s3 = s3 or make_client()
                    pending = _pending(settings, s3, registry)
                    if pending and not stop.is_set():
                        state.state = "settling"
                        _save(settings.home, state)
                        _settle(settings, s3, registry, pending, settle_s, stop)
                except (StorageError, ServerError, BusyError) as exc:
                    failures += 1
                    delay = min(max_backoff_s, interval_s * 2 ** min(failures - 1, 10))
                    s3 = None
                    state.state = (
                        "waiting for lock" if isinstance(exc, BusyError) else "waiting for S3"
                    )
                    state.error = str(exc).splitlines()[0]
                    _save(settings.home, state)
                    log.warning("%s; retrying in %.0fs", state.error, delay)
                    stop.wait(delay)
                    continue
                if failures:
                    log.info("S3 reachable again")
                    failures, state.error = 0, None
                state.last_poll_at = _now()
                if pending and not stop.is_set():
                    state.state = "running"
                    _save(settings.home, state)
                    state.last_run_exit = _run(command, settings, len(pending))
                    state.last_run_at, state.runs = _now(), state.runs + 1
                state.state = "idle"
                _save(settings.home, state)
                stop.wait(interval_s)
        finally:
            state.state = "stopped"
            _save(settings.home, state)
            log.info("watcher stopped after %d run(s)", state.runs)
        return state.runs


def _pending(
    settings: Settings, s3: S3Client, registry: dict[str, datasets_mod.Dataset]
) -> Versions:
    versions = listing(s3, settings.lake.bucket, registry)
    if not versions:
        return {}
    settled = settled_versions(settings)
    return {key: etag for key, etag in versions.items() if (key, etag) not in settled}


def _settle(
    settings: Settings,
    s3: S3Client,
    registry: dict[str, datasets_mod.Dataset],
    pending: Versions,
    settle_s: float,
    stop: threading.Event,
) -> None:
    """Wait until no new object version appears for ``settle_s`` (at most 30 quiet checks)."""
    seen = listing(s3, settings.lake.bucket, registry)
    for _ in range(30):
        if stop.wait(settle_s):
            return
        now = listing(s3, settings.lake.bucket, registry)
        if now == seen:
            return
        seen = now
    log.info("%d new object version(s) and uploads still arriving: running anyway", len(pending))


def _run(command: list[str], settings: Settings, count: int) -> int:
    """Run the child ``elt run`` to completion (signals do not reach it); return its exit code."""
    log.info("%d new object version(s): starting a run", count)
    started = time.monotonic()
    env = {**os.environ, **settings.dbt_env()}
    proc = subprocess.run(command, env=env, start_new_session=True, check=False)
    took = time.monotonic() - started
    if proc.returncode == 0:
        log.info("run finished in %.1fs", took)
    else:
        log.warning("run exited %d after %.1fs (its receipt says why)", proc.returncode, took)
    return proc.returncode
