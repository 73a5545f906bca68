"""Crashes and concurrent runs: nothing lost, nothing loaded twice.

Each crash is real: the run SIGKILLs itself at a named point (``ELT_KILL_AT``,
see ``loaders/faults.py``: landing, mid-dbt build, export), then a plain
``elt run`` must converge to what an uninterrupted run publishes, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time

import pytest

from tests.conftest import BIN, LANDED, PROJECT, Elt, week_csv

pytestmark = pytest.mark.faults

FILES = {
    "raw/turnstile/a.csv": week_csv(3, day="04/01/2024", start=100),
    "raw/turnstile/b.csv": week_csv(3, day="04/02/2024", start=200),
}


def reset(elt: Elt) -> None:
    elt.reset()
    for key, body in FILES.items():
        elt.put(key, body)


MARTS = ("turnstile_daily", "station_daily")


@pytest.fixture(scope="module")
def reference(elt: Elt) -> dict[str, bytes]:
    """The CSVs and parts an uninterrupted run publishes."""
    reset(elt)
    elt.run("run")
    return published(elt)


def published(elt: Elt) -> dict[str, bytes]:
    """The whole CSVs, and each part and its ETag as the manifests list them."""
    found = {m: elt.get(f"marts/{m}.csv") for m in MARTS}
    for model in MARTS:
        for part in json.loads(elt.get(f"marts/{model}/_manifest.json"))["parts"]:
            body = elt.get(part["key"])
            assert hashlib.md5(body).hexdigest() == part["etag"], part["key"]
            found[part["key"]] = body
    return found


@pytest.mark.parametrize("point", ["download", "insert", "commit", "build", "publish", "manifest"])
def test_kill_9_then_rerun_converges(elt: Elt, reference: dict[str, bytes], point: str) -> None:
    # GIVEN two new objects WHEN the loader is killed at `point`
    reset(elt)
    killed = elt.run("run", check=False, ELT_KILL_AT=point)
    assert killed.returncode == -signal.SIGKILL
    # THEN the next run finishes the job: each object once, same CSV
    elt.run("run")
    assert elt.query("select _source_key, count(*) from " + LANDED + " group by 1 order by 1") == [
        ("raw/turnstile/a.csv", 3),
        ("raw/turnstile/b.csv", 3),
    ]
    assert elt.query(
        "select key, count(*) from elt.ledger where status = 'loaded' group by 1 order by 1"
    ) == [("raw/turnstile/a.csv", 1), ("raw/turnstile/b.csv", 1)]
    assert published(elt) == reference
    assert not any((elt.home / "tmp").glob("*"))


def test_a_wal_left_by_a_crash_replays_and_a_damaged_one_is_kept(elt: Elt) -> None:
    # GIVEN a run killed mid-build: its loads are committed, in a WAL not yet checkpointed
    reset(elt)
    assert elt.run("run", check=False, ELT_KILL_AT="build").returncode == -signal.SIGKILL
    path = elt.settings.warehouse_path
    wal = path.with_name(path.name + ".wal")
    assert wal.exists() and wal.stat().st_size > 0
    saved = (path.read_bytes(), wal.read_bytes())
    # WHEN the WAL is damaged (bytes in its middle overwritten)
    damaged = bytearray(saved[1])
    middle = len(damaged) // 2
    damaged[middle : middle + 64] = bytes(64)
    wal.write_bytes(bytes(damaged))
    # THEN the run stops with one clear line, and neither file is changed or deleted
    proc = elt.run("run", check=False)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("elt: ")]
    assert len(errors) == 1
    assert errors[0].startswith(
        f"elt: load failed: cannot open {path}: replaying its write-ahead log"
    )
    assert f"{wal.name} is kept next to it" in errors[0]
    assert wal.read_bytes() == bytes(damaged)
    status = elt.run("status", check=False)
    assert status.returncode == 1 and "replaying its write-ahead log failed" in status.stderr
    # WHEN the intact WAL is back THEN reopening replays every committed load, once
    wal.write_bytes(saved[1])
    elt.run("run")
    assert elt.query(
        "select key, count(*) from elt.ledger where status = 'loaded' group by 1 order by 1"
    ) == [("raw/turnstile/a.csv", 1), ("raw/turnstile/b.csv", 1)]
    assert elt.query("select count(*) from raw.turnstile") == [(6,)]


def test_second_run_says_busy_or_waits_never_loads_twice(elt: Elt) -> None:
    reset(elt)
    first = subprocess.Popen(
        [str(BIN / "elt"), "run"],
        cwd=PROJECT,
        env=elt.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = elt.home / "run.lock"
    deadline = time.monotonic() + 30
    while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
        assert time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.05)
    # WHEN a second run will not wait THEN it says busy in one line
    busy = elt.run("run", "--wait", "0", check=False)
    assert busy.returncode == 75
    assert busy.stderr.strip().splitlines() == [
        f"elt: busy: another elt run (pid {first.pid}) is using {elt.home}; waited 0s, try again later"
    ]
    # WHEN a third one waits THEN it runs after the first and finds nothing new
    waited = elt.run("run", "--wait", "120")
    assert first.wait(timeout=120) == 0
    assert "loaded 0 object(s)" in waited.stdout
    assert elt.query("select count(*) from elt.ledger where status = 'loaded'") == [(2,)]
    assert elt.query("select count(*) from raw.turnstile") == [(6,)]
