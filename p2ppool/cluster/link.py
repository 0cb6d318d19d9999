"""The Pool's manager side of a cluster: remote sessions as executors, and local fallback.

A Pool with a cluster configured starts with no executor at all.  :class:`ClusterLink`
owns a :class:`~p2ppool.cluster.backend.ClusterBackend` (which recruits workers on the board and
runs one wormhole session per worker) and turns its events into the manager's language::

    ClusterBackend events                  manager
    ─────────────────────                  ───────
    ExecutorJoined(id, name, slots)        add_executor(RemoteExecutor(id))  -> scheduler slots
    RemoteTaskDone(id, task, ok, blob)     ChunkDone(chunk, ok, blob)        -> result
      (a batch: BatchDone(chunks, ok, blob), which the manager splits)
    RemoteTaskLost(id, task, retry=True)   ChunkLost(chunk, cause)           -> runs elsewhere
    RemoteTaskLost(id, task, retry=False)  TaskLimitExceeded(cause)          -> that chunk fails
      (a batch: ChunkLost for each of its chunks, uncharged: they run again one by one)
    ExecutorLost(id, cause)                executor_lost(id, cause)          -> chunks requeued
      (released=True: the pool was idle and another job wanted slots; logged as info)
    TaskUnloadable(id, task, ...)          executor_lost(id, charged=False)  -> chunks requeued
      (the worker lacks a module the job needs: declined, its chunks cost no attempt)
    BoardTrouble(message)            a log line

Capability misses: when every worker the job has heard of was declined for lacking a
module, the pool does not wait for one that can: it falls back to local processes at once
(``fallback`` set), or fails its pending work with an ImportError that names the module and
each worker that lacked it (``fallback=None``).

Task ids on the wire are the Pool's chunk ids.  Local fallback: when the pool has work and
no executor at all for ``fallback`` seconds, the link adds the local process engine, and
peers that arrive later join in beside it.  ``fallback=None`` never falls back: the work
waits for peers (``AsyncResult.get(timeout)`` bounds the wait).

Progress: while the pool has work, every job's progress bar shows ``peers=P local=K`` (the
worker sessions, and the local processes once fallback started), redrawn when it changes.

Everything here runs on the manager thread, except ``notify`` (any thread).
"""

from __future__ import annotations

import collections
import itertools
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Hashable, List, Sequence

from .. import defaults
from ..config import Options
from ..errors import P2PPoolError, TaskLimitExceeded
from ..pool.executors import (
    BatchDone,
    BatchLedger,
    ChunkDone,
    ChunkLost,
    Deliver,
    batch_lost,
)
from .backend import (
    BoardTrouble,
    ClusterBackend,
    ExecutorJoined,
    ExecutorLost,
    RemoteTaskDone,
    RemoteTaskLost,
    TaskUnloadable,
)

if TYPE_CHECKING:
    from ..pool.executors import ExecutorEvent, ExecutorHost

__all__ = ["ClusterLink", "PrefetchRule", "RemoteExecutor"]

log = logging.getLogger("p2ppool.pool")


