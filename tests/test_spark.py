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
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.weeks import series, shift_week
from loaders import local_s3, pipeline
from loaders.config import load_settings
from tests.conftest import SAMPLE_WEEKS, Elt, started
from tests.test_incremental import some_control_areas

pytestmark = pytest.mark.spark

MARTS = ("turnstile_daily", "station_daily")


@pytest.fixture(scope="module")
def weeks(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four sliced weeks: the two real ones, the first shifted two weeks on, and one before all."""
    real = tmp_path_factory.mktemp("real_weeks")
    sliced = [some_control_areas(week, real) for week in SAMPLE_WEEKS]
    target = tmp_path_factory.mktemp("weeks")
    return [*series(sliced, 3, target), shift_week(sliced[1], -14, target)]


@pytest.fixture(scope="module")
def duck(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Elt]:
    home = tmp_path_factory.mktemp("duckdb_home")
    yield started(home)
    local_s3.stop(home)


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


def test_spark_publishes_duckdbs_bytes_at_once_week_by_week_and_with_a_late_week(
    elt: Elt, duck: Elt, weeks: list[Path]
) -> None:
    spark = elt
    # GIVEN two weeks WHEN each engine builds them from nothing
    for week in weeks[:2]:
        upload(week, spark, duck)
    spark.run("run", ELT_TARGET="spark")
    duck.run("run")
    # THEN Spark publishes the bytes DuckDB publishes
    at_once = published(duck)
    assert published(spark) == at_once
    assert at_once["turnstile_daily"].count(b"\n") > 1000  # type: ignore[union-attr]
    # WHEN the next week arrives (an incremental run: Spark overwrites the months it touches)
    upload(weeks[2], spark, duck)
    spark.run("run", ELT_TARGET="spark")
    duck.run("run")
    # THEN the same again
    assert published(spark) == published(duck) != at_once
    # WHEN a week older than all of them arrives late, and Spark builds with the
    # DuckDB file out of its reach
    upload(weeks[3], spark, duck)
    spark_settings = load_settings("spark", env=spark.env())
    landing = pipeline.land(spark_settings, spark.s3())
    warehouse = spark_settings.warehouse_path
    aside = warehouse.with_name("elsewhere.duckdb")
    warehouse.replace(aside)
    try:
        pipeline.publish.start(spark.home)
        written = [
            *(landing.synced.written if landing.synced else []),
            "lake/elt/ledger/ledger.parquet",
        ]
        pipeline.build(spark_settings, lake_written=written)
    finally:
        aside.replace(warehouse)
    duck.run("run")
    # THEN the same again: the late week's first deltas reach the weeks after it
    assert published(spark) == published(duck)
