"""Partitioned publish: a run rewrites the parts its rows changed, the manifest is the entry point.

``turnstile_daily`` and ``station_daily`` are published by month
(``meta.partition_by``), each as ``marts/<model>/<partition>.csv`` with
``marts/<model>/_manifest.json`` and the whole file ``marts/<model>.csv``.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from loaders import compose, partitions
from tests.conftest import Elt, project_copy, week_csv


@pytest.fixture()
def fresh(elt: Elt) -> Elt:
    elt.reset()
    return elt


def manifest(elt: Elt, model: str = "turnstile_daily") -> dict:
    return json.loads(elt.get(f"marts/{model}/_manifest.json"))


def heads(elt: Elt, prefix: str) -> dict[str, tuple[str, object]]:
    """Key -> (ETag, LastModified) of every object under ``prefix``."""
    listing = elt.s3().list_objects_v2(Bucket="lake", Prefix=prefix)
    return {o["Key"]: (o["ETag"].strip('"'), o["LastModified"]) for o in listing["Contents"]}


def receipt_keys(proc_stdout: str, elt: Elt) -> set[str]:
    run_id = proc_stdout.split()[1].rstrip(":")
    receipt = json.loads(elt.get(f"marts/_runs/{run_id}.json"))
    return {e["key"] for e in receipt["exports"]}


def test_a_run_rewrites_only_the_parts_its_rows_changed(fresh: Elt) -> None:
    # GIVEN January and February published
    fresh.put("raw/turnstile/jan.csv", week_csv(3, day="01/10/2024", start=100))
    fresh.put("raw/turnstile/feb.csv", week_csv(3, day="02/10/2024", start=200))
    first = fresh.run("run")
    before = heads(fresh, "marts/turnstile_daily/")
    assert set(before) == {
        "marts/turnstile_daily/2024-01.csv",
        "marts/turnstile_daily/2024-02.csv",
        "marts/turnstile_daily/_manifest.json",
    }
    # WHEN a day of February arrives
    fresh.put("raw/turnstile/feb_more.csv", week_csv(3, day="02/11/2024", start=300))
    second = fresh.run("run")
    # THEN only February's part, the whole file and the manifest are written
    assert receipt_keys(second.stdout, fresh) == {
        "marts/turnstile_daily/2024-02.csv",
        "marts/turnstile_daily.csv",
        "marts/turnstile_daily/_manifest.json",
        "marts/station_daily/2024-02.csv",
        "marts/station_daily.csv",
        "marts/station_daily/_manifest.json",
    }
    after = heads(fresh, "marts/turnstile_daily/")
    assert after["marts/turnstile_daily/2024-01.csv"] == before["marts/turnstile_daily/2024-01.csv"]
    assert after["marts/turnstile_daily/2024-02.csv"] != before["marts/turnstile_daily/2024-02.csv"]
    # AND the manifest lists each live part as it is, and who wrote it
    listed = manifest(fresh)
    first_run = first.stdout.split()[1].rstrip(":")
    second_run = second.stdout.split()[1].rstrip(":")
    assert listed["run_id"] == second_run
    assert [
        (p["partition"], p["rows"], p["first"], p["last"], p["run_id"]) for p in listed["parts"]
    ] == [
        ("2024-01", 1, "2024-01-10", "2024-01-10", first_run),
        ("2024-02", 2, "2024-02-10", "2024-02-11", second_run),
    ]
    for part in listed["parts"]:
        body = fresh.get(part["key"])
        assert (part["etag"], part["bytes"]) == (after[part["key"]][0], len(body))
        assert body.count(b"\n") == part["rows"] + 1
    # AND the whole file is the parts end to end, one header
    parts = [fresh.get(p["key"]) for p in listed["parts"]]
    header, _, january = parts[0].partition(b"\n")
    assert fresh.download_mart("turnstile_daily") == parts[0] + parts[1].partition(b"\n")[2]
    assert listed["whole"]["bytes"] == len(fresh.get("marts/turnstile_daily.csv"))
    assert header.startswith(b"turnstile_id,") and january.count(b"\n") == 1


def test_a_full_refresh_writes_no_part_whose_bytes_did_not_change(fresh: Elt) -> None:
    fresh.put("raw/turnstile/jan.csv", week_csv(3, day="01/10/2024", start=100))
    fresh.put("raw/turnstile/feb.csv", week_csv(3, day="02/10/2024", start=200))
    fresh.run("run")
    before = heads(fresh, "marts/turnstile_daily/")
    # WHEN every model is rebuilt from all history
    proc = fresh.run("run", "--full-refresh")
    # THEN the parts are untouched (same bytes, same objects), only the manifests are new
    after = heads(fresh, "marts/turnstile_daily/")
    assert {k: v for k, v in after.items() if k.endswith(".csv")} == {
        k: v for k, v in before.items() if k.endswith(".csv")
    }
    assert receipt_keys(proc.stdout, fresh) == {
        "marts/turnstile_daily/_manifest.json",
        "marts/station_daily/_manifest.json",
    }


def test_a_partition_left_without_rows_is_deleted_after_the_new_manifest(fresh: Elt) -> None:
    # GIVEN March published from one object
    fresh.put("raw/turnstile/spring.csv", week_csv(3, day="03/10/2024", start=100))
    fresh.run("run")
    assert "marts/turnstile_daily/2024-03.csv" in heads(fresh, "marts/turnstile_daily/")
    # WHEN a new version of that object holds April instead
    fresh.put("raw/turnstile/spring.csv", week_csv(3, day="04/10/2024", start=100))
    fresh.run("run")
    # THEN the manifest lists April alone, and March's part is gone from the bucket
    assert [p["partition"] for p in manifest(fresh)["parts"]] == ["2024-04"]
    assert set(heads(fresh, "marts/turnstile_daily/")) == {
        "marts/turnstile_daily/2024-04.csv",
        "marts/turnstile_daily/_manifest.json",
    }
    assert b",2024-03-10," not in fresh.get("marts/turnstile_daily.csv")


def test_a_failing_test_publishes_no_part_and_keeps_the_manifest(
    fresh: Elt, tmp_path: Path
) -> None:
    fresh.put("raw/turnstile/jan.csv", week_csv(3, day="01/10/2024", start=100))
    fresh.run("run")
    before = heads(fresh, "marts/")
    # GIVEN a project with a failing test on turnstile_daily WHEN February arrives
    copy = project_copy(tmp_path / "project")
    (copy / "tests" / "dbt" / "assert_always_fails.sql").write_text(
        "select * from {{ ref('turnstile_daily') }} where entries >= 0\n"
    )
    fresh.put("raw/turnstile/feb.csv", week_csv(3, day="02/10/2024", start=200))
    proc = fresh.run("run", check=False, ELT_PROJECT_DIR=str(copy))
    # THEN no part, whole file or manifest of either mart changes
    assert proc.returncode == 1
    after = heads(fresh, "marts/")
    assert {
        k: v for k, v in after.items() if not k.startswith(("marts/_runs/", "marts/_rejects/"))
    } == {k: v for k, v in before.items() if not k.startswith(("marts/_runs/", "marts/_rejects/"))}


def test_a_reader_of_an_older_manifest_is_refused_a_newer_part(fresh: Elt) -> None:
    # GIVEN a reader holding the manifest of one run
    fresh.put("raw/turnstile/jan.csv", week_csv(3, day="01/10/2024", start=100))
    fresh.run("run")
    old = manifest(fresh)
    # WHEN a later run rewrites that part
    fresh.put("raw/turnstile/jan_more.csv", week_csv(3, day="01/11/2024", start=200))
    fresh.run("run")
    # THEN reading the part with the old manifest's ETag fails: read the manifest again
    (part,) = old["parts"]
    with pytest.raises(ClientError) as refused:
        fresh.s3().get_object(Bucket="lake", Key=part["key"], IfMatch=part["etag"])
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    (current,) = manifest(fresh)["parts"]
    body = fresh.s3().get_object(Bucket="lake", Key=current["key"], IfMatch=current["etag"])
    assert body["Body"].read().count(b"\n") == current["rows"] + 1


def test_url_prints_the_whole_file_and_the_manifest(fresh: Elt) -> None:
    fresh.put("raw/turnstile/jan.csv", week_csv(3, day="01/10/2024", start=100))
    fresh.run("run")
    whole, manifest_link = fresh.run("url", "turnstile_daily").stdout.splitlines()
    with urllib.request.urlopen(whole, timeout=30) as response:
        assert response.read() == fresh.get("marts/turnstile_daily.csv")
    with urllib.request.urlopen(manifest_link, timeout=30) as response:
        assert json.loads(response.read())["model"] == "turnstile_daily"


@pytest.mark.parametrize(
    ("sizes_mib", "uploaded_parts"),
    [([6, 7, 5.5], 3), ([1, 6, 0.5, 0.5, 7], 3), ([6, 1, 1, 1, 1, 1, 1, 2], 3)],
    ids=["all-copied", "small-between-large", "many-small"],
)
def test_an_object_is_composed_from_ranges_of_others_on_the_server(
    fresh: Elt, sizes_mib: list[float], uploaded_parts: int
) -> None:
    # GIVEN parts of several sizes published (each with the same header line)
    client = fresh.s3()
    header = b"a,b\n"
    segments = []
    for i, mib in enumerate(sizes_mib):
        rows = os.urandom(int(mib * 2**20) // 2).hex().encode()
        body = header + b"\n".join(rows[j : j + 63] for j in range(0, len(rows), 63)) + b"\n"
        key = f"marts/composed/{i:02d}.csv"
        etag = client.put_object(Bucket="lake", Key=key, Body=body)["ETag"].strip('"')
        segments.append(compose.Segment(0 if i == 0 else len(header), len(body), key, etag))
    # WHEN composed: the first part whole, the others' rows
    whole, sent = compose.compose(client, "lake", "marts/composed.csv", segments, "text/csv")
    # THEN it is the parts end to end with one header, and what could be copied was
    expected = b"".join(fresh.get(str(s.key))[s.start :] for s in segments)
    assert fresh.get("marts/composed.csv") == expected
    assert whole.size == len(expected)
    # (each multipart part at least 5 MiB but the last: large parts copied as
    # they are, small ones merged; the ETag counts the parts)
    assert whole.etag.endswith(f"-{uploaded_parts}")
    # (bytes sent: the small parts, and at most 5 MiB of a large one to top them
    # up, plus its rest when under 5 MiB; the server copies the rest)
    large = [s.size for s in segments if s.size >= compose.MIN_PART_BYTES]
    small = sum(s.size for s in segments) - sum(large)
    assert small <= sent <= small + 2 * compose.MIN_PART_BYTES * len(large)
    assert sent < sum(s.size for s in segments)
    assert whole.etag == client.head_object(Bucket="lake", Key="marts/composed.csv")["ETag"].strip(
        '"'
    )


def candidate(folder: Path, days: dict[str, int], columns: str = "day,n") -> Path:
    """A partitioned mart's candidate folder as the post-hook writes it: one month, ``days``.

    Each day (``2024-01-05``) gets that many rows of about 64 bytes; the
    month part is ``2024-01.csv``, ordered by day.
    """
    folder.mkdir(parents=True, exist_ok=True)
    header = f"{columns}\n".encode()
    rows = b"".join(
        f"{day},{i:060d}\n".encode() for day, count in sorted(days.items()) for i in range(count)
    )
    (folder / "_header.csv").write_bytes(header)
    (folder / "2024-01.csv").write_bytes(header + rows)
    first, last = min(days), max(days)
    (folder / "_parts.json").write_text(
        json.dumps(
            {"partition": "2024-01", "rows": sum(days.values()), "first": first, "last": last}
        )
    )
    (folder / "_state.json").write_text(
        json.dumps(
            {
                "live": ["2024-01"],
                "refreshed_through": f"{last} 00:00:00+00",
                "partition_by": "day",
                "granularity": "month",
                "columns": columns.split(","),
            }
        )
    )
    return folder


def test_a_part_that_gains_days_sends_only_them_and_the_whole_file_is_copied(
    fresh: Elt, tmp_path: Path
) -> None:
    # GIVEN a month part of about 8 MiB published (and the whole file made of it)
    client = fresh.s3()
    week = {f"2024-01-{d:02d}": 18_000 for d in range(1, 8)}
    partitions.publish_partitions(client, "lake", candidate(tmp_path / "a", week), "m", "r1")
    first = manifest(fresh, "m")
    # WHEN the next week's days are added to the month
    more = {**week, **{f"2024-01-{d:02d}": 18_000 for d in range(8, 11)}}
    folder = candidate(tmp_path / "b", more)
    expected = (folder / "2024-01.csv").read_bytes()
    written, sent = partitions.publish_partitions(client, "lake", folder, "m", "r2")
    # THEN the part and the whole file hold the new bytes
    assert fresh.get("marts/m/2024-01.csv") == expected
    assert fresh.get("marts/m.csv") == expected
    # AND what was sent is the new days' rows (plus less than a block of the
    # part's shared head) and the manifest: the rest was copied by the server
    new_rows = len(expected) - first["parts"][0]["bytes"]
    manifest_bytes = len(fresh.get("marts/m/_manifest.json"))
    assert new_rows < sent <= new_rows + compose.BLOCK_BYTES + manifest_bytes
    assert [info.key for info, _ in written] == [
        "marts/m/2024-01.csv",
        "marts/m.csv",
        "marts/m/_manifest.json",
    ]
    # AND the manifest lists the part's new version with its blocks
    (part,) = manifest(fresh, "m")["parts"]
    assert (part["run_id"], part["rows"], part["last"]) == ("r2", 180_000, "2024-01-10")
    (tmp_path / "expected.csv").write_bytes(expected)
    assert part["blocks"] == compose.block_digests(tmp_path / "expected.csv")


def test_other_columns_publish_every_byte_again(fresh: Elt, tmp_path: Path) -> None:
    # GIVEN a month published
    client = fresh.s3()
    week = {f"2024-01-{d:02d}": 18_000 for d in range(1, 8)}
    partitions.publish_partitions(client, "lake", candidate(tmp_path / "a", week), "m", "r1")
    # WHEN the mart's columns change (same rows, another header)
    folder = candidate(tmp_path / "b", week, columns="day,count")
    expected = (folder / "2024-01.csv").read_bytes()
    _, sent = partitions.publish_partitions(client, "lake", folder, "m", "r2")
    # THEN nothing of the old bytes is reused: the part is sent whole, the whole file is new
    assert sent >= len(expected)
    assert fresh.get("marts/m/2024-01.csv") == expected
    assert fresh.get("marts/m.csv") == expected
    assert manifest(fresh, "m")["columns"] == ["day", "count"]


def test_a_mart_can_be_published_by_year_or_by_day(fresh: Elt, tmp_path: Path) -> None:
    # GIVEN turnstile_daily published by day and station_daily by year
    copy = project_copy(tmp_path / "project")
    models = copy / "models" / "marts" / "ridership" / "_ridership__models.yml"
    text = models.read_text()
    at = text.index("  - name: station_daily")
    models.write_text(
        text[:at].replace("granularity: month", "granularity: day", 1)
        + text[at:].replace("granularity: month", "granularity: year", 1)
    )
    fresh.put("raw/turnstile/jan.csv", week_csv(3, day="01/10/2024", start=100))
    fresh.put("raw/turnstile/feb.csv", week_csv(3, day="02/10/2024", start=200))
    fresh.run("run", ELT_PROJECT_DIR=str(copy))
    # WHEN a day arrives
    fresh.put("raw/turnstile/feb_more.csv", week_csv(3, day="02/11/2024", start=300))
    fresh.run("run", ELT_PROJECT_DIR=str(copy))
    # THEN each mart's parts are one per day (or year), listed with their dates
    days = ["2024-01-10", "2024-02-10", "2024-02-11"]
    for model, granularity, parts in (
        ("turnstile_daily", "day", days),
        ("station_daily", "year", ["2024"]),
    ):
        listed = manifest(fresh, model)
        assert listed["granularity"] == granularity
        assert [p["partition"] for p in listed["parts"]] == parts
        assert set(heads(fresh, f"marts/{model}/")) == {
            *(f"marts/{model}/{p}.csv" for p in parts),
            f"marts/{model}/_manifest.json",
        }
    # AND the whole files hold every day, in date order
    for model, column in (("turnstile_daily", 7), ("station_daily", 2)):
        whole = fresh.get(f"marts/{model}.csv").decode().splitlines()
        assert [line.split(",")[column] for line in whole[1:]] == days
