"""What an object is, from its key and its bytes, and how to count what is in it.

The loader never trusts a file name alone: compression is recognised from the
first bytes (gzip, zstd), and a ``.parquet`` key must start with ``PAR1``.
While an object streams in, :class:`ContentMeter` hashes its bytes (sha256) and
counts its non-blank lines after decompression, an independent count the
loader reconciles with the rows it loaded and rejected.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard
from isal import isal_zlib

from loaders.errors import LoadError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PARQUET_MAGIC = b"PAR1"
# isal's stub declares its error as an instance; at run time it is the class raised.
GZIP_ERROR: type[Exception] = isal_zlib.error  # type: ignore[assignment]
CR, LF, QUOTE = 13, 10, 34

# Key suffix -> format. Compression is not taken from the name.
SUFFIXES = (
    (".csv.gz", "csv"),
    (".csv.zst", "csv"),
    (".csv", "csv"),
    (".jsonl.gz", "jsonl"),
    (".ndjson.gz", "jsonl"),
    (".jsonl", "jsonl"),
    (".ndjson", "jsonl"),
    (".parquet", "parquet"),
)


def format_of(key: str) -> str | None:
    """``csv``, ``jsonl`` or ``parquet`` from the key's suffix; ``None`` if unsupported."""
    lowered = key.lower()
    return next((fmt for suffix, fmt in SUFFIXES if lowered.endswith(suffix)), None)


def compression_of(head: bytes) -> str:
    """DuckDB ``compression`` option from the first bytes: gzip, zstd or none."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


class _Decompressor:
    """Streaming decompression of gzip (multi-member) or zstd, or pass-through.

    gzip goes through ISA-L (``isal``, zlib's API): the loader decompresses
    every gzip object once more than DuckDB does, to count its lines, and
    ISA-L does it about 3x faster than zlib (0.02 s against 0.06 s for a
    22 MB week of turnstile readings).
    """

    def __init__(self, compression: str) -> None:
        self.compression = compression
        self._gzip: Any = isal_zlib.decompressobj(wbits=31) if compression == "gzip" else None
        self._zstd: Any = (
            zstandard.ZstdDecompressor().decompressobj() if compression == "zstd" else None
        )

    def feed(self, data: bytes) -> bytes:
        if self._gzip is not None:
            out = []
            while data:
                out.append(self._gzip.decompress(data))
                data = self._gzip.unused_data
                if data:  # a new gzip member starts
                    self._gzip = isal_zlib.decompressobj(wbits=31)
            return b"".join(out)
        if self._zstd is not None:
            return bytes(self._zstd.decompress(data))
        return data

    def complete(self) -> bool:
        """Whether the compressed stream reached its end marker."""
        if self._gzip is not None:
            return bool(self._gzip.eof)
        if self._zstd is not None:
            return bool(self._zstd.eof)
        return True


class LineCounter:
    """Counts non-blank lines (a line of only ``\\r`` is blank) in a byte stream.

    Also notes whether a ``"`` occurs at all: without one, no CSV field can
    span lines, and lines equal records.
    """

    def __init__(self) -> None:
        self.lines = 0
        self.has_quote = False
        self._open_line_has_content = False

    def update(self, chunk: bytes) -> None:
        if not chunk:
            return
        data = np.frombuffer(chunk, dtype=np.uint8)
        if not self.has_quote and QUOTE in chunk:
            self.has_quote = True
        ends = np.flatnonzero(data == LF)
        if ends.size == 0:
            self._open_line_has_content |= bool(np.any(data != CR))
            return
        first = self._open_line_has_content or bool(np.any(data[: ends[0]] != CR))
        starts = ends[:-1] + 1
        lengths = ends[1:] - starts
        # Between two line feeds: blank when empty or a lone carriage return.
        single = lengths == 1
        nonblank = (lengths > 1) | (single & (data[np.minimum(starts, data.size - 1)] != CR))
        self.lines += int(first) + int(np.count_nonzero(nonblank))
        self._open_line_has_content = bool(np.any(data[ends[-1] + 1 :] != CR))

    def finish(self) -> int:
        """Total non-blank lines, counting a last line without a line feed."""
        if self._open_line_has_content:
            self.lines += 1
            self._open_line_has_content = False
        return self.lines


@dataclass
class ContentMeter:
    """sha256 of the raw bytes and non-blank lines of the decoded text, as bytes stream in.

    Args:
        text: Count lines (CSV, JSON lines); ``False`` for binary formats.
    """

    text: bool = True

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.head = b""
        self.compression = "none"
        self.counter = LineCounter()
        self._decompressor: _Decompressor | None = None

    def update(self, chunk: bytes) -> None:
        """Take the next bytes of the object, in order."""
        self.sha256.update(chunk)
        self.size += len(chunk)
        if self._decompressor is None:
            self.head += chunk
            if len(self.head) < 4:
                return  # the magic bytes are not all here yet
            chunk, self.head = self.head, self.head[:8]
            self._start()
        if self.text:
            self._count(chunk)

    def _start(self) -> None:
        self.compression = compression_of(self.head)
        self._decompressor = _Decompressor(self.compression)

    def _count(self, data: bytes) -> None:
        assert self._decompressor is not None
        try:
            self.counter.update(self._decompressor.feed(data))
        except (GZIP_ERROR, zstandard.ZstdError) as exc:
            raise LoadError(f"corrupt {self.compression} data ({exc})") from exc

    def finish(self) -> tuple[str, int, bool]:
        """``(sha256 hex, non-blank lines, has a quote)`` once every byte was seen.

        Raises:
            LoadError: the compressed stream ends before its end marker (truncated).
        """
        if self._decompressor is None:  # fewer than four bytes in all
            tiny, self.head = self.head, self.head[:8]
            self._start()
            if self.text:
                self._count(tiny)
        assert self._decompressor is not None
        if not self._decompressor.complete():
            raise LoadError(f"truncated {self.compression} data: the stream ends early")
        return self.sha256.hexdigest(), self.counter.finish(), self.counter.has_quote
