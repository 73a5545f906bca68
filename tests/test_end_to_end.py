"""End to end on the two real weeks: upload, ``elt run``, download over HTTP.

Expected values were worked out by hand from the raw lines quoted in each test.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
from datetime import date
from pathlib import Path

import duckdb
import pytest

from loaders.config import STORAGE_VERSION
from tests.conftest import BIN, LANDED, PROJECT, SAMPLE_WEEKS, Elt

HEADER = [
    "turnstile_id",
    "control_area",
    "remote_unit",
    "scp",
    "station",
    "line_names",
    "division",
    "service_date",
    "entries",
    "exits",
    "readings",
    "anomalies",
]


@pytest.fixture(scope="module")
def loaded(elt: Elt) -> Elt:
    """GIVEN both real weeks uploaded WHEN `elt run` runs once."""
    for path in SAMPLE_WEEKS:
        elt.run("upload", str(path), "--dataset", "turnstile")
    first = elt.run("run")
    assert "loaded 2 object(s), 503838 row(s)" in first.stdout
    return elt


@pytest.fixture(scope="module")
def turnstile_days(loaded: Elt) -> dict[tuple[str, str], dict[str, str]]:
    body = loaded.download_mart("turnstile_daily").decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    return {(r["turnstile_id"], r["service_date"]): r for r in rows}


def test_csv_has_header_and_one_row_per_turnstile_day(loaded: Elt) -> None:
    body = loaded.download_mart("turnstile_daily").decode()
    reader = csv.reader(io.StringIO(body))
    assert next(reader) == HEADER
    keys = [(row[0], row[7]) for row in reader]
    assert len(keys) == len(set(keys)) == 70188


def test_week_boundary_diffs_against_previous_week(turnstile_days) -> None:
    # 240106: A002,R051,02-00-00 01/05/2024 23:00:00 105150,76201 (last of week 1)
    # 240113: 01/06 03:00 105161,76217 | 07:00 105165,76228 | 11:00 105198,76278
    #         15:00 105257,76326 | 19:00 105357,76385 | 23:00 105408,76427
    # entries 11+4+33+59+100+51 = 258; exits 16+11+50+48+59+42 = 226
    row = turnstile_days[("A002-R051-02-00-00", "2024-01-06")]
    assert row == {
        "turnstile_id": "A002-R051-02-00-00",
        "control_area": "A002",
        "remote_unit": "R051",
        "scp": "02-00-00",
        "station": "59 ST",
        "line_names": "NQR456W",
        "division": "BMT",
        "service_date": "2024-01-06",
        "entries": "258",
        "exits": "226",
        "readings": "6",
        "anomalies": "0",
    }


def test_regular_reading_wins_over_recovr_aud_duplicate(turnstile_days) -> None:
    # N306,R017,00-00-00 on 12/30/2023 (its first readings ever):
    #   00:00 RECOVR AUD 7,563          first reading: no delta
    #   03:00 REGULAR 22618,30586       22611, 30023 anomaly
    #   05:00 RECOVR AUD 7,569          22611, 30017 anomaly
    #   07:00 REGULAR 22619,30587       22612, 30018 anomaly
    #   11:00 REGULAR 22624,30590       5, 3
    #   15:00 REGULAR 22661,30619  and  RECOVR AUD 7,629 at the same time:
    #         REGULAR kept -> 37, 29 (RECOVR AUD would have made an anomaly)
    #   19:00 REGULAR 22706,30668       45, 49
    #   20:00 RECOVR AUD 7,677          22699, 29991 anomaly
    #   23:00 REGULAR 22730,30696       22723, 30019 anomaly
    # 9 readings after de-duplication, 5 anomalies; entries 5+37+45, exits 3+29+49
    row = turnstile_days[("N306-R017-00-00-00", "2023-12-30")]
    assert (row["entries"], row["exits"], row["readings"], row["anomalies"]) == (
        "87",
        "81",
        "9",
        "5",
    )


def test_backwards_counter_counts_absolute_change(turnstile_days) -> None:
    # A011,R080,01-03-00: 01/02 23:00 885252113,488111181, then on 01/03:
    #   03:00 885252085,488111138 -> 28, 43 | 07:00 ...078,...110978 -> 7, 160
    #   11:00 ...054,...109824 -> 24, 1154  | 15:00 ...1990,...109438 -> 64, 386
    #   19:00 ...1760,...109039 -> 230, 399 | 23:00 ...1668,...108892 -> 92, 147
    row = turnstile_days[("A011-R080-01-03-00", "2024-01-03")]
    assert (row["entries"], row["exits"], row["readings"], row["anomalies"]) == (
        "445",
        "2289",
        "6",
        "0",
    )


def test_counter_reset_is_an_anomaly_excluded_from_sums(turnstile_days) -> None:
    # H041,R152,00-03-01: 01/09 20:00 20568,63641, no reading on 01/10, then 01/11:
    #   12:00 5,133 -> 20563, 63508: anomaly, excluded
    #   16:00 8,148 -> 3, 15 | 20:00 11,192 -> 3, 44
    row = turnstile_days[("H041-R152-00-03-01", "2024-01-11")]
    assert (row["entries"], row["exits"], row["readings"], row["anomalies"]) == (
        "6",
        "59",
        "3",
        "1",
    )
    assert ("H041-R152-00-03-01", "2024-01-10") not in turnstile_days


def test_second_week_service_dates_lie_within_that_week(loaded: Elt) -> None:
    # (an interval's lineage is its reading's row in the deduplicated table)
    dates = loaded.query(
        "select distinct intervals.service_date "
        "from intermediate.int_turnstile_intervals as intervals "
        "inner join intermediate.int_turnstile_readings_deduplicated as readings "
        "using (turnstile_id, reading_at) "
        "where readings._source_key = 'raw/turnstile/240113.csv.gz'"
    )
    assert {d for (d,) in dates} == {date(2024, 1, day) for day in range(6, 13)}


def test_station_daily_totals_match_turnstile_daily(loaded: Elt, turnstile_days) -> None:
    stations = list(csv.DictReader(io.StringIO(loaded.download_mart("station_daily").decode())))
    assert list(stations[0]) == ["remote_unit", "station", "service_date", "entries", "exits"]
    r051 = next(
        s for s in stations if (s["remote_unit"], s["service_date"]) == ("R051", "2024-01-06")
    )
    expected = sum(
        int(r["entries"])
        for (_, day), r in turnstile_days.items()
        if r["remote_unit"] == "R051" and day == "2024-01-06"
    )
    assert int(r051["entries"]) == expected
    assert r051["station"] == "59 ST"
    assert sum(int(s["exits"]) for s in stations) == sum(
        int(r["exits"]) for r in turnstile_days.values()
    )


def test_lineage_columns_trace_each_row_to_its_object(loaded: Elt) -> None:
    rows = loaded.query(
        "select _source_key, _source_etag, min(_source_row_number), max(_source_row_number), "
        "count(distinct _load_id), count(*) from " + LANDED + " group by all order by 1"
    )
    etags = {
        o["Key"]: o["ETag"].strip('"')
        for o in loaded.s3().list_objects_v2(Bucket="lake", Prefix="raw/")["Contents"]
    }
    assert rows == [
        ("raw/turnstile/240106.csv.gz", etags["raw/turnstile/240106.csv.gz"], 1, 250816, 1, 250816),
        ("raw/turnstile/240113.csv.gz", etags["raw/turnstile/240113.csv.gz"], 1, 253022, 1, 253022),
    ]
    ledger = loaded.query("select key, status, rows_loaded from elt.ledger order by key")
    assert ledger == [
        ("raw/turnstile/240106.csv.gz", "loaded", 250816),
        ("raw/turnstile/240113.csv.gz", "loaded", 253022),
    ]


def test_second_run_loads_nothing_and_exports_identical_bytes(loaded: Elt) -> None:
    before = {m: loaded.get(f"marts/{m}.csv") for m in ("turnstile_daily", "station_daily")}
    again = loaded.run("run")
    assert "loaded 0 object(s), 0 row(s)" in again.stdout
    assert loaded.query("select count(*) from raw.turnstile") == [(503838,)]
    assert {m: loaded.get(f"marts/{m}.csv") for m in before} == before


def test_uploading_the_same_week_again_loads_nothing(loaded: Elt) -> None:
    loaded.run("upload", str(SAMPLE_WEEKS[0]), "--dataset", "turnstile")
    again = loaded.run("run")
    assert "loaded 0 object(s), 0 row(s)" in again.stdout


def dbt(elt: Elt, *args: str, target_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(BIN / "dbt"),
            *args,
            "--project-dir",
            str(PROJECT),
            "--profiles-dir",
            str(PROJECT),
            "--target-path",
            str(target_path),
            "--log-path",
            str(target_path / "logs"),
        ],
        env=elt.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_dbt_unit_test_passes(loaded: Elt, tmp_path: Path) -> None:
    # GIVEN the built warehouse (dbt reads the models' columns for the fixtures)
    # WHEN dbt runs the unit tests, which `elt run` leaves out of its builds
    proc = dbt(loaded, "test", "--select", "test_type:unit", target_path=tmp_path)
    # THEN every rule's unit test passes
    assert proc.returncode == 0, proc.stdout[-3000:]
    results = json.loads((tmp_path / "run_results.json").read_text())["results"]
    unit_tests = [r for r in results if r["unique_id"].startswith("unit_test.")]
    assert len(unit_tests) >= 11
    assert {r["status"] for r in unit_tests} == {"pass"}
    # AND a run's own build skips them: they pin the SQL, not the data
    receipt = json.loads(
        loaded.query("select receipt from elt.runs order by started_at desc limit 1")[0][0]
    )
    assert not [n for n in receipt["dbt_nodes"] if n["unique_id"].startswith("unit_test.")]


def test_docs_generate_and_every_model_and_column_is_described(loaded: Elt, tmp_path: Path) -> None:
    proc = dbt(loaded, "docs", "generate", target_path=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    catalog = json.loads((tmp_path / "catalog.json").read_text())
    assert "doc.elt_lake.__overview__" in manifest["docs"]
    documented = {**manifest["nodes"], **manifest["sources"]}
    tables = {**catalog["nodes"], **catalog["sources"]}
    assert {
        "model.elt_lake.turnstile_daily",
        "seed.elt_lake.remote_booth_station",
        "source.elt_lake.mta.turnstile",
    } <= set(tables)
    missing = []
    for unique_id, table in tables.items():
        node = documented[unique_id]
        if not node["description"].strip():
            missing.append(unique_id)
        described = {name.lower(): c["description"].strip() for name, c in node["columns"].items()}
        missing += [f"{unique_id}.{c}" for c in table["columns"] if not described.get(c.lower())]
    assert missing == []
    exposures = {e["name"] for e in manifest["exposures"].values()}
    assert exposures == {"turnstile_daily_csv", "station_daily_csv"}


def test_source_freshness_warns_after_8_days_errors_after_15(loaded: Elt, tmp_path: Path) -> None:
    assert dbt(loaded, "source", "freshness", target_path=tmp_path).returncode == 0
    with duckdb.connect(str(loaded.settings.warehouse_path)) as conn:
        conn.execute("update raw.turnstile set _loaded_at = _loaded_at - interval 10 day")
    warned = dbt(loaded, "source", "freshness", target_path=tmp_path)
    assert warned.returncode == 0 and "WARN freshness of mta.turnstile" in warned.stdout
    with duckdb.connect(str(loaded.settings.warehouse_path)) as conn:
        conn.execute("update raw.turnstile set _loaded_at = _loaded_at - interval 6 day")
    stale = dbt(loaded, "source", "freshness", target_path=tmp_path)
    assert stale.returncode == 1 and "ERROR STALE freshness of mta.turnstile" in stale.stdout


def storage_version(warehouse_path: Path) -> str:
    """The storage format DuckDB reports for a warehouse file, e.g. ``v1.5.0+``."""
    with duckdb.connect(str(warehouse_path), read_only=True) as conn:
        (tags,) = conn.execute(
            "select tags from duckdb_databases() where database_name = 'warehouse'"
        ).fetchone()
    return tags["storage_version"]


def test_the_warehouse_is_created_in_duckdbs_newer_storage_format(loaded: Elt) -> None:
    # Writes and checkpoints are cheaper in it (loaders/config.py, STORAGE_VERSION).
    assert storage_version(loaded.settings.warehouse_path) == f"{STORAGE_VERSION}+"


def test_a_warehouse_dbt_creates_first_is_in_the_newer_format_too(
    second: Elt, tmp_path: Path
) -> None:
    # GIVEN a state directory whose warehouse does not exist yet
    assert not second.settings.warehouse_path.exists()
    # WHEN dbt, not the loader, creates it (the README's `dbt build` by hand)
    proc = dbt(second, "seed", target_path=tmp_path)
    # THEN it is in the same format: the dbt plugin opens it with the loader's settings
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert storage_version(second.settings.warehouse_path) == f"{STORAGE_VERSION}+"
