"""Write-audit-publish: a mart's CSV changes only when its build and tests pass."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tests.conftest import HEADER, Elt, project_copy, week_csv

TEXT_COLUMNS = (
    "turnstile_id",
    "control_area",
    "remote_unit",
    "scp",
    "station",
    "line_names",
    "division",
)


def staged_candidates(elt: Elt) -> list[str]:
    """Candidate files left behind, and anything under marts/ but what the manifests list."""
    left = [str(p) for p in (elt.home / "exports").rglob("*.csv")]
    listing = elt.s3().list_objects_v2(Bucket="lake", Prefix="marts/")
    keys = [o["Key"] for o in listing.get("Contents", [])]
    listed = set()
    for key in keys:
        if key.endswith("/_manifest.json"):
            manifest = json.loads(elt.get(key))
            listed |= {key, *(part["key"] for part in manifest["parts"])}
    stray = [
        key
        for key in keys
        if not key.startswith(("marts/_rejects/", "marts/_runs/"))
        and key.count("/") > 1
        and key not in listed
    ]
    return left + stray


def test_empty_mart_publishes_a_header_only_csv(elt: Elt) -> None:
    # GIVEN only a header-only file WHEN run THEN the marts publish their header alone
    elt.put("raw/turnstile/000000_empty.csv", (HEADER + "\n").encode())
    elt.run("run")
    assert elt.download_mart("turnstile_daily") == (
        b"turnstile_id,control_area,remote_unit,scp,station,line_names,division,"
        b"service_date,entries,exits,readings,anomalies\n"
    )
    assert elt.download_mart("station_daily") == b"remote_unit,station,service_date,entries,exits\n"
    assert staged_candidates(elt) == []


# A station name a spreadsheet would run, as written in the file, and as exported;
# each on a day of its own.
FORMULA_LIKE = {
    "formula": ("02/01/2024", '"=HYPERLINK(""http://x"")"', '\'=HYPERLINK("http://x")'),
    "plus": ("02/02/2024", "+1 ST", "'+1 ST"),
    "minus": ("02/03/2024", "-1 ST", "'-1 ST"),
    "at": ("02/04/2024", "@HOME", "'@HOME"),
    "tab": ("02/05/2024", '"\tTAB ST"', "'\tTAB ST"),
    "plain": ("02/06/2024", "59 ST", "59 ST"),
}


def test_formula_like_text_is_escaped_numbers_untouched(elt: Elt) -> None:
    # GIVEN each formula-like station name in a file of its own, on a day of its own
    for case, (day, cell, _) in FORMULA_LIKE.items():
        key = f"raw/turnstile/1{day.replace('/', '')}_{case}.csv"
        elt.put(key, week_csv(3, day=day, station=cell, start=5000))
    # WHEN published (one run: each case is its own day, so none masks another)
    elt.run("run")
    rows = list(csv.DictReader(io.StringIO(elt.download_mart("turnstile_daily").decode())))
    # THEN each name is kept behind a quote, numbers as they were
    for case, (day, _, exported) in FORMULA_LIKE.items():
        month, date_of_month, year = day.split("/")
        (row,) = [r for r in rows if r["service_date"] == f"{year}-{month}-{date_of_month}"]
        assert row["station"] == exported, case
        assert (row["readings"], row["exits"]) == ("3", "0"), case
    # AND every text cell of the mart is safe
    for any_row in rows:
        for column in TEXT_COLUMNS:
            assert not any_row[column].startswith(("=", "+", "-", "@", "\t", "\r")), any_row


def test_failing_test_keeps_the_previous_csv(elt: Elt, tmp_path: Path) -> None:
    # GIVEN published CSVs
    elt.put("raw/turnstile/200000_a.csv", week_csv(3, day="03/02/2024", start=7000))
    elt.run("run")
    before = {m: elt.get(f"marts/{m}.csv") for m in ("turnstile_daily", "station_daily")}
    # AND a project whose error-severity test on turnstile_daily fails
    copy = project_copy(tmp_path / "project")
    (copy / "tests" / "dbt" / "assert_always_fails.sql").write_text(
        "select * from {{ ref('turnstile_daily') }} where entries >= 0\n"
    )
    # WHEN new data arrives and the run builds it
    elt.put("raw/turnstile/200001_b.csv", week_csv(3, day="03/03/2024", start=7100))
    proc = elt.run("run", check=False, ELT_PROJECT_DIR=str(copy))
    # THEN the run fails naming the test, nothing is published, no candidate is left
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("elt: dbt build failed: test assert_always_fails: Got ")
    )
    assert {m: elt.get(f"marts/{m}.csv") for m in before} == before
    assert staged_candidates(elt) == []
    # AND the original project, tests passing, publishes the new day
    elt.run("run")
    assert b",2024-03-03," in elt.get("marts/turnstile_daily.csv")


def test_failing_export_fails_the_run_and_keeps_the_previous_csv(elt: Elt, tmp_path: Path) -> None:
    elt.run("run")
    before = elt.get("marts/turnstile_daily.csv")
    # GIVEN a project whose export cannot be written (a folder that does not exist)
    copy = project_copy(tmp_path / "project")
    macro = copy / "macros" / "export_mart.sql"
    unwritable = "'/no-such-folder/' ~ relation.identifier"
    written = "{%- set folder = candidate_folder(relation.identifier) -%}"
    assert written in macro.read_text()
    macro.write_text(macro.read_text().replace(written, "{%- set folder = " + unwritable + " -%}"))
    elt.put("raw/turnstile/300000_c.csv", week_csv(3, day="03/04/2024", start=7200))
    # WHEN run
    proc = elt.run("run", check=False, ELT_PROJECT_DIR=str(copy))
    # THEN it fails on the dbt build step, and the published CSV is the previous one
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("elt: dbt build failed: model turnstile_daily")
    )
    assert elt.get("marts/turnstile_daily.csv") == before


def test_a_model_failing_midway_keeps_tables_and_csvs_and_skips_downstream(
    elt: Elt, tmp_path: Path
) -> None:
    elt.run("run")
    published = {m: elt.get(f"marts/{m}.csv") for m in ("turnstile_daily", "station_daily")}
    rows_before = elt.query("select count(*) from marts.turnstile_daily")
    # GIVEN a project whose intermediate model fails at run time on the new day's rows
    # (a bad cast; its unit tests, which would stop the build before, are taken out)
    copy = project_copy(tmp_path / "project")
    folder = copy / "models" / "intermediate" / "ridership"
    (folder / "_int_ridership__unit_tests.yml").unlink()
    model = folder / "int_turnstile_intervals.sql"
    model.write_text(
        model.read_text().replace(
            "        coalesce(entries_delta >",
            "        cast(turnstile_id as integer) as broken,\n        coalesce(entries_delta >",
        )
    )
    elt.put("raw/turnstile/400000_d.csv", week_csv(3, day="03/05/2031", start=7300))
    # WHEN run
    proc = elt.run("run", check=False, ELT_PROJECT_DIR=str(copy))
    # THEN it fails naming the model, downstream models are skipped and nothing is published
    assert proc.returncode == 1
    (error,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("elt: ")]
    assert error.startswith("elt: dbt build failed: model int_turnstile_intervals: ")
    (receipt,) = elt.query("select receipt from elt.runs order by run_id desc limit 1")[0]
    statuses = {n["unique_id"]: n["status"] for n in json.loads(receipt)["dbt_nodes"]}
    assert statuses["model.elt_lake.int_turnstile_intervals"] == "error"
    assert statuses["model.elt_lake.turnstile_daily"] == "skipped"
    assert statuses["model.elt_lake.station_daily"] == "skipped"
    assert json.loads(receipt)["exports"] == []
    assert {m: elt.get(f"marts/{m}.csv") for m in published} == published
    assert elt.query("select count(*) from marts.turnstile_daily") == rows_before
    assert staged_candidates(elt) == []
    # AND the fixed project publishes the new day
    elt.run("run")
    assert b",2031-03-05," in elt.get("marts/turnstile_daily.csv")
