"""One SSH connection per process per board target, shared by its sessions (issue 16).

Real components: the board server on 127.0.0.1 over real SSH, :class:`BoardClient` and
:mod:`p2ppool.board.transports`.  The server's ``accepted_connections`` counts TCP (= SSH)
connections, so "shared" is seen from the server's side as well as by transport identity.
"""

from __future__ import annotations

import multiprocessing
import queue
import random
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import paramiko
import pytest

from p2ppool import defaults
from p2ppool.board import transports
from p2ppool.board.client import BoardClient, State, run_command
from p2ppool.board.protocol import Hello
from p2ppool.board.sshconfig import SSHConnection, SSHTarget
from p2ppool.errors import BoardAuthError
from tests.fixtures.cluster import wait_until

pytestmark = pytest.mark.system

WAIT = 15.0  # upper bound of every wait (they normally take milliseconds)


def hello(by: BoardClient) -> Hello:
    return Hello(sender=by.sender, ts=time.time(), ttl=60.0, role="worker", python="3.11",
                 version="0.1", slots=1)


def make_client(board: Any, user: str, topic: str, *flags: str, **kwargs: Any) -> BoardClient:
    kwargs.setdefault("known_hosts", board.known_hosts)
    kwargs.setdefault("identity", board.key_path(user))
    return BoardClient(board.host, board.port, topic=topic, flags=list(flags), username=user,
                       ssh_config="/dev/null", rng=random.Random(1), **kwargs)


def transport_of(client: BoardClient) -> paramiko.Transport:
    session = client._session
    assert session is not None
    return session.connection.transport


def exit_code_in_fork(target: Callable[..., None], *args: Any) -> int | None:
    """Run ``target(*args)`` in a forked child; its exit code (killed if it hangs)."""
    child = multiprocessing.get_context("fork").Process(target=target, args=args)
    child.start()
    child.join(WAIT)
    if child.exitcode is None:
        child.kill()
        child.join(WAIT)
    return child.exitcode


@pytest.fixture(autouse=True)
def no_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last release closes at once unless a test sets a linger (the linger tests do)."""
    monkeypatch.setattr(defaults, "BOARD_IDLE_LINGER_S", 0.0)


@pytest.fixture
def clients() -> Any:
    made: List[BoardClient] = []

    def make(board: Any, user: str, topic: str, *flags: str, **kwargs: Any) -> BoardClient:
        c = make_client(board, user, topic, *flags, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
    assert transports.shared_targets() == [], "a test left a shared connection open"


@pytest.fixture
def gated_connect(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Hold every real connect until ``gate`` is set; ``calls`` counts them."""

    class Gate:
        gate = threading.Event()
        calls = 0

    real = transports.connect

    def connect(target: SSHTarget, timeout: float) -> SSHConnection:
        Gate.calls += 1
        assert Gate.gate.wait(WAIT)
        return real(target, timeout)

    monkeypatch.setattr(transports, "connect", connect)
    return Gate


def users_of(target: SSHTarget) -> int:
    entry = transports._entries.get(target)
    return entry.users if entry is not None else 0


def trio(board: Any, clients: Any) -> Any:
    """alice's two sessions a and b (one connection) and bob (another) on alice/t."""
    a = clients(board, "alice", "alice/t", "-a", "alice,bob").connect()
    board.wait_members("alice/t", "pipe", 1, timeout=WAIT)
    b = clients(board, "alice", "alice/t").connect()
    bob = clients(board, "bob", "alice/t").connect()
    board.wait_members("alice/t", "pipe", 3, timeout=WAIT)
    return a, b, bob


def test_two_clients_of_one_target_share_one_connection(board_server: Any,
                                                        clients: Any) -> None:
    a, b, bob = trio(board_server, clients)
    assert transport_of(a) is transport_of(b)
    assert transport_of(bob) is not transport_of(a)
    assert board_server.server.accepted_connections == 2  # alice's one, bob's one
    assert set(transports.shared_targets()) == {a.target, bob.target}
    for sender, other in ((a, b), (b, a)):  # each session's lines reach the other, too:
        sent = hello(sender)                # they are two channels, not one
        sender.publish(sent)
        assert bob.get(timeout=WAIT) == sent and other.get(timeout=WAIT) == sent
    sent = hello(bob)
    bob.publish(sent)
    assert a.get(timeout=WAIT) == sent and b.get(timeout=WAIT) == sent


