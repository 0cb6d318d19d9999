"""The paramiko board client against the real board server (and the real OpenSSH client)."""

from __future__ import annotations

import base64
import queue
import random
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, List

import pytest

from p2ppool.board import protocol
from p2ppool.board.auth import BoardIdentity
from p2ppool.board.client import (
    BoardClient,
    State,
    backoff_delay,
    learn_username,
    run_command,
)
from p2ppool.board.protocol import Accept, Hello, Message, Want, encode
from p2ppool.errors import AccessDenied, BoardAuthError, BoardConnectionError, HostKeyMismatch

pytestmark = pytest.mark.system

WAIT = 15.0  # upper bound of every wait in these tests (they normally take milliseconds)


#: A peer that writes with OpenSSH (``encode`` signs its lines by hand).
BOB_SSH = BoardIdentity("bob-ssh")


def hello(by: Any, slots: int = 1) -> Hello:
    """A Hello from ``by`` (a client or identity): a client signs for its own id only."""
    return Hello(
        sender=by.sender, ts=time.time(), ttl=60.0, role="worker", python="3.11",
        version="0.1", slots=slots,
    )


def client(board: Any, user: str, topic: str, *flags: str, **kwargs: Any) -> BoardClient:
    kwargs.setdefault("known_hosts", board.known_hosts)
    kwargs.setdefault("identity", board.key_path(user))
    return BoardClient(
        board.host, board.port, topic=topic, flags=list(flags), username=user,
        ssh_config="/dev/null", rng=random.Random(1), **kwargs,
    )


@pytest.fixture
def clients() -> Any:
    made: List[BoardClient] = []

    def make(board: Any, user: str, topic: str, *flags: str, **kwargs: Any) -> BoardClient:
        c = client(board, user, topic, *flags, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def pair(board: Any, clients: Callable[..., BoardClient], **kwargs: Any) -> Any:
    alice = clients(board, "alice", "alice/t", "-a", "alice,bob", **kwargs).connect()
    board.wait_members("alice/t", "pipe", 1, timeout=WAIT)
    bob = clients(board, "bob", "alice/t", **kwargs).connect()
    board.wait_members("alice/t", "pipe", 2, timeout=WAIT)
    return alice, bob


# --- delivery --------------------------------------------------------------------------------


def test_two_clients_exchange_messages(board_server: Any, clients: Any) -> None:
    alice, bob = pair(board_server, clients)
    assert alice.state is State.CONNECTED and bob.state is State.CONNECTED
    sent = hello(alice, slots=3)
    alice.publish(sent)
    assert bob.get(timeout=WAIT) == sent
    reply = Want(sender=bob.sender, ts=time.time(), ttl=60, job="j1", slots=2, python="3.11",
                 session=1)
    bob.publish(reply)
    assert alice.get(timeout=WAIT) == reply
    with pytest.raises(queue.Empty):
        alice.get(timeout=0.05)  # a pipe does not get its own lines back
    assert alice.drops == {} and bob.drops == {}
    alice.close()
    bob.close()
    assert alice.state is State.CLOSED and bob.state is State.CLOSED
    assert not alice._thread.is_alive() and not bob._thread.is_alive()  # type: ignore[union-attr]
    with pytest.raises(BoardConnectionError, match="closed"):
        alice.publish(sent)


def test_board_lines_are_not_held_back_by_nagle(board_server: Any, clients: Any) -> None:
    """The client's socket has TCP_NODELAY: a line written while the previous one is not yet
    acknowledged leaves at once instead of after the board's delayed ACK (about 40 ms; it
    was the gap between a pool's Hello and its Want reaching the workers)."""
    alice = clients(board_server, "alice", "alice/t").connect()
    raw = alice._session.connection.transport.sock  # type: ignore[union-attr]
    assert isinstance(raw, socket.socket)
    assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_an_owner_may_name_its_topic_without_its_user_name(board_server: Any,
                                                           clients: Any) -> None:
    """Signatures bind ``owner/name``: alice's ``t`` is the board's ``alice/t``."""
    alice = clients(board_server, "alice", "t", "-a", "alice,bob").connect()
    board_server.wait_members("alice/t", "pipe", 1, timeout=WAIT)
    bob = clients(board_server, "bob", "alice/t").connect()
    board_server.wait_members("alice/t", "pipe", 2, timeout=WAIT)
    assert alice.signed_topic == bob.signed_topic == "alice/t"
    sent = hello(alice)
    alice.publish(sent)
    assert bob.get(timeout=WAIT) == sent
    reply = hello(bob)
    bob.publish(reply)
    assert alice.get(timeout=WAIT) == reply
    assert alice.drops == {} and bob.drops == {}


def test_openssh_client_is_an_independent_peer(board_server: Any, clients: Any) -> None:
    alice = clients(board_server, "alice", "alice/t", "-a", "alice,bob").connect()
    board_server.wait_members("alice/t", "pipe", 1, timeout=WAIT)
    ssh = board_server.popen("bob", "pipe alice/t")
    board_server.wait_members("alice/t", "pipe", 2, timeout=WAIT)
    lines: queue.Queue[bytes] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in iter(ssh.stdout.readline, b"")], daemon=True
    ).start()

    sent = hello(alice)
    alice.publish(sent)
    assert protocol.decode(lines.get(timeout=WAIT), time.time(), "alice/t") == sent

    from_ssh = hello(BOB_SSH, slots=7)
    ssh.stdin.write(encode(from_ssh, BOB_SSH, "alice/t"))
    ssh.stdin.flush()
    assert alice.get(timeout=WAIT) == from_ssh
    ssh.stdin.close()
    assert ssh.wait(timeout=WAIT) == 0


