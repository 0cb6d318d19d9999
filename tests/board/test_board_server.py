"""The board server against the real OpenSSH client (``/usr/bin/ssh``), all on 127.0.0.1.

Synchronisation: the server's membership (``board.wait_members``) and reads with timeouts;
no sleeps.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import paramiko
import pytest

from p2ppool.board.state import BufferPolicy

pytestmark = pytest.mark.system

CLIENT_ID = r"[0-9a-f-]{36} \((\w+)@127\.0\.0\.1:\d+\)"


def writer_thread(session: Any, data: bytes, close: bool = True) -> threading.Thread:
    """Write ``data`` to a session's stdin in the background (large writes would block)."""

    def run() -> None:
        try:
            session.send(data)
            if close:
                session.close_stdin()
        except (BrokenPipeError, ValueError):
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --- commands and texts -----------------------------------------------------------------


def test_help(board_server: Any) -> None:
    result = board_server.ssh("alice", "help")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert text.startswith(f"Command: ssh -p {board_server.port} 127.0.0.1 <command> [args...]\r\n")
    assert "  pipe <topic> [flags]        Bidirectional messaging between clients\r\n" in text
    assert text.endswith("\n") and not text.endswith("\r\n\n")
    # an empty command (shell request) prints the same help
    shell = subprocess.run(
        board_server.ssh_argv("alice", "")[:-1], input=b"", capture_output=True, timeout=20
    )
    assert shell.returncode == 0 and shell.stdout == result.stdout


def test_user_names_the_key_on_the_first_line(board_server: Any) -> None:
    result = board_server.ssh("bob", "user")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().split("\n")
    assert lines[0] == "bob"
    assert lines[1] == board_server.keys["bob"].fingerprint
    assert result.stdout.endswith(b"\r\n")


def test_usage_and_invalid_args(board_server: Any) -> None:
    result = board_server.ssh("alice", "pub t -x")
    assert result.returncode == 1
    assert result.stdout.startswith(b"flag provided but not defined: -x\nUsage: pub <topic>")
    assert result.stderr == b"invalid cmd args\n\r"
    result = board_server.ssh("alice", "sub -h")
    assert result.returncode == 1 and result.stdout.startswith(b"Usage: sub <topic> [args...]\n")


def test_unknown_command_prints_nothing_and_succeeds(board_server: Any) -> None:
    result = board_server.ssh("alice", "monitor t 1h")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_command_too_long(board_server: Any) -> None:
    result = board_server.ssh("alice", "pub " + "x" * 2000)
    assert result.returncode == 1
    assert result.stderr == b"command too long (more than 1024 bytes)\n\r"


def alice_transport(board: Any) -> paramiko.Transport:
    transport = paramiko.Transport(("127.0.0.1", board.port))
    key = paramiko.Ed25519Key.from_private_key_file(board.key_path("alice"))
    transport.connect(hostkey=board.server.host_key, pkey=key)
    return transport


def test_pty_is_refused(board_server: Any) -> None:
    transport = alice_transport(board_server)
    try:
        channel = transport.open_session(timeout=10)
        with pytest.raises(paramiko.SSHException):
            channel.get_pty()  # refused (paramiko then closes that channel)
        channel = transport.open_session(timeout=10)
        channel.exec_command("help")
        channel.settimeout(10)
        data = b""
        while True:
            chunk = channel.recv(65536)
            if not chunk:
                break
            data += chunk
        assert channel.recv_exit_status() == 0
        assert data == board_server.ssh("alice", "help").stdout
    finally:
        transport.close()


# --- authentication and host keys -------------------------------------------------------


def test_unknown_key_refused_at_authentication(board_server: Any) -> None:
    result = board_server.ssh("mallory", "ls")
    assert result.returncode == 255
    assert b"Permission denied (publickey)" in result.stderr


def test_login_name_is_ignored(board_server: Any) -> None:
    argv = board_server.ssh_argv("alice", "pub t -b=false -c")
    argv[argv.index("-l") + 1] = "root"
    result = subprocess.run(argv, input=b"x", capture_output=True, timeout=20)
    assert result.returncode == 0
    # alice's key means alice: her namespace, whatever the login name


