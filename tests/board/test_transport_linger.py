"""The idle linger of a shared board connection (``defaults.BOARD_IDLE_LINGER_S``).

Real components: the board server on 127.0.0.1 over real SSH, :class:`BoardClient` and
:mod:`p2ppool.board.transports`.  The server's ``accepted_connections`` /
``open_connections`` show from the server's side whether a handshake happened and whether a
connection is still there.  Every wait is on an observable state with a deadline; the only
timers are the linger's own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Iterator, List, Tuple

import paramiko
import pytest

from p2ppool import defaults
from p2ppool.board import transports
from p2ppool.board.client import BoardClient
from p2ppool.board.sshconfig import SSHConnection, SSHTarget
from p2ppool.errors import BoardConnectionError
from tests.board.test_shared_transport import (
    WAIT,
    exit_code_in_fork,
    make_client,
    transport_of,
    users_of,
    wait_until,
)

pytestmark = pytest.mark.system

SHORT = 0.2  # a linger the tests wait out (on the connection's state, not by sleeping)


@pytest.fixture
def linger(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``linger(seconds)`` sets the linger; lingering connections are closed afterwards."""

    def set_linger(seconds: float) -> None:
        monkeypatch.setattr(defaults, "BOARD_IDLE_LINGER_S", seconds)

    set_linger(60.0)
    made: List[BoardClient] = []
    yield set_linger, made
    for c in made:
        c.close()
    transports.close_idle()
    assert transports.shared_targets() == [], "a test left a shared connection open"


def client(board: Any, made: List[BoardClient], topic: str, user: str = "alice") -> BoardClient:
    c = make_client(board, user, topic)
    made.append(c)
    return c


def open_connections(board: Any, count: int) -> bool:
    return bool(board.server.wait_for(lambda s: s.open_connections == count, WAIT))


def test_a_client_after_the_last_one_closed_reuses_the_lingering_connection(
    board_server: Any, linger: Any
) -> None:
    _, made = linger
    first = client(board_server, made, "alice/one").connect()
    shared = transport_of(first)
    first.close()
    assert shared.is_active() and transports.shared_targets() == [first.target]
    assert users_of(first.target) == 0  # idle, lingering
    second = client(board_server, made, "alice/two").connect()
    assert transport_of(second) is shared
    assert board_server.server.accepted_connections == 1  # no second handshake
    assert board_server.server.open_connections == 1
    second.close()
    assert shared.is_active()  # lingers again


def test_after_the_linger_the_connection_is_closed(board_server: Any, linger: Any) -> None:
    set_linger, made = linger
    set_linger(SHORT)
    c = client(board_server, made, "alice/t").connect()
    shared = transport_of(c)
    assert open_connections(board_server, 1)
    started = time.monotonic()
    c.close()
    wait_until(lambda: not shared.is_active(), "the lingering connection closed")
    assert time.monotonic() - started >= SHORT * 0.9  # it did linger first
    assert transports.shared_targets() == []
    assert open_connections(board_server, 0)  # the server saw it go
    # The next client makes a new connection.
    again = client(board_server, made, "alice/t").connect()
    assert transport_of(again) is not shared and transport_of(again).is_active()
    assert board_server.server.accepted_connections == 2


def test_a_reused_connection_stays_open_while_held(board_server: Any, linger: Any) -> None:
    """alice's connection is reused within the linger; bob's, let go at the same time, is
    the clock: once it has closed, alice's linger is over too, and hers is still open."""
    set_linger, made = linger
    set_linger(SHORT)
    a = client(board_server, made, "alice/t").connect()
    bob = client(board_server, made, "bob/t", user="bob").connect()
    alices, bobs = transport_of(a), transport_of(bob)
    a.close()
    bob.close()
    again = client(board_server, made, "alice/u").connect()
    assert transport_of(again) is alices
    wait_until(lambda: not bobs.is_active(), "bob's connection closed after the linger")
    assert alices.is_active() and users_of(again.target) == 1
    assert open_connections(board_server, 1)
    assert board_server.server.accepted_connections == 2


