"""The worker's side of its client sessions, from opening to the end.

A session opens its wormhole in a thread, must send an Open frame in time (then gets a
:class:`~p2ppool.execution.engine.ProcessEngine` and a Ready, or a Refuse), then sends Func,
Task and Cancel frames; its engine's events go back as Result and Lost frames; it ends with a Close,
a refusal or a lost connection, and its slots are free again.

**Memory budget per session** (issue 17): a session holds at most
``WORKER_FUNCTIONS_PER_SESSION`` functions of at most ``settings.function_budget`` bytes in
all (``--max-functions-mb``, said in Ready), and at most its slots plus
``WORKER_TASKS_PREFETCH`` tasks in flight.  A p2ppool client stays within both; a session
that goes over either is closed with a protocol error that says which limit (a Lost frame
names it for the task that went over), and the worker goes on serving its other sessions.

:class:`Sessions` owns every client session and what each holds here: its transport, its
engine and task processes, its functions and tasks in flight, its code, requirements, job
directory and process cgroup; and the worker's code cache and its
:class:`~p2ppool.worker.confinement.Confinement` (where and how task processes run).  It knows
nothing of the board: the loop starts a session when :mod:`~p2ppool.worker.peer` says so,
and hears back about slots through the two callables it gives::

    loop ── keep_spare() at start; Sessions itself when idle ─> Sessions (spare sandboxes)
    loop ── start(OpenSession) ─────────────────────────────> Sessions ── opener thread
    opener thread, reactor ── OPENED, OPEN_FAILED, FRAME, LOST ──> inbox ──> loop
    loop ── opened / open_failed / got_frame / lost ─────────> Sessions
    loop ── collect(ready) / expire_opens(now) ───────────────> Sessions  (every turn)
    loop ── withdraw / wind_down / stop_all / end_all / close ─> Sessions  (stopping)
    Sessions ── slots_returned(sid, slots) ──> loop: peer.session_opened (offer the rest)
    Sessions ── ended(sid) ──────────────────> loop: peer.session_ended (slots free again)

Its methods run on the worker's main thread, except the opener thread (which only posts to
the inbox).  This module stays one piece past ~450 lines: it is one session's life, from the
Open frame to the cleanup of everything the session held, and the limits it enforces.
"""

from __future__ import annotations

import itertools
import json
import logging
import platform
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Sequence, Tuple

from .. import defaults
from ..errors import ProtocolError, TransferError
from ..shipping.cache import CodeCache
from .confinement import Confinement
from .events import FRAME, LOST, OPEN_FAILED, OPENED, Inbox
from .settings import WorkerSettings

if TYPE_CHECKING:
    from ..shipping.environments import Environments

__all__ = ["AWAITING_OPEN", "ENDED", "OPENING", "RUNNING", "Sessions"]

#: Sandboxes started before their session's Open: its job directory, view directory, cgroup
#: (or None) and deferred engine.
_Sandboxes = Tuple[str, str, "str | None", Any]

log = logging.getLogger("p2ppool.worker")

#: Seconds a session's children get to exit after SIGTERM before the process group is killed
#: (their session is over: no grace is owed, and the main loop waits meanwhile).
_KILL_WAIT_S = 1.0

OPENING, AWAITING_OPEN, RUNNING, ENDED = "opening", "awaiting open", "running", "ended"