def test_changed_host_key_makes_ssh_fail(board_server: Any, tmp_path: Path) -> None:
    other = paramiko.Ed25519Key.from_private_key_file(board_server.keys["bob"].path)
    known = tmp_path / "known_hosts_other"
    known.write_text(f"[127.0.0.1]:{board_server.port} ssh-ed25519 {other.get_base64()}\n")
    result = board_server.ssh("alice", "help", known_hosts=str(known))
    assert result.returncode == 255
    assert b"REMOTE HOST IDENTIFICATION HAS CHANGED" in result.stderr
    assert result.stdout == b""


def test_host_key_persists_across_restarts(board_factory: Callable[..., Any]) -> None:
    first = board_factory()
    first.server.stop()
    from p2ppool.board.server import BoardServer

    again = BoardServer(
        host_key_path=first.host_key_path, users_path=first.users_path
    ).start()
    try:
        assert again.host_key_fingerprint == first.host_key_fingerprint
        assert os.stat(first.host_key_path).st_mode & 0o777 == 0o600
    finally:
        again.stop()


def test_users_file_is_reloaded(board_server: Any) -> None:
    assert board_server.ssh("mallory", "ls").returncode == 255
    with open(board_server.users_path, "a") as handle:
        handle.write(f"mallory {board_server.keys['mallory'].public_line}\n")
    os.utime(board_server.users_path, (0, 1))  # a distinct mtime even within one second
    result = board_server.ssh("mallory", "ls")
    assert (result.returncode, result.stdout) == (0, b"no pubsub channels found\n")


def test_keepalive_global_request_is_answered(board_server: Any) -> None:
    transport = alice_transport(board_server)
    try:
        reply = transport.global_request("keepalive@openssh.com", wait=True)
        assert reply is not None  # None would mean the server refused it
        assert transport.global_request("no-such-request@example.org", wait=True) is None
    finally:
        transport.close()


# --- namespacing and access lists --------------------------------------------------------


def test_pipe_with_access_list_reaches_bob_and_refuses_carol(board_server: Any) -> None:
    alice = board_server.session("alice", "pipe t -a bob")
    board_server.wait_members("alice/t", "pipe", 1)
    bob = board_server.session("bob", "pipe alice/t")
    board_server.wait_members("alice/t", "pipe", 2)
    alice.send(b"hello bob\n")
    assert bob.out.read_line() == b"hello bob\n"
    bob.send(b"hi alice\n")
    assert alice.out.read_line() == b"hi alice\n"
    for command in ("sub alice/t", "pipe alice/t", "pub alice/t -b=false"):
        result = board_server.ssh("carol", command)
        assert (result.returncode, result.stderr) == (1, b"access denied\n\r"), command
    # carol's own "t" is her own channel, isolated from alice's
    carol = board_server.session("carol", "pipe t")
    board_server.wait_members("carol/t", "pipe", 1)
    alice.send(b"second\n")
    assert bob.out.read_line() == b"second\n"
    carol.close_stdin()
    assert carol.wait() == 0 and carol.out.read_to_eof() == b""
    alice.close_stdin()
    assert alice.wait() == 0
    assert bob.wait() == 0  # departure rule: the other pipe of a pair is ended, exit 0


def test_access_by_fingerprint(board_server: Any) -> None:
    fp = board_server.keys["carol"].fingerprint
    alice = board_server.session("alice", f"pipe t -a {fp}")
    board_server.wait_members("alice/t", "pipe", 1)
    carol = board_server.session("carol", "sub alice/t")
    board_server.wait_members("alice/t", "sub", 1)
    alice.send(b"for carol\n")
    assert carol.out.read_line() == b"for carol\n"
    assert board_server.ssh("bob", "sub alice/t").stderr == b"access denied\n\r"


def test_foreign_topic_not_open_is_denied(board_server: Any) -> None:
    result = board_server.ssh("bob", "sub alice/t")
    assert (result.returncode, result.stderr) == (1, b"access denied\n\r")


