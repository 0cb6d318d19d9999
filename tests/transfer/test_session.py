"""Wormhole sessions against a real mailbox server and transit relay on 127.0.0.1.

Peers run either in a separate process (``_peer.py``) or in this process (both ends on the
one reactor thread) where that is enough.
"""

from __future__ import annotations

import hashlib
import os
import queue
import signal
import struct
import threading
import time
from typing import Any, Dict, List, Tuple

import pytest

from p2ppool import defaults
from p2ppool.errors import SessionLost, TransferError, TransferTimeout
from p2ppool.transfer.servers import WormholeServers
from p2ppool.transfer.session import CLIENT, WORKER, TransferSession, new_code

pytestmark = [pytest.mark.system, pytest.mark.timeout(30)]

LOST_MARGIN_S = 3.0


class Collector:
    """on_frame / on_lost callbacks that hand everything to queues."""

    def __init__(self) -> None:
        self.frames: queue.Queue[bytes] = queue.Queue()
        self.lost: queue.Queue[str] = queue.Queue()
        self.lost_calls = 0

    def on_frame(self, frame: bytes) -> None:
        self.frames.put(frame)

    def on_lost(self, cause: str) -> None:
        self.lost_calls += 1
        self.lost.put(cause)

    def next_frame(self, timeout: float = 10.0) -> bytes:
        return self.frames.get(timeout=timeout)

    def wait_lost(self, timeout: float) -> str:
        try:
            return self.lost.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"on_lost was not called within {timeout} s") from None


def open_session(
    servers: WormholeServers, code: str, role: str, collector: Collector, **kwargs: Any
) -> TransferSession:
    kwargs.setdefault("timeout", 10.0)
    transit = kwargs.pop("transit", servers.transit)
    return TransferSession.open(
        code, servers.relay_url, transit, role=role, loopback_only=True,
        on_frame=collector.on_frame, on_lost=collector.on_lost, **kwargs,
    )


def open_pair(
    servers: WormholeServers, client_kwargs: Dict[str, Any] | None = None,
    worker_kwargs: Dict[str, Any] | None = None,
) -> Tuple[TransferSession, Collector, TransferSession, Collector]:
    """Open a client and a worker session, both in this process."""
    code = new_code()
    wc, cc = Collector(), Collector()
    result: Dict[str, Any] = {}

    def _worker() -> None:
        try:
            result["w"] = open_session(servers, code, WORKER, wc, **(worker_kwargs or {}))
        except BaseException as exc:  # reported below
            result["error"] = exc

    thread = threading.Thread(target=_worker)
    thread.start()
    client = open_session(servers, code, CLIENT, cc, **(client_kwargs or {}))
    thread.join(15)
    if "error" in result:
        raise result["error"]
    return client, cc, result["w"], wc


def peer_args(servers: WormholeServers, code: str) -> List[str]:
    return [code, servers.relay_url, servers.transit]


# --- a peer in another process ------------------------------------------------------------


def test_echo_of_many_frames_keeps_order(wormhole_servers: WormholeServers, spawn_peer: Any):
    code = new_code()
    peer = spawn_peer("echo", *peer_args(wormhole_servers, code))
    col = Collector()
    session = open_session(wormhole_servers, code, CLIENT, col)
    peer.expect("opened", 10)
    sizes = [0, 1, 9, 100, 4096, 70_000, 200_000]
    sent = []
    for i in range(1500):
        frame = struct.pack(">I", i) + bytes([i % 251]) * sizes[i % len(sizes)]
        sent.append(frame)
        session.send(frame)
    received = [col.next_frame() for _ in sent]
    assert [r[:4] for r in received] == [s[:4] for s in sent]
    assert received == sent
    assert session.frames_received == len(sent)
    assert session.is_open and session.cause is None
    session.close()
    assert col.wait_lost(5) == "closed locally"
    assert col.lost_calls == 1
    assert peer.expect("lost", 5)["cause"].startswith("closed by peer")


def test_50_mb_frame_round_trip(wormhole_servers: WormholeServers, spawn_peer: Any):
    code = new_code()
    peer = spawn_peer("echo", *peer_args(wormhole_servers, code))
    col = Collector()
    session = open_session(wormhole_servers, code, CLIENT, col)
    peer.expect("opened", 10)
    payload = os.urandom(50 * 1024 * 1024)
    digest = hashlib.sha256(payload).hexdigest()
    started = time.monotonic()
    session.send(payload)
    echoed = col.next_frame(timeout=20)
    elapsed = time.monotonic() - started
    assert len(echoed) == len(payload)
    assert hashlib.sha256(echoed).hexdigest() == digest
    assert elapsed < 15, f"50 MB round trip took {elapsed:.1f} s"
    assert session.wait_drained(1, timeout=5)
    assert session.pending_bytes == 0
    session.close()


