"""One board session: the thread that runs one exec command (help, ls, pub, sub, pipe).

Started by :class:`p2ppool.board.server.BoardServer`, which owns the connections and the
threads.  A session reads and writes its channel; for the shared state (channels, buffers,
limits) it calls the public methods of :class:`p2ppool.board.hub.BoardHub`, and what it
needs to know of the server comes in a :class:`SessionSettings`.  It satisfies
:class:`p2ppool.board.hub.HubSession`, which is how the hub's fast path sends to it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Tuple

import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST

from ..errors import AccessDenied
from .commands import (
    INVALID_ARGS,
    TIMEOUT_REACHED,
    Command,
    UsageFailure,
    format_duration,
    help_text,
    parse_command,
    split_command,
    user_text,
)
from .hub import TICK_S, BoardHub, SessionGone
from .keys import UserKey
from .state import ACCESS_DENIED, CHUNK_BYTES

__all__ = ["ExecSession", "SessionGone", "SessionSettings"]

log = logging.getLogger("p2ppool.board")


@dataclass(frozen=True)
class SessionSettings:
    """What a session needs to know of its server.

    Attributes:
        ssh_target: ``[-p PORT ]HOST`` as the status texts print it.
        ping_interval_s: period of ``ping@pico.sh`` requests (None: none).
        flush_timeout_s: how long a final error message may wait for a full client window.
        max_command_bytes: longest accepted exec command.
    """

    ssh_target: str
    ping_interval_s: float | None
    flush_timeout_s: float
    max_command_bytes: int


class RateLimited(Exception):
    """The session's key went over the message-rate limit (the message says so)."""