def test_ls_lists_the_topic_in_pico_format(board_server: Any) -> None:
    assert board_server.ssh("alice", "ls").stdout == b"no pubsub channels found\n"
    alice = board_server.session("alice", "pipe t -a bob,carol")
    board_server.wait_members("alice/t", "pipe", 1)
    bob = board_server.session("bob", "sub alice/t")
    board_server.wait_members("alice/t", "sub", 1)
    waiting = board_server.session("alice", "pub w")
    board_server.wait_members("alice/w", "waiting-pub", 1)
    result = board_server.ssh("alice", "ls")
    assert result.returncode == 0
    text = result.stdout.decode()
    pattern = (
        r"Channel Information\r\n"
        r"- alice/t: \(Access List: bob, carol\)\r\n"
        rf"  Subs:\r\n  - {CLIENT_ID}\r\n"
        rf"  Pipes:\r\n  - {CLIENT_ID}\r\n"
        r"- alice/w:\r\n"
        rf"  Waiting Pubs:\r\n  - {CLIENT_ID}\r\n"
    )
    match = re.fullmatch(pattern, text)
    assert match, text
    assert match.groups() == ("bob", "alice", "alice")
    # bob's own listing does not show alice's channels
    assert board_server.ssh("bob", "ls").stdout == b"no pubsub channels found\n"
    for session in (alice, bob, waiting):
        session.kill()


# --- pub / sub ---------------------------------------------------------------------------


def test_pub_sub_flow_status_texts_and_exit(board_server: Any) -> None:
    sub = board_server.session("alice", "sub t")
    board_server.wait_members("alice/t", "sub", 1)
    result = board_server.ssh("alice", "pub t", input=b"hello\nworld\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"subscribe to this channel:\n  ssh -p {board_server.port} 127.0.0.1 sub t\n"
        "sending msg ...\nmsg sent!\n"
    ).encode()
    # the sub gets the data, then ends (no pub left) with everything flushed and exit 0
    assert sub.out.read_to_eof() == b"hello\nworld\n"
    assert sub.wait() == 0


def test_blocking_pub_waits_for_a_subscriber(board_server: Any) -> None:
    pub = board_server.session("alice", "pub t")
    assert pub.out.read_line() == b"subscribe to this channel:\n"
    pub.out.read_line()
    assert pub.out.read_line() == b"no subs found ... waiting 720h0m0s\n"
    pub.send(b"kept until a sub comes\n")
    pub.close_stdin()
    sub = board_server.session("bob", "sub alice/t")  # not allowed: no access list
    assert sub.wait() == 1
    sub = board_server.session("alice", "sub t")
    assert pub.out.read_line() == b"sending msg ...\n"
    assert sub.out.read_to_eof() == b"kept until a sub comes\n"
    assert pub.wait() == 0 and sub.wait() == 0


def test_pub_timeout(board_server: Any) -> None:
    result = board_server.ssh("alice", "pub t -t 200ms")
    assert result.returncode == 1
    assert result.stdout.endswith(b"no subs found ... waiting 200ms\n")
    assert result.stderr == b"timeout reached, exiting\n\r"
    quiet = board_server.ssh("alice", "pub t -t=0s -c")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (1, b"", b"")


def test_pub_nonblocking_drops_when_alone(board_server: Any) -> None:
    result = board_server.ssh("alice", "pub t -b=false", input=b"nobody hears this\n")
    assert result.returncode == 0
    assert b"no subs found" not in result.stdout and result.stdout.endswith(b"msg sent!\n")


def test_pub_empty_message_sends_one_nul(board_server: Any) -> None:
    sub = board_server.session("alice", "sub t")
    board_server.wait_members("alice/t", "sub", 1)
    result = board_server.ssh("alice", "pub t -e -c")
    assert (result.returncode, result.stdout) == (0, b"")
    assert sub.out.read_to_eof() == b"\x00"


def test_sub_keepalive_survives_publishers(board_server: Any) -> None:
    sub = board_server.session("alice", "sub t -k")
    board_server.wait_members("alice/t", "sub", 1)
    for word in (b"one\n", b"two\n"):
        assert board_server.ssh("alice", "pub t -c", input=word).returncode == 0
        assert sub.out.read_line() == word
    assert sub.process.poll() is None
    sub.kill()


