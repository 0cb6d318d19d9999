"""The worker's one loop: board presence, client sessions and their process engines.

Used by :mod:`p2ppool.worker` (the command line).  The session frames and engine events are
handled in :mod:`p2ppool.worker.sessions`, the board connection in :mod:`p2ppool.worker.presence`.

::

    board reader thread ──on_message/on_state──┐
    reactor thread ─────on_frame/on_lost───────┼──> _Inbox (deque + wakeup pipe)
    session opener threads ──opened/failed─────┘          │
    signal handlers ──counter + wakeup byte────────────────┤
                                                           v
    main thread: Worker.serve() ── wait(wakeup pipe + every engine's pipes and sentinels,
                                        timeout = next deadline)
       ├─ board messages ─> peer.Peer (pure) ─> Publish / OpenSession / Note
       ├─ session frames ─> Open -> ProcessEngine + Ready | Refuse;  Func, Task, Cancel, Bye
       └─ engine events ──> Result / Lost frames back to the session's client

Only the main thread owns state; the other threads hand events over through the inbox.  The
worker itself never unpickles client data: blobs go to the session's
:class:`~p2ppool.execution.engine.ProcessEngine`, whose child processes unpickle and run them.
Children
are started by a fork server, so they inherit none of the worker's sockets (the SSH board
connection, the wormhole sessions) and cannot speak on the worker's behalf.  They find the
worker's name in the environment variable ``P2PPOOL_WORKER`` (:data:`WORKER_NAME_ENV`).

Shutdown: the first SIGINT/SIGTERM (or the end of ``--ttl``) withdraws: a Bye on the board,
no more offers, new tasks are sent back (``Lost(retry=True)``), in-flight tasks get up to
``WORKER_GRACE_S`` to finish, then a Bye on every session and exit status 0.  A second signal
kills the children at once, reports their tasks lost (retry elsewhere) and exits with 1.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any, Deque, Dict, List, Sequence, Tuple

from .. import defaults
from .._version import __version__
from ..board.auth import BoardIdentity
from ..errors import P2PPoolError
from ..execution.limits import ProcessLimit
from ..payload import WORKER_NAME_ENV  # re-exported: it has always been named here
from ..shipping.cache import CodeCache
from ..shipping.environments import Environments
from .presence import BoardPresence
from .sessions import (
    _KILL_WAIT_S,
    AWAITING_OPEN,
    RUNNING,
    SessionHandling,
    _ClientSession,
)

__all__ = [
    "EXIT_ERROR", "EXIT_FORCED", "EXIT_OK", "WORKER_NAME_ENV", "Worker", "WorkerSettings",
]

log = logging.getLogger("p2ppool.worker")

EXIT_OK = 0
EXIT_FORCED = 1
EXIT_ERROR = 2


def _python() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


# --- settings -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs, resolved from the command line and ``P2PPOOL_*``."""

    cluster: str
    name: str
    processes: int
    board_host: str
    board_port: int | None  # None: the SSH config's Port, else 22
    board_user: str | None
    identity: str | None
    known_hosts: str | None
    relay: str
    transit: str | None
    loopback_only: bool
    max_task_seconds: float | None
    max_payload_bytes: int
    ttl: float | None
    grace: float = defaults.WORKER_GRACE_S
    max_memory_mb: float | None = None
    python: str = dataclasses.field(default_factory=_python)
    #: let cluster members have packages installed here (``requirements=``)
    allow_install: bool = False
    install_cache: str | None = None  # where installed requirement sets live
    install_cache_bytes: int = defaults.WORKER_INSTALL_CACHE_BYTES
    #: how tasks are confined: "auto" (bwrap where it works), "bwrap" or "none"
    sandbox: str = "auto"
    allow_network: bool = False  # sandboxed tasks share the host's network
    sandbox_ro: Tuple[str, ...] = ()  # extra paths sandboxed tasks may read
    sandbox_rw: Tuple[str, ...] = ()  # extra paths sandboxed tasks may write
    #: processes one session's sandboxed tasks may have at once (a pids cgroup, if allowed)
    max_task_processes: int = defaults.WORKER_MAX_TASK_PROCESSES
    #: bytes of functions one session may keep here (``--max-functions-mb``)
    max_function_bytes: int = defaults.WORKER_FUNCTION_BYTES_PER_SESSION

    @property
    def function_budget(self) -> int:
        """Bytes of functions a session may keep: at least one function of any size allowed."""
        return max(self.max_function_bytes, self.max_payload_bytes)

    @property
    def max_frame_bytes(self) -> int:
        """Largest frame a session reads: a payload up to twice the limit is read and
        refused with a clear Lost; a larger one closes the session at its header."""
        return 2 * self.max_payload_bytes + 1024 * 1024


