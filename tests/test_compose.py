"""The plan of a composed object: which ranges the server copies, which are sent.

No server: :func:`loaders.compose.plan` only decides the parts of the
multipart upload (``tests/test_partitions.py`` composes real objects).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loaders.compose import MAX_PART_BYTES, MIN_PART_BYTES, Segment, plan

pytestmark = pytest.mark.unit

MIB = 2**20

# A segment: its size, and whether the bucket holds it (copyable) or only a local file.
segments_st = st.lists(st.tuples(st.integers(0, 12 * MIB), st.booleans()), min_size=1, max_size=12)


def as_segments(spec: list[tuple[int, bool]]) -> list[Segment]:
    """Each segment from a source of its own, from byte 100 (a local one is told by its etag)."""
    return [
        Segment(100, 100 + size, key=f"k{i}", etag="e")
        if in_bucket
        else Segment(100, 100 + size, etag=f"local{i}")
        for i, (size, in_bucket) in enumerate(spec)
    ]


def ranges(steps: list) -> list[tuple[str | None, str | None, int, int]]:
    """Every byte range of the steps in order, contiguous ones of one source joined."""
    out: list[tuple[str | None, str | None, int, int]] = []
    for step in steps:
        for s in [step.copy] if step.copy else step.send:
            if out and out[-1][:2] == (s.key, s.etag) and out[-1][3] == s.start:
                out[-1] = (*out[-1][:3], s.end)
            else:
                out.append((s.key, s.etag, s.start, s.end))
    return out


@given(segments_st)
def test_a_plan_writes_every_byte_once_in_order_in_parts_s3_accepts(spec) -> None:
    # GIVEN segments of any sizes, some in the bucket, some only local
    segments = as_segments(spec)
    # WHEN planned
    steps = plan(segments)
    # THEN the steps are the segments' bytes, in order, each once
    expected = [(s.key, s.etag, s.start, s.end) for s in segments if s.size > 0]
    assert ranges(steps) == expected
    # AND every part but the last is at least 5 MiB, none over 5 GiB
    assert all(step.size >= MIN_PART_BYTES for step in steps[:-1])
    assert all(0 < step.size <= MAX_PART_BYTES for step in steps)
    # AND only ranges of the bucket's objects are copied
    assert all(step.copy.key is not None for step in steps if step.copy)


def test_large_ranges_are_copied_and_small_ones_sent_topped_up_from_the_next() -> None:
    # GIVEN 1 MiB local, 8 MiB in the bucket, 2 MiB local, 3 MiB in the bucket (last)
    segments = [
        Segment(0, MIB, etag="local"),
        Segment(0, 8 * MIB, key="old", etag="e1"),
        Segment(0, 2 * MIB, etag="local2"),
        Segment(0, 3 * MIB, key="new", etag="e2"),
    ]
    steps = plan(segments)
    # THEN nothing is copied: the 1 MiB is topped up with 4 MiB of the 8 MiB,
    # whose other 4 MiB are too few to be a part alone, and so on to the end
    assert [(bool(s.copy), s.size // MIB) for s in steps] == [(False, 5), (False, 5), (False, 4)]


def test_a_range_over_5_gib_is_copied_in_equal_pieces() -> None:
    size = 11 * 2**30
    steps = plan([Segment(0, size, key="big", etag="e")])
    piece = -(-size // 3)
    assert [(s.copy.start, s.copy.end) for s in steps if s.copy] == [
        (0, piece),
        (piece, 2 * piece),
        (2 * piece, size),
    ]


def test_the_unchanged_head_is_copied_and_the_new_tail_copied_as_the_last_part() -> None:
    # GIVEN the steady case: 700 MiB of the previous whole file, then 3 MiB of a new part
    steps = plan(
        [
            Segment(0, 700 * MIB, key="whole", etag="old"),
            Segment(9 * MIB, 12 * MIB, key="part", etag="new"),
        ]
    )
    # THEN both are copied by the server: nothing is sent
    assert [(s.copy.key, s.size // MIB) for s in steps if s.copy] == [("whole", 700), ("part", 3)]
    assert all(s.copy for s in steps)
