"""The data plane: one dilated magic-wormhole session per (client pool, worker) pair.

::

    caller threads                 reactor thread (p2ppool.transfer.reactor)                 peer
    ──────────────                 ───────────────────────────────                  ────
    TransferSession.open(code, ...) ──call──▶ wormhole.create(dilation=True), set_code,
                                      dilate(); client opens subchannel "p2ppool/1",
                                      worker listens for it          ◀═══ PAKE + Noise ═══▶
    session.send(frame) ──deque+wake─▶ _Outbox: header + payload, written in pieces of
                                      WRITE_PIECE_BYTES while dilation is not paused ═══▶
    on_frame(bytes)  ◀────────────── _FrameDecoder: list-based reassembly, size limit ◀═══
    on_lost(cause)   ◀────────────── heartbeat deadline / BYE / subchannel lost

Wire format on the one subchannel: each record is a 9-byte header ``kind:u8, length:u64``
(big-endian) followed by ``length`` bytes.  Kinds: ``DATA`` (an application frame, handed to
``on_frame``), ``HEARTBEAT`` (empty; sent every ``HEARTBEAT_S`` when nothing else is queued)
and ``BYE`` (UTF-8 reason; the receiver answers with its own BYE and closes).  Application
frames are opaque bytes: this layer never unpickles anything, and frames exist only on the
dilated connection, i.e. after the PAKE succeeded.

The record format and its decoder live in :mod:`p2ppool.transfer.framing` (pure), the patches of
magic-wormhole in :mod:`p2ppool.transfer.wormhole_patches`.  Workarounds for magic-wormhole 0.24
(research/wormhole.md §4c), applied once at import:

* TCP_NODELAY on every dilated connection (otherwise ~40 ms Nagle/delayed-ACK stalls).
* Large frames are written in pieces (one huge ``write()`` is quadratic inside dilation).
* Dilation never reports a dead peer: both sides send heartbeats and declare the session lost
  after ``HEARTBEAT_DEADLINE_S`` without any inbound byte.
* Loopback-only mode, **per session**: a session opened with ``loopback_only=True`` listens on
  127.0.0.1 and advertises only 127.0.0.1 as its direct hint.  Other sessions in the same
  process keep the library's behaviour (listen on all interfaces, advertise the LAN
  addresses, race the relay).  The switch is a marker on the session's dilation manager that
  the patched ``Connector`` methods read, so it cannot leak between sessions.  (The marker
  is set right after ``dilate()``, before the PAKE can finish, so it is always in place
  before dilation starts listening.)  Only dilation is patched; classic Transit
  (``wormhole.transit``) is not used by p2ppool and keeps its defaults.

Size: one class, one session's life on the reactor thread (open, frames, heartbeats,
close, loss); its states and callbacks must be read together, so it stays one module.
"""

from __future__ import annotations

import collections
import logging
import re
import secrets
import threading
from typing import Any, Callable, Deque, List, Sequence, Tuple, Union
from urllib.parse import urlsplit

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from p2ppool import defaults
from p2ppool.errors import SessionLost, TransferError, TransferTimeout
from p2ppool.transfer import reactor as _reactor_mod
from p2ppool.transfer.framing import (
    HEADER_BYTES,
    KIND_BYE,
    KIND_DATA,
    KIND_HEARTBEAT,
    MAX_BYE_REASON_BYTES,
    FrameDecoder,
    FrameTooLarge,
    encode_header,
)
from p2ppool.transfer.wormhole_patches import describe_hint, install_patches

__all__ = [
    "CLIENT",
    "FrameTooLarge",
    "MAX_BYE_REASON_BYTES",
    "TransferSession",
    "WORKER",
    "new_code",
]

log = logging.getLogger(__name__)

CLIENT = "client"
WORKER = "worker"
SUBPROTOCOL = "p2ppool/1"

CAUSE_CLOSED_LOCALLY = "closed locally"
CAUSE_CLOSED_BY_PEER = "closed by peer"

_CODE_RE = re.compile(r"^[0-9]+-\S+$")
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def new_code() -> str:
    """Return a fresh wormhole code: a long random nameplate and a 128-bit password.

    The long nameplate makes collisions with other users of the same mailbox server (and the
    "crowded" lock-up of research §5) practically impossible.
    """
    return f"{secrets.randbelow(10**12)}-{secrets.token_hex(16)}"


