"""Landing objects into raw.<dataset>: any format, exactly once, bad rows quarantined."""

from __future__ import annotations

import gzip
import io
import json
import logging
import re

import duckdb
import pytest
import zstandard
from botocore.exceptions import ClientError

from loaders import land, pipeline, warehouse
from loaders import s3 as s3_mod
from loaders.datasets import Dataset, discover
from tests.conftest import HEADER, LANDED, PROJECT, Elt, week_csv

ROW = "{i},A002,R051,02-00-00,59 ST,NQR456W,BMT,01/01/2024,0{i}:00:00,REGULAR,{e},100"


@pytest.fixture()
def fresh(elt: Elt) -> Elt:
    """Each test starts from an empty warehouse and an empty bucket."""
    elt.reset()
    return elt


def load(elt: Elt) -> str:
    """Run the load step through the library; summarise as key:status:loaded:rejected."""
    results = pipeline.load(elt.settings, elt.s3())
    return ", ".join(f"{r.key}:{r.status}:{r.rows_loaded}:{r.rows_rejected}" for r in results)


def ledger(elt: Elt, *columns: str) -> list[tuple]:
    return elt.query(f"select {', '.join(columns)} from elt.ledger order by started_at")


def rejects(elt: Elt) -> list[tuple]:
    return elt.query("select key, line, error_type from elt.rejects order by key, line")


# --- columns matched by name ------------------------------------------------


def test_header_variants_land_by_name(fresh: Elt) -> None:
    # GIVEN the current header, an old one (C/A, no index column) and a padded one
    old = "C/A,UNIT,SCP,STATION,LINENAME,DIVISION,DATE,TIME,DESC,ENTRIES,EXITS"
    old_row = "A003,R052,01-00-00,X ST,1,IRT,01/02/2024,03:00:00,REGULAR,5,6"
    fresh.put("raw/turnstile/a.csv", week_csv(2))
    fresh.put("raw/turnstile/b.csv", f"{old}\n{old_row}\n".encode())
    padded = ",".join(f" {h}   " for h in HEADER.split(","))
    fresh.put(
        "raw/turnstile/c.csv.gz",
        gzip.compress(week_csv(1).replace(HEADER.encode(), padded.encode())),
    )
    # WHEN loaded
    assert load(fresh) == ", ".join(
        [
            "raw/turnstile/a.csv:loaded:2:0",
            "raw/turnstile/b.csv:loaded:1:0",
            "raw/turnstile/c.csv.gz:loaded:1:0",
        ]
    )
    # THEN columns matched by normalised name, not by position
    rows = fresh.query(
        "select _source_key, ca, c_a, unit, entries, unnamed_1, _source_row_number "
        "from " + LANDED + " order by _source_key, _source_row_number"
    )
    assert rows == [
        ("raw/turnstile/a.csv", "A002", None, "R051", "1000", "0", 1),
        ("raw/turnstile/a.csv", "A002", None, "R051", "1001", "1", 2),
        ("raw/turnstile/b.csv", None, "A003", "R052", "5", None, 1),
        ("raw/turnstile/c.csv.gz", "A002", None, "R051", "1000", "0", 1),
    ]


def test_unknown_columns_are_kept_as_text(fresh: Elt) -> None:
    body = week_csv(1).replace(b"EXITS\n", b"EXITS,Booth Note\n").replace(b"100\n", b"100,late\n")
    fresh.put("raw/turnstile/extra.csv", body)
    assert load(fresh) == "raw/turnstile/extra.csv:loaded:1:0"
    assert fresh.query("select booth_note from raw.turnstile") == [("late",)]


def test_missing_required_column_rejects_the_object_naming_it(fresh: Elt) -> None:
    fresh.put("raw/turnstile/no_exits.csv", week_csv(1).replace(b",EXITS", b",OTHER"))
    assert load(fresh) == "raw/turnstile/no_exits.csv:failed:0:0"
    assert ledger(fresh, "error") == [
        ("raw/turnstile/no_exits.csv: line 1: missing required column(s) exits",)
    ]


