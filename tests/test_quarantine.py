"""No landed row can stop the pipeline: bad values are quarantined, everything else publishes.

End to end, through ``elt run`` against the local S3 server: a real weekly file
poisoned with hostile values, random rows, a warehouse landed under an older
contract, and a model of another dataset failing on its data.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
from pathlib import Path

import pytest

from loaders.datasets import normalise_name
from tests.conftest import SAMPLE_WEEKS, Elt, project_copy, week_csv, with_counts_dataset
from tests.test_contract import HOSTILE, TYPED

MARTS = ("turnstile_daily", "station_daily")


@pytest.fixture()
def fresh(elt: Elt) -> Elt:
    elt.reset()
    return elt


def _csv_gz(rows: list[list[str]]) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return gzip.compress(text.getvalue().encode(), compresslevel=1)


def spreadsheet_safe(text: str) -> str:
    """A text cell as exports write it: formula-like text behind a quote (CSV injection)."""
    return "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text


def _rejects(elt: Elt) -> list[dict[str, str]]:
    exported = elt.get("marts/_rejects/turnstile.csv").decode()
    return list(csv.DictReader(io.StringIO(exported)))


def test_hostile_values_in_a_real_week_are_quarantined_and_the_rest_publishes(fresh: Elt) -> None:
    # GIVEN a real week in which each (column, hostile value) pair poisons a row of its own
    with gzip.open(SAMPLE_WEEKS[0], "rt", newline="") as week:
        header, *rows = list(csv.reader(week))
    position = {normalise_name(h, i): i - 1 for i, h in enumerate(header, start=1)}
    pairs = [(column, value) for column in TYPED for value in HOSTILE.values()]
    pairs += [(column, None) for column in ("ca", "unit", "scp")]  # no value at all
    step = len(rows) // (len(pairs) + 1)
    poisoned = {step * (n + 1): pair for n, pair in enumerate(pairs)}
    bad = [list(row) for row in rows]
    for index, (column, value) in poisoned.items():
        bad[index][position[column]] = "" if value is None else value
    clean = [row for index, row in enumerate(rows) if index not in poisoned]
    # AND the published result of the same week without those rows
    fresh.put("raw/turnstile/240106.csv.gz", _csv_gz([header, *clean]))
    fresh.run("run")
    expected = {model: fresh.download_mart(model) for model in MARTS}
    fresh.reset()
    # WHEN the poisoned week is uploaded and run once
    fresh.put("raw/turnstile/240106.csv.gz", _csv_gz([header, *bad]))
    proc = fresh.run("run")
    # THEN it publishes, and every other row's result is the clean run's, byte for byte
    for model in MARTS:
        assert fresh.download_mart(model) == expected[model], model
    # AND each poisoned row is in the rejects export, naming its line and column
    found = {
        (int(r["line"]), r["column_name"], r["error_type"], r["value"]) for r in _rejects(fresh)
    }
    assert (
        found
        == {
            (
                index + 2,  # the header is line 1
                column,
                "MISSING VALUE" if value is None else "CAST ERROR",
                "" if value is None else spreadsheet_safe(value[:1000]),
            )
            for index, (column, value) in poisoned.items()
        }
    )
    # AND the run says, in one line for the object, how many and why
    quarantined = [ln for ln in proc.stdout.splitlines() if ln.startswith("quarantined")]
    assert len(quarantined) == 1
    assert quarantined[0].startswith(
        f"quarantined {len(pairs)} of {len(rows)} row(s) of raw/turnstile/240106.csv.gz: "
    )
    assert f"{len(HOSTILE) - 1} CAST ERROR in date" in quarantined[0]
    assert "1 MISSING VALUE in scp" in quarantined[0]
    ledger = fresh.query("select rows_in, rows_loaded, rows_rejected from elt.ledger")
    assert ledger == [(len(rows), len(rows) - len(pairs), len(pairs))]


def _random_row(rng: random.Random, i: int) -> list[str]:
    """One row of a turnstile file, each value drawn from valid, extreme and hostile ones."""

    def pick(*choices: str) -> str:
        return rng.choice(choices)

    day = (
        f"{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/{rng.choice([1, 1999, 2024, 9999]):04d}"
    )
    moment = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
    counter = str(rng.choice([0, 1, 10_001, 2**63 - 1, -(2**63), rng.randint(0, 10**9)]))
    hostile = [v for v in HOSTILE.values() if v is not None and len(v) < 100]
    return [
        str(i),
        pick("A002", "", "=cmd", " A003 "),
        pick("R051", "R052", ""),
        pick("02-00-00", "02-00-01", "00-00-00"),
        pick("59 ST", "", "+1", "\u00e9t\u00e9 ST", '"quoted"'),
        pick("NQR456W", ""),
        pick("BMT", "IRT", "XYZ", ""),
        pick(day, day, day, *hostile),
        pick(moment, moment, moment, *hostile),
        pick("REGULAR", "RECOVR AUD", "", "UNKNOWN"),
        pick(counter, counter, counter, *hostile),
        pick(counter, counter, counter, *hostile),
    ]


@pytest.mark.parametrize("seed", [14, 2024])
def test_random_rows_never_fail_the_build(fresh: Elt, seed: int) -> None:
    # GIVEN two files of random rows: valid, extreme (2^63 - 1 next to -2^63) and hostile values
    rng = random.Random(seed)
    header = ["", "CA", "UNIT", "SCP", "STATION", "LINENAME", "DIVISION"]
    header += ["DATE", "TIME", "DESC", "ENTRIES", "EXITS"]
    for part in range(2):
        rows = [_random_row(rng, i) for i in range(1500)]
        fresh.put(f"raw/turnstile/random_{part}.csv.gz", _csv_gz([header, *rows]))
    # WHEN run THEN dbt builds and publishes everything, and every row is accounted for
    proc = fresh.run("run", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert fresh.query(
        "select count(*) from elt.ledger where rows_in != rows_loaded + rows_rejected"
    ) == [(0,)]
    (published,) = fresh.query("select count(*) from marts.turnstile_daily")[0]
    assert published > 0
    assert fresh.download_mart("turnstile_daily").count(b"\n") == published + 1


LOOSE = """\
          - name: date
            description: Reading date, MM/DD/YYYY (two-digit month and day). A row whose value is not a real date in that format is quarantined.
            data_type: date
            config:
              meta:
                format: "%m/%d/%Y"
            constraints:
              - type: not_null