# --- the session --------------------------------------------------------------------------

FrameCallback = Callable[[bytes], None]
_Payload = Union[bytes, Tuple[memoryview, ...]]  # one record: bytes, or parts (send_parts)
LostCallback = Callable[[str], None]


class TransferSession:
    """One dilated magic-wormhole connection to one peer, carrying ordered frames.

    Create with :meth:`open`.  All public methods are thread-safe and may be called from any
    thread except where noted.  The callbacks ``on_frame`` and ``on_lost`` run in the
    **reactor thread**: they must return quickly (hand the frame to a queue); a slow callback
    stalls every session of the process and can make peers miss heartbeats.

    Attributes:
        role: ``"client"`` (opened the subchannel) or ``"worker"`` (accepted it).
        nameplate: the public part of the code, for log messages.
        max_frame_bytes: inbound frames larger than this close the session.
    """

    def __init__(
        self,
        *,
        role: str,
        on_frame: FrameCallback,
        on_lost: LostCallback | None,
        max_frame_bytes: int,
        heartbeat_s: float,
        heartbeat_deadline_s: float,
        write_piece_bytes: int,
        close_timeout: float,
        nameplate: str,
    ) -> None:
        self.role = role
        self.nameplate = nameplate
        self.max_frame_bytes = max_frame_bytes
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._heartbeat_s = heartbeat_s
        self._deadline_s = heartbeat_deadline_s
        self._piece = write_piece_bytes
        self._close_timeout = close_timeout
        self._decoder = FrameDecoder(max_frame_bytes)
        # shared with caller threads (guarded by _lock)
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._inbox: Deque[Tuple[int, _Payload]] = collections.deque()
        self._wake_pending = False
        self._pending = 0
        self._cause: str | None = None
        self._error: TransferError | None = None
        self._ended = threading.Event()
        # reactor-thread state
        self._wormhole: Any = None
        self._dilated: Any = None
        self._proto: _FrameProtocol | None = None
        self._outbox: Deque[memoryview] = collections.deque()
        self._paused = False
        self._closing = False
        self._opened = False
        self._finished = False
        self._refusing = False
        self._last_inbound = 0.0
        self._heartbeat: Any = None
        self._open_d: Any = None
        self._open_timer: Any = None
        self._close_d: Any = None
        self._bye_timer: Any = None
        self._after_finish: List[Any] = []
        self._peer_hints: List[Any] = []
        self._advertised_hints: List[Any] = []
        self._listen_addresses: List[str] = []
        #: Complete DATA frames delivered to on_frame, and their payload bytes.
        self.frames_received = 0
        self.bytes_received = 0
        #: Raw bytes taken from the subchannel (stops counting once a frame is refused).
        self.wire_bytes_received = 0

    # -- public API ---------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        code: str,
        relay_url: str,
        transit: str | None,
        *,
        role: str,
        on_frame: FrameCallback,
        on_lost: LostCallback | None = None,
        loopback_only: bool = False,
        timeout: float = defaults.SESSION_OPEN_TIMEOUT_S,
        max_frame_bytes: int = defaults.MAX_FRAME_BYTES,
        appid: str = defaults.APPID,
        heartbeat_s: float = defaults.HEARTBEAT_S,
        heartbeat_deadline_s: float = defaults.HEARTBEAT_DEADLINE_S,
        write_piece_bytes: int = defaults.WRITE_PIECE_BYTES,
        close_timeout: float = defaults.SESSION_CLOSE_TIMEOUT_S,
    ) -> TransferSession:
        """Pair with the peer holding the same code, dilate, and return the open session.

        Blocks the calling thread (never call it from the reactor thread) until the dilated
        subchannel is open on both sides, at most ``timeout`` seconds.

        Args:
            code: the wormhole code (``"<digits>-<password>"``); see :func:`new_code`.
            relay_url: the mailbox server, e.g. ``ws://127.0.0.1:4000/v1``.
            transit: the transit relay hint, e.g. ``tcp:127.0.0.1:4001`` (None: direct only).
            role: ``"client"`` opens the subchannel, ``"worker"`` accepts it.  The two ends
                of a session must have different roles.
            on_frame: called with each complete inbound frame, in order, in the reactor
                thread.  On the worker side the first frames may arrive before ``open``
                has returned to the calling thread.
            on_lost: called exactly once with a readable cause when the open session ends
                for any reason, including :meth:`close` (cause ``"closed locally"``) and a
                goodbye from the peer (cause starting with ``"closed by peer"``).  Runs in
                the reactor thread.  Not called when ``open`` itself raises; like
                ``on_frame`` it may run before ``open`` has returned to the calling thread.
            loopback_only: listen on and advertise only 127.0.0.1 (LocalCluster, tests).
                The mailbox and relay must then be on loopback too.
            timeout: seconds to wait for the peer, the PAKE and dilation.
            max_frame_bytes: largest inbound frame accepted.
            appid: the wormhole application id; both sides must agree.
            heartbeat_s: seconds between heartbeats.
            heartbeat_deadline_s: silence after which the peer is declared lost.
            write_piece_bytes: frames are written to dilation in pieces of this size.
            close_timeout: bound of :meth:`close` and of the internal wormhole close.

        Raises:
            ValueError: a malformed code, role or (with ``loopback_only``) a non-loopback
                server address.
            TransferTimeout: no peer completed the handshake within ``timeout``.
            TransferError: a wrong code on either side, an unreachable mailbox server, or
                another wormhole failure; the message says which.
        """
        if role not in (CLIENT, WORKER):
            raise ValueError(f"role must be {CLIENT!r} or {WORKER!r}, not {role!r}")
        if not isinstance(code, str) or not _CODE_RE.match(code):
            raise ValueError(
                "a wormhole code looks like '<digits>-<password>' (no spaces), e.g. the "
                "result of p2ppool.transfer.session.new_code()"
            )
        if timeout <= 0 or heartbeat_s <= 0 or heartbeat_deadline_s <= heartbeat_s:
            raise ValueError(
                "timeout and heartbeat_s must be positive and heartbeat_deadline_s larger "
                "than heartbeat_s"
            )
        if max_frame_bytes < 0 or write_piece_bytes <= HEADER_BYTES:
            raise ValueError("max_frame_bytes must be >= 0 and write_piece_bytes > 9")
        if loopback_only:
            _require_loopback("relay_url", relay_url, urlsplit(relay_url).hostname)
            if transit is not None:
                _require_loopback("transit", transit, _hint_host(transit))
        install_patches()
        session = cls(
            role=role, on_frame=on_frame, on_lost=on_lost, max_frame_bytes=max_frame_bytes,
            heartbeat_s=heartbeat_s, heartbeat_deadline_s=heartbeat_deadline_s,
            write_piece_bytes=write_piece_bytes, close_timeout=close_timeout,
            nameplate=code.split("-", 1)[0],
        )
        _reactor_mod.call(
            session._open_in_reactor, code, relay_url, transit, appid, loopback_only, timeout,
            timeout=timeout + close_timeout + 1.0,
            what=f"opening wormhole session {session.nameplate} as {role}",
        )
        return session

    def send(self, frame: bytes) -> None:
        """Queue one frame for the peer and return at once (thread-safe, non-blocking).

        Frames arrive in the order they were sent.  The data is held in memory until it is
        written; use :attr:`pending_bytes` or :meth:`wait_drained` to bound it.

        Raises:
            TypeError: ``frame`` is not bytes-like.
            TransferError: the session has ended (:class:`~p2ppool.errors.SessionLost` if
                the peer was lost); the message gives the cause.
        """
        if not isinstance(frame, (bytes, bytearray, memoryview)):
            raise TypeError(f"a frame is bytes, not {type(frame).__name__}")
        self._enqueue(KIND_DATA, bytes(frame) if not isinstance(frame, bytes) else frame)

    def send_parts(self, parts: Sequence[bytes | memoryview]) -> None:
        """Queue one frame made of ``parts`` in order, as :meth:`send` does, without joining
        them (a large payload is not copied to put a small header before it).

        The parts must not change until they are written (``bytes`` and read-only views
        cannot).

        Raises:
            TypeError: a part is not bytes-like.
            TransferError: the session has ended.
        """
        views = []
        for part in parts:
            if not isinstance(part, (bytes, bytearray, memoryview)):
                raise TypeError(f"a frame part is bytes, not {type(part).__name__}")
            view = memoryview(part)
            views.append(view if view.format == "B" and view.ndim == 1 else view.cast("B"))
        self._enqueue(KIND_DATA, tuple(views))

    @property
    def pending_bytes(self) -> int:
        """Bytes queued by :meth:`send` that have not been handed to the connection yet.

        Dilation itself additionally keeps written records until the peer acknowledges
        them; that amount is bounded by the TCP buffers, because this session stops writing
        whenever dilation asks its producers to pause.
        """
        with self._lock:
            return self._pending

    def wait_drained(self, below: int = 1, timeout: float | None = None) -> bool:
        """Block until fewer than ``below`` bytes are pending, or the session ended.

        Use it for back-pressure: ``session.send(f); session.wait_drained(64 << 20, 30)``.

        Returns:
            True if the condition holds, False on timeout.
        """
        with self._drained:
            return self._drained.wait_for(
                lambda: self._pending < below or self._cause is not None, timeout
            )

    @property
    def is_open(self) -> bool:
        """True until the session has ended (lost, closed by either side)."""
        return not self._ended.is_set()

    @property
    def cause(self) -> str | None:
        """Why the session ended (None while it is open)."""
        with self._lock:
            return self._cause

    def wait_ended(self, timeout: float | None = None) -> bool:
        """Block until the session has ended; return False on timeout."""
        return self._ended.wait(timeout)

    @property
    def peer_hints(self) -> List[str]:
        """Connection hints received from the peer (diagnostics), e.g. ``tcp:127.0.0.1:PORT``."""
        return [describe_hint(h) for h in list(self._peer_hints)]

    @property
    def advertised_hints(self) -> List[str]:
        """Connection hints this side sent to the peer (diagnostics)."""
        return [describe_hint(h) for h in list(self._advertised_hints)]

    @property
    def listen_addresses(self) -> List[str]:
        """``host:port`` of every listener dilation opened for this session (diagnostics).

        Dilation closes them once a connection wins, so they are usually gone by now.
        """
        return list(self._listen_addresses)

    def close(self, reason: str = "") -> None:
        """End the session: flush queued frames, say goodbye, close the wormhole.

        Bounded by ``close_timeout`` (plus a small margin) even if the peer is gone.
        Idempotent; safe after the session was lost.  Called from the reactor thread (for
        example inside ``on_frame``), it starts closing and returns without waiting.

        Args:
            reason: optional words for the peer's ``on_lost`` cause.
        """
        if self._ended.is_set():
            return  # already ended; the wormhole is closing in the background
        if _reactor_mod.in_reactor_thread():  # e.g. from on_frame: do not wait for ourselves
            self._close_in_reactor(reason)
            return
        try:
            _reactor_mod.call(
                self._close_in_reactor, reason, timeout=self._close_timeout + 1.0,
                what=f"closing wormhole session {self.nameplate}",
            )
        except TransferTimeout:
            log.warning("closing wormhole session %s timed out", self.nameplate)

    def __enter__(self) -> TransferSession:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self.is_open else f"ended ({self.cause})"
        return f"<TransferSession {self.nameplate} {self.role} {state}>"

    # -- caller side of the outbox ---------------------------------------------------------

    def _enqueue(self, kind: int, payload: _Payload) -> None:
        size = len(payload) if isinstance(payload, bytes) else sum(len(p) for p in payload)
        with self._lock:
            if self._cause is not None:
                assert self._error is not None
                raise type(self._error)(f"wormhole session {self.nameplate} has ended: "
                                        f"{self._cause}")
            self._inbox.append((kind, payload))
            self._pending += HEADER_BYTES + size
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            _reactor_mod.call_soon(self._take_inbox)

    # -- reactor thread: opening -----------------------------------------------------------

    def _open_in_reactor(
        self, code: str, relay_url: str, transit: str | None, appid: str,
        loopback_only: bool, timeout: float,
    ) -> Any:
        import wormhole
        from twisted.internet import defer, protocol

        reactor = _reactor_mod.get_reactor()

        self._open_d = defer.Deferred()
        what = f"opening wormhole session {self.nameplate} as {self.role}"
        self._open_timer = reactor.callLater(
            timeout, self._fail_open,
            TransferTimeout(
                f"{what}: no peer completed the handshake within {timeout:g} s (is the peer "
                f"running, and using the same mailbox server {relay_url}?)"
            ),
        )
        try:
            w = wormhole.create(appid, relay_url, reactor, dilation=True)
            self._wormhole = w
            w.set_code(code)
            dw = w.dilate(transit_relay_location=transit, no_listen=False)
        except Exception as exc:
            self._fail_open(_reactor_mod.translate_failure(exc, what=what))
            return self._open_d
        self._dilated = dw
        manager = getattr(dw, "_manager", None)
        if manager is not None:
            manager._p2ppool_loopback_only = bool(loopback_only)
            manager._p2ppool_peer_hints = self._peer_hints
            manager._p2ppool_advertised_hints = self._advertised_hints
            manager._p2ppool_listeners = self._listen_addresses
        elif loopback_only:
            self._fail_open(TransferError(f"{what}: cannot enforce loopback_only on this "
                                          "magic-wormhole version"))
            return self._open_d

        def _pairing_failed(failure: Any) -> None:
            self._fail_open(_reactor_mod.translate_failure(failure, what=what))

        w.get_versions().addErrback(_pairing_failed)
        factory = protocol.Factory.forProtocol(lambda: _FrameProtocol(self))
        if self.role == WORKER:
            dw.listener_for(SUBPROTOCOL).listen(factory).addErrback(_pairing_failed)
        else:
            dw.connector_for(SUBPROTOCOL).connect(factory).addErrback(_pairing_failed)
        return self._open_d

    def _fail_open(self, error: Exception) -> None:
        if self._opened or self._finished:
            return
        self._finished = True
        self._cancel_timer("_open_timer")
        with self._lock:
            self._cause = str(error)
            self._error = error if isinstance(error, TransferError) else TransferError(str(error))
        self._ended.set()
        d, self._open_d = self._open_d, None
        self._drop_callbacks()
        self._close_wormhole()
        if d is not None and not d.called:
            d.errback(error)

    def _subchannel_connected(self, proto: _FrameProtocol) -> None:
        from twisted.internet import task

        reactor = _reactor_mod.get_reactor()

        if self._finished or self._proto is not None:
            proto.transport.loseConnection()
            return
        self._proto = proto
        self._opened = True
        self._cancel_timer("_open_timer")
        self._last_inbound = reactor.seconds()
        self._heartbeat = task.LoopingCall(self._beat)
        self._heartbeat.clock = reactor
        self._heartbeat.start(self._heartbeat_s, now=False)
        proto.transport.registerProducer(proto, True)
        d, self._open_d = self._open_d, None
        if d is not None and not d.called:
            d.callback(None)
        self._pump()

    # -- reactor thread: outbound ----------------------------------------------------------

    def _take_inbox(self) -> None:
        with self._lock:
            self._wake_pending = False
            items = list(self._inbox)
            self._inbox.clear()
        if self._finished:
            return
        for kind, payload in items:
            if isinstance(payload, bytes):
                self._outbox.append(memoryview(encode_header(kind, len(payload))))
                if payload:
                    self._outbox.append(memoryview(payload))
                continue
            self._outbox.append(memoryview(encode_header(kind, sum(len(p) for p in payload))))
            self._outbox.extend(p for p in payload if p)
        self._pump()

    def _pump(self) -> None:
        """Write queued bytes in pieces until dilation pauses us or the queue is empty."""
        proto = self._proto
        if proto is None or self._finished:
            return
        write = proto.transport.write
        outbox = self._outbox
        limit = self._piece
        while outbox and not self._paused and not self._finished:
            first = outbox[0]
            if len(first) >= limit or len(outbox) == 1:
                piece_view = first[:limit]
                if len(first) > limit:
                    outbox[0] = first[limit:]
                else:
                    outbox.popleft()
                piece = piece_view.tobytes()
            else:  # coalesce small records (a header and a short payload) into one write
                parts = []
                size = 0
                while outbox and size < limit:
                    view = outbox[0]
                    take = min(len(view), limit - size)
                    parts.append(view[:take].tobytes())
                    size += take
                    if take == len(view):
                        outbox.popleft()
                    else:
                        outbox[0] = view[take:]
                piece = b"".join(parts)
            with self._lock:
                self._pending -= len(piece)
                if self._pending < 0:
                    self._pending = 0
                self._drained.notify_all()
            write(piece)

    def _beat(self) -> None:
        reactor = _reactor_mod.get_reactor()

        if self._finished:
            return
        silent = reactor.seconds() - self._last_inbound
        if silent > self._deadline_s:
            self._finish(
                f"peer lost: no traffic for {silent:.1f} s (heartbeat deadline "
                f"{self._deadline_s:g} s); the peer process or its network is gone",
                SessionLost,
            )
            return
        if not self._outbox and not self._closing:
            with self._lock:
                self._pending += HEADER_BYTES
            self._outbox.append(memoryview(encode_header(KIND_HEARTBEAT, 0)))
            self._pump()

    def _queue_bye(self, reason: str) -> None:
        data = reason.encode("utf-8", "replace")[:MAX_BYE_REASON_BYTES]
        with self._lock:
            self._pending += HEADER_BYTES + len(data)
        self._outbox.append(memoryview(encode_header(KIND_BYE, len(data))))
        if data:
            self._outbox.append(memoryview(data))
        self._pump()

    # -- reactor thread: inbound -----------------------------------------------------------

    def _data_received(self, data: bytes) -> None:
        reactor = _reactor_mod.get_reactor()

        if self._finished or self._refusing:
            return
        self._last_inbound = reactor.seconds()
        self.wire_bytes_received += len(data)
        try:
            records = self._decoder.feed(data)
        except TransferError as exc:
            self._refusing = True
            self._decoder = FrameDecoder(0)  # drop anything buffered
            self._outbox.clear()
            self._queue_bye(f"refused: {exc}")
            self._finish(str(exc), TransferError, flush=True)
            return
        for kind, payload in records:
            if self._finished:
                return
            if kind == KIND_DATA:
                self.frames_received += 1
                self.bytes_received += len(payload)
                try:
                    self._on_frame(payload)
                except Exception as exc:
                    log.exception("on_frame callback of session %s failed", self.nameplate)
                    self._queue_bye("the receiver failed to handle a frame")
                    self._finish(f"on_frame callback failed: {type(exc).__name__}: {exc}",
                                 TransferError, flush=True)
                    return
            elif kind == KIND_BYE:
                self._got_bye(payload.decode("utf-8", "replace"))
                return

    def _got_bye(self, reason: str) -> None:
        if self._closing:  # the peer's answer to our goodbye (or a crossing goodbye)
            self._finish(CAUSE_CLOSED_LOCALLY, TransferError)
            return
        self._outbox.clear()  # the peer wants no more data
        self._queue_bye("")  # answer, so the closing side knows we got everything
        cause = CAUSE_CLOSED_BY_PEER + (f": {reason}" if reason else "")
        self._finish(cause, TransferError, flush=True)

    def _subchannel_lost(self) -> None:
        if not self._finished:
            if self._closing:
                self._finish(CAUSE_CLOSED_LOCALLY, TransferError)
            else:
                self._finish("the peer closed the connection without a goodbye", SessionLost)

    # -- reactor thread: ending ------------------------------------------------------------

    def _close_in_reactor(self, reason: str) -> Any:
        from twisted.internet import defer

        reactor = _reactor_mod.get_reactor()

        if not self._opened:
            return None
        if not self._finished and not self._closing:
            self._closing = True
            self._queue_bye(reason)
            self._bye_timer = reactor.callLater(
                self._close_timeout / 2, self._finish, CAUSE_CLOSED_LOCALLY, TransferError
            )
        d: Any = defer.Deferred()
        if self._finished:
            d.callback(None)
        else:
            self._after_finish.append(d)
        return d

    def _finish(
        self, cause: str, error_type: type = TransferError, flush: bool = False
    ) -> None:
        """End the session once: stop timers, notify on_lost, close the wormhole."""
        if self._finished:
            return
        if flush and self._proto is not None:
            # Hand what is queued (a goodbye) to dilation now, even if it asked us to pause:
            # it keeps the records and sends them before the connection closes.
            self._paused = False
            self._pump()
        self._finished = True
        for name in ("_open_timer", "_bye_timer"):
            self._cancel_timer(name)
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        with self._lock:
            self._cause = cause
            self._error = error_type(cause)
            self._inbox.clear()
            self._pending = 0
            self._drained.notify_all()
        proto, self._proto = self._proto, None
        self._outbox.clear()
        if proto is not None:
            try:
                proto.transport.unregisterProducer()
            except Exception:
                pass
        self._close_wormhole()
        self._ended.set()
        callbacks, self._after_finish = self._after_finish, []
        for d in callbacks:
            if not d.called:
                d.callback(None)
        on_lost = self._on_lost
        self._drop_callbacks()
        if on_lost is not None and self._opened:
            try:
                on_lost(cause)
            except Exception:
                log.exception("on_lost callback of session %s failed", self.nameplate)

    def _drop_callbacks(self) -> None:
        """Forget the owner's callbacks once the session has ended, so that whatever still
        holds the ended session (e.g. dilation objects in Twisted's log buffer) does not
        keep the owner's state alive through them."""
        self._on_frame = _ignore
        self._on_lost = None

    def _close_wormhole(self) -> None:
        """Close the wormhole in the background, bounded; errors are expected and ignored.

        The session lets go of the wormhole and its dilation state here: once closing, it
        never uses them again, and an ended session must stay small (its owner may keep it).
        """
        reactor = _reactor_mod.get_reactor()

        w, self._wormhole = self._wormhole, None
        dilated, self._dilated = self._dilated, None
        if w is None:
            return
        manager = getattr(dilated, "_manager", None)
        if manager is not None:
            # wormhole 0.24 closes the mailbox before it stops dilation; if the peer drops
            # the connection in between, a leader tries to send "reconnect" through the
            # closing mailbox and fails with an unhandled NoTransition.  A closing session
            # never wants to reconnect, so silence that one method on this instance.
            manager.send_dilation_generation = _ignore
        try:
            d = w.close()
        except Exception:
            return
        d.addTimeout(self._close_timeout, reactor)
        d.addErrback(lambda _f: None)
        self._close_d = d
        d.addBoth(self._closed_wormhole)

    def _closed_wormhole(self, _result: Any) -> None:
        self._close_d = None  # the closed wormhole's Deferred chain holds the whole wormhole

    def _cancel_timer(self, name: str) -> None:
        timer = getattr(self, name)
        setattr(self, name, None)
        if timer is not None and timer.active():
            timer.cancel()


def _hint_host(hint: str) -> str | None:
    parts = hint.split(":")
    if len(parts) >= 3 and parts[0] == "tcp":
        host = ":".join(parts[1:-1])
        return host.split(":interface")[0]
    return None


def _require_loopback(name: str, value: str, host: str | None) -> None:
    if host not in _LOOPBACK_HOSTS:
        raise ValueError(
            f"loopback_only=True but {name}={value!r} is not on 127.0.0.1/localhost"
        )


@implementer(IPushProducer)
class _FrameProtocol(Protocol):
    """The Twisted protocol of the session's subchannel; also its push producer."""

    transport: Any

    def __init__(self, session: TransferSession) -> None:
        self.session = session

    def connectionMade(self) -> None:
        self.session._subchannel_connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.session._data_received(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.session._subchannel_lost()

    # IPushProducer (dilation pauses us while its connection is congested or reconnecting)
    def pauseProducing(self) -> None:
        self.session._paused = True

    def resumeProducing(self) -> None:
        self.session._paused = False
        self.session._pump()

    def stopProducing(self) -> None:
        self.session._paused = True




def _ignore(*_args: Any, **_kwargs: Any) -> None:
    """Do nothing (replaces dilation's generation messages on a closing session)."""


install_patches()
