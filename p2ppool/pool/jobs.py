"""Jobs and chunks, as a Pool's manager thread sees them.

A :class:`_Job` is one apply/map/imap call (its function, its result object, its progress);
a :class:`_Chunk` is a numbered piece of its input.  Functions are pickled once per Pool and
function object (:class:`_FunctionBlobs`); a chunk whose function or arguments did not pickle
fails as :class:`_Failed` without running.
"""

from __future__ import annotations

import collections
import copy
import queue
import types
from typing import TYPE_CHECKING, Any, Callable, Tuple

from .. import payload
from . import chunking

if TYPE_CHECKING:
    from .results import _Result


class _Job:
    """One apply/map/imap call: its function, its result object, its progress."""

    def __init__(self, func: Callable[..., Any], how: int, result: _Result,
                 length: int | None, progress: Any = None) -> None:
        self.job_id = result._job
        self.func = func
        self.how = how  # payload.APPLY, MAP or STARMAP
        self.result = result
        self.length = length  # chunks in all; None until an imap input is exhausted
        self.resolved = 0
        self.progress = progress
        self.func_blob: bytes | None = None
        self.func_error: BaseException | None = None
        # imap read-ahead: one token per chunk the feeder may read before results come back
        # (a C SimpleQueue: cheaper per chunk than a Semaphore, which is Python code)
        self.slots: queue.SimpleQueue[None] | None = None
        self.failed = False  # failed as a whole (withdrawn): its feeder reads no more
        self.input_error: tuple[int, BaseException] | None = None  # held for its turn
        # imap of a list, tuple or range: the manager reads the input itself (no feeder),
        # ``credit`` more chunks when it next can.
        self.reader: chunking.ChunkReader | None = None
        self.credit = 0
        # Chunks of read-ahead given for executors since lost: results that take them back.
        self.read_ahead_debt = 0
        # Called (manager thread) when a chunk of the job is about to run; False: nobody
        # wants it any more (a cancelled concurrent.futures.Future), do not run it.
        self.on_start: Callable[[], bool] | None = None
        # What its batches' items took in the task processes, in all (see the manager's
        # _batch_sizes): the next map of the function sizes its batches by it.
        self.batched_seconds = 0.0
        self.batched_items = 0
        self.chunk_items = 1  # input items in its largest chunk so far

    def blob(self, cache: _FunctionBlobs) -> bytes:
        """The pickled function, or raise why it cannot be pickled.

        Pickled once per Pool and function object (``cache``), not once per job: pickling
        a function of ``__main__`` by value costs more than a whole ``apply`` round trip.
        Like multiprocessing's processes, the workers therefore see the module globals the
        function reads as they were when the pool first sent it.
        """
        if self.func_error is not None:
            raise _fresh_copy(self.func_error)
        if self.func_blob is None:
            self.func_blob = cache.get(self.func)
            if self.func_blob is None:
                try:
                    self.func_blob = payload.dumps(self.func)
                except Exception as exc:
                    self.func_error = exc
                    raise
                cache.put(self.func, self.func_blob)
        return self.func_blob


def _fresh_copy(error: BaseException) -> BaseException:
    """A copy of ``error`` for one more chunk, without the frames of earlier raises.

    Every chunk of a job whose function does not pickle fails with this error; raised as
    one shared object (by the manager, then by each caller's ``get``/``next``), its
    traceback would grow by a few entries per chunk of a long map.
    """
    try:
        fresh = copy.copy(error)
    except Exception:  # an exception type that cannot be rebuilt from its args
        return error.with_traceback(None)
    fresh.__cause__, fresh.__context__ = error.__cause__, error.__context__
    fresh.__suppress_context__ = error.__suppress_context__
    return fresh.with_traceback(None)


class _FunctionBlobs:
    """The pickled form of recently used functions, by identity (a small LRU).

    It keeps the last few function objects alive (so an id is never reused while cached);
    a WeakKeyDictionary would cost a weak reference per lookup, per ``apply``.
    """

    MAX_BLOB = 64 * 1024

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._entries: collections.OrderedDict[int, Tuple[Any, bytes]] = (
            collections.OrderedDict()
        )

    def get(self, func: Any) -> bytes | None:
        entry = self._entries.get(id(func))
        if entry is None or entry[0] is not func:
            return None
        self._entries.move_to_end(id(func))
        return entry[1]

    def put(self, func: Any, blob: bytes) -> None:
        if len(blob) > self.MAX_BLOB:
            return  # a big closure: do not keep what it captured alive
        if isinstance(func, types.MethodType):
            # ``obj.method`` is a new object at each access, so it would never be found
            # again, but it would keep ``obj`` alive (and a stale copy of its state).
            return
        self._entries[id(func)] = (func, blob)
        self._entries.move_to_end(id(func))
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)


class _Chunk:
    __slots__ = ("job", "index", "items", "call_blob", "size")

    def __init__(self, job: _Job, index: int, items: Any, size: int) -> None:
        self.job = job
        self.index = index
        self.items = items  # a payload.Call before it is pickled
        self.call_blob: bytes | None = None
        self.size = size  # input items in it (progress)


def _call_for(how: int, items: Any) -> payload.Call:
    if how == payload.MAP:
        return payload.map_call(items)
    if how == payload.STARMAP:
        return payload.starmap_call(items)
    args, kwds = items
    return (payload.APPLY, args, kwds)


class _Failed:
    """A chunk that failed before it ran (its function or arguments did not pickle)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
