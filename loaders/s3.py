"""S3 access for the loader, the CLI and the dbt plugin (boto3).

One function, :func:`connection`, turns settings into an endpoint and
credentials: the local server's generated keys for ``endpoint: local``, the
standard AWS credential chain (environment, profile, SSO, role) otherwise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from loaders import local_s3, logs
from loaders.config import LakeConfig
from loaders.errors import ConfigError, StorageError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

RAW_PREFIX = "raw/"
MARTS_PREFIX = "marts/"
# Multipart above 64 MiB, in 64 MiB parts (fewer, larger parts for weekly files).
TRANSFER = TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=64 * 2**20)


@dataclass(frozen=True)
class Connection:
    """Resolved endpoint and credentials for one target (secret kept out of repr)."""

    endpoint_url: str | None
    region: str
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return f"Connection(endpoint_url={self.endpoint_url!r}, region={self.region!r})"


@dataclass(frozen=True)
class ObjectInfo:
    """One object as listed: key, ETag (quotes stripped), size in bytes."""

    key: str
    etag: str
    size: int


def connection(lake: LakeConfig, home: Path) -> Connection:
    """Resolve the endpoint and credentials of ``lake``.

    Args:
        lake: Bucket and endpoint of the target.
        home: State directory, where the local server keeps its keys.

    Raises:
        ServerError: ``endpoint: local`` and the local server is not running.
        ConfigError: no AWS credentials found in the standard chain.
    """
    if lake.is_local:
        creds = local_s3.credentials(home, os.environ.get("ELT_LOCAL_IDENTITY") or "elt")
        logs.register_secret(creds.secret_access_key)
        return Connection(
            endpoint_url=local_s3.endpoint(home),
            region=lake.region,
            access_key_id=creds.access_key_id,
            secret_access_key=creds.secret_access_key,
        )
    found = boto3.Session(region_name=lake.region).get_credentials()
    if found is None:
        raise ConfigError(
            f"s3://{lake.bucket}: no AWS credentials found "
            "(set AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or use a role)"
        )
    frozen = found.get_frozen_credentials()
    logs.register_secret(frozen.secret_key)
    logs.register_secret(frozen.token)
    return Connection(
        endpoint_url=lake.endpoint,
        region=lake.region,
        access_key_id=frozen.access_key or "",
        secret_access_key=frozen.secret_key or "",
        session_token=frozen.token,
    )


def client(conn: Connection) -> S3Client:
    """A boto3 S3 client for ``conn``: path-style addressing, bounded retries."""
    return boto3.client(
        "s3",
        endpoint_url=conn.endpoint_url,
        region_name=conn.region,
        aws_access_key_id=conn.access_key_id,
        aws_secret_access_key=conn.secret_access_key,
        aws_session_token=conn.session_token,
        config=Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            retries={"max_attempts": 4, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        ),
    )


def ensure_bucket(s3: S3Client, bucket: str) -> bool:
    """Create ``bucket`` if it does not exist; return whether it was created."""
    try:
        s3.head_bucket(Bucket=bucket)
        return False
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
            raise StorageError(f"s3://{bucket}: {exc}") from exc
    s3.create_bucket(Bucket=bucket)
    return True


def list_objects(s3: S3Client, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
    """Yield every object under ``s3://bucket/prefix``, following pagination.

    Raises:
        StorageError: the listing failed (bucket missing, access denied, server down).
    """
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    key=item["Key"], etag=item["ETag"].strip('"'), size=int(item["Size"])
                )
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot list s3://{bucket}/{prefix}: {exc}") from exc


def upload(s3: S3Client, path: Path, bucket: str, key: str) -> None:
    """Upload a local file to ``s3://bucket/key`` (multipart above 64 MiB).

    Raises:
        StorageError: the upload failed.
    """
    try:
        s3.upload_file(str(path), bucket, key, Config=TRANSFER)
    except (ClientError, BotoCoreError, OSError) as exc:
        raise StorageError(f"upload of {path} to s3://{bucket}/{key} failed: {exc}") from exc


def exists(s3: S3Client, bucket: str, key: str) -> bool:
    """Whether ``s3://bucket/key`` exists (a HEAD request).

    Raises:
        StorageError: the request failed for another reason than a missing object.
    """
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise StorageError(f"cannot read s3://{bucket}/{key}: {exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"cannot read s3://{bucket}/{key}: {exc}") from exc
    return True


def delete_object(s3: S3Client, bucket: str, key: str) -> None:
    """Delete ``s3://bucket/key`` (absent is fine).

    Raises:
        StorageError: the request failed.
    """
    try:
        s3.delete_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot delete s3://{bucket}/{key}: {exc}") from exc


def presigned_get(s3: S3Client, bucket: str, key: str, expires_s: int = 3600) -> str:
    """A presigned GET URL for ``s3://bucket/key``, valid ``expires_s`` seconds.

    Raises:
        StorageError: the object does not exist (a URL to nothing helps no one).
    """
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        raise StorageError(f"s3://{bucket}/{key} does not exist: {exc}") from exc
    return s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
    )


def duckdb_secret_options(conn: Connection) -> dict[str, Any]:
    """Options of a DuckDB ``CREATE SECRET (TYPE s3, ...)`` for ``conn``."""
    options: dict[str, Any] = {
        "key_id": conn.access_key_id,
        "secret": conn.secret_access_key,
        "region": conn.region,
    }
    if conn.session_token:
        options["session_token"] = conn.session_token
    if conn.endpoint_url:
        scheme, _, host = conn.endpoint_url.partition("://")
        options.update(endpoint=host.rstrip("/"), url_style="path", use_ssl=scheme == "https")
    return options
