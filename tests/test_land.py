"""Landing objects into raw.<dataset>: header variants, lineage, bad input, exactly once."""

from __future__ import annotations

import gzip

import pytest

from tests.conftest import Elt

HEADER = ",CA,UNIT,SCP,STATION,LINENAME,DIVISION,DATE,TIME,DESC,ENTRIES,EXITS"
ROW = "{i},A002,R051,02-00-00,59 ST,NQR456W,BMT,01/0{d}/2024,03:00:00,REGULAR,{e},100"


def week(rows: int = 3, header: str = HEADER, day: int = 1, start: int = 1000) -> bytes:
    lines = [header] + [ROW.format(i=i, d=day, e=start + i) for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture()
def fresh(elt: Elt) -> Elt:
    """Each test starts from an empty warehouse and an empty raw/ prefix."""
    client = elt.s3()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="lake"):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket="lake", Key=obj["Key"])
    elt.settings.warehouse_path.unlink(missing_ok=True)
    return elt


def load(elt: Elt) -> str:
    """Run the load step only, through the library, and return a summary."""
    from loaders import pipeline

    settings = elt.settings
    results = pipeline.load(settings, elt.s3())
    return ", ".join(f"{r.key}:{r.status}:{r.rows_loaded}" for r in results)


def test_header_variants_land_by_name(fresh: Elt) -> None:
    # GIVEN the current header, an old one (C/A, no index column) and a padded one
    old = "C/A,UNIT,SCP,STATION,LINENAME,DIVISION,DATE,TIME,DESC,ENTRIES,EXITS"
    old_row = "A003,R052,01-00-00,X ST,1,IRT,01/02/2024,03:00:00,REGULAR,5,6"
    fresh.put("raw/turnstile/a.csv", week(2))
    fresh.put("raw/turnstile/b.csv", f"{old}\n{old_row}\n".encode())
    padded = ",".join(f" {h}   " for h in HEADER.split(","))
    fresh.put("raw/turnstile/c.csv.gz", gzip.compress(week(1, header=padded, day=3)))
    # WHEN loaded
    assert load(fresh) == ", ".join(
        [
            "raw/turnstile/a.csv:loaded:2",
            "raw/turnstile/b.csv:loaded:1",
            "raw/turnstile/c.csv.gz:loaded:1",
        ]
    )
    # THEN columns matched by normalised name, not by position
    rows = fresh.query(
        "select _source_key, ca, c_a, unit, date, entries, unnamed_1, _source_row_number "
        "from raw.turnstile order by _source_key, _source_row_number"
    )
    assert rows == [
        ("raw/turnstile/a.csv", "A002", None, "R051", "01/01/2024", "1000", "0", 1),
        ("raw/turnstile/a.csv", "A002", None, "R051", "01/01/2024", "1001", "1", 2),
        ("raw/turnstile/b.csv", None, "A003", "R052", "01/02/2024", "5", None, 1),
        ("raw/turnstile/c.csv.gz", "A002", None, "R051", "01/03/2024", "1000", "0", 1),
    ]


def test_gzip_is_recognised_from_bytes_not_name(fresh: Elt) -> None:
    fresh.put("raw/turnstile/no_suffix.csv", gzip.compress(week(2)))
    assert load(fresh) == "raw/turnstile/no_suffix.csv:loaded:2"


def test_unknown_columns_are_kept(fresh: Elt) -> None:
    body = week(1, header=HEADER + ",Booth Note").replace(b"100\n", b"100,late\n")
    fresh.put("raw/turnstile/extra.csv", body)
    assert load(fresh) == "raw/turnstile/extra.csv:loaded:1"
    assert fresh.query("select booth_note from raw.turnstile") == [("late",)]


def test_ragged_row_fails_the_object_naming_file_and_line(fresh: Elt) -> None:
    good = week(2)
    bad = week(3).replace(b"1001,100\n", b"1001,100,surplus\n")
    fresh.put("raw/turnstile/1_good.csv", good)
    fresh.put("raw/turnstile/2_bad.csv", bad)
    assert load(fresh) == "raw/turnstile/1_good.csv:loaded:2, raw/turnstile/2_bad.csv:failed:0"
    (error,) = fresh.query("select error from elt.ledger where status = 'failed'")[0]
    assert error.startswith("raw/turnstile/2_bad.csv: ")
    assert "Line: 3" in error and "Expected Number of Columns: 12 Found: 13" in error
    # Nothing of the bad object landed; the good one is intact.
    assert fresh.query("select _source_key, count(*) from raw.turnstile group by 1") == [
        ("raw/turnstile/1_good.csv", 2)
    ]


def test_missing_required_column_rejects_the_object(fresh: Elt) -> None:
    fresh.put("raw/turnstile/no_exits.csv", week(1, header=HEADER.replace(",EXITS", ",OTHER")))
    assert load(fresh) == "raw/turnstile/no_exits.csv:failed:0"
    assert fresh.query("select error from elt.ledger") == [
        ("raw/turnstile/no_exits.csv: line 1: missing required column(s) exits",)
    ]


def test_each_object_version_loads_exactly_once(fresh: Elt) -> None:
    fresh.put("raw/turnstile/w.csv", week(2))
    assert load(fresh) == "raw/turnstile/w.csv:loaded:2"
    assert load(fresh) == ""
    assert fresh.query("select count(*) from raw.turnstile") == [(2,)]


def test_undeclared_prefix_is_not_loaded(fresh: Elt) -> None:
    fresh.put("raw/unknown_dataset/w.csv", week(2))
    assert load(fresh) == ""
    assert fresh.query("select count(*) from elt.ledger") == [(0,)]


def test_registry_reads_declared_columns_from_the_source_yaml() -> None:
    from loaders.datasets import discover
    from tests.conftest import PROJECT

    turnstile = discover(PROJECT)["turnstile"]
    assert turnstile.prefix == "raw/turnstile/"
    assert turnstile.columns == (
        "unnamed_1",
        "ca",
        "c_a",
        "unit",
        "scp",
        "station",
        "linename",
        "division",
        "date",
        "time",
        "desc",
        "entries",
        "exits",
    )
    assert turnstile.missing_columns({"c_a", "unit"}) == [
        "scp",
        "station",
        "linename",
        "division",
        "date",
        "time",
        "desc",
        "entries",
        "exits",
    ]
