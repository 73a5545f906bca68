"""Run receipts and logs: what each run did, with no secret in them."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from loaders import local_s3, warehouse
from loaders import s3 as s3_mod
from tests.conftest import PROJECT, Elt, week_csv


def test_a_run_leaves_a_receipt_in_duckdb_and_s3(elt: Elt) -> None:
    # GIVEN one good object and one that cannot be read
    good = week_csv(3, day="07/01/2024", start=500)
    elt.put("raw/turnstile/receipt_good.csv", good)
    elt.put("raw/turnstile/receipt_empty.csv", b"")
    # WHEN run
    proc = elt.run("run", check=False)
    assert proc.returncode == 1
    # THEN the receipt in elt.runs and the one in S3 say the same
    run_id, trigger, status, document = elt.query(
        "select run_id, trigger, status, receipt from elt.runs order by run_id desc limit 1"
    )[0]
    receipt = json.loads(document)
    assert json.loads(elt.get(f"marts/_runs/{run_id}.json")) == receipt
    assert (trigger, status) == ("manual", "failed")
    assert receipt["errors"] == [
        "load failed: raw/turnstile/receipt_empty.csv: empty object (0 bytes)"
    ]
    objects = {o["key"]: o for o in receipt["objects"]}
    assert objects["raw/turnstile/receipt_good.csv"] | {"seconds": 0} == {
        "key": "raw/turnstile/receipt_good.csv",
        "etag": hashlib.md5(good).hexdigest(),
        "sha256": hashlib.sha256(good).hexdigest(),
        "size_bytes": len(good),
        "status": "loaded",
        "rows_loaded": 3,
        "rows_rejected": 0,
        "seconds": 0,
    }
    assert objects["raw/turnstile/receipt_empty.csv"]["status"] == "failed"
    # AND each dbt node has its status and timing, each export its size and rows
    nodes = {n["unique_id"]: n for n in receipt["dbt_nodes"]}
    assert nodes["model.elt_lake.turnstile_daily"]["status"] == "success"
    assert all(n["seconds"] >= 0 for n in nodes.values())
    exports = {e["key"]: e for e in receipt["exports"]}
    assert set(exports) == {
        "marts/turnstile_daily/2024-07.csv",
        "marts/turnstile_daily.csv",
        "marts/turnstile_daily/_manifest.json",
        "marts/station_daily/2024-07.csv",
        "marts/station_daily.csv",
        "marts/station_daily/_manifest.json",
    }
    for key, export in exports.items():
        body = elt.get(key)
        assert export["size_bytes"] == len(body)
        assert export["etag"] == elt.s3().head_object(Bucket="lake", Key=key)["ETag"].strip('"')
        rows = None if key.endswith(".json") else body.count(b"\n") - 1
        assert export["rows"] == rows, key
    assert receipt["seconds"] > 0 and receipt["finished_at"] > receipt["started_at"]
    # AND the log names the run and its outcome
    assert f"[{run_id}] loaders.pipeline: run {run_id} failed in " in proc.stderr


def test_no_secret_in_logs_receipts_or_dbt_artifacts_even_in_debug(elt: Elt) -> None:
    secret = local_s3.credentials(elt.home).secret_access_key
    assert len(secret) >= 32
    # GIVEN debug logging as JSON lines WHEN a run loads, builds, exports
    elt.put("raw/turnstile/secret_probe.csv", week_csv(2, day="07/02/2024"))
    proc = elt.run("--verbose", "--log-format", "json", "run")
    link = elt.run("--verbose", "url", "turnstile_daily")
    # THEN every log line is a JSON object naming the run
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    run_id = proc.stdout.split()[1].rstrip(":")
    assert {line["run_id"] for line in lines if line["logger"] != "loaders.local_s3"} == {run_id}
    assert any(line["level"] == "debug" for line in lines)
    # AND no secret and no presigned signature appears in any log, receipt or artifact
    signature = re.search(r"X-Amz-Signature=([0-9a-f]+)", link.stdout)
    assert signature, "the presigned URL itself goes to stdout"
    places = {
        "run log": proc.stderr,
        "url log": link.stderr,
        "receipt": elt.get(f"marts/_runs/{run_id}.json").decode(),
        "elt.runs": "".join(r[0] for r in elt.query("select receipt from elt.runs")),
        "ledger": repr(elt.query("select * from elt.ledger")),
    }
    artifacts = [PROJECT / "target", PROJECT / "logs", elt.home / "target"]
    for path in [p for folder in artifacts for p in folder.rglob("*")]:
        if path.is_file():
            places[str(path)] = path.read_bytes().decode(errors="replace")
    for path in Path(elt.home).rglob("*"):
        if path.is_file() and path.suffix in (".json", ".log") and path.parent.name != "s3":
            places[str(path)] = path.read_text(errors="replace")
    # (dbt's debug log, every SQL statement, is among them)
    assert "SQL status: OK" in places[str(Path(elt.home) / "logs" / "dbt.log")]
    # AND DuckDB holds the keys as a secret, redacted, not as a readable setting
    with warehouse.connect(
        elt.settings.warehouse_path, s3_mod.connection(elt.settings.lake, elt.home)
    ) as conn:
        places["duckdb_settings()"] = repr(
            conn.execute("select * from duckdb_settings()").fetchall()
        )
        secrets = conn.execute("select secret_string from duckdb_secrets()").fetchall()
        assert len(secrets) == 1
        places["duckdb_secrets()"] = repr(secrets)
    leaks = [
        where
        for where, text in places.items()
        if secret in text or signature.group(1) in text or "X-Amz-Signature=" in text
    ]
    assert leaks == []