def test_frame_over_the_limit_is_refused_before_buffering(
    wormhole_servers: WormholeServers, spawn_peer: Any
):
    code = new_code()
    announced = 100 * 1024 * 1024
    peer = spawn_peer("send", *peer_args(wormhole_servers, code), "--size", str(announced))
    col = Collector()
    limit = 1024 * 1024
    session = open_session(wormhole_servers, code, CLIENT, col, max_frame_bytes=limit)
    peer.expect("opened", 10)
    cause = col.wait_lost(10)
    assert f"frame of {announced} bytes" in cause and f"limit of {limit} bytes" in cause
    assert session.frames_received == 0
    # refused on the header: at most a piece or two of the payload was ever read
    assert session.wire_bytes_received <= 2 * defaults.WRITE_PIECE_BYTES
    with pytest.raises(TransferError, match="limit"):
        session.send(b"more")
    peer_cause = peer.expect("lost", 10)["cause"]
    assert peer_cause.startswith("closed by peer: refused:") and "limit" in peer_cause


def test_wrong_code_fails_on_both_sides(wormhole_servers: WormholeServers, spawn_peer: Any):
    nameplate = new_code().split("-")[0]
    peer = spawn_peer("echo", *peer_args(wormhole_servers, f"{nameplate}-one-password"))
    started = time.monotonic()
    with pytest.raises(TransferError, match="wrong code") as info:
        open_session(wormhole_servers, f"{nameplate}-another-password", CLIENT, Collector(),
                     timeout=30.0)
    # Told by the PAKE, not found out by waiting: well before the open timeout.  (The
    # window includes the peer's interpreter start: seconds on a loaded machine.)
    assert not isinstance(info.value, TransferTimeout)
    assert time.monotonic() - started < 15
    err = peer.expect("error", 5)
    assert err["type"] == "TransferError" and "wrong code" in err["message"]


def test_sigkilled_peer_is_detected(wormhole_servers: WormholeServers, spawn_peer: Any):
    code = new_code()
    peer = spawn_peer("echo", *peer_args(wormhole_servers, code))
    col = Collector()
    session = open_session(wormhole_servers, code, CLIENT, col)
    peer.expect("opened", 10)
    session.send(b"ping")
    assert col.next_frame() == b"ping"
    os.kill(peer.pid, signal.SIGKILL)
    killed = time.monotonic()
    cause = col.wait_lost(defaults.HEARTBEAT_DEADLINE_S + LOST_MARGIN_S)
    detected = time.monotonic() - killed
    assert "peer lost" in cause and "heartbeat" in cause
    assert detected <= defaults.HEARTBEAT_DEADLINE_S + LOST_MARGIN_S
    assert not session.is_open
    with pytest.raises(SessionLost):
        session.send(b"after")
    started = time.monotonic()
    session.close()  # harmless after loss, and quick
    assert time.monotonic() - started < 1.0
    assert col.lost_calls == 1