# --- the inbox: how other threads hand events to the main loop ------------------------------


class _Inbox:
    """A thread-safe event queue whose wakeup pipe the main loop waits on."""

    def __init__(self) -> None:
        self._events: Deque[Tuple[Any, ...]] = collections.deque()
        self._lock = threading.Lock()
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)

    def post(self, *event: Any) -> None:
        with self._lock:
            self._events.append(event)
        self.wake()

    def wake(self) -> None:
        """Make the main loop's wait return (safe in a signal handler: no lock)."""
        try:
            os.write(self.write_fd, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the loop is awake anyway

    def drain(self) -> List[Tuple[Any, ...]]:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._lock:
            events = list(self._events)
            self._events.clear()
        return events

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


# --- the worker ---------------------------------------------------------------------------


class Worker(BoardPresence, SessionHandling):
    """A volunteer worker: board presence, sessions, engines, and the one loop that owns them.

    Use: ``worker = Worker(settings)``, ``worker.install_signal_handlers()`` (main thread),
    ``worker.connect_board()`` (raises a clear BoardError), then ``status = worker.serve()``.

    Args:
        settings: the resolved settings.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        from ..board.protocol import new_offer_keypair
        from .peer import Peer, PeerConfig

        self.settings = settings
        self.inbox = _Inbox()
        self.environments = Environments(
            settings.install_cache, settings.allow_install, settings.install_cache_bytes,
            on_change=lambda: self.inbox.post("requirements"))
        #: signs the worker's board lines (a fresh key per run): its id is name~key
        self.board_identity = BoardIdentity(settings.name)
        self.peer = Peer(
            PeerConfig(worker_id=self.board_identity.sender, python=settings.python,
                       version=__version__,
                       slots=settings.processes),
            new_offer_keypair, serves=self._serves,
        )
        self.sessions: Dict[int, _ClientSession] = {}
        self.code_cache = CodeCache()  # the clients' own modules, for their task processes
        self.board: Any = None
        self.signals = 0
        self._signals_handled = 0
        self.withdrawing = False
        self.forced = False
        self.exit_status = EXIT_OK
        self._grace_deadline: float | None = None  # monotonic
        self._ttl_deadline: float | None = None  # monotonic
        self._closers: List[threading.Thread] = []
        self._board_generation = 0
        self._rejoin: threading.Thread | None = None
        self._stop_rejoin = threading.Event()
        # Task processes inherit the environment of the fork server (started just below) or
        # of this process (spawn): that is how they learn WORKER_NAME_ENV.
        os.environ[WORKER_NAME_ENV] = settings.name
        self._jobs_root_dir: str | None = None  # made with the first session (_jobs_root)
        self.sandbox = _choose_sandbox(settings)
        self.process_limit = ProcessLimit(settings.max_task_processes, settings.name,
                                          enabled=self.sandbox.mode == "bwrap")
        if self.sandbox.mode == "bwrap" and not self.process_limit.available:
            log.warning("no process-count limit for tasks: %s", self.process_limit.reason)
        elif self.process_limit.available:
            log.info("tasks of a session may run at most %d processes",
                     settings.max_task_processes)
        self.peer.config = dataclasses.replace(self.peer.config, sandbox=self.sandbox.label)
        self._mp_context = _child_context()
        try:
            _warm_up(self._mp_context, settings.max_memory_mb)
        except BaseException:  # the worker does not start: leave nothing behind
            self.sandbox.close()
            self.process_limit.close()
            raise

    # -- setup -----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """First SIGINT/SIGTERM withdraws, the second forces (main thread only)."""

        def handler(signum: int, frame: Any) -> None:
            self.signals += 1
            self.inbox.wake()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        # The kernel may deliver a signal to any thread (reactor, board reader); Python runs
        # the handler only when the main thread wakes up.  The wakeup fd makes the C-level
        # handler write to the inbox pipe, so the main loop's wait returns at once.
        signal.set_wakeup_fd(self.inbox.write_fd, warn_on_full_buffer=False)

    # -- the loop ----------------------------------------------------------------------------

    def serve(self) -> int:
        """Run until withdrawn and every session has ended; return the exit status."""
        s = self.settings
        log.info("on cluster %s as %s with %d slot(s) (Python %s, p2ppool %s)%s",
                 s.cluster, s.name, s.processes, s.python, __version__,
                 f", stopping after {s.ttl:g} s" if s.ttl else "")
        if s.ttl is not None:
            self._ttl_deadline = time.monotonic() + s.ttl
        self._execute(self.peer.start(time.time()))
        try:
            while not self._finished():
                ready = multiprocessing.connection.wait(
                    [self.inbox.read_fd, *self._engine_readables()], self._timeout())
                self._step(ready)
        finally:
            self._shutdown()
        return self.exit_status

    def _step(self, ready: Sequence[Any]) -> None:
        # Drain the wakeup pipe *before* looking at the signal counter: a signal that lands
        # after this point writes a new byte, so the next wait returns at once.
        events = self.inbox.drain()
        if self.signals > self._signals_handled:
            self._signals_handled = self.signals
            if self.signals == 1:
                self.withdraw("signal received")
            else:
                self.force("second signal received")
                return
        for event in events:
            try:
                self._handle(event)
            except Exception:  # a bug handling one event must not take the worker down
                log.exception("error while handling %s", event[0])
        for session in list(self.sessions.values()):
            if session.engine is not None:
                self._collect(session, ready)
        now = time.monotonic()
        self._execute(self.peer.timer_expired(time.time()))
        for session in list(self.sessions.values()):
            if (session.state == AWAITING_OPEN and session.open_deadline is not None
                    and now >= session.open_deadline):
                log.info("session %d with %s: no Open frame within %g s; closing", session.sid,
                         session.who(), defaults.WORKER_OPEN_FRAME_TIMEOUT_S)
                self._end_session(session, "no Open frame in time")
        if self._ttl_deadline is not None and now >= self._ttl_deadline and not self.withdrawing:
            self.withdraw(f"--ttl of {self.settings.ttl:g} s reached")
        if self.withdrawing:
            self._progress_withdrawal(now)

    def _timeout(self) -> float:
        deadlines: List[float] = []
        now_wall, now = time.time(), time.monotonic()
        peer_deadline = self.peer.next_deadline()
        if peer_deadline is not None:
            deadlines.append(peer_deadline - now_wall)
        for session in self.sessions.values():
            if session.engine is not None:
                engine_deadline = session.engine.next_deadline()
                if engine_deadline is not None:
                    deadlines.append(engine_deadline - now)
            if session.open_deadline is not None and session.state == AWAITING_OPEN:
                deadlines.append(session.open_deadline - now)
        for deadline in (self._ttl_deadline, self._grace_deadline):
            if deadline is not None:
                deadlines.append(deadline - now)
        if any(s.engine is not None and s.engine.has_events() for s in self.sessions.values()):
            return 0.0
        # Bounded even with nothing pending, so a lost wakeup can never hang the worker.
        return max(0.0, min(deadlines + [5.0])) + 0.001

    def _engine_readables(self) -> List[Any]:
        readables: List[Any] = []
        for session in self.sessions.values():
            if session.engine is not None:
                readables.extend(session.engine.readables())
        return readables

    def _finished(self) -> bool:
        if self.forced:
            return True
        return self.withdrawing and not any(
            s.state in (AWAITING_OPEN, RUNNING) for s in self.sessions.values()
        )

    # -- events ------------------------------------------------------------------------------

    def _handle(self, event: Tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "board":
            self._execute(self.peer.got_message(event[1], time.time()))
        elif kind == "board_state":
            if event[1] == self._board_generation:  # not a replaced client's
                self._board_state(event[2])
        elif kind == "board_rejoined":
            self._board_rejoined(event[1], event[2])
        elif kind == "board_failed":
            self._board_failed(event[1])
        elif kind == "opened":
            self._opened(event[1], event[2])
        elif kind == "open_failed":
            self._open_failed(event[1], event[2])
        elif kind == "frame":
            self._frame(event[1], event[2])
        elif kind == "lost":
            self._lost(event[1], event[2])
        elif kind == "requirements":
            self._execute(self.peer.requirements_changed(time.time()))

    def _serves(self, requirements: Sequence[str]) -> Tuple[str, str | None]:
        """The peer's question: may this worker offer for a job with these requirements?
        (Yes once they are installed; a failed install is offered too, and its session
        refused with the installer's error, so that the client learns why.)"""
        from ..shipping.environments import BUILDING, MISSING
        from .peer import LATER, NEVER, NOW

        try:
            state, detail = self.environments.state(requirements)
        except ValueError as exc:  # not a requirement this worker can parse
            return NEVER, str(exc)
        if state == MISSING:
            return NEVER, detail
        return (LATER if state == BUILDING else NOW), detail

    def _execute(self, actions: Sequence[Any]) -> None:
        from .peer import Note, OpenSession, Publish

        for action in actions:
            if isinstance(action, Publish):
                self._publish(action.message)
            elif isinstance(action, OpenSession):
                self._start_session(action)
            elif isinstance(action, Note):
                log.info("%s", action.text)

    # -- withdrawing -------------------------------------------------------------------------

    def withdraw(self, why: str) -> None:
        """Begin a graceful stop (idempotent): Bye on the board, finish in-flight tasks."""
        if self.withdrawing:
            return
        self.withdrawing = True
        self._grace_deadline = time.monotonic() + self.settings.grace
        inflight = sum(len(s.inflight) for s in self.sessions.values())
        log.info("withdrawing (%s): no new work; %d task(s) in flight get up to %g s; "
                 "send the signal again to stop at once", why, inflight, self.settings.grace)
        self._execute(self.peer.withdraw(time.time()))
        for session in list(self.sessions.values()):
            if session.state == AWAITING_OPEN:
                self._refuse(session, f"worker {self.settings.name} is shutting down")

    def _progress_withdrawal(self, now: float) -> None:
        grace_over = self._grace_deadline is not None and now >= self._grace_deadline
        for session in list(self.sessions.values()):
            if session.state != RUNNING:
                continue
            if session.inflight and grace_over:
                self._lose_all(session, f"worker {self.settings.name} stopped: the "
                               f"{self.settings.grace:g} s grace period ended")
            if not session.inflight:
                log.info("session %d with %s: closing (worker stopping)", session.sid,
                         session.who())
                self._end_session(session, "worker stopping")

    def force(self, why: str) -> None:
        """Stop now: kill every child, report in-flight tasks lost (retry elsewhere)."""
        log.info("stopping now (%s): killing child processes", why)
        if not self.withdrawing:
            self.withdraw(why)
        self.forced = True
        self.exit_status = EXIT_FORCED
        for session in list(self.sessions.values()):
            if session.state == RUNNING:
                self._lose_all(session, f"worker {self.settings.name} was stopped")
            self._end_session(session, "worker stopped",
                              send_bye=session.state in (AWAITING_OPEN, RUNNING))

    def _lose_all(self, session: _ClientSession, cause: str) -> None:
        if session.engine is not None:
            session.engine.terminate(timeout=_KILL_WAIT_S)
        for task_id in sorted(session.inflight):
            self._send_lost(session, task_id, True, cause)
        session.inflight.clear()

    def _shutdown(self) -> None:
        """Leave nothing behind: engines, sessions, board, threads (all bounded)."""
        for session in list(self.sessions.values()):
            if session.engine is not None:
                session.engine.terminate(timeout=_KILL_WAIT_S)
            self._end_session(session, "worker stopped",
                              send_bye=session.state in (AWAITING_OPEN, RUNNING))
        if not self.peer.withdrawn:
            self._execute(self.peer.withdraw(time.time()))
        deadline = time.monotonic() + defaults.SESSION_CLOSE_TIMEOUT_S + 2.0
        for closer in self._closers:
            closer.join(max(0.0, deadline - time.monotonic()))
        self._stop_rejoin.set()
        if self._rejoin is not None:
            self._rejoin.join(1.0)  # a daemon thread: it must not hold up the exit
        if self.board is not None:
            drops = self.board.drops
            if drops:
                log.info("board lines dropped (by reason): %s",
                         ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
            self.board.close()
        self.code_cache.close()
        self.environments.close()
        self.sandbox.close()
        self.process_limit.close()
        if self._jobs_root_dir is not None:
            shutil.rmtree(self._jobs_root_dir, ignore_errors=True)
        # The inbox's pipe stays open until the process exits: an opener thread that is
        # still pairing may post to it, and a closed descriptor number could be reused.
        log.info("stopped")




def _choose_sandbox(settings: WorkerSettings) -> Any:
    """The sandbox of this worker's tasks: bwrap where it works (``auto``, ``bwrap``), else
    none, said loudly; ``--sandbox bwrap`` without a working bwrap refuses to start.

    Raises:
        P2PPoolError: ``--sandbox bwrap`` and bwrap cannot confine tasks here.
    """
    from ..execution.sandbox import BWRAP, NONE, Sandbox, SandboxUnavailable, probe

    if settings.sandbox == NONE:
        log.warning("tasks run WITHOUT a sandbox (--sandbox none): they can read your files "
                    "and use your network with your rights")
        return Sandbox(NONE)
    candidate = Sandbox(BWRAP, allow_network=settings.allow_network,
                        read_only=settings.sandbox_ro, read_write=settings.sandbox_rw)
    try:
        probe(candidate)
    except SandboxUnavailable as exc:
        candidate.close()
        if settings.sandbox == BWRAP:
            raise P2PPoolError(f"--sandbox bwrap: {exc}") from None
        log.warning("WARNING: tasks run WITHOUT a sandbox: %s.  They can read your files and "
                    "use your network with your rights; cluster members see 'sandbox: none' "
                    "in p2ppool status.", exc)
        return Sandbox(NONE)
    log.info("tasks run in a bubblewrap sandbox (%s)",
             "with network" if settings.allow_network else "no network")
    return candidate


def _warm_up(ctx: Any, max_memory_mb: float | None = None) -> None:
    """Start the fork server now (before any other thread runs), so that the first session's
    Ready is not delayed by it; it preloads :mod:`p2ppool.execution.child`, which ties the
    task processes' lives to the worker's (and caps their memory at ``max_memory_mb``)."""
    if ctx.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    from ..execution.child import ENV_FLAG, MEMORY_ENV

    os.environ[ENV_FLAG] = "1"  # read (and removed) by the fork server as it starts
    if max_memory_mb is not None:
        os.environ[MEMORY_ENV] = repr(float(max_memory_mb))
    try:
        forkserver.ensure_running()
    finally:
        os.environ.pop(MEMORY_ENV, None)
        os.environ.pop(ENV_FLAG, None)
    _check_preload(ctx)


#: How long the fork server may take to start the preload probe.
_PRELOAD_PROBE_TIMEOUT_S = 30.0


def _check_preload(ctx: Any) -> None:
    """Fail loudly unless the fork server really preloaded :mod:`p2ppool.execution.child`.

    multiprocessing's fork server ignores an ImportError among its preloads without a word,
    and then task processes would lose their die-with-the-worker tie (and the memory cap).
    One probe process, forked by the fork server, reports what it inherited.

    Raises:
        P2PPoolError: the preload did not take effect (with the import error, if any).
    """
    reader, writer = ctx.Pipe(duplex=False)
    probe = ctx.Process(target=_preload_probe, args=(writer,), name="p2ppool-preload-probe",
                        daemon=True)
    probe.start()
    writer.close()
    try:
        if not reader.poll(_PRELOAD_PROBE_TIMEOUT_S):
            raise P2PPoolError(
                f"the worker's fork server did not start a probe process within "
                f"{_PRELOAD_PROBE_TIMEOUT_S:g} s")
        problem = reader.recv()
    except EOFError:
        problem = f"the probe process died (exit code {probe.exitcode})"
    finally:
        reader.close()
        probe.join(_PRELOAD_PROBE_TIMEOUT_S)
    if problem:
        raise P2PPoolError(
            f"the worker's fork server did not preload p2ppool.execution.child ({problem}): "
            f"task processes would not die with the worker; check that this Python can "
            f"import it (python -c 'import p2ppool.execution.child')")


def _preload_probe(conn: Any) -> None:
    """In a task process: send ``""`` if the fork server's preload installed the hook, or
    what went wrong."""
    module = sys.modules.get("p2ppool.execution.child")
    if module is not None and getattr(module, "_HOOK", None) is not None:
        problem = ""
    elif module is not None:
        problem = "it was imported without its hook"
    else:
        problem = "it was not imported there"
        os.environ.pop("P2PPOOL_WORKER_FORKSERVER", None)  # its ENV_FLAG: no hook from here
        try:
            import p2ppool.execution.child  # noqa: F401  (for the error message only)
        except Exception as exc:  # the reason the fork server's import failed, most likely
            problem = f"{type(exc).__name__}: {exc}"
    conn.send(problem)
    conn.close()


def _child_context() -> Any:
    """A fork server: children start clean, without the worker's sockets and threads."""
    try:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(
            ["p2ppool.execution.child", "p2ppool.execution.engine", "p2ppool.payload"]
        )
        return ctx
    except ValueError:  # no fork server on this platform
        return multiprocessing.get_context("spawn")
