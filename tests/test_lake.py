"""Raw data in the open: each object version landed is also Parquet in the bucket, with a ledger.

A reader of the lake (here DuckDB over S3, as Spark, Athena or Trino would)
takes ``lake/elt/ledger/ledger.parquet`` and reads the files of the loads it
lists as ``loaded``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import duckdb
import pytest

from loaders import lake, pipeline, warehouse
from loaders import s3 as s3_mod
from loaders.config import load_settings
from tests.conftest import PROJECT, SAMPLE_WEEKS, Elt, week_csv


@pytest.fixture()
def fresh(elt: Elt) -> Elt:
    elt.reset()
    return elt


def land(elt: Elt) -> lake.Synced | None:
    """The load step with the lake on (``ELT_LAKE=true``), as ``elt run`` runs it."""
    settings = load_settings("dev", env=elt.env(ELT_LAKE="true"))
    return pipeline.land(settings, elt.s3()).synced


@contextmanager
def reader(elt: Elt) -> Iterator[duckdb.DuckDBPyConnection]:
    """DuckDB reading the bucket over S3, with the warehouse attached read-only as ``w``."""
    settings = elt.settings
    with duckdb.connect() as conn:
        warehouse.configure(conn, s3_mod.connection(settings.lake, elt.home))
        conn.execute(f"attach '{settings.warehouse_path}' as w (read_only)")
        yield conn


def ledger(conn: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    rows = conn.execute(
        f"select * from read_parquet('s3://lake/{lake.LEDGER_KEY}') order by loaded_at"
    )
    names = [d[0] for d in rows.description]
    return [dict(zip(names, row, strict=True)) for row in rows.fetchall()]


def lake_rows(conn: duckdb.DuckDBPyConnection, columns: str = "*") -> list[tuple[Any, ...]]:
    """The turnstile rows the lake holds, read as its ledger says, in a stable order."""
    keys = [f"s3://lake/{r['lake_key']}" for r in ledger(conn) if r["status"] == "loaded"]
    if not keys:
        return []
    return conn.execute(
        f"select {columns} from read_parquet(?, hive_partitioning = true, "
        "union_by_name = true) order by _load_id, _source_row_number",
        [keys],
    ).fetchall()


def heads(elt: Elt, prefix: str) -> dict[str, tuple[str, Any]]:
    listing = elt.s3().list_objects_v2(Bucket="lake", Prefix=prefix)
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listing.get("Contents", [])}


def test_each_object_version_is_its_warehouse_rows_in_the_lake(fresh: Elt) -> None:
    # GIVEN the real weeks and a file with a bad row
    for week in SAMPLE_WEEKS:
        fresh.s3().upload_file(str(week), "lake", f"raw/turnstile/{week.name}")
    bad = week_csv(3, day="01/20/2024").replace(b",1001,100\n", b",oops,100\n")
    fresh.put("raw/turnstile/240120_bad.csv", bad)
    # WHEN they land with the lake on
    synced = land(fresh)
    # THEN each loaded version is one file under its load date, listed by the ledger
    assert synced is not None and synced.ledger and not synced.deleted
    with reader(fresh) as conn:
        listed = ledger(conn)
        assert sorted(r["key"] for r in listed) == sorted(
            [f"raw/turnstile/{w.name}" for w in SAMPLE_WEEKS] + ["raw/turnstile/240120_bad.csv"]
        )
        assert {r["status"] for r in listed} == {"loaded"}
        assert sorted(r["lake_key"] for r in listed) == sorted(synced.written)
        for row in listed:
            assert row["lake_key"] == (
                f"lake/raw/turnstile/load_date={row['loaded_at']:%Y-%m-%d}/{row['load_id']}.parquet"
            )
            # AND a file's rows are its load's rows in the warehouse: count and content
            (count,) = conn.execute(
                f"select count(*) from read_parquet('s3://lake/{row['lake_key']}')"
            ).fetchone()
            assert count == row["rows_loaded"] > 0
        (different,) = conn.execute(
            "select count(*) from ((select * from w.raw.turnstile except all "
            "select * from read_parquet(?, hive_partitioning = false)) union all "
            "(select * from read_parquet(?, hive_partitioning = false) "
            "except all select * from w.raw.turnstile))",
            [[f"s3://lake/{r['lake_key']}" for r in listed]] * 2,
        ).fetchone()
        assert different == 0
        # (the quarantined row is in neither)
        assert len(lake_rows(conn)) == 503838 + 2
        assert [r["rows_loaded"] for r in listed if "bad" in r["key"]] == [2]
        # AND the project's seed is in the lake: the CSV's header and cells, as text
        assert synced.seeds == [lake.seed_key("remote_booth_station")]
        seed = PROJECT / "seeds" / "remote_booth_station.csv"
        with seed.open(newline="", encoding="utf-8-sig") as f:  # it starts with a BOM
            header, *cells = [tuple(row) for row in csv.reader(f)]
        result = conn.execute(f"select * from read_parquet('s3://lake/{synced.seeds[0]}')")
        assert tuple(c[0] for c in result.description) == header
        rows = [tuple("" if v is None else v for v in row) for row in result.fetchall()]
        assert sorted(rows) == sorted(cells) and len(rows) > 700


def test_a_rerun_writes_nothing_to_the_lake(fresh: Elt) -> None:
    fresh.put("raw/turnstile/jan.csv", week_csv(3, day="01/10/2024"))
    land(fresh)
    before = heads(fresh, "lake/")
    # WHEN the load step runs again with nothing new
    synced = land(fresh)
    # THEN no object of the lake is written or deleted
    assert synced is not None
    assert (synced.written, synced.deleted, synced.seeds, synced.ledger) == ([], [], [], False)
    assert heads(fresh, "lake/") == before


def test_a_new_version_of_a_key_replaces_its_rows_in_the_lake(fresh: Elt) -> None:
    # GIVEN a key landed
    fresh.put("raw/turnstile/jan.csv", week_csv(3, day="01/10/2024", start=100))
    first = land(fresh)
    assert first is not None
    (old_file,) = first.written
    # WHEN a new version of it lands
    fresh.put("raw/turnstile/jan.csv", week_csv(2, day="01/11/2024", start=500))
    second = land(fresh)
    # THEN its file replaces the old one, after a ledger naming the old load superseded
    assert second is not None and second.deleted == [old_file] and second.ledger
    assert old_file not in heads(fresh, "lake/")
    with reader(fresh) as conn:
        assert [(r["status"], r["rows_loaded"]) for r in ledger(conn)] == [
            ("superseded", 3),
            ("loaded", 2),
        ]
        rows = lake_rows(conn, '"date", entries')
    assert rows == [("01/11/2024", "500"), ("01/11/2024", "501")]


@pytest.mark.faults
def test_kill_9_during_a_lake_write_leaves_the_ledger_naming_only_whole_files(fresh: Elt) -> None:
    # GIVEN January landed and in the lake
    fresh.put("raw/turnstile/jan.csv", week_csv(3, day="01/10/2024", start=100))
    land(fresh)
    with reader(fresh) as conn:
        before = lake_rows(conn)
    # WHEN February's run is killed just after its lake file is written, before the ledger
    fresh.put("raw/turnstile/feb.csv", week_csv(3, day="02/10/2024", start=200))
    killed = fresh.run("run", check=False, ELT_KILL_AT="lake", ELT_LAKE="true")
    assert killed.returncode == -9
    # THEN a reader of the ledger still sees January alone, whole
    written = [k for k in heads(fresh, "lake/raw/") if k.endswith(".parquet")]
    assert len(written) == 2  # February's file is there, but no ledger names it
    with reader(fresh) as conn:
        assert lake_rows(conn) == before
    # AND the next run lists February, its file written once
    files = heads(fresh, "lake/raw/")
    fresh.run("run", ELT_LAKE="true")
    assert heads(fresh, "lake/raw/") == files
    with reader(fresh) as conn:
        assert [r["status"] for r in ledger(conn)] == ["loaded", "loaded"]
        assert len(lake_rows(conn)) == 6
        (different,) = conn.execute(
            "select count(*) from (select * from read_parquet(?, "
            "hive_partitioning = false) except all select * from w.raw.turnstile)",
            [[f"s3://lake/{k}" for k in written]],
        ).fetchone()
    assert different == 0