class _ClientSession:
    """The worker's side of one client session (owned by the main thread)."""

    def __init__(self, sid: int, job: str, client: str, slots: int) -> None:
        self.sid = sid
        self.job = job
        self.client = client
        self.slots = slots
        self.state = OPENING
        self.transport: Any = None  # a TransferSession once opened
        self.engine: Any = None  # engine.ProcessEngine once the Open frame was accepted
        self.early_frames: List[bytes] = []  # frames that arrived before "opened" was handled
        self.functions: Dict[int, bytes] = {}
        self.function_bytes = 0  # the sizes of `functions`, summed
        self.code_dir: str | None = None  # the client's shipped modules (a CodeCache entry)
        self._code_view: str | None = None  # its copy in view_root (prestarted), or code_dir
        self.site_dir: str | None = None  # the job's installed requirements (Environments)
        self.job_dir: str | None = None  # the tasks' writable working directory
        self.view_root: str | None = None  # what prestarted sandboxes see of its code
        self.cgroup: str | None = None  # the pids cgroup bounding its task processes
        self.refused_functions: Dict[int, str] = {}
        # task id -> (function key, function blob, arguments blob): references, not copies,
        # so that a task that never started when its child died can be run again here
        self.inflight: Dict[int, Tuple[int, bytes, bytes]] = {}
        self.open_deadline: float | None = None  # monotonic, while AWAITING_OPEN
        self.lost_cause: str | None = None  # lost before "opened" was handled

    def who(self) -> str:
        return f"{self.client}'s job {self.job}"

    @property
    def code_view(self) -> str | None:
        """Where its task processes import its code from (set by ``_install_code``)."""
        return self._code_view


