"""``p2ppool.Pool``: ``multiprocessing.Pool``'s API, run by one manager thread and a scheduler.

Data flow (who touches what)::

    caller threads                 manager thread (one per Pool)              executors
    ──────────────                 ─────────────────────────────              ─────────
    apply_async/map_async ─┐
                           ├─> Inbox ──wake pipe──> run():                   "local":
    imap feeder thread ────┘   (deque of calls)       wait(readables +        ProcessEngine
      (reads the iterable         ^                   wake pipe, timeout =    child processes
       lazily, a bounded          │                   next deadline)          (bytes in/out)
       number of chunks ahead)    │                   │                          ^   │
                                  │                   ├─ Scheduler.got_chunk ─> Assign ┘
    issue 4: remote sessions ─────┘                   ├─ executor.collect() <─────────┘
      post their events here                          ├─ Scheduler.got_result -> Resolve
                                                      └─ result._set(): callbacks, then
    AsyncResult.get() <── threading.Event ──────────────  Event.set(); progress bar update

The manager is the only owner of the scheduler and job state, so nothing there needs a lock.
Callers only append to the inbox and, if the manager sleeps, write one byte to the wake
pipe.  Results are handed over (callbacks, then the waiter's Event) last in each turn, just
before the manager blocks again, so a woken caller finds the interpreter lock free.  One
shortcut (issue 16): an ``apply`` without callbacks or progress bar that runs on a peer
gets its result, still pickled, from the session's reactor thread (``ApplyResult._arrive``),
and its caller unpickles it; the manager's turn follows, and its own delivery is then a
no-op.  The thread holds the Pool through a weak reference; an exit hook terminates pools
left open, so interpreter exit never hangs (as ``multiprocessing`` terminates them at exit).

Executors are the seam for remote peers: anything with the
:class:`~p2ppool.pool.executors.Executor` methods can be added with
:meth:`~p2ppool.pool.manager._Manager.add_executor` and is fed by the same scheduler; threads
that serve a remote session post their events with :meth:`~p2ppool.pool.inbox.Inbox.post`
(or call :meth:`~p2ppool.pool.manager.Inbox.wake` and let
:meth:`~p2ppool.pool.executors.Executor.collect` report them), like any caller.

A lost local process (SIGKILL, ``os._exit``, a segfault) costs its chunk one attempt: the
chunk runs again on a fresh process, up to ``max_attempts`` (default
:data:`~p2ppool.defaults.MAX_ATTEMPTS`), then fails with :class:`~p2ppool.errors.ChunkFailed`
naming every exit (``"local: process 123 died with SIGKILL(-9)"``).  multiprocessing waits
forever in that case; concurrent.futures breaks the whole pool.

An imap over a list, tuple or range needs no feeder thread: reading those runs no user code
and never blocks, so the manager reads them itself, as far ahead as the feeder would.

Where each piece lives: this module has the public :class:`Pool` (the API, argument checks,
imap's feeder thread); :mod:`~p2ppool.pool.manager` the manager thread, its inbox and the exit
hook; :mod:`~p2ppool.pool.jobs` the manager's job and chunk records;
:mod:`~p2ppool.pool.executors` the executors; :mod:`~p2ppool.pool.results` the result objects.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
import warnings
import weakref
from typing import (
    Any,
    Callable,
    Iterable,
    Iterator,
    List,
    Mapping,
    Sequence,
    Tuple,
)

from .. import payload
from ..errors import PoolNotRunning
from ..execution.engine import ProcessEngine
from . import chunking
from .executors import LocalExecutor
from .jobs import _Job
from .manager import CLOSE, RUN, TERMINATE, _live_managers, _Manager, _terminate_manager
from .results import (
    ApplyResult,
    AsyncResult,
    IMapIterator,
    IMapUnorderedIterator,
    MapResult,
)

__all__ = ["AsyncResult", "IMapIterator", "IMapUnorderedIterator", "MapResult", "Pool"]


# --- the Pool ----------------------------------------------------------------------------------


class Pool:
    """A process pool with ``multiprocessing.Pool``'s API; functions travel with cloudpickle.

    Args:
        processes: number of worker processes (default ``os.cpu_count()``).
        initializer: called as ``initializer(*initargs)`` once in each new process.
        initargs: arguments for ``initializer``.
        maxtasksperchild: replace a process after it ran this many tasks (default: never).
        context: a ``multiprocessing`` context for the processes (default: the
            ``start_method`` option, else multiprocessing's default).
        **options: p2ppool options (``progress=True``, ``start_method="spawn"``, ...), which
            override ``P2PPOOL_*`` environment variables and the config file.

    Raises:
        ValueError: ``processes < 1`` or a bad ``maxtasksperchild``.
        TypeError: ``initializer`` is not callable, or an unknown option.
        p2ppool.ConfigError: an option has a bad value.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        **options: Any,
    ) -> None:
        self._state = "INIT"  # first, so __del__ works if __init__ raises
        self._manager: _Manager | None = None
        from ..config import resolve_options

        self._options = resolve_options(options)
        if processes is None:
            processes = os.cpu_count() or 1
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None:
            if not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if context is None:
            context = multiprocessing.get_context(self._options.start_method)
        self._ctx = context
        self._processes = processes
        init_blob = payload.dumps((initializer, tuple(initargs))) if initializer else None

        def local_executor() -> LocalExecutor:
            return LocalExecutor(ProcessEngine(processes, init_blob, maxtasksperchild, context))

        if self._options.cluster is None:
            manager = _Manager(self, [local_executor()], self._options.max_attempts,
                               self._options.task_timeout)
        else:
            # Peers first; the local engine only when none answers in time (cluster.link).
            from ..cluster.link import ClusterLink

            manager = _Manager(self, [], self._options.max_attempts,
                               self._options.task_timeout)
            manager.link = ClusterLink(self._options, processes, init_blob, maxtasksperchild,
                                       manager.inbox.wake, local_executor)
        self._manager = manager
        _live_managers.add(manager)
        manager.thread.start()
        # On garbage collection (nothing refers to the pool, no result pending): terminate.
        self._finalizer = weakref.finalize(self, _terminate_manager, manager)
        self._state = RUN

    # --- state ------------------------------------------------------------------------------

    def __repr__(self) -> str:
        cls = type(self)
        return (f"<{cls.__module__}.{cls.__qualname__} state={self._state} "
                f"pool_size={self._processes}>")

    def __del__(self, _warn: Callable[..., None] = warnings.warn, RUN: str = RUN) -> None:
        if getattr(self, "_state", None) == RUN:
            _warn(f"unclosed running p2ppool pool {self!r}", ResourceWarning, source=self)

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.terminate()

    def _check_running(self) -> _Manager:
        manager = self._manager
        if self._state != RUN or manager is None:
            raise PoolNotRunning()
        if manager.broken is not None:
            raise manager.broken
        return manager

    # --- the multiprocessing API ----------------------------------------------------------------

    def apply(self, func: Callable[..., Any], args: Iterable[Any] = (),
              kwds: Mapping[str, Any] = {}) -> Any:  # noqa: B006 - mirrors multiprocessing
        """Call ``func(*args, **kwds)`` in a worker process and return its result."""
        manager, result, job, chunks = self._apply_job(func, args, kwds, None, None)
        return _submit_and_get(manager, result, job, chunks)

    def apply_async(self, func: Callable[..., Any], args: Iterable[Any] = (),
                    kwds: Mapping[str, Any] = {},  # noqa: B006
                    callback: Callable[[Any], object] | None = None,
                    error_callback: Callable[[BaseException], object] | None = None,
                    ) -> ApplyResult:
        """Like :meth:`apply`, but return an :class:`AsyncResult` at once.

        ``callback(value)`` or ``error_callback(exception)`` runs (in the pool's manager
        thread) before the result becomes ready.
        """
        manager, result, job, chunks = self._apply_job(func, args, kwds, callback,
                                                       error_callback)
        manager.inbox.post(manager.submit, job, chunks)
        return result

    def _apply_job(self, func: Callable[..., Any], args: Iterable[Any],
                   kwds: Mapping[str, Any], callback: Callable[[Any], object] | None,
                   error_callback: Callable[[BaseException], object] | None,
                   ) -> Tuple[_Manager, ApplyResult, _Job, List[Tuple[Any, int]]]:
        """An apply's result, job and its one chunk, not submitted yet."""
        manager = self._check_running()
        result = ApplyResult(self, callback, error_callback)
        job = _Job(func, payload.APPLY, result, 1)
        return manager, result, job, [((tuple(args), dict(kwds) if kwds else None), 0)]

    def map(self, func: Callable[[Any], Any], iterable: Iterable[Any],
            chunksize: int | None = None) -> List[Any]:
        """``list(map(func, iterable))``, computed in worker processes in chunks."""
        return self._map(func, iterable, payload.MAP, chunksize)

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None) -> List[Any]:
        """Like :meth:`map`, but each item is unpacked as arguments: ``func(*item)``."""
        return self._map(func, iterable, payload.STARMAP, chunksize)

    def map_async(self, func: Callable[[Any], Any], iterable: Iterable[Any],
                  chunksize: int | None = None,
                  callback: Callable[[Any], object] | None = None,
                  error_callback: Callable[[BaseException], object] | None = None,
                  ) -> MapResult:
        """Like :meth:`map`, but return a :class:`MapResult` at once."""
        return self._map_async(func, iterable, payload.MAP, chunksize, callback, error_callback)

    def starmap_async(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                      chunksize: int | None = None,
                      callback: Callable[[Any], object] | None = None,
                      error_callback: Callable[[BaseException], object] | None = None,
                      ) -> MapResult:
        """Like :meth:`starmap`, but return a :class:`MapResult` at once."""
        return self._map_async(func, iterable, payload.STARMAP, chunksize, callback,
                               error_callback)

    def _map(self, func: Callable[..., Any], iterable: Iterable[Any], how: int,
             chunksize: int | None) -> List[Any]:
        manager, result, job, chunks = self._map_job(func, iterable, how, chunksize, None, None)
        return _submit_and_get(manager, result, job, chunks)  # type: ignore[no-any-return]

    def _map_async(self, func: Callable[..., Any], iterable: Iterable[Any], how: int,
                   chunksize: int | None = None,
                   callback: Callable[[Any], object] | None = None,
                   error_callback: Callable[[BaseException], object] | None = None,
                   ) -> MapResult:
        manager, result, job, chunks = self._map_job(func, iterable, how, chunksize, callback,
                                                     error_callback)
        manager.inbox.post(manager.submit, job, chunks)
        return result

    def _map_job(self, func: Callable[..., Any], iterable: Iterable[Any], how: int,
                 chunksize: int | None, callback: Callable[[Any], object] | None,
                 error_callback: Callable[[BaseException], object] | None,
                 ) -> Tuple[_Manager, MapResult, _Job, List[Tuple[Any, int]]]:
        """A map's result, job and chunks, not submitted yet."""
        manager = self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        items: Sequence[Any] = iterable  # type: ignore[assignment]
        if chunksize is None:
            chunksize = chunking.default_chunksize(len(items), self._processes)
        elif len(items):
            chunksize = chunking.validate_chunksize(chunksize)
        if len(items) == 0:
            chunksize = 0
        result = MapResult(self, chunksize, len(items), callback, error_callback)
        chunks = chunking.split(items, chunksize) if chunksize else []
        job = _Job(func, how, result, len(chunks), self._progress(len(items)))
        return manager, result, job, [(c, len(c)) for c in chunks]

    def imap(self, func: Callable[[Any], Any], iterable: Iterable[Any],
             chunksize: int = 1) -> Iterator[Any]:
        """Like :meth:`map`, but lazy: results come in order as they are ready.

        The input is read as work is handed out (a few chunks ahead), not all at once.
        """
        return self._imap(IMapIterator, func, iterable, chunksize)

    def imap_unordered(self, func: Callable[[Any], Any], iterable: Iterable[Any],
                       chunksize: int = 1) -> Iterator[Any]:
        """Like :meth:`imap`, but results come in the order they finish."""
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize)

    def _imap(self, kind: type, func: Callable[[Any], Any], iterable: Iterable[Any],
              chunksize: int) -> Iterator[Any]:
        manager = self._check_running()
        if chunksize != 1:
            chunksize = chunking.validate_chunksize(chunksize)
        result = kind(self)
        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
        how = payload.APPLY if chunksize == 1 else payload.MAP
        job = _Job(func, how, result, None, self._progress(total))
        try:
            if type(iterable) in _PLAIN_SEQUENCES:
                # Reading these runs no user code and never blocks: the manager reads them
                # itself as results come back, without a feeder thread (whose start costs
                # about 0.3 ms of the first result).
                job.reader = chunking.ChunkReader(iterable, chunksize)
                manager.inbox.post(manager.start_stream, job)
            else:
                job.slots = queue.SimpleQueue()  # start_stream puts the read-ahead tokens
                manager.inbox.post(manager.start_stream, job)
                feeder = threading.Thread(
                    target=_feed, args=(manager, job, iterable, chunksize),
                    name=f"p2ppool-imap-feeder-{job.job_id}", daemon=True,
                )
                feeder.start()
        except KeyboardInterrupt:
            # Landed after the stream was posted (inside post's wake-up, or before the feeder
            # ran): the caller never gets the iterator, so nobody else would withdraw it.
            result._withdraw()
            raise
        if chunksize == 1:
            return result  # type: ignore[no-any-return]
        return (item for chunk in result for item in chunk)

    def _progress(self, total: int | None) -> Any:
        if not self._options.progress:
            return None
        from .progress import ProgressBar

        return ProgressBar(total)

    # --- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Take no more work; processes exit once the submitted work is done."""
        if self._state == RUN and self._manager is not None:
            self._state = CLOSE
            try:
                self._manager.inbox.post(self._manager.close)
            except PoolNotRunning:
                pass  # its manager has exited (terminated by the exit hook or a failure)

    def terminate(self) -> None:
        """Stop the processes now; unfinished work is dropped (its results fail with
        :class:`~p2ppool.errors.BrokenPool`)."""
        self._state = TERMINATE
        if self._manager is not None:
            _terminate_manager(self._manager)

    def join(self) -> None:
        """Wait until the processes have exited (after :meth:`close` or :meth:`terminate`).

        Raises:
            ValueError: the pool is still running.
        """
        if self._state == RUN:
            raise ValueError("Pool is still running")
        if self._state not in (CLOSE, TERMINATE):
            raise ValueError("In unknown state")
        if self._manager is not None and self._manager.thread is not threading.current_thread():
            self._manager.thread.join()