def test_public_topic(board_server: Any) -> None:
    sub = board_server.session("carol", "sub -p news")
    board_server.wait_members("public/news", "sub", 1)
    result = board_server.ssh("alice", "pub news -p", input=b"extra\n")
    assert result.stdout.startswith(
        f"subscribe to this channel:\n  ssh -p {board_server.port} 127.0.0.1 sub -p news\n".encode()
    )
    assert sub.out.read_to_eof() == b"extra\n"


# --- pipe ----------------------------------------------------------------------------------


def test_pipe_replay(board_server: Any) -> None:
    pipe = board_server.session("alice", "pipe t -r")
    board_server.wait_members("alice/t", "pipe", 1)
    pipe.send(b"echo me\n")
    assert pipe.out.read_line() == b"echo me\n"
    pipe.close_stdin()
    assert pipe.wait() == 0


def test_pipe_without_topic_prints_where_to_subscribe(board_server: Any) -> None:
    pipe = board_server.session("alice", "pipe")
    assert pipe.out.read_line() == b"subscribe to this topic:\n"
    line = pipe.out.read_line().decode()
    assert re.fullmatch(rf"  ssh -p {board_server.port} 127\.0\.0\.1 sub [0-9a-f-]{{36}}\n", line)
    pipe.close_stdin()
    assert pipe.wait() == 0


def test_burst_of_1000_messages_in_order(board_server: Any) -> None:
    alice = board_server.session("alice", "pipe t -a bob")
    board_server.wait_members("alice/t", "pipe", 1)
    bob = board_server.session("bob", "pipe alice/t")
    board_server.wait_members("alice/t", "pipe", 2)
    lines = [b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * (i % 50)) for i in range(1000)]
    writer_thread(alice, b"".join(lines), close=False)
    got = [bob.out.read_line() for _ in range(1000)]
    assert got == lines


def test_round_robin_sends_each_message_to_exactly_one_subscriber(board_server: Any) -> None:
    creator = board_server.session("alice", "pipe t -d round_robin")  # fixes the dispatcher
    board_server.wait_members("alice/t", "pipe", 1)
    readers = [board_server.session("alice", "sub t -k") for _ in range(2)]
    board_server.wait_members("alice/t", "sub", 2)
    creator.close_stdin()  # the channel keeps its dispatcher while the (-k) readers stay
    board_server.wait_members("alice/t", "pipe", 0)
    lines = [b"message %d\n" % i for i in range(10)]
    for line in lines:  # one pub, one chunk each
        result = board_server.ssh("alice", "pub t", input=line)
        assert result.returncode == 0, result.stderr
    got = [[reader.out.read_line() for _ in range(5)] for reader in readers]
    assert sorted(got[0] + got[1]) == sorted(lines)  # each message once, none twice
    assert got[0] in (lines[0::2], lines[1::2])  # strictly taking turns


def test_ten_megabyte_line_is_delivered_byte_exact(board_server: Any) -> None:
    alice = board_server.session("alice", "pipe t -a bob")
    board_server.wait_members("alice/t", "pipe", 1)
    bob = board_server.session("bob", "pipe alice/t")
    board_server.wait_members("alice/t", "pipe", 2)
    line = bytes(random.Random(1).choice(b"abcdefghij") for _ in range(1000)) * 10_000 + b"\n"
    writer_thread(alice, line, close=False)
    got = bob.out.read_exactly(len(line), timeout=30)
    assert hashlib.sha256(got).digest() == hashlib.sha256(line).digest()
    alice.send(b"after\n")
    assert bob.out.read_line() == b"after\n"


def test_binary_garbage_is_forwarded_byte_exact(board_server: Any) -> None:
    sub = board_server.session("alice", "sub t")
    board_server.wait_members("alice/t", "sub", 1)
    blob = random.Random(7).randbytes(1_000_000) + bytes(range(256)) + b"\r\n\x00\xff"
    result = board_server.ssh("alice", "pub t -c", input=blob, timeout=30)
    assert result.returncode == 0
    assert sub.out.read_to_eof(timeout=30) == blob