def test_burst_of_1000_messages_arrives_complete_and_in_order(
    board_server: Any, clients: Any
) -> None:
    alice, bob = pair(board_server, clients)
    sent = [hello(alice, slots=i) for i in range(1000)]
    for msg in sent:
        alice.publish(msg)
    got = [bob.get(timeout=WAIT) for _ in sent]
    assert got == sent
    assert bob.drops == {}


def test_concurrent_publishers_never_interleave_lines(board_server: Any, clients: Any) -> None:
    alice, bob = pair(board_server, clients)
    per_thread = 200
    # Long lines (2.8 to 3.9 KiB) make a torn write show up as a malformed or oversized line.

    def send(thread: int) -> None:
        for i in range(per_thread):
            code = base64.b64encode(bytes([thread]) * (2100 + 3 * i)).decode()
            alice.publish(Accept(sender=alice.sender, ts=time.time(), ttl=60.0,
                                 job=f"t{thread}-{i}", worker="w", code=code))

    threads = [threading.Thread(target=send, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    got = [bob.get(timeout=WAIT) for _ in range(4 * per_thread)]
    assert bob.drops == {}
    for thread in range(4):
        mine = [m.job for m in got if m.job.startswith(f"t{thread}-")]
        assert mine == [f"t{thread}-{i}" for i in range(per_thread)]


def test_callback_delivery_and_pings_are_ignored(
    board_factory: Any, clients: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server sends ping@pico.sh channel requests; five pass and nothing is disturbed."""
    import paramiko
    from paramiko.common import MSG_CHANNEL_REQUEST

    pings = threading.Semaphore(0)
    table = paramiko.Transport._channel_handler_table
    original = table[MSG_CHANNEL_REQUEST]

    def counting(channel: Any, m: Any) -> Any:
        if b"ping@pico.sh" in m.asbytes()[:40]:
            pings.release()
        return original(channel, m)

    monkeypatch.setitem(table, MSG_CHANNEL_REQUEST, counting)
    board = board_factory(ping_interval_s=0.02)
    arrived: queue.Queue[Message] = queue.Queue()
    states: List[State] = []
    alice = clients(board, "alice", "alice/t", "-a", "alice,bob").connect()
    board.wait_members("alice/t", "pipe", 1, timeout=WAIT)
    bob = clients(board, "bob", "alice/t", on_message=arrived.put, on_state=states.append)
    bob.connect()
    board.wait_members("alice/t", "pipe", 2, timeout=WAIT)
    for i in range(5):
        assert pings.acquire(timeout=WAIT), "the server sent no ping"
        msg = hello(alice, slots=i)
        alice.publish(msg)
        assert arrived.get(timeout=WAIT) == msg
    assert states == [State.CONNECTING, State.CONNECTED]
    assert bob.reconnects == 0 and bob.drops == {} and alice.drops == {}


# --- garbage from a peer -----------------------------------------------------------------------


def test_garbage_and_oversized_lines_are_dropped_and_counted(
    board_server: Any, clients: Any
) -> None:
    alice = clients(board_server, "alice", "alice/t", "-a", "alice,bob").connect()
    board_server.wait_members("alice/t", "pipe", 1, timeout=WAIT)
    ssh = board_server.popen("bob", "pipe alice/t")
    board_server.wait_members("alice/t", "pipe", 2, timeout=WAIT)
    good = hello(BOB_SSH)
    line = encode(good, BOB_SSH, "alice/t")
    payload = (
        b"subscribe to this topic:\n"  # pico-style status text
        + bytes(range(256)) + b"\n"  # binary garbage (holds one newline in the middle too)
        + b'{"v":1,"type":"hello"\n'  # malformed JSON
        + b'{"v":99,"type":"hello","from":"x","ts":1,"ttl":1}\n'  # another protocol version
        + b"A" * (10 * 1024 * 1024) + b"\n"  # a 10 MB line
        # a line of protocol version 1 (unsigned), as an older p2ppool writes it
        + b'{"v":1,"type":"hello","from":"w1","ts":%d,"ttl":60,"role":"worker",' % time.time()
        + b'"python":"3.11","version":"0.1","slots":1}\n'
        + line
        + line  # a copy: replayed
        + line.replace(b'"slots":1', b'"slots":9')  # altered after signing: forged
    )
    ssh.stdin.write(payload)
    ssh.stdin.flush()
    assert alice.get(timeout=WAIT) == good
    drops = alice.drops
    assert drops["oversized"] == 1
    assert drops["version"] == 2
    assert drops["replayed"] == 1 and drops["signature"] == 1
    assert drops["malformed"] >= 1 and drops["text"] >= 2
    # The decoder is not disturbed: later messages still arrive.
    later = hello(BOB_SSH)
    ssh.stdin.write(encode(later, BOB_SSH, "alice/t"))
    ssh.stdin.flush()
    assert alice.get(timeout=WAIT) == later
    ssh.stdin.close()
    ssh.wait(timeout=WAIT)


def test_peer_dying_mid_line_does_not_corrupt_the_next_line(
    board_server: Any, clients: Any
) -> None:
    alice = clients(board_server, "alice", "alice/t", "-a", "alice,bob").connect()
    board_server.wait_members("alice/t", "pipe", 1, timeout=WAIT)
    bob = clients(board_server, "bob", "alice/t").connect()
    ssh = board_server.popen("bob", "pipe alice/t")
    board_server.wait_members("alice/t", "pipe", 3, timeout=WAIT)
    ssh.stdin.write(encode(hello(BOB_SSH), BOB_SSH, "alice/t")[:30])
    ssh.stdin.flush()
    ssh.kill()
    ssh.wait(timeout=WAIT)
    board_server.wait_members("alice/t", "pipe", 2, timeout=WAIT)
    whole = hello(bob)
    bob.publish(whole)
    # alice got the dangling half first: it is glued to the next line, which is then invalid
    # JSON; the line after that is clean again.  pico behaves the same (raw bytes).
    after = hello(bob)
    bob.publish(after)
    got = alice.get(timeout=WAIT)
    assert got in (whole, after)
    if got == whole:
        assert alice.get(timeout=WAIT) == after
    else:
        assert alice.drops.get("malformed", 0) + alice.drops.get("text", 0) == 1


# --- reconnect ------------------------------------------------------------------------------


def test_reconnects_after_the_server_restarts_on_the_same_port(
    board_server: Any, clients: Any
) -> None:
    from p2ppool.board.server import BoardServer

    alice, bob = pair(board_server, clients)
    before = hello(alice)
    alice.publish(before)
    assert bob.get(timeout=WAIT) == before
    port = board_server.port
    board_server.server.stop()
    assert alice.wait_for_state({State.RECONNECTING}, WAIT)
    assert bob.wait_for_state({State.RECONNECTING}, WAIT)
    with pytest.raises(BoardConnectionError, match="not connected"):
        alice.publish(hello(alice))
    restarted = BoardServer(
        listen=("127.0.0.1", port),
        host_key_path=board_server.host_key_path,
        users_path=board_server.users_path,
    ).start()
    try:
        board_server.server = restarted
        assert alice.wait_for_state({State.CONNECTED}, WAIT)
        # bob may be refused while alice's channel (and its access list) is not back yet;
        # that refusal is transient after a working session, so bob keeps retrying.
        board_server.wait_members("alice/t", "pipe", 2, timeout=WAIT)
        assert bob.wait_for_state({State.CONNECTED}, WAIT)
        after = hello(alice)
        alice.publish(after)
        assert bob.get(timeout=WAIT) == after
        assert alice.reconnects >= 1 and bob.reconnects >= 1
    finally:
        restarted.stop()


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    delays = [backoff_delay(n, 0.0) for n in range(10)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == 30.0
    assert backoff_delay(3, 0.999) == pytest.approx(4.0 * 1.24975)
    assert backoff_delay(10**6, 0.5) == pytest.approx(30.0 * 1.125)


# --- errors ----------------------------------------------------------------------------------


def test_unknown_key_is_refused_with_board_auth_error(board_server: Any) -> None:
    mallory = client(board_server, "alice", "alice/t", identity=board_server.key_path("mallory"))
    with pytest.raises(BoardAuthError, match=r"127\.0\.0\.1:\d+ refused the key"):
        mallory.connect()
    assert mallory.state is State.FAILED


def test_missing_identity_file_is_a_clear_error(board_server: Any, tmp_path: Path) -> None:
    c = client(board_server, "alice", "alice/t", identity=str(tmp_path / "nope"))
    with pytest.raises(BoardAuthError, match="does not exist"):
        c.connect()


def test_unreachable_port_fails_promptly_naming_host_and_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connection refused
        started = time.monotonic()
        c = BoardClient("127.0.0.1", port, topic="x", ssh_config="/dev/null",
                        known_hosts="/dev/null", identity=None)
        with pytest.raises(BoardConnectionError, match=f"127.0.0.1:{port}"):
            c.connect()
    assert time.monotonic() - started < 5.0


def test_silent_server_times_out_within_the_connect_timeout() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)  # accepts TCP but never speaks SSH
        port = s.getsockname()[1]
        started = time.monotonic()
        c = BoardClient("127.0.0.1", port, topic="x", ssh_config="/dev/null",
                        known_hosts="/dev/null", connect_timeout=1.0)
        with pytest.raises(BoardConnectionError, match=f"127.0.0.1:{port}"):
            c.connect()
    assert time.monotonic() - started < 5.0


def test_changed_host_key_is_refused(board_server: Any, tmp_path: Path) -> None:
    import paramiko

    other = paramiko.Ed25519Key.from_private_key_file(board_server.key_path("carol"))
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{board_server.port} ssh-ed25519 {other.get_base64()}\n")
    before = known.read_text()
    c = client(board_server, "alice", "alice/t", known_hosts=str(known))
    with pytest.raises(HostKeyMismatch) as info:
        c.connect()
    text = str(info.value)
    assert board_server.host_key_fingerprint in text
    assert "ssh-keygen -R" in text and str(known) in text
    assert known.read_text() == before


def test_first_contact_is_remembered_in_known_hosts(board_server: Any, tmp_path: Path) -> None:
    known = tmp_path / "sub" / "known_hosts"
    c = client(board_server, "alice", "alice/t", known_hosts=str(known)).connect()
    c.close()
    lines = known.read_text().splitlines()
    assert lines == [board_server.server.known_hosts_line()]
    # The second contact uses (and does not duplicate) the remembered key.
    client(board_server, "alice", "alice/t", known_hosts=str(known)).connect().close()
    assert known.read_text().splitlines() == lines
    # OpenSSH accepts the line we wrote.
    result = board_server.ssh("alice", "help", known_hosts=str(known))
    assert result.returncode == 0, result.stderr


def test_denied_topic_raises_access_denied(board_server: Any, clients: Any) -> None:
    clients(board_server, "alice", "alice/t", "-a", "alice,bob").connect()
    board_server.wait_members("alice/t", "pipe", 1, timeout=WAIT)
    carol = clients(board_server, "carol", "alice/t").connect()
    assert carol.wait_for_state({State.FAILED}, WAIT)
    assert isinstance(carol.error, AccessDenied)
    assert "access denied" in str(carol.error)
    with pytest.raises(AccessDenied):
        carol.publish(hello(carol))
    with pytest.raises(AccessDenied):
        carol.get(timeout=WAIT)
    assert board_server.server.channel_members("alice/t") == {"pipe": ["alice"]}


def test_bad_topic_and_flags_are_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match="topic"):
        BoardClient("127.0.0.1", 1, topic="a b", ssh_config="/dev/null")
    with pytest.raises(ValueError, match="flag"):
        BoardClient("127.0.0.1", 1, topic="t", flags=["-a", "x y"], ssh_config="/dev/null")


# --- one-shot commands, username --------------------------------------------------------------


def test_run_command_ls_lists_the_topic(board_server: Any, clients: Any) -> None:
    clients(board_server, "alice", "alice/t", "-a", "alice,bob").connect()
    board_server.wait_members("alice/t", "pipe", 1, timeout=WAIT)
    result = run_command(
        board_server.host, board_server.port, "ls", identity=board_server.key_path("alice"),
        known_hosts=board_server.known_hosts, ssh_config="/dev/null",
    )
    assert result.status == 0
    assert "- alice/t: (Access List: alice, bob)" in result.stdout


def test_learn_username_asks_the_board(board_server: Any) -> None:
    for name in ("alice", "bob"):
        assert learn_username(
            board_server.host, board_server.port, identity=board_server.key_path(name),
            known_hosts=board_server.known_hosts, ssh_config="/dev/null",
        ) == name


# --- ~/.ssh/config ------------------------------------------------------------------------------


def test_ssh_config_hostname_port_user_identity(
    board_server: Any, clients: Any, tmp_path: Path
) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host myboard\n"
        f"  HostName 127.0.0.1\n  Port {board_server.port}\n  User bob\n"
        f"  IdentityFile {board_server.key_path('bob')}\n"
        f"  UserKnownHostsFile {board_server.known_hosts}\n"
    )
    alice = clients(board_server, "alice", "alice/t", "-a", "alice,bob").connect()
    board_server.wait_members("alice/t", "pipe", 1, timeout=WAIT)
    bob = BoardClient("myboard", topic="alice/t", ssh_config=str(config)).connect()
    try:
        assert bob.target.user == "bob" and bob.target.port == board_server.port
        board_server.wait_members("alice/t", "pipe", 2, timeout=WAIT)
        assert sorted(board_server.server.channel_members("alice/t")["pipe"]) == ["alice", "bob"]
        msg = hello(alice)
        alice.publish(msg)
        assert bob.get(timeout=WAIT) == msg
    finally:
        bob.close()


def test_proxyjump_goes_through_the_jump_host(
    board_server: Any, clients: Any, tmp_path: Path
) -> None:
    """ProxyJump through a real paramiko SSH jump host (direct-tcpip forwarding)."""
    import paramiko

    from tests.fixtures.jumphost import JumpHost

    jump_key = paramiko.Ed25519Key.from_private_key_file(board_server.key_path("carol"))
    bob_key = paramiko.Ed25519Key.from_private_key_file(board_server.key_path("bob"))
    jump = JumpHost(host_key=jump_key, allowed_keys=[bob_key])
    try:
        known = tmp_path / "known_hosts"
        known.write_text(Path(board_server.known_hosts).read_text())  # board known, jump not
        config = tmp_path / "ssh_config"
        config.write_text(
            "Host jumpy\n  HostName 127.0.0.1\n"
            f"  Port {jump.port}\n  User hopper\n  IdentityFile {board_server.key_path('bob')}\n"
            "Host board\n  HostName 127.0.0.1\n"
            f"  Port {board_server.port}\n  ProxyJump jumpy\n"
            f"  IdentityFile {board_server.key_path('bob')}\n"
        )
        alice = clients(board_server, "alice", "alice/t", "-a", "alice,bob").connect()
        board_server.wait_members("alice/t", "pipe", 1, timeout=WAIT)
        bob = BoardClient("board", topic="alice/t", ssh_config=str(config),
                          known_hosts=str(known)).connect()
        try:
            board_server.wait_members("alice/t", "pipe", 2, timeout=WAIT)
            assert jump.forwarded == 1
            msg = hello(alice)
            alice.publish(msg)
            assert bob.get(timeout=WAIT) == msg
            back = hello(bob)
            bob.publish(back)
            assert alice.get(timeout=WAIT) == back
        finally:
            bob.close()
        # accept-new remembered the jump host too
        assert f"[127.0.0.1]:{jump.port} ssh-ed25519 {jump_key.get_base64()}" in known.read_text()
    finally:
        jump.close()


def test_proxyjump_to_a_refusing_jump_host_is_an_auth_error(
    board_server: Any, tmp_path: Path
) -> None:
    import paramiko

    from tests.fixtures.jumphost import JumpHost

    jump_key = paramiko.Ed25519Key.from_private_key_file(board_server.key_path("carol"))
    jump = JumpHost(host_key=jump_key, allowed_keys=[])
    try:
        config = tmp_path / "ssh_config"
        config.write_text(
            f"Host board\n  HostName 127.0.0.1\n  Port {board_server.port}\n"
            f"  ProxyJump hopper@127.0.0.1:{jump.port}\n"
            f"  IdentityFile {board_server.key_path('bob')}\n"
        )
        c = BoardClient("board", topic="alice/t", ssh_config=str(config),
                        known_hosts=str(tmp_path / "kh"), identity=board_server.key_path("bob"))
        with pytest.raises(BoardAuthError, match=f"127.0.0.1:{jump.port}"):
            c.connect()
    finally:
        jump.close()


# --- where keys come from ----------------------------------------------------------------------


def test_key_from_the_default_ssh_directory(
    board_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(board_server.key_path("carol"), home / ".ssh" / "id_ed25519")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    c = BoardClient(board_server.host, board_server.port, topic="t", ssh_config="/dev/null",
                    known_hosts=board_server.known_hosts).connect()
    try:
        board_server.wait_members("carol/t", "pipe", 1, timeout=WAIT)
    finally:
        c.close()


def test_key_from_the_ssh_agent(
    board_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    agent_bin, add_bin = shutil.which("ssh-agent"), shutil.which("ssh-add")
    if agent_bin is None or add_bin is None:
        pytest.skip("OpenSSH's ssh-agent/ssh-add are not installed")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen([agent_bin, "-D", "-a", str(sock)], stdout=subprocess.PIPE)
    try:
        # The agent prints its environment once its socket listens.
        ready = Lines(agent.stdout)
        assert ready.get(timeout=WAIT).startswith(b"SSH_AUTH_SOCK=")
        env = {"SSH_AUTH_SOCK": str(sock), "PATH": "/usr/bin:/bin"}
        added = subprocess.run([add_bin, board_server.key_path("bob")], env=env,
                               capture_output=True, timeout=WAIT)
        assert added.returncode == 0, added.stderr
        home = tmp_path / "home"
        home.mkdir()
        monkeypatch.setenv("HOME", str(home))  # no ~/.ssh keys: only the agent has one
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        c = BoardClient(board_server.host, board_server.port, topic="t",
                        ssh_config="/dev/null", known_hosts=board_server.known_hosts).connect()
        try:
            board_server.wait_members("bob/t", "pipe", 1, timeout=WAIT)
        finally:
            c.close()
    finally:
        agent.terminate()
        agent.wait(timeout=WAIT)
        assert agent.stdout is not None
        agent.stdout.close()


class Lines:
    """Lines of a pipe, read by a thread, so that a test can wait for one with a timeout."""

    def __init__(self, stream: Any) -> None:
        self._lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for line in iter(stream.readline, b""):
            self._lines.put(line)

    def get(self, timeout: float) -> bytes:
        return self._lines.get(timeout=timeout)


def test_a_reader_evicted_for_falling_behind_reconnects(board_factory: Any, clients: Any) -> None:
    """The board evicts a receiver that stops reading; the client comes back by itself."""
    from p2ppool.board.state import BufferPolicy

    board = board_factory(policy=BufferPolicy(max_buffer_bytes=64 * 1024,
                                              slow_reader_grace_s=0.3))
    release = threading.Event()
    got: queue.Queue[Message] = queue.Queue()
    reconnected = threading.Event()

    def stalled(msg: Message) -> None:
        got.put(msg)
        release.wait(WAIT)  # the owner's callback hangs: the reader stops reading

    def on_state(state: State) -> None:
        if state is State.CONNECTED and bob.reconnects:
            reconnected.set()

    alice = clients(board, "alice", "alice/t", "-a", "alice,bob").connect()
    board.wait_members("alice/t", "pipe", 1, timeout=WAIT)
    bob = clients(board, "bob", "alice/t", on_message=stalled, on_state=on_state).connect()
    board.wait_members("alice/t", "pipe", 2, timeout=WAIT)
    code = base64.b64encode(b"z" * 2750).decode()  # a line near 4 KiB
    stop = threading.Event()

    def flood() -> None:
        for _ in range(5000):  # about 20 MB: far more than SSH windows and the 64 KiB buffer
            if stop.is_set():
                return
            try:
                alice.publish(Accept(sender=alice.sender, ts=time.time(), ttl=60, job="j",
                                     worker="w", code=code))
            except BoardConnectionError:
                return

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        assert board.server.wait_for(
            lambda s: "bob" not in s.channel_members("alice/t").get("pipe", []), WAIT
        ), "the board never evicted the stalled reader"
    finally:
        stop.set()
        release.set()
        flooder.join(WAIT)
    assert reconnected.wait(WAIT), f"bob did not reconnect: {bob.state}"
    board.wait_members("alice/t", "pipe", 2, timeout=WAIT)
    assert alice.wait_for_state({State.CONNECTED}, WAIT)
    marker = hello(alice)
    alice.publish(marker)
    deadline = time.monotonic() + WAIT
    while True:
        msg = got.get(timeout=max(0.0, deadline - time.monotonic()))
        if msg == marker:
            break
    assert bob.error is None and bob.state is State.CONNECTED
