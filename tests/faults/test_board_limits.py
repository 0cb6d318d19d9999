"""Board server security under hostile members: private topics, per-key message rate and
connection limits (real server, real OpenSSH client).

Already covered in ``tests/board/test_board_server.py``: access lists on sub/pipe/pub
(``test_pipe_with_access_list_reaches_bob_and_refuses_carol``, ``test_access_by_fingerprint``),
unknown keys refused (``test_unknown_key_refused_at_authentication``), a foreign topic not
open denied, sessions per key (``test_sessions_per_key_limit``), unauthenticated
connections closed, host key persistence (``test_host_key_persists_across_restarts``; and
``tests/faults/test_server_restarts.py`` for a board restarted under a running cluster).
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable

import pytest

from p2ppool.board.state import TokenBucket

pytestmark = pytest.mark.system

RATE_MESSAGE = b"message rate limit exceeded: key SHA256:"


def test_another_users_private_topic_cannot_be_read_or_written(board_server: Any) -> None:
    """alice's topic open without an access list: bob gets "access denied" for every
    command that names it, and ``ls`` shows him nothing of hers."""
    alice = board_server.session("alice", "pipe secret")
    board_server.wait_members("alice/secret", "pipe", 1)
    for command in ("sub alice/secret", "pipe alice/secret", "pub alice/secret -b=false",
                    "sub alice/secret -k", "pipe alice/secret -r", "pub alice/secret -e"):
        result = board_server.ssh("bob", command, input=b"forged line\n")
        assert (result.returncode, result.stderr) == (1, b"access denied\n\r"), command
    listing = board_server.ssh("bob", "ls")
    assert b"secret" not in listing.stdout
    # Nothing bob sent reached alice.
    alice.close_stdin()
    assert alice.wait() == 0
    assert alice.out.read_to_eof() == b""


def test_a_key_over_the_message_rate_is_told_and_disconnected(
        board_factory: Callable[..., Any]) -> None:
    """A message is one read of the writer's stream (at most 32 KiB), so 40 writes of 32 KiB
    are at least 40 messages: over a burst of 20 at 5 per second."""
    board = board_factory(messages_per_s=5.0, message_burst=20)
    reader = board.session("bob", "sub t -k")
    board.wait_members("bob/t", "sub", 1)
    small = board.ssh("bob", "pub t -b=false", input=b"".join(b"line %d\n" % i
                                                               for i in range(10)))
    assert small.returncode == 0, small.stderr  # one write, well within the burst
    for i in range(10):
        assert reader.out.read_line() == b"line %d\n" % i
    flooder = board.session("bob", "pipe t")
    board.wait_members("bob/t", "pipe", 1)
    try:
        flooder.send((b"x" * 32767 + b"\n") * 40)
    except BrokenPipeError:
        pass  # the board may close the session before the last bytes are written
    status = flooder.wait(10)
    error = flooder.err.read_to_eof()
    assert status == 1, error
    assert error.startswith(RATE_MESSAGE), error
    assert b"(bob) may send 5 messages per second with bursts of 20; disconnected" in error
    # Other keys are not affected, and bob's key refills at the sustained rate.
    assert board.ssh("carol", "pub c -b=false", input=b"x\n").returncode == 0
    time.sleep(1.0)  # the refill itself is under test: one second buys five messages
    again = board.ssh("bob", "pub t -b=false", input=b"after the pause\n")
    assert again.returncode == 0, again.stderr
    reader.kill()


def test_the_rate_limit_is_per_key_across_sessions(board_factory: Callable[..., Any]) -> None:
    """Opening more sessions does not buy more messages: the bucket belongs to the key."""
    board = board_factory(messages_per_s=0.1, message_burst=3)
    reader = board.session("alice", "sub t -k")
    board.wait_members("alice/t", "sub", 1)
    results = [board.ssh("alice", "pub t -b=false", input=b"s%d\n" % s) for s in range(5)]
    codes = [r.returncode for r in results]
    assert codes[:3] == [0, 0, 0] and 1 in codes[3:], codes
    refused = next(r for r in results if r.returncode == 1)
    assert refused.stderr.startswith(RATE_MESSAGE)
    assert board.ssh("bob", "ls").returncode == 0  # ls publishes nothing; bob is unaffected
    reader.kill()


def test_connections_over_the_limit_are_closed(board_factory: Callable[..., Any]) -> None:
    board = board_factory(max_connections=2)
    held = [socket.create_connection((board.host, board.port), timeout=5) for _ in range(2)]
    try:
        for sock in held:
            assert sock.recv(4).startswith(b"SSH-")  # served: the SSH banner
        extra = socket.create_connection((board.host, board.port), timeout=5)
        extra.settimeout(5)
        try:
            data = extra.recv(100)
        except ConnectionResetError:
            data = b""
        assert not data.startswith(b"SSH-"), "a third connection was served"
        extra.close()
    finally:
        for sock in held:
            sock.close()
    # Once they are gone, the board serves again.
    deadline = time.monotonic() + 10
    while board.ssh("alice", "ls").returncode != 0:
        assert time.monotonic() < deadline


def test_token_bucket_rules() -> None:
    bucket = TokenBucket(rate=10.0, burst=5, now=0.0)
    assert bucket.take(5, 0.0) and not bucket.take(1, 0.0)
    assert bucket.take(1, 0.1) and not bucket.take(1, 0.1)  # 0.1 s refills one
    assert not bucket.take(6, 100.0)  # never more than the burst
    assert bucket.take(5, 100.0)
    assert not bucket.take(1, 99.0)  # a clock going back refills nothing
    with pytest.raises(ValueError):
        TokenBucket(rate=0.0, burst=5, now=0.0)
