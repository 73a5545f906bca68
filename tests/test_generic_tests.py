"""The generic tests in macros/tests/ catch what they should, and only that.

tests/generic_tests is a small dbt project using the project's macros on
known rows: each of its tests is tagged expect_pass or expect_fail.
"""

from __future__ import annotations

import json
import subprocess

from tests.conftest import BIN, PROJECT

GENERIC = PROJECT / "tests" / "generic_tests"


def test_generic_tests_pass_and_fail_as_designed(tmp_path) -> None:
    proc = subprocess.run(
        [
            str(BIN / "dbt"),
            "build",
            "--project-dir",
            str(GENERIC),
            "--profiles-dir",
            str(GENERIC),
            "--target-path",
            str(tmp_path / "target"),
            "--log-path",
            str(tmp_path / "logs"),
        ],
        env={"GENERIC_TESTS_DB": str(tmp_path / "generic.duckdb"), "PATH": str(BIN)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout[-2000:]  # the expect_fail tests fail the build
    results = json.loads((tmp_path / "target" / "run_results.json").read_text())["results"]
    manifest = json.loads((tmp_path / "target" / "manifest.json").read_text())["nodes"]
    outcome = {
        manifest[r["unique_id"]]["name"]: (r["status"], manifest[r["unique_id"]]["tags"])
        for r in results
        if r["unique_id"].startswith("test.")
    }
    assert len(outcome) == 11
    for name, (status, tags) in outcome.items():
        expected = "pass" if "expect_pass" in tags else "fail"
        assert status == expected, f"{name}: {status}"
