"""A whole p2ppool cluster on 127.0.0.1: board, wormhole servers and workers, for tests and demos.

::

    with LocalCluster(workers=2, processes_per_worker=2) as cluster:
        with cluster.pool() as pool:               # a p2ppool.Pool wired to the cluster
            print(pool.map(abs, range(-5, 5)))
        cluster.options    # the Pool keyword options: cluster, board, board_user, ...
        cluster.env        # the same as P2PPOOL_* variables

What it starts, all bound to 127.0.0.1 on free ports, each child in its own process group:

* a board server, ``p2ppool board`` (our pico-pipe-compatible SSH server), with a
  throwaway ed25519 host key, a users file and a matching ``known_hosts`` file;
* a real magic-wormhole mailbox server and transit relay
  (:class:`~p2ppool.transfer.servers.WormholeServers`);
* the cluster's host: a board session of the owner (``alice``) holding the topic open with
  its access list (the workers' user ``volunteer`` and any ``members``), which also watches the
  board so the cluster knows when each worker has said Hello (no sleeping);
* ``workers`` × ``python -m p2ppool.worker --loopback-only ...`` with throwaway keys.

Stopping (on leaving the ``with`` block, even after an error, or :meth:`LocalCluster.stop`)
sends SIGTERM to every child's process group, waits a bounded time, then SIGKILLs the group,
and every process left in the child's session, so grandchildren (a worker's task processes,
even those of a worker that was SIGKILLed) go too.  Children also get SIGTERM from the kernel
if the process that started them dies (Linux ``PR_SET_PDEATHSIG``; strictly, when the
*thread* that started them ends, so start a cluster, and call :meth:`LocalCluster.add_worker`,
from a thread that lives as long as the cluster).  Children keep their temporary files
(``TMPDIR``) in the cluster's directory, which stopping removes: a worker that was killed
leaves its multiprocessing directory (``pymp-*``, its fork server's socket) there, not in
``/tmp``.  If the process that started the cluster dies without stopping it, the wormhole
servers (which notice: their stdin ends) remove that directory (unless ``keep_dir``).

``p2ppool local`` (:mod:`p2ppool.local.command`) runs one in the foreground.  The children's
process plumbing is :mod:`p2ppool.local.processes`.

Size: one class that starts, watches and stops a whole cluster; the children's plumbing
is :mod:`p2ppool.local.processes`.
"""

from __future__ import annotations

import dataclasses
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from types import TracebackType
from typing import Any, Callable, Dict, List, Sequence

from .. import defaults
from ..errors import P2PPoolError
from .processes import (
    MARK,
    child_tempdir,
    drain,
    log_tail,
    pdeathsig,
    stop_groups,
    write_ed25519_key,
)

__all__ = ["LocalCluster", "LocalClusterError", "WorkerProcess"]

#: The board user who owns the cluster (and runs the Pool), and the workers' user.
OWNER = "alice"
VOLUNTEER = "volunteer"


class LocalClusterError(P2PPoolError):
    """A part of the local cluster did not start; the message names it and ends with its log."""


@dataclasses.dataclass
class WorkerProcess:
    """One worker started by the cluster.

    Attributes:
        name: its name on the board (``w1``, ``w2``, ...).
        pid: its process id.
        log_path: where its stderr goes.
    """

    name: str
    pid: int
    log_path: str
    process: subprocess.Popen[bytes] = dataclasses.field(repr=False)

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None


