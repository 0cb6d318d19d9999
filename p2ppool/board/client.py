"""The board client: one ``pipe <topic>`` session over SSH, kept open across drops.

::

    me = BoardIdentity("w1")              # the sender id me.sender is "w1~<public key>"
    client = BoardClient("pipe.pico.sh", topic="alice/friends", identity="~/.ssh/id_ed25519",
                         sender=me)
    client.connect()                      # first connection: raises a clear error if it fails
    client.publish(Hello(sender=me.sender, ...))  # signed; one line in one write; thread-safe
    msg = client.get(timeout=5)           # or pass on_message= to get a callback instead
    client.close()

The session is ``pipe <topic> [flags]`` on an exec channel of the process's one SSH
connection to the board target: every client (and :func:`run_command`,
:func:`learn_username`) of a process with the same target shares one connection, each on
its own channel (:mod:`p2ppool.board.transports`; a second client's connect costs a
channel open, not a key exchange).  Closing a client closes its channel; after the last
one the connection lingers idle for ``defaults.BOARD_IDLE_LINGER_S`` (the next client within
that time reuses it), then closes.  The channel has no PTY (a PTY would turn
``\\n`` into ``\\r\\n``).  Incoming bytes arrive in arbitrary chunks; a
:class:`~p2ppool.board.protocol.LineDecoder` reassembles lines, drops (and counts) anything that is
not a valid message, including pico's status text and lines that fail authentication
(unsigned, forged, replayed: see :mod:`p2ppool.board.auth`; logged at most once a minute),
and delivers the rest.  Every line published is signed by the client's sender identity for
its topic as ``owner/name`` (:attr:`BoardClient.signed_topic`: a topic given without an
owner is taken to be under the SSH user's name, where the board puts it).  pico's
``ping@pico.sh`` channel requests are ignored (paramiko refuses unknown requests that want a
reply and ignores the others).

When the connection drops, one reader thread per client reconnects with exponential backoff
and jitter (``defaults.RECONNECT_*``) and re-opens the same command (clients that shared the
dead connection share the new one); ``state`` and the
``on_state`` callback tell the owner when it is connected.  The board keeps no history, so
lines sent while disconnected are lost: :meth:`BoardClient.publish` raises
:class:`~p2ppool.errors.BoardConnectionError` instead of pretending to send them.

Errors: :class:`~p2ppool.errors.BoardConnectionError` (unreachable; names host and port),
:class:`~p2ppool.errors.BoardAuthError` (key refused), :class:`~p2ppool.errors.HostKeyMismatch`,
:class:`~p2ppool.errors.AccessDenied` (the board wrote ``access denied``).  Authentication and
host-key errors are final.  ``access denied`` is final on the first session; once the topic has
worked, a refusal on reconnect is retried with backoff (the owner's channel and its access list
vanish while the owner itself reconnects).  The board's stderr arrives after the exec request
succeeded, so :meth:`BoardClient.connect` returns before a refusal is known: it shows up as
state ``failed``, in ``error``, and is raised by :meth:`~BoardClient.publish`,
:meth:`~BoardClient.get` and :meth:`~BoardClient.wait_for_state` callers that check it.

Size: one connection's life (connect, read, reassemble, publish, reconnect with backoff,
state changes) around one lock; split, its threads' hand-offs would cross modules.
"""

from __future__ import annotations

import enum
import logging
import queue
import random
import socket
import threading
import time
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import paramiko

from .. import defaults
from ..errors import AccessDenied, BoardAuthError, BoardConnectionError, BoardError, HostKeyMismatch
from . import transports
from .auth import BoardIdentity
from .protocol import LineDecoder, Message, encode
from .sshconfig import SSHConnection, SSHTarget, resolve_target
from .transports import Lease

__all__ = [
    "BoardClient",
    "BoardIdentity",
    "CommandResult",
    "State",
    "backoff_delay",
    "learn_username",
    "run_command",
]

log = logging.getLogger("p2ppool.board")

