"""Split inputs into numbered chunks, and put results back in order.  Pure.

The rules are ``multiprocessing.Pool``'s, so the same call gives the same chunks:

* ``map``/``starmap`` without a chunksize: ``divmod(len(items), 4 * processes)``, rounded up
  (:func:`default_chunksize`);
* ``imap``/``imap_unordered``: chunks of ``chunksize`` (default 1) read lazily from the
  iterable (:class:`ChunkReader`); if the iterable raises, the error takes the place of the
  next chunk and reading stops, exactly where ``multiprocessing`` reports it.
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, Generic, Iterable, Iterator, List, Tuple, TypeVar, Union

__all__ = ["ChunkReader", "InputError", "ReorderBuffer", "default_chunksize", "validate_chunksize"]

T = TypeVar("T")


def default_chunksize(length: int, processes: int) -> int:
    """multiprocessing's default chunksize for ``map``: ``ceil(length / (4 * processes))``.

    Returns 0 for an empty input (multiprocessing then sends no task at all).
    """
    if length == 0:
        return 0
    chunksize, extra = divmod(length, processes * 4)
    return chunksize + 1 if extra else chunksize


def validate_chunksize(chunksize: Any) -> int:
    """Return ``chunksize`` if it is an int >= 1, else raise ValueError as multiprocessing."""
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
    return chunksize


class InputError:
    """The place of a chunk whose reading raised: ``error`` is the iterable's exception."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


Chunk = Tuple[Any, ...]


class ChunkReader:
    """Numbered chunks read lazily from an iterable: ``next_chunk()`` -> ``(index, chunk)``.

    A chunk is a tuple of up to ``chunksize`` items.  When the iterable raises an
    ``Exception``, the next index carries an :class:`InputError` and the reader is exhausted
    (items read into that partial chunk are dropped, as multiprocessing drops them).  So does
    an input that is not iterable at all (``iter(3)``'s TypeError comes as chunk 0), as
    multiprocessing's ``imap`` raises it to the caller who iterates.

    Attributes:
        count: chunks handed out so far (the job's length once ``exhausted``).
        exhausted: no more chunks will come.
    """

    def __init__(self, iterable: Iterable[Any], chunksize: int) -> None:
        self._chunksize = chunksize
        self.count = 0
        self.exhausted = False
        self._it: Iterator[Any]
        try:
            self._it = iter(iterable)
        except Exception as exc:  # not iterable: the first chunk is the error
            self._it = _raising(exc)

    def next_chunk(self) -> tuple[int, Union[Chunk, InputError]] | None:
        """The next ``(index, chunk)``, or None when the input is used up."""
        if self.exhausted:
            return None
        try:
            chunk = tuple(itertools.islice(self._it, self._chunksize))
        except Exception as exc:
            self.exhausted = True
            self._it = iter(())
            index, self.count = self.count, self.count + 1
            return index, InputError(exc)
        if not chunk:
            self.exhausted = True
            self._it = iter(())
            return None
        index, self.count = self.count, self.count + 1
        return index, chunk


def _raising(exc: Exception) -> Iterator[Any]:
    raise exc
    yield  # pragma: no cover - makes this a generator


def split(items: Any, chunksize: int) -> List[Chunk]:
    """Cut a sized sequence into chunks of ``chunksize`` (the last one may be shorter)."""
    it = iter(items)
    chunks: List[Chunk] = []
    while True:
        chunk = tuple(itertools.islice(it, chunksize))
        if not chunk:
            return chunks
        chunks.append(chunk)


class ReorderBuffer(Generic[T]):
    """Results arrive in any order; ``add`` returns those now releasable in index order."""

    def __init__(self) -> None:
        self._waiting: Dict[int, T] = {}
        self.next_index = 0

    def add(self, index: int, value: T) -> List[T]:
        """Record the result of ``index``; return every result that is now next in line."""
        if index != self.next_index:
            self._waiting[index] = value
            return []
        released = [value]
        self.next_index += 1
        while self.next_index in self._waiting:
            released.append(self._waiting.pop(self.next_index))
            self.next_index += 1
        return released

    def __len__(self) -> int:
        return len(self._waiting)
