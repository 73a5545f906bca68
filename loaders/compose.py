"""One S3 object written from byte ranges of others, mostly by the server (UploadPartCopy).

A partitioned mart's new objects are mostly bytes the bucket already holds:
a month part that gained a week starts with the month's earlier days as
published, and the whole file is the previous whole file with a few changed
ranges. :func:`compose` writes an object from a list of :class:`Segment`
(ranges of objects in the bucket, or of local files) so that the bucket's
own bytes are copied by the server and only the rest is sent.

S3's rules shape it: every part of a multipart upload but the last is at
least 5 MiB and at most 5 GiB. A range too small to be a part of its own is
read (from a local copy of the same bytes when there is one, else with a
ranged GET pinned to the source's ETag) and merged with its neighbours,
topped up to 5 MiB from the head of the next range. An object with nothing
to copy, or under 1 MiB, is assembled and sent in one PUT.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from loaders.errors import StorageError
from loaders.s3 import ObjectInfo

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

# S3: every part of a multipart upload but the last is at least 5 MiB, at most 5 GiB.
MIN_PART_BYTES = 5 * 2**20
MAX_PART_BYTES = 5 * 2**30
# Parts are compared with their published version in blocks of this size
# (:func:`block_digests`): the unchanged head of a part is copied, not sent.
BLOCK_BYTES = 2**20
# Under this size an object is sent in one PUT even when it could be copied:
# cheaper than the three requests (at least) of a multipart upload.
SMALL_OBJECT_BYTES = 2**20


@dataclass(frozen=True)
class Segment:
    """Bytes ``[start, end)`` of an object in the bucket, of a local file, or of both.

    Attributes:
        start: First byte (0-based).
        end: One past the last byte.
        key: Object holding these bytes in the bucket (copyable by the server).
        etag: That object's ETag: a copy or read of another version fails.
        path: Local file holding the same bytes at the same offsets (read
            instead of a GET when the range has to be sent).
    """

    start: int
    end: int
    key: str | None = None
    etag: str | None = None
    path: Path | None = None

    @property
    def size(self) -> int:
        return self.end - self.start

    def follows(self, other: Segment) -> bool:
        """Whether this segment continues ``other`` in the same source."""
        return (self.key, self.etag, self.path) == (other.key, other.etag, other.path) and (
            other.end == self.start
        )


def merged(segments: Iterable[Segment]) -> list[Segment]:
    """``segments`` without empty ones, each run of contiguous ones in one source joined."""
    out: list[Segment] = []
    for segment in segments:
        if segment.size <= 0:
            continue
        if out and segment.follows(out[-1]):
            out[-1] = replace(out[-1], end=segment.end)
        else:
            out.append(segment)
    return out


def block_digests(path: Path) -> list[str]:
    """sha256 (16 hex digits) of each ``BLOCK_BYTES`` block of a file, the last one partial."""
    digests = []
    with path.open("rb") as body:
        for block in iter(lambda: body.read(BLOCK_BYTES), b""):
            digests.append(hashlib.sha256(block).hexdigest()[:16])
    return digests


def common_head(old: list[str], new: list[str], old_size: int, new_size: int) -> int:
    """Bytes at the start of two files known to be equal from their block digests.

    Args:
        old, new: :func:`block_digests` of the two files.
        old_size, new_size: Their sizes in bytes.

    Returns:
        A length ``n`` such that both files' first ``n`` bytes are equal.
    """
    equal = 0
    for a, b in zip(old, new, strict=False):
        if a != b:
            break
        equal += 1
    return min(equal * BLOCK_BYTES, old_size, new_size)


@dataclass(frozen=True)
class Step:
    """One part of a multipart upload: a range the server copies, or bytes sent.

    Attributes:
        copy: The range the server copies (one segment), or ``None``.
        send: The ranges read and sent together as one part (empty for a copy).
    """

    copy: Segment | None = None
    send: tuple[Segment, ...] = ()

    @property
    def size(self) -> int:
        return self.copy.size if self.copy else sum(s.size for s in self.send)


def plan(segments: list[Segment]) -> list[Step]:
    """The parts of a multipart upload writing ``segments`` end to end.

    A segment in the bucket is copied when it can be a part of its own (at
    least 5 MiB, or the last); ranges too small for that are merged, each
    merged part topped up to 5 MiB from the head of the next segment.
    Copies above S3's 5 GiB part maximum are cut in equal pieces.

    Returns:
        Steps in order: every one but the last at least 5 MiB.
    """
    steps: list[Step] = []
    pending: list[Segment] = []

    def flush() -> None:
        steps.append(Step(send=tuple(pending)))
        pending.clear()

    parts = merged(segments)
    for index, segment in enumerate(parts):
        last = index == len(parts) - 1
        if pending:
            # Small ranges before this one: top them up to 5 MiB from its head.
            take = min(MIN_PART_BYTES - sum(s.size for s in pending), segment.size)
            pending.append(replace(segment, end=segment.start + take))
            segment = replace(segment, start=segment.start + take)
            if sum(s.size for s in pending) >= MIN_PART_BYTES:
                flush()
        if segment.size > 0:
            copyable = segment.key is not None and (segment.size >= MIN_PART_BYTES or last)
            if not pending and copyable:
                pieces = -(-segment.size // MAX_PART_BYTES)
                step = -(-segment.size // pieces)
                for low in range(segment.start, segment.end, step):
                    steps.append(
                        Step(copy=replace(segment, start=low, end=min(low + step, segment.end)))
                    )
            else:
                pending.append(segment)
        if pending and (last or sum(s.size for s in pending) >= MIN_PART_BYTES):
            flush()
    return steps


def compose(
    client: S3Client, bucket: str, key: str, segments: list[Segment], content_type: str
) -> tuple[ObjectInfo, int]:
    """Write ``s3://bucket/key`` as ``segments`` end to end, copying what the server holds.

    When the :func:`plan` copies nothing (no range of another object large
    enough), or the object is under 1 MiB, the bytes go in one PUT.

    Args:
        client: S3 client with GetObject on the sources and PutObject on ``key``.
        bucket: Bucket of ``key`` and of every source object.
        key: The object to write.
        segments: Its bytes, in order; each needs a ``key`` or a ``path``.
        content_type: The object's Content-Type.

    Returns:
        The object written (its size is the segments' total), and the bytes
        sent to S3 for it (what the server copied is not sent).

    Raises:
        StorageError: a request failed (a source changed since its ETag was
            read, say); an unfinished multipart upload is aborted, and
            ``key`` keeps its previous version.
    """
    steps = plan(segments)
    total = sum(step.size for step in steps)
    if total < SMALL_OBJECT_BYTES or not any(step.copy for step in steps):
        body = b"".join(read(client, bucket, s) for step in steps for s in step.send)
        return put_bytes(client, bucket, key, body, content_type), len(body)
    started = time.monotonic()
    try:
        upload = client.create_multipart_upload(Bucket=bucket, Key=key, ContentType=content_type)[
            "UploadId"
        ]
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot start composing s3://{bucket}/{key}: {exc}") from exc
    done: list[CompletedPartTypeDef] = []
    sent = 0
    try:
        for number, step in enumerate(steps, start=1):
            if step.copy is not None:
                copied = client.upload_part_copy(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload,
                    PartNumber=number,
                    CopySource={"Bucket": bucket, "Key": str(step.copy.key)},
                    CopySourceIfMatch=str(step.copy.etag),
                    CopySourceRange=f"bytes={step.copy.start}-{step.copy.end - 1}",
                )
                etag = copied["CopyPartResult"]["ETag"]
            else:
                body = b"".join(read(client, bucket, s) for s in step.send)
                etag = client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=body
                )["ETag"]
                sent += len(body)
            done.append({"PartNumber": number, "ETag": etag})
        finished = client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done}
        )
    except (ClientError, BotoCoreError, StorageError) as exc:
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        except (ClientError, BotoCoreError):
            log.warning("could not abort the upload of s3://%s/%s", bucket, key)
        raise StorageError(f"composing s3://{bucket}/{key} failed: {exc}") from exc
    log.info(
        "composed s3://%s/%s in %d part(s) in %.1fs, %d of %d bytes sent",
        bucket,
        key,
        len(steps),
        time.monotonic() - started,
        sent,
        total,
    )
    return ObjectInfo(key=key, etag=str(finished["ETag"]).strip('"'), size=total), sent


def read(client: S3Client, bucket: str, segment: Segment) -> bytes:
    """A segment's bytes: from its local file if it has one, else from S3.

    Raises:
        StorageError: the ranged GET failed (or the object's ETag changed).
    """
    if segment.path is not None:
        with segment.path.open("rb") as body:
            body.seek(segment.start)
            return body.read(segment.size)
    try:
        response = client.get_object(
            Bucket=bucket,
            Key=str(segment.key),
            IfMatch=str(segment.etag),
            Range=f"bytes={segment.start}-{segment.end - 1}",
        )
        return bytes(response["Body"].read())
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot read s3://{bucket}/{segment.key}: {exc}") from exc


def put_bytes(
    client: S3Client, bucket: str, key: str, body: Any, content_type: str, size: int | None = None
) -> ObjectInfo:
    """One PUT of ``body`` (bytes or a file object of ``size`` bytes) to ``s3://bucket/key``.

    Raises:
        StorageError: the PUT failed; the previous version of ``key`` stays.
    """
    try:
        response = client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"publishing s3://{bucket}/{key} failed: {exc}") from exc
    length = size if size is not None else len(body)
    return ObjectInfo(key=key, etag=response["ETag"].strip('"'), size=length)
