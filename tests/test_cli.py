"""The CLI's contract: one line per error, meaningful exit codes."""

from __future__ import annotations

import gzip

from tests.conftest import Elt, week_csv


def test_url_for_a_missing_mart_is_one_clear_line(elt: Elt) -> None:
    proc = elt.run("url", "no_such_model", check=False)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("elt: s3://lake/marts/no_such_model.csv does not exist")


def test_run_without_server_names_the_failed_step(tmp_path) -> None:
    stopped = Elt(tmp_path)
    proc = stopped.run("run", check=False)
    assert proc.returncode == 1
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("elt: ")] == [
        f"elt: the local S3 server is not running for {tmp_path}: run `elt up`"
    ]
    # AND the failed run has its receipt
    ((status, errors),) = stopped.query("select status, errors from elt.runs")
    assert (status, errors) == (
        "failed",
        f"the local S3 server is not running for {tmp_path}: run `elt up`",
    )


def test_prod_target_without_bucket_says_what_to_set(elt: Elt) -> None:
    proc = elt.run("url", "turnstile_daily", "--target", "prod", check=False)
    assert proc.returncode == 2
    assert "ELT_BUCKET" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_upload_puts_files_under_the_dataset_prefix(elt: Elt, tmp_path) -> None:
    path = tmp_path / "week 1.csv"
    path.write_text("a\n1\n")
    proc = elt.run("upload", str(path), "--dataset", "scratch")
    assert proc.stdout.strip() == "s3://lake/raw/scratch/week 1.csv"
    assert elt.get("raw/scratch/week 1.csv") == b"a\n1\n"


def test_run_reports_one_line_per_failed_object_and_loads_the_rest(elt: Elt) -> None:
    # GIVEN one good and two unreadable objects
    elt.put("raw/turnstile/cli_good.csv", week_csv(2, day="05/01/2024"))
    elt.put("raw/turnstile/cli_empty.csv", b"")
    elt.put("raw/turnstile/cli_cut.csv.gz", gzip.compress(week_csv(40))[:100])
    # WHEN run THEN it exits non-zero with one line per failed object, after building the rest
    proc = elt.run("run", check=False)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("elt: ")]
    assert errors == [
        "elt: load failed: raw/turnstile/cli_cut.csv.gz: truncated gzip data: the stream ends early",
        "elt: load failed: raw/turnstile/cli_empty.csv: empty object (0 bytes)",
    ]
    assert b",2024-05-01," in elt.get("marts/turnstile_daily.csv")
    # AND `elt status` lists each object version with its outcome
    status = elt.run("status", "--limit", "3").stdout
    for key, outcome in (
        ("cli_good.csv", "loaded"),
        ("cli_empty.csv", "failed"),
        ("cli_cut.csv.gz", "failed"),
    ):
        line = next(ln for ln in status.splitlines() if key in ln)
        assert outcome in line
    assert "empty object (0 bytes)" in status
