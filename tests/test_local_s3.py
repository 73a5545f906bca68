"""The local S3 server: credentials enforced, per-home ports and keys, idempotent start."""

from __future__ import annotations

import stat
import subprocess
import time
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from loaders import local_s3
from tests.conftest import PROJECT, Elt, started


def test_wrong_keys_get_403(elt: Elt) -> None:
    creds = local_s3.credentials(elt.home)
    forged = boto3.client(
        "s3",
        endpoint_url=local_s3.endpoint(elt.home),
        region_name="us-east-1",
        aws_access_key_id=creds.access_key_id,
        aws_secret_access_key=creds.secret_access_key + "x",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError) as caught:
        forged.list_objects_v2(Bucket="lake")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_anonymous_get_gets_403(elt: Elt) -> None:
    elt.put("raw/anon/probe.csv", b"a\n1\n")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{local_s3.endpoint(elt.home)}/lake/raw/anon/probe.csv", timeout=10)
    assert caught.value.code == 403


def test_up_is_idempotent_and_prints_the_endpoint(elt: Elt) -> None:
    pid = local_s3.read_state(elt.home).pid
    again = elt.run("up")
    assert again.stdout.strip() == local_s3.endpoint(elt.home)
    assert again.stdout.strip().startswith("http://127.0.0.1:")
    assert local_s3.read_state(elt.home).pid == pid


def test_keys_are_generated_per_install_and_owner_only(elt: Elt, tmp_path) -> None:
    other = local_s3.credentials(tmp_path)
    mine = local_s3.credentials(elt.home)
    assert other.access_key_id != mine.access_key_id
    assert other.secret_access_key != mine.secret_access_key
    for name in ("credentials.json", "pipeline-credentials.json", "identities.json"):
        mode = stat.S_IMODE((elt.home / "s3" / name).stat().st_mode)
        assert mode == 0o600, name
    assert mine.secret_access_key not in repr(mine)
    # AND no key file is, or could be, committed
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=PROJECT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [t for t in tracked if "credentials" in t or t.startswith(".elt/")]
    ignored = subprocess.run(
        ["git", "check-ignore", ".elt/s3/credentials.json"], cwd=PROJECT, capture_output=True
    )
    assert ignored.returncode == 0


def test_a_presigned_url_stops_working_after_its_expiry(elt: Elt) -> None:
    elt.put("marts/expiry_probe.csv", b"a\n1\n")
    client = elt.s3()
    link = client.generate_presigned_url(
        "get_object", Params={"Bucket": "lake", "Key": "marts/expiry_probe.csv"}, ExpiresIn=2
    )
    with urllib.request.urlopen(link, timeout=10) as response:
        assert response.read() == b"a\n1\n"
    # THEN within a bounded time after its 2 s expiry the same link is refused
    deadline = time.monotonic() + 15
    while True:
        try:
            urllib.request.urlopen(link, timeout=10).close()
        except urllib.error.HTTPError as refused:
            assert refused.code == 403
            break
        assert time.monotonic() < deadline, "the link still worked 15 s after its 2 s expiry"
        time.sleep(0.2)


def test_two_homes_run_side_by_side_and_stop(tmp_path_factory, elt: Elt) -> None:
    second = started(tmp_path_factory.mktemp("second_home"))
    try:
        assert local_s3.endpoint(second.home) != local_s3.endpoint(elt.home)
        second.put("raw/x/a.csv", b"a\n1\n")
        # Each server has its own keys and data: the first one has no such object.
        with pytest.raises(ClientError):
            elt.s3().head_object(Bucket="lake", Key="raw/x/a.csv")
    finally:
        stopped = second.run("down")
    assert stopped.stdout.strip() == "stopped"
    assert local_s3.read_state(second.home) is None
    assert second.run("down").stdout.strip() == "not running"
