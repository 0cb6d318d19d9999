"""Patches of magic-wormhole 0.24's dilation, applied once per process (idempotent).

* TCP_NODELAY on every dilated connection: without it small records wait ~40 ms for
  Nagle/delayed ACKs (research/wormhole.md §4c.1).
* Per-session loopback-only listening: a dilation manager marked with
  ``_p2ppool_loopback_only = True`` makes its ``Connector`` listen on 127.0.0.1 and advertise
  only 127.0.0.1 as a direct hint (research §7).  Unmarked managers keep the library's
  behaviour: listen on all interfaces, advertise the LAN addresses.
* Lighter state-machine inputs: automat's ``preserveName`` (a code-object copy on every
  input call, several per record) is replaced by a no-op (:func:`_lighter_automat_inputs`).
* Quiet inbound data: dilation's ``Inbound.handle_data`` logs one Twisted message per
  record; the patched method skips that message (:func:`_quiet_inbound_data`).
* Fewer acknowledgements: inbound records are acknowledged in batches (the latest
  sequence number once 16 are waiting or 5 ms after the first), not one Ack record each
  (:func:`_fewer_acks`).
* Quiet factories: wormhole's connection factories (dilation's inbound and outbound
  ones, the mailbox's WebSocket one) no longer log "Starting factory" / "Stopping factory"
  (:func:`_quiet_factories`).  Until a program starts Twisted logging, Twisted keeps the
  last 200 log events in memory, and those two events hold the factory, through it the
  whole dilation state of the session, and through that the session: about 17 ended
  sessions were kept alive that way at any time.
* Diagnostics: a manager that carries the lists ``_p2ppool_listeners``,
  ``_p2ppool_advertised_hints`` and ``_p2ppool_peer_hints`` gets them filled with its listening
  addresses, the hints it published and the hints it received.

Every patched internal (:data:`PATCHED_INTERNALS`) is checked to exist first
(:func:`check_internals`); a magic-wormhole that lacks one fails at import of
:mod:`p2ppool.transfer.session` with an ImportError that names what is missing, the installed
version and the range these patches were checked on (:data:`CHECKED_VERSIONS`, which
``setup.cfg`` pins), instead of silently losing a workaround.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, List, Tuple

__all__ = ["CHECKED_VERSIONS", "PATCHED_INTERNALS", "check_internals", "describe_hint",
           "install_patches"]

#: The magic-wormhole releases these patches were checked on (setup.cfg pins this range).
CHECKED_VERSIONS = ">=0.24,<0.25"

#: (module, attribute path) of every private internal patched or relied on below.
PATCHED_INTERNALS: Tuple[Tuple[str, str], ...] = (
    ("wormhole._dilation.connection", "DilatedConnectionProtocol.connectionMade"),
    ("wormhole._dilation.connector", "Connector._get_listener_addresses"),
    ("wormhole._dilation.connector", "Connector._start_listener"),
    ("wormhole._dilation.connector", "Connector._use_hints"),
    ("wormhole._dilation.connector", "Connector._publish_hints"),
    ("wormhole._dilation.connector", "InboundConnectionFactory"),
    ("wormhole._dilation.connector", "OutboundConnectionFactory"),
    ("wormhole._rendezvous", "WSFactory"),
    ("wormhole._dilation.inbound", "Inbound.handle_data"),
    ("wormhole._dilation.manager", "Manager.send_ack"),
)

_patch_lock = threading.Lock()
_patched = False


def _manager_of(connector: Any) -> Any:
    return getattr(connector, "_manager", None)


def _installed_version() -> str:
    try:
        from importlib.metadata import version

        return version("magic-wormhole")
    except Exception:  # noqa: BLE001 - only for the message
        return "unknown"


def check_internals() -> None:
    """Raise ImportError naming every internal of :data:`PATCHED_INTERNALS` that the
    installed magic-wormhole lacks."""
    missing = []
    for module_name, path in PATCHED_INTERNALS:
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError:
            missing.append(f"{module_name} (module)")
            continue
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is None or not callable(obj):
            missing.append(f"{module_name}.{path}")
    if missing:
        raise ImportError(
            f"p2ppool.transfer: magic-wormhole {_installed_version()} lacks internals that "
            f"p2ppool patches: {', '.join(missing)}; install a checked release: "
            f"pip install 'magic-wormhole[dilate]{CHECKED_VERSIONS}'"
        )


def install_patches() -> None:
    """Apply the TCP_NODELAY and per-session loopback patches (idempotent, thread-safe)."""
    global _patched
    with _patch_lock:
        if _patched:
            return
        check_internals()
        from wormhole._dilation import connector as connector_mod
        from wormhole._dilation.connection import DilatedConnectionProtocol

        conn_cls: Any = DilatedConnectionProtocol
        connector_cls: Any = connector_mod.Connector
        original_made = conn_cls.connectionMade

        def connectionMade(self: Any) -> None:
            try:
                self.transport.setTcpNoDelay(True)
            except Exception:  # not TCP (e.g. a test transport): nothing to tune
                pass
            original_made(self)

        conn_cls.connectionMade = connectionMade

        original_addresses = connector_cls._get_listener_addresses

        def _get_listener_addresses(self: Any) -> List[str]:
            if getattr(_manager_of(self), "_p2ppool_loopback_only", False):
                return ["127.0.0.1"]
            return list(original_addresses(self))

        connector_cls._get_listener_addresses = _get_listener_addresses

        original_start = connector_cls._start_listener

        def _start_listener(self: Any, addresses: List[str]) -> None:
            manager = _manager_of(self)
            loopback = bool(getattr(manager, "_p2ppool_loopback_only", False))
            record = getattr(manager, "_p2ppool_listeners", None)
            if not loopback and record is None:
                original_start(self, addresses)
                return
            # The library listens with serverFromString(reactor, "tcp:0") (all interfaces).
            # For this synchronous call only, swap in a version that binds 127.0.0.1 (in
            # loopback mode) and records the listening address.  The reactor is
            # single-threaded, so no other session can observe the swap.
            saved = connector_mod.serverFromString

            def _server_from_string(reactor: Any, description: str) -> Any:
                if loopback and description == "tcp:0":
                    description = "tcp:0:interface=127.0.0.1"
                endpoint = saved(reactor, description)
                return endpoint if record is None else _RecordingEndpoint(endpoint, record)

            connector_mod.serverFromString = _server_from_string
            try:
                original_start(self, addresses)
            finally:
                connector_mod.serverFromString = saved

        connector_cls._start_listener = _start_listener

        original_use_hints = connector_cls._use_hints

        def _use_hints(self: Any, hints: Any) -> Any:
            manager = _manager_of(self)
            record = getattr(manager, "_p2ppool_peer_hints", None)
            if record is not None:
                record.extend(hints)
            return original_use_hints(self, hints)

        connector_cls._use_hints = _use_hints

        original_publish = connector_cls._publish_hints

        def _publish_hints(self: Any, hints: Any) -> Any:
            record = getattr(_manager_of(self), "_p2ppool_advertised_hints", None)
            if record is not None:
                record.extend(hints)
            return original_publish(self, hints)

        connector_cls._publish_hints = _publish_hints
        _lighter_automat_inputs()
        _quiet_factories()
        _quiet_inbound_data()
        _fewer_acks()
        _patched = True


#: Inbound records acknowledged together (at most this many, or after _ACK_DELAY_S).
_ACKS_PER_RECORD = 16
_ACK_DELAY_S = 0.005


def _fewer_acks() -> None:
    """Acknowledge inbound records in batches instead of one Ack record per record.

    Dilation answers every inbound record (a 64 KiB piece of a frame) with an Ack at once:
    one more record to encrypt, write, read, decrypt and parse on each side, half the
    records of a bulk transfer.  Acks are cumulative (the peer retires every record up to
    the acknowledged one) and serve only to free the peer's replay queue (for a
    reconnection), not for flow control (TCP does that).  So the latest sequence number is
    sent once ``_ACKS_PER_RECORD`` records are waiting, or ``_ACK_DELAY_S`` after the
    first one, whichever comes first.
    """
    from wormhole._dilation.manager import Manager

    manager_cls: Any = Manager
    original = manager_cls.send_ack
    if not callable(original) or getattr(original, "_p2ppool_batched", False):
        return

    def flush(self: Any) -> None:
        self._p2ppool_ack_timer = None
        if getattr(self, "_p2ppool_unacked", 0):
            self._p2ppool_unacked = 0
            original(self, self._p2ppool_ack)

    def send_ack(self: Any, resp_seqnum: Any) -> None:
        self._p2ppool_ack = resp_seqnum
        waiting = getattr(self, "_p2ppool_unacked", 0) + 1
        timer = getattr(self, "_p2ppool_ack_timer", None)
        if waiting >= _ACKS_PER_RECORD:
            if timer is not None and timer.active():
                timer.cancel()
            self._p2ppool_ack_timer = None
            self._p2ppool_unacked = 0
            original(self, resp_seqnum)
            return
        self._p2ppool_unacked = waiting
        if timer is None:
            self._p2ppool_ack_timer = self._reactor.callLater(_ACK_DELAY_S, flush, self)

    send_ack._p2ppool_batched = True  # type: ignore[attr-defined]
    manager_cls.send_ack = send_ack


def _quiet_factories() -> None:
    """Stop wormhole's factories logging their start and stop (each such event holds the
    factory, and Twisted buffers the last 200 events until logging begins, so it kept the
    dilation state of ended sessions alive)."""
    from wormhole._dilation.connector import InboundConnectionFactory, OutboundConnectionFactory
    from wormhole._rendezvous import WSFactory

    for cls in (InboundConnectionFactory, OutboundConnectionFactory, WSFactory):
        cls.noisy = False


def _quiet_inbound_data() -> None:
    """Deliver inbound DATA records without a Twisted log message each (about 4 % of a
    busy session's reactor time); the error path (no such subchannel) is unchanged."""
    from wormhole._dilation.inbound import Inbound

    inbound: Any = Inbound
    original = inbound.handle_data
    if not callable(original) or getattr(original, "_p2ppool_quiet", False):
        return

    def handle_data(self: Any, scid: Any, data: bytes) -> None:
        subchannel = self._open_subchannels.get(scid)
        if subchannel is None:
            original(self, scid, data)  # logs the error, as before
            return
        subchannel.remote_data(data)

    handle_data._p2ppool_quiet = True  # type: ignore[attr-defined]
    inbound.handle_data = handle_data


def _lighter_automat_inputs() -> None:
    """Make every state-machine input of dilation cheaper (several run per 64 KiB record).

    Automat's ``MethodicalInput.__get__`` builds a new function per access and renames its
    code object with ``preserveName`` (a copy of the code object each time: about 3 of the
    5 microseconds of an input call).  ``functools.wraps`` already gives the function the
    input's name and docstring, so only the name in tracebacks changes ("doInput").
    """
    try:
        from automat import _methodical
    except ImportError:  # pragma: no cover - automat always comes with Twisted
        return
    if callable(getattr(_methodical, "preserveName", None)):
        _methodical.preserveName = _keep_function  # type: ignore[attr-defined]


def _keep_function(_original: Any) -> Any:
    def decorator(function: Any) -> Any:
        return function
    return decorator


class _RecordingEndpoint:
    """Wraps a server endpoint and records ``host:port`` of each port it listens on."""

    def __init__(self, endpoint: Any, record: List[str]) -> None:
        self._endpoint = endpoint
        self._record = record

    def listen(self, factory: Any) -> Any:
        def _listening(port: Any) -> Any:
            host = port.getHost()
            self._record.append(f"{host.host}:{host.port}")
            return port

        return self._endpoint.listen(factory).addCallback(_listening)


def describe_hint(hint: Any) -> str:
    """Return ``"tcp:HOST:PORT"`` for a direct hint, ``"relay:tcp:HOST:PORT"`` for a relay."""
    inner = getattr(hint, "hints", None)
    if inner:
        return "relay:" + ",".join(describe_hint(h) for h in inner)
    return f"tcp:{getattr(hint, 'hostname', '?')}:{getattr(hint, 'port', '?')}"


