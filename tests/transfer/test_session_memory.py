"""Ended wormhole sessions are freed: nothing in the process keeps them (or their dilation
state) alive once the wormhole has closed.

Regression: Twisted keeps the last 200 log events until a program starts Twisted logging,
and wormhole's factories logged "Starting/Stopping factory" events holding the factory, so
the dilation state of the last ~17 ended sessions, and the sessions, stayed in memory.
These tests count live objects with weakrefs and ``gc``, not RSS.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
import weakref
from typing import Any, Callable, List

import pytest

from p2ppool.transfer import reactor as rx
from p2ppool.transfer.servers import WormholeServers
from p2ppool.transfer.session import CLIENT, WORKER, TransferSession, new_code
from tests.transfer.test_session import Collector, open_pair, open_session, peer_args

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]


def _dilation_manager(session: TransferSession) -> Any:
    return rx.call(lambda: session._dilated._manager, timeout=5)


def _wait_closed(refs: List[weakref.ReferenceType[TransferSession]]) -> None:
    """Wait (in the reactor) until the wormhole of every session still alive has closed."""
    from twisted.internet import defer

    def closing() -> Any:
        pending = []
        for ref in refs:
            session = ref()
            d = session._close_d if session is not None else None
            if d is not None:
                mine: Any = defer.Deferred()
                d.addBoth(lambda result, mine=mine: (mine.callback(None), result)[1])
                pending.append(mine)
        return defer.DeferredList(pending)

    rx.call(closing, timeout=10)


def _alive(refs: List[weakref.ReferenceType[Any]], timeout: float = 10.0) -> List[str]:
    """The objects still alive once ``timeout`` has passed (each with the types of what
    refers to it), or [] as soon as all are gone.

    Freeing has no event to wait for: the closed wormhole's last TCP teardown may still be
    queued in the reactor on a loaded machine, so collect, let the reactor turn, and check
    again until the deadline.  A real leak keeps its objects however long this waits.
    """
    deadline = time.monotonic() + timeout
    turn = threading.Event()
    while True:
        gc.collect()
        left = [r for r in refs if r() is not None]
        if not left or time.monotonic() >= deadline:
            break
        rx.call(lambda: None, timeout=5)  # one reactor turn
        turn.wait(0.05)
    return [f"{r()!r} held by {[type(o).__name__ for o in gc.get_referrers(r())]}"
            for r in left]


def _cycles(count: int, open_and_end: Callable[[], List[TransferSession]]) -> List[Any]:
    """Run ``count`` cycles; return weakrefs to every session and dilation manager."""
    refs: List[Any] = []
    for _ in range(count):
        sessions = open_and_end()
        for session in sessions:
            refs.append(weakref.ref(session))
        del sessions
    return refs


def test_closed_sessions_and_their_dilation_state_are_freed(
    wormhole_servers: WormholeServers,
) -> None:
    managers: List[Any] = []

    def open_and_close() -> List[TransferSession]:
        client, cc, worker, wc = open_pair(wormhole_servers)
        managers.extend(weakref.ref(_dilation_manager(s)) for s in (client, worker))
        client.send(b"x" * 1000)
        assert wc.next_frame() == b"x" * 1000
        client.close("done")
        assert wc.wait_lost(5) == "closed by peer: done"
        assert cc.wait_lost(5) == "closed locally"
        return [client, worker]

    refs = _cycles(5, open_and_close)
    _wait_closed(refs)
    assert len(refs) == 10 and len(managers) == 10
    assert _alive(refs) == []
    assert _alive(managers) == []


def test_sessions_whose_peer_was_killed_are_freed(
    wormhole_servers: WormholeServers, spawn_peer: Any
) -> None:
    def open_and_lose() -> List[TransferSession]:
        code = new_code()
        peer = spawn_peer("echo", *peer_args(wormhole_servers, code))
        col = Collector()
        # The peer beats at the default 1 s: a deadline of 3 s notices the kill quickly and
        # does not lose a live peer whose first beat comes late on a loaded machine.
        session = open_session(wormhole_servers, code, CLIENT, col, heartbeat_s=0.2,
                               heartbeat_deadline_s=3.0)
        peer.expect("opened", 10)
        session.send(b"ping")
        assert col.next_frame() == b"ping"
        os.kill(peer.pid, signal.SIGKILL)
        assert "peer lost" in col.wait_lost(10)
        return [session]

    refs = _cycles(3, open_and_lose)
    _wait_closed(refs)
    assert _alive(refs) == []


def test_an_ended_session_holds_nothing_of_its_owner(wormhole_servers: WormholeServers) -> None:
    """Even a session its owner keeps is a small shell: no callbacks, no wormhole."""

    class Owner:
        pass

    owner = Owner()
    owner_ref = weakref.ref(owner)
    code = new_code()
    got = threading.Event()
    holder: dict[str, TransferSession] = {}

    def open_worker() -> None:
        holder["w"] = TransferSession.open(code, wormhole_servers.relay_url,
                                           wormhole_servers.transit, role=WORKER,
                                           on_frame=lambda f: got.set(),
                                           loopback_only=True, timeout=10)

    opener = threading.Thread(target=open_worker)
    opener.start()
    client = TransferSession.open(code, wormhole_servers.relay_url, wormhole_servers.transit,
                          role=CLIENT, on_frame=lambda f, o=owner: None,
                          on_lost=lambda cause, o=owner: None, loopback_only=True, timeout=10)
    opener.join(15)
    client.send(b"hi")
    assert got.wait(5)
    del owner
    client.close()
    holder["w"].close()
    _wait_closed([weakref.ref(client), weakref.ref(holder["w"])])
    assert _alive([owner_ref]) == []  # the kept session no longer holds its callbacks
    assert client._dilated is None and client._wormhole is None
