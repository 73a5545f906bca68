"""Crashes and concurrent runs: nothing lost, nothing loaded twice.

Each crash is real: the loader SIGKILLs itself at a named point
(``ELT_KILL_AT``, see ``loaders/land.py``), then a plain ``elt run`` must
converge to what an uninterrupted run publishes, byte for byte.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.conftest import BIN, PROJECT, Elt, week_csv

pytestmark = pytest.mark.faults

FILES = {
    "raw/turnstile/a.csv": week_csv(3, day="04/01/2024", start=100),
    "raw/turnstile/b.csv": week_csv(3, day="04/02/2024", start=200),
}


def reset(elt: Elt) -> None:
    elt.reset()
    for key, body in FILES.items():
        elt.put(key, body)


@pytest.fixture(scope="module")
def reference(elt: Elt) -> bytes:
    """The CSV an uninterrupted run publishes."""
    reset(elt)
    elt.run("run")
    return elt.get("marts/turnstile_daily.csv")


@pytest.mark.parametrize("point", ["download", "insert", "commit"])
def test_kill_9_then_rerun_converges(elt: Elt, reference: bytes, point: str) -> None:
    # GIVEN two new objects WHEN the loader is killed at `point`
    reset(elt)
    killed = elt.run("run", check=False, ELT_KILL_AT=point)
    assert killed.returncode == -signal.SIGKILL
    # THEN the next run finishes the job: each object once, same CSV
    elt.run("run")
    assert elt.query("select _source_key, count(*) from raw.turnstile group by 1 order by 1") == [
        ("raw/turnstile/a.csv", 3),
        ("raw/turnstile/b.csv", 3),
    ]
    assert elt.query(
        "select key, count(*) from elt.ledger where status = 'loaded' group by 1 order by 1"
    ) == [("raw/turnstile/a.csv", 1), ("raw/turnstile/b.csv", 1)]
    assert elt.get("marts/turnstile_daily.csv") == reference
    assert not any((elt.home / "tmp").glob("*"))


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
