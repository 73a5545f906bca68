"""Incremental models give the same CSVs whatever order weeks arrive in.

Three consecutive weeks: the two real ones and a third made by shifting the
first one two weeks on. Loaded 3, 1, 2 one run at a time; all at once; and
rebuilt with --full-refresh: the exported CSVs must match byte for byte.

The weeks keep the real files' lines of control areas A.. to G.. and N2.. to
N30.. only (18% of the rows): 948 turnstiles at 84 stations, with their 1,084
RECOVR AUD readings and all 22 reading times the files give twice (those are
in N213 to N306), as they came. Equality does not depend on how many
turnstiles there are; each run then costs what dbt costs, not what 250,000
rows a week cost.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import Elt

MARTS = ("turnstile_daily", "station_daily")
HEADER = ",CA,UNIT,SCP,STATION,LINENAME,DIVISION,DATE,TIME,DESC,ENTRIES,EXITS\n"


def exports(elt: Elt) -> dict[str, object]:
    """Each mart's whole CSV, every part its manifest lists, and the manifest's parts.

    Also checks that the mart's folder holds nothing but those parts and the manifest.
    """
    found: dict[str, object] = {}
    for model in MARTS:
        found[model] = elt.get(f"marts/{model}.csv")
        manifest = json.loads(elt.get(f"marts/{model}/_manifest.json"))
        listed = [part["key"] for part in manifest["parts"]]
        listing = elt.s3().list_objects_v2(Bucket="lake", Prefix=f"marts/{model}/")
        assert sorted(o["Key"] for o in listing["Contents"]) == sorted(
            [*listed, f"marts/{model}/_manifest.json"]
        )
        for key in listed:
            found[key] = elt.get(key)
        # What a run id or a time cannot change: keys, ETags, rows, bytes, date ranges
        found[f"{model} manifest"] = [
            {k: v for k, v in part.items() if k != "run_id"} for part in manifest["parts"]
        ]
    return found


def test_weeks_in_any_order_give_identical_csvs(
    elt: Elt, second: Elt, sliced_weeks: list[Path]
) -> None:
    assert [p.name for p in sliced_weeks] == ["240106.csv.gz", "240113.csv.gz", "240120.csv.gz"]
    # GIVEN weeks 3, 1, 2 arriving one run at a time
    for index in (2, 0, 1):
        elt.run("upload", str(sliced_weeks[index]), "--dataset", "turnstile")
        elt.run("run")
    one_at_a_time = exports(elt)
    # AND all three loaded in one run elsewhere
    for path in sliced_weeks:
        second.run("upload", str(path), "--dataset", "turnstile")
    second.run("run")
    all_at_once = exports(second)
    # AND a full refresh of the incremental models, which DuckDB builds month
    # by month (macros/backfill.sql): December 2023, then January 2024, whose
    # first deltas diff against December's last readings
    log = second.home / "logs" / "dbt.log"
    log.unlink()
    second.run("run", "--full-refresh")
    full_refresh = exports(second)
    statements = log.read_text()
    for schema, model in (
        ("intermediate", "int_turnstile_intervals"),
        ("marts", "turnstile_daily"),
    ):
        months = re.findall(rf"set variable elt_backfill_{model}_low = date '([\d-]+)'", statements)
        assert months == ["2023-12-01", "2024-01-01"], model
        inserts = statements.count(f'insert into "warehouse"."{schema}"."{model}" by name')
        assert inserts == len(months), model
    # THEN the three agree byte for byte
    assert one_at_a_time == all_at_once == full_refresh
    assert "marts/turnstile_daily/2024-01.csv" in one_at_a_time
    whole = one_at_a_time["turnstile_daily"]
    assert isinstance(whole, bytes)
    header = whole.split(b"\n", 1)[0]
    assert b"_refreshed_at" not in header
    # and cover the three weeks: 2023-12-30 .. 2024-01-19
    body = whole.decode()
    assert ",2023-12-30," in body and ",2024-01-19," in body and ",2024-01-20," not in body


def test_a_reading_inside_a_built_day_rebuilds_the_whole_day(elt: Elt, second: Elt) -> None:
    # GIVEN a correction adding one reading at 13:00 to a day already built
    # (A002-R051-02-00-00 read 105683,76855 at 11:00 and 105796,76918 at 15:00)
    correction = (
        HEADER
        + "0,A002,R051,02-00-00,59 ST,NQR456W,BMT,01/08/2024,13:00:00,RECOVR AUD,105700,76860\n"
    )
    for instance in (elt, second):
        instance.put("raw/turnstile/240113_correction.csv", correction.encode())
        instance.run("run")
    incremental = exports(elt)
    second.run("run", "--full-refresh")
    # THEN the day has one more reading, and matches a full rebuild byte for byte
    whole = incremental["turnstile_daily"]
    assert isinstance(whole, bytes)
    line = next(
        ln
        for ln in whole.decode().splitlines()
        if ln.startswith("A002-R051-02-00-00,") and ",2024-01-08," in ln
    )
    # 03:00 -> 11:00 -> 13:00 -> 15:00 -> 19:00 -> 23:00, and 23:00 the day before
    assert line.endswith(",6,0")
    assert incremental == exports(second)


def test_late_week_changes_the_first_delta_of_the_week_after(elt: Elt) -> None:
    # Week 3 starts 2024-01-13 03:00. After weeks 3 and 1 only, its first
    # reading diffed against week 1's last (2024-01-05 23:00); week 2 arriving
    # made it diff against week 2's last. The incremental table holds the latter.
    rows = elt.query(
        "select previous_reading_at from intermediate.int_turnstile_intervals "
        "where turnstile_id = 'A002-R051-02-00-00' and reading_at = '2024-01-13 03:00:00'"
    )
    assert [str(r[0]) for r in rows] == ["2024-01-12 23:00:00"]
