"""Steady state vs one week alone: does a new week cost what a week costs?

Measures, on this machine, with the real local S3 server:

* ``one_week``: ``elt run`` on an empty state with one week uploaded;
* ``steady``: with N weeks already loaded and built, upload one more week and
  time ``elt run`` until its CSVs are published.

Each is the median of ``--repeat`` runs (fresh state for ``one_week``; the next
week in the series for ``steady``). Prints and writes JSON to ``--out``.

    .venv/bin/python -m bench.incremental --weeks 32 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.weeks import series

PROJECT = Path(__file__).resolve().parents[1]
ELT = str(Path(sys.executable).with_name("elt"))


def elt(home: Path, *args: str) -> float:
    """Run ``elt ARGS`` with ``ELT_HOME=home``; return wall seconds (raises on failure)."""
    env = {**os.environ, "ELT_HOME": str(home), "ELT_PROJECT_DIR": str(PROJECT)}
    started = time.perf_counter()
    subprocess.run([ELT, *args], env=env, check=True, capture_output=True, cwd=PROJECT)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weeks", type=int, default=32, help="weeks loaded before the new one")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, default=PROJECT / "bench" / "data" / "weeks")
    parser.add_argument(
        "--out", type=Path, default=PROJECT / "bench" / "results" / "incremental.json"
    )
    args = parser.parse_args()

    sources = sorted((PROJECT / "data" / "turnstile").glob("*.csv.gz"))
    weeks = series(sources, args.weeks + args.repeat, args.data)
    root = Path(tempfile.mkdtemp(prefix="elt-bench-"))
    try:
        one_week = []
        for i in range(args.repeat):
            home = root / f"one_{i}"
            elt(home, "up")
            elt(home, "upload", str(weeks[0]), "--dataset", "turnstile")
            one_week.append(elt(home, "run"))
            elt(home, "down")
        home = root / "steady"
        elt(home, "up")
        elt(home, "upload", *map(str, weeks[: args.weeks]), "--dataset", "turnstile")
        cold = elt(home, "run")
        steady = []
        for week in weeks[args.weeks :]:
            elt(home, "upload", str(week), "--dataset", "turnstile")
            steady.append(elt(home, "run"))
        elt(home, "down")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    result = {
        "weeks_loaded": args.weeks,
        "one_week_median_s": round(statistics.median(one_week), 2),
        "steady_median_s": round(statistics.median(steady), 2),
        "cold_build_s": round(cold, 2),
        "ratio_steady_to_one_week": round(
            statistics.median(steady) / statistics.median(one_week), 2
        ),
        "one_week_runs_s": [round(x, 2) for x in one_week],
        "steady_runs_s": [round(x, 2) for x in steady],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