class LocalCluster:
    """Board, wormhole servers and workers on 127.0.0.1, started and stopped as one.

    Args:
        workers: worker processes to start.
        processes_per_worker: slots (child processes) per worker.
        cluster_name: the topic name; the cluster is ``alice/<cluster_name>``.
        members: extra board users on the cluster's access list (each gets a key, see
            :meth:`identity`); e.g. ``("carol",)`` for a third member in tests.
        worker_args: extra command-line arguments for every worker.
        board_args: extra command-line arguments for the board server (``p2ppool board``).
        start_timeout: seconds to wait for everything to be ready.
        stop_timeout: seconds each child gets to exit after SIGTERM before SIGKILL.
        worker_grace: the workers' ``--grace`` (seconds in-flight tasks get when stopping).
        keep_dir: keep the temporary directory (keys, logs) after stopping.
        isolated: workers start in their own empty directory and can import p2ppool and
            what is installed, but not the caller's files (neither its directory nor its
            ``PYTHONPATH``): what a remote machine sees, so the caller's own modules must
            travel (:mod:`p2ppool.shipping`).  False starts them in the caller's directory
            with its ``PYTHONPATH``, as before (with ``sandbox="none"`` their tasks then see
            the caller's files too).
        sandbox: the workers' ``--sandbox``: ``auto`` (bubblewrap where it works, as a real
            worker's default), ``bwrap`` or ``none``; default ``$P2PPOOL_SANDBOX``, else
            ``auto``.

    Attributes:
        directory: the temporary directory with keys, the users file and every log.
        board: ``"127.0.0.1:PORT"`` of the board.
        relay: the mailbox server URL; transit: the transit relay hint.
        cluster: ``"alice/<cluster_name>"``.

    Raises:
        LocalClusterError: something did not start (the message ends with its log).
    """

    def __init__(
        self,
        workers: int = 2,
        processes_per_worker: int = 1,
        *,
        cluster_name: str = "local",
        members: Sequence[str] = (),
        worker_args: Sequence[str] = (),
        board_args: Sequence[str] = (),
        start_timeout: float = defaults.LOCALCLUSTER_START_TIMEOUT_S,
        stop_timeout: float = defaults.LOCALCLUSTER_STOP_TIMEOUT_S,
        worker_grace: float = 2.0,
        keep_dir: bool = False,
        isolated: bool = True,
        sandbox: str | None = None,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, not {workers!r}")
        if processes_per_worker < 1:
            raise ValueError(f"processes_per_worker must be >= 1, not {processes_per_worker!r}")
        bad = [m for m in members if m in (OWNER, VOLUNTEER) or not m.isidentifier()]
        if bad:
            raise ValueError(f"member names must be plain words other than {OWNER!r} and "
                             f"{VOLUNTEER!r}, got {bad!r}")
        self.processes_per_worker = processes_per_worker
        self.cluster = f"{OWNER}/{cluster_name}"
        self.members = tuple(members)
        self.worker_args = tuple(worker_args)
        self.board_args = tuple(board_args)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.worker_grace = worker_grace
        self.keep_dir = keep_dir
        self.isolated = isolated
        if sandbox is None:
            sandbox = os.environ.get("P2PPOOL_SANDBOX") or "auto"
        if sandbox not in ("auto", "bwrap", "none"):
            raise ValueError(f"sandbox must be 'auto', 'bwrap' or 'none', not {sandbox!r}")
        self.sandbox = sandbox
        self.directory = tempfile.mkdtemp(prefix="p2ppool-local-")
        self._child_tmp: str | None = None  # the children's TMPDIR (see child_tempdir)
        self.board = ""
        self.relay = ""
        self.transit = ""
        self._keys: Dict[str, str] = {}
        self._known_hosts = os.path.join(self.directory, "known_hosts")
        self._board_proc: subprocess.Popen[bytes] | None = None
        self._servers: Any = None
        self._host_client: Any = None
        self._workers: List[WorkerProcess] = []
        self._next_worker = 1
        self._cond = threading.Condition()
        self._hellos: Dict[str, Any] = {}  # worker name -> its latest Hello
        self._byes: Dict[str, int] = {}  # worker name -> Byes seen
        self._watchers: List[Callable[[Any], None]] = []
        self._stopped = False
        try:
            self._start(workers)
        except BaseException:
            self.stop()
            raise

    # --- what users and tests use ---------------------------------------------------------

    @property
    def options(self) -> Dict[str, Any]:
        """Keyword options that make a ``p2ppool.Pool`` use this cluster."""
        return {
            "cluster": self.cluster,
            "board": self.board,
            "board_user": OWNER,
            "identity": self._keys[OWNER],
            "known_hosts": self._known_hosts,
            "relay": self.relay,
            "transit": self.transit,
            "loopback_only": True,
        }

    @property
    def env(self) -> Dict[str, str]:
        """The ``P2PPOOL_*`` variables equivalent to :attr:`options`."""
        from ..config import resolve_options

        resolved = resolve_options(self.options, environ={}, read_file=False)
        return resolved.as_env()

    @property
    def known_hosts(self) -> str:
        """The known_hosts file holding the board's host key."""
        return self._known_hosts

    @property
    def workers(self) -> List[WorkerProcess]:
        """Every worker started so far (including killed ones), in start order."""
        return list(self._workers)

    def identity(self, user: str) -> str:
        """The private key file of a board user (``alice``, ``volunteer`` or a member)."""
        return self._keys[user]

    def pool(self, processes: int | None = None, **kwargs: Any) -> Any:
        """A ``p2ppool.Pool`` using this cluster (``kwargs`` override :attr:`options`)."""
        from ..pool.api import Pool

        return Pool(processes, **{**self.options, **kwargs})

    def add_worker(self, processes: int | None = None, extra_args: Sequence[str] = (),
                   wait: bool = True, python: str | None = None) -> str:
        """Start one more worker and (unless ``wait`` is false) wait for its Hello; return
        its name.  ``python``: the interpreter to run it with (e.g. another virtual
        environment's, to have a worker that lacks or has a package); default this one."""
        worker = self._spawn_worker(processes or self.processes_per_worker, extra_args, python)
        if wait:
            self.wait_for_hello(worker.name, timeout=self.start_timeout)
        return worker.name

    def restart_board(self, down: Callable[[], None] | None = None) -> None:
        """SIGKILL the board server and start it again on the same port with the same host
        key (as after a crash); ``down()``, if given, runs while it is down.

        Everyone's board connection breaks; the board clients reconnect with backoff.
        """
        assert self._board_proc is not None
        stop_groups([self._board_proc], 0.0, self.directory)
        if self._board_proc.stdout is not None:
            self._board_proc.stdout.close()
        if down is not None:
            down()
        host_key = os.path.join(self.directory, "board_host_key")
        with open(host_key + ".pub", encoding="ascii") as f:
            host_public = " ".join(f.read().split()[:2])
        port = self.board.rpartition(":")[2]
        self._start_board(host_key, host_public, time.monotonic() + self.start_timeout,
                          listen=f"127.0.0.1:{port}")

    def restart_wormhole_servers(self, down: Callable[[], None] | None = None) -> None:
        """SIGKILL the mailbox server and transit relay and start them again on the same
        ports (same channel database); ``down()``, if given, runs while they are down."""
        from ..transfer.servers import WormholeServers

        old = self._servers
        mailbox_port = int(self.relay.rsplit(":", 1)[1].split("/", 1)[0])
        relay_port = int(self.transit.rsplit(":", 1)[1])
        if old is not None and old._proc is not None:
            old._proc.kill()
            old._proc.wait(5.0)
        if down is not None:
            down()
        self._servers = WormholeServers(
            mailbox_port=mailbox_port, relay_port=relay_port,
            state_dir=os.path.join(self.directory, "wormhole"),
            remove_if_orphaned=self._remove_if_orphaned(), start_timeout=self.start_timeout,
        )
        if old is not None:
            old.stop()

    def kill_worker(self, index: int, sig: int = signal.SIGKILL) -> WorkerProcess:
        """Send ``sig`` (default SIGKILL) to worker number ``index`` (0-based) only."""
        worker = self._workers[index]
        # Not os.kill(pid): once the worker has been reaped its pid may belong to anyone.
        worker.process.send_signal(sig)
        return worker

    def wait_for_hello(
        self, worker: str, predicate: Callable[[Any], bool] | None = None,
        timeout: float = 10.0, after: float | None = None,
    ) -> Any:
        """Wait for a Hello of ``worker`` on the board that satisfies ``predicate``.

        Args:
            worker: the worker's name.
            predicate: a test of the :class:`~p2ppool.board.protocol.Hello` (default: any).
            timeout: seconds to wait.
            after: only Hellos stamped at or after this unix time count.

        Returns:
            The Hello.

        Raises:
            TimeoutError: none arrived in time (the message ends with the worker's log).
        """
        from ..board.auth import name_of

        worker = name_of(worker)  # a name, or the whole id "<name>~<key>"

        def found() -> Any:
            hello = self._hellos.get(worker)
            if hello is None or (after is not None and hello.ts < after):
                return None
            return hello if predicate is None or predicate(hello) else None

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hello = found()
                if hello is not None:
                    return hello
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
                self._check_worker_alive(worker)
        log = next((w.log_path for w in self._workers if w.name == worker), "")
        raise TimeoutError(f"worker {worker} did not say the expected Hello within "
                           f"{timeout:g} s{log_tail(log) if log else ''}")

    def sender_id(self, worker: str) -> str | None:
        """The board sender id (``<name>~<public key>``) of ``worker``'s latest Hello, or
        None before it said one."""
        with self._cond:
            hello = self._hellos.get(worker)
        return None if hello is None else str(hello.sender)

    def wait_for_bye(self, worker: str, timeout: float = 10.0) -> None:
        """Wait until ``worker`` has said Bye on the board (it is withdrawing).

        Raises:
            TimeoutError: it did not within ``timeout`` seconds.
        """
        from ..board.auth import name_of

        worker = name_of(worker)
        with self._cond:
            if not self._cond.wait_for(lambda: self._byes.get(worker, 0) > 0, timeout):
                raise TimeoutError(f"worker {worker} did not say Bye within {timeout:g} s")

    def watch(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(message)`` for every board message the host sees (reader thread)."""
        self._watchers.append(callback)

    # --- starting -------------------------------------------------------------------------

    def _child_env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("P2PPOOL_")}
        empty = os.path.join(self.directory, "config.toml")
        if not os.path.exists(empty):
            with open(empty, "w", encoding="utf-8") as f:
                f.write("# the local cluster's processes read no user configuration\n")
        env["P2PPOOL_CONFIG"] = empty
        caller_path = [env["PYTHONPATH"]] if env.get("PYTHONPATH") and not self.isolated else []
        env["PYTHONPATH"] = os.pathsep.join([self._package_dir(), *caller_path])
        env["PYTHONUNBUFFERED"] = "1"
        env[MARK] = self.directory  # inherited by grandchildren: what stop() may sweep
        if self._child_tmp is not None:
            env["TMPDIR"] = self._child_tmp  # what a killed child leaves goes with stop()
        return env

    def _package_dir(self) -> str:
        """A directory that holds p2ppool and nothing else, for the children's PYTHONPATH
        (the directory p2ppool lies in may be a source checkout with tests and scripts,
        which a remote worker would not have)."""
        here = os.path.join(self.directory, "pythonpath")
        if not os.path.isdir(here):
            os.makedirs(here)
            package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # p2ppool/
            os.symlink(package, os.path.join(here, "p2ppool"))
        return here

    def _remove_if_orphaned(self) -> str | None:
        """What the wormhole servers remove if this process dies without stopping the
        cluster (they notice; the other children get SIGTERM): the cluster's directory,
        unless it is to be kept."""
        return None if self.keep_dir else self.directory

    def _popen(self, argv: List[str], log_path: str, stdout_pipe: bool = False,
               cwd: str | None = None) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, cwd=cwd,
                stdout=subprocess.PIPE if stdout_pipe else log, stderr=log,
                env=self._child_env(), close_fds=True, start_new_session=True,
                preexec_fn=pdeathsig if sys.platform.startswith("linux") else None,
            )

    def _start(self, workers: int) -> None:
        from ..transfer.servers import WormholeServers

        deadline = time.monotonic() + self.start_timeout
        self._child_tmp = child_tempdir(self.directory)
        for user in (OWNER, VOLUNTEER, *self.members):
            path = os.path.join(self.directory, f"id_{user}")
            public = write_ed25519_key(path, user)
            self._keys[user] = path
            with open(os.path.join(self.directory, "users"), "a", encoding="ascii") as f:
                f.write(f"{user} {public}\n")
        host_key = os.path.join(self.directory, "board_host_key")
        host_public = write_ed25519_key(host_key, "p2ppool-local-board")
        self._start_board(host_key, host_public, deadline)
        os.makedirs(os.path.join(self.directory, "wormhole"))
        self._servers = WormholeServers(
            state_dir=os.path.join(self.directory, "wormhole"),
            remove_if_orphaned=self._remove_if_orphaned(),
            start_timeout=max(1.0, deadline - time.monotonic()),
        )
        self.relay, self.transit = self._servers.relay_url, self._servers.transit
        self._start_host()
        started = [self._spawn_worker(self.processes_per_worker) for _ in range(workers)]
        for worker in started:
            self.wait_for_hello(worker.name, timeout=max(0.5, deadline - time.monotonic()))

    def _start_board(self, host_key: str, host_public: str, deadline: float,
                     listen: str = "127.0.0.1:0") -> None:
        log_path = os.path.join(self.directory, "board.log")
        # ``p2ppool board``, without loading every other subcommand's module first.
        argv = [sys.executable, "-c", _BOARD_MAIN, "--listen", listen,
                "--host-key", host_key, "--users", os.path.join(self.directory, "users"),
                "--log-level", "WARNING", *self.board_args]
        self._board_proc = proc = self._popen(argv, log_path, stdout_pipe=True)
        assert proc.stdout is not None
        prefix = b"board listening on "
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while prefix not in buf or not buf.split(prefix, 1)[1].count(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LocalClusterError(
                        f"the board server did not start in time{log_tail(log_path)}")
                if not sel.select(left):
                    continue
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    code = proc.wait(5)
                    raise LocalClusterError(f"the board server exited with code {code} "
                                            f"before listening{log_tail(log_path)}")
                buf += chunk
        address = buf.split(prefix, 1)[1].split(b"\n", 1)[0].decode().strip()
        host, _, port = address.rpartition(":")
        if host != "127.0.0.1" or not port.isdigit():
            raise LocalClusterError(f"the board server printed an unexpected address "
                                    f"{address!r}{log_tail(log_path)}")
        self.board = address
        with open(self._known_hosts, "w", encoding="ascii") as f:
            f.write(f"[127.0.0.1]:{port} {host_public}\n")
        # The rest of its output is not needed; keep the pipe from filling up.
        threading.Thread(target=drain, args=(proc.stdout,), daemon=True,
                         name="p2ppool-local-board-out").start()

    def _start_host(self) -> None:
        from ..board.auth import name_of
        from ..board.client import BoardClient
        from ..board.protocol import Bye, Hello

        host, _, port = self.board.rpartition(":")
        access = ",".join((VOLUNTEER, *self.members))

        def on_message(msg: Any) -> None:
            # Kept by the worker's name (its sender id is "<name>~<key>"); a Bye counts
            # only from the id of the name's latest Hello (a member may take any name).
            if isinstance(msg, Hello) and msg.role == "worker":
                with self._cond:
                    self._hellos[name_of(msg.sender)] = msg
                    self._cond.notify_all()
            elif isinstance(msg, Bye) and msg.role == "worker":
                with self._cond:
                    name = name_of(msg.sender)
                    latest = self._hellos.get(name)
                    if latest is not None and latest.sender == msg.sender:
                        self._byes[name] = self._byes.get(name, 0) + 1
                        self._cond.notify_all()
            for watcher in list(self._watchers):
                watcher(msg)

        self._host_client = BoardClient(
            host, int(port), topic=self.cluster, flags=["-a", access],
            username=OWNER, identity=self._keys[OWNER], known_hosts=self._known_hosts,
            ssh_config=os.path.join(self.directory, "no_ssh_config"), on_message=on_message,
        )
        self._host_client.connect()

    def _spawn_worker(self, processes: int, extra_args: Sequence[str] = (),
                      python: str | None = None) -> WorkerProcess:
        if self._stopped:
            raise LocalClusterError("the local cluster has been stopped")
        name = f"w{self._next_worker}"
        self._next_worker += 1
        log_path = os.path.join(self.directory, f"worker-{name}.log")
        argv = [
            python or sys.executable, "-m", "p2ppool.worker", "--cluster", self.cluster,
            "--processes", str(processes), "--board", self.board,
            "--identity", self._keys[VOLUNTEER], "--known-hosts", self._known_hosts,
            "--user", VOLUNTEER, "--relay", self.relay, "--transit", self.transit,
            "--loopback-only", "--name", name, "--grace", f"{self.worker_grace:g}",
            "--sandbox", self.sandbox,
            *self.worker_args, *extra_args,
        ]
        cwd = None
        if self.isolated:  # its own empty working directory, as on another machine
            cwd = os.path.join(self.directory, f"worker-{name}")
            os.makedirs(cwd, exist_ok=True)
        proc = self._popen(argv, log_path, cwd=cwd)
        worker = WorkerProcess(name, proc.pid, log_path, proc)
        self._workers.append(worker)
        return worker

    def _check_worker_alive(self, name: str) -> None:
        for worker in self._workers:
            if worker.name == name and worker.process.poll() is not None:
                raise LocalClusterError(
                    f"worker {name} exited with code {worker.process.returncode}"
                    f"{log_tail(worker.log_path)}")

    # --- stopping -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything this cluster started (idempotent, bounded, even after errors)."""
        if self._stopped:
            return
        self._stopped = True
        if self._host_client is not None:
            try:
                self._host_client.close()
                self._close_idle_board_connections()
            except Exception:  # noqa: BLE001 - stopping must go on
                pass
        stop_groups([w.process for w in self._workers], self.stop_timeout, self.directory)
        if self._servers is not None:
            self._servers.stop()
        if self._board_proc is not None:
            stop_groups([self._board_proc], self.stop_timeout, self.directory)
            if self._board_proc.stdout is not None:
                try:
                    self._board_proc.stdout.close()
                except OSError:
                    pass
        if not self.keep_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _close_idle_board_connections(self) -> None:
        """The board goes next: no idle connection of this process lingers on it (one a
        pool still holds stays, and sees the board go)."""
        from ..board import transports

        where = self._host_client.target
        for target in transports.shared_targets():
            if (target.host, target.port) == (where.host, where.port):
                transports.close_idle(target, defaults.BOARD_EXIT_CLOSE_S)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        alive = sum(w.alive for w in self._workers)
        return (f"<LocalCluster {self.cluster} board={self.board} relay={self.relay} "
                f"workers={alive}/{len(self._workers)}{' stopped' if self._stopped else ''}>")


_BOARD_MAIN = (
    "import argparse, sys\n"
    "from p2ppool.board import server as board_server\n"
    "parser = argparse.ArgumentParser(prog='p2ppool board')\n"
    "board_server.add_arguments(parser)\n"
    "sys.exit(board_server.run(parser.parse_args()))\n"
)
