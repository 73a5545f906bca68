"""What an object is, from its key and its bytes, and how to count what is in it.

The loader never trusts a file name alone: compression is recognised from the
first bytes (gzip, zstd), and a ``.parquet`` key must start with ``PAR1``.
While an object streams in, :class:`ContentMeter` hashes its bytes (sha256) and
counts its non-blank lines after decompression, an independent count the
loader reconciles with the rows it loaded and rejected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
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
    ISA-L does it about 3x faster than zlib. Input is taken in slices of
    ``INPUT_SLICE`` and output comes in pieces of at most ``PIECE`` bytes, so
    what is counted is still in the CPU cache: for a 22 MB week of turnstile
    readings, decompressing and counting take 0.026 s this way against
    0.061 s for one 8 MB download chunk at a time (60 MB of text at once).
    """

    INPUT_SLICE = 256 * 1024
    PIECE = 1024 * 1024

    def __init__(self, compression: str) -> None:
        self.compression = compression
        self._gzip: Any = isal_zlib.decompressobj(wbits=31) if compression == "gzip" else None
        self._zstd: Any = (
            zstandard.ZstdDecompressor().decompressobj() if compression == "zstd" else None
        )

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of the next ``data``, in order, in pieces of at most ``PIECE``."""
        view = memoryview(data)
        for start in range(0, len(view), self.INPUT_SLICE):
            part = view[start : start + self.INPUT_SLICE]
            if self._gzip is not None:
                yield from self._inflate(part)
            elif self._zstd is not None:
                yield from _pieces(bytes(self._zstd.decompress(part)), self.PIECE)
            else:
                yield from _pieces(bytes(part), self.PIECE)

    def _inflate(self, data: bytes | memoryview) -> Iterator[bytes]:
        while True:
            out = self._gzip.decompress(data, self.PIECE)
            if out:
                yield out
            if self._gzip.unconsumed_tail:  # the piece is full; input remains
                data = self._gzip.unconsumed_tail
            elif self._gzip.eof and self._gzip.unused_data:  # a new gzip member starts
                data = self._gzip.unused_data
                self._gzip = isal_zlib.decompressobj(wbits=31)
            elif len(out) == self.PIECE and not self._gzip.eof:  # output may be pending
                data = b""
            else:
                return

    def complete(self) -> bool:
        """Whether the compressed stream reached its end marker."""
        if self._gzip is not None:
            return bool(self._gzip.eof)
        if self._zstd is not None:
            return bool(self._zstd.eof)
        return True


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


class LineCounter:
    """Counts non-blank lines (empty, or a lone ``\\r``, is blank) in a byte stream.

    The count does not depend on how the stream is cut into chunks: a line
    split across two chunks counts as it would in one. Also notes whether a
    ``"`` occurs at all: without one, no CSV field can span lines, and lines
    equal records.
    """

    # What the line still open at the end of the last chunk holds so far.
    _EMPTY, _LONE_CR, _CONTENT = 0, 1, 2

    def __init__(self) -> None:
        self.lines = 0
        self.has_quote = False
        self._open = self._EMPTY

    def _extend(self, state: int, text: np.ndarray) -> int:
        """The open line's state once ``text`` (no line feed in it) is appended."""
        if state == self._CONTENT or text.size > 1:
            return self._CONTENT
        if text.size == 0:
            return state
        if state == self._EMPTY and text[0] == CR:
            return self._LONE_CR
        return self._CONTENT

    def update(self, chunk: bytes) -> None:
        if not chunk:
            return
        data = np.frombuffer(chunk, dtype=np.uint8)
        if not self.has_quote and QUOTE in chunk:
            self.has_quote = True
        ends = np.flatnonzero(data == LF)
        if ends.size == 0:
            self._open = self._extend(self._open, data)
            return
        first = self._extend(self._open, data[: ends[0]]) == self._CONTENT
        starts = ends[:-1] + 1
        lengths = ends[1:] - starts
        # Between two line feeds: blank when empty or a lone carriage return.
        single = lengths == 1
        nonblank = (lengths > 1) | (single & (data[np.minimum(starts, data.size - 1)] != CR))
        self.lines += int(first) + int(np.count_nonzero(nonblank))
        self._open = self._extend(self._EMPTY, data[ends[-1] + 1 :])

    def finish(self) -> int:
        """Total non-blank lines, counting a last line without a line feed."""
        if self._open == self._CONTENT:
            self.lines += 1
        self._open = self._EMPTY
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
            for piece in self._decompressor.feed(data):
                self.counter.update(piece)
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