def test_closing_one_client_leaves_the_other_working_and_the_last_closes_it(
    board_server: Any, clients: Any
) -> None:
    a, b, bob = trio(board_server, clients)
    shared = transport_of(a)
    a.close()
    assert shared.is_active()
    board_server.wait_members("alice/t", "pipe", 2, timeout=WAIT)
    sent = hello(b)
    b.publish(sent)
    assert bob.get(timeout=WAIT) == sent
    reply = hello(bob)
    bob.publish(reply)
    assert b.get(timeout=WAIT) == reply
    assert board_server.server.open_connections == 2
    b.close()
    assert not shared.is_active()
    assert b.target not in transports.shared_targets()
    assert board_server.server.wait_for(lambda s: s.open_connections == 1, WAIT)  # bob's


def test_one_shot_commands_use_the_shared_connection(board_server: Any, clients: Any) -> None:
    a = clients(board_server, "alice", "alice/t", "-a", "alice,bob").connect()
    board_server.wait_members("alice/t", "pipe", 1, timeout=WAIT)
    result = run_command(board_server.host, board_server.port, "ls", username="alice",
                         identity=board_server.key_path("alice"),
                         known_hosts=board_server.known_hosts, ssh_config="/dev/null")
    assert "alice/t" in result.stdout
    assert board_server.server.accepted_connections == 1
    assert transport_of(a).is_active() and users_of(a.target) == 1


def test_targets_that_differ_in_known_hosts_do_not_share(
    board_server: Any, clients: Any, tmp_path: Path
) -> None:
    other = tmp_path / "known_hosts_copy"
    shutil.copy(board_server.known_hosts, other)
    a = clients(board_server, "alice", "alice/a").connect()
    b = clients(board_server, "alice", "alice/b", known_hosts=str(other)).connect()
    assert a.target != b.target
    assert transport_of(a) is not transport_of(b)
    assert board_server.server.accepted_connections == 2


def test_concurrent_connects_wait_for_one_handshake(
    board_server: Any, clients: Any, gated_connect: Any
) -> None:
    made = [clients(board_server, "alice", f"alice/c{i}") for i in range(5)]
    errors: Dict[int, BaseException] = {}

    def run(i: int) -> None:
        try:
            made[i].connect()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    # All five are in: one is making the connection, four wait for its handshake.
    wait_until(lambda: users_of(made[0].target) == 5, "five users of one connection",
               timeout=WAIT, every=0.001)
    assert gated_connect.calls == 1
    gated_connect.gate.set()
    for thread in threads:
        thread.join(WAIT)
    assert errors == {}
    assert len({id(transport_of(c)) for c in made}) == 1
    assert gated_connect.calls == 1
    assert board_server.server.accepted_connections == 1
    board_server.wait_members("alice/c4", "pipe", 1, timeout=WAIT)


def test_a_refused_key_reaches_every_concurrent_connector_and_is_not_cached(
    board_server: Any, clients: Any, gated_connect: Any
) -> None:
    mallory = board_server.key_path("mallory")
    made = [clients(board_server, "alice", "alice/t", identity=mallory) for _ in range(3)]
    errors: queue.Queue[BaseException | None] = queue.Queue()

    def run(c: BoardClient) -> None:
        try:
            c.connect()
            errors.put(None)
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.put(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in made]
    for thread in threads:
        thread.start()
    wait_until(lambda: users_of(made[0].target) == 3, "three users waiting",
               timeout=WAIT, every=0.001)
    gated_connect.gate.set()
    for thread in threads:
        thread.join(WAIT)
    got = [errors.get_nowait() for _ in made]
    assert all(isinstance(e, BoardAuthError) for e in got), got
    assert len({str(e) for e in got}) == 1 and "refused the key" in str(got[0])
    assert len({id(e) for e in got}) == 3  # each its own copy (tracebacks do not mix)
    assert gated_connect.calls == 1 and board_server.server.accepted_connections == 1
    assert all(c.state is State.FAILED for c in made)
    assert transports.shared_targets() == []
    # Not cached: the next connect tries again (and is refused again).
    with pytest.raises(BoardAuthError, match="refused the key"):
        clients(board_server, "alice", "alice/t", identity=mallory).connect()
    assert gated_connect.calls == 2 and board_server.server.accepted_connections == 2