def test_sigstopped_peer_is_detected_and_back_pressure_holds(
    wormhole_servers: WormholeServers, spawn_peer: Any
):
    code = new_code()
    peer = spawn_peer("echo", *peer_args(wormhole_servers, code))
    col = Collector()
    session = open_session(wormhole_servers, code, CLIENT, col)
    peer.expect("opened", 10)
    os.kill(peer.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        big = 64 * 1024 * 1024
        session.send(bytes(big))
        # the stopped peer reads nothing: dilation pauses us and the data stays queued
        assert not session.wait_drained(below=big // 2, timeout=1.0)
        assert session.pending_bytes >= big // 2
        cause = col.wait_lost(defaults.HEARTBEAT_DEADLINE_S + LOST_MARGIN_S)
        assert time.monotonic() - stopped <= defaults.HEARTBEAT_DEADLINE_S + LOST_MARGIN_S
        assert "peer lost" in cause
        assert session.pending_bytes == 0  # dropped with the session
    finally:
        os.kill(peer.pid, signal.SIGCONT)
    # once resumed, the peer notices the silence on its side too
    assert "peer lost" in peer.expect("lost", defaults.HEARTBEAT_DEADLINE_S + LOST_MARGIN_S)[
        "cause"
    ]


def test_clean_close_by_the_peer(wormhole_servers: WormholeServers, spawn_peer: Any):
    code = new_code()
    peer = spawn_peer("echo", *peer_args(wormhole_servers, code))
    col = Collector()
    session = open_session(wormhole_servers, code, CLIENT, col)
    peer.expect("opened", 10)
    session.send(b"!close")
    assert col.wait_lost(5) == "closed by peer: asked to"
    assert peer.expect("lost", 5)["cause"] == "closed locally"
    assert not session.is_open and session.cause == "closed by peer: asked to"
    with pytest.raises(TransferError, match="closed by peer"):
        session.send(b"late")


def test_loopback_only_advertises_only_127_0_0_1(
    wormhole_servers: WormholeServers, spawn_peer: Any
):
    code = new_code()
    peer = spawn_peer("echo", *peer_args(wormhole_servers, code))
    session = open_session(wormhole_servers, code, CLIENT, Collector())
    opened = peer.expect("opened", 10)
    relay_port = wormhole_servers.relay_port
    sides = [
        (session.listen_addresses, session.advertised_hints),
        (opened["listen_addresses"], opened["advertised_hints"]),
    ]
    for listeners, hints in sides:
        # dilation always starts a listener; it must be bound to loopback
        assert listeners, "no listener was recorded"
        assert all(addr.startswith("127.0.0.1:") for addr in listeners), listeners
        # whatever was advertised (direct hints may not be, if the relay won first)
        direct = [h for h in hints if not h.startswith("relay:")]
        assert all(h.startswith("tcp:127.0.0.1:") for h in direct), hints
        relays = [h for h in hints if h.startswith("relay:")]
        assert relays == [f"relay:tcp:127.0.0.1:{relay_port}"], hints
    for hint in session.peer_hints:  # what we received from the peer
        assert hint.startswith(("tcp:127.0.0.1:", "relay:tcp:127.0.0.1:")), hint
    session.close()


# --- both ends in this process ------------------------------------------------------------


def test_peer_that_never_shows_up_times_out(wormhole_servers: WormholeServers):
    started = time.monotonic()
    with pytest.raises(TransferTimeout, match="no peer completed the handshake within 1.5 s"):
        open_session(wormhole_servers, new_code(), CLIENT, Collector(), timeout=1.5)
    elapsed = time.monotonic() - started
    assert 1.4 <= elapsed < 4.0


def test_close_is_bounded_when_the_peer_is_frozen(
    wormhole_servers: WormholeServers, spawn_peer: Any
):
    code = new_code()
    peer = spawn_peer("echo", *peer_args(wormhole_servers, code))
    col = Collector()
    session = open_session(wormhole_servers, code, CLIENT, col, close_timeout=2.0)
    peer.expect("opened", 10)
    os.kill(peer.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        session.close()
        assert time.monotonic() - started < 2.0 + 1.5
        assert col.wait_lost(1) == "closed locally"
    finally:
        os.kill(peer.pid, signal.SIGCONT)


def test_both_ends_in_one_process_exchange_frames(wormhole_servers: WormholeServers):
    client, cc, worker, wc = open_pair(wormhole_servers)
    for i in range(50):
        client.send(b"c%d" % i)
        worker.send(b"w%d" % i)
    assert [wc.next_frame() for _ in range(50)] == [b"c%d" % i for i in range(50)]
    assert [cc.next_frame() for _ in range(50)] == [b"w%d" % i for i in range(50)]
    worker.close("done")
    assert cc.wait_lost(5) == "closed by peer: done"
    assert wc.wait_lost(5) == "closed locally"
    client.close()  # already ended: a no-op
    assert cc.lost_calls == 1 and wc.lost_calls == 1


def test_direct_path_without_relay_uses_the_loopback_listener(
    wormhole_servers: WormholeServers,
):
    """With no relay, only the direct loopback listener can carry the session."""
    client, cc, worker, wc = open_pair(
        wormhole_servers, client_kwargs={"transit": None}, worker_kwargs={"transit": None}
    )
    for session in (client, worker):
        assert session.listen_addresses and all(
            a.startswith("127.0.0.1:") for a in session.listen_addresses
        )
        assert not any(h.startswith("relay:") for h in session.advertised_hints)
    client.send(b"direct")
    assert wc.next_frame() == b"direct"
    client.close()
    assert wc.wait_lost(5) == "closed by peer"


def test_on_frame_errors_end_the_session_with_a_clear_cause(wormhole_servers: WormholeServers):
    client, cc, worker, wc = open_pair(wormhole_servers)

    def explode(frame: bytes) -> None:
        raise ValueError("consumer bug")

    worker._on_frame = explode  # the consumer's callback fails
    client.send(b"boom")
    assert wc.wait_lost(5) == "on_frame callback failed: ValueError: consumer bug"
    assert cc.wait_lost(5) == "closed by peer: the receiver failed to handle a frame"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"code": "not a code"}, "looks like"),
        ({"code": "abc-def"}, "looks like"),
        ({"role": "boss"}, "role must be"),
        ({"relay_url": "ws://192.0.2.1:4000/v1"}, "not on 127.0.0.1"),
        ({"transit": "tcp:relay.example:4001"}, "not on 127.0.0.1"),
        ({"timeout": 0}, "positive"),
    ],
)
def test_bad_arguments_are_refused_clearly(
    wormhole_servers: WormholeServers, kwargs: Dict[str, Any], message: str
):
    args: Dict[str, Any] = {
        "code": new_code(), "relay_url": wormhole_servers.relay_url,
        "transit": wormhole_servers.transit, "role": CLIENT, "timeout": 5.0,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        TransferSession.open(
            args.pop("code"), args.pop("relay_url"), args.pop("transit"),
            on_frame=lambda f: None, loopback_only=True, **args,
        )


def test_unreachable_mailbox_server_is_a_transfer_error():
    with WormholeServers() as servers:
        relay_url, transit = servers.relay_url, servers.transit
    started = time.monotonic()
    with pytest.raises(TransferError, match="mailbox server"):
        TransferSession.open(new_code(), relay_url, transit, role=CLIENT, on_frame=lambda f: None,
                     loopback_only=True, timeout=5)
    assert time.monotonic() - started < 5


def test_close_from_inside_on_frame_does_not_deadlock(wormhole_servers: WormholeServers):
    client, cc, worker, wc = open_pair(wormhole_servers)
    calls: queue.Queue[str] = queue.Queue()

    def close_on_frame(frame: bytes) -> None:
        worker.close("seen " + frame.decode())  # runs in the reactor thread
        calls.put("returned")

    worker._on_frame = close_on_frame
    client.send(b"last")
    assert calls.get(timeout=5) == "returned"
    assert cc.wait_lost(5) == "closed by peer: seen last"
    assert wc.wait_lost(5) == "closed locally"


def test_an_open_session_survives_the_mailbox_server_going_away():
    """After dilation the direct connection no longer needs the mailbox server."""
    servers = WormholeServers()
    try:
        client, cc, worker, wc = open_pair(
            servers, client_kwargs={"transit": None}, worker_kwargs={"transit": None}
        )
    finally:
        servers.stop()
    for i in range(100):
        client.send(b"%d" % i)
    assert [wc.next_frame() for _ in range(100)] == [b"%d" % i for i in range(100)]
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < defaults.SESSION_CLOSE_TIMEOUT_S + 1.5
    assert wc.wait_lost(5) == "closed by peer"


def test_a_dropped_tcp_connection_is_resumed_without_losing_frames(
    wormhole_servers: WormholeServers,
):
    """Dilation reconnects after a transient TCP loss and replays unacknowledged data; the
    session (and its frame order) survives."""
    from p2ppool.transfer import reactor as rx

    client, cc, worker, wc = open_pair(wormhole_servers)

    aborted = []

    def abort_connection() -> None:
        connection = client._dilated._manager._connection  # the current TCP generation
        aborted.append(connection)
        connection.transport.abortConnection()

    for i in range(200):
        client.send(b"%d" % i + bytes(10_000))
        if i == 50:
            rx.call(abort_connection, timeout=5)
    got = [wc.next_frame(timeout=10)[:3] for _ in range(200)]
    assert got == [(b"%d" % i + bytes(10_000))[:3] for i in range(200)]
    assert client.is_open and worker.is_open
    current = rx.call(lambda: client._dilated._manager._connection, timeout=5)
    assert current is not None and current is not aborted[0]  # a new generation carried on
    client.close()


def test_an_idle_healthy_session_outlives_the_heartbeat_deadline(
    wormhole_servers: WormholeServers,
):
    # 15 beats per deadline: a stall of the process shorter than 1.4 s loses nothing
    fast = {"heartbeat_s": 0.1, "heartbeat_deadline_s": 1.5}
    client, cc, worker, wc = open_pair(wormhole_servers, client_kwargs=fast, worker_kwargs=fast)
    # no application traffic for 2 deadlines: heartbeats alone keep both ends alive
    with pytest.raises(queue.Empty):
        cc.lost.get(timeout=3.0)
    assert wc.lost.empty() and client.is_open and worker.is_open
    client.send(b"still there?")
    assert wc.next_frame() == b"still there?"
    client.close()
