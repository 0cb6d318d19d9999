"""The Pool's link to a cluster: recruit workers on the board, run tasks over wormhole sessions.

:class:`ClusterBackend` is the seam the Pool's manager thread uses.  **One thread owns it**,
as a ``concurrent.futures`` executor's manager owns its pool: the thread that calls its
manager API (the pool's manager thread; in tests, the test's thread).  Only it touches the
remotes (``_remotes``, ``_by_worker`` and every ``_Remote``), the recruiter, the demand and
the other jobs' Wants; there is no lock around them.  The other threads own nothing of
that: they post small ``(handler, args)`` items to one inbox (a ``deque``: appends are
atomic), call ``notify`` once until the owner looks again, and :meth:`~ClusterBackend.collect`
applies them on the owner::

    owner (pool manager thread)                 helper threads (own no backend state)
    ───────────────────────────                 ─────────────────────────────────────
    set_demand(n) ─▶ Recruiter (pure, cluster/recruit.py)
                     Want / Withdraw / Accept ──outbox──▶ p2ppool-board: connects, says Hello,
                                                          publishes in order (may block on SSH);
                                                          after an Accept starts p2ppool-open:
                                                          TransferSession.open ══▶ wormhole
                     ◀──inbox── board reader: Hello, Offer, Want, Withdraw, Bye, state
                     ◀──inbox── p2ppool-open: the session (the owner sends Open)
    submit(ex, task, ...) ── Func (once), Task ═▶ session.send_parts (non-blocking; the
                                                  reactor thread writes it) ═▶ the worker
    collect() ◀──inbox── reactor thread: each frame (Ready / Result / Lost ...), session lost
       decodes frames, applies them to the remotes, runs the recruiter's timers, returns events
    notify() is called when the inbox has work (the pool then writes its wakeup pipe);
    next_deadline() is when collect() must run anyway (the recruiter's timers).
    session close: a p2ppool-close thread each (closing waits for the peer).

The hot path has no lock and no extra hop: ``submit`` queues frames on the session from the
owner, and a Result goes from the reactor thread straight to the owner's inbox.
:meth:`~ClusterBackend.usable_workers`, :meth:`~ClusterBackend.refusals` and
:attr:`~ClusterBackend.board_drops` may be read from any thread (snapshots the owner
replaces whole).

Usage by the Pool's manager::

    backend = ClusterBackend(options, job_id, max_slots, initializer_blob,
                             maxtasksperchild, notify)
    backend.start()                      # connects to the board in the background
    backend.set_demand(slots)            # more remote slots the pool could use now (0: none)
    backend.submit(executor_id, task_id, func_key, func_blob, args_blob)
    backend.cancel(executor_id, task_ids)
    for event in backend.collect(): ...  # ExecutorJoined, RemoteTaskDone, RemoteTaskLost,
                                         # TaskUnloadable, ExecutorLost, BoardTrouble
    backend.next_deadline()              # collect() again by then, even without notify
    backend.close()      # Close to every session, Withdraw + Bye on the board (bounded)
    backend.terminate()  # Cancel every task in flight, then as close() (bounded)

Contract details:

* **Demand** (:meth:`~ClusterBackend.set_demand`) counts slots *beyond* the executors already
  reported by ``ExecutorJoined``; sessions being opened are counted here, so a demand that
  does not change never opens more sessions than needed (see :mod:`p2ppool.cluster.recruit`).
* **Payloads** are the engine's: ``func_blob = payload.dumps(func)``, ``args_blob =
  payload.dumps(Call)`` (see :mod:`p2ppool.payload`); a RemoteTaskDone blob is what
  ``payload.dump_result``/``dump_exception`` made in the worker's child.  This module never
  unpickles anything.  A function is sent once per session (by ``func_key``).
* **Task ids are per executor**: a ``Result`` or ``Lost`` for a task that is not in flight on
  that executor (cancelled, or a duplicate) is **dropped here** and counted in
  :attr:`ClusterBackend.dropped_frames`.
* **Losing a session**: a session that ends after Ready (heartbeat deadline, connection
  closed, the worker said goodbye or misbehaved) gives one ``ExecutorLost(executor_id,
  cause)``; its in-flight tasks are lost with it (no RemoteTaskLost each).  ``submit`` to an
  executor that is gone gives ``RemoteTaskLost(retry=True)`` at once.
* **Refuse**: the reason is logged and reported as ``BoardTrouble``; the worker is never used
  again for this job.  Incompatible workers (another Python ``major.minor`` in their Hello)
  are never accepted in the first place.
* **The board** going away is reported as ``BoardTrouble`` (the board client reconnects with
  backoff); running sessions keep going.

Size: one owner's state (the remotes, and the recruiter's commands carried out) and, beside
it, the few methods that other threads run to feed its inbox; split, those methods would
reach into the owner's private members from another module, which is what the single-owner
design removed.  What is pure lives apart (:mod:`p2ppool.cluster.recruit` decides whom to
recruit, :mod:`p2ppool.transfer.session_protocol` is the frames).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import random
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Sequence, Set, Tuple, Union

from .. import defaults
from .._version import __version__
from ..board.auth import BoardIdentity, name_of
from ..board.protocol import (
    Accept,
    Bye,
    Done,
    Hello,
    Message,
    Offer,
    Want,
    Withdraw,
    seal_code,
)
from ..config import Options
from ..errors import (
    AccessDenied,
    BoardAuthError,
    BoardError,
    HostKeyMismatch,
    P2PPoolError,
    ProtocolError,
    TransferError,
)
from ..shipping.modules import Bundle, shared_shipper
from ..transfer.session_protocol import (
    SESSION_VERSION,
    Cancel,
    Close,
    Code,
    Forget,
    Func,
    Lost,
    Open,
    Ready,
    Refuse,
    Result,
    Task,
    Unable,
    decode_frame,
    encode_frame,
    encode_frame_parts,
)
from .recruit import AbandonSession, AcceptOffer, Command, PublishWant, PublishWithdraw, Recruiter

__all__ = [
    "BoardTrouble",
    "ClusterBackend",
    "Event",
    "ExecutorJoined",
    "ExecutorLost",
    "RemoteTaskDone",
    "RemoteTaskLost",
    "TaskUnloadable",
    "python_version",
]

log = logging.getLogger("p2ppool.cluster.backend")


def python_version() -> str:
    """This interpreter's ``major.minor``, as board messages and Open frames carry it."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


