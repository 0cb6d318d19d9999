"""What the Pool's calls return, as ``multiprocessing.pool``'s: :class:`ApplyResult` (alias
:class:`AsyncResult`), :class:`MapResult`, :class:`IMapIterator`, :class:`IMapUnorderedIterator`.

Callers wait on them (``get``, ``wait``, ``next``); the manager thread
(:mod:`p2ppool.pool.manager`) fills them, through ``_set`` and ``_abort``.  One shortcut
(issue 16): the result of an ``apply`` with no callback and no progress bar that runs on a
cluster peer is handed to its waiters by the thread that received it
(:meth:`ApplyResult._arrive`), still pickled, and the waiter unpickles it; the manager's own
delivery of it is then a no-op.
"""

from __future__ import annotations

import _thread
import collections
import itertools
import threading
import types
from typing import Any, Callable, Deque, Dict, Tuple

from .. import payload
from ..errors import MaybeEncodingError, PoolNotRunning, TimeoutError

__all__ = ["ApplyResult", "AsyncResult", "IMapIterator", "IMapUnorderedIterator", "MapResult"]

_job_counter = itertools.count()

Outcome = Tuple[bool, Any]  # (success, value or exception), as multiprocessing's results


def unpickled(ok: bool, blob: Any) -> Outcome:
    """A chunk's outcome from its pickled value (``ok``) or exception; a blob that does not
    unpickle here fails it with a MaybeEncodingError."""
    try:
        return ok, payload.loads(blob)
    except Exception as exc:
        return False, MaybeEncodingError(exc, "<a result that could not be unpickled>")


class _Ready:
    """A one-shot ``threading.Event`` for a result: set once (by the manager, or by the
    thread that hands over an apply's result), waited on by any number of callers.

    A plain lock, held until the result is set: ``set`` is one release and ``wait`` one
    acquire and release, where an Event runs a Condition (a new lock per waiter and several
    calls of Python code on both sides) -- a good part of an ``apply`` round trip.
    """

    __slots__ = ("_lock", "_flag")

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        """Mark it set and wake every waiter (one thread sets it, once)."""
        if not self._flag:
            self._flag = True
            self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until set or ``timeout`` seconds pass; True if it is set."""
        if self._flag:
            return True
        try:
            if timeout is None:
                got = self._lock.acquire()
            else:
                got = self._lock.acquire(True, max(0.0, timeout))
        except BaseException:  # e.g. KeyboardInterrupt, maybe just after acquiring
            if self._flag:
                self._hand_on()  # or the other waiters would wait forever
            raise
        if got:
            self._hand_on()
        return got

    def _hand_on(self) -> None:
        """Once set, the lock only wakes waiters: release it for the next one (an extra
        release of a set result, from an interrupted waiter, is harmless)."""
        try:
            self._lock.release()
        except RuntimeError:
            pass


class _Result:
    _job: int
    _pool: object | None
    _withdrawn = False  # _withdraw posted its cancel already
    _arrived = False  # an outcome was taken already (only ApplyResult takes one early)

    def _set(self, i: int, obj: Outcome) -> None:
        raise NotImplementedError

    def _withdraw(self) -> None:
        """The waiter was interrupted (Ctrl-C, a Jupyter kernel interrupt): the job's
        chunks are withdrawn from processes and peers, and the pool stays usable."""
        if self._withdrawn:
            return  # once is enough (get's wait, then Pool.map, may both ask)
        pool = self._pool
        manager = getattr(pool, "_manager", None)
        if manager is not None:
            try:
                manager.inbox.post(manager.cancel_job, self._job,
                                   KeyboardInterrupt("the caller was interrupted"))
            except PoolNotRunning:
                pass  # the manager has exited and failed every job: nothing to withdraw
        # Only once posted: a second interrupt that lands before the post leaves it to the
        # next caller of _withdraw (a second cancel of a job is a no-op).
        self._withdrawn = True

    def _abort(self, error: BaseException) -> None:
        raise NotImplementedError

    def _cancel(self) -> bool:
        """Cancel the result if nobody's work has started on it (manager thread); True if
        it was.  Only an executor's futures can be cancelled."""
        return False


