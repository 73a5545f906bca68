"""Real faults: the S3 server stops in the middle of a run; a file twice the memory cap.

Each test pauses a real ``elt run`` at a named point (``ELT_PAUSE_AT``, see
``loaders/faults.py``), stops the local S3 server for real, lets the run go
on, and checks what must hold. Marked ``faults``: ``pytest -m faults`` runs
them (with the crash tests) alone.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from loaders import local_s3, warehouse
from tests.conftest import BIN, HEADER, PROJECT, Elt, week_csv

pytestmark = pytest.mark.faults
TURNSTILES = 8600
HOLD_S = 4.0  # how long a foreign reader holds the warehouse while dbt opens it


def big_week(turnstiles: int) -> bytes:
    """A valid week: ``turnstiles`` turnstiles read every hour for 7 days (70 bytes a reading)."""
    lines = [HEADER]
    for t in range(turnstiles):
        scp = f"{t // 10000:02d}-{t // 100 % 100:02d}-{t % 100:02d}"
        for hour in range(7 * 24):
            day, at = 1 + hour // 24, hour % 24
            lines.append(
                f"{hour},B{t % 50:03d},R{t % 400:03d},{scp},BIG ST,1,IRT,"
                f"02/{day:02d}/2024,{at:02d}:00:00,REGULAR,{1000 + hour * 3},{500 + hour}"
            )
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture()
def restarts(elt: Elt) -> Iterator[Elt]:
    """The module's server is up again after the test, whatever happened in it."""
    yield elt
    elt.run("up")


def paused_run(elt: Elt, point: str, flag: Path) -> subprocess.Popen[str]:
    """``elt run`` started and held at ``point`` (its flag file exists) until ``flag`` is removed."""
    proc = subprocess.Popen(
        [str(BIN / "elt"), "run"],
        cwd=PROJECT,
        env=elt.env(ELT_PAUSE_AT=point, ELT_PAUSE_FILE=str(flag)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"the run never reached {point}"
        time.sleep(0.1)
    return proc


def marts_keys(elt: Elt) -> list[str]:
    listing = elt.s3().list_objects_v2(Bucket="lake", Prefix="marts/")
    return sorted(o["Key"] for o in listing["Contents"])


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("elt: ")]


def test_server_stops_while_the_loader_reads(restarts: Elt, tmp_path: Path) -> None:
    elt = restarts
    # GIVEN a 100 MB object (more than loopback TCP buffers can hold: up to 36 MB here,
    # which the kernel would still deliver after the server is gone), and a run paused
    # after its first 8 MiB
    elt.reset()
    body = big_week(TURNSTILES)
    assert len(body) > 100e6
    elt.put("raw/turnstile/big.csv", body)
    proc = paused_run(elt, "download", tmp_path / "paused")
    # WHEN the S3 server stops, then the run goes on reading
    local_s3.stop(elt.home)
    (tmp_path / "paused").unlink()
    _, stderr = proc.communicate(timeout=300)
    # THEN the run fails in one clear line, and nothing of the object is committed
    assert proc.returncode == 1, stderr[-3000:]
    assert len(errors(stderr)) == 1, stderr[-3000:]
    (line,) = errors(stderr)
    assert line.startswith("elt: load failed: cannot read s3://lake/raw/turnstile/big.csv: ")
    assert elt.query("select count(*) from raw.turnstile") == [(0,)]
    assert elt.query("select count(*) from elt.ledger") == [(0,)]
    # AND after a restart the next run loads it, once
    elt.run("up")
    elt.run("run")
    assert elt.query("select count(*), count(distinct _source_row_number) from raw.turnstile") == [
        (TURNSTILES * 168, TURNSTILES * 168)
    ]
    assert elt.query("select status, rows_loaded from elt.ledger") == [("loaded", TURNSTILES * 168)]


def test_server_stops_during_the_export(restarts: Elt, tmp_path: Path) -> None:
    elt = restarts
    # GIVEN published marts
    elt.reset()
    elt.put("raw/turnstile/a.csv", week_csv(3, day="04/01/2024", start=100))
    elt.run("run")
    published = {m: elt.get(f"marts/{m}.csv") for m in ("turnstile_daily", "station_daily")}
    keys_before = marts_keys(elt)
    # AND a new day, whose run is paused just before its first PUT to marts/
    elt.put("raw/turnstile/b.csv", week_csv(3, day="04/02/2024", start=200))
    proc = paused_run(elt, "publish", tmp_path / "paused")
    # WHEN the S3 server stops, then the export goes on
    local_s3.stop(elt.home)
    (tmp_path / "paused").unlink()
    _, stderr = proc.communicate(timeout=300)
    # THEN the run fails on dbt build (the on-run-end publish) in one line
    assert proc.returncode == 1, stderr[-3000:]
    assert len(errors(stderr)) == 1, stderr[-3000:]
    (line,) = errors(stderr)
    assert line.startswith("elt: dbt build failed: ")
    # AND after a restart the published CSVs are the previous ones, nothing half-written is visible
    elt.run("up")
    assert {m: elt.get(f"marts/{m}.csv") for m in published} == published
    # (the failed run's receipt could not be written either: it is in elt.runs only)
    assert marts_keys(elt) == keys_before
    assert elt.query("select status from elt.runs order by run_id desc limit 1") == [("failed",)]
    # AND the next run publishes the new day
    elt.run("run")
    assert b",2024-04-02," in elt.get("marts/turnstile_daily.csv")


def test_readers_between_two_steps_never_fail_a_run(elt: Elt, tmp_path: Path) -> None:
    # GIVEN a run paused between landing and dbt: its run lock held, the warehouse file closed
    elt.reset()
    elt.put("raw/turnstile/a.csv", week_csv(3, day="04/03/2024", start=300))
    proc = paused_run(elt, "loaded", tmp_path / "paused")
    # WHEN `elt status` looks THEN it says busy and stays out of the file (it takes the run lock)
    status = elt.run("status").stdout
    assert "warehouse busy: a run (pid " in status, status
    # WHEN a SQL client (not ours, no run lock) holds the file read-only as dbt opens it
    reader = duckdb.connect(str(elt.settings.warehouse_path), read_only=True)
    (tmp_path / "paused").unlink()
    assert proc.stderr is not None
    seen = []
    while not any(" dbt: Found " in line for line in seen[-1:]):
        seen.append(proc.stderr.readline())
        assert seen[-1], "".join(seen)[-3000:]  # dbt's manifest summary precedes its first open
    # (not a wait: the reader stays open across dbt's first open and its first
    # retry, 1 s later; the contention is what is tested)
    time.sleep(HOLD_S)
    reader.close()
    # THEN dbt retries its open (profiles.yml `retries`) and the run succeeds
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, ("".join(seen) + stderr)[-3000:]
    assert b",2024-04-03," in elt.get("marts/turnstile_daily.csv")
    # AND readers of ours share the lock: `elt status` reads while another reader holds it
    with warehouse.read_only(elt.settings.warehouse_path, elt.home):
        status = elt.run("status").stdout
    assert "busy" not in status and "\tmanual\tsuccess\t" in status, status