def test_header_naming_a_column_twice_rejects_the_object(fresh: Elt) -> None:
    fresh.put("raw/turnstile/twice.csv", week_csv(1).replace(b",EXITS", b",Entries"))
    assert load(fresh) == "raw/turnstile/twice.csv:failed:0:0"
    assert ledger(fresh, "error") == [
        ("raw/turnstile/twice.csv: line 1, columns 11 and 12: both are named 'entries'",)
    ]


def test_hostile_header_never_reaches_sql_unquoted(fresh: Elt) -> None:
    hostile = 'a";drop table raw.turnstile;--'
    body = week_csv(1).replace(
        b"EXITS\n", f'EXITS,"{hostile.replace(chr(34), chr(34) * 2)}"\n'.encode()
    )
    fresh.put("raw/turnstile/hostile.csv", body.replace(b"100\n", b"100,x\n"))
    assert load(fresh) == "raw/turnstile/hostile.csv:loaded:1:0"
    assert fresh.query("select a_drop_table_raw_turnstile from raw.turnstile") == [("x",)]


# --- formats ----------------------------------------------------------------


def test_every_supported_format_lands(fresh: Elt) -> None:
    records = [
        {
            "ca": "A002",
            "unit": "R051",
            "scp": "02-00-00",
            "station": "59 ST",
            "linename": "N",
            "division": "BMT",
            "date": "01/03/2024",
            "time": f"0{i}:00:00",
            "desc": "REGULAR",
            "entries": str(10 + i),
            "exits": "5",
        }
        for i in range(3)
    ]
    jsonl = "".join(json.dumps(r) + "\n" for r in records).encode()
    fresh.put("raw/turnstile/f1.csv.zst", zstandard.ZstdCompressor().compress(week_csv(2)))
    fresh.put("raw/turnstile/f2.jsonl", jsonl)
    fresh.put("raw/turnstile/f3.ndjson.gz", gzip.compress(jsonl[: jsonl.index(b"\n") + 1]))
    buffer = io.BytesIO()
    with duckdb.connect() as conn:
        conn.execute(
            "create table t as select * from (values ('A009', 'R1', 'S', 'X', 'N', 'BMT', '01/04/2024', '01:00:00', 'REGULAR', 7, 8)) v(ca, unit, scp, station, linename, division, date, time, \"desc\", entries, exits)"
        )
        path = fresh.home / "f.parquet"
        conn.execute(f"copy t to '{path}' (format parquet)")
    buffer.write(path.read_bytes())
    fresh.put("raw/turnstile/f4.parquet", buffer.getvalue())
    assert load(fresh) == ", ".join(
        [
            "raw/turnstile/f1.csv.zst:loaded:2:0",
            "raw/turnstile/f2.jsonl:loaded:3:0",
            "raw/turnstile/f3.ndjson.gz:loaded:1:0",
            "raw/turnstile/f4.parquet:loaded:1:0",
        ]
    )
    assert fresh.query(
        "select _source_key, entries, _source_row_number from "
        + LANDED
        + " where date != '01/01/2024' order by all"
    ) == [
        ("raw/turnstile/f2.jsonl", "10", 1),
        ("raw/turnstile/f2.jsonl", "11", 2),
        ("raw/turnstile/f2.jsonl", "12", 3),
        ("raw/turnstile/f3.ndjson.gz", "10", 1),
        ("raw/turnstile/f4.parquet", "7", 1),
    ]


def test_compression_is_recognised_from_bytes_not_name(fresh: Elt) -> None:
    fresh.put("raw/turnstile/no_suffix.csv", gzip.compress(week_csv(2)))
    assert load(fresh) == "raw/turnstile/no_suffix.csv:loaded:2:0"


