"""Run chunks of work in local child processes: bytes in, bytes out.

``ProcessEngine`` is the local half of every Pool (local mode and local fallback) and the
executor inside a volunteer worker.  It never unpickles client data itself: only its
children do, so a worker can relay blobs it does not trust to open.

::

    owner thread (Pool manager or worker)            child process i (one task at a time)
    ────────────────────────────────────             ────────────────────────────────────
    submit(task_id, key, func_blob, args_blob)
      └─> backlog ──place──> child.inflight ──pipe (os.write)────> recv: F (function, once
                                                                   per key), T (task)
    wait(readables()) ... collect()  <──────pipe (os.read)─────── R (task_id, ok, blob)
      ├─ TaskDone(task_id, ok, blob)
      └─ TaskLost(task_id, cause)  <── sentinel fired: died (SIGKILL(-9), exit code 3...),
                                       or killed for overrunning max_task_seconds

Each child gets its own pair of one-way pipes (framed as ``multiprocessing.Connection``
frames messages); there is no shared queue and no feeder thread.  A child may hold
``depth`` tasks at once (the running one plus small prefetched ones, while tasks are short,
so a finished child need not wait for the owner), but a large blob is only sent to an idle
child: an idle child is always reading, so neither side can block the other on a full pipe.

A prefetched task is only a loan.  multiprocessing's processes pull tasks from one shared
queue, so no task waits behind a slow one while another process is free; here, when a
child becomes idle while another still holds a task it has not started (behind one that
turned out slow), the owner takes that task back and gives it to the idle child.  Taking
back and starting must not race, so each child has a *claim*: a lock, a shared counter and
a small shared ring.  The child numbers the tasks it reads (``seq``); before it starts a
prefetched one (sent as ``P``) it takes the lock, records ``claimed = seq``, and skips the
task if the owner withdrew it (``ring[seq % N] == seq``).  The owner takes the lock without
blocking (a child killed while holding it must not hang the owner: then it just does not
take the task back now) and withdraws prefetched tasks behind the running one numbered
above ``claimed``, writing each one's number into its ring slot, but only into a slot whose
number the child has already read past (``<= claimed``).  Every task therefore runs
exactly once, on the child that claimed it.

The owner thread drives everything: it waits on :meth:`ProcessEngine.readables` (together
with its own wake-ups), then calls :meth:`ProcessEngine.collect`.  Nothing here starts a
thread.  Timing (task limits) uses ``time.monotonic``.

The task processes' side of the pipes is :mod:`p2ppool.execution.task_loop`, their message
format :mod:`p2ppool.execution.wire`.  What stays here (about 750 lines) is one cohesive
thing: the owner's state machine of children, backlog, loans, claims, limits and exits, whose
invariants (every task runs exactly once; no side blocks the other on a full pipe) would not
survive being spread over modules.
"""

from __future__ import annotations

import collections
import fcntl
import itertools
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Hashable, Iterable, List, Set, Union

from .. import defaults
from .task_loop import child_main
from .wire import (
    CLAIMED,
    INFO,
    KEY,
    RESULT,
    RING,
    TASK,
    UNLOADABLE,
    recv_message,
    send,
)

__all__ = ["EngineEvent", "ProcessEngine", "TaskDone", "TaskLost", "describe_exit"]


@dataclass
class TaskDone:
    """A task finished.  ``ok``: ``blob`` is the pickled value; else a pickled exception.

    ``unloadable`` (JSON, see :func:`p2ppool.payload.load_failure`) when the exception is an
    ImportError raised while loading the function, its arguments or the initializer: this
    machine lacks a module, the user's code did not fail.
    """

    task_id: int
    ok: bool
    blob: bytes | bytearray
    unloadable: bytes | None = None


@dataclass
class TaskLost:
    """A task did not finish: its child died or was killed.  ``cause`` says why.

    ``charged`` is False for a task that had not started (it waited behind the lost one).
    """

    task_id: int
    cause: str
    charged: bool = True


