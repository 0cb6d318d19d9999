"""A minimal real client for driving ``python -m p2ppool.worker`` in tests.

It uses the real pieces a Pool uses: a :class:`~p2ppool.board_client.BoardClient` on the
cluster topic, :func:`~p2ppool.protocol.seal_code` for the Accept, a
:class:`~p2ppool.transfer.Session` as the client side, and the frames of
:mod:`p2ppool.session_protocol`, with cloudpickle (``p2ppool.payload``) for functions and
arguments.  Every wait is bounded.

Run as a program (``python -m tests.system._worker_driver ...``) it opens one session, starts
one long task, prints ``READY <worker>`` and then waits until it is killed: the test of a
client that disappears kills it.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Sequence

import psutil

from p2ppool import payload
from p2ppool.board_auth import BoardIdentity, name_of
from p2ppool.board_client import BoardClient
from p2ppool.protocol import Accept, Hello, Message, Offer, Want, Withdraw, seal_code
from p2ppool.session_protocol import (
    SESSION_VERSION,
    Bye,
    Frame,
    Func,
    Open,
    Ready,
    Task,
    decode_frame,
    encode_frame,
)
from p2ppool.transfer import CLIENT, Session, new_code

CLUSTER = "alice/friends"
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class BoardAccess:
    """How one user reaches the test board."""

    host: str
    port: int
    user: str
    identity: str
    known_hosts: str

    def client(self, flags: Sequence[str] = (), name: str = "peer") -> BoardListener:
        """A connected listener whose board sender id is ``<name>~<a fresh key>``."""
        return BoardListener(BoardClient(
            self.host, self.port, topic=CLUSTER, flags=flags, username=self.user,
            identity=self.identity, known_hosts=self.known_hosts, ssh_config="/dev/null",
            sender=BoardIdentity(name),
        ).connect())

    def argv(self) -> List[str]:
        return [f"--board={self.host}:{self.port}", f"--user={self.user}",
                f"--identity={self.identity}", f"--known-hosts={self.known_hosts}"]


class BoardListener:
    """A board client that keeps every message it saw and waits for one that matches."""

    def __init__(self, client: BoardClient) -> None:
        self.client = client
        self.seen: List[Message] = []

    def publish(self, msg: Message) -> None:
        self.client.publish(msg)

    def wait_for(self, match: Callable[[Message], bool], timeout: float,
                 what: str = "a matching board message", after: float | None = None) -> Message:
        """The first message (seen earlier or arriving within ``timeout``) that ``match``es;
        with ``after`` (a ``time.time()`` value), only one stamped at or after it."""
        wanted = match
        if after is not None:
            def wanted(msg: Message) -> bool:
                return msg.ts >= after and match(msg)
        for msg in self.seen:
            if wanted(msg):
                self.seen.remove(msg)
                return msg
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout:g} s; saw {self.seen[-8:]}")
            try:
                msg = self.client.get(timeout=left)
            except queue.Empty:
                continue
            if wanted(msg):
                return msg
            self.seen.append(msg)

    def close(self) -> None:
        self.client.close()


def is_hello(worker: str, slots: int | None = None) -> Callable[[Message], bool]:
    return lambda m: (isinstance(m, Hello) and name_of(m.sender) == worker
                      and (slots is None or m.slots == slots))


@dataclass
class ClientSession:
    """The client end of one wormhole session with a worker."""

    session: Session
    frames: queue.Queue[Frame]
    lost: queue.Queue[str]
    job: str
    worker: str
    offer: Offer
    accept: Accept
    code: str
    next_task: int = 1
    sent_funcs: Dict[int, bool] = field(default_factory=dict)

    def send(self, frame: Frame) -> None:
        self.session.send(encode_frame(frame))

    def next_frame(self, timeout: float = 15.0) -> Frame:
        try:
            return self.frames.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no frame from the worker within {timeout:g} s "
                                 f"(session cause: {self.session.cause})") from None

    def open(self, maxtasksperchild: int | None = None, initializer: Any = None,
             initargs: Sequence[Any] = (), python: str = PYTHON,
             slots: int | None = None) -> Frame:
        blob = payload.dumps((initializer, tuple(initargs))) if initializer else b""
        self.send(Open(job=self.job, python=python, maxtasksperchild=maxtasksperchild,
                       initializer=blob, slots=slots))
        return self.next_frame()

    def submit(self, func: Callable[..., Any], call: payload.Call, func_key: int = 1,
               args_blob: bytes | None = None) -> int:
        if func_key not in self.sent_funcs:
            self.send(Func(func_key, payload.dumps(func)))
            self.sent_funcs[func_key] = True
        task_id = self.next_task
        self.next_task += 1
        self.send(Task(task_id, func_key, payload.dumps(call) if args_blob is None
                       else args_blob))
        return task_id

    def close(self) -> None:
        try:
            self.send(Bye())
        except Exception:
            pass
        self.session.close()


class Driver:
    """Plays the client role of a Pool against one worker: Want, Accept, session."""

    def __init__(self, board: BoardListener, relay_url: str, transit: str) -> None:
        self.board = board
        self.relay_url = relay_url
        self.transit = transit
        #: the board client's self-certifying id (``<name>~<key>``): it signs as that only
        self.sender = board.client.sender

    def want(self, slots: int = 2, python: str = PYTHON, job: str | None = None,
             session: int = SESSION_VERSION) -> str:
        job = job or uuid.uuid4().hex[:8]
        self.board.publish(Want(sender=self.sender, ts=time.time(), ttl=60.0, job=job,
                                slots=slots, python=python, session=session))
        return job

    def wait_offer(self, job: str, timeout: float = 10.0, worker: str | None = None) -> Offer:
        """The offer of ``worker`` (default: any worker) for ``job``."""
        msg = self.board.wait_for(
            lambda m: (isinstance(m, Offer) and m.job == job
                       and (worker is None or name_of(m.worker) == worker)),
            timeout, f"offer for job {job} from {worker or 'any worker'}")
        assert isinstance(msg, Offer)
        return msg

    def accept(self, offer: Offer, code: str | None = None) -> Accept:
        accept = Accept(sender=self.sender, ts=time.time(), ttl=60.0, job=offer.job,
                        worker=offer.worker, code=seal_code(code or new_code(), offer.key))
        self.board.publish(accept)
        return accept

    def connect(self, slots: int = 2, python: str = PYTHON,
                worker: str | None = None) -> ClientSession:
        """Want -> Offer -> Accept -> open the wormhole session (before the Open frame)."""
        job = self.want(slots=slots, python=python)
        offer = self.wait_offer(job, worker=worker)
        code = new_code()
        accept = self.accept(offer, code)
        # satisfied, as a Pool would be: other workers release what they offered this job
        self.board.publish(Withdraw(sender=self.sender, ts=time.time(), ttl=60.0, job=job))
        frames: queue.Queue[Frame] = queue.Queue()
        lost: queue.Queue[str] = queue.Queue()
        session = Session.open(
            code, self.relay_url, self.transit, role=CLIENT, loopback_only=True,
            on_frame=lambda data: frames.put(decode_frame(data)), on_lost=lost.put,
            timeout=15.0,
        )
        return ClientSession(session, frames, lost, job, offer.worker, offer, accept, code)

    def ready_session(self, slots: int = 2, worker: str | None = None,
                      **open_kwargs: Any) -> ClientSession:
        cs = self.connect(slots=slots, worker=worker)
        reply = cs.open(**open_kwargs)
        assert isinstance(reply, Ready), reply
        return cs


def result_value(frame: Frame) -> Any:
    """Unpickle a Result's blob (the test process is the client: it may)."""
    return payload.loads(frame.blob)  # type: ignore[union-attr]


