"""The worker's one loop: it owns the board presence, the client sessions and the peer.

Used by :mod:`p2ppool.worker.cli` (the command line).  :class:`Worker` owns one
:class:`~p2ppool.worker.presence.BoardPresence` (the board connection), one
:class:`~p2ppool.worker.sessions.Sessions` (the client sessions and their process engines)
and the pure :class:`~p2ppool.worker.peer.Peer` (what to say on the board); neither
component knows the other: the loop passes events to them and carries out what they report
back through the callables it gave them (the events are drawn in
:mod:`p2ppool.worker.events`)::

    board reader thread ──── BOARD, BOARD_STATE ────────────┐
    rejoin thread ────────── BOARD_REJOINED, BOARD_FAILED ──┼──> Inbox (deque + wakeup pipe)
    session opener threads ─ OPENED, OPEN_FAILED ───────────┤             │
    reactor thread ───────── FRAME, LOST ───────────────────┤             │
    installer ────────────── REQUIREMENTS ──────────────────┤             │
    signal handlers ──────── counter + wakeup byte ─────────┘             v
    main thread: Worker.serve() ── wait(wakeup pipe + every engine's pipes and sentinels,
                                        timeout = next deadline)
       ├─ BOARD ─────────> peer.Peer (pure) ─> Publish ─> presence.publish
       │                                    └> OpenSession ─> sessions.start
       ├─ BOARD_* ───────> presence ─announce()─> peer.start;  ─failed_for_good()─> withdraw
       ├─ OPENED, FRAME… ─> sessions ─slots_returned()/ended()─> peer (offer the freed slots)
       ├─ REQUIREMENTS ──> peer.requirements_changed (offers for jobs now installable)
       └─ engine events ──> sessions.collect: Result / Lost frames back to the client

Only the main thread owns state; the other threads hand events over through the inbox.  The
worker itself never unpickles client data: blobs go to the session's
:class:`~p2ppool.execution.engine.ProcessEngine`, whose child processes unpickle and run them.
Children are started by a fork server, so they inherit none of the worker's sockets (the SSH
board connection, the wormhole sessions) and cannot speak on the worker's behalf.  They find
the worker's name in the environment variable ``P2PPOOL_WORKER`` (:data:`WORKER_NAME_ENV`).

Shutdown: the first SIGINT/SIGTERM (or the end of ``--ttl``) withdraws: a Bye on the board,
no more offers, new tasks are sent back (``Lost(retry=True)``), in-flight tasks get up to
``WORKER_GRACE_S`` to finish, then a Close on every session and exit status 0.  A second
signal kills the children at once, reports their tasks lost (retry elsewhere) and exits
with 1.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import time
from typing import Any, List, Sequence, Tuple

from .._version import __version__
from ..board.auth import BoardIdentity
from ..errors import P2PPoolError
from ..execution.limits import ProcessLimit
from ..execution.waiter import Waiter
from ..payload import WORKER_NAME_ENV  # re-exported: it has always been named here
from ..shipping.environments import Environments
from .events import (
    BOARD,
    BOARD_FAILED,
    BOARD_REJOINED,
    BOARD_STATE,
    FRAME,
    LOST,
    OPEN_FAILED,
    OPENED,
    REQUIREMENTS,
    Inbox,
)
from .presence import BoardPresence
from .sessions import Sessions
from .settings import WorkerSettings  # re-exported: the command line builds it from here

__all__ = [
    "EXIT_ERROR", "EXIT_FORCED", "EXIT_OK", "WORKER_NAME_ENV", "Worker", "WorkerSettings",
]

log = logging.getLogger("p2ppool.worker")

EXIT_OK = 0
EXIT_FORCED = 1
EXIT_ERROR = 2


class Worker:
    """A volunteer worker: the one loop that owns its board presence, sessions and peer.

    Use: ``worker = Worker(settings)``, ``worker.install_signal_handlers()`` (main thread),
    ``worker.connect_board()`` (raises a clear BoardError), then ``status = worker.serve()``.

    Args:
        settings: the resolved settings.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        from ..board.protocol import new_offer_keypair
        from .peer import Peer, PeerConfig

        self.settings = settings
        self.inbox = Inbox()
        self.environments = Environments(
            settings.install_cache, settings.allow_install, settings.install_cache_bytes,
            on_change=lambda: self.inbox.post(REQUIREMENTS))
        #: signs the worker's board lines (a fresh key per run): its id is name~key
        self.board_identity = BoardIdentity(settings.name)
        self.peer = Peer(
            PeerConfig(worker_id=self.board_identity.sender, python=settings.python,
                       version=__version__,
                       slots=settings.processes),
            new_offer_keypair, serves=self._serves,
        )
        self.presence = BoardPresence(
            settings, self.board_identity, self.inbox,
            announce=self._announce, failed_for_good=self._board_failed_for_good)
        self.signals = 0
        self._signals_handled = 0
        self.withdrawing = False
        self.forced = False
        self.exit_status = EXIT_OK
        self._grace_deadline: float | None = None  # monotonic
        self._ttl_deadline: float | None = None  # monotonic
        # Task processes inherit the environment of the fork server (started just below) or
        # of this process (spawn): that is how they learn WORKER_NAME_ENV.
        os.environ[WORKER_NAME_ENV] = settings.name
        self.sandbox = _choose_sandbox(settings)
        self.process_limit = ProcessLimit(settings.max_task_processes, settings.name,
                                          enabled=self.sandbox.mode == "bwrap")
        if self.sandbox.mode == "bwrap" and not self.process_limit.available:
            log.warning("no process-count limit for tasks: %s", self.process_limit.reason)
        elif self.process_limit.available:
            log.info("tasks of a session may run at most %d processes",
                     settings.max_task_processes)
        self.peer.config = dataclasses.replace(self.peer.config, sandbox=self.sandbox.label)
        mp_context = _child_context()
        try:
            _warm_up(mp_context, settings.max_memory_mb)
        except BaseException:  # the worker does not start: leave nothing behind
            self.sandbox.close()
            self.process_limit.close()
            raise
        self.sessions = Sessions(
            settings, self.inbox, environments=self.environments, sandbox=self.sandbox,
            process_limit=self.process_limit, mp_context=mp_context,
            slots_returned=self._slots_returned, ended=self._session_ended)

    @property
    def board(self) -> Any:
        """The board client in use (None before :meth:`connect_board`)."""
        return self.presence.client

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

    def connect_board(self) -> None:
        """Connect to the board (raises a clear BoardError if the first contact fails)."""
        self.presence.connect()

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
        wait = Waiter().wait  # one lasting poll: the objects rarely change between turns
        watched: List[Any] = []
        try:
            self.sessions.keep_spare()  # inside: an interrupt here still shuts down
            while not self._finished():
                objects = [self.inbox.read_fd, *self.sessions.readables()]
                changed, watched = objects != watched, objects
                ready = wait(objects, self._timeout(), changed)
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
        self.sessions.collect(ready)
        now = time.monotonic()
        self._execute(self.peer.timer_expired(time.time()))
        self.sessions.expire_opens(now)
        if self._ttl_deadline is not None and now >= self._ttl_deadline and not self.withdrawing:
            self.withdraw(f"--ttl of {self.settings.ttl:g} s reached")
        if self.withdrawing:
            grace_over = self._grace_deadline is not None and now >= self._grace_deadline
            self.sessions.wind_down(grace_over)

    def _timeout(self) -> float:
        deadlines: List[float] = []
        now_wall, now = time.time(), time.monotonic()
        peer_deadline = self.peer.next_deadline()
        if peer_deadline is not None:
            deadlines.append(peer_deadline - now_wall)
        deadlines.extend(deadline - now for deadline in self.sessions.deadlines())
        for deadline in (self._ttl_deadline, self._grace_deadline):
            if deadline is not None:
                deadlines.append(deadline - now)
        if self.sessions.has_events():
            return 0.0
        # Bounded even with nothing pending, so a lost wakeup can never hang the worker.
        return max(0.0, min(deadlines + [5.0])) + 0.001

    def _finished(self) -> bool:
        if self.forced:
            return True
        return self.withdrawing and not self.sessions.active()

    # -- events ------------------------------------------------------------------------------

    def _handle(self, event: Tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == BOARD:
            self._execute(self.peer.got_message(event[1], time.time()))
        elif kind == BOARD_STATE:
            self.presence.got_state(event[1], event[2])
        elif kind == BOARD_REJOINED:
            self.presence.rejoined(event[1], event[2])
        elif kind == BOARD_FAILED:
            self.presence.failed(event[1])
        elif kind == OPENED:
            self.sessions.opened(event[1], event[2])
        elif kind == OPEN_FAILED:
            self.sessions.open_failed(event[1], event[2])
        elif kind == FRAME:
            self.sessions.got_frame(event[1], event[2])
        elif kind == LOST:
            self.sessions.lost(event[1], event[2])
        elif kind == REQUIREMENTS:
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
        """Carry out what the peer decided: board lines, sessions to open, log notes."""
        from .peer import Note, OpenSession, Publish

        for action in actions:
            if isinstance(action, Publish):
                self.presence.publish(action.message)
            elif isinstance(action, OpenSession):
                self.sessions.start(action)
            elif isinstance(action, Note):
                log.info("%s", action.text)

    # -- what the components report back -------------------------------------------------------

    def _announce(self) -> None:
        """The presence has a new or re-established connection: hello and offers again."""
        self._execute(self.peer.start(time.time()))

    def _board_failed_for_good(self, error: BaseException | None) -> None:
        self.exit_status = EXIT_ERROR
        self.withdraw("the board connection failed")

    def _slots_returned(self, sid: int, slots: int) -> None:
        """A client took ``slots``, fewer than offered: the peer may offer the rest."""
        self._execute(self.peer.session_opened(sid, slots, time.time()))

    def _session_ended(self, sid: int) -> None:
        self._execute(self.peer.session_ended(sid, time.time()))
        if not self.withdrawing:
            log.info("%d of %d slot(s) free", self.peer.free_slots, self.settings.processes)

    # -- withdrawing -------------------------------------------------------------------------

    def withdraw(self, why: str) -> None:
        """Begin a graceful stop (idempotent): Bye on the board, finish in-flight tasks."""
        if self.withdrawing:
            return
        self.withdrawing = True
        self._grace_deadline = time.monotonic() + self.settings.grace
        log.info("withdrawing (%s): no new work; %d task(s) in flight get up to %g s; "
                 "send the signal again to stop at once", why, self.sessions.tasks_in_flight(),
                 self.settings.grace)
        self.presence.leave()
        self._execute(self.peer.withdraw(time.time()))
        self.sessions.withdraw()

    def force(self, why: str) -> None:
        """Stop now: kill every child, report in-flight tasks lost (retry elsewhere)."""
        log.info("stopping now (%s): killing child processes", why)
        if not self.withdrawing:
            self.withdraw(why)
        self.forced = True
        self.exit_status = EXIT_FORCED
        self.sessions.stop_all()

    def _shutdown(self) -> None:
        """Leave nothing behind: engines, sessions, board, threads (all bounded)."""
        self.sessions.end_all()
        if not self.peer.withdrawn:
            self._execute(self.peer.withdraw(time.time()))
        self.sessions.close()
        self.presence.close()
        self.environments.close()
        self.sandbox.close()
        self.process_limit.close()
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