def _submit_and_get(manager: _Manager, result: ApplyResult, job: _Job,
                    chunks: List[Tuple[Any, int]]) -> Any:
    """Post a job and wait for its result (``apply``, ``map``, ``starmap``).

    A KeyboardInterrupt can land between any two bytecodes: after the job was posted but
    before ``get`` waits (inside ``post``, on the way to ``get``), not only in the wait,
    which withdraws the job itself.  Landing there, it withdraws the job too; else the
    job's chunks would keep the pool's slots, and the next call wait behind them.  (One
    that lands before the post withdraws a job the manager never sees: a no-op.)
    """
    try:
        manager.inbox.post(manager.submit, job, chunks)
        return result.get()
    except KeyboardInterrupt:
        if not result.ready():
            result._withdraw()
        raise


#: Inputs whose iteration runs no user code and never blocks (the manager reads them).
_PLAIN_SEQUENCES = (list, tuple, range)


def _feed(manager: _Manager, job: _Job, iterable: Iterable[Any], chunksize: int) -> None:
    """imap's feeder thread: read the input lazily, a bounded number of chunks ahead.

    It blocks for one free read-ahead slot, then takes every other free slot without
    blocking, and posts what it read as one batch (one wake-up of the manager).
    """
    slots = job.slots
    assert slots is not None
    # Let the caller, blocked in Thread.start() until we run, have the interpreter lock
    # back first: otherwise it can wait out a whole switch interval (5 ms) behind us.
    time.sleep(0)
    reader = chunking.ChunkReader(iterable, chunksize)
    post = manager.inbox.post
    try:
        while manager.state != TERMINATE:
            slots.get()
            if job.failed:
                return  # withdrawn (or failed as a whole): read no more of the input
            batch: List[Tuple[int, Any, int]] = []
            error: Tuple[int, BaseException] | None = None
            more = True
            while more and manager.state != TERMINATE:
                found = reader.next_chunk()
                if found is None:
                    slots.put(None)
                    break
                index, chunk = found
                if isinstance(chunk, chunking.InputError):
                    error = (index, chunk.error)
                    break
                # chunksize 1 calls func(item) directly, as multiprocessing does (no list)
                items = ((chunk[0],), None) if chunksize == 1 else chunk
                batch.append((index, items, len(chunk)))
                try:
                    slots.get_nowait()
                except queue.Empty:
                    more = False
            if batch:
                post(manager.got_stream_chunks, job, batch)
            if error is not None:
                post(manager.got_stream_error, job, *error)
            if reader.exhausted or manager.state == TERMINATE:
                break
        post(manager.got_stream_end, job, reader.count)
    except PoolNotRunning:
        return  # the manager has exited and failed this job already
    except BaseException as exc:  # pragma: no cover - ChunkReader turns input errors into data
        try:
            post(manager.got_stream_error, job, reader.count, exc)
            post(manager.got_stream_end, job, reader.count + 1)
        except PoolNotRunning:
            pass
