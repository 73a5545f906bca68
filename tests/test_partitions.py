"""Partitioned publish: a run rewrites the parts its rows changed, the manifest is the entry point.

``turnstile_daily`` is published by month, ``station_daily`` by year
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

from loaders import partitions
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
        "marts/station_daily/2024.csv",
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
def test_the_whole_file_is_composed_from_the_parts_on_the_server(
    fresh: Elt, tmp_path: Path, sizes_mib: list[float], uploaded_parts: int
) -> None:
    # GIVEN parts of several sizes published (each with the same header line)
    client = fresh.s3()
    header = b"a,b\n"
    parts = []
    for i, mib in enumerate(sizes_mib):
        rows = os.urandom(int(mib * 2**20) // 2).hex().encode()
        body = header + b"\n".join(rows[j : j + 63] for j in range(0, len(rows), 63)) + b"\n"
        key = f"marts/composed/{i:02d}.csv"
        etag = client.put_object(Bucket="lake", Key=key, Body=body)["ETag"].strip('"')
        parts.append(
            partitions.Part(f"{i:02d}", key, etag, 0, len(body), len(header), None, None, "r", "")
        )
    # WHEN composed
    whole, sent = partitions.compose(client, "lake", "marts/composed.csv", parts, header, tmp_path)
    # THEN it is the parts end to end with one header, and what could be copied was
    expected = b"".join(
        fresh.get(p.key)[0 if i == 0 else len(header) :] for i, p in enumerate(parts)
    )
    assert fresh.get("marts/composed.csv") == expected
    assert whole.size == len(expected)
    # (each multipart part at least 5 MiB but the last: large parts copied as
    # they are, small ones merged; the ETag counts the parts)
    assert whole.etag.endswith(f"-{uploaded_parts}")
    # (bytes sent: the small parts, and at most 5 MiB of a large one to top them
    # up, plus its rest when under 5 MiB; the server copies the rest)
    ranges = [p.bytes - (0 if i == 0 else len(header)) for i, p in enumerate(parts)]
    large = [r for r in ranges if r >= partitions.MIN_PART_BYTES]
    small = sum(ranges) - sum(large)
    assert small <= sent <= small + 2 * partitions.MIN_PART_BYTES * len(large)
    assert sent < sum(ranges)
    assert whole.etag == client.head_object(Bucket="lake", Key="marts/composed.csv")["ETag"].strip(
        '"'
    )
