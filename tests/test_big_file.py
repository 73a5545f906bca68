"""A file larger than the memory cap lands with bounded memory.

The scenario of ``bench/big_file.py`` (a 2.2 GB CSV under ``memory_limit``
1 GB: the figure in the README) at a quarter of the size and of the cap,
which proves the same promise: the loader streams, so its peak memory follows
the cap, not the file.
The file is composed by the S3 server itself from one upload of the real weeks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.conftest import SAMPLE_WEEKS, Elt

pytestmark = pytest.mark.faults
LIMIT_MB = 256
COPIES = 14  # 28 weeks of about 22 MB each: 0.58 GB, over twice the cap


LOAD_ONLY = """
from loaders import pipeline, s3
from loaders.config import load_settings
settings = load_settings("dev")
results = pipeline.load(settings, s3.client(s3.connection(settings.lake, settings.home)))
print(sum(r.rows_loaded for r in results), [r.status for r in results])
# This process's own peak resident memory. Not getrusage: Linux counts in a child's
# ru_maxrss the pages of the parent it was forked from, before its exec.
peak_kb = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1]
print("peak_mb", int(peak_kb) // 1024)
"""


def compose_repeated_csv(elt: Elt, local: Path, copies: int, key: str) -> int:
    """Put at ``key`` the two real weeks as one plain CSV, its rows repeated ``copies`` times.

    One ~40 MB upload; the server then composes the big object from byte
    ranges of it (S3 UploadPartCopy: the header once, then the rows again and
    again), so no 2 GB file is written or sent by the test.

    Returns:
        The object's size in bytes.
    """
    with duckdb.connect() as conn:
        conn.execute(
            f"copy (select * from read_csv(?, all_varchar = true, header = true)) "
            f"to '{local}' (format csv, header true)",
            [[str(w) for w in SAMPLE_WEEKS]],
        )
    header = len(local.open("rb").readline())
    rows = local.stat().st_size - header
    client = elt.s3()
    client.upload_file(str(local), "lake", "tmp/weeks.csv")
    upload = client.create_multipart_upload(Bucket="lake", Key=key)["UploadId"]
    parts = []
    for number in range(1, copies + 1):
        first = 0 if number == 1 else header  # each part ~40 MB: over S3's 5 MiB floor
        copied = client.upload_part_copy(
            Bucket="lake",
            Key=key,
            UploadId=upload,
            PartNumber=number,
            CopySource={"Bucket": "lake", "Key": "tmp/weeks.csv"},
            CopySourceRange=f"bytes={first}-{header + rows - 1}",
        )
        parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
    client.complete_multipart_upload(
        Bucket="lake", Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
    )
    client.delete_object(Bucket="lake", Key="tmp/weeks.csv")
    return int(client.head_object(Bucket="lake", Key=key)["ContentLength"])


def test_a_file_twice_the_memory_limit_loads_without_being_killed(elt: Elt, tmp_path: Path) -> None:
    # GIVEN a CSV over twice the memory cap: the real weeks, repeated, composed by the server
    elt.reset()
    key = "raw/turnstile/big.csv"
    size = compose_repeated_csv(elt, tmp_path / "weeks.csv", COPIES, key)
    assert size > 2 * LIMIT_MB * 2**20
    # WHEN the load step runs with DuckDB capped at LIMIT_MB
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_ONLY],
        env=elt.env(ELT_MEMORY_LIMIT=f"{LIMIT_MB}MB"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    # THEN it completes (not killed by the OS), every row landed once
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded, peak = proc.stdout.splitlines()
    assert loaded.split("[")[0].strip() == str(503838 * COPIES)
    assert "'loaded'" in loaded
    # AND the loader's peak resident memory stays under twice the cap
    peak_mb = int(peak.removeprefix("peak_mb "))
    print(f"{size / 2**30:.2f} GB file, memory_limit {LIMIT_MB}MB: peak RSS {peak_mb} MB")
    assert peak_mb < 2 * LIMIT_MB
