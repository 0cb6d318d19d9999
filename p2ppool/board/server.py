"""The self-hosted board: a pico.sh-``pipe``-compatible SSH pub/sub server (``p2ppool board``).

This is the I/O shell (paramiko, sockets, threads) around the pure rules: commands are parsed
in :mod:`p2ppool.board.commands`, names, access lists, buffers and departures live in
:mod:`p2ppool.board.state` (read its docstring for the behaviour), and the one object that
owns that state for all threads is the hub, :class:`p2ppool.board.hub.BoardHub`.  Users and
the host key are :mod:`p2ppool.board.keys`; one command's thread is
:mod:`p2ppool.board.handlers`.  Imports go one way: server -> handlers -> hub -> state.  Here:

* Authentication is by public key only.  ``--users FILE`` maps keys to usernames, one
  ``<username> <key type> <base64> [comment]`` per line, like ``authorized_keys`` (several
  lines per user allowed; ``#`` comments and blank lines ignored; the file is re-read when it
  changes).  Unknown keys are refused at authentication.  The SSH login name is ignored.
* The host key (``--host-key FILE``) is created (ed25519) on first start and kept.
* PTYs are refused (pico translates ``\\n`` to ``\\r\\n`` under a PTY, which corrupts data);
  ``keepalive@openssh.com`` is answered; every session gets a ``ping@pico.sh`` channel
  request every 5 s, which detects dead peers.
* Errors go to stderr as ``<message>\\n\\r`` with exit status 1; a normal end always sends
  queued data first, then exit status 0, EOF and close (pico at HEAD may drop both).
* Limits against abuse (pico has none): sessions per key (``max_sessions_per_key``, refused
  with a message), messages per key (``messages_per_s`` sustained with bursts of
  ``message_burst``, a token bucket shared by all of the key's sessions; a message is one
  read of the writer's stream, at most 32 KiB, so a 12 MB file costs about 400; a session
  that exceeds it gets ``message rate limit exceeded ...`` on stderr and is closed with exit
  status 1), exec command length
  (``max_command_bytes``), TCP connections (``max_connections``), and the per-receiver
  buffer of board_state.  Connections use TCP_NODELAY: board lines are small and latency
  matters.

Threads::

    listener ──accept──> one thread per connection (paramiko Transport + its own thread)
                         exec request ──> one session thread per command (a connection
                         carries any number of sessions at once: a client process shares
                         one connection among all its sessions, see board/transports.py)
                             pub : reads stdin (32 KiB reads) -> state.publish
                             sub : drains its buffer -> channel.send (coalesced)
                             pipe: the session thread drains, plus one reader thread

All board state lives in one :class:`~p2ppool.board.state.BoardState`, owned by the
:class:`~p2ppool.board.hub.BoardHub` behind one lock (with the live sessions by id, the
sessions per key, the per-key message buckets and the stopping flag); sessions call the hub's
public methods and never take that lock themselves.  A chunk is appended to every receiver's
buffer under that lock (cheap; this is the total order).  Then, outside the lock, the
writer's thread itself sends it to every *idle* receiver whose SSH window has room (the fast
path, in ``BoardHub.publish``: no thread switch per receiver, which halves the server's CPU
per delivery).  A receiver that is busy or whose window is short is left to its own thread,
which sends whatever has piled up in one write and may wait for the client; so a slow
receiver costs no one else anything until its buffer is full (see the slow-reader policy in
board_state).  Each receiver's sends are serialised by its ``send_lock``.  paramiko's
threads take no lock of ours (a closed channel only sets its session's ``wake``).  The
server's own lock guards only its connections and threads lists.

Size: the SSH server (paramiko's interface, authentication, connections, the command
line); the shared state and the command threads are :mod:`.hub` and :mod:`.handlers`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple, Union

import paramiko

from .. import defaults
from ..errors import ConfigError
from .handlers import ExecSession, SessionSettings
from .hub import TICK_S, BoardHub
from .keys import UserKey, fingerprint_sha256, load_or_create_host_key, parse_users
from .state import CHUNK_BYTES, BufferPolicy

__all__ = ["BoardServer", "add_arguments", "run"]

log = logging.getLogger("p2ppool.board")

_MSG_CHANNEL_SUCCESS = 99
_MSG_CHANNEL_FAILURE = 100


class _BoardTransport(paramiko.Transport):  # type: ignore[misc]
    """A server Transport that tells us when a channel request's reply has gone out.

    A session must not write (or close) before the client has its ``exec`` reply, or OpenSSH
    sees a reply for a channel it already closed.  paramiko sends that reply right after our
    callback returns, so the session thread waits for this hook.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.reply_hooks: Dict[int, Callable[[], None]] = {}
        #: local channel id -> called when that channel closes (wakes its session at once).
        self.close_hooks: Dict[int, Callable[[], None]] = {}

    def _unlink_channel(self, chanid: int) -> None:
        super()._unlink_channel(chanid)
        hook = self.close_hooks.pop(chanid, None)
        if hook is not None:
            hook()

    def _send_user_message(self, data: Any) -> None:
        super()._send_user_message(data)
        if not self.reply_hooks:
            return
        raw = data.asbytes() if hasattr(data, "asbytes") else bytes(data)
        if raw and raw[0] in (_MSG_CHANNEL_SUCCESS, _MSG_CHANNEL_FAILURE) and len(raw) >= 5:
            hook = self.reply_hooks.pop(int.from_bytes(raw[1:5], "big"), None)
            if hook is not None:
                hook()