def test_peer_dying_mid_line_leaves_others_unaffected(board_server: Any) -> None:
    alice = board_server.session("alice", "pipe t -a bob")
    board_server.wait_members("alice/t", "pipe", 1)
    bob = board_server.session("bob", "pipe alice/t")
    dying = board_server.session("alice", "pipe t")
    board_server.wait_members("alice/t", "pipe", 3)
    dying.send(b"half a li")
    assert bob.out.read_exactly(9) == b"half a li"
    assert alice.out.read_exactly(9) == b"half a li"
    dying.kill()
    board_server.wait_members("alice/t", "pipe", 2)
    # raw bytes: the dead peer's fragment stays as it was; new data flows on
    alice.send(b"ne\nnext line\n")
    assert bob.out.read_line() == b"ne\n"
    assert bob.out.read_line() == b"next line\n"
    bob.send(b"still here\n")
    assert alice.out.read_line() == b"still here\n"
    assert alice.process.poll() is None and bob.process.poll() is None


def test_slow_reader_is_disconnected_and_others_keep_receiving(
    board_factory: Callable[..., Any],
) -> None:
    board = board_factory(
        policy=BufferPolicy(max_buffer_bytes=1024 * 1024, slow_reader_grace_s=3.0),
        flush_timeout_s=30.0,
    )
    slow = board.session("alice", "sub t -k")
    fast = board.session("alice", "sub t -k")
    board.wait_members("alice/t", "sub", 2)
    data = random.Random(3).randbytes(12 * 1024 * 1024)
    pub = board.session("alice", "pub t -c")
    writer_thread(pub, data)
    # The slow reader never reads stdout; the fast one gets everything, in order.
    got = fast.out.read_exactly(len(data), timeout=60)
    assert got == data
    assert pub.wait(timeout=30) == 0
    board.wait_members("alice/t", "sub", 1)  # the slow reader was evicted
    # Now read the slow reader: a byte-exact prefix, then the message and exit status 1.
    prefix = slow.out.read_to_eof(timeout=30)
    assert 0 < len(prefix) < len(data) and data.startswith(prefix)
    assert slow.wait(timeout=30) == 1
    message = slow.err.read_to_eof(timeout=10)
    assert message.startswith(b"you fell behind on alice/t: more than 1048576 bytes")
    assert message.endswith(b"\n\r")
    assert fast.process.poll() is None  # -k: still subscribed
    fast.kill()


def test_sessions_per_key_limit(board_factory: Callable[..., Any]) -> None:
    board = board_factory(max_sessions_per_key=1)
    first = board.session("alice", "sub t -k")
    board.wait_members("alice/t", "sub", 1)
    result = board.ssh("alice", "sub u")
    assert result.returncode == 1
    assert result.stderr.startswith(b"too many sessions for this key (limit 1)")
    assert board.ssh("bob", "ls").returncode == 0  # other keys are not affected
    first.kill()


def test_refused_sessions_do_not_count_against_the_limit(
    board_factory: Callable[..., Any],
) -> None:
    board = board_factory(max_sessions_per_key=1)
    for _ in range(2):
        assert board.ssh("alice", "sub bob/x").stderr == b"access denied\n\r"
    sub = board.session("alice", "sub t -k")
    board.wait_members("alice/t", "sub", 1)
    sub.kill()


def test_ping_requests_every_interval(board_factory: Callable[..., Any]) -> None:
    board = board_factory(ping_interval_s=0.2)
    sub = board.session("alice", "sub t -k", options=["-v"])
    pings = 0
    while pings < 2:  # OpenSSH logs each channel request it receives at debug level
        line = sub.err.read_line(timeout=10)
        pings += b"ping@pico.sh" in line
    assert sub.process.poll() is None
    sub.kill()


def test_unauthenticated_connection_is_closed(board_factory: Callable[..., Any]) -> None:
    # 2 s: the key exchange must finish before the timeout (0.5 s was tight for a loaded
    # machine; the server's hang-up during the exchange failed start_client instead).
    board = board_factory(auth_timeout_s=2.0)
    transport = paramiko.Transport(("127.0.0.1", board.port))
    try:
        transport.start_client(timeout=10)  # key exchange, then no authentication
        transport.join(timeout=10)  # the transport thread ends when the server hangs up
        assert not transport.is_active()
    finally:
        transport.close()