# --- the worker under test ------------------------------------------------------------------


class WorkerProcess:
    """``python -m p2ppool.worker`` as a subprocess, with its stderr collected line by line.

    ``tmpdir``, if given, is the worker's ``TMPDIR``; it is removed once the worker has been
    stopped or killed (a killed worker cannot remove what it keeps there: multiprocessing's
    ``pymp-*`` directory with its fork server's socket).
    """

    def __init__(self, argv: Sequence[str], env: Dict[str, str],
                 tmpdir: str | None = None) -> None:
        self.argv = list(argv)
        self.tmpdir = tmpdir
        if tmpdir is not None:
            env = {**env, "TMPDIR": tmpdir}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "p2ppool.worker", *argv], cwd=ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.lines: List[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        """The first stderr line containing ``text`` (bounded wait)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"worker never logged {text!r}; log:\n{self.log_tail()}")
                self._cond.wait(left)

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.lines[-n:])

    def descendants(self) -> List[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait; SIGKILL the whole tree if it lingers.  Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.wait(10)
        self._remove_tmpdir()
        return code

    def kill(self) -> None:
        """SIGKILL the worker and its descendants, wait for it, remove its ``tmpdir``."""
        for child in self.descendants():
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        self._remove_tmpdir()

    def _remove_tmpdir(self) -> None:
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


# --- as a program: a client that opens a session, starts a long task, then is killed -------


def _sleep_long(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--board", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--known-hosts", required=True)
    parser.add_argument("--relay", required=True)
    parser.add_argument("--transit", required=True)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--worker", required=True)
    args = parser.parse_args(argv)
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    host, port = args.board.rsplit(":", 1)
    access = BoardAccess(host, int(port), args.user, args.identity, args.known_hosts)
    board = access.client(name="driver-proc")
    driver = Driver(board, args.relay, args.transit)
    cs = driver.ready_session(slots=args.slots, worker=args.worker)
    for _ in range(args.slots):
        cs.submit(_sleep_long, payload.apply_call((60.0,), {}))
    print(f"READY {cs.worker}", flush=True)
    threading.Event().wait(120)  # until killed (bounded anyway)
    return 0


if __name__ == "__main__":
    sys.exit(main())