class Sessions:
    """The worker's client sessions, owned by the main thread.

    Args:
        settings: the worker's limits and name, and where the wormhole servers are.
        inbox: where opener threads and session transports post their events.
        environments: the installed requirement sets (shared with the loop, which asks them
            whether to offer; the loop closes them).
        sandbox: how task processes are confined (the loop's; it closes it).
        process_limit: the pids cgroups of sandboxed sessions (the loop's; it closes it).
        mp_context: the multiprocessing context task processes start from (a fork server).
        slots_returned: called with ``(sid, slots)`` when a client takes fewer slots than
            offered: the rest may be offered again.
        ended: called with the ``sid`` of a session that ended: its slots are free.
    """

    def __init__(self, settings: WorkerSettings, inbox: Inbox, *,
                 environments: Environments, sandbox: Any, process_limit: Any,
                 mp_context: Any, slots_returned: Callable[[int, int], None],
                 ended: Callable[[int], None]) -> None:
        self.settings = settings
        self.inbox = inbox
        self.environments = environments
        #: where and how its task processes run (job directories, sandbox, cgroups)
        self.confinement = Confinement(settings, sandbox, process_limit, environments)
        self._mp_context = mp_context
        self._slots_returned = slots_returned
        self._ended = ended
        self._by_sid: Dict[int, _ClientSession] = {}
        self.code_cache = CodeCache()  # the clients' own modules, for their task processes
        self._closers: List[threading.Thread] = []
        self.withdrawing = False
        self._spare: _Sandboxes | None = None  # see keep_spare
        self._stopping = False  # stop_all, end_all or close: no spare any more
        self._spare_numbers = itertools.count(1)

    # -- sessions: opening -------------------------------------------------------------------

    def start(self, action: Any) -> None:
        """Accept a session the peer decided on (an OpenSession): open its wormhole in a
        thread, which posts OPENED or OPEN_FAILED."""
        session = _ClientSession(action.session_id, action.job, action.client, action.slots)
        self._by_sid[session.sid] = session
        log.info("%s accepted %d slot(s); opening the wormhole session %d",
                 session.who(), session.slots, session.sid)
        if not self._take_spare(session):
            self._prestart(session)
        thread = threading.Thread(target=self._open_in_thread, args=(session.sid, action.code),
                                  name=f"p2ppool-open-{session.sid}", daemon=True)
        thread.start()

    def _open_in_thread(self, sid: int, code: str) -> None:
        from ..transfer.session import WORKER, TransferSession

        s = self.settings
        try:
            transport = TransferSession.open(
                code, s.relay, s.transit, role=WORKER, loopback_only=s.loopback_only,
                on_frame=lambda data: self.inbox.post(FRAME, sid, data),
                on_lost=lambda cause: self.inbox.post(LOST, sid, cause),
                max_frame_bytes=s.max_frame_bytes,
            )
        except Exception as exc:  # reported to the loop, which logs and frees the slots
            self.inbox.post(OPEN_FAILED, sid, exc)
            return
        self.inbox.post(OPENED, sid, transport)

    def opened(self, sid: int, transport: Any) -> None:
        """The opener thread's wormhole is up: wait for the Open frame (or refuse)."""
        session = self._by_sid.get(sid)
        if session is None or session.state != OPENING:
            _close_quietly(transport, "")
            return
        session.transport = transport
        session.state = AWAITING_OPEN
        if session.lost_cause is not None:
            self.lost(sid, session.lost_cause)
            return
        if self.withdrawing:
            self._refuse(session, f"worker {self.settings.name} is shutting down")
            return
        session.open_deadline = time.monotonic() + defaults.WORKER_OPEN_FRAME_TIMEOUT_S
        frames, session.early_frames = session.early_frames, []
        for data in frames:
            self.got_frame(sid, data)

    def open_failed(self, sid: int, exc: BaseException) -> None:
        """The opener thread could not open the wormhole: free the session's slots."""
        session = self._by_sid.get(sid)
        if session is None:
            return
        log.warning("session %d with %s could not be opened: %s", sid, session.who(), exc)
        self._end_session(session, f"could not be opened: {exc}", send_bye=False)

    # -- sessions: frames ----------------------------------------------------------------------

    def got_frame(self, sid: int, data: bytes) -> None:
        """One frame from a session's client."""
        from ..transfer.session_protocol import (
            Cancel,
            Close,
            Code,
            Forget,
            Func,
            Open,
            Task,
            decode_frame,
        )

        session = self._by_sid.get(sid)
        if session is None or session.state == ENDED:
            return
        if session.state == OPENING:
            session.early_frames.append(data)
            return
        try:
            frame = decode_frame(data)
        except ProtocolError as exc:
            log.warning("session %d with %s sent a bad frame (%s); closing it", sid,
                        session.who(), exc)
            self._end_session(session, f"protocol error: {exc}")
            return
        if session.state == AWAITING_OPEN:
            if isinstance(frame, Open):
                self._got_open(session, frame)
            else:
                log.warning("session %d with %s: expected Open, got %s; closing", sid,
                            session.who(), type(frame).__name__)
                self._end_session(session, "the first frame must be Open")
            return
        if isinstance(frame, Task):
            self._got_task(session, frame)
        elif isinstance(frame, Func):
            self._got_func(session, frame)
        elif isinstance(frame, Forget):
            for func_key in frame.func_keys:  # tasks already received keep their blob
                self._drop_function(session, func_key)
                session.refused_functions.pop(func_key, None)
        elif isinstance(frame, Cancel):
            self._got_cancel(session, frame)
        elif isinstance(frame, Code):
            self._got_code(session, frame.bundle)
        elif isinstance(frame, Close):
            log.info("session %d with %s: the client said goodbye", sid, session.who())
            self._end_session(session, "", send_bye=False)
        else:
            log.warning("session %d with %s: unexpected %s frame; ignored", sid,
                        session.who(), type(frame).__name__)

    def _got_open(self, session: _ClientSession, frame: Any) -> None:
        from ..execution.engine import ProcessEngine
        from ..transfer.session_protocol import Ready
        from .peer import payload_refusal, refusal_for_open

        s = self.settings
        reason = refusal_for_open(frame, job=session.job, python=s.python)
        if reason is None:
            reason = payload_refusal("the initializer", len(frame.initializer),
                                     s.max_payload_bytes)
        if reason is not None:
            self._refuse(session, reason)
            return
        if frame.slots is not None and frame.slots < session.slots:
            # The client took fewer slots than offered: the rest go back to the board.
            log.info("session %d with %s uses %d of the %d slot(s) offered", session.sid,
                     session.who(), frame.slots, session.slots)
            session.slots = frame.slots
            self._slots_returned(session.sid, frame.slots)
        if frame.requires:
            try:
                session.site_dir = self.environments.acquire(frame.requires)
            except (LookupError, ValueError) as exc:
                self._refuse(session, f"worker {s.name} cannot provide the job's "
                                      f"requirements: {exc}")
                return
        if frame.code and not self._install_code(session, frame.code):
            return
        try:
            if session.engine is not None:  # sandboxes started at accept: configure them
                session.engine.configure(
                    initializer_blob=frame.initializer or None,
                    maxtasksperchild=frame.maxtasksperchild, code_dir=session.code_view,
                    site_dir=session.site_dir, processes=session.slots)
            else:
                session.job_dir = session.job_dir or self.confinement.job_dir(session.sid)
                confined, session.cgroup = self.confinement.engine_arguments(
                    session.sid, session.job_dir, session.view_root)
                session.engine = ProcessEngine(
                    session.slots, initializer_blob=frame.initializer or None,
                    maxtasksperchild=frame.maxtasksperchild, mp_context=self._mp_context,
                    max_task_seconds=s.max_task_seconds, max_result_bytes=s.max_payload_bytes,
                    code_dir=session.code_dir, site_dir=session.site_dir, **confined,
                )
        except Exception as exc:
            log.exception("could not start processes for %s", session.who())
            self._refuse(session, f"worker {s.name} could not start its processes: {exc}")
            return
        session.state = RUNNING
        session.open_deadline = None
        self._send(session, Ready(worker=s.name, slots=session.slots,
                                  max_payload_bytes=s.max_payload_bytes,
                                  max_task_seconds=s.max_task_seconds,
                                  max_function_bytes=s.function_budget, batches=True))
        log.info("session %d with %s opened (%d slot(s)%s)", session.sid, session.who(),
                 session.slots,
                 f", maxtasksperchild={frame.maxtasksperchild}"
                 if frame.maxtasksperchild else "")

    def _prestart(self, session: _ClientSession) -> None:
        """With the sandbox, start the session's task processes now, while its wormhole
        opens (a sandboxed interpreter takes tens of milliseconds to start); they get their
        settings when the Open frame comes.  Their code is read from the session's own
        view directory, filled then.  On any failure the processes start at Open instead."""
        if not self.confinement.sandboxed:
            return
        started = self._start_sandboxes(str(session.sid), session.slots)
        if started is not None:
            session.job_dir, session.view_root, session.cgroup, session.engine = started

    def _start_sandboxes(self, label: str, processes: int) -> _Sandboxes | None:
        """``processes`` sandboxed task processes waiting for their settings (a deferred
        engine) and the job directory, view directory and cgroup they were started in,
        named after ``label``; None (and nothing left) if they could not be started."""
        from ..execution.engine import ProcessEngine

        s = self.settings
        job_dir = view_root = cgroup = None
        try:
            job_dir = self.confinement.job_dir(label)
            view_root = self.confinement.view_root(label)
            confined, cgroup = self.confinement.engine_arguments(label, job_dir, view_root)
            engine = ProcessEngine(
                processes, max_task_seconds=s.max_task_seconds,
                max_result_bytes=s.max_payload_bytes, deferred=True, **confined)
        except Exception as exc:  # e.g. out of processes: Open tries again
            log.warning("could not start sandboxes early (%s): %s", label, exc)
            self.confinement.release(job_dir, view_root, cgroup)
            return None
        return job_dir, view_root, cgroup, engine

    # -- the spare: sandboxes started before a session comes ---------------------------------

    def keep_spare(self) -> None:
        """While no session runs, keep the worker's task processes started (sandboxed, as
        many as it has slots) for the next session: a sandboxed interpreter takes tens of
        milliseconds to start, which a session opened on an idle worker then does not wait
        for.  Does nothing without the sandbox (forked processes start in milliseconds),
        while withdrawing or stopping, while any session is known (opening or running), or
        when a spare is there already."""
        if (self._spare is not None or self._by_sid or self.withdrawing or self._stopping
                or not self.confinement.sandboxed or not self.settings.spare_sandboxes):
            return
        self._spare = self._start_sandboxes(f"spare{next(self._spare_numbers)}",
                                            self.settings.processes)
        if self._spare is not None:
            log.info("%d sandboxed task process(es) started for the next session",
                     self.settings.processes)

    def _take_spare(self, session: _ClientSession) -> bool:
        """Give ``session`` the spare sandboxes (one per slot of the worker: at least as
        many as it took; its Open keeps only the processes it uses).  True if it got them."""
        spare, self._spare = self._spare, None
        if spare is None:
            return False
        session.job_dir, session.view_root, session.cgroup, session.engine = spare
        log.debug("session %d takes the spare sandboxes", session.sid)
        return True

    def _drop_spare(self) -> None:
        """Stop the spare sandboxes, if any, and remove what they held."""
        spare, self._spare = self._spare, None
        if spare is not None:
            job_dir, view_root, cgroup, engine = spare
            engine.terminate(timeout=_KILL_WAIT_S)
            self.confinement.release(job_dir, view_root, cgroup)

    def _no_more_spares(self) -> None:
        """The worker is stopping: stop the spare and make none again."""
        self._stopping = True
        self._drop_spare()

    def _install_code(self, session: _ClientSession, bundle: Any) -> bool:
        """Unpack the client's modules for this session's task processes; on failure
        refuse (before Ready) or end the session, and say False."""
        try:
            path = self.code_cache.acquire(bundle)
            old, session.code_dir = session.code_dir, path
            if old is not None:
                self.code_cache.release(old)
            session._code_view = self.confinement.code_view(session.view_root,
                                                            session.code_dir)
        except (ProtocolError, OSError) as exc:
            log.warning("session %d with %s: cannot use its code bundle: %s", session.sid,
                        session.who(), exc)
            reason = f"worker {self.settings.name} cannot use the shipped modules: {exc}"
            if session.state == RUNNING:
                self._end_session(session, reason)
            else:
                self._refuse(session, reason)
            return False
        return True

    def _got_code(self, session: _ClientSession, bundle: Any) -> None:
        """The client's modules changed: new task processes for what comes next."""
        if self._install_code(session, bundle):
            log.info("session %d with %s: new code bundle; replacing its processes",
                     session.sid, session.who())
            session.engine.set_code_dir(session.code_view)

    def _got_func(self, session: _ClientSession, frame: Any) -> None:
        from .peer import payload_refusal

        reason = payload_refusal(f"function {frame.func_key}", len(frame.blob),
                                 self.settings.max_payload_bytes)
        if reason is not None:
            session.refused_functions[frame.func_key] = reason
            self._drop_function(session, frame.func_key)
            log.info("session %d with %s: refused %s", session.sid, session.who(), reason)
            return
        session.refused_functions.pop(frame.func_key, None)
        self._drop_function(session, frame.func_key)  # (a key sent again replaces its blob)
        limit = defaults.WORKER_FUNCTIONS_PER_SESSION
        if len(session.functions) >= limit:
            log.warning("session %d with %s sent more than %d functions without Forget; "
                        "closing it", session.sid, session.who(), limit)
            self._end_session(session, f"the client kept more than {limit} functions on this "
                                       "worker (a p2ppool client keeps "
                                       f"{defaults.REMOTE_FUNCTIONS_PER_SESSION})")
            return
        budget = self.settings.function_budget
        if session.function_bytes + len(frame.blob) > budget:
            from .peer import format_bytes

            reason = (f"protocol error: the client kept more than {format_bytes(budget)} of "
                      "functions on this worker (its limit, said in Ready)")
            log.warning("session %d with %s: %s; closing it", session.sid, session.who(),
                        reason)
            self._end_session(session, reason)
            return
        session.functions[frame.func_key] = frame.blob
        session.function_bytes += len(frame.blob)

    def _drop_function(self, session: _ClientSession, func_key: int) -> None:
        blob = session.functions.pop(func_key, None)
        if blob is not None:
            session.function_bytes -= len(blob)

    def _got_task(self, session: _ClientSession, frame: Any) -> None:
        from .peer import payload_refusal

        s = self.settings
        task_id = frame.task_id
        if self.withdrawing:
            self._send_lost(session, task_id, True, f"worker {s.name} is shutting down")
            return
        if task_id in session.inflight:
            self._send_lost(session, task_id, False,
                            f"task {task_id} is already running on worker {s.name}")
            return
        most = session.slots + defaults.WORKER_TASKS_PREFETCH
        if len(session.inflight) >= most:
            excess = (f"protocol error: task {task_id} came while {most} task(s) were in "
                      f"flight on a session of {session.slots} slot(s) (at most its slots "
                      f"plus {defaults.WORKER_TASKS_PREFETCH})")
            log.warning("session %d with %s: %s; closing it", session.sid, session.who(),
                        excess)
            self._send_lost(session, task_id, True, f"worker {s.name}: {excess}")
            self._end_session(session, excess)
            return
        reason = session.refused_functions.get(frame.func_key)
        if reason is None:
            reason = payload_refusal(f"task {task_id}'s arguments", len(frame.args),
                                     s.max_payload_bytes)
        if reason is None and frame.func_key not in session.functions:
            reason = f"task {task_id} names function {frame.func_key}, which was never sent"
        if reason is not None:
            log.info("session %d with %s: refused task %d: %s", session.sid, session.who(),
                     task_id, reason)
            self._send_lost(session, task_id, False, f"worker {s.name}: {reason}")
            return
        task = (frame.func_key, session.functions[frame.func_key], frame.args)
        session.inflight[task_id] = task
        session.engine.submit(task_id, *task)

    def _got_cancel(self, session: _ClientSession, frame: Any) -> None:
        doomed = [t for t in frame.task_ids if t in session.inflight]
        if not doomed:
            return
        for task_id in doomed:
            del session.inflight[task_id]
        session.engine.cancel(doomed)
        log.info("session %d with %s: cancelled %d task(s)", session.sid, session.who(),
                 len(doomed))

    # -- sessions: engine events ---------------------------------------------------------------

    def collect(self, ready: Sequence[Any]) -> None:
        """Every session's engine events (``ready``: what the loop's wait returned); a
        spare process that exited while the worker was idle is reaped."""
        spare = self._spare
        if spare is not None and not set(spare[3].sentinels()).isdisjoint(ready):
            # Reaped now, not when a session takes the spare (which replaces it then).
            for code in spare[3].reap_exited():
                log.warning("a spare sandboxed task process exited while the worker was "
                            "idle (exit code %s); the next session replaces it", code)
        for session in list(self._by_sid.values()):
            if session.engine is not None:
                self._collect(session, ready)

    def _collect(self, session: _ClientSession, ready: Sequence[Any]) -> None:
        from ..execution.engine import TaskDone
        from ..transfer.session_protocol import Result

        for event in session.engine.collect(ready):
            if event.task_id not in session.inflight:
                continue  # cancelled: the client no longer wants it
            if isinstance(event, TaskDone):
                del session.inflight[event.task_id]
                if event.unloadable is not None:
                    self._send(session, self._unable(session, event.task_id, event.unloadable))
                else:
                    self._send(session, Result(event.task_id, event.ok, event.blob))
                continue
            if not event.charged and not self.withdrawing:
                # It waited behind a task whose child died and never ran: run it again here.
                log.info("session %d with %s: task %d had not started (%s); running it again",
                         session.sid, session.who(), event.task_id, event.cause)
                session.engine.submit(event.task_id, *session.inflight[event.task_id])
                continue
            del session.inflight[event.task_id]
            limit_hit = event.charged and "time limit" in event.cause
            cause = event.cause
            if limit_hit:
                cause += " (this worker's --max-task-seconds)"
            log.info("session %d with %s: task %d lost: %s", session.sid, session.who(),
                     event.task_id, cause)
            self._send_lost(session, event.task_id, not limit_hit,
                            f"worker {self.settings.name}: {cause}")

    def _unable(self, session: _ClientSession, task_id: int, info: bytes) -> Any:
        """The Unable frame for a task whose loading lacked a module here."""
        from ..transfer.session_protocol import Unable

        try:
            described = json.loads(info)
            phase, module, error = described["phase"], described["module"], described["error"]
        except (ValueError, KeyError, TypeError):
            phase, module, error = "function", None, "ImportError"
        log.warning("session %d with %s: cannot load its %s here (%s); declining the job",
                    session.sid, session.who(), phase, error)
        return Unable(task_id, str(phase), module if isinstance(module, str) else None,
                      str(error), platform.node())

    # -- sessions: ending ----------------------------------------------------------------------

    def _send(self, session: _ClientSession, frame: Any) -> None:
        from ..transfer.session_protocol import encode_frame_parts

        if session.transport is None or session.state == ENDED:
            return
        try:
            session.transport.send_parts(encode_frame_parts(frame))
        except TransferError as exc:
            self.lost(session.sid, str(exc))

    def _send_lost(self, session: _ClientSession, task_id: int, retry: bool, cause: str) -> None:
        from ..transfer.session_protocol import Lost

        self._send(session, Lost(task_id, retry, cause))

    def _refuse(self, session: _ClientSession, reason: str) -> None:
        from ..transfer.session_protocol import Refuse

        log.info("refused session %d with %s: %s", session.sid, session.who(), reason)
        self._send(session, Refuse(reason))
        self._end_session(session, f"refused: {reason}", send_bye=False)

    def lost(self, sid: int, cause: str) -> None:
        """A session's connection is gone."""
        session = self._by_sid.get(sid)
        if session is None or session.state == ENDED:
            return
        if session.state == OPENING:
            session.lost_cause = cause  # handled when the opener thread reports back
            return
        log.info("session %d with %s lost: %s; freeing %d slot(s)", sid, session.who(), cause,
                 session.slots)
        self._end_session(session, cause, send_bye=False)

    def _end_session(self, session: _ClientSession, reason: str, send_bye: bool = True) -> None:
        """Stop the session's engine, say goodbye (in the background) and free its slots."""
        from ..transfer.session_protocol import Close, encode_frame

        if session.state == ENDED:
            return
        session.state = ENDED
        if send_bye and session.transport is not None:
            try:
                session.transport.send(encode_frame(Close()))
            except TransferError:
                pass  # already gone: nothing to say goodbye to
        if session.engine is not None:
            session.engine.terminate(timeout=_KILL_WAIT_S)
        if session.code_dir is not None:
            self.code_cache.release(session.code_dir)
            session.code_dir = None
        if session.site_dir is not None:
            self.environments.release(session.site_dir)
            session.site_dir = None
        self.confinement.release(session.job_dir, session.view_root, session.cgroup)
        session.job_dir = session.view_root = session.cgroup = None
        if session.transport is not None:
            closer = threading.Thread(target=_close_quietly, args=(session.transport, reason),
                                      name=f"p2ppool-close-{session.sid}", daemon=True)
            closer.start()
            self._closers.append(closer)
        self._forget(session)

    def _forget(self, session: _ClientSession) -> None:
        session.state = ENDED
        self._by_sid.pop(session.sid, None)
        self.keep_spare()  # the worker may be idle now: ready for the next session
        self._ended(session.sid)

    # -- what the loop asks every turn -------------------------------------------------------

    def readables(self) -> List[Any]:
        """Every engine's pipes and sentinels, and the spare's sentinels, for the loop's
        wait."""
        readables: List[Any] = []
        for session in self._by_sid.values():
            if session.engine is not None:
                readables.extend(session.engine.readables())
        if self._spare is not None:
            readables.extend(self._spare[3].sentinels())
        return readables

    def deadlines(self) -> List[float]:
        """The sessions' next deadlines (monotonic): engines' task limits, Open frames due."""
        deadlines: List[float] = []
        for session in self._by_sid.values():
            if session.engine is not None:
                engine_deadline = session.engine.next_deadline()
                if engine_deadline is not None:
                    deadlines.append(engine_deadline)
            if session.open_deadline is not None and session.state == AWAITING_OPEN:
                deadlines.append(session.open_deadline)
        return deadlines

    def has_events(self) -> bool:
        """Whether an engine holds events already (the loop must not wait)."""
        return any(s.engine is not None and s.engine.has_events()
                   for s in self._by_sid.values())

    def active(self) -> bool:
        """Whether a session is still awaiting its Open frame or running."""
        return any(s.state in (AWAITING_OPEN, RUNNING) for s in self._by_sid.values())

    def expire_opens(self, now: float) -> None:
        """Close the sessions whose Open frame is overdue (``now``: monotonic)."""
        for session in list(self._by_sid.values()):
            if (session.state == AWAITING_OPEN and session.open_deadline is not None
                    and now >= session.open_deadline):
                log.info("session %d with %s: no Open frame within %g s; closing", session.sid,
                         session.who(), defaults.WORKER_OPEN_FRAME_TIMEOUT_S)
                self._end_session(session, "no Open frame in time")

    # -- stopping ----------------------------------------------------------------------------

    def tasks_in_flight(self) -> int:
        """How many tasks are in flight on all sessions."""
        return sum(len(s.inflight) for s in self._by_sid.values())

    def withdraw(self) -> None:
        """The worker withdraws: refuse sessions awaiting Open, send new tasks back."""
        self.withdrawing = True
        self._drop_spare()
        for session in list(self._by_sid.values()):
            if session.state == AWAITING_OPEN:
                self._refuse(session, f"worker {self.settings.name} is shutting down")

    def wind_down(self, grace_over: bool) -> None:
        """While withdrawing: close the sessions whose tasks are done; once the grace
        period is over, report the rest of their tasks lost first."""
        for session in list(self._by_sid.values()):
            if session.state != RUNNING:
                continue
            if session.inflight and grace_over:
                self._lose_all(session, f"worker {self.settings.name} stopped: the "
                               f"{self.settings.grace:g} s grace period ended")
            if not session.inflight:
                log.info("session %d with %s: closing (worker stopping)", session.sid,
                         session.who())
                self._end_session(session, "worker stopping")

    def stop_all(self) -> None:
        """Stop now: kill every child, report in-flight tasks lost (retry elsewhere)."""
        self._no_more_spares()
        for session in list(self._by_sid.values()):
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

    def end_all(self) -> None:
        """End every session (engines first), saying goodbye to those still open, and stop
        the spare sandboxes."""
        self._no_more_spares()
        for session in list(self._by_sid.values()):
            if session.engine is not None:
                session.engine.terminate(timeout=_KILL_WAIT_S)
            self._end_session(session, "worker stopped",
                              send_bye=session.state in (AWAITING_OPEN, RUNNING))

    def close(self) -> None:
        """After :meth:`end_all`: wait (bounded) for the goodbyes to be closed, then remove
        the code cache and the jobs directory."""
        deadline = time.monotonic() + defaults.SESSION_CLOSE_TIMEOUT_S + 2.0
        self._no_more_spares()
        for closer in self._closers:
            closer.join(max(0.0, deadline - time.monotonic()))
        self.code_cache.close()
        self.confinement.close()


def _close_quietly(transport: Any, reason: str) -> None:
    try:
        transport.close(reason)
    except Exception as exc:  # the session may already be gone; closing is best effort
        log.debug("closing a session failed: %s", exc)