@pytest.mark.parametrize(
    ("key", "body", "error"),
    [
        ("raw/turnstile/empty.csv", b"", "raw/turnstile/empty.csv: empty object (0 bytes)"),
        (
            "raw/turnstile/cut.csv.gz",
            gzip.compress(week_csv(50))[:200],
            "raw/turnstile/cut.csv.gz: truncated gzip data: the stream ends early",
        ),
        (
            "raw/turnstile/fake.parquet",
            week_csv(1),
            "raw/turnstile/fake.parquet: not a Parquet file (no PAR1 magic bytes)",
        ),
    ],
    ids=["zero-bytes", "truncated-gzip", "not-parquet"],
)
def test_unreadable_object_fails_alone(fresh: Elt, key: str, body: bytes, error: str) -> None:
    fresh.put("raw/turnstile/0_good.csv", week_csv(2))
    fresh.put(key, body)
    assert load(fresh) == f"raw/turnstile/0_good.csv:loaded:2:0, {key}:failed:0:0"
    # (the two land at once: either may start first)
    outcomes = {k: (status, why) for k, status, why in ledger(fresh, "key", "status", "error")}
    assert outcomes[key] == ("failed", error)
    assert fresh.query("select count(*) from raw.turnstile") == [(2,)]


def test_header_only_file_loads_zero_rows_and_placeholders_are_ignored(fresh: Elt) -> None:
    fresh.put("raw/turnstile/header_only.csv", (HEADER + "\n").encode())
    fresh.put("raw/turnstile/folder/", b"")
    assert load(fresh) == "raw/turnstile/header_only.csv:loaded:0:0"


# --- bad rows ---------------------------------------------------------------


def test_bad_rows_are_quarantined_and_the_rest_loads(fresh: Elt) -> None:
    lines = [ROW.format(i=i, e=1000 + i).encode() for i in range(7)]
    lines[1] += b",surplus"  # line 3: too many columns
    lines[2] = lines[2].rsplit(b",", 1)[0]  # line 4: too few
    lines[3] = lines[3].replace(b"59 ST", b"59 \xff\xfe")  # line 5: invalid UTF-8
    lines[4] = lines[4].replace(b",1004,", b",12x4,")  # line 6: not an integer
    body = HEADER.encode() + b"\n" + b"\n".join(lines) + b"\n"
    fresh.put("raw/turnstile/mixed.csv", body)
    assert load(fresh) == "raw/turnstile/mixed.csv:loaded:3:4"
    assert rejects(fresh) == [
        ("raw/turnstile/mixed.csv", 3, "TOO MANY COLUMNS"),
        ("raw/turnstile/mixed.csv", 4, "MISSING COLUMNS"),
        ("raw/turnstile/mixed.csv", 5, "INVALID ENCODING"),
        ("raw/turnstile/mixed.csv", 6, "CAST ERROR"),
    ]
    # Row numbers are the records' own, not the n-th row kept.
    assert fresh.query("select _source_row_number, entries from raw.turnstile order by 1") == [
        (1, "1000"),
        (6, "1005"),
        (7, "1006"),
    ]
    assert ledger(fresh, "rows_in", "rows_loaded", "rows_rejected") == [(7, 3, 4)]
    (raw_line, message) = fresh.query("select raw_line, message from elt.rejects where line = 3")[0]
    assert (
        raw_line.endswith(",1001,100,surplus")
        and "Expected Number of Columns: 12 Found: 13" in message
    )


def test_unterminated_quote_is_quarantined_with_the_lines_it_swallowed(fresh: Elt) -> None:
    body = week_csv(2) + b'9,A002,R051,"02-00-00,59 ST\n8,A002\n'
    fresh.put("raw/turnstile/quote.csv", body)
    assert load(fresh) == "raw/turnstile/quote.csv:loaded:2:1"
    assert rejects(fresh) == [("raw/turnstile/quote.csv", 4, "UNQUOTED VALUE")]
    assert ledger(fresh, "rows_in") == [(4,)]  # lines after the header: 2 good, 2 in the bad record


def test_a_quoted_field_spanning_two_lines_lands_as_one_row(fresh: Elt) -> None:
    # GIVEN a CSV whose first record's quoted station name holds a line feed
    body = week_csv(3).replace(b",59 ST,", b',"59\nST",', 1)
    fresh.put("raw/turnstile/two_lines.csv", body)
    # WHEN loaded THEN its 4 lines after the header reconcile with 3 rows
    assert load(fresh) == "raw/turnstile/two_lines.csv:loaded:3:0"
    assert ledger(fresh, "rows_in", "rows_loaded") == [(4, 3)]
    assert fresh.query(
        "select _source_row_number, station from raw.turnstile where contains(station, chr(10))"
    ) == [(1, "59\nST")]