def test_waiters_connect_themselves_when_the_opener_is_interrupted(
    board_server: Any, clients: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only board errors are shared with the waiters: an opener interrupted by anything
    else (KeyboardInterrupt, a bug) leaves them to make the connection themselves."""
    gate = threading.Event()
    calls: List[int] = []
    real = transports.connect

    def connect(target: SSHTarget, timeout: float) -> SSHConnection:
        calls.append(1)
        if len(calls) == 1:
            assert gate.wait(WAIT)
            raise KeyboardInterrupt
        return real(target, timeout)

    monkeypatch.setattr(transports, "connect", connect)
    opener = clients(board_server, "alice", "alice/o")
    waiters = [clients(board_server, "alice", f"alice/w{i}") for i in range(3)]
    interrupted = threading.Event()

    def open_first() -> None:
        try:
            opener.connect()
        except KeyboardInterrupt:
            interrupted.set()

    threads = [threading.Thread(target=open_first)]
    threads[0].start()
    wait_until(lambda: users_of(opener.target) == 1, "the opener connecting",
               timeout=WAIT, every=0.001)
    threads += [threading.Thread(target=w.connect) for w in waiters]
    for thread in threads[1:]:
        thread.start()
    wait_until(lambda: users_of(opener.target) == 4, "three waiters",
               timeout=WAIT, every=0.001)
    gate.set()
    for thread in threads:
        thread.join(WAIT)
    assert interrupted.is_set() and opener.state is State.FAILED
    assert all(w.state is State.CONNECTED for w in waiters)
    assert len({id(transport_of(w)) for w in waiters}) == 1
    assert len(calls) == 2 and board_server.server.accepted_connections == 1
    assert users_of(opener.target) == 3


def test_after_a_drop_both_clients_reconnect_onto_one_new_connection(
    board_server: Any, clients: Any
) -> None:
    a, b, bob = trio(board_server, clients)
    old = transport_of(a)
    raw = old.sock
    assert isinstance(raw, socket.socket)
    raw.shutdown(socket.SHUT_RDWR)  # the network drops alice's connection
    for c in (a, b):
        assert c.wait_for_state({State.RECONNECTING}, WAIT)
    for c in (a, b):
        assert c.wait_for_state({State.CONNECTED}, WAIT)
    assert not old.is_active()
    new = transport_of(a)
    assert new is transport_of(b) and new is not old and new.is_active()
    # (bob's session ended with its owner's and came back; the board wants all three)
    board_server.wait_members("alice/t", "pipe", 3, timeout=WAIT)
    assert bob.wait_for_state({State.CONNECTED}, WAIT)
    sent = hello(bob)
    bob.publish(sent)
    assert a.get(timeout=WAIT) == sent and b.get(timeout=WAIT) == sent
    sent = hello(b)
    b.publish(sent)
    assert bob.get(timeout=WAIT) == sent
    assert users_of(a.target) == 2


def test_a_dead_connection_is_never_handed_out(board_server: Any, clients: Any) -> None:
    a = clients(board_server, "alice", "alice/a")
    held = transports.acquire(a.target, WAIT)  # a user that has not noticed the death yet
    try:
        old = held.transport
        old.close()  # the connection dies while a lease still holds it
        a.connect()
        assert transport_of(a) is not old and transport_of(a).is_active()
        assert board_server.server.accepted_connections == 2
        assert users_of(a.target) == 1  # the new one is a's alone
    finally:
        held.release()  # closes the dead one, and leaves a's alone
    assert transport_of(a).is_active() and users_of(a.target) == 1


def _child_after_fork(target: SSHTarget, lease: transports.Lease,
                      parent_transport: paramiko.Transport) -> None:
    """In a forked child: the cache is empty, an inherited lease is left alone, and a new
    connect makes the child's own connection."""
    import os

    code = 0
    try:
        if transports.shared_targets():
            code = 2
        lease.release()  # the parent's share: must not touch the parent's connection
        own = transports.acquire(target, WAIT)
        if own.transport is parent_transport or not own.transport.is_active():
            code = 3
        own.release()
        if transports.shared_targets():
            code = 4
    except BaseException:  # noqa: BLE001 - the exit code says it
        code = 5
    os._exit(code)


def test_a_forked_child_starts_with_no_shared_connection(board_server: Any,
                                                         clients: Any) -> None:
    a, b, bob = trio(board_server, clients)
    session = a._session
    assert session is not None
    assert exit_code_in_fork(_child_after_fork, a.target, session.lease, transport_of(a)) == 0
    # The parent's connection is untouched and still shared by a and b.
    assert users_of(a.target) == 2 and transport_of(a).is_active()
    assert board_server.server.accepted_connections == 3  # bob, alice, the child's own
    sent = hello(a)
    a.publish(sent)
    assert bob.get(timeout=WAIT) == sent


def test_the_fork_handler_clears_the_cache() -> None:
    target = SSHTarget("127.0.0.1", 1, "nobody")
    entry = transports._Entry(target, 1.0)
    transports._entries[target] = entry
    old_lock = transports._lock
    try:
        transports._after_fork_in_child()
        assert transports.shared_targets() == []
        assert transports._lock is not old_lock
    finally:
        transports._entries.pop(target, None)
