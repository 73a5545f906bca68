"""Staging: each pending object streamed to a local file, hashed and counted, before loading.

While an object downloads, :class:`loaders.formats.ContentMeter` computes its
sha256 (the ledger's duplicate check) and counts its lines apart from the
parser (the reconciliation ``rows in = loaded + rejected``), from the bytes,
decompressed as needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from loaders import faults
from loaders.datasets import Dataset
from loaders.errors import LoadError, StorageError
from loaders.formats import ContentMeter, format_of
from loaders.land.ledger import Attempt
from loaders.s3 import ObjectInfo

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CHUNK = 8 * 2**20


@dataclass
class Staged:
    """An object streamed to a local file, hashed and counted, before any transaction."""

    attempt: Attempt
    path: Path
    meter: ContentMeter
    fmt: str
    corrupt: LoadError | None = None


def stage_object(
    s3: S3Client,
    bucket: str,
    dataset: Dataset,
    obj: ObjectInfo,
    folder: Path,
    on_bytes: Callable[[int], None] | None,
) -> Staged:
    """Download ``obj`` into ``folder`` while hashing it and counting its lines.

    Raises:
        StorageError: the object could not be read (the run retries it next time).
    """
    attempt = Attempt(dataset=dataset, obj=obj)
    fmt = format_of(obj.key) or "csv"
    staged = Staged(attempt, folder / "object", ContentMeter(text=fmt != "parquet"), fmt)
    folder.mkdir(parents=True, exist_ok=True)
    clock = time.monotonic()
    try:
        download(s3, bucket, obj, staged.path, staged.meter, on_bytes)
    except LoadError as exc:  # a corrupt compressed stream fails the object
        staged.corrupt = LoadError(f"{obj.key}: {exc}")
    attempt.download_seconds = time.monotonic() - clock
    attempt.sha256 = staged.meter.sha256.hexdigest()
    return staged


def download(
    s3: S3Client,
    bucket: str,
    obj: ObjectInfo,
    path: Path,
    meter: ContentMeter,
    on_bytes: Callable[[int], None] | None,
) -> None:
    """Stream ``obj`` to ``path``, feeding every chunk to ``meter``.

    ``IfMatch`` pins the version listed: if the key is overwritten meanwhile,
    the read fails rather than mixing versions (the next run takes the new one).

    Raises:
        StorageError: the read failed; nothing is recorded, so it is retried.
    """
    try:
        body = s3.get_object(Bucket=bucket, Key=obj.key, IfMatch=obj.etag)["Body"]
        with open(path, "wb") as out:
            for chunk in body.iter_chunks(CHUNK):
                meter.update(chunk)
                out.write(chunk)
                faults.point("download")
                if on_bytes:
                    on_bytes(len(chunk))
    except (ClientError, BotoCoreError, OSError) as exc:
        raise StorageError(f"cannot read s3://{bucket}/{obj.key}: {exc}") from exc
