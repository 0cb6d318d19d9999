"""Executors: the places a Pool's chunks run, as its manager thread sees them.

:class:`Executor` is the seam: the manager feeds anything with its methods from the same
scheduler.  :class:`LocalExecutor` wraps the local :class:`~p2ppool.execution.engine.ProcessEngine`;
:class:`~p2ppool.cluster.link.RemoteExecutor` is one worker session.  Both report
:class:`ChunkDone` and :class:`ChunkLost` events; a remote one also :class:`BatchDone`.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, Hashable, List, Mapping, Protocol, Sequence, Tuple, Union

from ..execution.engine import ProcessEngine, TaskDone, TaskLost

__all__ = [
    "BatchDone", "BatchLedger", "ChunkDone", "ChunkLost", "Executor", "ExecutorEvent",
    "ExecutorHost", "LocalExecutor", "PoolLink", "batch_lost",
]


class ChunkDone:
    """An executor finished a chunk: ``ok`` with a value blob, or not with an error blob.

    ``blob`` None: ``value`` is the outcome, decoded already (the manager made it from a
    :class:`BatchDone`).
    """

    __slots__ = ("chunk_id", "ok", "blob", "value")

    def __init__(self, chunk_id: int, ok: bool, blob: bytes | bytearray | memoryview | None,
                 value: Any = None) -> None:
        self.chunk_id, self.ok, self.blob, self.value = chunk_id, ok, blob, value


class ChunkLost:
    """An executor lost a chunk (its process died, a limit killed it...)."""

    __slots__ = ("chunk_id", "cause", "charged")

    def __init__(self, chunk_id: int, cause: str, charged: bool = True) -> None:
        self.chunk_id, self.cause, self.charged = chunk_id, cause, charged


class BatchDone:
    """An executor finished a batch of chunks sent as one task (see the scheduler's batches).

    ``ok``: ``blob`` holds ``(seconds, outcomes)``: what the chunks took in the task
    process, and one ``(ok, value or pickled exception)`` per chunk, in order.  Not ok: the
    batch failed as a whole (a limit, a result that did not pickle), ``blob`` is the pickled
    error, and its chunks run again one by one.
    """

    __slots__ = ("chunk_ids", "ok", "blob")

    def __init__(self, chunk_ids: Sequence[int], ok: bool,
                 blob: bytes | bytearray | memoryview) -> None:
        self.chunk_ids, self.ok, self.blob = list(chunk_ids), ok, blob


ExecutorEvent = Union[ChunkDone, ChunkLost, BatchDone]

#: ``deliver(ok, blob)``: a chunk's pickled outcome, for its waiter (see Executor.run)
Deliver = Callable[[bool, Any], None]


def batch_lost(chunk_ids: Sequence[int], cause: str) -> List[ChunkLost]:
    """A batch lost or failed as a whole: each of its chunks lost without charge (they run
    again one by one), last first, so that they line up in order at the front of the line."""
    return [ChunkLost(chunk_id, cause, charged=False) for chunk_id in reversed(chunk_ids)]


class BatchLedger:
    """Which chunks an executor sent together as one task (see :meth:`Executor.run_batch`).

    A batch stops only when none of its chunks is wanted any more: :meth:`withdraw` says
    when a cancel must reach its task.
    """

    def __init__(self) -> None:
        self._members: Dict[int, List[int]] = {}  # task id -> the chunks of that batch
        self._task_of: Dict[int, int] = {}  # chunk id -> the task id of its batch

    def add(self, task_id: int, chunk_ids: Sequence[int]) -> None:
        self._members[task_id] = list(chunk_ids)
        for chunk_id in chunk_ids:
            self._task_of[chunk_id] = task_id

    def withdraw(self, chunk_id: int) -> Tuple[bool, int | None]:
        """A chunk is not wanted any more: ``(in a batch, the task to cancel now or None)``;
        the task once its last wanted chunk is withdrawn (the batch is forgotten then)."""
        task_id = self._task_of.pop(chunk_id, None)
        if task_id is None:
            return False, None
        if any(c in self._task_of for c in self._members.get(task_id, ())):
            return True, None
        self._members.pop(task_id, None)
        return True, task_id

    def finished(self, task_id: int) -> List[int] | None:
        """The chunks of batch ``task_id``, which came back (forgotten now), or None: that
        task is no batch (or every chunk of it was withdrawn)."""
        members = self._members.pop(task_id, None)
        if members is not None:
            for chunk_id in members:
                self._task_of.pop(chunk_id, None)
        return members


class Executor(Protocol):
    """What the manager needs from a place that runs chunks (local engine, remote peer)."""

    name: str

    def slots(self) -> int: ...

    def readables(self) -> List[Any]:
        """Objects for ``wait``; the same list object as long as the set is unchanged."""
        ...

    def has_events(self) -> bool: ...

    def next_deadline(self) -> float | None: ...

    def run(self, chunk_id: int, func_key: Hashable, func_blob: bytes, call_blob: bytes,
            deliver: Deliver | None = None) -> None:
        """Run one chunk; report a :class:`ChunkDone` or :class:`ChunkLost` for it.

        ``deliver(ok, blob)``, when given, may be called with the chunk's pickled outcome
        from whichever thread receives it, before that event is reported (the caller's
        waiter takes it from there: see ``ApplyResult._arrive``); an executor whose
        results reach only the manager's thread anyway ignores it.
        """
        ...

    def batch_width(self) -> int:
        """How many chunks run at once here, if it takes batches (:meth:`run_batch`);
        0 if it does not."""
        ...

    def run_batch(self, chunk_ids: Sequence[int], func_key: Hashable, func_blob: bytes,
                  batch_blob: bytes) -> None:
        """Run several chunks of one function as one task (see the scheduler's batches):
        ``batch_blob`` is their pickled ``payload.batch_call``; report one
        :class:`BatchDone`, or lose each chunk."""
        ...

    def cancel(self, chunk_ids: Sequence[int]) -> None: ...

    def collect(self, ready: Sequence[Any] | None) -> List[ExecutorEvent]: ...

    def close(self) -> None: ...

    def join(self, timeout: float) -> None: ...

    def terminate(self) -> None: ...


class ExecutorHost(Protocol):
    """What a pool's manager offers a :class:`PoolLink`, on the manager's own thread.

    The link (the cluster client, :class:`~p2ppool.cluster.link.ClusterLink`) adds and
    removes executors and reports their events through these methods only; the manager's
    scheduler, jobs and chunks stay its own."""

    def executors_now(self) -> Mapping[str, Executor]:
        """The executors chunks may be assigned to now (read only)."""
        ...

    def has_work(self) -> bool:
        """True while a job is pending (its chunks queued, running or being read)."""
        ...

    def add_executor(self, executor: Executor) -> None: ...

    def remove_executor(self, name: str, cause: str, charged: bool = True) -> None:
        """``name`` is gone: its chunks run elsewhere (``charged``: the loss costs them an
        attempt)."""
        ...

    def executor_event(self, executor: str, event: ExecutorEvent) -> None:
        """A chunk of ``executor`` finished or was lost."""
        ...

    def executor_resized(self, name: str) -> None:
        """``name``'s :meth:`Executor.slots` changed: chunks dispatch at the new depth."""
        ...

    def chunk_failed(self, chunk_id: int, executor: str, error: BaseException) -> None:
        """``chunk_id`` failed on ``executor`` with ``error``, to be retried nowhere."""
        ...

    def fail_pending(self, error: BaseException) -> None:
        """Every pending chunk fails with ``error`` (nothing can run them)."""
        ...

    def show_workers(self, peers: int, local: int) -> None:
        """Progress bars show ``peers=P local=K``."""
        ...


class PoolLink(Protocol):
    """What a pool's manager calls on the link to a cluster, on the manager's thread."""

    def new_job(self) -> None:
        """A map or apply begins."""
        ...

    def turn(self, host: ExecutorHost, now: float) -> None:
        """Apply the cluster's events to ``host``; update demand and the fallback timer."""
        ...

    def next_deadline(self) -> float | None: ...

    def close(self) -> None: ...

    def terminate(self) -> None: ...


class LocalExecutor:
    """The local :class:`~p2ppool.execution.engine.ProcessEngine`, an executor named ``"local"``."""

    name = "local"

    def __init__(self, engine: ProcessEngine) -> None:
        self.engine = engine
        self._task_ids = itertools.count()
        self._chunk_of: Dict[int, int] = {}
        self._task_of: Dict[int, int] = {}
        self._batches = BatchLedger()
        # The engine's own methods: the manager calls these every turn, twice per apply.
        self.readables: Callable[[], List[Any]] = engine.readables
        self.has_events: Callable[[], bool] = engine.has_events
        self.next_deadline: Callable[[], float | None] = engine.next_deadline

    def slots(self) -> int:
        return self.engine.capacity

    def run(self, chunk_id: int, func_key: Hashable, func_blob: bytes, call_blob: bytes,
            deliver: Deliver | None = None) -> None:
        # deliver: the manager's own thread reads these results; there is no hop to spare
        task_id = next(self._task_ids)
        self._chunk_of[task_id] = chunk_id
        self._task_of[chunk_id] = task_id
        self.engine.submit(task_id, func_key, func_blob, call_blob)

    def batch_width(self) -> int:
        return 0  # a local chunk costs a pipe write: the scheduler sends no batch here

    def run_batch(self, chunk_ids: Sequence[int], func_key: Hashable, func_blob: bytes,
                  batch_blob: bytes) -> None:
        task_id = next(self._task_ids)
        self._batches.add(task_id, chunk_ids)
        self.engine.submit(task_id, func_key, func_blob, batch_blob)

    def cancel(self, chunk_ids: Sequence[int]) -> None:
        tasks = []
        for chunk_id in chunk_ids:
            batched, batch_task = self._batches.withdraw(chunk_id)
            if batched:
                if batch_task is not None:
                    tasks.append(batch_task)
                continue
            task_id = self._task_of.pop(chunk_id, None)
            if task_id is not None:
                self._chunk_of.pop(task_id, None)
                tasks.append(task_id)
        if tasks:
            self.engine.cancel(tasks)

    def collect(self, ready: Sequence[Any] | None) -> List[ExecutorEvent]:
        events: List[ExecutorEvent] = []
        for event in self.engine.collect(ready):
            members = self._batches.finished(event.task_id)
            if members is not None:
                if isinstance(event, TaskDone):
                    events.append(BatchDone(members, event.ok, event.blob))
                else:
                    events.extend(batch_lost(members, event.cause))
                continue
            chunk_id = self._chunk_of.pop(event.task_id, None)
            if chunk_id is None:
                continue
            del self._task_of[chunk_id]
            if isinstance(event, TaskDone):
                events.append(ChunkDone(chunk_id, event.ok, event.blob))
            else:
                assert isinstance(event, TaskLost)
                events.append(ChunkLost(chunk_id, event.cause, event.charged))
        return events

    def close(self) -> None:
        self.engine.close()

    def join(self, timeout: float) -> None:
        self.engine.join(timeout)

    def terminate(self) -> None:
        self.engine.terminate()
