"""``p2ppool.ProcessPoolExecutor``: ``concurrent.futures.ProcessPoolExecutor`` on a p2ppool Pool.

``from p2ppool import ProcessPoolExecutor`` replaces ``from concurrent.futures import
ProcessPoolExecutor``.  The executor owns one :class:`~p2ppool.pool.api.Pool` (local processes,
or a cluster's workers) and uses its manager, scheduler and executors unchanged: ``submit``
is an ``apply_async`` whose result object sets a real ``concurrent.futures.Future``, so
``wait``, ``as_completed``, ``add_done_callback`` and ``cancel`` are the standard library's::

    caller threads                    the Pool's manager thread              executors
    ──────────────                    ─────────────────────────              ─────────
    submit(fn, *args, **kwargs) ──┐
      a Future, PENDING           ├─> Inbox ─> one job of one chunk ─> Scheduler
    map(fn, *iterables, ...) ─────┘              │
      one submit per chunk; with                 ├─ Assign: set_running_or_notify_cancel()
      buffersize, read lazily                    │    True: RUNNING, the chunk runs ──────> local
                                                 │    False (cancelled): never sent        processes
                                                 └─ done/lost: set_result/set_exception <─ or peers
    fut.result(), wait(), as_completed() <── the Future's own condition

A future becomes RUNNING when its chunk is handed to a process or a peer (the stdlib's
when it enters the call queue); until then ``cancel()`` succeeds and the chunk never runs.
Callbacks run on the manager thread, as the stdlib runs them on its own.

Where it differs from concurrent.futures (README, "ProcessPoolExecutor"):

* a lost process (SIGKILL, ``os._exit``, a segfault, a lost peer) costs its task one
  attempt: it runs again on a fresh process, and only after ``max_attempts`` losses does
  its future fail, with :class:`~p2ppool.errors.ProcessLost` (a ``BrokenProcessPool``);
  the executor is not broken by it (the stdlib breaks it at the first lost process);
* a failing ``initializer`` is as in the stdlib: the futures fail with
  :class:`~p2ppool.errors.InitializerFailed` (a ``BrokenProcessPool``) and the executor is
  broken: ``submit`` then raises ``BrokenProcessPool``;
* functions and arguments travel with cloudpickle: lambdas and closures work;
* ``map(..., buffersize=N)`` (Python 3.14's) works on every Python.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import multiprocessing
import threading
import time
import weakref
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Deque, Iterable, Iterator, List, Tuple

from .. import payload
from ..errors import BrokenPool, ChunkFailed, InitializerFailed, PoolNotRunning, ProcessLost
from . import manager as pool_manager
from .api import Pool
from .jobs import _Job
from .results import Outcome, _job_counter, _Result

__all__ = ["ProcessPoolExecutor"]


class ProcessPoolExecutor(concurrent.futures.Executor):
    """A drop-in ``concurrent.futures.ProcessPoolExecutor`` whose processes may be peers.

    Args:
        max_workers: processes (default ``os.cpu_count()``); on a cluster, the bound on
            tasks in flight on peers.
        mp_context: a ``multiprocessing`` context for the local processes (default: the
            ``start_method`` option, else ``"spawn"`` when ``max_tasks_per_child`` is
            given, else multiprocessing's default), as concurrent.futures.
        initializer: called as ``initializer(*initargs)`` once in each new process.
        initargs: arguments for ``initializer``.
        max_tasks_per_child: replace a process after it ran this many tasks (default:
            never); not with the ``fork`` start method, as in concurrent.futures.
        **options: p2ppool options (``cluster="alice/friends"``, ``fallback=None``,
            ``progress=True``, ``max_attempts=3``, ...), which override ``P2PPOOL_*``
            environment variables and the config file.  ``progress=True`` draws one bar
            for the executor: tasks done of tasks submitted so far.

    Raises:
        ValueError: ``max_workers <= 0``, ``max_tasks_per_child <= 0``, or
            ``max_tasks_per_child`` with the ``fork`` start method.
        TypeError: ``initializer`` is not callable, ``max_tasks_per_child`` is not an
            integer, or an unknown option.
        p2ppool.ConfigError: an option has a bad value.
    """

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 initializer: Callable[..., object] | None = None, initargs: Iterable[Any] = (),
                 *, max_tasks_per_child: int | None = None, **options: Any) -> None:
        self._pool: Pool | None = None  # first, so a failed __init__ leaves nothing to stop
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        from ..config import resolve_options

        resolved = resolve_options(options)
        if mp_context is None:
            if resolved.start_method is not None:
                mp_context = multiprocessing.get_context(resolved.start_method)
            elif max_tasks_per_child is not None:
                mp_context = multiprocessing.get_context("spawn")
            else:
                mp_context = multiprocessing.get_context()
        if max_tasks_per_child is not None and mp_context.get_start_method() == "fork":
            # As concurrent.futures (gh-90622), so that code moving between the two behaves
            # the same.
            raise ValueError("max_tasks_per_child is incompatible with the 'fork' "
                             "multiprocessing start method; supply a different mp_context.")
        self._mp_context = mp_context
        self._lock = threading.Lock()  # submit against shutdown
        self._shutdown = False
        self._state = _ExecutorState()
        pool = Pool(max_workers, _Initializer(initializer) if initializer else None,
                    tuple(initargs), max_tasks_per_child, mp_context, **options)
        self._pool = pool
        self._max_workers = pool._processes  # as the stdlib's (os.cpu_count() by default)
        manager = pool._manager
        assert manager is not None
        manager.finish_at_exit = True
        self._bar = _SharedBar() if resolved.progress else None
        # Dropped without shutdown(): the work submitted still runs to its end (as the
        # stdlib's), then the processes go; the Pool is never left running unclosed.
        self._finalizer = weakref.finalize(self, pool.close)

    def __repr__(self) -> str:
        if self._pool is None:  # __init__ failed
            return super().__repr__()
        cls = type(self)
        state = "shutdown" if self._shutdown else "broken" if self._state.broken else "running"
        return f"<{cls.__module__}.{cls.__qualname__} {state} max_workers={self._max_workers}>"

    def __reduce__(self) -> Any:
        raise NotImplementedError("executors cannot be passed between processes or pickled")

    # --- the concurrent.futures API -----------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
               ) -> concurrent.futures.Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; return a ``concurrent.futures.Future`` of it.

        Raises:
            RuntimeError: after :meth:`shutdown` (or once the interpreter is exiting).
            BrokenProcessPool: the initializer failed (:class:`~p2ppool.InitializerFailed`).
        """
        return self._submit(fn, payload.APPLY, (args, kwargs or None), 1)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1, buffersize: int | None = None) -> Iterator[Any]:
        """Like ``map(fn, *iterables)``, computed in the pool; results come in order.

        Args:
            fn: called as ``fn(*args)`` with one item of each iterable.
            timeout: seconds from this call until every result must be there, else the
                iterator raises ``TimeoutError`` (the calls not yet done are cancelled).
            chunksize: items per task sent to a process (>= 1).
            buffersize: at most this many tasks (chunks) submitted and not yet yielded;
                the input is then read lazily, as results are taken (Python 3.14's
                ``buffersize``).  None: every task is submitted at once.

        Raises:
            ValueError: ``chunksize < 1`` or ``buffersize < 1``.
            TypeError: ``buffersize`` is not an integer.
            RuntimeError: after :meth:`shutdown`.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None:
            if not isinstance(buffersize, int) or isinstance(buffersize, bool):
                raise TypeError("buffersize must be an integer or None")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        end_time = None if timeout is None else timeout + time.monotonic()
        chunks = _chunks(zip(*iterables), chunksize)
        submit_chunk = self._chunk_submitter(fn, chunksize)
        futures: Deque[concurrent.futures.Future[Any]] = collections.deque(
            submit_chunk(chunk) for chunk in
            (itertools.islice(chunks, buffersize) if buffersize else chunks)
        )
        executor_ref = weakref.ref(self)
        return _results(futures, chunks, executor_ref, fn, chunksize, buffersize, end_time)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; free the processes once the submitted work is done.

        Args:
            wait: block until the submitted work is done and the processes are gone.
            cancel_futures: first cancel every future that has not started running.
        """
        with self._lock:
            self._shutdown = True
        pool = self._pool
        if pool is None:
            return
        manager = pool._manager
        if manager is not None:
            try:
                if cancel_futures:
                    manager.inbox.post(manager.cancel_unstarted)
                if self._bar is not None:
                    manager.inbox.post(self._bar.shut_down)
            except PoolNotRunning:
                pass  # its manager has already exited
        pool.close()
        if wait:
            pool.join()

    # --- internals --------------------------------------------------------------------------

    def _submit(self, fn: Callable[..., Any], how: int, items: Any, size: int
                ) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._state.broken is not None:
                raise BrokenProcessPool(self._state.broken)
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if pool_manager._exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            pool = self._pool
            assert pool is not None
            try:
                manager = pool._check_running()
            except PoolNotRunning:
                raise RuntimeError("cannot schedule new futures after shutdown") from None
            except BrokenPool as exc:
                raise BrokenProcessPool(str(exc)) from exc
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            result = _FutureResult(pool, future, self._state)
            job = _Job(fn, how, result, 1, self._bar)
            job.on_start = result._start
            try:
                if self._bar is not None:
                    manager.inbox.post(self._bar.add, size)
                manager.inbox.post(manager.submit, job, [(items, size)])
            except PoolNotRunning:
                raise RuntimeError("cannot schedule new futures after shutdown") from None
        return future

    def _chunk_submitter(self, fn: Callable[..., Any], chunksize: int
                         ) -> Callable[[Tuple[Any, ...]], concurrent.futures.Future[Any]]:
        """A function that submits one chunk of ``map``'s argument tuples."""
        if chunksize == 1:  # fn(*args) itself, one task per item (no list around it)
            return lambda chunk: self._submit(fn, payload.APPLY, (chunk[0], None), 1)
        return lambda chunk: self._submit(fn, payload.STARMAP, chunk, len(chunk))


