"""A run needs no more than ``iam/elt-pipeline-policy.json``.

The local server's ``pipeline`` identity has exactly that policy's rights
(read ``raw/*``, read and write ``marts/*``; SeaweedFS lists bucket-wide), and a whole
``elt run`` as that identity must load, build and publish.
"""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from loaders import local_s3
from tests.conftest import PROJECT, SAMPLE_WEEKS, Elt, week_csv


def pipeline_client(elt: Elt):
    creds = local_s3.credentials(elt.home, "pipeline")
    return boto3.client(
        "s3",
        endpoint_url=local_s3.endpoint(elt.home),
        aws_access_key_id=creds.access_key_id,
        aws_secret_access_key=creds.secret_access_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


@pytest.mark.unit
def test_pipeline_policy_grants_exactly_list_raw_get_raw_publish_marts_write_lake() -> None:
    policy = json.loads((PROJECT / "iam" / "elt-pipeline-policy.json").read_text())
    grants = {
        (action, s["Resource"], json.dumps(s.get("Condition"), sort_keys=True))
        for s in policy["Statement"]
        for action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert all(s["Effect"] == "Allow" for s in policy["Statement"])
    assert grants == {
        (
            "s3:ListBucket",
            "arn:aws:s3:::my-elt-bucket",
            json.dumps({"StringLike": {"s3:prefix": ["raw/", "raw/*"]}}, sort_keys=True),
        ),
        ("s3:GetObject", "arn:aws:s3:::my-elt-bucket/raw/*", "null"),
        # marts/: publish parts and manifests, read them back (the last manifest,
        # the parts the whole file is composed from), delete parts no longer listed
        ("s3:PutObject", "arn:aws:s3:::my-elt-bucket/marts/*", "null"),
        ("s3:GetObject", "arn:aws:s3:::my-elt-bucket/marts/*", "null"),
        ("s3:DeleteObject", "arn:aws:s3:::my-elt-bucket/marts/*", "null"),
        ("s3:AbortMultipartUpload", "arn:aws:s3:::my-elt-bucket/marts/*", "null"),
        # lake/: the raw data in the open, written and pruned (and read back:
        # the Spark target waits for its local mount to show what was written)
        ("s3:PutObject", "arn:aws:s3:::my-elt-bucket/lake/*", "null"),
        ("s3:GetObject", "arn:aws:s3:::my-elt-bucket/lake/*", "null"),
        ("s3:DeleteObject", "arn:aws:s3:::my-elt-bucket/lake/*", "null"),
        ("s3:AbortMultipartUpload", "arn:aws:s3:::my-elt-bucket/lake/*", "null"),
    }


def test_the_pipeline_identity_is_really_restricted(elt: Elt) -> None:
    elt.put("raw/turnstile/lp_probe.csv", week_csv(1))
    elt.put("marts/lp_probe.csv", b"x\n")
    elt.put("private/lp_probe.csv", b"secret\n")
    client = pipeline_client(elt)
    assert client.get_object(Bucket="lake", Key="raw/turnstile/lp_probe.csv")["Body"].read()
    assert client.get_object(Bucket="lake", Key="marts/lp_probe.csv")["Body"].read() == b"x\n"
    client.put_object(Bucket="lake", Key="marts/lp_written.csv", Body=b"y\n")
    client.delete_object(Bucket="lake", Key="marts/lp_written.csv")
    for denied in (
        lambda: client.get_object(Bucket="lake", Key="private/lp_probe.csv"),
        lambda: client.put_object(Bucket="lake", Key="raw/turnstile/lp_evil.csv", Body=b"z"),
        lambda: client.delete_object(Bucket="lake", Key="raw/turnstile/lp_probe.csv"),
        lambda: client.create_bucket(Bucket="other"),
    ):
        with pytest.raises(ClientError) as caught:
            denied()
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    elt.s3().delete_object(Bucket="lake", Key="raw/turnstile/lp_probe.csv")


def test_a_whole_run_as_the_least_privilege_identity(elt: Elt) -> None:
    # GIVEN the real weeks and a file with a bad row, uploaded by the full-rights identity
    elt.reset()
    for week in SAMPLE_WEEKS:
        elt.s3().upload_file(str(week), "lake", f"raw/turnstile/{week.name}")
    bad = week_csv(2, day="01/20/2024").replace(b",1001,100\n", b",oops,100\n")
    elt.put("raw/turnstile/240120_bad.csv", bad)
    # WHEN the pipeline runs as the identity with the policy's rights only,
    # writing the raw data in the open too
    proc = elt.run("run", ELT_LOCAL_IDENTITY="pipeline", ELT_LAKE="true")
    # THEN it loads, builds, publishes the marts, the rejects and the receipt
    run_id = proc.stdout.split()[1].rstrip(":")
    keys = {o["Key"] for o in elt.s3().list_objects_v2(Bucket="lake", Prefix="marts/")["Contents"]}
    assert keys == {
        "marts/turnstile_daily.csv",
        "marts/turnstile_daily/2023-12.csv",
        "marts/turnstile_daily/2024-01.csv",
        "marts/turnstile_daily/_manifest.json",
        "marts/station_daily.csv",
        "marts/station_daily/2023-12.csv",
        "marts/station_daily/2024-01.csv",
        "marts/station_daily/_manifest.json",
        "marts/_rejects/turnstile.csv",
        f"marts/_runs/{run_id}.json",
    }
    assert elt.get("marts/turnstile_daily.csv").count(b"\n") == 70190
    lake = {o["Key"] for o in elt.s3().list_objects_v2(Bucket="lake", Prefix="lake/")["Contents"]}
    assert "lake/elt/ledger/ledger.parquet" in lake
    assert len([k for k in lake if k.startswith("lake/raw/turnstile/load_date=")]) == 3
