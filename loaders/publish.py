"""Promote exported candidates to their published keys (the "publish" of write-audit-publish).

dbt's post-hook writes a mart to ``marts/_staging/<invocation>/<model>.csv``;
the ``on-run-end`` hook calls the SQL functions registered here to copy a
candidate whose tests passed to ``marts/<model>.csv`` (server-side, one
request: readers see the old object or the new one) or to discard it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import duckdb
from botocore.exceptions import BotoCoreError, ClientError

from loaders import s3 as s3_mod
from loaders.errors import StorageError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)


def publish_object(client: S3Client, bucket: str, candidate: str, final: str) -> int:
    """Copy ``candidate`` to ``final`` in ``bucket``, check it, delete the candidate.

    Returns:
        Size in bytes of the published object.

    Raises:
        StorageError: the candidate is missing, or the copy did not produce an
            object of the candidate's size (the previous ``final`` is then kept).
    """
    try:
        size = client.head_object(Bucket=bucket, Key=candidate)["ContentLength"]
        client.copy_object(
            Bucket=bucket, Key=final, CopySource={"Bucket": bucket, "Key": candidate}
        )
        published = client.head_object(Bucket=bucket, Key=final)["ContentLength"]
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(
            f"publishing s3://{bucket}/{candidate} to {final} failed: {exc}"
        ) from exc
    if published != size:
        raise StorageError(f"s3://{bucket}/{final}: published {published} bytes, expected {size}")
    client.delete_object(Bucket=bucket, Key=candidate)
    log.info("published s3://%s/%s (%d bytes)", bucket, final, size)
    return size


def discard_object(client: S3Client, bucket: str, candidate: str) -> None:
    """Delete an unpublished candidate (absent is fine)."""
    try:
        client.delete_object(Bucket=bucket, Key=candidate)
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"discarding s3://{bucket}/{candidate} failed: {exc}") from exc


def register_functions(
    conn: duckdb.DuckDBPyConnection,
    bucket: str,
    connection: Callable[[], s3_mod.Connection | None],
) -> None:
    """Register ``elt_publish_object(candidate, final)`` and ``elt_discard_object(key)``.

    ``connection`` is called when a function runs, so credentials are resolved
    lazily (and a missing server fails the publish, not the connection).
    """

    def client() -> S3Client:
        resolved = connection()
        if resolved is None:
            raise StorageError("S3 is not configured for dbt: is the local server up (`elt up`)?")
        return s3_mod.client(resolved)

    def publish(candidate: str, final: str) -> int:
        return publish_object(client(), bucket, candidate, final)

    def discard(candidate: str) -> str:
        discard_object(client(), bucket, candidate)
        return candidate

    conn.create_function(
        "elt_publish_object", publish, ["varchar", "varchar"], "bigint", side_effects=True
    )
    conn.create_function("elt_discard_object", discard, ["varchar"], "varchar", side_effects=True)