@dataclass(eq=False)
class Connection:
    """One TCP connection: its peer address, its transport and (once authenticated) its key."""

    peer: str
    transport: _BoardTransport | None = None
    user: UserKey | None = None


class _Interface(paramiko.ServerInterface):  # type: ignore[misc]
    """paramiko callbacks of one connection."""

    def __init__(self, server: BoardServer, connection: Connection) -> None:
        self.server = server
        self.connection = connection

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        found = self.server._lookup_key(key.asbytes())
        if found is None:
            fp = fingerprint_sha256(key.asbytes())
            log.info("%s: refused unknown key %s", self.connection.peer, fp)
            return int(paramiko.AUTH_FAILED)
        self.connection.user = found
        return int(paramiko.AUTH_SUCCESSFUL)

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return int(paramiko.OPEN_SUCCEEDED)
        return int(paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED)

    def check_channel_pty_request(self, *args: Any) -> bool:
        return False  # a PTY would translate data; pico clients must not ask for one

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.server._start_session(self.connection, channel, command)
        return True

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        self.server._start_session(self.connection, channel, b"")
        return True

    def check_global_request(self, kind: str, msg: paramiko.Message) -> bool:
        return kind == "keepalive@openssh.com"

class BoardServer:
    """A pico-pipe-compatible SSH board on one address.

    Args:
        listen: ``(host, port)``; port 0 picks a free port (see :attr:`port`).
        host_key_path: the host key file, created (ed25519) when absent.
        users_path: a users file (``<username> <key type> <base64> [comment]`` per line),
            re-read when it changes.
        users: instead of ``users_path``, a mapping ``username -> key line(s)``.
        advertise_host: the host name shown in status texts (default: the listen host).
        policy: per-receiver buffer limit and slow-reader grace period.
        max_sessions_per_key: concurrent sessions one key may hold.
        max_command_bytes: longest accepted exec command.
        max_connections: concurrent TCP connections (authenticated or not).
        ping_interval_s: period of ``ping@pico.sh`` requests (None: none).
        flush_timeout_s: how long a final error message may wait for a full client window.
        auth_timeout_s: connections not authenticated this long after connecting are closed.
        messages_per_s: messages (stream reads of up to 32 KiB) one key may publish per
            second, sustained (None: no limit).
        message_burst: messages one key may publish at once above that rate.

    Example::

        with BoardServer(host_key_path="host_key", users_path="users") as board:
            print(board.port)
    """

    def __init__(
        self,
        listen: Tuple[str, int] = ("127.0.0.1", 0),
        host_key_path: str | None = None,
        users_path: str | None = None,
        users: Mapping[str, Union[str, Sequence[str]]] | None = None,
        *,
        advertise_host: str | None = None,
        policy: BufferPolicy | None = None,
        max_sessions_per_key: int = defaults.BOARD_MAX_SESSIONS_PER_KEY,
        max_command_bytes: int = defaults.BOARD_MAX_COMMAND_BYTES,
        max_connections: int = defaults.BOARD_MAX_CONNECTIONS,
        ping_interval_s: float | None = defaults.BOARD_PING_INTERVAL_S,
        flush_timeout_s: float = defaults.BOARD_FLUSH_TIMEOUT_S,
        auth_timeout_s: float = defaults.BOARD_AUTH_TIMEOUT_S,
        messages_per_s: float | None = defaults.BOARD_MESSAGES_PER_S,
        message_burst: int = defaults.BOARD_MESSAGE_BURST,
    ) -> None:
        if host_key_path is None:
            raise ConfigError("BoardServer needs host_key_path (created when absent)")
        if (users_path is None) == (users is None):
            raise ConfigError("BoardServer needs exactly one of users_path or users")
        self.listen = listen
        self.host_key_path = host_key_path
        self.users_path = users_path
        self.advertise_host = advertise_host
        self.max_sessions_per_key = max_sessions_per_key
        self.max_command_bytes = max_command_bytes
        self.max_connections = max_connections
        self.ping_interval_s = ping_interval_s
        self.flush_timeout_s = flush_timeout_s
        self.auth_timeout_s = auth_timeout_s
        if messages_per_s is not None and (messages_per_s <= 0 or message_burst < 1):
            raise ConfigError("messages_per_s must be positive and message_burst at least 1")
        self.messages_per_s = messages_per_s
        self.message_burst = message_burst
        self._host_key = load_or_create_host_key(host_key_path)
        self._users_mtime: float | None = None
        if users is not None:
            self._keys = parse_users(users)
        else:
            assert users_path is not None
            self._keys = self._read_users_file(users_path)
        self._hub = BoardHub(
            {k.username for k in self._keys.values()},
            policy or BufferPolicy(
                max_buffer_bytes=defaults.BOARD_MAX_BUFFER_BYTES,
                slow_reader_grace_s=defaults.BOARD_SLOW_READER_GRACE_S,
            ),
            max_sessions_per_key=max_sessions_per_key,
            messages_per_s=messages_per_s,
            message_burst=message_burst,
        )
        # Guards the connections and threads lists only (the board state is the hub's).
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._threads: List[threading.Thread] = []
        self._connections: List[Connection] = []
        #: TCP connections accepted since start (each is one SSH connection, which may carry
        #: many sessions: a client process shares one per target)
        self.accepted_connections = 0
        self.port = 0
        self.host = listen[0]

    # -- users -----------------------------------------------------------------------------

    def _read_users_file(self, path: str) -> Dict[bytes, UserKey]:
        try:
            mtime = os.stat(path).st_mtime
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise ConfigError(f"cannot read users file {path}: {exc.strerror}") from exc
        keys = parse_users(text, where=path)
        self._users_mtime = mtime
        return keys

    def _lookup_key(self, blob: bytes) -> UserKey | None:
        if self.users_path is not None:
            try:
                changed = os.stat(self.users_path).st_mtime != self._users_mtime
            except OSError:
                changed = False
            if changed:
                try:
                    keys = self._read_users_file(self.users_path)
                except ConfigError as exc:
                    log.error("users file not reloaded: %s", exc)
                else:
                    self._keys = keys
                    self._hub.set_users(k.username for k in keys.values())
                    log.info("reloaded users file %s (%d keys)", self.users_path, len(keys))
        return self._keys.get(blob)

    # -- properties ------------------------------------------------------------------------

    @property
    def host_key(self) -> paramiko.PKey:
        """The server's host key."""
        return self._host_key

    @property
    def host_key_fingerprint(self) -> str:
        """``SHA256:...`` of the host key (what ``ssh`` shows on first contact)."""
        return fingerprint_sha256(self._host_key.asbytes())

    def known_hosts_line(self) -> str:
        """A ``known_hosts`` line for this server's address and host key."""
        host = self.advertise_host or self.host
        name = host if self.port == 22 else f"[{host}]:{self.port}"
        return f"{name} {self._host_key.get_name()} {self._host_key.get_base64()}"

    @property
    def ssh_target(self) -> str:
        """``[-p PORT ]HOST`` as the status texts print it."""
        host = self.advertise_host or self.host
        return host if self.port == 22 else f"-p {self.port} {host}"

    def channel_members(self, name: str) -> Dict[str, List[str]]:
        """Snapshot of channel ``name``: role -> usernames of its members (empty if none).

        Roles are ``pub``, ``waiting-pub``, ``sub`` and ``pipe``.  Meant for tests and tools.
        """
        return self._hub.channel_members(name)

    @property
    def open_connections(self) -> int:
        """SSH connections open right now (each may carry several sessions)."""
        with self._lock:
            return len(self._connections)

    def wait_for(self, predicate: Callable[[BoardServer], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` is true (re-checked whenever membership changes).

        Returns:
            whether it became true within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._hub.wait_for_change(min(remaining, TICK_S))
        return True

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> BoardServer:
        """Bind, listen and serve in background threads.  Returns self."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.listen[0] else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(self.listen)
        sock.listen(128)
        sock.settimeout(TICK_S)
        self._sock = sock
        self.host, self.port = sock.getsockname()[:2]
        thread = threading.Thread(target=self._accept_loop, name="board-listener", daemon=True)
        thread.start()
        self._threads.append(thread)
        log.info(
            "board listening on %s:%d, host key %s", self.host, self.port, self.host_key_fingerprint
        )
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: close every session and connection, within about ``timeout`` s."""
        if not self._hub.stop():  # wakes every waiter and every session
            return
        with self._lock:
            connections = list(self._connections)
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes accept() at once on Linux
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()) / 2)
        for connection in connections:
            if connection.transport is not None:
                connection.transport.close()
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._sock is not None:
            self._sock.close()
        log.info("board stopped")

    def __enter__(self) -> BoardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._hub.stopping:
            try:
                sock, addr = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            with self._lock:
                too_many = len(self._connections) >= self.max_connections
            if too_many:
                log.warning("refused %s:%d: too many connections", addr[0], addr[1])
                sock.close()
                continue
            connection = Connection(peer=f"{addr[0]}:{addr[1]}")
            with self._lock:
                self._connections.append(connection)
                self.accepted_connections += 1
            self._spawn(
                functools.partial(self._serve, sock, connection), f"board-conn-{connection.peer}"
            )

    def _serve(self, sock: socket.socket, connection: Connection) -> None:
        sock.settimeout(None)
        # Board lines are small and latency matters: no Nagle delay (40 ms with delayed ACKs).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = _BoardTransport(sock)
        connection.transport = transport
        transport.add_server_key(self._host_key)
        auth_deadline = time.monotonic() + self.auth_timeout_s
        try:
            transport.start_server(server=_Interface(self, connection))
            channels: List[paramiko.Channel] = []
            while transport.is_active() and not self._hub.stopping:
                if not transport.is_authenticated() and time.monotonic() > auth_deadline:
                    log.info("%s: not authenticated in time; closing", connection.peer)
                    break
                # Keep accepted channels referenced: paramiko closes a collected Channel.
                channel = transport.accept(TICK_S)
                channels = [c for c in channels if not c.closed]
                if channel is not None:
                    channels.append(channel)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            log.info("%s: connection failed: %s", connection.peer, exc or type(exc).__name__)
        finally:
            transport.close()
            with self._lock:
                if connection in self._connections:
                    self._connections.remove(connection)
            who = connection.user.username if connection.user else "(not authenticated)"
            log.info("%s: connection closed (%s)", connection.peer, who)

    # -- sessions --------------------------------------------------------------------------

    def _start_session(
        self, connection: Connection, channel: paramiko.Channel, raw: bytes
    ) -> None:
        command = raw.decode("utf-8", errors="replace")
        settings = SessionSettings(
            ssh_target=self.ssh_target,
            ping_interval_s=self.ping_interval_s,
            flush_timeout_s=self.flush_timeout_s,
            max_command_bytes=self.max_command_bytes,
        )
        hub = self._hub
        session = hub.register(
            lambda sid: ExecSession(
                hub,
                settings,
                peer=connection.peer,
                user=connection.user,
                channel=channel,
                command=command,
                sid=sid,
            )
        )
        transport = connection.transport
        if transport is not None:
            transport.reply_hooks[channel.remote_chanid] = session.replied.set
            transport.close_hooks[channel.get_id()] = functools.partial(
                self._on_channel_closed, session
            )
        self._spawn(session.run, f"board-session-{session.sid}")

    def _on_channel_closed(self, session: ExecSession) -> None:
        # Runs in paramiko's thread holding the channel's lock: take no lock of ours here.
        # (A pub waiting for a receiver or for room notices within one tick.)
        session.wake.set()


# --- command line ------------------------------------------------------------------------


def _parse_listen(text: str) -> Tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``p2ppool board`` options to ``parser``."""
    parser.add_argument(
        "--listen",
        type=_parse_listen,
        default=("127.0.0.1", 2222),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:2222)",
    )
    parser.add_argument(
        "--host-key",
        required=True,
        metavar="FILE",
        help="SSH host key file; an ed25519 key is created there if it does not exist",
    )
    parser.add_argument(
        "--users",
        required=True,
        metavar="FILE",
        help="users file: '<username> <key type> <base64 key> [comment]' per line",
    )
    parser.add_argument(
        "--advertise-host",
        metavar="NAME",
        help="host name shown in status texts (default: the listen host)",
    )
    parser.add_argument(
        "--max-buffer",
        type=int,
        default=defaults.BOARD_MAX_BUFFER_BYTES,
        metavar="BYTES",
        help="bytes queued per reader before writers wait for it (default %(default)s)",
    )
    parser.add_argument(
        "--slow-reader-grace",
        type=float,
        default=defaults.BOARD_SLOW_READER_GRACE_S,
        metavar="SECONDS",
        help="a reader whose buffer stays full this long is disconnected (default %(default)s)",
    )
    parser.add_argument(
        "--max-sessions-per-key",
        type=int,
        default=defaults.BOARD_MAX_SESSIONS_PER_KEY,
        metavar="N",
        help="concurrent sessions per SSH key (default %(default)s)",
    )
    parser.add_argument(
        "--messages-per-second",
        type=float,
        default=defaults.BOARD_MESSAGES_PER_S,
        metavar="N",
        help="messages (writes of up to 32 KiB) one key may publish per second, sustained "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--message-burst",
        type=int,
        default=defaults.BOARD_MESSAGE_BURST,
        metavar="N",
        help="messages one key may publish at once above that rate (default %(default)s)",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="logging level (default %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``p2ppool board`` until SIGINT/SIGTERM.  Returns the exit status."""
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(name)s %(message)s",
    )
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    try:
        if args.max_buffer < CHUNK_BYTES:
            raise ConfigError(f"--max-buffer must be at least {CHUNK_BYTES} bytes")
        if args.slow_reader_grace <= 0 or args.max_sessions_per_key < 1:
            raise ConfigError("--slow-reader-grace and --max-sessions-per-key must be positive")
        if args.messages_per_second <= 0 or args.message_burst < 1:
            raise ConfigError("--messages-per-second and --message-burst must be positive")
        server = BoardServer(
            listen=args.listen,
            host_key_path=args.host_key,
            users_path=args.users,
            advertise_host=args.advertise_host,
            policy=BufferPolicy(args.max_buffer, args.slow_reader_grace),
            max_sessions_per_key=args.max_sessions_per_key,
            messages_per_s=args.messages_per_second,
            message_burst=args.message_burst,
        )
        server.start()
    except (ConfigError, OSError) as exc:
        print(f"p2ppool board: {exc}", file=sys.stderr, flush=True)
        return 2
    print(
        f"board listening on {server.host}:{server.port}\n"
        f"host key {server.host_key_fingerprint}\n"
        f"known_hosts line: {server.known_hosts_line()}",
        flush=True,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    while not stop.wait(1.0):
        pass
    server.stop()
    return 0