class _ExecutorState:
    """What the executor's futures share with it (not the executor itself, which may go)."""

    __slots__ = ("broken",)

    def __init__(self) -> None:
        self.broken: str | None = None  # why the executor is broken (sticky), or None


class _FutureResult(_Result):
    """The Pool-side result of one executor task: it sets a ``concurrent.futures.Future``.

    The manager thread calls :meth:`_start` when the task's chunk is about to run,
    :meth:`_set` with its outcome and :meth:`_abort` when the pool stops.
    """

    def __init__(self, pool: Pool, future: concurrent.futures.Future[Any],
                 state: _ExecutorState) -> None:
        self._pool: Pool | None = pool  # keeps the pool alive while the task is pending
        self._job = next(_job_counter)
        self._future = future
        self._state = state
        self._started = False

    def _start(self) -> bool:
        """The chunk is about to run: RUNNING, or False if the future was cancelled."""
        if self._started:  # again, after its process or peer was lost
            return not self._future.cancelled()
        self._started = True
        return self._future.set_running_or_notify_cancel()

    def _cancel(self) -> bool:
        return not self._started and self._future.cancel()

    def _set(self, i: int, obj: Outcome) -> None:
        self._pool = None
        ok, value = obj
        future = self._future
        if future.done():  # cancelled before it started
            return
        try:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(self._translated(value))
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile (it never ran)

    def _abort(self, error: BaseException) -> None:
        self._set(0, (False, error))

    def _translated(self, error: BaseException) -> BaseException:
        """The stdlib's types for the two failures concurrent.futures code catches."""
        if type(error) is ChunkFailed:  # every attempt lost its process or peer
            lost = ProcessLost(error.chunk_id, error.attempts, error.causes)
            lost.__cause__ = error.__cause__
            return lost
        if isinstance(error, InitializerFailed) and self._state.broken is None:
            self._state.broken = (
                f"a process of the pool failed in its initializer ({error}); the pool "
                f"is not usable anymore")
        return error