def test_rejects_are_exported_next_to_the_marts(fresh: Elt) -> None:
    body = week_csv(2) + b"=cmd|' /C calc'!A0,x\n"
    fresh.put("raw/turnstile/r.csv", body)
    load(fresh)
    exported = fresh.get("marts/_rejects/turnstile.csv").decode().splitlines()
    assert (
        exported[0] == "load_id,key,column_name,value,error_type,message,raw_line,line,rejected_at"
    )
    assert len(exported) == 2
    assert (
        ",MISSING COLUMNS,Expected Number of Columns: 12 Found: 2,\"'=cmd|' /C calc'!A0,x\",4,"
        in exported[1]
    )


# --- exactly once -------------------------------------------------------------


def test_each_object_version_loads_exactly_once(fresh: Elt) -> None:
    fresh.put("raw/turnstile/w.csv", week_csv(2))
    assert load(fresh) == "raw/turnstile/w.csv:loaded:2:0"
    assert load(fresh) == ""
    assert fresh.query("select count(*) from raw.turnstile") == [(2,)]


def test_warehouse_from_before_the_ledger_held_keys_keeps_its_rows(fresh: Elt) -> None:
    # GIVEN a warehouse landed when every row carried its key and ETag
    fresh.put("raw/turnstile/old.csv", week_csv(2))
    load(fresh)
    with duckdb.connect(str(fresh.settings.warehouse_path)) as conn:
        conn.execute("alter table raw.turnstile add column _source_key varchar")
        conn.execute("alter table raw.turnstile add column _source_etag varchar")
        conn.execute("update raw.turnstile set _source_key = 'raw/turnstile/old.csv'")
    # WHEN the next run lands a new object
    fresh.put("raw/turnstile/new.csv", week_csv(3, start=10))
    assert load(fresh) == "raw/turnstile/new.csv:loaded:3:0"
    # THEN the per-row copies are gone, and the ledger gives every row its object
    columns = {c for (c,) in fresh.query("select name from pragma_table_info('raw.turnstile')")}
    assert not columns & {"_source_key", "_source_etag"}
    assert fresh.query(
        "select _source_key, count(*) from " + LANDED + " group by 1 order by 1"
    ) == [("raw/turnstile/new.csv", 3), ("raw/turnstile/old.csv", 2)]


def test_same_bytes_under_another_key_is_a_duplicate(fresh: Elt) -> None:
    fresh.put("raw/turnstile/w.csv", week_csv(2))
    load(fresh)
    fresh.put("raw/turnstile/w_copy.csv", week_csv(2))
    assert load(fresh) == "raw/turnstile/w_copy.csv:duplicate:0:0"
    assert ledger(fresh, "key", "status", "error")[1] == (
        "raw/turnstile/w_copy.csv",
        "duplicate",
        "same bytes as raw/turnstile/w.csv",
    )
    assert fresh.query("select count(*) from raw.turnstile") == [(2,)]


def test_new_version_of_a_key_replaces_its_rows_and_keeps_both_in_the_ledger(fresh: Elt) -> None:
    fresh.put("raw/turnstile/w.csv", week_csv(3, start=1000))
    load(fresh)
    fresh.put("raw/turnstile/w.csv", week_csv(2, start=5000))
    assert load(fresh) == "raw/turnstile/w.csv:loaded:2:0"
    assert fresh.query("select entries from raw.turnstile order by 1") == [("5000",), ("5001",)]
    statuses = ledger(fresh, "status", "rows_loaded", "superseded_by is not null")
    assert statuses == [("superseded", 3, True), ("loaded", 2, False)]