def test_stop_is_bounded_with_sessions_open(board_factory: Callable[..., Any]) -> None:
    board = board_factory()
    sub = board.session("alice", "sub t -k")
    board.wait_members("alice/t", "sub", 1)
    board.server.stop(timeout=5.0)
    assert sub.wait(timeout=10) in (0, 1, 255)
    assert not any(t.is_alive() for t in board.server._threads)


# --- command line --------------------------------------------------------------------------


def test_cli_runs_board(tmp_path: Path, board_keys: Any) -> None:
    users = tmp_path / "users"
    users.write_text(f"alice {board_keys['alice'].public_line}\n")
    host_key = tmp_path / "sub" / "host_key"
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2ppool", "board", "--listen", "127.0.0.1:0",
         "--host-key", str(host_key), "--users", str(users)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        match = re.match(r"board listening on 127\.0\.0\.1:(\d+)", first)
        assert match, first + proc.stderr.read().decode() if proc.poll() is not None else first
        port = int(match.group(1))
        proc.stdout.readline()  # host key fingerprint
        known_line = proc.stdout.readline().decode().split("known_hosts line: ", 1)[1]
        known = tmp_path / "known_hosts"
        known.write_text(known_line)
        assert host_key.exists()
        argv = [
            "ssh", "-F", "/dev/null", "-i", board_keys["alice"].path, "-p", str(port),
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-T", "127.0.0.1", "ls",
        ]
        result = subprocess.run(argv, capture_output=True, timeout=20)
        assert (result.returncode, result.stdout) == (0, b"no pubsub channels found\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        log = proc.stderr.read().decode() if proc.stderr else ""
        assert "alice@127.0.0.1" in log and ": ls" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_cli_reports_bad_users_file(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("public ssh-ed25519 AAAA\n")
    result = subprocess.run(
        [sys.executable, "-m", "p2ppool", "board", "--listen", "127.0.0.1:0",
         "--host-key", str(tmp_path / "hk"), "--users", str(users)],
        capture_output=True,
        timeout=30,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    assert result.returncode == 2
    assert b"users:1: the username 'public' is reserved for public topics" in result.stderr


# --- users file ------------------------------------------------------------------------------


def test_parse_users_file_forms(board_keys: Any) -> None:
    from p2ppool.board.keys import parse_users

    alice, bob = board_keys["alice"], board_keys["bob"]
    text = (
        "# comment\n\n"
        f"alice {alice.public_line}\n"
        f"alice {board_keys['carol'].public_line}\n"  # a second key for alice
        f"bob {bob.public_line.split()[0]} {bob.public_line.split()[1]}\n"  # no comment
    )
    keys = parse_users(text, where="users")
    by_name = sorted((k.username, k.fingerprint) for k in keys.values())
    assert by_name == sorted(
        [
            ("alice", alice.fingerprint),
            ("alice", board_keys["carol"].fingerprint),
            ("bob", bob.fingerprint),
        ]
    )
    mapping = parse_users({"alice": alice.public_line, "bob": [bob.public_line]})
    assert {k.username for k in mapping.values()} == {"alice", "bob"}


@pytest.mark.parametrize(
    "line, message",
    [
        ("alice", "users:1: expected '<key type> <base64 key>'"),
        ("alice ssh-ed25519 not-base64!", "users:1: not a valid ssh-ed25519 public key"),
        ("al ice ssh-ed25519 AAAA", "users:1: not a valid"),
        ("-x ssh-ed25519 AAAA", "users:1: invalid username '-x'"),
        ("public ssh-ed25519 AAAA", "users:1: the username 'public' is reserved"),
    ],
)
def test_parse_users_errors(line: str, message: str) -> None:
    from p2ppool.board.keys import parse_users
    from p2ppool.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_users(line + "\n", where="users")
    assert str(info.value).startswith(message)


def test_one_key_for_two_users_is_refused(board_keys: Any) -> None:
    from p2ppool.board.keys import parse_users
    from p2ppool.errors import ConfigError

    line = board_keys["alice"].public_line
    with pytest.raises(ConfigError, match="users:2: this key already belongs to 'alice'"):
        parse_users(f"alice {line}\nbob {line}\n", where="users")