class ExecSession:
    """One exec command on one channel, run in its own thread.

    Args:
        hub: the board's shared state.
        settings: what the session needs to know of its server.
        peer: the client's ``ip:port``.
        user: the authenticated key (None shows as ``?``).
        channel: the SSH channel of the command.
        command: the exec command line.
        sid: the session number the hub gave it.
    """

    def __init__(
        self,
        hub: BoardHub,
        settings: SessionSettings,
        *,
        peer: str,
        user: UserKey | None,
        channel: paramiko.Channel,
        command: str,
        sid: int,
    ) -> None:
        self.hub = hub
        self.settings = settings
        self.peer = peer
        self.chan = channel
        self.command = command
        self.sid = sid
        self.user = user or UserKey("?", "?")
        self.wake = threading.Event()
        self.replied = threading.Event()
        # Whoever sends this session's data holds send_lock: the session's own thread, or a
        # writer's thread on the fast path (see BoardHub._fan_out).  ``pending`` is data
        # taken from the buffer but not yet sent (the fast path found the window short).
        self.send_lock = threading.Lock()
        self.pending = b""
        self.fast_path = False
        self.input_done = False
        self.refusal: str | None = None  # set by the pipe reader: why the session must end
        self.last_ping = time.monotonic()
        self.exit_status: int | None = None
        self.channel_name = ""

    # -- low-level output ---------------------------------------------------------------

    def gone(self) -> bool:
        """Whether the client closed the channel (or the server is stopping)."""
        return self.chan.closed or self.hub.stopping

    def _send(self, data: bytes, stderr: bool = False, deadline: float | None = None) -> None:
        """Send all of ``data``; raise SessionGone if the client left (or the deadline)."""
        offset = 0
        send = self.chan.send_stderr if stderr else self.chan.send
        while offset < len(data):
            try:
                sent = send(data[offset : offset + CHUNK_BYTES])
            except socket.timeout:
                if self.gone() or self.hub.is_evicted(self.sid) and not stderr:
                    raise SessionGone() from None
                if deadline is not None and time.monotonic() > deadline:
                    raise SessionGone() from None
                self._maybe_ping()  # a dead peer with a full window shows up as a failed write
                continue
            except (OSError, EOFError, paramiko.SSHException):
                raise SessionGone() from None
            if sent <= 0:
                raise SessionGone()
            offset += sent

    def _write(self, text: str) -> None:
        self._send(text.encode("utf-8"))

    def _finish(self, status: int) -> None:
        self.exit_status = status
        try:
            self.chan.send_exit_status(status)
            self.chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass
        self._close()

    def _close(self) -> None:
        try:
            self.chan.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the connection is already gone

    def _fatal(self, message: str, quiet: bool = False) -> None:
        if not quiet:
            deadline = time.monotonic() + self.settings.flush_timeout_s
            try:
                self._send((message + "\n\r").encode("utf-8"), stderr=True, deadline=deadline)
            except SessionGone:
                pass
        log.info("%s: %s", self._who(), message or "exit 1")
        self._finish(1)

    def _who(self) -> str:
        return f"{self.user.username}@{self.peer}#{self.sid}"

    def _maybe_ping(self) -> None:
        interval = self.settings.ping_interval_s
        if interval is None:
            return
        now = time.monotonic()
        if now - self.last_ping < interval:
            return
        self.last_ping = now
        transport = self.chan.get_transport()
        if transport is None or self.chan.closed:
            return
        msg = paramiko.Message()
        msg.add_byte(cMSG_CHANNEL_REQUEST)
        msg.add_int(self.chan.remote_chanid)
        msg.add_string("ping@pico.sh")
        msg.add_boolean(False)
        try:
            transport._send_user_message(msg)
        except (OSError, EOFError, paramiko.SSHException):
            pass

    # -- main ---------------------------------------------------------------------------

    def run(self) -> None:
        self.replied.wait(2.0)
        self.chan.settimeout(TICK_S)
        try:
            self._dispatch()
        except SessionGone:
            if self.exit_status is None:
                self._close()
        except Exception:  # noqa: BLE001 - a bug must not kill the server
            log.exception("%s: session failed", self._who())
            if self.exit_status is None:
                self._fatal("internal server error")
        finally:
            self.hub.end_session(self)
            where = f" on {self.channel_name}" if self.channel_name else ""
            log.info("%s: ended%s (exit %s)", self._who(), where, self.exit_status)

    def _dispatch(self) -> None:
        limit = self.settings.max_command_bytes
        if len(self.command.encode("utf-8")) > limit:
            self._fatal(f"command too long (more than {limit} bytes)")
            return
        parsed = parse_command(split_command(self.command))
        log.info("%s: %s", self._who(), self.command or "(shell)")
        if isinstance(parsed, UsageFailure):
            self._write(parsed.output)
            self._fatal(INVALID_ARGS)
            return
        if parsed.name in ("", "help"):
            self._write(help_text(self.settings.ssh_target))
            self._finish(0)
        elif parsed.name == "ls":
            self._write(self.hub.listing(self.user.username))
            self._finish(0)
        elif parsed.name == "user":
            self._write(user_text(self.user.username, self.user.fingerprint))
            self._finish(0)
        elif parsed.name in ("pub", "sub", "pipe"):
            self._messaging(parsed)
        else:
            self._finish(0)  # pico: unknown commands print nothing and succeed

    def _messaging(self, cmd: Command) -> None:
        refusal = self.hub.admit(self)
        if refusal is not None:
            self._fatal(refusal)
            return
        topic = cmd.topic
        generated = False
        if not topic and cmd.name in ("pub", "pipe"):
            topic = str(uuid.uuid4())
            generated = True
        public = bool(cmd.flag("p"))
        client_id = f"{uuid.uuid4()} ({self.user.username}@{self.peer})"
        try:
            self.channel_name = self.hub.join(
                self,
                client_id=client_id,
                role=cmd.name,
                topic=topic,
                public=public,
                access=cmd.access,
                keep_alive=bool(cmd.flags.get("k", False)),
                replay=bool(cmd.flags.get("r", False)),
                dispatcher=str(cmd.flags.get("d", "multicast")),
            )
        except AccessDenied:
            self._fatal(ACCESS_DENIED)
            return
        ssh_target = self.settings.ssh_target
        clean = bool(cmd.flag("c"))
        flag_msg = "-p " if public else ""
        shown = f"{self.user.username}/{topic}" if cmd.access else topic
        if cmd.name == "pub":
            if not clean:
                self._write(
                    f"subscribe to this channel:\n  ssh {ssh_target} sub {flag_msg}{shown}\n"
                )
            self._pub(cmd, clean)
        elif cmd.name == "sub":
            self._drain_loop()
        else:
            if generated and not clean:
                self._write(
                    f"subscribe to this topic:\n  ssh {ssh_target} sub {flag_msg}{shown}\n"
                )
            reader = threading.Thread(
                target=self._pipe_reader, name=f"board-pipe-{self.sid}", daemon=True
            )
            reader.start()
            self._drain_loop()

    # -- pub ------------------------------------------------------------------------------

    def _pub(self, cmd: Command, clean: bool) -> None:
        block = bool(cmd.flag("b"))
        timeout_ns = int(cmd.flag("t"))
        if block and self.hub.wait_if_alone(self.sid):
            if not clean:
                self._write(f"no subs found ... waiting {format_duration(timeout_ns)}\n")
            if not self.hub.wait_for_receiver(self, time.monotonic() + timeout_ns / 1e9):
                self._fatal(TIMEOUT_REACHED, quiet=clean)
                return
            self._maybe_ping()
        if not clean:
            self._write("sending msg ...\n")
        if bool(cmd.flag("e")):
            self._publish(b"\x00", block)
        else:
            while True:
                data = self._read_stdin()
                if not data:
                    break
                try:
                    self._publish(data, block)
                except RateLimited as exc:
                    self._fatal(str(exc))
                    return
        if not clean:
            self._write("msg sent!\n")
        self._finish(0)

    def _read_stdin(self) -> bytes:
        while True:
            try:
                return bytes(self.chan.recv(CHUNK_BYTES))
            except socket.timeout:
                if self.gone():
                    raise SessionGone() from None
                self._maybe_ping()

    def _publish(self, data: bytes, block: bool) -> None:
        """Queue one chunk for the channel; wait while receivers are full (or absent and
        ``block``).  Returns when queued (and sent where the fast path could), or dropped (no
        receiver and not blocking)."""
        refusal = self.hub.take_message(self.user)
        if refusal is not None:
            raise RateLimited(refusal)
        self.hub.publish(self, data, block)

    def send_nowait(self, data: bytes) -> int:
        """Send what the client's window takes now, without waiting; bytes sent."""
        offset = 0
        chan = self.chan
        while offset < len(data):
            window = chan.out_window_size
            if window <= 0 or chan.closed:
                break
            try:
                sent = chan.send(data[offset : offset + min(window, CHUNK_BYTES)])
            except (socket.timeout, OSError, EOFError, paramiko.SSHException):
                break
            if sent <= 0:
                break
            offset += sent
        return offset

    # -- sub / pipe -------------------------------------------------------------------------

    def _pipe_reader(self) -> None:
        try:
            while True:
                try:
                    data = bytes(self.chan.recv(CHUNK_BYTES))
                except socket.timeout:
                    if self.gone():
                        break
                    continue
                if not data:
                    break
                self._publish(data, block=False)
        except SessionGone:
            pass
        except RateLimited as exc:
            self.refusal = str(exc)  # the session thread says it and ends the session
        except Exception:  # noqa: BLE001
            log.exception("%s: pipe reader failed", self._who())
        self.input_done = True
        self.wake.set()

    def _drain_loop(self) -> None:
        self.fast_path = True
        while True:
            self.wake.wait(TICK_S)
            self.wake.clear()
            with self.send_lock:
                if self.refusal is not None:
                    self._fatal(self.refusal)
                    return
                ending, message = self._drain()
                if ending == "evicted":
                    self._fatal(message)
                    return
                if ending is not None or self.input_done:
                    self._finish(0)
                    return
            if self.gone():
                raise SessionGone()
            self._maybe_ping()

    def _drain(self) -> Tuple[str | None, str]:
        """Send everything queued (caller holds send_lock); returns (ending, end message)."""
        hub = self.hub
        data, self.pending = self.pending, b""
        ending: str | None = None
        message = ""
        more = True
        while True:
            if data:
                try:
                    self._send(data)
                except SessionGone:
                    if not hub.is_evicted(self.sid):
                        raise
            if not more:
                break
            # Data that arrives later re-sets self.wake (its buffer was empty).
            data, ending, message, more = hub.take(self.sid)
            if ending == "evicted":
                break
        return ending, message