"""


def test_rows_landed_under_an_older_contract_are_checked_again(fresh: Elt, tmp_path: Path) -> None:
    # GIVEN a warehouse landed by a project whose contract did not cover the date
    older = project_copy(tmp_path / "older")
    sources = older / "models" / "staging" / "mta" / "_mta__sources.yml"
    text = sources.read_text()
    assert LOOSE in text
    sources.write_text(text.replace(LOOSE, LOOSE.split("            data_type")[0]))
    staging = older / "models" / "staging" / "mta" / "stg_mta__turnstile_readings.sql"
    staging.write_text(
        staging.read_text().replace(
            "{{ cast_source_column('mta', 'turnstile', 'date', 'source.date') }}",
            "cast(strptime(trim(source.date), '%m/%d/%Y') as date)",
        )
    )
    fresh.put("raw/turnstile/old.csv", week_csv(3, day="02/30/2024"))
    fresh.put("raw/turnstile/good.csv", week_csv(3, day="03/01/2024"))
    stuck = fresh.run("run", check=False, ELT_PROJECT_DIR=str(older))
    # (there, staging could not convert the date: every run failed the same way,
    # naming the first model reading the view, and the value as DuckDB gives it)
    assert stuck.returncode == 1
    (error,) = [ln for ln in stuck.stderr.splitlines() if ln.startswith("elt: ")]
    assert "int_turnstile_readings_deduplicated" in error
    assert "Date out of range: 2024-2-30" in error
    # WHEN the current project runs THEN the landed row is quarantined and the rest publishes
    proc = fresh.run("run")
    assert "2024-03-01" in fresh.download_mart("turnstile_daily").decode()
    assert [(r["key"], r["line"], r["column_name"], r["value"]) for r in _rejects(fresh)] == [
        ("raw/turnstile/old.csv", str(line), "date", "02/30/2024") for line in (2, 3, 4)
    ]
    assert fresh.query("select key, rows_loaded, rows_rejected from elt.ledger order by key") == [
        ("raw/turnstile/good.csv", 3, 0),
        ("raw/turnstile/old.csv", 0, 3),
    ]
    assert "run " in proc.stdout
    # AND the next run checks nothing again (the contract is unchanged)
    again = fresh.run("run")
    assert "contract of turnstile changed" not in again.stderr


def test_a_model_failing_on_data_names_itself_and_other_datasets_still_publish(
    fresh: Elt, tmp_path: Path
) -> None:
    # GIVEN a second dataset whose mart casts text no contract checks, and a turnstile week
    project = with_counts_dataset(tmp_path / "project", contracted=False)
    fresh.put("raw/counts/c.csv", b"name,n\nx,1\ny,ten\n")
    fresh.put("raw/turnstile/w.csv", week_csv(3, day="04/01/2024"))
    # WHEN run
    proc = fresh.run("run", check=False, ELT_PROJECT_DIR=str(project))
    # THEN it fails naming the model and the value
    assert proc.returncode == 1
    (error, *published) = [ln for ln in proc.stderr.splitlines() if ln.startswith("elt: ")]
    assert "model counts_total" in error and "'ten'" in error, error
    # AND the turnstile marts, which do not depend on it, were published and said so
    assert published == [
        "elt: published despite the failure: marts/station_daily.csv, "
        "marts/station_daily/_manifest.json, marts/turnstile_daily.csv, "
        "marts/turnstile_daily/_manifest.json"
    ]
    assert b",2024-04-01," in fresh.get("marts/turnstile_daily.csv")
    receipt = fresh.query("select receipt from elt.runs order by started_at desc limit 1")[0][0]
    assert '"marts/station_daily.csv"' in receipt