# --- keys ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["it's.csv", "star*.csv", "what?.csv", "[abc].csv", "with space.csv", "ünï.csv"]
)
def test_awkward_keys_load_safely(fresh: Elt, name: str) -> None:
    fresh.put(f"raw/turnstile/{name}", week_csv(2))
    assert load(fresh) == f"raw/turnstile/{name}:loaded:2:0"
    assert fresh.query("select distinct _source_key from " + LANDED) == [(f"raw/turnstile/{name}",)]


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("raw/turnstile/nested/x.csv", "objects must sit directly under raw/turnstile/"),
        ("raw/turnstile/notes.txt", "unsupported file type"),
        ("raw/turnstile/" + "/".join(["k" * 200] * 5) + ".csv", "objects must sit directly under"),
        ("raw/turnstile/" + "k" * 246 + ".csv", None),
    ],
    ids=["nested", "txt", "key-over-1000-bytes", "name-of-250-bytes"],
)
def test_keys_outside_the_pattern_are_refused(fresh: Elt, key: str, reason: str | None) -> None:
    fresh.put(key, week_csv(1))
    if reason is None:  # long, but one level under the prefix: loads
        assert load(fresh) == f"{key}:loaded:1:0"
        return
    assert load(fresh) == f"{key}:refused:0:0"
    (error,) = ledger(fresh, "error")[0]
    assert error == f"{key}: refused: {reason}" or error.startswith(f"{key}: refused: {reason}")


@pytest.mark.unit
def test_key_pattern_from_the_source_yaml_is_enforced() -> None:
    dataset = Dataset("weekly", "src", (), (), key_pattern=r"\d{6}\.csv\.gz")
    assert dataset.refusal("raw/weekly/240106.csv.gz") is None
    assert dataset.refusal("raw/weekly/latest.csv.gz") == (
        "raw/weekly/latest.csv.gz: refused: file name does not match key_pattern '\\\\d{6}\\\\.csv\\\\.gz'"
    )


def test_dot_dot_keys_never_land(elt: Elt) -> None:
    # The local server refuses such a key outright (AWS S3 would store it as is)...
    with pytest.raises(ClientError):
        elt.put("raw/turnstile/../marts/turnstile_daily.csv", week_csv(1))
    # ...and were one listed, the loader refuses it: it does not sit directly under the prefix
    dataset = Dataset("turnstile", "mta", (), ())
    for key in ("raw/turnstile/../marts/x.csv", "raw/turnstile/a/../../y.csv"):
        assert (
            dataset.refusal(key)
            == f"{key}: refused: objects must sit directly under raw/turnstile/"
        )


def test_undeclared_prefix_is_skipped_with_a_warning(fresh: Elt, caplog) -> None:
    fresh.put("raw/unknown_dataset/w.csv", week_csv(2))
    assert load(fresh) == ""
    assert (
        "s3://lake/raw/unknown_dataset/: no dbt source declares this dataset; skipped"
        in caplog.text
    )


@pytest.mark.unit
def test_registry_reads_declared_columns_from_the_source_yaml() -> None:
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
    # What staging converts, and what a row must have: the source contract
    assert [(r.column, r.data_type, r.format, r.not_null, r.names) for r in turnstile.rules] == [
        ("ca", None, None, True, ("ca", "c_a")),
        ("unit", None, None, True, ("unit",)),
        ("scp", None, None, True, ("scp",)),
        ("date", "date", "%m/%d/%Y", True, ("date",)),
        ("time", "time", "%H:%M:%S", True, ("time",)),
        ("entries", "bigint", None, True, ("entries",)),
        ("exits", "bigint", None, True, ("exits",)),
    ]
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


def test_clean_objects_land_as_one_batch_with_their_own_row_numbers(fresh: Elt, caplog) -> None:
    caplog.set_level(logging.INFO, logger="loaders.land")
    for n in range(3):
        fresh.put(f"raw/turnstile/batch_{n}.csv", week_csv(3 + n, day=f"06/0{n + 1}/2024"))
    assert load(fresh) == ", ".join(
        f"raw/turnstile/batch_{n}.csv:loaded:{3 + n}:0" for n in range(3)
    )
    # two workers: one batch of two objects, one of one
    assert "(batch of 2)" in caplog.text and "(batch of 1)" in caplog.text
    assert fresh.query(
        "select _source_key, min(_source_row_number), max(_source_row_number), count(distinct _load_id) "
        "from " + LANDED + " group by 1 order by 1"
    ) == [(f"raw/turnstile/batch_{n}.csv", 1, 3 + n, 1) for n in range(3)]