class ApplyResult(_Result):
    """The result of ``apply_async`` (and base of :class:`MapResult`), as multiprocessing's."""

    def __init__(self, pool: object, callback: Callable[[Any], object] | None,
                 error_callback: Callable[[BaseException], object] | None) -> None:
        self._pool: object | None = pool  # keeps the pool alive while this is pending
        self._event = _Ready()
        self._job = next(_job_counter)
        self._callback = callback
        self._error_callback = error_callback
        self._success = False
        self._value: Any = None
        self._blob: Any = None  # the pickled value or exception, until a waiter loads it
        self._loading = _thread.allocate_lock()  # held by the waiter that loads it
        # Taken, never released, by whoever gives the first outcome (the manager's _set or
        # _arrive): a non-blocking acquire, so nothing ever waits on it (not even in a child
        # forked while another thread took it).
        self._claim = _thread.allocate_lock()

    @property
    def _arrived(self) -> bool:  # type: ignore[override]
        """An outcome was given already (by :meth:`_set` or :meth:`_arrive`)."""
        return self._claim.locked()

    def ready(self) -> bool:
        """True once the call has finished (successfully or not)."""
        return self._event.is_set()

    def successful(self) -> bool:
        """True if the call returned without raising.

        Raises:
            ValueError: the result is not ready yet.
        """
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        if self._blob is not None:
            self._load()
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready or ``timeout`` seconds pass.

        Interrupted (KeyboardInterrupt), it withdraws the call's remaining work first.
        """
        try:
            self._event.wait(timeout)
        except KeyboardInterrupt:
            if not self._event.is_set():
                self._withdraw()
            raise

    def get(self, timeout: float | None = None) -> Any:
        """Return the result when it arrives; re-raise the call's exception if it raised.

        Raises:
            multiprocessing.TimeoutError: not ready within ``timeout`` seconds.
        """
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._blob is not None:
            self._load()
        if self._success:
            return self._value
        raise self._value

    def _set(self, i: int, obj: Outcome) -> None:
        if not self._claim.acquire(False):  # handed to the waiters already (see _arrive)
            self._pool = None
            return
        self._success, self._value = obj
        self._finish()

    def _arrive(self, ok: bool, blob: Any) -> None:
        """Any thread: the call's outcome came back, pickled (``ok``: a value, else an
        exception).  Unless the result has an outcome already (the manager failed it,
        the pool was terminated), wake the waiters now: the first of them unpickles it.

        Only for a result without callbacks (they run on the manager's thread): a peer's
        session thread hands the result of a lone ``apply`` over this way, which spares it
        the hop through the manager (issue 16).  The manager still resolves the call; its
        ``_set`` of the same result is then a no-op.
        """
        if self._claim.acquire(False):
            self._success, self._blob = ok, blob
            self._event.set()
            self._pool = None  # the waiters have it: nothing needs the pool alive for them

    def _load(self) -> None:
        """Unpickle what :meth:`_arrive` kept (the first waiter to look does, the others
        wait for it; an unreadable result fails as the manager's unpickling fails it)."""
        with self._loading:
            blob = self._blob
            if blob is None:
                return  # another waiter loaded it meanwhile
            self._success, self._value = unpickled(self._success, blob)
            self._blob = None  # last: a waiter that sees None finds the value

    def _finish(self) -> None:
        """Run the callback or error callback, then wake the waiters (even if it raised)."""
        try:
            if self._callback and self._success:
                self._callback(self._value)
            if self._error_callback and not self._success:
                self._error_callback(self._value)
        finally:
            self._event.set()
            self._pool = None

    def _abort(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._set(0, (False, error))

    __class_getitem__ = classmethod(types.GenericAlias)  # type: ignore[var-annotated]


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """The result of ``map_async``/``starmap_async``: one list, in input order."""

    def __init__(self, pool: object, chunksize: int, length: int,
                 callback: Callable[[Any], object] | None,
                 error_callback: Callable[[BaseException], object] | None) -> None:
        ApplyResult.__init__(self, pool, callback, error_callback)
        self._success = True
        self._value = [None] * length
        self._chunksize = chunksize
        if chunksize <= 0:
            self._number_left = 0
            self._event.set()
            self._pool = None
        else:
            self._number_left = length // chunksize + bool(length % chunksize)

    def _set(self, i: int, success_result: Outcome) -> None:
        self._number_left -= 1
        success, result = success_result
        if success and self._success:
            self._value[i * self._chunksize:(i + 1) * self._chunksize] = result
        elif not success and self._success:
            self._success = False  # only the first exception is kept
            self._value = result
        if self._number_left == 0:  # ready only once every chunk is done
            self._finish()

    def _abort(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._number_left = 1
            if self._success:
                self._success, self._value = False, error
            self._set(-1, (False, error))


class IMapIterator(_Result):
    """The iterator ``imap`` returns: results in input order, ``next(timeout)`` as mp."""

    def __init__(self, pool: object) -> None:
        self._pool: object | None = pool
        self._cond = threading.Condition(threading.Lock())
        self._job = next(_job_counter)
        self._items: Deque[Outcome] = collections.deque()
        self._index = 0
        self._length: int | None = None
        self._unsorted: Dict[int, Outcome] = {}

    def __iter__(self) -> IMapIterator:
        return self

    def next(self, timeout: float | None = None) -> Any:
        """The next result, waiting up to ``timeout`` seconds.

        Raises:
            multiprocessing.TimeoutError: nothing arrived in time.
            StopIteration: every result was returned.
        """
        with self._cond:
            if not self._items and self._index != self._length:
                try:
                    self._cond.wait(timeout)
                except KeyboardInterrupt:
                    self._withdraw()  # the caller stopped iterating: stop the work too
                    raise
            try:
                item = self._items.popleft()
            except IndexError:
                if self._index == self._length:
                    self._pool = None
                    raise StopIteration from None
                raise TimeoutError from None
        success, value = item
        if success:
            return value
        raise value

    __next__ = next

    def _set(self, i: int, obj: Outcome) -> None:
        with self._cond:
            if self._index == i:
                self._items.append(obj)
                self._index += 1
                while self._index in self._unsorted:
                    self._items.append(self._unsorted.pop(self._index))
                    self._index += 1
                self._cond.notify()
            else:
                self._unsorted[i] = obj
            if self._index == self._length:
                self._pool = None

    def _set_length(self, length: int) -> None:
        with self._cond:
            self._length = length
            if self._index == self._length:
                self._cond.notify()
                self._pool = None

    def _abort(self, error: BaseException) -> None:
        with self._cond:
            if self._length is None or self._index < self._length:
                self._items.append((False, error))
                self._index += 1
                self._length = self._index
                self._unsorted.clear()
                self._cond.notify_all()
                self._pool = None


class IMapUnorderedIterator(IMapIterator):
    """The iterator ``imap_unordered`` returns: results as they complete."""

    def _set(self, i: int, obj: Outcome) -> None:
        with self._cond:
            self._items.append(obj)
            self._index += 1
            self._cond.notify()
            if self._index == self._length:
                self._pool = None