class RemoteExecutor:
    """One worker session, as the manager's :class:`~p2ppool.pool.executors.Executor`.

    Its events arrive through the :class:`ClusterLink`, so it has nothing to wait on.

    Prefetch (issue 16): while the session's recent tasks come back within
    ``REMOTE_PREFETCH_BELOW_S`` on average, the scheduler may keep
    ``REMOTE_TASKS_PREFETCH`` more tasks than its slots in flight there (the worker holds
    them behind the running ones, within its ``WORKER_TASKS_PREFETCH``), so that a small
    map costs about one round trip per worker rather than one per chunk.  A slow task stops
    it at once (see :class:`PrefetchRule`).

    Batches (issue 16): when the worker runs them (``Ready.batches``) and the pool sets no
    ``maxtasksperchild`` (a batch counts as one task there), several chunks of a map go as
    one Task whose id is the first chunk's; its one Result carries every chunk's outcome,
    and becomes one :class:`~p2ppool.pool.executors.BatchDone` that the manager splits.  A
    batch that fails as a whole (lost, a limit hit, a result that does not pickle) loses its
    chunks without charge: they run again one by one, which gives each the outcome it would
    have had alone.
    """

    def __init__(self, link: ClusterLink, executor_id: str, worker: str, slots: int,
                 batches: bool = False) -> None:
        self.name = executor_id
        self.worker = worker
        self._slots = slots
        self._link = link
        self.prefetch = PrefetchRule(slots)
        self._sent_at: Dict[int, float] = {}  # chunk id (a batch's first) -> when it was sent
        self._width = slots if batches and link.maxtasksperchild is None else 0
        self._batches = BatchLedger()  # a batch's task id is its first chunk's

    def slots(self) -> int:
        return self.prefetch.capacity

    def readables(self) -> List[Any]:
        return _NOTHING

    def has_events(self) -> bool:
        return False

    def next_deadline(self) -> float | None:
        return None

    def run(self, chunk_id: int, func_key: Hashable, func_blob: bytes, call_blob: bytes,
            deliver: Deliver | None = None) -> None:
        self._sent_at[chunk_id] = time.monotonic()
        self._link.backend.submit(
            self.name, chunk_id, self._link.func_key(func_blob), func_blob, call_blob, deliver
        )

    def batch_width(self) -> int:
        return self._width

    def run_batch(self, chunk_ids: Sequence[int], func_key: Hashable, func_blob: bytes,
                  batch_blob: bytes) -> None:
        self._batches.add(chunk_ids[0], chunk_ids)
        self.run(chunk_ids[0], func_key, func_blob, batch_blob)

    def cancel(self, chunk_ids: Sequence[int]) -> None:
        tasks = []
        for chunk_id in chunk_ids:
            batched, task_id = self._batches.withdraw(chunk_id)
            if not batched:
                task_id = chunk_id
            if task_id is not None:
                self._sent_at.pop(task_id, None)
                tasks.append(task_id)
        if tasks:
            self._link.backend.cancel(self.name, tasks)

    def split(self, task_id: int) -> List[int] | None:
        """The chunks of batch ``task_id`` (forgotten now), or None: not a batch."""
        return self._batches.finished(task_id)

    def finished(self, chunk_id: int, now: float) -> bool:
        """A task came back: True when the capacity changed (tell the scheduler)."""
        sent = self._sent_at.pop(chunk_id, None)
        if sent is None:
            return False
        return self.prefetch.took(now - sent)

    def collect(self, ready: Sequence[Any] | None) -> List[ExecutorEvent]:
        return []

    # The link closes or terminates the backend, which ends every session at once.
    def close(self) -> None:
        pass

    def join(self, timeout: float) -> None:
        pass

    def terminate(self) -> None:
        pass


class PrefetchRule:
    """How many tasks one worker session may have in flight (pure; see RemoteExecutor).

    ``slots`` at first and after any slow task; ``slots + REMOTE_TASKS_PREFETCH`` while
    the moving average of the round trips is below ``REMOTE_PREFETCH_BELOW_S`` and the
    last one was too.
    """

    __slots__ = ("slots", "extra", "below_s", "average", "capacity")

    def __init__(self, slots: int, extra: int = defaults.REMOTE_TASKS_PREFETCH,
                 below_s: float = defaults.REMOTE_PREFETCH_BELOW_S) -> None:
        self.slots = slots
        self.extra = max(0, min(extra, defaults.WORKER_TASKS_PREFETCH))
        self.below_s = below_s
        self.average: float | None = None
        self.capacity = slots

    def took(self, seconds: float) -> bool:
        """One task's round trip; True when :attr:`capacity` changed."""
        avg = self.average
        self.average = seconds if avg is None else 0.75 * avg + 0.25 * seconds
        short = seconds < self.below_s and self.average < self.below_s
        capacity = self.slots + (self.extra if short else 0)
        changed, self.capacity = capacity != self.capacity, capacity
        return changed


_NOTHING: List[Any] = []