# --- events ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExecutorJoined:
    """A worker session is Ready: ``slots`` tasks may be in flight on ``executor_id``
    (``batches``: its worker runs batch tasks, see ``Ready.batches``)."""

    executor_id: str
    name: str
    slots: int
    batches: bool = False


@dataclasses.dataclass(frozen=True)
class RemoteTaskDone:
    """A task finished; ``ok=False``: ``blob`` is a pickled exception (user error).

    ``blob`` is a read-only view into the received frame (no copy of a large result).
    """

    executor_id: str
    task_id: int
    ok: bool
    blob: bytes | bytearray | memoryview


@dataclasses.dataclass(frozen=True)
class RemoteTaskLost:
    """A task did not finish.  ``retry``: running it elsewhere may help.

    ``started=False``: it never reached a worker (its session had ended), so it must not
    count as an attempt.
    """

    executor_id: str
    task_id: int
    retry: bool
    cause: str
    started: bool = True


@dataclasses.dataclass(frozen=True)
class TaskUnloadable:
    """The worker could not load a task: it lacks a module (an ImportError while loading
    the function, the arguments or the initializer).  The backend has already declined
    that worker for this job; the task must run elsewhere, at no cost of an attempt."""

    executor_id: str
    task_id: int
    worker: str
    host: str
    phase: str
    module: str | None
    error: str


@dataclasses.dataclass(frozen=True)
class ExecutorLost:
    """A session ended: every task in flight on it is lost."""

    executor_id: str
    cause: str
    released: bool = False  # this job let the session go on purpose (idle): no failure
    declined: bool = False  # this job ended it: the worker cannot load the job's code


@dataclasses.dataclass(frozen=True)
class BoardTrouble:
    """Something a person may want to know: the board is unreachable, a worker refused..."""

    message: str


Event = Union[ExecutorJoined, RemoteTaskDone, RemoteTaskLost, TaskUnloadable, ExecutorLost,
              BoardTrouble]

# Executor states.
_OPENING = "opening"  # Accept published, session being opened or waiting for Ready
_READY = "ready"
_GONE = "gone"


class _Remote:
    """One session with one worker (the owner's; other threads only pass it along)."""

    def __init__(self, executor_id: str, worker: str, taken: int) -> None:
        self.executor_id = executor_id
        self.worker = worker
        self.state = _OPENING
        self.session: Any = None
        self.slots = 0
        self.taken = taken  # slots accepted of the worker's offer: the session uses no more
        # Function keys the worker holds -> their sizes, least recently used first (it drops
        # them when told); at most REMOTE_FUNCTIONS_PER_SESSION of them, and no more bytes
        # than the worker's Ready allows (issue 17: it closes a session that goes over).
        self.funcs: collections.OrderedDict[int, int] = collections.OrderedDict()
        self.func_bytes = 0
        self.max_function_bytes: int | None = None
        self.inflight: Set[int] = set()
        # task id -> who takes its Result straight from the reactor thread (see submit);
        # the reactor pops entries; the owner adds them, and drops those of tasks cancelled
        # or lost, and all of them when the session ends or the worker is declined
        self.direct: Dict[int, Callable[[bool, Any], None]] = {}
        self.code_digest: str | None = None  # the code bundle the worker has from us
        self.declined = False  # it lacks a module the job needs: closed, never used again
        self.abandoned = False
        self.released = False  # let go while idle, for another job (see _release_idle)
        self.end_cause: str | None = None  # why we closed it, when the worker made us

    def make_room(self, size: int) -> tuple[int, ...]:
        """Drop the least recently used functions until one more of ``size`` bytes fits;
        return their keys (for a Forget frame)."""
        most_bytes = self.max_function_bytes
        forget = []
        while self.funcs and (
                len(self.funcs) >= defaults.REMOTE_FUNCTIONS_PER_SESSION
                or (most_bytes is not None and self.func_bytes + size > most_bytes)):
            oldest, oldest_size = self.funcs.popitem(last=False)
            self.func_bytes -= oldest_size
            forget.append(oldest)
        return tuple(forget)


class _AcceptOut:
    """An Accept for the board thread to publish; once it is out, a session is opened."""

    __slots__ = ("message", "remote", "code")

    def __init__(self, message: Accept, remote: _Remote, code: str) -> None:
        self.message = message
        self.remote = remote  # a handle only: the board thread reads none of its state
        self.code = code