class _Initializer:
    """The user's initializer, with its failure marked as the initializer's (a picklable
    wrapper: it travels to local processes and to peers with the user's function)."""

    def __init__(self, initializer: Callable[..., object]) -> None:
        self.initializer = initializer

    def __call__(self, *initargs: Any) -> None:
        try:
            self.initializer(*initargs)
        except BaseException as exc:
            name = getattr(self.initializer, "__qualname__", repr(self.initializer))
            raise InitializerFailed(f"the initializer {name} raised {exc!r}") from exc


class _SharedBar:
    """``progress=True``: one bar for the whole executor, tasks done of tasks submitted.

    Every job's ``progress`` is this object; the manager thread (the only caller) counts
    finished items into it and closes it per job, which it ignores until the executor is
    shut down and no job is left.
    """

    def __init__(self) -> None:
        self._bar: Any = None
        self._open_jobs = 0
        self._shut_down = False

    def add(self, items: int) -> None:
        """A task of ``items`` items was submitted (posted before its job)."""
        if self._bar is None:
            from .progress import ProgressBar

            self._bar = ProgressBar(0)
        self._bar.add_total(items)
        self._open_jobs += 1

    def update(self, items: int) -> None:
        if self._bar is not None:
            self._bar.update(items)

    def set_workers(self, peers: int, local_slots: int) -> None:
        if self._bar is not None:
            self._bar.set_workers(peers, local_slots)

    def close(self) -> None:
        self._open_jobs -= 1
        self._maybe_close()

    def shut_down(self) -> None:
        self._shut_down = True
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self._shut_down and self._open_jobs <= 0 and self._bar is not None:
            self._bar.close()