class ClusterLink:
    """Connects one Pool's manager to its cluster (see the module docstring).

    Args:
        options: the Pool's resolved options (``cluster`` is set).
        max_slots: the most chunks the pool keeps in flight on peers (``processes``).
        initializer_blob: the pickled ``(initializer, initargs)``, or None.
        maxtasksperchild: as for multiprocessing.
        notify: wakes the manager thread; must return at once.
        start_local: makes the local executor for fallback (called at most once).
        backend: a ready-made backend (tests); default: a new ClusterBackend.
    """

    def __init__(
        self,
        options: Options,
        max_slots: int,
        initializer_blob: bytes | None,
        maxtasksperchild: int | None,
        notify: Callable[[], None],
        start_local: Callable[[], Any],
        backend: ClusterBackend | None = None,
    ) -> None:
        self.options = options
        self.job_id = secrets.token_hex(6)
        self.backend = backend or ClusterBackend(
            options, self.job_id, max_slots, initializer_blob, maxtasksperchild, notify
        )
        self.max_slots = max_slots
        self.maxtasksperchild = maxtasksperchild
        self._start_local = start_local
        self._func_keys: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        self._next_func_key = itertools.count(1)
        self._demand = 0
        self._fallback_at: float | None = None
        self.local_started = False
        self.remote_names: Dict[str, str] = {}  # executor id -> worker name
        #: worker -> the load failure that made this job decline it
        self.misses: Dict[str, TaskUnloadable] = {}
        self.backend.start()

    def func_key(self, func_blob: bytes) -> int:
        """A small number for a pickled function, the same for the same bytes.

        Only the last ``CLUSTER_FUNC_KEYS_KEPT`` functions are remembered (a pool that maps a
        new closure or partial each time must not keep every one); a forgotten function
        seen again gets a new number, never one in use.
        """
        keys = self._func_keys
        key = keys.get(func_blob)
        if key is None:
            key = keys[func_blob] = next(self._next_func_key)
            if len(keys) > defaults.CLUSTER_FUNC_KEYS_KEPT:
                keys.popitem(last=False)
        else:
            keys.move_to_end(func_blob)
        return key

    def new_job(self) -> None:
        """A map or apply begins: local modules edited or imported since the last one
        travel with its first tasks (see :mod:`p2ppool.shipping`)."""
        self.backend.refresh_code()

    # --- the manager's turn ------------------------------------------------------------------

    def turn(self, host: ExecutorHost, now: float) -> None:
        """Apply the backend's events, then update demand and the fallback timer."""
        lost = False
        for event in self.backend.collect():
            self._apply(host, event, now)
            lost = lost or isinstance(event, ExecutorLost)
        busy = host.has_work()
        demand = self.max_slots if busy else 0
        # A lost peer's slots are wanted again: the backend caps the demand by the slots of
        # the peers still there, so the same number must be sent again to count them.
        if demand != self._demand or (lost and demand):
            self._demand = demand
            self.backend.set_demand(demand)
        if (busy and not host.executors_now() and not self.local_started
                and (self.misses or self.backend.refusals())):
            self._no_capable_worker(host)
        self._check_fallback(host, busy, now)
        if busy:
            self._show_workers(host)

    def _show_workers(self, host: ExecutorHost) -> None:
        """Progress bars show how many peers and local slots take chunks now."""
        peers = len(self.remote_names)
        local = sum(getattr(getattr(e, "engine", None), "processes", 0)
                    for e in host.executors_now().values() if not isinstance(e, RemoteExecutor))
        host.show_workers(peers, local)

    def next_deadline(self) -> float | None:
        """When the manager must take a turn without any event: the fallback moment, or
        the backend's next recruiting timer, whichever comes first."""
        times = [t for t in (self._fallback_at, self.backend.next_deadline()) if t is not None]
        return min(times) if times else None

    def _apply(self, host: ExecutorHost, event: Any, now: float) -> None:
        if isinstance(event, (RemoteTaskDone, RemoteTaskLost)):
            members = self._finished(host, event.executor_id, event.task_id, now)
            if members is not None:
                self._batch_done(host, event, members)
                return
        if isinstance(event, RemoteTaskDone):
            host.executor_event(event.executor_id, ChunkDone(event.task_id, event.ok, event.blob))
        elif isinstance(event, RemoteTaskLost):
            if event.retry:
                host.executor_event(event.executor_id,
                                    ChunkLost(event.task_id, event.cause, event.started))
            else:
                worker = self.remote_names.get(event.executor_id, event.executor_id)
                error = TaskLimitExceeded(f"worker {worker}: {event.cause}")
                host.chunk_failed(event.task_id, event.executor_id, error)
        elif isinstance(event, ExecutorJoined):
            self.remote_names[event.executor_id] = event.name
            log.info("peer %s joined with %d slot(s)", event.name, event.slots)
            host.add_executor(RemoteExecutor(self, event.executor_id, event.name, event.slots,
                                             event.batches))
        elif isinstance(event, TaskUnloadable):
            if event.worker not in self.misses:
                self.misses[event.worker] = event
                log.warning("peer %s cannot load this job's %s (%s): running its work "
                            "elsewhere", event.worker, event.phase, event.error)
            host.remove_executor(
                event.executor_id, f"peer {event.worker} cannot load the job: {event.error}",
                charged=False)
        elif isinstance(event, ExecutorLost):
            worker = self.remote_names.pop(event.executor_id, event.executor_id)
            if event.released:  # idle, let go for another job: not a failure
                log.info("peer %s released (idle, another job wants slots)", worker)
            elif event.declined:
                log.info("peer %s left this job: %s", worker, event.cause)
            else:
                log.warning("peer %s lost: %s", worker, event.cause)
            host.remove_executor(event.executor_id, f"peer {worker} lost: {event.cause}")
        elif isinstance(event, BoardTrouble):
            log.warning("%s", event.message)

    def _finished(self, host: ExecutorHost, executor_id: str, task_id: int, now: float
                  ) -> List[int] | None:
        """A task came back from a session: it may now take more (or fewer) in flight.
        Returns the chunks of the task if it was a batch."""
        executor = host.executors_now().get(executor_id)
        if not isinstance(executor, RemoteExecutor):
            return None
        if executor.finished(task_id, now):
            # Before the result's own turn: the slot it frees dispatches at the new depth.
            host.executor_resized(executor_id)
        return executor.split(task_id)

    def _batch_done(self, host: ExecutorHost, event: RemoteTaskDone | RemoteTaskLost,
                    members: List[int]) -> None:
        """A batch came back: the manager splits its results (it unpickles them, never the
        network path); a lost one loses each of its chunks, uncharged."""
        if isinstance(event, RemoteTaskDone):
            host.executor_event(event.executor_id, BatchDone(members, event.ok, event.blob))
            return
        for lost in batch_lost(members, f"its batch was lost ({event.cause})"):
            host.executor_event(event.executor_id, lost)

    def _no_capable_worker(self, host: ExecutorHost) -> None:
        """No executor is left and every worker heard of was declined: fall back now, or
        fail the pending work with the modules and workers that lacked them."""
        if self.backend.usable_workers():
            return  # one that might load it is still there (busy, or being recruited)
        error = self.capability_error()
        if self.options.fallback is not None:
            self.local_started = True
            log.warning("%s: running on local processes", error)
            host.add_executor(self._start_local())
            return
        host.fail_pending(error)

    def capability_error(self) -> Exception:
        """The error for work no worker of the cluster could load or would run (see the
        module docstring): an ImportError when modules were missing."""
        refused = "; ".join(f"{worker} refused it: {reason}"
                            for worker, reason in sorted(self.backend.refusals().items()))
        misses = list(self.misses.values())
        if not misses:
            return P2PPoolError(f"no worker of {self.options.cluster} can run this job "
                                f"({refused})")
        modules = sorted({m.module for m in misses if m.module})
        tried = ", ".join(f"{m.worker} ({m.host})" if m.host else m.worker for m in misses)
        if modules:
            what = "import " + ", ".join(repr(name) for name in modules)
        else:
            what = f"load this job's code ({misses[0].error})"
        message = (f"no worker of {self.options.cluster} can {what} (tried: {tried}); install "
                   f"it there, or let the pool fall back to local processes (fallback=SECONDS)")
        if refused:
            message += f"; {refused}"
        only_missing = all(m.error.startswith("ModuleNotFoundError") for m in misses)
        kind = ModuleNotFoundError if only_missing else ImportError
        return kind(message, name=modules[0] if len(modules) == 1 else None)

    def _check_fallback(self, host: ExecutorHost, busy: bool, now: float) -> None:
        fallback = self.options.fallback
        if self.local_started or fallback is None or not busy or host.executors_now():
            self._fallback_at = None
            return
        if self._fallback_at is None:
            self._fallback_at = now + fallback
        if now >= self._fallback_at:
            self._fallback_at = None
            self.local_started = True
            log.warning(
                "no peer of cluster %s answered within %g s: running on local processes "
                "(peers that answer later join in)", self.options.cluster, fallback,
            )
            host.add_executor(self._start_local())

    # --- shutting down -------------------------------------------------------------------------

    def close(self) -> None:
        """Goodbye to every session; Withdraw on the board (bounded)."""
        self.backend.close()

    def terminate(self) -> None:
        """Cancel every remote task, then close (bounded)."""
        self.backend.terminate()