_STOP = object()  # the board thread's last item: close the board connection


class ClusterBackend:
    """Remote executors for one Pool job (see the module docstring for the contract).

    One thread owns it: the one that calls :meth:`set_demand`, :meth:`refresh_code`,
    :meth:`submit`, :meth:`cancel`, :meth:`collect`, :attr:`executors`, :meth:`close` and
    :meth:`terminate` (the pool's manager thread).  :meth:`start` may be called from the
    thread that made it, before that; :meth:`usable_workers`, :meth:`refusals` and
    :attr:`board_drops` read snapshots from any thread.

    Args:
        options: resolved options (cluster, board, board_user, identity, known_hosts, relay,
            transit, loopback_only).
        job_id: the job's id on the board (letters, digits and ``._:@/+=-``).
        max_slots: most remote slots the job will ever use (caps every demand).
        initializer_blob: ``payload.dumps((initializer, initargs))`` or None.
        maxtasksperchild: as for ``multiprocessing.Pool`` (None: unlimited).
        notify: called (from any thread, including the process's one Twisted reactor
            thread) when :meth:`collect` has something to do.  It must return at once
            (write a byte to a wakeup pipe); it is called again for later work.
        python: the Python ``major.minor`` the job needs (default: this interpreter's).
        recruiter: a :class:`~p2ppool.cluster.recruit.Recruiter` to use (tests tune its timings).
    """

    def __init__(
        self,
        options: Options,
        job_id: str,
        max_slots: int,
        initializer_blob: bytes | None,
        maxtasksperchild: int | None,
        notify: Callable[[], None],
        *,
        python: str | None = None,
        recruiter: Recruiter | None = None,
    ) -> None:
        if options.cluster is None:
            raise ValueError("ClusterBackend needs options.cluster ('owner/name')")
        if max_slots < 1:
            raise ValueError(f"max_slots must be at least 1, not {max_slots!r}")
        self.options = options
        self.job_id = job_id
        #: signs this pool's board lines; its sender id is the pool's peer id
        self.board_identity = BoardIdentity(f"client:{job_id}")
        self.peer_id = self.board_identity.sender
        self.python = python or python_version()
        self.max_slots = max_slots
        self._initializer = initializer_blob or b""
        self._maxtasksperchild = maxtasksperchild
        self._notify = notify
        # --- the owner's (see the module docstring) ---
        self._recruiter = recruiter or Recruiter(self.python)
        self._shipper = shared_shipper(options.ship_modules)
        self._code: Bundle | None = self._shipper.current()
        self._events: List[Event] = []
        self._collecting = False  # inside collect(): events go out with its return
        self._remotes: Dict[str, _Remote] = {}  # executor id -> remote
        self._by_worker: Dict[str, _Remote] = {}  # worker -> its current remote
        self._next_session = 1
        self._closed = False
        self._idle = True  # the pool's last demand was 0: it has no work at all
        self._board_up = False  # the board thread connected: demand reaches the recruiter
        self._demand = 0  # the last demand, for the recruiter once the board is up
        self._wakeup: float | None = None  # the recruiter's next timer
        #: other jobs wanting slots, (owner, job) -> until when (a job is its owner's: a
        #: member's Withdraw cannot cancel another's job here)
        self._other_wants: Dict[Tuple[str, str], float] = {}
        #: Result/Lost frames dropped because their task was not in flight there.
        self.dropped_frames = 0
        # --- snapshots the owner replaces whole (any thread reads them) ---
        self._usable: tuple[str, ...] = ()  # see usable_workers
        self._refusals: Dict[str, str] = {}  # worker -> why it refused this job
        # --- the inbox: any thread appends (owner handler, args); the owner pops ---
        self._inbox: collections.deque[Tuple[Callable[..., None], Tuple[Any, ...]]] = (
            collections.deque())
        self._woken = False  # notify was called since the owner last looked
        # --- the board thread's ---
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._board: Any = None  # set once by the board thread; read for board_drops

    # --- the manager's API ----------------------------------------------------------------

    def start(self) -> None:
        """Connect to the board and start recruiting, in the background (returns at once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run_board, name=f"p2ppool-board-{self.job_id}", daemon=True
        )
        self._thread.start()

    @property
    def board_drops(self) -> Dict[str, int]:
        """Board lines this job's board connection dropped so far, by reason."""
        board = self._board
        return dict(board.drops) if board is not None else {}

    def set_demand(self, slots: int) -> None:
        """The pool could use ``slots`` more remote slots now (0: it wants none).

        Capped so that the Ready sessions and the new ones never exceed ``max_slots``.
        """
        now = time.monotonic()
        became_idle = int(slots) <= 0 and not self._idle
        self._idle = int(slots) <= 0
        waiting = [job for (_, job), until in self._other_wants.items() if until > now]
        self._demand = max(0, min(int(slots), self.max_slots - sum(self.executors.values())))
        if self._board_up:  # else _board_connected passes it on
            self._recruited(self._recruiter.set_demand(self._demand, now))
        if became_idle and waiting:  # another job waits for slots: let ours go now
            self._recruited(self._release_idle(waiting[0]))

    def refresh_code(self) -> None:
        """Look for changed or newly imported local modules (a new map begins): sessions
        get the new bundle with their next task.  Cheap when unchanged."""
        self._code = self._shipper.current()

    def submit(
        self, executor_id: str, task_id: int, func_key: int, func_blob: bytes, args_blob: bytes,
        deliver: Callable[[bool, Any], None] | None = None,
    ) -> None:
        """Send a task to an executor (its function first, once per session).  Non-blocking:
        the frames are queued on the session, which the reactor thread writes.

        ``deliver(ok, blob)``: called on the reactor thread with the task's Result, still
        pickled, before the owner hears of it (its RemoteTaskDone follows, unless the task
        was cancelled meanwhile), so that a caller waiting for that one result is woken
        without the owner's turn in between (issue 16).  It must be quick and must not
        raise.
        """
        remote = self._remotes.get(executor_id)
        if remote is None or remote.state != _READY:
            cause = "its session has ended"  # an ended remote is forgotten: None too
            self._emit(RemoteTaskLost(executor_id, task_id, True, cause, started=False))
            return
        frames = []
        code = self._code
        if code is not None and remote.code_digest != code.digest:
            frames.append(encode_frame_parts(Code(code.blob)))
            remote.code_digest = code.digest
        if func_key in remote.funcs:
            remote.funcs.move_to_end(func_key)
        else:
            forget = remote.make_room(len(func_blob))
            if forget:  # before the Func: the worker must never hold too much
                frames.append((encode_frame(Forget(forget)),))
            remote.funcs[func_key] = len(func_blob)
            remote.func_bytes += len(func_blob)
            frames.append(encode_frame_parts(Func(func_key, func_blob)))
        frames.append(encode_frame_parts(Task(task_id, func_key, args_blob)))
        remote.inflight.add(task_id)
        if deliver is not None:  # before the Task goes: its Result may come at once
            remote.direct[task_id] = deliver
        try:
            for parts in frames:
                remote.session.send_parts(parts)
        except TransferError:
            pass  # the session ended: on_lost reports ExecutorLost with this task in flight

    def cancel(self, executor_id: str, task_ids: Sequence[int]) -> None:
        """Stop tasks on an executor; their results will not be reported."""
        remote = self._remotes.get(executor_id)
        if remote is None or remote.state != _READY:
            return
        ids = tuple(t for t in task_ids if t in remote.inflight)
        remote.inflight.difference_update(ids)
        for task_id in ids:
            remote.direct.pop(task_id, None)
        if ids:
            try:
                remote.session.send(encode_frame(Cancel(ids)))
            except TransferError:
                pass

    def collect(self) -> List[Event]:
        """Apply what the other threads posted, run the recruiter's timers, and return
        every event since the last call, in order (non-blocking)."""
        self._woken = False  # before looking: a post after this calls notify again
        wakeup = self._wakeup
        if not self._inbox and not self._events and (
                wakeup is None or time.monotonic() < wakeup):
            return []  # the usual case on the manager's every turn
        self._collecting = True
        try:
            self._drain()
            if self._wakeup is not None and time.monotonic() >= self._wakeup:
                self._recruited([])
            events, self._events = self._events, []
            joined = [e.name for e in events if isinstance(e, ExecutorJoined)]
            if joined:
                self._recruited(self._joined_reported(joined))
                events += self._events  # (none expected: joined_reported only publishes)
                self._events = []
        finally:
            self._collecting = False
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`collect` must be called even if ``notify`` was not: the recruiter's
        next timer (``time.monotonic()`` time), or None."""
        return self._wakeup

    def _joined_reported(self, workers: List[str]) -> List[Command]:
        commands: List[Command] = []
        for worker in workers:
            commands += self._recruiter.joined_reported(worker, time.monotonic())
        return commands

    @property
    def executors(self) -> Dict[str, int]:
        """Executor id -> slots, for every Ready session (a snapshot)."""
        return {e: r.slots for e, r in self._remotes.items() if r.state == _READY}

    def usable_workers(self) -> List[str]:
        """Workers heard on the board that this job may still use (not declined or
        refused, the right Python), as of the last :meth:`collect`.  Any thread."""
        return list(self._usable)

    def refusals(self) -> Dict[str, str]:
        """Workers that refused this job's session -> their reason.  Any thread."""
        return dict(self._refusals)

    def close(self, timeout: float = defaults.REMOTE_CLOSE_TIMEOUT_S) -> None:
        """End the job: goodbye to every session, Withdraw and Bye on the board.  Bounded."""
        self._shutdown(cancel=False, timeout=timeout)

    def terminate(self, timeout: float = defaults.REMOTE_CLOSE_TIMEOUT_S) -> None:
        """Cancel every task in flight, then end as :meth:`close` does.  Bounded."""
        self._shutdown(cancel=True, timeout=timeout)

    # --- the inbox ----------------------------------------------------------------------

    def _post(self, handler: Callable[..., None], *args: Any) -> None:
        """Any thread: have the owner call ``handler(*args)`` at its next :meth:`collect`.

        ``notify`` is called once until the owner looks again (a burst of frames costs the
        pool one wakeup); ``deque.append`` is atomic, so this takes no lock.
        """
        self._inbox.append((handler, args))
        if not self._woken:
            self._woken = True
            self._wake()

    def _wake(self) -> None:
        try:
            self._notify()
        except Exception:  # noqa: BLE001 - the pool's callback must not break our threads
            log.exception("notify callback failed")

    def _drain(self) -> None:
        """Owner: run every posted handler, in order."""
        inbox = self._inbox
        while inbox:
            handler, args = inbox.popleft()
            try:
                handler(*args)
            except Exception as exc:  # noqa: BLE001 - report, never break the pool
                log.exception("the cluster client failed to handle %s", handler.__name__)
                self._trouble(f"the cluster client hit an internal error: {exc!r}")
            handler = args = None  # type: ignore[assignment]  # do not keep a frame alive

    def _emit(self, *events: Event) -> None:
        """Owner: queue events for :meth:`collect` (outside it, wake the pool for them)."""
        self._events.extend(events)
        if events and not self._collecting:
            self._wake()

    def _trouble(self, message: str) -> None:
        log.warning("%s", message)
        self._emit(BoardTrouble(message))

    def _report(self, message: str) -> None:
        """Any thread: log trouble now; the owner reports it as an event."""
        log.warning("%s", message)
        self._post(self._emit, BoardTrouble(message))

    # --- the owner: recruiting ------------------------------------------------------------

    def _recruited(self, commands: List[Command]) -> None:
        """Owner: after any input to the recruiter, carry out its commands and those of
        its timers now due, then note its next timer and the usable workers."""
        now = time.monotonic()
        commands = commands + self._recruiter.timer_expired(now)
        self._execute(commands)
        self._wakeup = self._recruiter.next_wakeup(time.monotonic())
        self._usable = tuple(self._recruiter.usable())

    def _feed(self, step: Callable[[float], List[Command]]) -> None:
        """Owner: one recruiter input (``step(now)``) from a board message or a session.

        Not held back until :meth:`_board_connected`: a message may be read before that
        reaches the owner, and a closed recruiter ignores inputs.
        """
        self._recruited(step(time.monotonic()))

    def _board_connected(self) -> None:
        """Owner: the board thread is connected; the demand so far reaches the recruiter."""
        if self._closed:
            return
        self._board_up = True
        self._recruited(self._recruiter.set_demand(self._demand, time.monotonic()))

    def _execute(self, commands: List[Command]) -> None:
        for command in commands:
            if isinstance(command, PublishWant):
                self._outbox.put(Want(sender=self.peer_id, ts=time.time(),
                                      ttl=defaults.RECRUIT_WANT_TTL_S, job=self.job_id,
                                      slots=command.slots, python=self.python,
                                      session=SESSION_VERSION,
                                      requires=self.options.requirements or None))
            elif isinstance(command, PublishWithdraw):
                self._outbox.put(Withdraw(sender=self.peer_id, ts=time.time(),
                                          ttl=defaults.MESSAGE_TTL_S, job=self.job_id))
            elif isinstance(command, AcceptOffer):
                self._accept(command)
            elif isinstance(command, AbandonSession):
                self._abandon(command.worker, command.cause)

    def _got_want(self, msg: Want) -> None:
        """Owner: another job wants slots (an idle pool lets its sessions go)."""
        now = time.monotonic()
        if len(self._other_wants) > 64:  # forget expired ones
            self._other_wants = {j: u for j, u in self._other_wants.items() if u > now}
        self._other_wants[(msg.sender, msg.job)] = now + (msg.expires_at() - time.time())
        self._recruited(self._release_idle(msg.job))

    def _got_job_done(self, msg: Withdraw | Done) -> None:
        """Owner: another job withdrew its Want or ended."""
        self._other_wants.pop((msg.sender, str(msg.job)), None)

    # --- the owner: sessions ----------------------------------------------------------------

    def _release_idle(self, other_job: str) -> List[Command]:
        """Another job wants slots: while this pool has no work, let its sessions go.

        An idle pool must not hold volunteers' slots that other jobs could use; the sessions
        are reported lost at once (``released=True``, no failure), and recruited again, with
        no backoff, when this pool has work again.
        """
        if not self._idle or self._closed:
            return []
        released = [r for r in self._remotes.values() if r.state == _READY and not r.inflight]
        commands: List[Command] = []
        if released:
            # Idle: no slot is wanted, whether or not the pool's demand of 0 has reached
            # the recruiter yet: a released slot must not be asked for again, which would
            # make other idle pools let their workers go.
            commands += self._recruiter.set_demand(0, time.monotonic())
        for remote in released:
            remote.state, remote.released = _GONE, True
            log.info("released idle worker %s (%s): job %s wants slots", remote.worker,
                     remote.executor_id, other_job)
            try:
                remote.session.send(encode_frame(Close()))
            except TransferError:
                pass
            self._close_in_background(remote, "idle; released for another job")
            self._emit(ExecutorLost(remote.executor_id,
                                    f"worker {remote.worker}: released while idle",
                                    released=True))
            commands += self._recruiter.session_released(remote.worker, time.monotonic())
        return commands

    def _accept(self, command: AcceptOffer) -> None:
        """Owner: a new remote; the board thread publishes the Accept, then opens it."""
        from ..transfer.session import new_code

        if self._closed:
            return
        executor_id = f"{command.worker}#{self._next_session}"
        self._next_session += 1
        remote = _Remote(executor_id, command.worker, command.slots)
        self._remotes[executor_id] = remote
        self._by_worker[command.worker] = remote
        code = new_code()
        accept = Accept(sender=self.peer_id, ts=time.time(), ttl=defaults.MESSAGE_TTL_S,
                        job=self.job_id, worker=command.worker,
                        code=seal_code(code, command.key))
        self._outbox.put(_AcceptOut(accept, remote, code))

    def _opened(self, remote: _Remote, session: Any) -> None:
        """Owner: the opener thread paired the session: send Open (Ready comes as a frame)."""
        remote.session = session
        if remote.abandoned or self._closed or remote.state == _GONE:
            self._close_in_background(remote, "not needed any more")
            return
        bundle = self._code
        remote.code_digest = bundle.digest if bundle is not None else None
        opening = Open(job=self.job_id, python=self.python, slots=remote.taken,
                       maxtasksperchild=self._maxtasksperchild, initializer=self._initializer,
                       code=bundle.blob if bundle is not None else b"",
                       requires=self.options.requirements)
        try:
            session.send(encode_frame(opening))
        except TransferError:
            pass  # on_lost follows

    def _forget(self, remote: _Remote) -> None:
        """Drop an ended remote from the tables.

        An ended session must not stay reachable from a long-lived pool: a pool that loses
        or hands over sessions for hours would otherwise keep every one of them, and with
        it the wormhole's dilation state (about 100 kB each in the soak).  Calls for its
        executor id then find nothing, which :meth:`submit` and :meth:`cancel` handle.
        """
        if self._remotes.get(remote.executor_id) is remote:
            del self._remotes[remote.executor_id]
        if self._by_worker.get(remote.worker) is remote:
            del self._by_worker[remote.worker]

    def _session_failed(self, remote: _Remote, cause: str) -> None:
        """Owner: a session that never became Ready is over."""
        self._forget(remote)
        if remote.state == _GONE:
            return
        remote.state = _GONE
        log.info("session %s with worker %s failed: %s", remote.executor_id, remote.worker, cause)
        self._feed(lambda now: self._recruiter.session_failed(remote.worker, now))

    def _abandon(self, worker: str, cause: str) -> None:
        remote = self._by_worker.get(worker)
        if remote is None or remote.state != _OPENING:
            return
        remote.abandoned = True
        remote.state = _GONE
        log.info("gave up on worker %s: %s", worker, cause)
        self._close_in_background(remote, "not ready in time")

    def _frame_arrived(self, remote: _Remote, data: bytes) -> None:
        """Reactor thread: one frame from a worker.  A Result that a caller waits for
        directly (see :meth:`submit`) is handed to it here; the owner handles every frame."""
        if not remote.direct:
            self._post(self._got_frame, remote, data)
            return
        try:
            frame = decode_frame(data)
        except ProtocolError:
            self._post(self._got_frame, remote, data)  # the owner reports it
            return
        if isinstance(frame, Result):
            deliver = remote.direct.pop(frame.task_id, None)
            if deliver is not None:
                try:
                    deliver(frame.ok, frame.blob)
                except Exception:  # noqa: BLE001 - the owner's RemoteTaskDone still follows
                    log.exception("handing over the result of task %d failed", frame.task_id)
        self._post(self._got_decoded, remote, frame)

    def _got_frame(self, remote: _Remote, data: bytes) -> None:
        """Owner: one frame from a worker (posted by the reactor thread)."""
        try:
            frame = decode_frame(data)
        except ProtocolError as exc:
            self._close_remote(remote, f"sent a malformed frame ({exc})")
            return
        self._got_decoded(remote, frame)

    def _got_decoded(self, remote: _Remote, frame: Any) -> None:
        """Owner: one decoded frame from a worker."""
        if isinstance(frame, Result):
            if self._known(remote, frame.task_id):
                self._emit(RemoteTaskDone(remote.executor_id, frame.task_id, frame.ok, frame.blob))
        elif isinstance(frame, Lost):
            remote.direct.pop(frame.task_id, None)
            if self._known(remote, frame.task_id):
                cause = frame.cause
                # Workers usually name themselves already (by name: "<name>~<key>" is their id).
                if name_of(remote.worker) not in cause:
                    cause = f"worker {remote.worker}: {cause}"
                self._emit(RemoteTaskLost(remote.executor_id, frame.task_id, frame.retry, cause))
        elif isinstance(frame, Unable):
            self._on_unable(remote, frame)
        elif isinstance(frame, Ready):
            self._on_ready(remote, frame)
        elif isinstance(frame, Refuse):
            self._on_refuse(remote, frame.reason)
        elif isinstance(frame, Close):
            remote.end_cause = "the worker ended the session (it is stopping)"
            self._close_in_background(remote, "")
        else:
            self._close_remote(remote, f"sent a {type(frame).__name__} frame, which only "
                                       "clients send")

    def _known(self, remote: _Remote, task_id: int) -> bool:
        """A task's Result or Lost: True when it was in flight there (else counted dropped)."""
        if task_id in remote.inflight:
            remote.inflight.discard(task_id)
            return True
        self.dropped_frames += 1
        return False

    def _on_unable(self, remote: _Remote, frame: Unable) -> None:
        """The worker lacks a module the job needs: report the task (it runs elsewhere),
        and decline the worker for this job (once: its other tasks fail the same way)."""
        known = frame.task_id in remote.inflight
        remote.inflight.discard(frame.task_id)
        first, remote.declined = not remote.declined, True
        # Its tasks run elsewhere now, and a late Result from it counts for nothing (the
        # scheduler ignores a run it wrote off): none may reach a caller.
        remote.direct.clear()
        if known:
            self._emit(TaskUnloadable(remote.executor_id, frame.task_id, remote.worker,
                                      frame.host, frame.phase, frame.module, frame.error))
        if first:
            reason = f"it cannot load the job's {frame.phase}: {frame.error}"
            log.info("worker %s %s; declining it for this job", remote.worker, reason)
            remote.end_cause = reason
            self._feed(lambda now: self._recruiter.session_refused(remote.worker, reason, now))
            self._close_in_background(remote, "declined: a module is missing there")

    def _on_ready(self, remote: _Remote, frame: Ready) -> None:
        if remote.state != _OPENING or remote.abandoned or self._closed:
            return
        remote.state = _READY
        remote.max_function_bytes = frame.max_function_bytes
        # No more than accepted, even from a worker that ignores Open.slots.
        slots = remote.slots = min(frame.slots, remote.taken)
        log.info("worker %s is ready with %d slot(s) (%s)", frame.worker, slots,
                 remote.executor_id)
        self._feed(lambda now: self._recruiter.session_ready(remote.worker, slots, now))
        self._emit(ExecutorJoined(remote.executor_id, remote.worker, slots, frame.batches))

    def _on_refuse(self, remote: _Remote, reason: str) -> None:
        remote.state = _GONE
        self._refusals = {**self._refusals, remote.worker: reason}  # a new snapshot
        message = f"worker {remote.worker} refused this job: {reason}"
        log.warning("%s", message)
        self._feed(lambda now: self._recruiter.session_refused(remote.worker, reason, now))
        self._emit(BoardTrouble(message))
        self._close_in_background(remote, "refused")

    def _close_remote(self, remote: _Remote, why: str) -> None:
        """Close a session because the worker misbehaved (on_lost reports the end)."""
        log.warning("worker %s %s; closing its session", remote.worker, why)
        remote.end_cause = f"it {why}"
        self._close_in_background(remote, f"protocol error: {why}")

    def _close_in_background(self, remote: _Remote, reason: str) -> None:
        """Owner: close a session on a thread of its own (closing waits for the peer)."""
        session = remote.session
        if session is not None:
            threading.Thread(target=session.close, args=(reason,), daemon=True,
                             name=f"p2ppool-close-{remote.executor_id}").start()

    def _lost(self, remote: _Remote, cause: str) -> None:
        """Owner: the session ended, for any reason (posted by the reactor thread)."""
        state, remote.state = remote.state, _GONE
        remote.inflight.clear()
        remote.direct.clear()
        cause = remote.end_cause or cause
        self._forget(remote)
        if state == _READY:
            if not self._closed and not remote.declined:
                log.warning("lost worker %s (%s): %s", remote.worker, remote.executor_id, cause)
            self._emit(ExecutorLost(remote.executor_id, f"worker {remote.worker}: {cause}",
                                    declined=remote.declined))
        if state in (_READY, _OPENING):
            self._feed(lambda now: self._recruiter.session_failed(remote.worker, now))

    # --- the board thread -------------------------------------------------------------------

    def _run_board(self) -> None:
        """Board thread: connect (with backoff), say Hello, then publish what the owner
        queues, in order (a publish may block on SSH), until close."""
        try:
            if not self._connect_board():
                return
            self._post(self._board_connected)
            while True:
                item = self._outbox.get()
                if item is _STOP:
                    break
                if isinstance(item, _AcceptOut):
                    self._publish_accept(item)
                else:
                    self._publish(item)
                item = None  # an Accept holds a remote: do not keep it while waiting
        except Exception as exc:  # noqa: BLE001 - report, never die silently
            log.exception("the board thread failed")
            self._report(f"recruiting workers stopped after an internal error: {exc!r}")
        finally:
            board = self._board
            if board is not None:
                board.close()

    def _connect_board(self) -> bool:
        from ..board.client import BoardClient, backoff_delay

        host, port = self.options.board_address
        cluster = self.options.cluster
        assert cluster is not None
        attempt = 0
        rng = random.Random()
        while not self._stopping.is_set():
            client = BoardClient(
                host, port, topic=cluster, username=self.options.board_user,
                identity=self.options.identity, known_hosts=self.options.known_hosts,
                on_message=self._on_board_message, on_state=self._on_board_state,
                sender=self.board_identity,
            )
            try:
                client.connect()
            except (BoardAuthError, HostKeyMismatch, AccessDenied) as exc:
                self._report(f"cannot use the board for cluster {cluster}: {exc}")
                return False
            except BoardError as exc:
                if attempt == 0:
                    self._report(f"cannot reach the board for cluster {cluster} "
                                 f"(retrying in the background): {exc}")
                if self._stopping.wait(backoff_delay(attempt, rng.random())):
                    return False
                attempt += 1
                continue
            if self._stopping.is_set():
                client.close()
                return False
            self._board = client
            self._publish(self._hello())
            return True
        return False

    def _hello(self) -> Hello:
        return Hello(sender=self.peer_id, ts=time.time(), ttl=defaults.HELLO_TTL_S,
                     role="client", python=self.python, version=__version__, slots=0)

    def _publish(self, msg: Message) -> bool:
        """Board thread: publish one message (it may block); report a failure."""
        board = self._board
        if board is None:
            return False
        try:
            board.publish(msg)
        except (BoardError, P2PPoolError) as exc:
            self._report(f"could not publish {msg.TYPE} on the board: {exc}")
            return False
        return True

    def _publish_accept(self, out: _AcceptOut) -> None:
        """Board thread: publish an Accept, then open its session on a thread of its own."""
        remote = out.remote
        if not self._publish(out.message):
            self._post(self._session_failed, remote, "the accept could not be published")
            return
        log.info("accepted %d slot(s) of worker %s; opening session %s",
                 remote.taken, remote.worker, remote.executor_id)
        threading.Thread(target=self._open, args=(remote, out.code),
                         name=f"p2ppool-open-{remote.executor_id}", daemon=True).start()

    # --- the board reader thread -------------------------------------------------------------

    def _on_board_state(self, state: Any) -> None:
        value = getattr(state, "value", str(state))
        if value == "reconnecting":
            self._report("lost the board connection; reconnecting (running sessions go on)")
        elif value == "connected" and self._board is not None:
            log.info("board connection is back")
            self._outbox.put(self._hello())
        elif value == "failed" and self._board is not None:
            # (A failed first contact raises from connect() and is reported there.)
            error = getattr(self._board, "error", None)
            self._report(f"the board connection failed for good: {error}")

    def _on_board_message(self, msg: Message) -> None:
        """Board reader thread: post the relevant messages to the owner."""
        if isinstance(msg, Hello) and msg.role == "worker":
            self._post(self._feed, lambda now: self._recruiter.got_hello(
                msg.sender, msg.python, now, msg.slots))
        elif isinstance(msg, Bye) and msg.role == "worker":
            self._post(self._feed, lambda now: self._recruiter.got_bye(msg.sender, now))
        elif isinstance(msg, Want) and msg.job != self.job_id:
            self._post(self._got_want, msg)
        elif (isinstance(msg, Withdraw) and msg.job == self.job_id
              and msg.worker is not None and msg.worker == msg.sender
              and msg.client == self.peer_id):
            # The worker withdrew its offer (we were too slow, and another job waited).
            self._post(self._feed, lambda now: self._recruiter.offer_withdrawn(msg.sender, now))
        elif isinstance(msg, Withdraw) and msg.worker is not None:
            return  # a worker's offer to another job: that job still wants slots
        elif isinstance(msg, (Withdraw, Done)) and msg.job not in (None, self.job_id):
            self._post(self._got_job_done, msg)
        elif isinstance(msg, Offer) and msg.job == self.job_id:
            if msg.worker != msg.sender or msg.client != self.peer_id:
                return  # a worker offers only itself; to another's Want under our job id
            expires = time.monotonic() + (msg.expires_at() - time.time())
            self._post(self._feed, lambda now: self._recruiter.got_offer(
                msg.worker, msg.slots, msg.key, expires, now))

    # --- opener and reactor threads -----------------------------------------------------------

    def _open(self, remote: _Remote, code: str) -> None:
        """Opener thread: pair and dilate (blocking), then hand the session to the owner."""
        from ..transfer.session import CLIENT, TransferSession

        try:
            session = TransferSession.open(
                code, self.options.relay, self.options.transit, role=CLIENT,
                on_frame=lambda data: self._frame_arrived(remote, data),
                on_lost=lambda cause: self._post(self._lost, remote, cause),
                loopback_only=self.options.loopback_only,
                timeout=defaults.RECRUIT_ACCEPT_TIMEOUT_S,
            )
        except (TransferError, ValueError) as exc:
            self._post(self._session_failed, remote, f"the session did not open: {exc}")
            return
        self._post(self._opened, remote, session)
        if self._closed:  # the owner may drain no more (see _shutdown): close it here
            session.close("not needed any more")

    # --- ending ---------------------------------------------------------------------------

    def _shutdown(self, cancel: bool, timeout: float) -> None:
        """Owner: goodbye to every session and on the board, bounded by ``timeout``."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        self._closed = True
        # The last drain: a session opened before this is closed below or by _opened; one
        # posted after it, its opener closes itself (it reads _closed after posting).
        self._drain()
        sessions = [(r.session, tuple(sorted(r.inflight))) for r in self._remotes.values()
                    if r.session is not None and r.state != _GONE]
        for session, inflight in sessions:
            try:
                if cancel and inflight:
                    session.send(encode_frame(Cancel(inflight)))
                session.send(encode_frame(Close()))
            except TransferError:
                pass
        closers = [threading.Thread(target=s.close, args=("the pool has ended",), daemon=True)
                   for s, _ in sessions]
        for thread in closers:
            thread.start()
        self._execute(self._recruiter.close(time.monotonic()))  # Withdraw, if it wanted
        self._outbox.put(Done(sender=self.peer_id, ts=time.time(),
                              ttl=defaults.MESSAGE_TTL_S, job=self.job_id))
        self._outbox.put(Bye(sender=self.peer_id, ts=time.time(),
                             ttl=defaults.MESSAGE_TTL_S, role="client"))
        self._outbox.put(_STOP)  # the board thread publishes those, then closes the board
        self._stopping.set()  # (a board thread still connecting gives up)
        self._wakeup = None
        for closer in closers:
            closer.join(max(0.0, deadline - time.monotonic()))
        board_thread = self._thread
        if board_thread is not None and board_thread is not threading.current_thread():
            board_thread.join(max(0.1, deadline - time.monotonic()))
