"""Fixtures for tests that need a whole cluster on 127.0.0.1 (:class:`p2ppool.LocalCluster`).

``tests/conftest.py`` star-imports this module; importing it starts nothing.

Fixtures:
    local_cluster: (module) a running LocalCluster: 2 workers x 2 slots, with ``carol`` as an
        extra member on the access list.  Tests that kill workers should start their own.
        ``P2PPOOL_TEST_KEEP_CLUSTER=1`` keeps its directory (keys, board and worker logs).
    task_gate: (function) a :class:`TaskGate`: tasks made by ``task_gate.blocker()`` report
        that they started over a loopback socket and run until the test releases them, so a
        test knows exactly when a task runs (no sleeping, no polling).
    cluster_backend: (function) ``cluster_backend(cluster, **kwargs)`` makes a
        :class:`p2ppool.remote.ClusterBackend` for a cluster, started, with an event pump
        (:class:`BackendPump`); it is closed after the test.

    recorded_codes: (function) the list of wormhole codes made in this process during the
        test (``transfer.new_code`` is spied), to prove none ever appears on the board.

Helpers:
    descendants(): pids of every live descendant of this process.
    reap(proc): kill a subprocess if it still runs, wait for it, close its pipes.
    assert_gone(pids, timeout): every pid has exited (zombies count as gone).
    wait_until_idle(cluster): every live worker of a (shared) cluster has all slots free.
    OldPythonWorker(cluster): a fake board member offering slots as a Python 2.7 worker.
    parse_exports(text): the ``export NAME=value`` lines ``p2ppool local`` prints, as a dict.
    read_until(proc, marker, timeout): a subprocess's output up to the line with ``marker``.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Sequence, Tuple, Type

import psutil
import pytest

__all__ = [
    "BackendPump",
    "OldPythonWorker",
    "TaskGate",
    "assert_gone",
    "cluster_backend",
    "descendants",
    "is_running",
    "make_blocker",
    "parse_exports",
    "read_until",
    "reap",
    "local_cluster",
    "recorded_codes",
    "task_gate",
    "wait_until_idle",
]


def descendants() -> List[int]:
    """Pids of every live descendant of this test process."""
    return [p.pid for p in psutil.Process().children(recursive=True)
            if is_running(p)]


def is_running(proc: psutil.Process | int) -> bool:
    """True while the process (a psutil.Process or a pid) exists and is not a zombie."""
    try:
        if isinstance(proc, int):
            proc = psutil.Process(proc)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until_idle(cluster: Any, timeout: float = 30.0) -> None:
    """Wait until every live worker of ``cluster`` has said (in its latest Hello) that all
    its slots are free: no session and no pending offer left by an earlier test.

    A test on a shared cluster that counts sessions or offered slots calls this first: a
    worker still busy with the previous test's session (its end is asynchronous) would
    offer fewer slots, and the recruiter would then open more sessions than the test
    expects.
    """
    for worker in cluster.workers:
        if worker.alive:
            cluster.wait_for_hello(worker.name, lambda h: h.slots == cluster.processes_per_worker,
                                   timeout=timeout)


def reap(proc: Any) -> None:
    """Kill ``proc`` (a ``subprocess.Popen``) if it still runs, wait for it, close its pipes."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def read_until(proc: Any, marker: bytes, timeout: float) -> bytes:
    """Read a subprocess's stdout up to and including the first line containing ``marker``
    (bounded by ``timeout``); return those bytes.  What was read past that line is kept for
    the next call on the same process."""
    import selectors

    assert proc.stdout is not None
    buf: bytes = getattr(proc, "_p2ppool_unread", b"")
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            start = 0
            while (end := buf.find(b"\n", start)) >= 0:
                if marker in buf[start:end]:
                    proc._p2ppool_unread = buf[end + 1:]
                    return buf[:end + 1]
                start = end + 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {marker!r} line within {timeout:g} s: {buf[-500:]!r}")
            if sel.select(left):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"process exited before {marker!r}: {buf[-500:]!r}")
                buf += chunk


def parse_exports(text: str) -> Dict[str, str]:
    """The ``export NAME=value`` lines of ``text`` (shell-quoted values), as a dict."""
    import shlex

    env = {}
    for line in text.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            env[name] = shlex.split(value)[0]
    return env


