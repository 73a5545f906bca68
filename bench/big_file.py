"""One big CSV with a 1 GB DuckDB memory limit: does the loader stay under 2 GB?

Builds a ~2 GB CSV from the generated weeks (``bench/data/weeks``), uploads
it to a fresh local S3 server, then runs the load step alone in a child
process with ``ELT_MEMORY_LIMIT`` and reports its wall time and peak resident
memory (``VmHWM`` of the child, read from ``/proc`` by the child itself).

    .venv/bin/python -m bench.big_file --gigabytes 2 --memory-limit 1GB
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from loaders import local_s3
from loaders import s3 as s3_mod
from loaders.config import load_settings

PROJECT = Path(__file__).resolve().parents[1]
CHILD = """
from loaders import pipeline, s3
from loaders.config import load_settings
settings = load_settings("dev")
results = pipeline.load(settings, s3.client(s3.connection(settings.lake, settings.home)))
print(sum(r.rows_loaded for r in results), [r.status for r in results])
peak_kb = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1]
print(int(peak_kb) // 1024)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument("--out", type=Path, default=PROJECT / "bench" / "results" / "big_file.json")
    args = parser.parse_args()
    weeks = sorted((PROJECT / "bench" / "data" / "weeks").glob("*.csv.gz"))
    home = Path(tempfile.mkdtemp(prefix="elt-big-"))
    try:
        big = home / "big.csv"
        target = args.gigabytes * 1e9
        with duckdb.connect() as conn:
            sources = []
            while len(sources) * 20.4e6 < target:
                sources.extend(str(w) for w in weeks)
            sources = sources[: int(target / 20.4e6) + 1]
            conn.execute(
                f"copy (select * from read_csv(?, all_varchar = true, header = true)) "
                f"to '{big}' (format csv, header true)",
                [sources],
            )
        size = big.stat().st_size
        env = {**os.environ, "ELT_HOME": str(home), "ELT_MEMORY_LIMIT": args.memory_limit}
        os.environ.update(env)
        local_s3.start(home)
        settings = load_settings("dev")
        client = s3_mod.client(s3_mod.connection(settings.lake, settings.home))
        s3_mod.ensure_bucket(client, settings.lake.bucket)
        s3_mod.upload(client, big, settings.lake.bucket, "raw/turnstile/big.csv")
        big.unlink()
        started = time.perf_counter()
        child = subprocess.run(
            [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
        )
        seconds = time.perf_counter() - started
        # The child's own VmHWM: getrusage(RUSAGE_CHILDREN) would count the pages this
        # process held when it forked the child (the CSV written above), before its exec.
        outcome, peak = child.stdout.strip().splitlines()
        peak_mb = int(peak)
        spilled = (home / "spill").exists()
        local_s3.stop(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    result = {
        "csv_bytes": size,
        "memory_limit": args.memory_limit,
        "rows_and_statuses": outcome,
        "seconds": round(seconds, 1),
        "peak_rss_mb": peak_mb,
        "spill_directory_used": spilled,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
