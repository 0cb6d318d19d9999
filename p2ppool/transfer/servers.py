"""A real magic-wormhole mailbox server and transit relay on 127.0.0.1, as one subprocess.

Used by :class:`p2ppool.LocalCluster`, by ``p2ppool demo`` and by the tests, so that nothing
contacts the public wormhole servers::

    with WormholeServers() as servers:
        servers.relay_url   # "ws://127.0.0.1:P/v1"   (the mailbox / rendezvous server)
        servers.transit     # "tcp:127.0.0.1:Q"       (the transit relay hint)

The child is ``python -m p2ppool.transfer.servers --mailbox-port P --relay-port Q --state DIR``.
It runs both services of the real packages (magic-wormhole-mailbox-server and
magic-wormhole-transit-relay) in one Twisted reactor, bound to 127.0.0.1 only, with the
channel database in DIR, and the relay patched to set TCP_NODELAY (without it, dilated
connections through the relay stall for ~40 ms on small writes; research/wormhole.md §4c.1).
Port 0 means "any free port".  When both services listen it prints one readiness line, a JSON
object ``{"ready": true, "mailbox_port": P, "relay_port": Q, "pid": N}``, on stdout; the parent
waits for that line (no sleeping).  The child exits when its stdin reaches end of file, so it
never outlives a parent that was killed, and on SIGTERM/SIGINT.  Its logs go to
``DIR/servers.log``.

A parent that was killed cannot remove the temporary directories it made either; with
``--remove-if-orphaned PATH`` the child removes PATH when its stdin ends without a word
first.  The parent's :meth:`WormholeServers.stop` says one (a line on stdin) before closing
it: it removes what it owns itself, and may want to keep it.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import TracebackType
from typing import Any, List, Sequence, Type

from p2ppool import defaults
from p2ppool.errors import TransferError

__all__ = ["WormholeServers", "main"]

_READY_KEY = "ready"

#: What the parent writes to the child's stdin before closing it on purpose.
_DISMISS = b"stop\n"


class WormholeServers:
    """Run a mailbox server and a transit relay on 127.0.0.1 in one child process.

    Starting blocks until both services listen (or raises).  Use as a context manager, or call
    :meth:`stop` yourself; stopping is bounded and kills the child if it does not exit.

    Args:
        mailbox_port: TCP port for the mailbox server (0: a free port).
        relay_port: TCP port for the transit relay (0: a free port).
        state_dir: directory for the channel database and the log; default a fresh temporary
            directory that :meth:`stop` removes.
        remove_if_orphaned: a directory the child removes if this process goes away without
            calling :meth:`stop` (it was killed); default the state directory if this object
            made it.
        start_timeout: seconds to wait for the readiness line.
        python: the interpreter to run the child with (default: this one).

    Attributes:
        relay_url: the mailbox URL for ``wormhole.create``, ``ws://127.0.0.1:P/v1``.
        transit: the transit relay hint for dilation, ``tcp:127.0.0.1:Q``.
        mailbox_port: P.
        relay_port: Q.
        pid: the child's process id.

    Raises:
        TransferError: the servers did not start; the message includes the end of their log.
        TransferTimeout is not used here: a start that takes too long is a TransferError too.
    """

    def __init__(
        self,
        mailbox_port: int = 0,
        relay_port: int = 0,
        *,
        state_dir: str | None = None,
        remove_if_orphaned: str | None = None,
        start_timeout: float = defaults.WORMHOLE_SERVERS_START_TIMEOUT_S,
        python: str | None = None,
    ) -> None:
        self._own_state = state_dir is None
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="p2ppool-wormhole-")
        if remove_if_orphaned is None and self._own_state:
            remove_if_orphaned = self.state_dir
        self._remove_if_orphaned = remove_if_orphaned
        self._log_path = os.path.join(self.state_dir, "servers.log")
        self._proc: subprocess.Popen[bytes] | None = None
        self.mailbox_port = 0
        self.relay_port = 0
        self.pid = 0
        try:
            self._start(mailbox_port, relay_port, start_timeout, python or sys.executable)
        except BaseException:
            self.stop()
            raise

    @property
    def relay_url(self) -> str:
        """The mailbox server URL (``ws://127.0.0.1:P/v1``)."""
        return f"ws://127.0.0.1:{self.mailbox_port}/v1"

    @property
    def transit(self) -> str:
        """The transit relay hint (``tcp:127.0.0.1:Q``)."""
        return f"tcp:127.0.0.1:{self.relay_port}"

    def _start(self, mailbox_port: int, relay_port: int, timeout: float, python: str) -> None:
        cmd = [
            python, "-m", "p2ppool.transfer.servers",
            "--mailbox-port", str(mailbox_port),
            "--relay-port", str(relay_port),
            "--state", self.state_dir,
        ]
        if self._remove_if_orphaned is not None:
            cmd += ["--remove-if-orphaned", self._remove_if_orphaned]
        env = dict(os.environ)
        # The child must import this very p2ppool, wherever it comes from.
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # p2ppool/
        pkg_root = os.path.dirname(package)
        env["PYTHONPATH"] = os.pathsep.join(
            [pkg_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                close_fds=True,
            )
        self.pid = self._proc.pid
        line = self._read_ready_line(timeout)
        try:
            info = json.loads(line)
            if not info.get(_READY_KEY):
                raise ValueError("not ready")
            self.mailbox_port = int(info["mailbox_port"])
            self.relay_port = int(info["relay_port"])
        except (ValueError, KeyError, TypeError):
            raise TransferError(
                f"the wormhole servers printed an unexpected line {line!r}{self._log_tail()}"
            ) from None

    def _read_ready_line(self, timeout: float) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        out = self._proc.stdout
        deadline = time.monotonic() + timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransferError(
                        f"the wormhole servers did not become ready within {timeout:g} s"
                        f"{self._log_tail()}"
                    )
                if not sel.select(left):
                    continue
                chunk = os.read(out.fileno(), 4096)
                if not chunk:
                    code = self._proc.wait(timeout=5)
                    raise TransferError(
                        f"the wormhole servers exited with code {code} before becoming ready"
                        f"{self._log_tail()}"
                    )
                buf += chunk
        return buf.split(b"\n", 1)[0].decode("utf-8", "replace")

    def _log_tail(self, lines: int = 15) -> str:
        try:
            with open(self._log_path, "rb") as f:
                text = f.read()[-4000:].decode("utf-8", "replace")
        except OSError:
            return ""
        tail = "\n".join(text.strip().splitlines()[-lines:])
        return f"; end of {self._log_path}:\n{tail}" if tail else ""

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = defaults.WORMHOLE_SERVERS_STOP_TIMEOUT_S) -> None:
        """Stop the servers: SIGTERM, wait up to ``timeout``, then SIGKILL.  Idempotent.

        Also removes the temporary state directory if this object created it.
        """
        proc = self._proc
        if proc is not None:
            if proc.stdin is not None and not proc.stdin.closed:
                try:
                    proc.stdin.write(_DISMISS)  # not orphaned: remove nothing
                    proc.stdin.flush()
                except OSError:
                    pass  # it has exited already
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
            if proc.poll() is None:
                try:
                    proc.terminate()
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
                except ProcessLookupError:
                    pass
        if self._own_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> WormholeServers:
        return self

    def __exit__(
        self,
        exc_type: Type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<WormholeServers {self.relay_url} {self.transit} pid={self.pid} {state}>"


# --- the child process -------------------------------------------------------------------


def _patch_relay_nodelay() -> None:
    """Make the transit relay set TCP_NODELAY on every connection (idempotent)."""
    from wormhole_transit_relay import transit_server

    cls: Any = transit_server.TransitConnection
    if getattr(cls, "_p2ppool_nodelay", False):
        return
    original = cls.connectionMade

    def connectionMade(self: Any) -> None:
        try:
            self.transport.setTcpNoDelay(True)
        except Exception:  # not a TCP transport: nothing to tune
            pass
        original(self)

    cls.connectionMade = connectionMade
    cls._p2ppool_nodelay = True


def _listening_port(parent: Any) -> Any:
    """Return a Deferred for the IListeningPort of the endpoint service inside ``parent``."""
    from twisted.application.internet import StreamServerEndpointService

    for svc in parent:
        if isinstance(svc, StreamServerEndpointService):
            return svc._waitingForPort
    raise RuntimeError("no listening service found")


def _serve(mailbox_port: int, relay_port: int, state: str, interface: str = "127.0.0.1",
           remove_if_orphaned: str | None = None) -> int:
    """Run both servers until stdin closes or a signal arrives; return the exit code.

    ``remove_if_orphaned``: a directory to remove on the way out if the parent went away
    without a word (stdin ended, or it was gone before we were ready).
    """
    from twisted.internet import defer, stdio
    from twisted.internet.error import ReactorNotRunning
    from twisted.internet.protocol import Protocol
    from twisted.python import log
    from wormhole_mailbox_server import server_tap as mailbox_tap
    from wormhole_transit_relay import server_tap as relay_tap

    from p2ppool.transfer.reactor import get_reactor

    reactor = get_reactor()

    os.makedirs(state, exist_ok=True)
    log.startLogging(sys.stderr, setStdout=False)  # type: ignore[no-untyped-call]
    _patch_relay_nodelay()
    mo = mailbox_tap.Options()
    mo.parseOptions([
        f"--port=tcp:{mailbox_port}:interface={interface}",
        f"--channel-db={os.path.join(state, 'channels.sqlite')}",
    ])
    ro = relay_tap.Options()
    ro.parseOptions([f"--port=tcp:{relay_port}:interface={interface}"])
    mailbox = mailbox_tap.makeService(mo)
    relay = relay_tap.makeService(ro)
    mailbox.startService()
    relay.startService()
    status = {"code": 0}
    parent = {"dismissed": False, "orphaned": False, "stopping": False}

    def _stopping() -> None:
        parent["stopping"] = True

    reactor.addSystemEventTrigger("before", "shutdown", _stopping)

    def _stop() -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # already stopping (the parent went away while we were being stopped)

    class _ParentWatch(Protocol):
        """Stop when the parent closes our stdin (or dies): orphaned, unless it said a word
        first or we were stopping already (a signal)."""

        def dataReceived(self, data: bytes) -> None:
            parent["dismissed"] = True

        def connectionLost(self, reason: Any = None) -> None:
            if not (parent["dismissed"] or parent["stopping"]):
                parent["orphaned"] = True
            if reactor.running:
                _stop()

    def _ready(ports: List[Any]) -> None:
        # The endpoint service logs a listen failure itself and then fires with None.
        if any(port is None for port in ports):
            which = [name for name, port in zip(("mailbox", "relay"), ports) if port is None]
            sys.stderr.write(
                f"p2ppool.transfer.servers: the {' and '.join(which)} server could not listen "
                "(see the error above)\n"
            )
            status["code"] = 1
            reactor.stop()
            return
        # Watch the parent first: if anything below fails, its end of stdin still stops us.
        stdio.StandardIO(  # type: ignore[no-untyped-call,call-arg]
            _ParentWatch(), stdout=os.open(os.devnull, os.O_WRONLY)
        )
        line = json.dumps({
            _READY_KEY: True,
            "mailbox_port": ports[0].getHost().port,
            "relay_port": ports[1].getHost().port,
            "pid": os.getpid(),
        })
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except OSError as exc:
            # The parent closed its end before we were ready (it was interrupted or killed
            # while starting us): nobody will use these servers.  (Before, the exception
            # ended this callback before the parent watch existed: the servers ran forever.)
            sys.stderr.write(f"p2ppool.transfer.servers: the parent is gone ({exc}); "
                             "stopping\n")
            status["code"] = 1
            parent["orphaned"] = True
            _stop()
        # Nothing else goes to the parent's pipe: a later write (a library's print) would
        # block once the unread pipe fills, or end the process if the parent closed it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)

    def _failed(failure: Any) -> None:
        sys.stderr.write(f"p2ppool.transfer.servers: could not listen: {failure.value}\n")
        status["code"] = 1
        reactor.stop()

    def _watch_ports() -> None:
        d = defer.gatherResults(
            [_listening_port(mailbox), _listening_port(relay)], consumeErrors=True
        )
        d.addCallbacks(_ready, _failed)

    reactor.callWhenRunning(_watch_ports)  # so that reactor.stop() works in the callbacks
    reactor.run()  # installs SIGTERM/SIGINT handlers that stop the reactor
    if remove_if_orphaned is not None and parent["orphaned"]:
        shutil.rmtree(remove_if_orphaned, ignore_errors=True)
    return status["code"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m p2ppool.transfer.servers``."""
    parser = argparse.ArgumentParser(
        prog="python -m p2ppool.transfer.servers",
        description="Run a magic-wormhole mailbox server and transit relay on 127.0.0.1.",
    )
    parser.add_argument("--mailbox-port", type=int, default=0, help="0: any free port")
    parser.add_argument("--relay-port", type=int, default=0, help="0: any free port")
    parser.add_argument("--state", required=True, help="directory for the channel database")
    parser.add_argument("--interface", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; the network-namespace "
                        "tests use a test-only address)")
    parser.add_argument("--remove-if-orphaned", metavar="PATH",
                        help="remove the directory PATH (one the parent made) when stdin ends "
                        "without a word first: the parent was killed")
    args = parser.parse_args(argv)
    for name in ("mailbox_port", "relay_port"):
        port = getattr(args, name)
        if not 0 <= port <= 65535:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and 65535, not {port}")
    # A network server must survive a peer that vanishes mid-send: EPIPE, not death.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    return _serve(args.mailbox_port, args.relay_port, args.state, args.interface,
                  args.remove_if_orphaned)


if __name__ == "__main__":
    sys.exit(main())
