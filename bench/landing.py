"""Landing throughput: the loader vs DuckDB's bare CTAS over the same S3 objects.

* ``landing_bare``: one statement, ``create table ... as select * from
  read_csv([s3 keys], all_varchar = true, header = true)``, into a new DuckDB file;
* ``landing``: :func:`loaders.pipeline.load` (hash, count, quarantine,
  ledger, one transaction per object) into a new warehouse.

Both read the same objects from the local S3 server; each is the median of
``--repeat`` runs on fresh databases.

    .venv/bin/python -m bench.landing --weeks 8 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import duckdb

from bench.weeks import series
from loaders import local_s3, pipeline, warehouse
from loaders import s3 as s3_mod
from loaders.config import load_settings

PROJECT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weeks", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, default=PROJECT / "bench" / "data" / "weeks")
    parser.add_argument("--out", type=Path, default=PROJECT / "bench" / "results" / "landing.json")
    args = parser.parse_args()

    sources = sorted((PROJECT / "data" / "turnstile").glob("*.csv.gz"))
    weeks = series(sources, args.weeks, args.data)
    home = Path(tempfile.mkdtemp(prefix="elt-landing-"))
    os.environ["ELT_HOME"] = str(home)
    try:
        local_s3.start(home)
        settings = load_settings("dev")
        connection = s3_mod.connection(settings.lake, settings.home)
        client = s3_mod.client(connection)
        s3_mod.ensure_bucket(client, settings.lake.bucket)
        keys = []
        for path in weeks:
            key = f"raw/turnstile/{path.name}"
            s3_mod.upload(client, path, settings.lake.bucket, key)
            keys.append(f"s3://{settings.lake.bucket}/{key}")
        bare, ours, rows = [], [], 0
        for i in range(args.repeat):
            path = home / f"bare_{i}.duckdb"
            with warehouse.connect(path, connection) as conn:
                started = time.perf_counter()
                bare_sql = (
                    "create table t as select * from read_csv(?, all_varchar = true, header = true)"
                )
                conn.execute(bare_sql, [keys])
                conn.execute("checkpoint")
                bare.append(time.perf_counter() - started)
                rows = conn.execute("select count(*) from t").fetchone()[0]
            path.unlink()
            settings.warehouse_path.unlink(missing_ok=True)
            started = time.perf_counter()
            results = pipeline.load(settings, client)
            with duckdb.connect(str(settings.warehouse_path)) as conn:
                conn.execute("checkpoint")
            ours.append(time.perf_counter() - started)
            assert sum(r.rows_loaded for r in results) == rows, "the loader lost or added rows"
        local_s3.stop(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    result = {
        "objects": len(keys),
        "rows": rows,
        "landing_bare_median_s": round(statistics.median(bare), 2),
        "landing_median_s": round(statistics.median(ours), 2),
        "landing_bare_rows_per_s": round(rows / statistics.median(bare)),
        "landing_rows_per_s": round(rows / statistics.median(ours)),
        "throughput_vs_bare": round(statistics.median(bare) / statistics.median(ours), 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