def assert_gone(pids: Iterable[int], timeout: float = 10.0) -> None:
    """Fail unless every process in ``pids`` has exited within ``timeout`` seconds."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    alive = [p for p in alive if is_running(p)]
    assert not alive, f"processes still running: {[(p.pid, p.cmdline()) for p in alive]}"


@pytest.fixture
def recorded_codes(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """Every wormhole code this process makes during the test (``transfer.new_code`` spied)."""
    from p2ppool import transfer

    codes: List[str] = []
    real_new_code = transfer.new_code

    def recording_new_code() -> str:
        code = real_new_code()
        codes.append(code)
        return code

    monkeypatch.setattr(transfer, "new_code", recording_new_code)
    return codes


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[Any]:
    """A LocalCluster with 2 workers x 2 slots and member carol, shared by a test module."""
    from p2ppool.localcluster import LocalCluster

    keep = bool(os.environ.get("P2PPOOL_TEST_KEEP_CLUSTER"))
    with LocalCluster(workers=2, processes_per_worker=2, members=("carol",),
                      keep_dir=keep) as cluster:
        if keep:
            print(f"local cluster files (kept): {cluster.directory}")
        yield cluster


def make_blocker(port: int) -> Callable[[Any], Any]:
    """A task function (pickled by value) that connects to the :class:`TaskGate` on ``port``,
    sends ``"x pid"`` and waits until released (or 30 s) before returning ``x``."""

    def block(x: Any) -> Any:
        import os
        import socket as _socket

        conn = _socket.create_connection(("127.0.0.1", port), timeout=30)
        conn.sendall(f"{x} {os.getpid()}\n".encode())
        conn.settimeout(30)
        try:
            conn.recv(1)  # the test releases us by sending a byte or closing
        except OSError:
            pass
        conn.close()
        return x

    return block


class TaskGate:
    """Tasks that say when they start (over a socket) and run until released.

    ``gate.blocker()`` is a function for ``payload.dumps``; called with ``x`` in a worker's
    child it connects to the gate, sends ``"x pid"``, and waits until :meth:`release` (or
    30 s) before returning ``x``.
    """

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._conns: List[socket.socket] = []

    def blocker(self) -> Callable[[Any], Any]:
        """A task function that reports to this gate (see :func:`make_blocker`)."""
        return make_blocker(self.port)

    def wait_started(self, timeout: float = 20.0) -> Tuple[str, int]:
        """Wait for the next task to start; return (its argument as text, its pid)."""
        self._sock.settimeout(timeout)
        conn, _ = self._sock.accept()
        conn.settimeout(timeout)
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(100)
            if not chunk:
                break
            data += chunk
        self._conns.append(conn)
        arg, pid = data.decode().split()
        return arg, int(pid)

    def release(self) -> None:
        """Let every started task finish."""
        for conn in self._conns:
            try:
                conn.sendall(b"x")
                conn.close()
            except OSError:
                pass
        self._conns.clear()

    def close(self) -> None:
        self.release()
        self._sock.close()


@pytest.fixture
def task_gate() -> Iterator[TaskGate]:
    """A :class:`TaskGate` (closed after the test)."""
    gate = TaskGate()
    try:
        yield gate
    finally:
        gate.close()


class BackendPump:
    """Collects a ClusterBackend's events as they are notified; waits for them with timeouts.

    Attributes:
        backend: the backend.
        events: every event collected so far, in order.
    """

    _ids = itertools.count(1)

    def __init__(self, backend: Any, cluster: Any = None) -> None:
        self.backend = backend
        self.cluster = cluster
        self.events: List[Any] = []
        self._cond = threading.Condition()
        self._notified = False

    def notify(self) -> None:
        with self._cond:
            self._notified = True
            self._cond.notify_all()

    def wait_for(self, match: Callable[[Any], bool], timeout: float = 20.0,
                 count: int = 1) -> List[Any]:
        """Wait until ``count`` collected events match; return the matching events."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events if match(e)]
            if len(found) >= count:
                return found
            with self._cond:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"only {len(found)} of {count} expected events within {timeout:g} s; "
                        f"events so far: {self.events!r}{self._worker_logs()}")
                if not self._notified:
                    self._cond.wait(left)
                self._notified = False
            self.events += self.backend.collect()

    def _worker_logs(self) -> str:
        workers = getattr(self.cluster, "workers", [])
        text = ""
        for worker in workers:
            try:
                with open(worker.log_path, encoding="utf-8", errors="replace") as f:
                    lines = f.read().splitlines()[-15:]
            except OSError:
                continue
            text += f"\n--- end of {worker.name}'s log:\n" + "\n".join(lines)
        return text + self._servers_state()

    def _servers_state(self) -> str:
        """Whether the cluster's mailbox server and relay still run (if not, how the process
        ended: a negative code is the signal that killed it), and the end of their log."""
        servers = getattr(self.cluster, "_servers", None)
        proc = getattr(servers, "_proc", None)
        if proc is None:
            return ""
        code = proc.poll()
        state = "running" if code is None else f"EXITED with code {code}"
        text = f"\n--- wormhole servers (pid {proc.pid}): {state}"
        try:
            with open(servers._log_path, encoding="utf-8", errors="replace") as f:
                text += "; end of their log:\n" + "\n".join(f.read().splitlines()[-5:])
        except OSError:
            pass
        return text

    def of_type(self, kind: Type[Any], timeout: float = 20.0, count: int = 1) -> List[Any]:
        """Wait for ``count`` events of a type."""
        return self.wait_for(lambda e: isinstance(e, kind), timeout, count)

    def drain_for(self, seconds: float) -> List[Any]:
        """Collect whatever arrives during ``seconds`` (for checks that something does not
        happen); returns the events collected in that time."""
        start = len(self.events)
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with self._cond:
                if not self._notified:
                    self._cond.wait(left)
                self._notified = False
            self.events += self.backend.collect()
        self.events += self.backend.collect()
        return self.events[start:]


