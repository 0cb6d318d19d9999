"""chunking: multiprocessing's chunk rules, lazy numbered chunks, the reorder buffer."""

from __future__ import annotations

import itertools
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2ppool.pool.chunking import (
    ChunkReader,
    InputError,
    ReorderBuffer,
    default_chunksize,
    split,
    validate_chunksize,
)


def mp_default_chunksize(length: int, processes: int) -> int:
    """multiprocessing.pool.Pool._map_async's rule, copied verbatim."""
    chunksize, extra = divmod(length, processes * 4)
    if extra:
        chunksize += 1
    if length == 0:
        chunksize = 0
    return chunksize


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 100_000), st.integers(1, 64))
def test_default_chunksize_is_multiprocessings(length: int, processes: int) -> None:
    assert default_chunksize(length, processes) == mp_default_chunksize(length, processes)


@pytest.mark.parametrize("length,processes,expected", [
    (0, 2, 0), (1, 2, 1), (8, 2, 1), (9, 2, 2), (400_000, 2, 50_000), (20, 2, 3), (10, 1, 3),
])
def test_default_chunksize_examples(length: int, processes: int, expected: int) -> None:
    assert default_chunksize(length, processes) == expected


@pytest.mark.parametrize("good", [1, 2, 10**9])
def test_validate_chunksize_accepts_positive_ints(good: int) -> None:
    assert validate_chunksize(good) == good


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", None, True])
def test_validate_chunksize_rejects_the_rest(bad: Any) -> None:
    with pytest.raises(ValueError, match="Chunksize must be 1"):
        validate_chunksize(bad)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(), max_size=60), st.integers(1, 9))
def test_split_keeps_every_item_in_order(items: list[int], size: int) -> None:
    chunks = split(items, size)
    assert [x for chunk in chunks for x in chunk] == items
    assert all(len(chunk) == size for chunk in chunks[:-1])
    assert all(1 <= len(chunk) <= size for chunk in chunks)


def test_reader_is_lazy_and_numbers_chunks() -> None:
    source = itertools.count()
    reader = ChunkReader(source, 3)
    assert reader.next_chunk() == (0, (0, 1, 2))
    assert reader.next_chunk() == (1, (3, 4, 5))
    assert next(source) == 6  # nothing was read ahead
    assert reader.count == 2 and not reader.exhausted


def test_reader_ends_with_a_short_chunk() -> None:
    reader = ChunkReader(range(5), 2)
    assert [reader.next_chunk() for _ in range(4)] == [(0, (0, 1)), (1, (2, 3)), (2, (4,)), None]
    assert reader.exhausted and reader.count == 3
    assert reader.next_chunk() is None


def _broken(n: int) -> Iterator[int]:
    yield from range(n)
    raise KeyError("broken input")


@pytest.mark.parametrize("chunksize,chunks_before", [(1, 3), (2, 1), (3, 1), (5, 0)])
def test_reader_puts_an_input_error_in_place_of_the_next_chunk(
    chunksize: int, chunks_before: int
) -> None:
    reader = ChunkReader(_broken(3), chunksize)
    for index in range(chunks_before):
        found = reader.next_chunk()
        assert found is not None and found[0] == index and not isinstance(found[1], InputError)
    found = reader.next_chunk()
    assert found is not None
    index, error = found
    assert index == chunks_before and isinstance(error, InputError)
    assert isinstance(error.error, KeyError)
    assert reader.next_chunk() is None and reader.count == chunks_before + 1


@pytest.mark.parametrize("not_iterable", [3, None, object()])
def test_reader_of_a_non_iterable_gives_its_type_error_as_chunk_0(not_iterable: Any) -> None:
    reader = ChunkReader(not_iterable, 2)  # raises nothing here: the caller who iterates sees it
    found = reader.next_chunk()
    assert found is not None and found[0] == 0 and isinstance(found[1], InputError)
    assert isinstance(found[1].error, TypeError) and "not iterable" in str(found[1].error)
    assert reader.next_chunk() is None and reader.exhausted and reader.count == 1


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.permutations(list(range(12))))
def test_reorder_buffer_releases_in_index_order(order: list[int]) -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer()
    released: list[str] = []
    for index in order:
        released += buffer.add(index, f"r{index}")
    assert released == [f"r{i}" for i in range(12)]
    assert len(buffer) == 0 and buffer.next_index == 12


def test_reorder_buffer_holds_until_the_gap_fills() -> None:
    buffer: ReorderBuffer[int] = ReorderBuffer()
    assert buffer.add(1, 10) == []
    assert buffer.add(2, 20) == []
    assert len(buffer) == 2
    assert buffer.add(0, 0) == [0, 10, 20]