def test_an_acquire_at_the_moment_the_linger_ends_keeps_the_connection(
    board_server: Any, linger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timer has fired but not yet taken the lock when the acquire comes: the acquire
    wins, and the timer closes nothing (neither then nor when a later timer is armed)."""
    set_linger, made = linger
    fired, go = threading.Event(), threading.Event()
    real = transports._expire

    def expire(entry: Any) -> None:
        fired.set()
        assert go.wait(WAIT)
        real(entry)

    monkeypatch.setattr(transports, "_expire", expire)
    set_linger(SHORT)
    target = client(board_server, made, "alice/t").target
    lease = transports.acquire(target, WAIT)
    shared = lease.transport
    lease.release()
    entry = transports._entries[target]
    timer = entry.timer
    assert timer is not None
    assert fired.wait(WAIT)  # the linger is over; the timer waits at the lock's door
    held = transports.acquire(target, WAIT)
    assert held.transport is shared and entry.timer is None
    held.release()  # idle again: a new timer, for a linger long enough not to end here
    set_linger(60.0)
    second = transports.acquire(target, WAIT)
    second.release()
    assert entry.timer is not None and entry.timer is not timer
    go.set()
    timer.join(WAIT)
    assert not timer.is_alive()
    assert shared.is_active() and transports.shared_targets() == [target]
    assert board_server.server.accepted_connections == 1
    assert transports.close_idle() == 1 and not shared.is_active()


def lingering(board: Any, made: Any) -> Tuple[BoardClient, paramiko.Transport, SSHConnection]:
    """A client that connected and closed: its connection (and transport) linger."""
    c = client(board, made, "alice/t").connect()
    session = c._session
    assert session is not None
    shared, connection = transport_of(c), session.connection
    c.close()
    return c, shared, connection


def test_a_lingering_connection_that_died_is_closed_not_handed_out(
    board_server: Any, linger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, made = linger
    c, old, old_connection = lingering(board_server, made)
    entry = transports._entries[c.target]
    timer = entry.timer
    assert timer is not None
    board_server.server.stop()  # the board goes: the lingering connection dies
    wait_until(lambda: not old.is_active(), "the lingering connection noticed")
    closed = spy_on_closes(monkeypatch)
    # (the board is gone, so the acquire that finds the dead one then fails to connect)
    with pytest.raises(BoardConnectionError):
        transports.acquire(c.target, 2.0)
    assert closed == [old_connection]  # closed by the acquire that found it dead
    assert timer.finished.is_set()  # and its linger timer cancelled
    assert transports.shared_targets() == []


def spy_on_closes(monkeypatch: pytest.MonkeyPatch) -> List[SSHConnection]:
    """The connections closed from now on (by transports or anyone), in order."""
    closed: List[SSHConnection] = []
    real_close = SSHConnection.close

    def close(self: SSHConnection) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(SSHConnection, "close", close)
    return closed


def test_a_lingering_connection_that_dropped_is_replaced_by_a_new_one(
    board_server: Any, linger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, made = linger
    c, old, old_connection = lingering(board_server, made)
    closed = spy_on_closes(monkeypatch)
    raw = old.sock
    assert isinstance(raw, socket.socket)
    raw.shutdown(socket.SHUT_RDWR)  # the network drops the idle connection
    wait_until(lambda: not old.is_active(), "the lingering connection noticed")
    again = client(board_server, made, "alice/u").connect()
    new = transport_of(again)
    assert new is not old and new.is_active()
    assert closed == [old_connection]  # the dead one was closed, not left to its timer
    assert board_server.server.accepted_connections == 2
    assert open_connections(board_server, 1)


def test_close_at_exit_closes_lingering_connections_and_later_releases_close_at_once(
    board_server: Any, linger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, made = linger
    monkeypatch.setattr(transports, "_exiting", False)  # restored after the test
    idle = client(board_server, made, "alice/idle").connect()
    held = client(board_server, made, "bob/held", user="bob").connect()
    idles = transport_of(idle)
    idle.close()
    assert open_connections(board_server, 2)
    transports._at_exit()  # what atexit runs
    assert not idles.is_active()
    assert transport_of(held).is_active()  # in use: not touched
    assert transports.shared_targets() == [held.target]
    assert open_connections(board_server, 1)
    helds = transport_of(held)
    held.close()  # after the exit handler: closes at once, no linger
    assert not helds.is_active() and transports.shared_targets() == []
    assert open_connections(board_server, 0)


def test_close_at_exit_does_not_wait_for_a_close_that_hangs(
    board_server: Any, linger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, made = linger
    monkeypatch.setattr(transports, "_exiting", False)
    monkeypatch.setattr(defaults, "BOARD_EXIT_CLOSE_S", SHORT)
    hang, closing = threading.Event(), threading.Event()
    real = transports._close_quietly

    def close_quietly(connection: SSHConnection | None) -> None:
        closing.set()
        assert hang.wait(WAIT)  # a server that is gone and a close that blocks on it
        real(connection)

    c = client(board_server, made, "alice/t").connect()
    shared = transport_of(c)
    c.close()
    monkeypatch.setattr(transports, "_close_quietly", close_quietly)
    started = time.monotonic()
    transports._at_exit()
    took = time.monotonic() - started
    assert closing.is_set() and took < SHORT + 2.0, took
    hang.set()
    wait_until(lambda: not shared.is_active(), "the close finished after all")


_CHILD = """
import atexit, sys
def after_ours():  # registered before transports is imported: runs after its handler
    from p2ppool.board import transports
    print("at exit:", len(transports.shared_targets()), transports._exiting, flush=True)
atexit.register(after_ours)
from p2ppool.board.client import BoardClient
host, port, key, known_hosts = sys.argv[1:5]
c = BoardClient(host, int(port), topic="alice/exit", username="alice", identity=key,
                known_hosts=known_hosts, ssh_config="/dev/null")
c.connect()
c.close()
from p2ppool.board import transports
print("lingering:", len(transports.shared_targets()), flush=True)
"""


def test_a_process_with_a_lingering_connection_exits_at_once_and_closes_it(
    board_server: Any
) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, board_server.host, str(board_server.port),
         board_server.key_path("alice"), board_server.known_hosts],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["lingering: 1", "at exit: 0 True"], result.stdout
    assert took < 15.0, took  # not the 30 s linger
    assert board_server.server.accepted_connections == 1
    assert open_connections(board_server, 0)


def _child_with_parents_lingering(entry: Any, parent_transport: paramiko.Transport) -> None:
    code = 0
    try:
        if transports.shared_targets():
            code = 2
        transports._expire(entry)  # the parent's timer, had it survived the fork
        if transports.close_idle() != 0:
            code = 3
        if not parent_transport.is_active():  # (the child's view of the parent's object)
            code = 4
    except BaseException:  # noqa: BLE001 - the exit code says it
        code = 5
    os._exit(code)


def test_a_forked_child_never_closes_the_parents_lingering_connection(
    board_server: Any, linger: Any
) -> None:
    _, made = linger
    c = client(board_server, made, "alice/t").connect()
    shared = transport_of(c)
    c.close()
    entry = transports._entries[c.target]
    assert entry.timer is not None
    assert exit_code_in_fork(_child_with_parents_lingering, entry, shared) == 0
    assert shared.is_active() and transports.shared_targets() == [c.target]
    assert board_server.server.open_connections == 1
    again = client(board_server, made, "alice/u").connect()
    assert transport_of(again) is shared


def test_a_linger_of_zero_closes_at_the_last_release(board_server: Any, linger: Any) -> None:
    set_linger, made = linger
    set_linger(0.0)
    target: SSHTarget = client(board_server, made, "alice/t").target
    lease = transports.acquire(target, WAIT)
    shared = lease.transport
    lease.release()
    assert not shared.is_active() and transports.shared_targets() == []
    assert open_connections(board_server, 0)