EngineEvent = Union[TaskDone, TaskLost]

def describe_exit(exitcode: int | None) -> str:
    """Name a child's exit code for a person: ``SIGKILL(-9)``, ``exit code 3``."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"{signal.Signals(-exitcode).name}({exitcode})"
        except ValueError:
            return f"signal {-exitcode}({exitcode})"
    return f"exit code {exitcode}"


# --- the owner's side -----------------------------------------------------------------------


class _Task:
    __slots__ = ("task_id", "func_key", "func_blob", "args_blob", "seq")

    def __init__(self, task_id: int, func_key: Hashable, func_blob: bytes, args_blob: bytes):
        self.task_id = task_id
        self.func_key = func_key
        self.func_blob = func_blob
        self.args_blob = args_blob
        self.seq = 0  # its number among the task messages sent to its child


class _Child:
    def __init__(self, process: Any, conn: Any, tx: Any, claim: Any = None) -> None:
        self.process = process
        self.conn = conn  # results come in here (and it is what wait() watches)
        self.fd: int = conn.fileno()
        self.tx = tx  # tasks go out here
        self.tx_fd: int = tx.fileno()
        self.sentinel: int = process.sentinel
        self.inflight: Deque[_Task] = collections.deque()
        self.functions: collections.OrderedDict[Hashable, int] = collections.OrderedDict()
        self.placed = 0  # tasks given to this child over its life (maxtasksperchild)
        self.sent = 0  # task messages sent to it (withdrawn ones included): their ``seq``
        self.claim = claim  # (lock, counters) for prefetched tasks, or None
        self.head_since: float | None = None  # when the running task started
        self.broken = False  # a send failed: it is dying; wait for its sentinel
        self.stale = False  # started with an older code bundle: retire once idle
        self.exited_unconfigured = False  # reaped before configure (see reap_exited)


class ProcessEngine:
    """Local child processes that run tasks given as bytes.

    Args:
        processes: number of child processes (>= 1).
        initializer_blob: ``payload.dumps((initializer, initargs))``, run once per child.
        maxtasksperchild: replace a child after it ran this many tasks (None: never).
        mp_context: a ``multiprocessing`` context (default: the default context).
        max_task_seconds: kill a child whose task runs longer (the task is lost).
        max_result_bytes: a larger result becomes a ``TaskLimitExceeded`` error.
        depth: tasks a child may hold at once (1 running + prefetched small ones).
        code_dir: a directory of shipped modules, first on the children's ``sys.path``.
        site_dir: a directory of installed packages, next on their ``sys.path``.
        env: the children's whole environment (default: inherited).
        work_dir: the children's working directory (default: inherited).
        launcher: starts each child as a subprocess instead (a worker's sandbox):
            ``launcher(rx_fd, tx_fd, read_only_paths) -> subprocess.Popen`` must run
            :func:`p2ppool.execution.sandbox.task_command` with those two descriptors.
        memory_mb: a launched child's address-space limit (forked ones get it from the
            fork server, see :mod:`p2ppool.execution.child`).
        deferred: with a launcher, start the children now but give them their settings
            (initializer, ``maxtasksperchild``, code and packages) only at
            :meth:`configure`: a worker starts a session's sandboxes while its wormhole
            is still being opened, so that they are up when the first task comes.
    """

    def __init__(
        self,
        processes: int,
        initializer_blob: bytes | None = None,
        maxtasksperchild: int | None = None,
        mp_context: Any = None,
        max_task_seconds: float | None = None,
        max_result_bytes: int | None = None,
        depth: int = defaults.ENGINE_TASKS_PER_PROCESS,
        code_dir: str | None = None,
        site_dir: str | None = None,
        env: Dict[str, str] | None = None,
        work_dir: str | None = None,
        launcher: Callable[[int, int, List[str]], Any] | None = None,
        memory_mb: float | None = None,
        deferred: bool = False,
    ) -> None:
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        self.processes = processes
        self._ctx = mp_context or multiprocessing.get_context()
        self._initializer_blob = initializer_blob
        self._maxtasks = maxtasksperchild
        self._max_task_seconds = max_task_seconds
        self._max_result_bytes = max_result_bytes
        self._depth = max(1, depth)
        self._code_dir = code_dir
        self._site_dir = site_dir
        self._env = env
        self._work_dir = work_dir
        self._launcher = launcher
        self._memory_mb = memory_mb
        self._configured = not (deferred and launcher is not None)
        self._children: List[_Child] = []
        self._retired: List[_Child] = []  # done with work, waiting to be reaped
        self._backlog: Deque[_Task] = collections.deque()
        self._events: List[EngineEvent] = []
        self._init_error: bytes | None = None
        self._init_unloadable: bytes | None = None
        self._key_ids = itertools.count()
        self._names = itertools.count(1)
        self._closing = False
        self._avg_task_s: float | None = None  # moving average of task run times
        self._maybe_prefetched = False  # a task may wait behind another (see _rebalance)
        self._went_idle = False  # a child became idle (or new) since the last _rebalance
        self.taken_back = 0  # prefetched tasks withdrawn for an idle child (a statistic)
        self._readables: List[Any] | None = None  # cache; None when children changed
        try:
            for _ in range(processes):
                self._start_child()
        except BaseException:
            self.terminate()
            raise

    # --- public API ---------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Tasks the engine runs or holds at once without backlog."""
        return self.processes * self._depth

    def free_slots(self) -> int:
        """How many more tasks would be placed on a child right away."""
        held = sum(len(c.inflight) for c in self._children) + len(self._backlog)
        return max(0, self.capacity - held)

    def pids(self) -> List[int]:
        """Process ids of the live children."""
        return [c.process.pid for c in self._children]

    def configure(self, *, initializer_blob: bytes | None, maxtasksperchild: int | None,
                  code_dir: str | None, site_dir: str | None, processes: int) -> None:
        """Give a deferred engine's children their settings (see ``deferred``); keeps at
        most ``processes`` of them."""
        if self._configured:
            raise RuntimeError("the engine is configured already")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        self._initializer_blob = initializer_blob
        self._maxtasks = maxtasksperchild
        self._code_dir = code_dir
        self._site_dir = site_dir
        self._configured = True
        # Keep the live ones: a deferred engine's children are not watched until now (a
        # worker's spare), so one may have died meanwhile; its sentinel reports it later.
        self._children.sort(key=lambda child: child.process.exitcode is not None)
        extra = self._children[max(1, processes):]
        self.processes = max(1, min(processes, self.processes))
        for child in extra:
            _kill_tree(child.process)
            self._children.remove(child)
            self._retired.append(child)
        for child in self._children:
            self._send_settings(child)
        self._readables = None
        self._place()

    @property
    def code_dir(self) -> str | None:
        """The directory of shipped modules new children import from (None: none)."""
        return self._code_dir

    def set_code_dir(self, code_dir: str | None) -> None:
        """New children import shipped modules from ``code_dir``; every child started
        before is replaced once it has finished the tasks it holds (a module is never
        reloaded into a live interpreter)."""
        if code_dir == self._code_dir:
            return
        self._code_dir = code_dir
        for child in list(self._children):
            child.stale = True
            if not child.inflight:
                self._say_exit(child)
                self._retire(child)
        self._place()

    def submit(self, task_id: int, func_key: Hashable, func_blob: bytes, args_blob: bytes) -> None:
        """Queue a task (never blocks).  Its outcome comes back from :meth:`collect`."""
        if self._closing:
            raise RuntimeError("the engine is closed")
        task = _Task(task_id, func_key, func_blob, args_blob)
        if self._init_error is not None:
            self._events.append(TaskDone(task_id, False, self._init_error, self._init_unloadable))
            return
        self._backlog.append(task)
        self._place()

    def readables(self) -> List[Any]:
        """Connections and sentinels to pass to ``multiprocessing.connection.wait``.

        The same list object is returned until the set changes (callers may cache on it;
        they must not modify it).
        """
        if self._readables is None:
            ready: List[Any] = []
            for child in self._children:
                ready.append(child.conn)
                ready.append(child.sentinel)
            ready.extend(c.sentinel for c in self._retired)
            self._readables = ready
        return self._readables

    def sentinels(self) -> List[Any]:
        """The exit sentinels of the children not seen exiting yet: what the owner of a
        deferred engine (a worker's spare, before :meth:`configure`) waits on, so that a
        child that dies meanwhile is noticed and :meth:`reap_exited` at once."""
        return [child.sentinel for child in self._children if not child.exited_unconfigured]

    def reap_exited(self) -> List[int]:
        """Before :meth:`configure`: reap the children that have exited and return their
        exit codes.  Their places stay: ``configure`` keeps the live children first and a
        dead one left in use is replaced as any child that died."""
        codes = []
        for child in self._children:
            if not child.exited_unconfigured:
                code = child.process.exitcode  # reaps an exited child
                if code is not None:
                    child.exited_unconfigured = True
                    codes.append(code)
        return codes

    def has_events(self) -> bool:
        """True if :meth:`collect` has something without waiting."""
        return bool(self._events)

    def next_deadline(self) -> float | None:
        """``time.monotonic()`` value when a running task overruns its limit, if any."""
        if self._max_task_seconds is None:
            return None
        starts = [c.head_since for c in self._children if c.head_since is not None]
        return min(starts) + self._max_task_seconds if starts else None

    def collect(self, ready: Iterable[Any] | None = None) -> List[EngineEvent]:
        """Everything that finished or was lost since the last call.  Never blocks.

        Args:
            ready: what ``wait`` returned, to look only there (default: look everywhere).
        """
        wanted: Set[Any] | None = set(ready) if ready is not None else None
        for child in list(self._children):
            if wanted is None or child.sentinel in wanted:
                self._read(child, check_exit=True)
            elif child.conn in wanted:
                self._read(child, check_exit=False)
        for child in list(self._retired):
            if wanted is None or child.sentinel in wanted:
                if child.process.exitcode is not None:
                    self._retired.remove(child)
                    self._readables = None
                    child.process.join()
                    child.conn.close()
                    child.tx.close()
        self._check_deadlines()
        if self._backlog:
            self._place()
        if self._went_idle:  # only then can a task wait behind another while a child idles
            self._went_idle = False
            if self._maybe_prefetched:
                self._rebalance()
        events, self._events = self._events, []
        return events

    def cancel(self, task_ids: Iterable[int]) -> None:
        """Forget these tasks.  A child running one is killed (and replaced); tasks that
        only waited behind it come back as uncharged :class:`TaskLost`."""
        doomed = set(task_ids)
        self._backlog = collections.deque(t for t in self._backlog if t.task_id not in doomed)
        for child in list(self._children):
            if any(t.task_id in doomed for t in child.inflight):
                child.inflight = collections.deque(
                    t for t in child.inflight if t.task_id not in doomed
                )
                # The running task is one of them or not; either way the child goes: its
                # pipe may hold a cancelled task we cannot take back.
                self._lose_child(child, "cancelled", charge_head=False, kill=True)
        self._place()

    def close(self) -> None:
        """No more tasks: children exit once idle.  Call :meth:`join` to wait for them."""
        self._closing = True
        for child in self._children:
            if not child.inflight:
                self._say_exit(child)

    def join(self, timeout: float = defaults.ENGINE_JOIN_S) -> None:
        """Wait (bounded) for children to exit; escalate to terminate, then kill."""
        everyone = self._children + self._retired
        deadline = time.monotonic() + timeout
        for child in everyone:
            child.process.join(max(0.0, deadline - time.monotonic()))
        self._stop(everyone, timeout)

    def terminate(self, timeout: float = defaults.ENGINE_JOIN_S) -> None:
        """Stop every child now (SIGTERM, then SIGKILL if it lingers); drop all tasks."""
        self._closing = True
        self._backlog.clear()
        everyone = self._children + self._retired
        for child in everyone:
            child.inflight.clear()
            if child.process.exitcode is None:
                child.process.terminate()
        self._stop(everyone, timeout)

    # --- internals ------------------------------------------------------------------------

    def _stop(self, children: List[_Child], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for child in children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.exitcode is None:
                _kill_tree(child.process)
                child.process.join(timeout)
            for end in (child.conn, child.tx):
                try:
                    end.close()
                except OSError:
                    pass
        self._children = [c for c in self._children if c not in children]
        self._retired = [c for c in self._retired if c not in children]
        self._readables = None

    def _start_child(self) -> None:
        if self._launcher is not None:
            self._launch_child()
            return
        # Two one-way pipes rather than one duplex socketpair: a pipe wakes the other side
        # a few microseconds sooner, which is most of an apply() round trip.
        child_rx, tx = self._ctx.Pipe(duplex=False)
        conn, child_tx = self._ctx.Pipe(duplex=False)
        for end in (tx, conn):
            _grow_pipe(end.fileno())
        # A claim only where tasks may be prefetched (depth > 1).
        claim = (self._ctx.Lock(), self._ctx.RawArray("q", 1 + RING)) if self._depth > 1 else None
        inherited: List[int] = []
        if self._ctx.get_start_method() == "fork":
            inherited = [tx.fileno(), conn.fileno()]
            for other in self._children + self._retired:
                for end in (other.conn, other.tx):
                    if not end.closed:
                        inherited.append(end.fileno())
        process = self._ctx.Process(
            target=child_main,
            args=(child_rx, child_tx, self._initializer_blob, self._maxtasks,
                  self._max_result_bytes, inherited, self._code_dir, self._site_dir,
                  self._env, self._work_dir, False, claim),
            name=f"P2PPoolWorker-{next(self._names)}",
            daemon=True,
        )
        try:
            process.start()
        except BaseException:
            for end in (tx, conn):
                end.close()
            raise
        finally:
            child_rx.close()
            child_tx.close()
        self._children.append(_Child(process, conn, tx, claim))
        self._readables = None
        self._went_idle = True

    def _launch_child(self) -> None:
        """Start a child through the launcher (its own sandbox): raw pipes, passed by
        number; its settings travel as the first message."""
        child_rx, tx_fd = os.pipe()
        conn_fd, child_tx = os.pipe()
        for fd in (tx_fd, conn_fd):
            _grow_pipe(fd)
        paths = [d for d in (self._code_dir, self._site_dir) if d is not None]
        try:
            popen = self._launcher(child_rx, child_tx, paths)  # type: ignore[misc]
        except BaseException:
            for fd in (tx_fd, conn_fd):
                os.close(fd)
            raise
        finally:
            os.close(child_rx)
            os.close(child_tx)
        process = _LaunchedProcess(popen)
        tx = multiprocessing.connection.Connection(tx_fd, readable=False)
        conn = multiprocessing.connection.Connection(conn_fd, writable=False)
        child = _Child(process, conn, tx)  # no claim: nothing is taken back from it
        self._children.append(child)
        self._readables = None
        self._went_idle = True
        if self._configured:
            self._send_settings(child)

    def _send_settings(self, child: _Child) -> None:
        """A launched child's first message: its settings and the initializer."""
        settings = {"maxtasks": self._maxtasks, "max_result_bytes": self._max_result_bytes,
                    "code_dir": self._code_dir, "site_dir": self._site_dir,
                    "memory_mb": self._memory_mb, "work_dir": self._work_dir}
        try:
            send(child.tx_fd, b"C", json.dumps(settings).encode() + b"\n",
                  self._initializer_blob or b"")
        except OSError:
            child.broken = True  # it died at once; its sentinel reports it

    def _open_to_work(self, child: _Child) -> bool:
        """The child may be given another task at all (it is not dying, retiring or full)."""
        if child.broken or child.stale or len(child.inflight) >= self._depth:
            return False
        return self._maxtasks is None or child.placed < self._maxtasks

    def _accepts(self, child: _Child, task: _Task) -> bool:
        if not self._open_to_work(child):
            return False
        if child.inflight:
            # Prefetch only while tasks are short (a long one would strand the next task
            # behind it while another child idles) and small (see the module docstring).
            if self._avg_task_s is None or self._avg_task_s > defaults.ENGINE_PREFETCH_BELOW_S:
                return False
            size = len(task.args_blob)
            if task.func_key not in child.functions:
                size += len(task.func_blob)
            return size <= defaults.ENGINE_PREFETCH_MAX_BYTES
        return True

    def _place(self) -> None:
        while self._backlog and not self._closing and self._configured:
            task = self._backlog[0]
            best: _Child | None = None
            for child in self._children:
                if self._accepts(child, task) and (
                    best is None or len(child.inflight) < len(best.inflight)
                    # equally busy: behind the task that started last (least likely slow)
                    or (len(child.inflight) == len(best.inflight) and child.inflight
                        and (child.head_since or 0.0) > (best.head_since or 0.0))
                ):
                    best = child
                    if not child.inflight:
                        break
            if best is None:
                return
            self._backlog.popleft()
            self._give(best, task)

    def _rebalance(self) -> None:
        """No task may wait behind another while a child is idle: take prefetched tasks
        back from busy children (the longest-running first) for the idle ones."""
        if self._closing:
            return
        idle = sum(1 for c in self._children if not c.inflight and self._open_to_work(c))
        if not idle:
            return
        waiting = [c for c in self._children if len(c.inflight) > 1 and c.claim is not None]
        if not waiting:
            self._maybe_prefetched = False
            return
        waiting.sort(key=lambda c: c.head_since or 0.0)
        taken: List[_Task] = []
        for child in waiting:
            taken += self._withdraw(child)
            if len(taken) >= idle:
                break
        if taken:
            self._backlog.extendleft(reversed(taken))
            self._place()

    def _withdraw(self, child: _Child) -> List[_Task]:
        """Take back the prefetched tasks ``child`` has not started (maybe none)."""
        lock, counters = child.claim
        if not lock.acquire(False):  # it is claiming right now (or died holding the lock)
            self._went_idle = True  # try again at the next collect
            return []
        taken: List[_Task] = []
        try:
            claimed = counters[CLAIMED]
            # The running task stays (claimed or not), and any the child claimed since.
            for task in itertools.islice(child.inflight, 1, None):
                slot = 1 + task.seq % RING
                if task.seq > claimed and counters[slot] <= claimed:
                    counters[slot] = task.seq
                    taken.append(task)
        finally:
            lock.release()
        if not taken:
            return taken
        gone = {id(task) for task in taken}
        child.inflight = collections.deque(t for t in child.inflight if id(t) not in gone)
        child.placed -= len(taken)
        self.taken_back += len(taken)
        return taken

    def _give(self, child: _Child, task: _Task) -> None:
        child.placed += 1
        child.sent += 1
        task.seq = child.sent
        child.inflight.append(task)
        if len(child.inflight) == 1:
            child.head_since = time.monotonic()
            kind = b"T"
        else:
            kind = b"P"  # behind another: the child claims it first (see _withdraw)
            self._maybe_prefetched = True
        try:
            key = child.functions.get(task.func_key)
            if key is None:
                key = next(self._key_ids) & 0xFFFFFFFF
                child.functions[task.func_key] = key
                send(child.tx_fd, b"F", KEY.pack(key), task.func_blob)
                if len(child.functions) > defaults.ENGINE_FUNCTIONS_PER_PROCESS:
                    _, old = child.functions.popitem(last=False)
                    child.tx.send_bytes(b"D" + KEY.pack(old))
            else:
                child.functions.move_to_end(task.func_key)
            send(child.tx_fd, kind, TASK.pack(task.task_id, key), task.args_blob)
        except OSError:
            child.broken = True  # it died; its sentinel will fire and _read reports it

    def _say_exit(self, child: _Child) -> None:
        try:
            child.tx.send_bytes(b"X")
        except OSError:
            pass

    def _read(self, child: _Child, check_exit: bool = True) -> None:
        """Read one message (``wait`` said the pipe is readable), or, when the child may
        have exited, everything it wrote before it went (then report its death)."""
        conn = child.conn
        try:
            if not check_exit:
                self._handle(child, recv_message(child.fd))
            else:
                while conn.poll():
                    self._handle(child, recv_message(child.fd))
        except (EOFError, OSError):
            check_exit = True
        if check_exit and child.process.exitcode is not None and child in self._children:
            self._died(child)

    def _handle(self, child: _Child, message: bytes | bytearray) -> None:
        kind = message[:1]
        if kind in (b"R", b"r"):
            task_id, ok = RESULT.unpack_from(message, 1)
            blob = message[10:] if kind == b"R" else recv_message(child.fd)
            self._finished(child, task_id, bool(ok), blob)
        elif kind in (b"U", b"u"):
            task_id, size = UNLOADABLE.unpack_from(message, 1)
            start = 1 + UNLOADABLE.size
            info = bytes(message[start:start + size])
            blob = message[start + size:] if kind == b"U" else recv_message(child.fd)
            self._finished(child, task_id, False, blob, info)
        elif kind == b"E":
            self._init_failed(child, bytes(message[1:]))
        elif kind == b"L":
            (size,) = INFO.unpack_from(message, 1)
            start = 1 + INFO.size
            self._init_failed(child, bytes(message[start + size:]),
                              bytes(message[start:start + size]))

    def _finished(self, child: _Child, task_id: int, ok: bool, blob: bytes | bytearray,
                  unloadable: bytes | None = None) -> None:
        now = time.monotonic()
        if child.head_since is not None:
            took = now - child.head_since
            avg = self._avg_task_s
            self._avg_task_s = took if avg is None else 0.8 * avg + 0.2 * took
        if child.inflight and child.inflight[0].task_id == task_id:
            child.inflight.popleft()
            self._events.append(TaskDone(task_id, ok, blob, unloadable))
        # else: a task cancelled while it was prefetched; its result is dropped.
        if child.inflight:
            child.head_since = now
        else:
            child.head_since = None
            self._went_idle = True
        if child.stale and not child.inflight:
            self._say_exit(child)
            self._retire(child)
        elif self._maxtasks is not None and child.placed >= self._maxtasks and not child.inflight:
            self._retire(child)
        elif self._closing and not child.inflight:
            self._say_exit(child)

    def _retire(self, child: _Child) -> None:
        # It exits by itself after its last task; a fresh child takes its place now.
        self._children.remove(child)
        self._retired.append(child)
        self._readables = None
        if not self._closing:
            self._start_child()

    def _init_failed(self, child: _Child, blob: bytes, unloadable: bytes | None = None) -> None:
        self._init_error = blob
        self._init_unloadable = unloadable
        for task in child.inflight:
            self._events.append(TaskDone(task.task_id, False, blob, unloadable))
        child.inflight.clear()
        while self._backlog:
            self._events.append(
                TaskDone(self._backlog.popleft().task_id, False, blob, unloadable))

    def _died(self, child: _Child) -> None:
        cause = f"process {child.process.pid} died with {describe_exit(child.process.exitcode)}"
        self._lose_child(child, cause, charge_head=True, kill=False)

    def _lose_child(self, child: _Child, cause: str, charge_head: bool, kill: bool) -> None:
        if kill and child.process.exitcode is None:
            _kill_tree(child.process)
        for position, task in enumerate(child.inflight):
            charged = charge_head and position == 0
            self._events.append(
                TaskLost(task.task_id, cause if charged else f"not started: {cause}", charged)
            )
        child.inflight.clear()
        child.head_since = None
        self._children.remove(child)
        self._retired.append(child)
        self._readables = None
        if not self._closing and self._init_error is None:
            self._start_child()

    def _check_deadlines(self) -> None:
        limit = self._max_task_seconds
        if limit is None:
            return
        now = time.monotonic()
        for child in list(self._children):
            if child.head_since is not None and now - child.head_since >= limit:
                self._lose_child(
                    child, f"exceeded the {limit:g} s task time limit", charge_head=True, kill=True
                )


class _LaunchedProcess:
    """A launched child (``subprocess.Popen``) with the parts of ``multiprocessing.Process``
    the engine uses: ``pid``, ``sentinel`` (a pidfd), ``exitcode``, ``join``, ``terminate``,
    ``kill``.  bwrap reports a child killed by signal N as exit status 128 + N: that becomes
    -N, as multiprocessing reports it.

    Signals go to the child's whole process group (it leads its own, ``start_new_session``),
    and once it has exited its group is killed before it is reaped: bwrap's sandbox half,
    cloned early, waits for the launcher half's go-ahead (an eventfd) before it can tie itself
    to its parent or leave the group; a launcher half killed in between leaves it blocked
    there for good, orphaned (seen: about one in eight sandboxes stopped right after their
    start).  Still in the group, it goes with it.  The pid (and so the group's id) stays
    reserved until the child is reaped here, so the group signalled is always the child's.
    """

    def __init__(self, popen: Any) -> None:
        self._popen = popen
        self.pid: int = popen.pid
        self.sentinel: int = os.pidfd_open(popen.pid)

    @property
    def exitcode(self) -> int | None:
        code = self._popen.returncode
        if code is None:
            if not self._exited(0.0):
                return None
            code = self._reap()
        return -(code - 128) if 128 < code < 128 + 65 else int(code)

    def join(self, timeout: float | None = None) -> None:
        if self._popen.returncode is None:
            if not self._exited(timeout):
                return
            self._reap()
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1

    def terminate(self) -> None:
        self._signal_group(signal.SIGTERM)

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)

    def _exited(self, timeout: float | None) -> bool:
        """Whether the child has exited (not reaped yet), waiting up to ``timeout``."""
        if self.sentinel < 0:
            return True
        poller = select.poll()  # not select.select: a busy worker's fds may pass 1024
        poller.register(self.sentinel, select.POLLIN)
        return bool(poller.poll(None if timeout is None else math.ceil(timeout * 1000)))

    def _reap(self) -> int:
        """The exited child's status, after its group's stragglers were killed."""
        self._signal_group(signal.SIGKILL)
        return int(self._popen.wait())

    def _signal_group(self, sig: int) -> None:
        if self._popen.returncode is not None:
            return  # reaped: its pid may belong to someone else now
        try:
            os.killpg(self.pid, sig)
        except OSError:  # no group left (ESRCH), or not ours to signal
            try:
                os.kill(self.pid, sig)
            except OSError:
                pass


def _grow_pipe(fd: int) -> None:
    """Give the pipe a larger buffer (Linux): big payloads then cross in fewer turns."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", 1031 if sys.platform.startswith("linux") else None)
    if set_size is None:
        return
    try:
        fcntl.fcntl(fd, set_size, defaults.ENGINE_PIPE_BYTES)
    except OSError:
        pass  # over /proc/sys/fs/pipe-max-size, or not Linux: the default size works too


def _kill_tree(process: Any) -> None:
    """SIGKILL the child's process group (the child and anything it started)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (OSError, ProcessLookupError):
        try:
            process.kill()
        except OSError:
            pass