@pytest.fixture
def cluster_backend() -> Iterator[Callable[..., BackendPump]]:
    """``cluster_backend(cluster, demand=None, **kwargs)`` -> a started backend's pump."""
    from p2ppool.config import resolve_options
    from p2ppool.remote import ClusterBackend

    made: List[BackendPump] = []

    def make(cluster: Any, demand: int | None = None, options: Dict[str, Any] | None = None,
             max_slots: int = 16, initializer: bytes | None = None,
             maxtasksperchild: int | None = None, **kwargs: Any) -> BackendPump:
        opts = resolve_options(options if options is not None else cluster.options,
                               environ={}, read_file=False)
        pump = BackendPump(None, cluster)
        job = f"job{next(BackendPump._ids)}-{int(time.time() * 1000) % 10**9}"
        backend = ClusterBackend(opts, job, max_slots, initializer, maxtasksperchild,
                                 pump.notify, **kwargs)
        pump.backend = backend
        made.append(pump)
        backend.start()
        if demand is not None:
            backend.set_demand(demand)
        return pump

    try:
        yield make
    finally:
        for pump in made:
            pump.backend.terminate()


class OldPythonWorker:
    """A fake worker on a cluster's board, as member ``volunteer``: it says Hello with Python
    2.7 (again whenever a client says Hello) and offers 8 slots to every Want.

    ``offers`` is released once per offer made; ``accepted`` collects the Accepts naming it
    (a client must never send one).  Use it as a context manager.
    """

    NAME = "py27"

    def __init__(self, cluster: Any) -> None:
        from p2ppool.board_auth import BoardIdentity
        from p2ppool.board_client import BoardClient

        host, _, port = cluster.board.rpartition(":")
        self.offers = threading.Semaphore(0)
        self.accepted: List[Any] = []
        self.client = BoardClient(host, int(port), topic=cluster.cluster, username="volunteer",
                                  identity=cluster.identity("volunteer"),
                                  known_hosts=cluster.known_hosts, on_message=self._on_message,
                                  sender=BoardIdentity(self.NAME))
        self.id = self.client.sender  # "py27~<key>"

    def _hello(self, now: float) -> Any:
        from p2ppool.protocol import Hello

        return Hello(sender=self.id, ts=now, ttl=90.0, role="worker", python="2.7",
                     version="0.1", slots=8)

    def _on_message(self, msg: Any) -> None:
        from p2ppool.protocol import Accept, Hello, Offer, Want, new_offer_keypair

        now = time.time()
        if isinstance(msg, Want):
            _, key = new_offer_keypair()
            self.client.publish(Offer(sender=self.id, ts=now, ttl=10.0, job=msg.job,
                                      worker=self.id, slots=8, key=key, client=msg.sender))
            self.offers.release()
        elif isinstance(msg, Accept) and msg.worker == self.id:
            self.accepted.append(msg)
        elif isinstance(msg, Hello) and msg.role == "client":
            self.client.publish(self._hello(now))

    def __enter__(self) -> OldPythonWorker:
        self.client.connect()
        try:
            self.client.publish(self._hello(time.time()))
        except BaseException:
            self.client.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.client.close()


def executor_names(events: Sequence[Any]) -> List[str]:
    """Worker names of the ExecutorJoined events, sorted."""
    from p2ppool.board_auth import name_of
    from p2ppool.remote import ExecutorJoined

    # (an executor's name is the worker's board id, "<name>~<key>")
    return sorted(name_of(e.name) for e in events if isinstance(e, ExecutorJoined))
