"""ContentMeter: sha256 and the independent line count, however the bytes arrive."""

from __future__ import annotations

import gzip
import hashlib
import random

import pytest
import zstandard

from loaders.errors import LoadError
from loaders.formats import ContentMeter

pytestmark = pytest.mark.unit

PIECES = (b"a,b\n", b"\n", b"\r\n", b"\r", b'"x"\n', b"zz", b"\r\r\n", b"7,8")


def measure(blob: bytes, chunk: int) -> tuple[str, int, bool]:
    meter = ContentMeter()
    for start in range(0, len(blob), chunk):
        meter.update(blob[start : start + chunk])
    return meter.finish()


def non_blank_lines(text: bytes) -> int:
    """The definition, spelled out: lines that are neither empty nor a lone CR."""
    return sum(1 for line in text.split(b"\n") if line not in (b"", b"\r"))


@pytest.mark.parametrize(
    ("seed", "pieces", "chunks"),
    [(seed, 30_000, (7 + seed, 4096)) for seed in range(12)]
    # Several MB: input slices, and output pieces of a full megabyte.
    + [(99, 3_000_000, (4096, 8 * 2**20))],
)
def test_line_count_does_not_depend_on_compression_or_chunking(
    seed: int, pieces: int, chunks: tuple[int, ...]
) -> None:
    rng = random.Random(seed)
    text = b"".join(rng.choices(PIECES, k=pieces))
    half = len(text) // 2
    encodings = {
        "plain": text,
        "gzip, two members": gzip.compress(text[:half]) + gzip.compress(text[half:]),
        "zstd": zstandard.ZstdCompressor().compress(text),
    }
    for name, blob in encodings.items():
        for chunk in chunks:
            digest, lines, has_quote = measure(blob, chunk)
            assert digest == hashlib.sha256(blob).hexdigest()
            assert lines == non_blank_lines(text), (name, chunk)
            assert has_quote == (b'"' in text)


def test_truncated_gzip_is_refused() -> None:
    blob = gzip.compress(b"a,b\n1,2\n" * 10_000)
    with pytest.raises(LoadError, match="truncated gzip"):
        measure(blob[:-20], 4096)
