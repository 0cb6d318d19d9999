"""A Pool's manager thread: the one owner of its scheduler, jobs and executors.

The data flow is drawn atop :mod:`p2ppool.pool`.  Callers post calls to the :class:`Inbox`;
:meth:`_Manager.run` waits on the executors' readables and the inbox's wake pipe, turns what
became ready into scheduler events, executes the scheduler's commands and hands results to
their waiters.  An exit hook terminates the managers of pools left open.

Size: the one owner of a pool's state, as concurrent.futures' manager is: its loop, the
scheduler commands it carries out and its failure paths belong together.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import os
import threading
import time
import traceback
import weakref
from typing import Any, Deque, Dict, Hashable, List, Mapping, Sequence, Tuple

from .. import defaults, payload
from ..errors import BrokenPool, PoolNotRunning
from .chunking import InputError
from .executors import (
    BatchDone,
    ChunkDone,
    ChunkLost,
    Deliver,
    Executor,
    ExecutorEvent,
    PoolLink,
    batch_lost,
)
from .inbox import Inbox, Waiter
from .jobs import _call_for, _Chunk, _Failed, _FunctionBlobs, _Job
from .results import ApplyResult, IMapIterator, Outcome, _Result, unpickled
from .scheduler import Assign, Cancel, Command, Fail, Resolve, Scheduler

RUN = "RUN"
CLOSE = "CLOSE"
TERMINATE = "TERMINATE"


class _Manager:
    """The state behind one Pool, driven by its manager thread."""

    def __init__(self, pool: object, executors: Sequence[Executor], max_attempts: int,
                 task_timeout: float | None = None) -> None:
        self._pool_ref = weakref.ref(pool)
        self.pid = os.getpid()
        self.inbox = Inbox()
        self.scheduler = Scheduler(max_attempts, task_timeout=task_timeout)
        self.executors: Dict[str, Executor] = {}
        self.jobs: Dict[int, _Job] = {}
        self.chunks: Dict[int, _Chunk] = {}
        self._chunk_ids = itertools.count()
        self._deliveries: List[Tuple[_Result, int, Outcome]] = []  # see _flush
        self._hungry: Deque[_Job] = collections.deque()  # see _read_inputs
        self._unstarted: List[Tuple[int, str]] = []  # see _release_unstarted
        self._read_ahead_of: Dict[str, int] = {}  # executor -> chunks it added to read-ahead
        self._function_blobs = _FunctionBlobs()
        # pickled function -> seconds per input item in its last map (see _batch_sizes)
        self._item_seconds: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self.state = RUN
        self.broken: BrokenPool | None = None
        self.link: PoolLink | None = None  # a ClusterLink when a cluster is configured
        # At interpreter exit: finish the submitted work (an executor's, as
        # concurrent.futures does) instead of terminating (a Pool's, as multiprocessing).
        self.finish_at_exit = False
        for executor in executors:
            self.add_executor(executor)
        self.thread = threading.Thread(
            target=self.run, name=f"p2ppool-manager-{id(self):x}", daemon=_DAEMON_MANAGER
        )

    # --- requests (posted by callers; run on the manager thread) ---------------------------

    def add_executor(self, executor: Executor) -> None:
        """Give the scheduler another place to run chunks (manager thread, or before start)."""
        self.executors[executor.name] = executor
        now = time.monotonic()
        # Running imaps read further ahead for the new slots (a cluster pool starts with none:
        # its imaps would otherwise keep 2 chunks in flight, all on the first executor).
        extra = defaults.READ_AHEAD_PER_SLOT * executor.slots()
        self._read_ahead_of[executor.name] = extra
        for job in self.jobs.values():
            if job.slots is not None:
                for _ in range(extra):
                    job.slots.put(None)
            elif job.reader is not None:
                self._credit(job, extra)
        self._execute(self.scheduler.got_executor(executor.name, executor.slots(), now,
                                                  executor.batch_width()))

    def remove_executor(self, name: str, cause: str, charged: bool = True) -> None:
        """An executor is gone (a peer was lost): its chunks go back to the queue, and
        running imaps read that much less ahead again (peers that come and go for hours
        must not make them read ever further)."""
        if self.executors.pop(name, None) is not None:
            fewer = self._read_ahead_of.pop(name, 0)
            for job in self.jobs.values():
                if job.slots is not None or job.reader is not None:
                    job.read_ahead_debt += fewer
            self._execute(self.scheduler.executor_lost(name, cause, time.monotonic(), charged))

    # --- ExecutorHost: what the cluster link may call (on this thread) ------------------------

    def executors_now(self) -> Mapping[str, Executor]:
        return self.executors

    def has_work(self) -> bool:
        return bool(self.jobs)

    def executor_event(self, executor: str, event: ExecutorEvent) -> None:
        self._got_event(executor, event)

    def executor_resized(self, name: str) -> None:
        executor = self.executors.get(name)
        if executor is not None:
            self._execute(self.scheduler.got_executor(name, executor.slots(), time.monotonic(),
                                                      executor.batch_width()))

    def chunk_failed(self, chunk_id: int, executor: str, error: BaseException) -> None:
        self._execute(self.scheduler.got_result(chunk_id, executor, _Failed(error),
                                                time.monotonic()))

    def fail_pending(self, error: BaseException) -> None:
        doomed = list(self.chunks)
        self._execute(self.scheduler.cancel(doomed, time.monotonic()))
        for chunk_id in doomed:
            self._resolve_outcome(chunk_id, (False, error))

    def show_workers(self, peers: int, local: int) -> None:
        for job in self.jobs.values():
            if job.progress is not None:
                job.progress.set_workers(peers, local)

    # --- calls posted by the Pool's threads -------------------------------------------------

    def submit(self, job: _Job, chunks: Sequence[Tuple[Any, int]]) -> None:
        if self.state == TERMINATE:
            self._fail_job(job, BrokenPool("the pool was terminated before this task started"))
            return
        self.jobs[job.job_id] = job
        if self.link is not None:
            self.link.new_job()
        if job.length == 0:
            self._job_finished(job)
            return
        ids = [
            self._new_chunk(job, index, items, size) for index, (items, size) in enumerate(chunks)
        ]
        most, least = self._batch_sizes(job) if len(ids) > 1 else (1, 1)
        self._execute(self.scheduler.got_chunks(ids, time.monotonic(), job.job_id, most, least))

    def _batch_sizes(self, job: _Job) -> Tuple[int, int]:
        """How many chunks of a map may travel as one task, and how many one should hold
        before the map is spread (issue 16; see :func:`batch_sizes`), by the run time of
        the same function's items in its last map (unknown before: no batch) times the
        items in this map's chunks (a longer input has longer chunks).  Only
        ``map`` and ``starmap``, whose caller waits for every result: an imap's first
        results would wait for their batch, and an apply is one chunk."""
        if job.how not in (payload.MAP, payload.STARMAP):
            return 1, 1
        blob = self._function_blobs.get(job.func)
        per_item = self._item_seconds.get(blob) if blob is not None else None
        return batch_sizes(None if per_item is None else per_item * job.chunk_items)

    def cancel_job(self, job_id: int, error: BaseException) -> None:
        """Withdraw a job (its caller was interrupted): its chunks leave the queue and are
        cancelled where they run (local processes or peers); its result fails with
        ``error``; the pool goes on with the other jobs."""
        job = self.jobs.pop(job_id, None)
        if job is None:
            return
        doomed = [cid for cid, chunk in self.chunks.items() if chunk.job is job]
        self._execute(self.scheduler.cancel(doomed, time.monotonic()))
        for chunk_id in doomed:
            self.chunks.pop(chunk_id, None)
        self._fail_job(job, error)

    def start_stream(self, job: _Job) -> None:
        """An imap job: its chunks arrive later through :meth:`got_stream_chunks` (read by
        its feeder thread), or, if it has a ``reader``, are read here; either way a few
        chunks per slot ahead of its results (counted here, where executors join, so a
        peer that joins meanwhile is not missed)."""
        self.jobs[job.job_id] = job
        if self.link is not None:
            self.link.new_job()
        # Two chunks, and as many more per executor as add_executor gives a running job
        # (which remove_executor takes back): never fewer than two in circulation.
        read_ahead = 2 + sum(self._read_ahead_of.values())
        if job.reader is not None:
            self._credit(job, read_ahead)
        elif job.slots is not None:
            for _ in range(read_ahead):
                job.slots.put(None)

    def got_stream_chunks(self, job: _Job, chunks: List[Tuple[int, Any, int]]) -> None:
        """imap chunks read by the feeder: ``(index, items, size)`` each."""
        if job.job_id not in self.jobs:
            return
        ids = [self._new_chunk(job, index, items, size) for index, items, size in chunks]
        self._execute(self.scheduler.got_chunks(ids, time.monotonic(), job.job_id))

    def got_stream_error(self, job: _Job, index: int, error: BaseException) -> None:
        if job.job_id not in self.jobs:
            return
        if job.resolved < index:  # after the chunks read before it (imap_unordered too)
            job.input_error = (index, error)
        else:
            self._deliver(job, index, (False, error), 0)

    def got_stream_end(self, job: _Job, length: int) -> None:
        if job.job_id not in self.jobs:
            return
        job.length = length
        assert isinstance(job.result, IMapIterator)
        job.result._set_length(length)
        if job.resolved >= length:
            self._job_finished(job)

    def cancel_unstarted(self) -> None:
        """``shutdown(cancel_futures=True)``: cancel every result that can be cancelled and
        has not started (an executor's futures); their chunks never run (see _assign)."""
        for job in list(self.jobs.values()):
            job.result._cancel()

    def close(self) -> None:
        if self.state == RUN:
            self.state = CLOSE

    def terminate(self) -> None:
        self.state = TERMINATE

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """The manager thread: wait, then act on whatever became ready."""
        try:
            self._loop()
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            self.broken = BrokenPool(f"the pool's manager thread failed: {exc!r}")
            traceback.print_exc()
            self._fail_everything(self.broken)
            for executor in self.executors.values():
                executor.terminate()
        finally:
            # Calls that raced with the exit (a submit posted after the last turn): run them
            # as if terminated, so that their results fail instead of waiting forever.
            self.state = TERMINATE
            for fn, args in self.inbox.close():
                try:
                    fn(*args)
                except Exception:
                    traceback.print_exc()
            self._fail_everything(self.broken or BrokenPool("the pool has stopped"))

    def _loop(self) -> None:
        wait = Waiter().wait
        inbox = self.inbox
        woken = True
        sources: List[List[Any]] = []  # each executor's readables, last turn
        readables: List[Any] = []
        owner: Dict[Any, str] = {}  # readable -> name of the executor it belongs to
        while True:
            for fn, args in inbox.drain(woken):
                fn(*args)
            # Drop the last call's arguments now (a map's input chunks can be 400 000 objects),
            # not whenever the next call arrives, which would then wait for their freeing.
            fn = args = None  # type: ignore[assignment]
            if self._unstarted:  # before the checks below: this may end the last job
                self._release_unstarted()
            if self.link is not None:  # peers joined or lost, demand, fallback
                self.link.turn(self, time.monotonic())
            if self.state == TERMINATE:
                self._shut_down(graceful=False)
                return
            if self.state == CLOSE and not self.jobs:
                self._shut_down(graceful=True)
                return
            if self._hungry:  # imap inputs the manager reads itself
                if self._deliveries:  # the results first: reading may take a while
                    self._flush()
                self._read_inputs()
            timeout = self._timeout()
            # Executors return the same readables list object until their set changes.
            current: List[List[Any]] = []
            changed = not readables or len(self.executors) != len(sources)
            for executor in self.executors.values():
                found = executor.readables()
                if not changed and found is not sources[len(current)]:
                    changed = True
                current.append(found)
                if executor.has_events():
                    timeout = 0.0
            if changed:
                sources = current
                readables = [inbox.readable]
                owner = {}
                for executor, found in zip(self.executors.values(), current):
                    readables += found
                    owner.update(dict.fromkeys(found, executor.name))
            if self._deliveries:
                self._flush()
            inbox.sleeping = True
            if inbox.pending() or self._hungry or self._unstarted:  # more to do at once
                timeout = 0.0
            ready = wait(readables, timeout, changed)
            inbox.sleeping = False
            if not ready or timeout == 0.0:
                woken = inbox.readable in ready
                self._execute(self.scheduler.timer_expired(time.monotonic()))
                # Look everywhere (deadlines, events that need no readable).
                for name, executor in list(self.executors.items()):
                    for event in executor.collect(None):
                        self._got_event(name, event)
            else:
                # Only the executors something is ready for (a submit's turn reads nothing).
                hit = {owner.get(found) for found in ready}
                woken = None in hit  # the inbox's pipe
                for name, executor in list(self.executors.items()):
                    if name in hit:
                        for event in executor.collect(ready):
                            self._got_event(name, event)
            event = None  # type: ignore[assignment]  # do not keep the last result blob alive

    def _timeout(self) -> float | None:
        earliest = self.scheduler.next_deadline()
        if self.link is not None:
            deadline = self.link.next_deadline()
            if deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        for executor in self.executors.values():
            deadline = executor.next_deadline()
            if deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        if earliest is None:
            return None
        return max(0.0, earliest - time.monotonic())

    def _credit(self, job: _Job, chunks: int) -> None:
        """Let a job the manager reads itself read ``chunks`` more (at the next turn)."""
        if not job.credit:
            self._hungry.append(job)
        job.credit += chunks

    def _read_inputs(self) -> None:
        """Read and submit the chunks credited to the jobs the manager reads itself.

        Done between turns, not where a result frees a slot: a chunk that fails at once
        (its function does not pickle) would otherwise recurse into the next one.
        """
        # Only the credit given before this call: chunks that fail at once earn credit here,
        # which waits for the next turn, so results flow and calls are served in between.
        hungry, self._hungry = self._hungry, collections.deque()
        for job in hungry:
            count, job.credit = job.credit, 0
            reader = job.reader
            if reader is None or job.job_id not in self.jobs:
                continue
            chunks: List[Tuple[int, Any, int]] = []
            while len(chunks) < count:
                found = reader.next_chunk()
                if found is None:
                    break
                index, chunk = found
                if isinstance(chunk, InputError):  # pragma: no cover - these inputs never raise
                    self.got_stream_error(job, index, chunk.error)
                    break
                # chunksize 1 calls func(item) directly, as multiprocessing does (no list)
                items = ((chunk[0],), None) if job.how == payload.APPLY else chunk
                chunks.append((index, items, len(chunk)))
            if chunks:
                self.got_stream_chunks(job, chunks)
            if reader.exhausted:
                job.reader = None
                self.got_stream_end(job, reader.count)

    def _release_unstarted(self) -> None:
        """Free the slots of chunks whose future was cancelled just before they would have
        run (see :meth:`_assign`): each ends as a cancelled result, and the next chunk
        takes its slot.  A loop here, not a recursion there: after ``shutdown(
        cancel_futures=True)`` or an abandoned ``map``, thousands may come in a row."""
        while self._unstarted:
            unstarted, self._unstarted = self._unstarted, []
            now = time.monotonic()
            for chunk_id, executor in unstarted:
                cancelled = _Failed(concurrent.futures.CancelledError())
                self._execute(self.scheduler.got_result(chunk_id, executor, cancelled, now))

    def _got_event(self, executor: str, event: ExecutorEvent) -> None:
        if isinstance(event, BatchDone):
            parts, seconds = _split_batch(event)
            first = self.chunks.get(event.chunk_ids[0]) if event.chunk_ids else None
            if seconds is not None and first is not None:
                first.job.batched_seconds += seconds
                first.job.batched_items += sum(
                    self.chunks[c].size for c in event.chunk_ids if c in self.chunks)
            done = [(part.chunk_id, part) for part in parts if isinstance(part, ChunkDone)]
            if done:  # one dispatch for the whole batch
                self._execute(self.scheduler.got_results(executor, done, time.monotonic()))
            for part in parts:
                if isinstance(part, ChunkLost):
                    self._got_event(executor, part)
            return
        now = time.monotonic()
        if isinstance(event, ChunkDone):
            commands = self.scheduler.got_result(event.chunk_id, executor, event, now)
        else:
            commands = self.scheduler.task_lost(
                event.chunk_id, executor, event.cause, now, event.charged
            )
        self._execute(commands)

    def _execute(self, commands: List[Command]) -> None:
        batch: List[Assign] = []  # consecutive Assigns of one batch, sent as one task
        # Consecutive Cancels, per executor, sent as one call: a withdrawn job's chunks leave
        # an engine together, or a child replaced for the first would be given the next
        # (still queued, about to be cancelled) at once, and start it.
        cancels: Dict[str, List[int]] = {}
        for command in commands:
            if cancels and not isinstance(command, Cancel):
                self._cancel(cancels)
                cancels = {}
            if batch and not (isinstance(command, Assign) and command.batch == batch[0].batch):
                self._assign_batch(batch)
                batch = []
            if isinstance(command, Assign):
                if command.batch is not None:
                    batch.append(command)
                else:
                    self._assign(command)
            elif isinstance(command, Resolve):
                self._resolve(_cid(command.chunk_id), command.result)
            elif isinstance(command, Fail):
                self._resolve_outcome(_cid(command.chunk_id), (False, command.error))
            elif isinstance(command, Cancel):
                cancels.setdefault(command.executor, []).append(_cid(command.chunk_id))
            # WakeAt: the loop asks the scheduler for its next deadline every turn.
        if cancels:
            self._cancel(cancels)
        if batch:
            self._assign_batch(batch)

    def _cancel(self, cancels: Dict[str, List[int]]) -> None:
        for name, chunk_ids in cancels.items():
            executor = self.executors.get(name)
            if executor is not None:
                executor.cancel(chunk_ids)

    def _assign(self, command: Assign) -> None:
        claimed = self._claim(command)
        if claimed is None:
            return
        chunk_id, chunk, func_blob = claimed
        try:
            if chunk.call_blob is None:
                chunk.call_blob = payload.dumps(_call_for(chunk.job.how, chunk.items))
                chunk.items = None
        except Exception as exc:  # unpicklable arguments: that chunk's result
            self._fail_unsent(command, exc)
            return
        # The blob is the function's key: a child keeps what it unpickled, so calls of the
        # same module function (200 applies) send it once per process, not once per job.
        self.executors[command.executor].run(chunk_id, func_blob, func_blob, chunk.call_blob,
                                             _waiter_takes(chunk.job))

    def _claim(self, command: Assign) -> Tuple[int, _Chunk, bytes] | None:
        """The chunk an Assign starts and its pickled function; None when it does not run:
        its future was cancelled (it ends in :meth:`_release_unstarted`), or its function
        does not pickle (that is its result, now)."""
        chunk_id = _cid(command.chunk_id)
        chunk = self.chunks[chunk_id]
        on_start = chunk.job.on_start
        if on_start is not None and not on_start():
            self._unstarted.append((chunk_id, command.executor))
            return None
        try:
            return chunk_id, chunk, chunk.job.blob(self._function_blobs)
        except Exception as exc:
            self._fail_unsent(command, exc)
            return None

    def _assign_batch(self, commands: List[Assign]) -> None:
        """Send the chunks of one batch to their executor as one task (one pickled
        ``payload.batch_call``).  Their items stay in memory until they are resolved: a
        chunk that runs again alone is pickled then."""
        executor = self.executors[commands[0].executor]
        sent: List[Tuple[Assign, int, payload.Call]] = []
        func_blob = b""
        for command in commands:
            claimed = self._claim(command)
            if claimed is None:
                continue
            chunk_id, chunk, func_blob = claimed
            assert chunk.items is not None  # a batch takes only chunks that never ran
            sent.append((command, chunk_id, _call_for(chunk.job.how, chunk.items)))
        try:
            batch_blob = payload.dumps(payload.batch_call([call for _, _, call in sent]))
        except Exception:  # some chunk's arguments: those fail alone, the others go
            kept = []
            for command, chunk_id, call in sent:
                try:
                    payload.dumps(call)
                except Exception as exc:
                    self._fail_unsent(command, exc)
                else:
                    kept.append((command, chunk_id, call))
            sent = kept
            try:
                batch_blob = payload.dumps(payload.batch_call([call for _, _, call in sent]))
            except Exception as exc:  # every call pickles, but not all of them at once
                for command, _, _ in sent:
                    self._fail_unsent(command, exc)
                return
        if sent:
            executor.run_batch([chunk_id for _, chunk_id, _ in sent], func_blob, func_blob,
                               batch_blob)

    def _fail_unsent(self, command: Assign, error: BaseException) -> None:
        """A chunk's function or arguments did not pickle: that is its result."""
        self._execute(self.scheduler.got_result(command.chunk_id, command.executor,
                                                _Failed(error), time.monotonic()))

    def _resolve(self, chunk_id: int, result: Any) -> None:
        if isinstance(result, _Failed):
            self._resolve_outcome(chunk_id, (False, result.error))
            return
        assert isinstance(result, ChunkDone)
        if result.blob is None:  # decoded already (a chunk of a batch)
            self._resolve_outcome(chunk_id, (result.ok, result.value))
            return
        chunk = self.chunks.get(chunk_id)
        if chunk is not None and chunk.job.result._arrived:
            # Its waiter has it (see _waiter_takes) and unpickles it: only the bookkeeping.
            self._resolve_outcome(chunk_id, (result.ok, None))
            return
        self._resolve_outcome(chunk_id, unpickled(result.ok, result.blob))

    def _resolve_outcome(self, chunk_id: int, outcome: Outcome) -> None:
        chunk = self.chunks.pop(chunk_id, None)
        if chunk is None:
            return
        self._deliver(chunk.job, chunk.index, outcome, chunk.size)

    def _deliver(self, job: _Job, index: int, outcome: Outcome, size: int) -> None:
        if job.progress is not None:
            job.progress.update(size)
        self._deliveries.append((job.result, index, outcome))
        job.resolved += 1
        if job.read_ahead_debt:
            job.read_ahead_debt -= 1  # this result's token is not given back
        elif job.slots is not None:
            job.slots.put(None)
        elif job.reader is not None:
            self._credit(job, 1)
        if job.input_error is not None and job.resolved == job.input_error[0]:
            (index, error), job.input_error = job.input_error, None
            self._deliver(job, index, (False, error), 0)
            return
        if job.length is not None and job.resolved >= job.length:
            self._job_finished(job)

    def _flush(self) -> None:
        """Hand results to their waiters (callbacks first, then wake-ups).

        Done last in every turn, just before the manager blocks: a woken caller then finds
        the interpreter lock free instead of waiting for the rest of the turn.
        """
        deliveries, self._deliveries = self._deliveries, []
        for result, index, outcome in deliveries:
            try:
                result._set(index, outcome)
            except Exception:  # a callback raised: report it, keep the pool alive
                traceback.print_exc()

    def _job_finished(self, job: _Job) -> None:
        self.jobs.pop(job.job_id, None)
        # Per item: its batches' own measure (no round trip in it) if it had any; else the
        # median time from sending a chunk to its result, over its largest chunk's items.
        if job.batched_items:
            seconds: float | None = job.batched_seconds / job.batched_items
        else:
            chunk_seconds = self.scheduler.typical_seconds(job.job_id)
            seconds = None if chunk_seconds is None else chunk_seconds / job.chunk_items
        if seconds is not None and job.func_blob is not None and job.how != payload.APPLY:
            times = self._item_seconds
            times[job.func_blob] = seconds
            times.move_to_end(job.func_blob)
            if len(times) > _CHUNK_SECONDS_KEPT:
                times.popitem(last=False)
        self.scheduler.forget_group(job.job_id)
        if job.progress is not None:
            job.progress.close()
            job.progress = None

    def _new_chunk(self, job: _Job, index: int, items: Any, size: int) -> int:
        chunk_id = next(self._chunk_ids)
        self.chunks[chunk_id] = _Chunk(job, index, items, size)
        if size > job.chunk_items:
            job.chunk_items = size
        return chunk_id

    # --- endings ---------------------------------------------------------------------------

    def _shut_down(self, graceful: bool) -> None:
        self._flush()
        if graceful:
            if self.link is not None:
                self.link.close()
            for executor in self.executors.values():
                executor.close()
            for executor in self.executors.values():
                executor.join(defaults.ENGINE_JOIN_S)
            return
        if self.link is not None:
            self.link.terminate()
        for executor in self.executors.values():
            executor.terminate()
        self._fail_everything(BrokenPool("the pool was terminated before this task finished"))

    def _fail_everything(self, error: BaseException) -> None:
        try:
            self._flush()
        except Exception:
            traceback.print_exc()
        for job in list(self.jobs.values()):
            self._fail_job(job, error)
        self.jobs.clear()
        self.chunks.clear()

    def _fail_job(self, job: _Job, error: BaseException) -> None:
        try:
            job.result._abort(error)
        except Exception:
            traceback.print_exc()
        if job.progress is not None:
            job.progress.close()
            job.progress = None
        job.failed = True
        if job.slots is not None:
            job.slots.put(None)  # wakes its feeder, which then sees `failed` and ends


def _waiter_takes(job: _Job) -> Deliver | None:
    """Who may take ``job``'s one result from the thread that receives it: an ``apply``
    with no callbacks and no progress bar (those run on the manager's thread), whose waiter
    then unpickles it itself; None for every other job (issue 16: the apply round trip
    loses a thread hop)."""
    result = job.result
    if (type(result) is ApplyResult and result._callback is None
            and result._error_callback is None and job.progress is None):
        return result._arrive
    return None


def _cid(chunk_id: Hashable) -> int:
    """The Pool numbers its chunks with ints (the scheduler accepts any hashable id)."""
    assert isinstance(chunk_id, int)
    return chunk_id


# --- exit handling ------------------------------------------------------------------------------

_live_managers: weakref.WeakSet[_Manager] = weakref.WeakSet()
_exiting = False


def _at_exit() -> None:
    """Interpreter exit: terminate pools left open (as multiprocessing does) and join them;
    executors left open finish their work first (as concurrent.futures does)."""
    global _exiting
    _exiting = True
    # Only the process that made a manager may touch it: a forked child inherits this set
    # (and maybe a lock some other thread held at fork time) but not the manager thread.
    managers = [m for m in _live_managers if m.pid == os.getpid()]
    for manager in managers:
        try:
            manager.inbox.post(manager.close if manager.finish_at_exit else manager.terminate)
        except PoolNotRunning:
            pass
    for manager in managers:
        if manager.thread.is_alive() and manager.thread is not threading.current_thread():
            # An executor's submitted work runs to its end, as concurrent.futures waits for
            # it at exit; a Pool's is bounded (its processes were told to stop).
            manager.thread.join(None if manager.finish_at_exit else defaults.ENGINE_JOIN_S * 2)


# threading._register_atexit runs before non-daemon threads are joined (Python 3.9+), which is
# what lets the manager be a regular thread without ever hanging the exit.
_register = getattr(threading, "_register_atexit", None)
_DAEMON_MANAGER = _register is None

#: Functions whose item run time a manager remembers (see _Manager._batch_sizes).
_CHUNK_SECONDS_KEPT = 32


def _split_batch(event: BatchDone) -> Tuple[List[ChunkDone | ChunkLost], float | None]:
    """One event per chunk of a batch, and the seconds its chunks took in the task process
    (None if unknown).  Each chunk gets its outcome; or (the batch failed as a whole, or
    came back unreadable) each is lost without charge, last first so that they line up in
    order at the front of the line."""
    members = event.chunk_ids
    outcomes: Any = None
    seconds: float | None = None
    try:
        found = payload.loads(event.blob)
    except Exception as exc:
        cause = f"its batch's results could not be unpickled ({exc!r})"
    else:
        if not event.ok:
            cause = f"its batch failed as a whole ({found!r})"
        elif (isinstance(found, tuple) and len(found) == 2
              and isinstance(found[0], float) and isinstance(found[1], list)
              and len(found[1]) == len(members)
              and all(isinstance(o, tuple) and len(o) == 2 for o in found[1])):
            seconds, outcomes = found
        else:
            cause = "its batch came back malformed"
    if outcomes is None:
        lost: List[ChunkDone | ChunkLost] = list(batch_lost(members, cause))
        return lost, None
    # A value is decoded already; an error stays a blob, decoded as one chunk's would be.
    return [ChunkDone(chunk_id, True, None, value) if ok else ChunkDone(chunk_id, False, value)
            for chunk_id, (ok, value) in zip(members, outcomes)], seconds


def batch_sizes(chunk_seconds: float | None) -> Tuple[int, int]:
    """``(most, least)`` chunks per batch, for chunks that took ``chunk_seconds`` each:
    as many as fit in ``BATCH_TASK_S``, capped at ``BATCH_MOST_CHUNKS``; and as many as
    fit in ``BATCH_LEAST_S``, what a task costs anyway (a map that little work goes to
    one worker, not spread thin).  ``(1, 1)`` when their time is unknown."""
    if chunk_seconds is None:
        return 1, 1
    top = defaults.BATCH_MOST_CHUNKS

    def fitting(seconds: float) -> int:
        fits = int(seconds / chunk_seconds) if chunk_seconds > 0 else top
        return max(1, min(top, fits))

    most = fitting(defaults.BATCH_TASK_S)
    return most, min(most, fitting(defaults.BATCH_LEAST_S))
if _register is not None:
    _register(_at_exit)
else:  # pragma: no cover - Python < 3.9
    import atexit

    atexit.register(_at_exit)


def _terminate_manager(manager: _Manager) -> None:
    """Tell the manager to terminate and wait (bounded) until it has."""
    try:
        manager.inbox.post(manager.terminate)
    except PoolNotRunning:
        return  # it has exited already
    thread = manager.thread
    if thread.ident is not None and thread is not threading.current_thread():
        thread.join(defaults.ENGINE_JOIN_S * 2)
