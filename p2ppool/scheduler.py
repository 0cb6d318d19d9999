"""Which chunk runs where: the Pool's scheduling state machine.  Pure (no threads, no clock).

Chunks of work go to *executors*: the local process engine, and (later) remote peers.  An
executor has a number of slots; a chunk waits in line until a slot is free::

    got_chunk ──> PENDING ──Assign──> ASSIGNED ──got_result──> Resolve (done; first result wins)
                     ^                   │
                     └── task_lost / ────┤ attempts left: back to the front of the line
                        executor_lost /  └ none left: Fail(ChunkFailed naming every cause)
                        lease expired

Inputs are past-tense methods that take ``now`` (seconds, any monotonic origin) and return a
list of commands (:class:`Assign`, :class:`Resolve`, :class:`Fail`, :class:`Cancel`,
:class:`WakeAt`) for the caller to carry out, in order.

A user function that raises is *not* a failure here: it is a result like any other and is
never retried.  Only losing the executor (a child killed or exiting, a peer gone silent past
its lease) costs an attempt.  Results for a chunk that is no longer assigned to the sender
(late, duplicate, or cancelled) are ignored.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Hashable, Iterable, List, Set, Union

from . import defaults
from .errors import ChunkFailed

__all__ = [
    "Assign",
    "Cancel",
    "Command",
    "Fail",
    "Resolve",
    "Scheduler",
    "WakeAt",
]

ChunkId = Hashable


@dataclass
class Assign:
    """Run ``chunk_id`` on ``executor``; this is attempt number ``attempt`` (from 1)."""

    chunk_id: ChunkId
    executor: str
    attempt: int


@dataclass
class Resolve:
    """``chunk_id`` finished; ``result`` is what the executor reported (value or error)."""

    chunk_id: ChunkId
    result: Any


@dataclass
class Fail:
    """``chunk_id`` could not be run: every attempt lost its executor."""

    chunk_id: ChunkId
    error: ChunkFailed


@dataclass
class Cancel:
    """Stop ``chunk_id`` on ``executor`` (its result, if any, will be ignored)."""

    chunk_id: ChunkId
    executor: str


@dataclass
class WakeAt:
    """Call :meth:`Scheduler.timer_expired` at ``when`` (the earliest deadline changed)."""

    when: float


Command = Union[Assign, Resolve, Fail, Cancel, WakeAt]


class _Chunk:
    __slots__ = ("chunk_id", "attempts", "causes", "executor", "deadline", "tried_on")

    def __init__(self, chunk_id: ChunkId) -> None:
        self.chunk_id = chunk_id
        self.attempts = 0
        self.causes: List[str] = []
        self.executor: str | None = None
        self.deadline: float | None = None
        self.tried_on: Set[str] = set()


@dataclass
class _Executor:
    name: str
    slots: int
    lease_s: float | None
    running: Set[ChunkId] = field(default_factory=set)

    @property
    def free(self) -> int:
        return self.slots - len(self.running)


class Scheduler:
    """Chunks, executors, leases and retries.  Feed it events; carry out what it returns.

    Args:
        max_attempts: how many times a chunk may lose its executor before it fails.
    """

    def __init__(self, max_attempts: int = defaults.MAX_ATTEMPTS) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts!r}")
        self._max_attempts = max_attempts
        self._chunks: Dict[ChunkId, _Chunk] = {}
        self._pending: Deque[ChunkId] = collections.deque()
        self._executors: Dict[str, _Executor] = {}
        self._deadlines: Dict[ChunkId, float] = {}
        self._last_wake: float | None = None

    # --- what callers may ask -----------------------------------------------------------

    @property
    def pending_count(self) -> int:
        """Chunks waiting for a slot."""
        return len(self._pending)

    @property
    def active_count(self) -> int:
        """Chunks known and not finished (pending or running)."""
        return len(self._chunks)

    @property
    def free_slots(self) -> int:
        """Free slots over every executor."""
        return sum(max(0, e.free) for e in self._executors.values())

    @property
    def total_slots(self) -> int:
        """All slots over every executor."""
        return sum(e.slots for e in self._executors.values())

    def running_on(self, executor: str) -> Set[ChunkId]:
        """Chunks now assigned to ``executor`` (a copy)."""
        found = self._executors.get(executor)
        return set(found.running) if found else set()

    def next_deadline(self) -> float | None:
        """The earliest lease deadline, or None when no lease runs."""
        return min(self._deadlines.values()) if self._deadlines else None

    # --- inputs ---------------------------------------------------------------------------

    def got_executor(
        self, name: str, slots: int, now: float, lease_s: float | None = None
    ) -> List[Command]:
        """An executor joined (or changed its slot count) with ``slots`` slots.

        ``lease_s``: a chunk assigned to it is lost unless :meth:`got_heartbeat` renews it
        within that many seconds (None: no lease, as for local processes).
        """
        if slots < 0:
            raise ValueError(f"slots must be >= 0, not {slots!r}")
        found = self._executors.get(name)
        if found is None:
            self._executors[name] = _Executor(name, slots, lease_s)
        else:
            found.slots, found.lease_s = slots, lease_s
        return self._with_wake(now, self._dispatch(now))

    def got_chunk(self, chunk_id: ChunkId, now: float) -> List[Command]:
        """A new chunk of work wants to run."""
        if chunk_id in self._chunks:
            raise ValueError(f"chunk {chunk_id!r} is already known")
        self._chunks[chunk_id] = _Chunk(chunk_id)
        self._pending.append(chunk_id)
        return self._with_wake(now, self._dispatch(now))

    def got_chunks(self, chunk_ids: Iterable[ChunkId], now: float) -> List[Command]:
        """Several new chunks, in order (one dispatch for all of them)."""
        for chunk_id in chunk_ids:
            if chunk_id in self._chunks:
                raise ValueError(f"chunk {chunk_id!r} is already known")
            self._chunks[chunk_id] = _Chunk(chunk_id)
            self._pending.append(chunk_id)
        return self._with_wake(now, self._dispatch(now))

    def got_result(
        self, chunk_id: ChunkId, executor: str, result: Any, now: float
    ) -> List[Command]:
        """``executor`` reported the result of ``chunk_id`` (a value or the user's error).

        Ignored (returns ``[]``) unless the chunk is now assigned to that executor.
        """
        chunk = self._chunks.get(chunk_id)
        if chunk is None or chunk.executor != executor:
            return []
        self._release(chunk)
        del self._chunks[chunk_id]
        commands: List[Command] = [Resolve(chunk_id, result)]
        return self._with_wake(now, commands + self._dispatch(now))

    def task_lost(
        self, chunk_id: ChunkId, executor: str, cause: str, now: float, charged: bool = True
    ) -> List[Command]:
        """``executor`` lost ``chunk_id`` (e.g. its process died); ``cause`` says how.

        ``charged=False`` when the chunk never started (it does not cost an attempt).
        """
        chunk = self._chunks.get(chunk_id)
        if chunk is None or chunk.executor != executor:
            return []
        commands = self._lose(chunk, f"{executor}: {cause}", charged)
        return self._with_wake(now, commands + self._dispatch(now))

    def executor_lost(self, name: str, cause: str, now: float, charged: bool = True
                      ) -> List[Command]:
        """Executor ``name`` is gone: every chunk it ran is lost, and it gets no more work.

        ``charged=False`` when the loss is no chunk's fault (the executor could not load
        the job's code): its chunks run elsewhere without spending an attempt.
        """
        found = self._executors.pop(name, None)
        if found is None:
            return []
        commands: List[Command] = []
        back: List[ChunkId] = []
        for chunk_id in sorted(found.running, key=_order_key):
            chunk = self._chunks[chunk_id]
            commands += self._lose(chunk, f"{name} lost: {cause}", charged, released=True,
                                   back=back)
        self._pending.extendleft(reversed(back))
        return self._with_wake(now, commands + self._dispatch(now))

    def got_heartbeat(self, executor: str, now: float) -> List[Command]:
        """``executor`` is alive: renew the leases of the chunks it runs."""
        found = self._executors.get(executor)
        if found is None or found.lease_s is None:
            return []
        for chunk_id in found.running:
            self._set_deadline(self._chunks[chunk_id], now + found.lease_s)
        return self._with_wake(now, [])

    def timer_expired(self, now: float) -> List[Command]:
        """Time passed: chunks whose lease ran out are cancelled there and tried again."""
        expired = sorted(
            (self._chunks[c] for c, deadline in self._deadlines.items() if deadline <= now),
            key=lambda c: _order_key(c.chunk_id),
        )
        commands: List[Command] = []
        back: List[ChunkId] = []
        for chunk in expired:
            executor = chunk.executor
            assert executor is not None
            lease = self._executors[executor].lease_s
            commands.append(Cancel(chunk.chunk_id, executor))
            commands += self._lose(chunk, f"{executor}: no heartbeat for {lease:g} s", True,
                                   back=back)
        self._pending.extendleft(reversed(back))
        return self._with_wake(now, commands + self._dispatch(now))

    def cancel(self, chunk_ids: Iterable[ChunkId], now: float) -> List[Command]:
        """Forget ``chunk_ids``: pending ones leave the line, running ones get Cancel."""
        commands: List[Command] = []
        wanted = [c for c in chunk_ids if c in self._chunks]
        gone = set(wanted)
        if gone:
            self._pending = collections.deque(c for c in self._pending if c not in gone)
        for chunk_id in wanted:
            chunk = self._chunks.pop(chunk_id)
            if chunk.executor is not None:
                commands.append(Cancel(chunk_id, chunk.executor))
                self._release(chunk)
        return self._with_wake(now, commands + self._dispatch(now))

    # --- internals --------------------------------------------------------------------------

    def _lose(
        self, chunk: _Chunk, cause: str, charged: bool, released: bool = False,
        back: List[ChunkId] | None = None,
    ) -> List[Command]:
        """Record a lost attempt: back to the front of the line (or into ``back``, which the
        caller puts in front in order), or Fail when no attempt is left."""
        if not released:
            self._release(chunk)
        else:
            chunk.executor = None
            self._set_deadline(chunk, None)
        if charged:
            chunk.causes.append(cause)
        else:
            chunk.attempts -= 1
        if chunk.attempts >= self._max_attempts:
            del self._chunks[chunk.chunk_id]
            error = ChunkFailed(chunk.chunk_id, chunk.attempts, chunk.causes)
            return [Fail(chunk.chunk_id, error)]
        if back is None:
            self._pending.appendleft(chunk.chunk_id)
        else:
            back.append(chunk.chunk_id)
        return []

    def _release(self, chunk: _Chunk) -> None:
        if chunk.executor is not None:
            found = self._executors.get(chunk.executor)
            if found is not None:
                found.running.discard(chunk.chunk_id)
        chunk.executor = None
        self._set_deadline(chunk, None)

    def _dispatch(self, now: float) -> List[Command]:
        commands: List[Command] = []
        while self._pending:
            chunk = self._chunks[self._pending[0]]
            executor = self._pick(chunk)
            if executor is None:
                break
            self._pending.popleft()
            chunk.attempts += 1
            chunk.executor = executor.name
            chunk.tried_on.add(executor.name)
            if executor.lease_s is not None:
                self._set_deadline(chunk, now + executor.lease_s)
            executor.running.add(chunk.chunk_id)
            commands.append(Assign(chunk.chunk_id, executor.name, chunk.attempts))
        return commands

    def _pick(self, chunk: _Chunk) -> _Executor | None:
        # Prefer an executor this chunk has not been lost on; any free one otherwise.
        fallback = None
        for executor in self._executors.values():
            if executor.free > 0:
                if executor.name not in chunk.tried_on:
                    return executor
                if fallback is None:
                    fallback = executor
        return fallback

    def _set_deadline(self, chunk: _Chunk, deadline: float | None) -> None:
        chunk.deadline = deadline
        if deadline is None:
            self._deadlines.pop(chunk.chunk_id, None)
        else:
            self._deadlines[chunk.chunk_id] = deadline

    def _with_wake(self, now: float, commands: List[Command]) -> List[Command]:
        deadline = self.next_deadline()
        if deadline is not None and deadline != self._last_wake:
            commands.append(WakeAt(deadline))
        self._last_wake = deadline
        return commands


def _order_key(chunk_id: ChunkId) -> Any:
    return (type(chunk_id).__name__, chunk_id)