def _chunks(args: Iterator[Tuple[Any, ...]], chunksize: int) -> Iterator[Tuple[Any, ...]]:
    """``map``'s argument tuples, ``chunksize`` at a time (each one alone for 1)."""
    if chunksize == 1:
        return ((one,) for one in args)
    return iter(lambda: tuple(itertools.islice(args, chunksize)), ())


def _results(futures: Deque[concurrent.futures.Future[Any]], chunks: Iterator[Tuple[Any, ...]],
             executor_ref: Callable[[], ProcessPoolExecutor | None], fn: Callable[..., Any],
             chunksize: int, buffersize: int | None, end_time: float | None) -> Iterator[Any]:
    """``map``'s result iterator: in order; with ``buffersize``, one more chunk submitted
    per chunk taken (the stdlib's, Python 3.14).  A generator, so that every task is
    submitted before the first result is asked for."""
    try:
        futures.reverse()  # pop() from the right: the oldest first
        while futures:
            if buffersize and (executor := executor_ref()) is not None:
                chunk = next(chunks, None)
                if chunk is not None:
                    futures.appendleft(executor._chunk_submitter(fn, chunksize)(chunk))
                del executor
            timeout = None if end_time is None else end_time - time.monotonic()
            if chunksize == 1:
                yield _result_or_cancel(futures.pop(), timeout)
                continue
            values: List[Any] = _result_or_cancel(futures.pop(), timeout)
            values.reverse()
            while values:
                yield values.pop()  # keep no reference to what was yielded
    finally:
        for future in futures:
            future.cancel()


def _result_or_cancel(future: concurrent.futures.Future[Any], timeout: float | None) -> Any:
    try:
        try:
            return future.result(timeout)
        finally:
            future.cancel()
    finally:
        del future  # break the cycle through a raised exception's traceback
