"""The Spark target builds the same marts as DuckDB, byte for byte, from the raw data in the open.

One state directory runs ``elt run`` with ``ELT_TARGET=spark`` (dbt-spark on
a local SparkSession, the bucket through ``weed mount``); a second one runs
the DuckDB target on the same files. The weeks are sliced as in
``tests/test_incremental.py`` (a fifth of the turnstiles, every twice-given
reading time kept): equality does not depend on volume, and each Spark run
then costs what Spark's planning and dbt cost.

The SparkSession lives in the test process once started (as in ``elt run``),
so every Spark run of this module shares it, and its state directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loaders import lake, pipeline
from loaders.config import load_settings
from tests.conftest import Elt

pytestmark = pytest.mark.spark

MARTS = ("turnstile_daily", "station_daily")
SEED_ROWS = 768  # seeds/remote_booth_station.csv, without its header


def published(elt: Elt) -> dict[str, object]:
    """Each mart's whole CSV, and the parts its manifest lists (bytes, rows, dates)."""
    found: dict[str, object] = {}
    for model in MARTS:
        found[model] = elt.get(f"marts/{model}.csv")
        manifest = json.loads(elt.get(f"marts/{model}/_manifest.json"))
        found[f"{model} parts"] = [
            (p["partition"], p["rows"], p["first"], p["last"], p["sha256"])
            for p in manifest["parts"]
        ]
    return found


def upload(week: Path, *homes: Elt) -> None:
    for elt in homes:
        elt.s3().upload_file(str(week), "lake", f"raw/turnstile/{week.name}")


def test_spark_publishes_duckdbs_bytes_in_a_full_build_and_after_a_late_and_a_new_week(
    elt: Elt, second: Elt, sliced_weeks: list[Path]
) -> None:
    spark, duck = elt, second
    first, second, third = sliced_weeks
    # GIVEN the second real week WHEN each engine builds it from nothing
    upload(second, spark, duck)
    spark.run("run", ELT_TARGET="spark")
    duck.run("run")
    # THEN Spark publishes the bytes DuckDB publishes
    alone = published(duck)
    assert published(spark) == alone
    assert alone["turnstile_daily"].count(b"\n") > 1000  # type: ignore[union-attr]
    # WHEN the first real week arrives late, with a new third one, and Spark
    # builds them (incremental: it overwrites the months they touch) with the
    # DuckDB file out of its reach
    upload(first, spark, duck)
    upload(third, spark, duck)
    settings = load_settings("spark", env=spark.env())
    landing = pipeline.land(settings, spark.s3())
    assert landing.synced is not None and len(landing.synced.written) == 2
    warehouse = settings.warehouse_path
    aside = warehouse.with_name("elsewhere.duckdb")
    warehouse.replace(aside)
    nodes: list[tuple[str, str, float]] = []
    try:
        pipeline.publish.start(spark.home)
        pipeline.build(
            settings, nodes=nodes, lake_written=[*landing.synced.written, lake.LEDGER_KEY]
        )
        # (AND the seed Spark reads is the lake's copy of the project's CSV)
        from pyspark.sql import SparkSession  # the session dbt-spark started in this process

        session = SparkSession.builder.getOrCreate()  # that one: it is the process's
        seed = session.table("reference.remote_booth_station")
        assert seed.count() == SEED_ROWS
        assert seed.inputFiles() and all(
            f.endswith("/lake/seeds/remote_booth_station/remote_booth_station.parquet")
            for f in seed.inputFiles()
        )
    finally:
        aside.replace(warehouse)
    assert [s for uid, s, _ in nodes if uid == "seed.elt_lake.remote_booth_station"] == ["success"]
    duck.run("run")
    # THEN the same again: the late week's deltas reach into the week after it
    everything = published(duck)
    assert published(spark) == everything != alone
