"""Which chunk runs where: the Pool's scheduling state machine.  Pure (no threads, no clock).

Chunks of work go to *executors*: the local process engine, and remote peers.  An executor
has a number of slots; a chunk waits in line until a slot is free::

    got_chunk ──> PENDING ──Assign──> ASSIGNED ──got_result──> Resolve (done; first result wins)
                     ^                   │  │
                     │                   │  └─ runs far longer than its job's others, and an
                     │                   │     executor is idle: Assign a copy there (below)
                     └── task_lost / ────┤ attempts left: back to the front of the line
                        executor_lost    └ none left: Fail(ChunkFailed naming every cause)

Inputs are past-tense methods that take ``now`` (seconds, any monotonic origin) and return a
list of commands (:class:`Assign`, :class:`Resolve`, :class:`Fail`, :class:`Cancel`,
:class:`WakeAt`) for the caller to carry out, in order.

A user function that raises is *not* a failure here: it is a result like any other and is
never retried.  Only losing the executor (a child killed or exiting, a peer's session lost)
costs an attempt; a peer that stays connected but never answers is overtaken by a
speculative run (below).  Results for a chunk that is no longer assigned to the sender
(late, duplicate, or cancelled) are ignored.

**Speculative re-execution** (issue 17: no silent worker holds a map).  A worker may accept a
chunk, keep its session alive and never answer.  Once nothing waits in line and an executor
has a free slot, a chunk that has run for ``speculate_factor`` times the median duration of
its group's finished chunks (a group is a job; at least ``speculate_after`` of them, and at
least ``speculate_min_s``), or for ``task_timeout`` seconds, is assigned a second time, to
another executor (one with fewer chunks overtaken so far first).  A chunk runs at most twice
at once.  The first result wins: the other run gets a :class:`Cancel`, and its executor
counts one chunk overtaken (it gets new work after the others).  Losing one of two runs
costs no attempt; the other goes on.

**Batches** (issue 16: a small map costs one round trip).  A group may let up to ``batch``
of its chunks share one slot (:meth:`Scheduler.got_chunks`), on executors that run
``width`` chunks at once and take batches (:meth:`Scheduler.got_executor`; a remote worker
session).  Chunks that go together are consecutive :class:`Assign` commands with the same
``batch`` key, for the caller to send as one task.  A dispatch spreads the group's pending
chunks evenly over the width of the executors with a free slot: a 16-item map of 8 chunks on
two 1-process workers goes as one batch of 4 to each, unless the group asks for batches of
``least`` chunks (its chunks are so quick that one task should hold more).  Only a chunk
that never ran goes in a batch: after a batch is lost (or its executor), its chunks run one by
one, and that loss costs them no attempt.  A batched chunk's duration, for speculation, is
its batch's divided by the batch's size, and it is overdue when its whole batch is.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Hashable, Iterable, Iterator, List, Set, Tuple, Union

from .. import defaults
from ..errors import ChunkFailed

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
    """Run ``chunk_id`` on ``executor``; this is attempt number ``attempt`` (from 1).

    ``speculative``: a second run of a chunk that still runs elsewhere (same attempt)."""

    chunk_id: ChunkId
    executor: str
    attempt: int
    speculative: bool = False
    #: the first chunk of the batch this one is sent in (see the module docstring), or None
    batch: ChunkId | None = None


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

#: Runs of one chunk at once, at most: the first and one speculative copy.
_MOST_RUNS = 2


class _Run:
    """One execution of a chunk on one executor (``share``: the size of its batch, or 1)."""

    __slots__ = ("started", "share")

    def __init__(self, started: float, share: int = 1) -> None:
        self.started = started
        self.share = share


class _ChunkState:
    __slots__ = ("chunk_id", "attempts", "causes", "runs", "tried_on", "group")

    def __init__(self, chunk_id: ChunkId, group: Hashable) -> None:
        self.chunk_id = chunk_id
        self.attempts = 0
        self.causes: List[str] = []
        self.runs: Dict[str, _Run] = {}  # executor -> its run, the first one first
        self.tried_on: Set[str] = set()
        self.group = group


@dataclass
class _Executor:
    name: str
    slots: int
    width: int = 0  # chunks it runs at once, when it takes batches (0: it takes none)
    running: Set[ChunkId] = field(default_factory=set)
    overtaken: int = 0  # chunks of it that another executor's copy finished first
    # Batches: chunk -> its batch's key, and key -> chunks of it still running.  A batch
    # holds one slot however many chunks it has: ``shared`` is how many fewer slots the
    # running chunks use than their number.
    batch_of: Dict[ChunkId, ChunkId] = field(default_factory=dict)
    batches: Dict[ChunkId, int] = field(default_factory=dict)
    shared: int = 0

    @property
    def free(self) -> int:
        return self.slots - len(self.running) + self.shared

    def end(self, chunk_id: ChunkId) -> None:
        """A run of ``chunk_id`` here is over."""
        self.running.discard(chunk_id)
        key = self.batch_of.pop(chunk_id, None)
        if key is not None:
            left = self.batches[key] - 1
            if left:
                self.batches[key] = left
                self.shared -= 1
            else:
                del self.batches[key]


class _Group:
    """How long a group's (a job's) chunks took, for the speculation threshold."""

    __slots__ = ("durations", "threshold", "dirty")

    def __init__(self) -> None:
        self.durations: Deque[float] = collections.deque(maxlen=defaults.SPECULATE_SAMPLES)
        self.threshold: float | None = None
        self.dirty = False


class Scheduler:
    """Chunks, executors, retries and speculative runs.  Feed it events; carry out
    what it returns.

    Args:
        max_attempts: how many times a chunk may lose its executor before it fails.
        task_timeout: seconds after which a running chunk is run again on another idle
            executor (None: only the median rule applies).
        speculate_factor, speculate_min_s, speculate_after: the median rule (see the module
            docstring).
    """

    def __init__(
        self,
        max_attempts: int = defaults.MAX_ATTEMPTS,
        *,
        task_timeout: float | None = defaults.TASK_TIMEOUT_S,
        speculate_factor: float = defaults.SPECULATE_FACTOR,
        speculate_min_s: float = defaults.SPECULATE_MIN_S,
        speculate_after: int = defaults.SPECULATE_AFTER,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts!r}")
        if task_timeout is not None and not task_timeout > 0:
            raise ValueError(f"task_timeout must be positive or None, not {task_timeout!r}")
        self._max_attempts = max_attempts
        self._task_timeout = task_timeout
        self._factor = speculate_factor
        self._min_s = speculate_min_s
        self._after = max(1, speculate_after)
        self._chunks: Dict[ChunkId, _ChunkState] = {}
        self._pending: Deque[ChunkId] = collections.deque()
        self._executors: Dict[str, _Executor] = {}
        self._groups: Dict[Hashable, _Group] = {}
        self._waiting: Dict[Hashable, int] = {}  # group -> its chunks in self._pending
        # group -> (most, least): chunks of it that may share a slot, and that a batch
        # takes before the group is spread over more executors
        self._batch: Dict[Hashable, Tuple[int, int]] = {}
        self._last_wake: float | None = None
        self._clock = float("-inf")  # the latest `now` an input brought

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

    def overtaken(self, executor: str) -> int:
        """Chunks of ``executor`` that a speculative copy elsewhere finished first."""
        found = self._executors.get(executor)
        return found.overtaken if found else 0

    def next_deadline(self) -> float | None:
        """When the next speculative run may be due, or None when none can be."""
        return self._next_speculation()

    # --- inputs ---------------------------------------------------------------------------

    def got_executor(self, name: str, slots: int, now: float, width: int = 0
                     ) -> List[Command]:
        """An executor joined (or changed its slot count) with ``slots`` slots.

        ``width``: how many chunks it runs at once, if it takes batches (0: it takes none).
        """
        if slots < 0:
            raise ValueError(f"slots must be >= 0, not {slots!r}")
        found = self._executors.get(name)
        if found is None:
            self._executors[name] = _Executor(name, slots, max(0, width))
        else:
            found.slots = slots
            found.width = max(0, width)
        return self._with_wake(now, self._dispatch(now))

    def got_chunk(self, chunk_id: ChunkId, now: float, group: Hashable = None
                  ) -> List[Command]:
        """A new chunk of work wants to run (``group``: its job, for speculation)."""
        return self.got_chunks([chunk_id], now, group)

    def got_chunks(self, chunk_ids: Iterable[ChunkId], now: float, group: Hashable = None,
                   batch: int = 1, least: int = 1) -> List[Command]:
        """Several new chunks of one group, in order (one dispatch for all of them).

        ``batch``: up to this many of the group's chunks may share a slot (see the module
        docstring); ``least``: a batch takes this many (if there are) before the group is
        spread over more executors (a map so small that one task holds it all goes to one).
        The group keeps the last values it was given.
        """
        added = 0
        for chunk_id in chunk_ids:
            if chunk_id in self._chunks:
                raise ValueError(f"chunk {chunk_id!r} is already known")
            self._chunks[chunk_id] = _ChunkState(chunk_id, group)
            self._pending.append(chunk_id)
            added += 1
        self._wait(group, added)
        if batch > 1:
            self._batch[group] = (batch, max(1, min(least, batch)))
        return self._with_wake(now, self._dispatch(now))

    def forget_group(self, group: Hashable) -> None:
        """A job ended: forget how long its chunks took, and its batch size."""
        self._groups.pop(group, None)
        self._batch.pop(group, None)

    def typical_seconds(self, group: Hashable) -> float | None:
        """The median run time of the group's recent finished chunks (a batched chunk
        counts its share of its batch), or None before any finished."""
        found = self._groups.get(group)
        if found is None or not found.durations:
            return None
        return _median(found.durations)

    def got_result(
        self, chunk_id: ChunkId, executor: str, result: Any, now: float
    ) -> List[Command]:
        """``executor`` reported the result of ``chunk_id`` (a value or the user's error).

        Ignored (returns ``[]``) unless the chunk is now assigned to that executor.  When
        the chunk also runs elsewhere (a speculative copy), that run is cancelled.
        """
        commands = self._result(chunk_id, executor, result, now)
        return self._with_wake(now, commands + self._dispatch(now)) if commands else []

    def got_results(self, executor: str, results: Iterable[Tuple[ChunkId, Any]], now: float
                    ) -> List[Command]:
        """Several results from ``executor`` at once (a batch): as :meth:`got_result` for
        each, with one dispatch after all of them."""
        commands: List[Command] = []
        for chunk_id, result in results:
            commands += self._result(chunk_id, executor, result, now)
        return self._with_wake(now, commands + self._dispatch(now)) if commands else []

    def _result(self, chunk_id: ChunkId, executor: str, result: Any, now: float
                ) -> List[Command]:
        chunk = self._chunks.get(chunk_id)
        if chunk is None or executor not in chunk.runs:
            return []
        run = chunk.runs[executor]
        self._record(chunk, (now - run.started) / run.share)
        commands: List[Command] = [Resolve(chunk_id, result)]
        for other in chunk.runs:
            if other != executor:
                commands.append(Cancel(chunk_id, other))
                loser = self._executors.get(other)
                if loser is not None:
                    loser.overtaken += 1
        self._release(chunk)
        del self._chunks[chunk_id]
        return commands

    def task_lost(
        self, chunk_id: ChunkId, executor: str, cause: str, now: float, charged: bool = True
    ) -> List[Command]:
        """``executor`` lost ``chunk_id`` (e.g. its process died); ``cause`` says how.

        ``charged=False`` when the chunk never started (it does not cost an attempt).
        """
        chunk = self._chunks.get(chunk_id)
        if chunk is None or executor not in chunk.runs:
            return []
        if len(chunk.runs) > 1:  # its other run goes on
            self._end_run(chunk, executor)
            return self._with_wake(now, self._dispatch(now))
        commands = self._lose(chunk, f"{executor}: {cause}", charged)
        return self._with_wake(now, commands + self._dispatch(now))

    def executor_lost(self, name: str, cause: str, now: float, charged: bool = True
                      ) -> List[Command]:
        """Executor ``name`` is gone: every chunk it ran is lost, and it gets no more work.

        ``charged=False`` when the loss is no chunk's fault (the executor could not load
        the job's code): its chunks run elsewhere without spending an attempt.
        """
        found = self._executors.get(name)
        if found is None:
            return []
        commands: List[Command] = []
        back: List[ChunkId] = []
        for chunk_id in sorted(found.running, key=_order_key):
            chunk = self._chunks[chunk_id]
            if len(chunk.runs) > 1:
                self._end_run(chunk, name)
                continue
            # A batched chunk is charged nothing: it runs again alone (and is charged then),
            # as when its batch alone is lost.
            lost_charged = charged and chunk_id not in found.batch_of
            commands += self._lose(chunk, f"{name} lost: {cause}", lost_charged, back=back)
        del self._executors[name]
        self._pending.extendleft(reversed(back))
        for chunk_id in back:
            self._wait(self._chunks[chunk_id].group, 1)
        return self._with_wake(now, commands + self._dispatch(now))

    def timer_expired(self, now: float) -> List[Command]:
        """Time passed: chunks overdue get a speculative run on an idle executor."""
        return self._with_wake(now, self._dispatch(now))

    def cancel(self, chunk_ids: Iterable[ChunkId], now: float) -> List[Command]:
        """Forget ``chunk_ids``: pending ones leave the line, running ones get Cancel."""
        commands: List[Command] = []
        wanted = [c for c in chunk_ids if c in self._chunks]
        gone = set(wanted)
        if gone:
            kept = collections.deque(c for c in self._pending if c not in gone)
            for chunk_id in self._pending:
                if chunk_id in gone:
                    self._wait(self._chunks[chunk_id].group, -1)
            self._pending = kept
        for chunk_id in wanted:
            chunk = self._chunks.pop(chunk_id)
            for executor in chunk.runs:
                commands.append(Cancel(chunk_id, executor))
            self._release(chunk)
        return self._with_wake(now, commands + self._dispatch(now))

    # --- internals --------------------------------------------------------------------------

    def _lose(
        self, chunk: _ChunkState, cause: str, charged: bool, back: List[ChunkId] | None = None,
    ) -> List[Command]:
        """Record a lost attempt (of a chunk's only run): back to the front of the line (or
        into ``back``, which the caller puts in front in order), or Fail when no attempt is
        left."""
        self._release(chunk)
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
            self._wait(chunk.group, 1)
        else:
            back.append(chunk.chunk_id)
        return []

    def _end_run(self, chunk: _ChunkState, executor: str) -> None:
        """One run of a chunk is over (its other run goes on)."""
        chunk.runs.pop(executor, None)
        found = self._executors.get(executor)
        if found is not None:
            found.end(chunk.chunk_id)

    def _release(self, chunk: _ChunkState) -> None:
        for executor in list(chunk.runs):
            self._end_run(chunk, executor)

    def _start_run(self, chunk: _ChunkState, executor: _Executor, now: float,
                   share: int = 1) -> None:
        chunk.runs[executor.name] = _Run(now, share)
        chunk.tried_on.add(executor.name)
        executor.running.add(chunk.chunk_id)

    def _wait(self, group: Hashable, change: int) -> None:
        """``change`` more (or fewer) chunks of ``group`` wait in line."""
        count = self._waiting.get(group, 0) + change
        if count > 0:
            self._waiting[group] = count
        else:
            self._waiting.pop(group, None)

    def _dispatch(self, now: float) -> List[Command]:
        self._clock = max(self._clock, now)
        commands: List[Command] = []
        shares: Dict[Hashable, int] = {}  # group -> chunks per batch, in this dispatch
        while self._pending:
            chunk = self._chunks[self._pending[0]]
            if not chunk.tried_on and chunk.group in self._batch:
                share = shares.get(chunk.group)
                if share is None:
                    share = shares[chunk.group] = self._share(chunk.group)
                batcher = self._pick(chunk, batch=True) if share > 1 else None
                if batcher is not None:
                    self._assign_batch(batcher, share, now, commands)
                    continue
            executor = self._pick(chunk)
            if executor is None:
                break
            self._pending.popleft()
            self._wait(chunk.group, -1)
            chunk.attempts += 1
            self._start_run(chunk, executor, now)
            commands.append(Assign(chunk.chunk_id, executor.name, chunk.attempts))
        if not self._pending and len(self._executors) > 1:
            commands += self._speculate(now)
        return commands

    def _share(self, group: Hashable) -> int:
        """Chunks per batch for ``group`` now: its waiting chunks spread evenly over the
        width of the executors with a free slot that take batches, but no fewer than its
        ``least`` and no more than its ``most``."""
        width = sum(e.width - len(e.batches) for e in self._executors.values()
                    if e.width > len(e.batches) and e.free > 0)
        if width <= 0:
            return 1
        most, least = self._batch[group]
        waiting = self._waiting.get(group, 0)
        return max(1, min(most, max(least, -(-waiting // width))))

    def _assign_batch(self, executor: _Executor, share: int, now: float,
                      commands: List[Command]) -> None:
        """Up to ``share`` chunks from the front of the line (of one group, none of which
        ran before) go to ``executor`` as one batch, in one of its slots."""
        first = self._chunks[self._pending[0]]
        taken: List[_ChunkState] = []
        while self._pending and len(taken) < share:
            chunk = self._chunks[self._pending[0]]
            if chunk.group != first.group or chunk.tried_on:
                break
            self._pending.popleft()
            taken.append(chunk)
        self._wait(first.group, -len(taken))
        key = first.chunk_id if len(taken) > 1 else None
        for chunk in taken:
            chunk.attempts += 1
            self._start_run(chunk, executor, now, len(taken))
            if key is not None:
                executor.batch_of[chunk.chunk_id] = key
            commands.append(Assign(chunk.chunk_id, executor.name, chunk.attempts, batch=key))
        if key is not None:
            executor.batches[key] = len(taken)
            executor.shared += len(taken) - 1

    def _pick(self, chunk: _ChunkState, batch: bool = False) -> _Executor | None:
        # Prefer an executor this chunk has not been lost on, then one that was overtaken
        # least often, then the one with the most free slots (executors that hold a few
        # chunks ahead fill evenly); any free one otherwise.  ``batch``: only one that has
        # fewer batches than its width (a batch per process: its other slots stay for
        # single chunks, so that one executor never takes a whole map ahead of the others).
        best: _Executor | None = None
        best_key: Tuple[bool, int, int] | None = None
        for executor in self._executors.values():
            free = executor.free
            if free <= 0 or executor.name in chunk.runs:
                continue
            if batch and len(executor.batches) >= executor.width:
                continue
            key = (executor.name in chunk.tried_on, executor.overtaken, -free)
            if best_key is None or key < best_key:
                best, best_key = executor, key
        return best

    def _single_runs(self) -> Iterator[Tuple[_ChunkState, Any, float]]:
        """``(chunk, its one run, the job's overdue threshold)`` for every chunk running
        once whose job has a threshold (candidates for a speculative copy)."""
        for chunk in self._chunks.values():
            if len(chunk.runs) != 1:
                continue
            threshold = self._threshold(chunk.group)
            if threshold is None:
                continue
            (run,) = chunk.runs.values()
            yield chunk, run, threshold

    def _speculate(self, now: float) -> List[Command]:
        """Copy overdue chunks to free executors, the longest overdue first."""
        if not any(e.free > 0 for e in self._executors.values()):
            return []
        overdue = []
        for chunk, run, threshold in self._single_runs():
            late = now - run.started - threshold * run.share  # a batch: all of it
            if late >= 0:
                overdue.append((-late, _order_key(chunk.chunk_id), chunk))
        overdue.sort(key=lambda item: item[:2])
        commands: List[Command] = []
        for _, _, chunk in overdue:
            executor = self._pick(chunk)
            if executor is None:
                continue
            self._start_run(chunk, executor, now)
            commands.append(Assign(chunk.chunk_id, executor.name, chunk.attempts,
                                   speculative=True))
        return commands

    def _next_speculation(self) -> float | None:
        """When a running chunk becomes overdue, if an executor could take a copy then."""
        if self._pending or len(self._executors) < 2:
            return None
        if not any(e.free > 0 for e in self._executors.values()):
            return None  # a result frees a slot first, and dispatches then
        earliest: float | None = None
        for _, run, threshold in self._single_runs():
            when = run.started + threshold * run.share
            # Times already passed at the last input were dealt with then (or no executor
            # can take the copy): they must not spin the caller's loop.
            if when > self._clock and (earliest is None or when < earliest):
                earliest = when
        return earliest

    def _record(self, chunk: _ChunkState, seconds: float) -> None:
        group = self._groups.get(chunk.group)
        if group is None:
            group = self._groups[chunk.group] = _Group()
        group.durations.append(seconds)
        group.dirty = True

    def _threshold(self, group_id: Hashable) -> float | None:
        """Seconds a chunk of this group runs before it is copied, or None."""
        timeout = self._task_timeout
        group = self._groups.get(group_id)
        if group is not None and group.dirty:
            group.dirty = False
            if len(group.durations) >= self._after:
                group.threshold = max(self._min_s, self._factor * _median(group.durations))
        found = group.threshold if group is not None else None
        if found is None:
            return timeout
        return found if timeout is None else min(found, timeout)

    def _with_wake(self, now: float, commands: List[Command]) -> List[Command]:
        deadline = self.next_deadline()
        if deadline is not None and deadline != self._last_wake:
            commands.append(WakeAt(deadline))
        self._last_wake = deadline
        return commands


def _median(values: Iterable[float]) -> float:
    """The middle value (the upper one of an even count)."""
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _order_key(chunk_id: ChunkId) -> Any:
    return (type(chunk_id).__name__, chunk_id)