_READ_BYTES = 32 * 1024
_STATUS_WAIT_S = 2.0  # after EOF, how long to wait for the exit status / close to arrive
_TOPIC_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/*-")


class State(str, enum.Enum):
    """Where a :class:`BoardClient` is in its life."""

    NEW = "new"  #: created; connect() not called yet
    CONNECTING = "connecting"  #: the first connection is being made
    CONNECTED = "connected"  #: the pipe session is open: publish() works
    RECONNECTING = "reconnecting"  #: the connection dropped; retrying with backoff
    CLOSED = "closed"  #: close() was called
    FAILED = "failed"  #: a final error (see ``error``): access denied, key refused, ...


def backoff_delay(
    attempt: int,
    rand: float,
    first: float = defaults.RECONNECT_FIRST_S,
    factor: float = defaults.RECONNECT_FACTOR,
    cap: float = defaults.RECONNECT_MAX_S,
    jitter: float = defaults.RECONNECT_JITTER,
) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0 for the first retry).

    ``first * factor**attempt`` capped at ``cap``, plus up to ``jitter`` of it at random
    (``rand`` in [0, 1)), so that many peers dropped at once do not return in lockstep.
    """
    base = min(cap, first * factor ** min(attempt, 64))
    return base * (1.0 + jitter * rand)


def _check_topic(topic: str) -> str:
    if not topic or not set(topic) <= _TOPIC_CHARS or topic.startswith("-"):
        raise ValueError(
            f"board topic {topic!r} must be non-empty and use only letters, digits and . _ / * -"
        )
    return topic


def _stderr_error(text: str, command: str, where: str) -> BoardError | None:
    """A final error for what the board wrote on stderr, or None (a transient end)."""
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    if first.startswith("access denied"):
        return AccessDenied(f"the board {where} refused {command!r}: access denied")
    if first.startswith("invalid cmd args"):
        return BoardError(f"the board {where} rejected the command {command!r}: {first}")
    return None


class _Session:
    """One exec channel on a shared connection (a :class:`~.transports.Lease` on it)."""

    def __init__(self, lease: Lease, channel: paramiko.Channel) -> None:
        self.lease = lease
        self.channel = channel

    @property
    def connection(self) -> SSHConnection:
        """The shared connection the channel runs on."""
        return self.lease.connection

    def close(self) -> None:
        """Close the channel and release our share of the connection (after the last share
        it lingers, then closes: see :mod:`.transports`); never raises (the peer may be gone)."""
        try:
            self.channel.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the transport is already dead
        finally:
            self.lease.release()

    def ending(self) -> Tuple[int | None, str]:
        """After EOF: (exit status or None, stderr text).  Waits a bounded time for both."""
        self.channel.status_event.wait(_STATUS_WAIT_S)
        status = self.channel.exit_status if self.channel.exit_status_ready() else None
        err = b""
        while self.channel.recv_stderr_ready():
            err += self.channel.recv_stderr(4096)
        if status == -1:
            status = None
        return status, err.decode("utf-8", "replace")


def _open_session(target: SSHTarget, command: str, timeout: float) -> _Session:
    """Open an exec channel running ``command`` on the process's connection to ``target``
    (made now if there is none, shared otherwise: see :mod:`p2ppool.board.transports`)."""
    lease = transports.acquire(target, timeout)
    try:
        channel = lease.transport.open_session(timeout=timeout)
        channel.settimeout(timeout)
        channel.exec_command(command)  # no get_pty(): a PTY would rewrite "\n" as "\r\n"
        channel.settimeout(defaults.BOARD_SEND_TIMEOUT_S)
    except BoardError:
        lease.release()
        raise
    except (paramiko.SSHException, OSError, EOFError) as exc:
        lease.release()
        raise BoardConnectionError(
            f"the board {target.host}:{target.port} did not open a session for {command!r}: "
            f"{exc or type(exc).__name__}"
        ) from None
    except BaseException:
        lease.release()
        raise
    return _Session(lease, channel)


class BoardClient:
    """A ``pipe`` session on a board topic that survives connection drops.

    Args:
        host: board host (or an alias from ``~/.ssh/config``).
        port: board port; None: the SSH config's ``Port`` or 22.
        topic: the topic, e.g. ``"alice/friends"`` (letters, digits, ``. _ / * -``).
        flags: extra ``pipe`` flags, e.g. ``["-a", "alice,bob"]``.
        username: SSH login name; None: SSH config ``User`` or the local user name.
        identity: private key file, used alone; None: SSH config, ssh-agent, ``~/.ssh/id_*``.
        known_hosts: known_hosts file; None: SSH config or ``~/.ssh/known_hosts``.
        ssh_config: SSH config file; None: ``~/.ssh/config`` (a missing file is fine).
        on_message: called with each valid message, in the reader thread.  Without it,
            messages are queued for :meth:`get`.
        on_state: called with each new :class:`State`, in the thread that changed it.
        connect_timeout: bound in seconds on each connect step.
        reconnect: reconnect after a drop (default True).
        rng: random source for backoff jitter (tests pass a seeded ``random.Random``).
        command: ``pipe`` (read and write, default) or ``sub`` (read only).
        sender: the identity that signs what this client publishes (every message's
            ``sender`` must be ``sender.sender``); None: a fresh one named ``peer``.
    """

    def __init__(
        self,
        host: str,
        port: int | None = None,
        *,
        topic: str,
        flags: Sequence[str] = (),
        username: str | None = None,
        identity: str | None = None,
        known_hosts: str | None = None,
        ssh_config: str | None = None,
        on_message: Callable[[Message], None] | None = None,
        on_state: Callable[[State], None] | None = None,
        connect_timeout: float = defaults.SSH_CONNECT_TIMEOUT_S,
        reconnect: bool = True,
        rng: random.Random | None = None,
        command: str = "pipe",
        sender: BoardIdentity | None = None,
    ) -> None:
        for flag in flags:
            if not flag or any(c.isspace() or c in "'\"" for c in flag):
                raise ValueError(f"board flag {flag!r} must be one word without quotes")
        self.topic = _check_topic(topic)
        self.command = " ".join([command, self.topic, *flags])
        self.target = resolve_target(
            host,
            port,
            user=username,
            identity=identity,
            known_hosts=known_hosts,
            ssh_config=ssh_config,
        )
        self.where = f"{self.target.host}:{self.target.port}"
        self.connect_timeout = connect_timeout
        self.reconnect = reconnect
        self.reconnects = 0
        self.error: BaseException | None = None
        self._on_message = on_message
        self._on_state = on_state
        self._rng = rng or random.Random()
        self._inbox: queue.Queue[Message | BaseException] = queue.Queue()
        self.identity = sender if sender is not None else BoardIdentity("peer")
        #: the topic as signatures name it: ``owner/name`` (an owner may open its own topic
        #: as ``name``, which the board puts under its user name, as pico does)
        self.signed_topic = (self.topic if "/" in self.topic or not self.target.user
                             else f"{self.target.user}/{self.topic}")
        self._decoder = LineDecoder(self.signed_topic)
        self._state = State.NEW
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._session: _Session | None = None
        self._thread: threading.Thread | None = None

    # --- public API ---------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current :class:`State`."""
        return self._state

    @property
    def drops(self) -> Dict[str, int]:
        """Lines dropped so far, by reason (``text``, ``malformed``, ``oversized``, ...)."""
        return dict(self._decoder.drops)

    @property
    def sender(self) -> str:
        """The sender id this client signs as (put it in every message it publishes)."""
        return self.identity.sender

    @property
    def received(self) -> int:
        """Valid messages received so far."""
        return self._decoder.accepted

    def connect(self) -> BoardClient:
        """Open the first connection and start the reader thread.

        Returns:
            self, so that ``client = BoardClient(...).connect()`` works.

        Raises:
            BoardConnectionError: the board is unreachable (no retry on a first contact).
            BoardAuthError: the board refused our key.
            HostKeyMismatch: the board's host key differs from known_hosts.
        """
        with self._cond:
            if self._state is not State.NEW:
                raise RuntimeError(
                    f"connect() called on a board client that is {self._state.value}"
                )
        self._set_state(State.CONNECTING)
        try:
            session = _open_session(self.target, self.command, self.connect_timeout)
        except BaseException as exc:
            self.error = exc
            self._set_state(State.FAILED)
            raise
        self._session = session
        self._set_state(State.CONNECTED)
        self._thread = threading.Thread(
            target=self._reader, name=f"p2ppool-board-{self.topic}", daemon=True
        )
        self._thread.start()
        return self

    def publish(self, msg: Message) -> None:
        """Send one message: one whole line in one write.  Thread-safe.

        The line is signed and numbered under the send lock, so lines leave in the order
        of their sequence numbers (receivers drop a number that is not above the last).

        Raises:
            ProtocolError: the message does not fit in a board line.
            ValueError: ``msg.sender`` is not this client's :attr:`sender`.
            BoardConnectionError: not connected right now (the line is not sent), or the
                write failed (the connection is then dropped and re-established).
            AccessDenied, BoardAuthError, HostKeyMismatch: the client failed for good.
        """
        self._publish(msg, None)

    def publish_line(self, line: bytes) -> None:
        """Send raw bytes as one write (e.g. lines encoded elsewhere).  Thread-safe."""
        self._publish(None, line)

    def _publish(self, msg: Message | None, line: bytes | None) -> None:
        with self._send_lock:
            if msg is not None:
                line = encode(msg, self.identity, self.signed_topic)
            assert line is not None
            session = self._session
            if self._state is State.FAILED and self.error is not None:
                raise self.error
            if self._state is not State.CONNECTED or session is None:
                raise BoardConnectionError(
                    f"not connected to the board {self.where} ({self._state.value}); not sent"
                )
            try:
                session.channel.sendall(line)
                return
            except (OSError, paramiko.SSHException, EOFError) as exc:
                failure = exc
                if not session.channel.closed:
                    session.close()  # wakes the reader, which reconnects
        # The write failed.  If the board ended the session on purpose (access denied), the
        # reader is about to say so: give it a moment, so the caller gets the real reason.
        self.wait_for_state({State.FAILED, State.RECONNECTING, State.CLOSED}, _STATUS_WAIT_S + 1)
        if self.state is State.FAILED and self.error is not None:
            raise self.error
        raise BoardConnectionError(
            f"writing to the board {self.where} failed: {failure or type(failure).__name__}"
        )

    def get(self, timeout: float | None = None) -> Message:
        """The next queued message (when no ``on_message`` callback was given).

        Raises:
            queue.Empty: nothing arrived within ``timeout`` seconds.
            AccessDenied, BoardAuthError, HostKeyMismatch, BoardError: the client failed for
                good (raised again by every later call).
        """
        item = self._inbox.get(timeout=timeout)
        if isinstance(item, BaseException):
            self._inbox.put(item)
            raise item
        return item

    def wait_for_state(self, states: Iterable[State], timeout: float) -> bool:
        """Wait until the state is one of ``states``; False if ``timeout`` passed first."""
        wanted = set(states)
        with self._cond:
            return self._cond.wait_for(lambda: self._state in wanted, timeout)

    def close(self) -> None:
        """End the session and stop the reader thread (idempotent, bounded).

        Sends EOF first and waits (at most ``_STATUS_WAIT_S``) for the board to end the
        session, so that lines published just before are delivered before we leave.
        """
        with self._send_lock:  # no publish() is half-way through a write after this
            connected = self._state is State.CONNECTED
            self._stop.set()
        if self._state is not State.FAILED:
            self._set_state(State.CLOSED)
        session = self._session
        if session is not None:
            if connected:
                try:
                    session.channel.shutdown_write()
                    session.channel.status_event.wait(_STATUS_WAIT_S)
                except (OSError, EOFError, paramiko.SSHException):
                    pass
            session.close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.connect_timeout + _STATUS_WAIT_S + 1.0)

    def __enter__(self) -> BoardClient:
        if self._state is State.NEW:
            self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- reader thread --------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        with self._cond:
            if self._state is state or self._state in (State.CLOSED, State.FAILED):
                return
            self._state = state
            self._cond.notify_all()
        log.debug("board %s %s: %s", self.where, self.topic, state.value)
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:  # noqa: BLE001 - the owner's callback must not kill the client
                log.exception("board on_state callback failed")

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        log.error("%s", exc)
        self._set_state(State.FAILED)
        self._inbox.put(exc)  # wakes a get() that waits

    def _deliver(self, messages: List[Message]) -> None:
        for msg in messages:
            if self._on_message is None:
                self._inbox.put(msg)
                continue
            try:
                self._on_message(msg)
            except Exception:  # noqa: BLE001
                log.exception("board on_message callback failed")

    def _read_session(self, session: _Session) -> bool:
        """Read until EOF or close; feed the decoder.  Returns whether any bytes came."""
        channel = session.channel
        got_data = False
        while not self._stop.is_set():
            try:
                data = channel.recv(_READ_BYTES)
            except socket.timeout:
                continue  # idle; the blocking recv is bounded only to notice close()
            except (OSError, paramiko.SSHException, EOFError):
                break
            if not data:
                break
            got_data = True
            now = time.time()
            self._deliver(self._decoder.feed(data, now))
            report = self._decoder.auth_report(now)
            if report is not None:
                log.warning("board %s %s: %s", self.where, self.topic, report)
        return got_data

    def _reader(self) -> None:
        try:
            self._read_and_reconnect()
        except Exception as exc:  # noqa: BLE001 - never die silently with state CONNECTED
            log.exception("board reader thread failed")
            self._fail(BoardConnectionError(f"the board client for {self.where} failed: {exc!r}"))

    def _read_and_reconnect(self) -> None:
        first_session = True
        attempt = 0
        while not self._stop.is_set():
            session = self._session
            assert session is not None
            started = time.monotonic()
            got_data = self._read_session(session)
            self._decoder.reset()
            if self._stop.is_set():
                break
            status, err = session.ending()
            session.close()
            final = _stderr_error(err, self.command, self.where)
            # A refusal of the first session is final.  After the topic has worked once, a
            # refusal is taken as transient: the owner's channel (and its access list) goes
            # away while the owner reconnects, and comes back when the owner is back.
            if final is not None and (first_session or not self.reconnect):
                self._fail(final)
                return
            first_session = False
            log.warning(
                "board %s closed the session (exit status %s%s)",
                self.where,
                status,
                f", stderr {err.strip()!r}" if err.strip() else "",
            )
            if not self.reconnect:
                self._fail(BoardConnectionError(f"the board {self.where} closed the session"))
                return
            # A session that worked starts the backoff afresh; one refused at once does not.
            if got_data or time.monotonic() - started >= defaults.RECONNECT_MAX_S:
                attempt = 0
            self._set_state(State.RECONNECTING)
            attempt = self._reconnect(attempt)
            if attempt < 0:
                return

    def _reconnect(self, attempt: int) -> int:
        """Reconnect with backoff.  Returns the attempt count so far, or -1 to stop."""
        while not self._stop.wait(backoff_delay(attempt, self._rng.random())):
            attempt += 1
            try:
                session = _open_session(self.target, self.command, self.connect_timeout)
            except (BoardAuthError, HostKeyMismatch) as exc:
                self._fail(exc)
                return -1
            except BoardError as exc:
                log.info("board reconnect attempt %d failed: %s", attempt, exc)
                continue
            with self._send_lock:
                self._session = session
            if self._stop.is_set():
                session.close()
                return -1
            self.reconnects += 1
            self._set_state(State.CONNECTED)
            return attempt
        return -1


class CommandResult:
    """What a one-shot board command printed.

    Attributes:
        status: exit status, or None when the server closed without one.
        stdout: standard output text.
        stderr: standard error text.
    """

    def __init__(self, status: int | None, stdout: str, stderr: str) -> None:
        self.status = status
        self.stdout = stdout
        self.stderr = stderr


def run_command(
    host: str,
    port: int | None,
    command: str,
    *,
    username: str | None = None,
    identity: str | None = None,
    known_hosts: str | None = None,
    ssh_config: str | None = None,
    timeout: float = defaults.SSH_CONNECT_TIMEOUT_S,
    max_bytes: int = 1 << 20,
) -> CommandResult:
    """Run one command on the board (``ls``, ``help``, ``user``) and collect its output.

    Raises:
        BoardConnectionError, BoardAuthError, HostKeyMismatch: as for :class:`BoardClient`.
        BoardConnectionError: the command did not finish within ``timeout`` seconds.
    """
    target = resolve_target(
        host, port, user=username, identity=identity, known_hosts=known_hosts, ssh_config=ssh_config
    )
    session = _open_session(target, command, timeout)
    try:
        channel = session.channel
        channel.shutdown_write()
        channel.settimeout(timeout)
        out = b""
        try:
            while len(out) < max_bytes:
                data = channel.recv(_READ_BYTES)
                if not data:
                    break
                out += data
        except socket.timeout:
            raise BoardConnectionError(
                f"the board {target.host}:{target.port} did not finish {command!r} "
                f"within {timeout:g} s"
            ) from None
        status, err = session.ending()
        return CommandResult(status, out.decode("utf-8", "replace"), err)
    finally:
        session.close()


def learn_username(
    host: str,
    port: int | None,
    *,
    username: str | None = None,
    identity: str | None = None,
    known_hosts: str | None = None,
    ssh_config: str | None = None,
    timeout: float = defaults.SSH_CONNECT_TIMEOUT_S,
) -> str | None:
    """Ask the board who we are: ``user`` prints the account name on its first line (pico).

    Returns:
        The board username, or None if the board does not say (unknown command, no
        account, or an empty answer).
    """
    result = run_command(
        host,
        port,
        "user",
        username=username,
        identity=identity,
        known_hosts=known_hosts,
        ssh_config=ssh_config,
        timeout=timeout,
    )
    if result.status not in (0, None) or not result.stdout.strip():
        return None
    first = result.stdout.strip().splitlines()[0].strip()
    if not first or " " in first or len(first) > 64:
        return None
    return first