def test_landing_runs_one_duckdb_thread_per_statement_then_restores_threads(
    fresh: Elt, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN four clean objects, landed by two workers on a 2-thread warehouse
    seen: list[int] = []
    land_batch = land._land_batch

    def spy(conn: duckdb.DuckDBPyConnection, *args: object) -> object:
        seen.append(int(conn.execute("select current_setting('threads')").fetchone()[0]))
        return land_batch(conn, *args)

    monkeypatch.setattr(land, "_land_batch", spy)
    for n in range(4):
        fresh.put(f"raw/turnstile/threads_{n}.csv", week_csv(2, day=f"06/0{n + 1}/2024"))
    settings = fresh.settings
    config = {**settings.duckdb_config(), "threads": "2"}
    lake = s3_mod.connection(settings.lake, settings.home)
    with warehouse.connect(settings.warehouse_path, lake, config=config) as conn:
        results = land.land_all(
            conn, fresh.s3(), "lake", discover(settings.project_dir), settings.home / "tmp"
        )
        after = conn.execute("select current_setting('threads')").fetchone()[0]
    # THEN each batch statement ran with DuckDB on its calling thread alone,
    # and the warehouse's setting is back for what runs next (dbt)
    assert {r.status for r in results} == {"loaded"}
    assert seen == [1, 1]
    assert after == 2


def test_cast_errors_in_a_batch_are_quarantined_and_counted_per_object(fresh: Elt, caplog) -> None:
    caplog.set_level(logging.INFO, logger="loaders.land")
    # GIVEN three CSVs (a batch of cast_0 and cast_2, one of cast_1), two with
    # entries that are not integers
    fresh.put(
        "raw/turnstile/cast_0.csv",
        week_csv(3, day="08/01/2024").replace(b",1001,100", b",1OO1,100"),
    )
    # padded with spaces: staging trims, so " 1000 " is an integer and " ? " is not
    fresh.put(
        "raw/turnstile/cast_1.csv",
        week_csv(3, day="08/02/2024").replace(b",1000,100", b", 1000 ,100"),
    )
    fresh.put(
        "raw/turnstile/cast_2.csv",
        week_csv(3, day="08/03/2024").replace(b",1000,100", b",x,100").replace(b",1002,", b", ? ,"),
    )
    # WHEN they land THEN each object's own rows are refused, with its own line numbers
    assert load(fresh) == ", ".join(
        [
            "raw/turnstile/cast_0.csv:loaded:2:1",
            "raw/turnstile/cast_1.csv:loaded:3:0",
            "raw/turnstile/cast_2.csv:loaded:1:2",
        ]
    )
    # both batches landed as batches: the held-back rows were quarantined in them
    assert "cast_0.csv: 2 rows, 1 rejected (batch of 2)" in caplog.text
    assert "cast_2.csv: 1 rows, 2 rejected (batch of 2)" in caplog.text
    assert "cast_1.csv: 3 rows, 0 rejected (batch of 1)" in caplog.text
    assert "one by one" not in caplog.text
    assert rejects(fresh) == [
        ("raw/turnstile/cast_0.csv", 3, "CAST ERROR"),
        ("raw/turnstile/cast_2.csv", 2, "CAST ERROR"),
        ("raw/turnstile/cast_2.csv", 4, "CAST ERROR"),
    ]
    # (sorted by key: the two workers start their objects' loads in either order)
    assert sorted(ledger(fresh, "key", "rows_in", "rows_loaded", "rows_rejected")) == [
        ("raw/turnstile/cast_0.csv", 3, 2, 1),
        ("raw/turnstile/cast_1.csv", 3, 3, 0),
        ("raw/turnstile/cast_2.csv", 3, 1, 2),
    ]
    assert fresh.query(
        "select _source_key, list(_source_row_number order by _source_row_number) "
        "from " + LANDED + " group by 1 order by 1"
    ) == [
        ("raw/turnstile/cast_0.csv", [1, 3]),
        ("raw/turnstile/cast_1.csv", [1, 2, 3]),
        ("raw/turnstile/cast_2.csv", [2]),
    ]


def test_every_landed_row_carries_its_loads_start_as_loaded_at(fresh: Elt, caplog) -> None:
    # The loader finds the rows it just landed by _load_id bounded by
    # _loaded_at >= the loads' started_at, so its scans skip the history's
    # row groups: that bound is only safe while every row's _loaded_at is its
    # load's started_at in the ledger, on the batch path and the one-object one.
    caplog.set_level(logging.INFO, logger="loaders.land")
    # GIVEN a load already in the warehouse
    fresh.put("raw/turnstile/earlier.csv", week_csv(3, day="09/01/2024"))
    assert load(fresh) == "raw/turnstile/earlier.csv:loaded:3:0"
    # WHEN a later run lands a clean object, one with a value the contract
    # refuses (quarantined inside its batch) and one with a quote (one-object path)
    fresh.put("raw/turnstile/later_a.csv", week_csv(3, day="09/02/2024"))
    fresh.put(
        "raw/turnstile/later_b.csv",
        week_csv(3, day="09/03/2024").replace(b",1001,100", b",x,100"),
    )
    fresh.put(
        "raw/turnstile/later_c.csv",
        week_csv(3, day="09/04/2024").replace(b"59 ST", b'"59 ST"'),
    )
    assert load(fresh) == ", ".join(
        [
            "raw/turnstile/later_a.csv:loaded:3:0",
            "raw/turnstile/later_b.csv:loaded:2:1",
            "raw/turnstile/later_c.csv:loaded:3:0",
        ]
    )
    assert "(batch of 1)" in caplog.text and "later_c.csv: 3 rows, 0 rejected, in" in caplog.text
    # THEN every row's _loaded_at is its load's start, the refused value is
    # quarantined, and the earlier load's rows are all still there
    assert fresh.query(
        "select count(*), count(*) filter (where landed._loaded_at = ledger.started_at) "
        "from raw.turnstile as landed inner join elt.ledger as ledger "
        "on landed._load_id = ledger.load_id"
    ) == [(11, 11)]
    assert rejects(fresh) == [("raw/turnstile/later_b.csv", 3, "CAST ERROR")]
    assert fresh.query(
        "select _source_key, count(*) from " + LANDED + " group by 1 order by 1"
    ) == [
        ("raw/turnstile/earlier.csv", 3),
        ("raw/turnstile/later_a.csv", 3),
        ("raw/turnstile/later_b.csv", 2),
        ("raw/turnstile/later_c.csv", 3),
    ]


def test_a_batch_meeting_a_bad_row_lands_its_objects_one_by_one(fresh: Elt, caplog) -> None:
    caplog.set_level(logging.INFO, logger="loaders.land")
    fresh.put("raw/turnstile/clean_1.csv", week_csv(2, day="07/01/2024"))
    fresh.put("raw/turnstile/clean_2.csv", week_csv(2, day="07/02/2024"))
    fresh.put(
        "raw/turnstile/ragged.csv",
        week_csv(3, day="07/03/2024").replace(b"1001,100\n", b"1001,100,x\n"),
    )
    assert load(fresh) == ", ".join(
        [
            "raw/turnstile/clean_1.csv:loaded:2:0",
            "raw/turnstile/clean_2.csv:loaded:2:0",
            "raw/turnstile/ragged.csv:loaded:2:1",
        ]
    )
    # clean_1 and ragged share a batch (workers take every other object): it falls back
    assert "batch of 2 objects: 1 rejected row(s); landing them one by one" in caplog.text
    assert fresh.query("select count(*), count(distinct _load_id) from raw.turnstile") == [(6, 3)]
    assert fresh.query("select count(*), count(distinct key) from elt.ledger") == [(3, 3)]


# --- hostile encodings and volumes --------------------------------------------


def test_latin_1_file_loads_its_ascii_rows_and_names_each_bad_line(fresh: Elt) -> None:
    # GIVEN a file saved as latin-1: two rows name a station with an accent
    text = week_csv(4).decode().replace(",59 ST,", ",MÜNCHEN ST,", 2)
    fresh.put("raw/turnstile/latin1.csv", text.encode("latin-1"))
    # WHEN loaded THEN the UTF-8-valid rows load, each other line is quarantined with its number
    assert load(fresh) == "raw/turnstile/latin1.csv:loaded:2:2"
    assert rejects(fresh) == [
        ("raw/turnstile/latin1.csv", 2, "INVALID ENCODING"),
        ("raw/turnstile/latin1.csv", 3, "INVALID ENCODING"),
    ]


def test_byte_order_mark_and_crlf_endings_land_like_plain_lf(fresh: Elt) -> None:
    plain = week_csv(3)
    fresh.put("raw/turnstile/lf.csv", plain)
    fresh.put("raw/turnstile/bom_crlf.csv", b"\xef\xbb\xbf" + plain.replace(b"\n", b"\r\n"))
    assert load(fresh) == "raw/turnstile/bom_crlf.csv:loaded:3:0, raw/turnstile/lf.csv:loaded:3:0"
    by_key = fresh.query(
        "select _source_key, list(ca || '|' || exits || '|' || time order by _source_row_number) "
        "from " + LANDED + " group by 1 order by 1"
    )
    assert (
        by_key[0][1]
        == by_key[1][1]
        == [
            "A002|100|00:00:00",
            "A002|100|01:00:00",
            "A002|100|02:00:00",
        ]
    )


def test_header_with_jinja_and_sql_is_data_not_code(fresh: Elt) -> None:
    # GIVEN extra columns whose names are Jinja and SQL
    body = week_csv(1).replace(
        b"EXITS\n", b"EXITS,{{ run_query('drop schema raw cascade') }},\"1); select 1; --\"\n"
    )
    fresh.put("raw/turnstile/jinja.csv", body.replace(b"100\n", b"100,j,s\n"))
    # WHEN loaded (and dbt builds over the table) THEN they are plain, normalised columns
    assert load(fresh) == "raw/turnstile/jinja.csv:loaded:1:0"
    assert fresh.query(
        'select run_query_drop_schema_raw_cascade, "1_select_1" from raw.turnstile'
    ) == [("j", "s")]
    fresh.run("run")
    assert fresh.query("select count(*) from raw.turnstile") == [(1,)]


@pytest.mark.unit
def test_load_ids_made_in_the_same_second_do_not_collide() -> None:
    # GIVEN a backfill: thousands of object versions get a load id in one go
    ids = [land.new_load_id() for _ in range(10_000)]
    # THEN no two share one (with 24 random bits per second, 10,000 would, almost surely)
    assert len(set(ids)) == len(ids)
    # AND each still starts with the second it was made in, so ids sort by time
    assert all(re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{16}", i) for i in ids), ids[0]


@pytest.mark.unit
def test_a_commit_that_fails_is_reported_as_itself_not_as_a_rollback() -> None:
    # GIVEN two cursors landing at once, both with a ledger row of the same key
    conn = duckdb.connect()
    conn.execute("create table ledger (load_id varchar primary key)")
    first, second = conn.cursor(), conn.cursor()
    for cursor in (first, second):
        cursor.execute("begin transaction")
        cursor.execute("insert into ledger values ('20240113T120000Z-3fa2c1')")
    first.execute("commit")
    # WHEN the second commit fails, which ends its transaction
    with pytest.raises(duckdb.TransactionException, match="duplicate key") as failed:
        try:
            second.execute("commit")
        except duckdb.Error:
            # THEN rolling back, as every loader path does before re-raising, is quiet
            warehouse.roll_back(second)
            raise
    assert "rollback" not in str(failed.value)
    # AND a rollback of a transaction that is open still rolls it back
    second.execute("begin transaction")
    second.execute("insert into ledger values ('another')")
    warehouse.roll_back(second)
    assert conn.execute("select load_id from ledger").fetchall() == [("20240113T120000Z-3fa2c1",)]


def test_more_than_1000_objects_in_one_prefix_all_land(fresh: Elt) -> None:
    # GIVEN 1,005 objects (S3 lists 1,000 per page)
    client = fresh.s3()
    for i in range(1005):
        client.put_object(
            Bucket="lake", Key=f"raw/turnstile/many_{i:04d}.csv", Body=week_csv(1, start=i)
        )
    # WHEN loaded THEN every one lands once
    results = pipeline.load(fresh.settings, client)
    assert len(results) == 1005 and {r.status for r in results} == {"loaded"}
    assert fresh.query("select count(*), count(distinct _source_key) from " + LANDED) == [
        (1005, 1005)
    ]
