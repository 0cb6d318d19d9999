"""``p2ppool host`` and ``p2ppool status`` as real subprocesses against the real board."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from p2ppool.board.auth import BoardIdentity
from p2ppool.board.client import BoardClient
from p2ppool.board.protocol import Bye, Cluster, Hello, Message, Want

pytestmark = pytest.mark.system

WAIT = 20.0
ROOT = Path(__file__).resolve().parents[2]


def cli_env(board: Any, tmp_path: Path, user: str | None, key: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PPOOL_")}
    home = tmp_path / f"home-{key}"
    home.mkdir(exist_ok=True)
    env.update(
        HOME=str(home),  # no ~/.ssh/config, no ~/.ssh keys, no user config file
        XDG_CONFIG_HOME=str(home / ".config"),
        PYTHONPATH=str(ROOT),
        P2PPOOL_BOARD=f"{board.host}:{board.port}",
        P2PPOOL_IDENTITY=board.key_path(key),
        P2PPOOL_KNOWN_HOSTS=board.known_hosts,
    )
    if user is not None:
        env["P2PPOOL_BOARD_USER"] = user
    return env


def p2ppool(*args: str) -> List[str]:
    return [sys.executable, "-m", "p2ppool", *args]


class Lines:
    """Reads a pipe in a thread so a test can wait for a line with a timeout."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: List[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.put(raw.decode("utf-8", "replace"))

    def wait_for(self, text: str, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} in {self.seen}") from None
            self.seen.append(line)
            if text in line:
                return line


@pytest.fixture
def processes() -> Any:
    started: List[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def start_host(board: Any, tmp_path: Path, processes: List[Any], *args: str) -> Any:
    process = subprocess.Popen(
        p2ppool("host", *args),
        env=cli_env(board, tmp_path, "alice", "alice"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    processes.append(process)
    return process


class Peer:
    """bob as a client on the cluster: answers an observer's hello, wants slots for a job."""

    def __init__(self, board: Any, topic: str) -> None:
        self.got: queue.Queue[Message] = queue.Queue()
        self.client = BoardClient(
            board.host, board.port, topic=topic, identity=board.key_path("bob"),
            known_hosts=board.known_hosts, ssh_config="/dev/null", on_message=self.on_message,
            rng=random.Random(2), sender=BoardIdentity("client-bob"),
        )
        self.id = self.client.sender

    def on_message(self, msg: Message) -> None:
        self.got.put(msg)
        if isinstance(msg, Hello) and msg.role == "observer":
            now = time.time()
            self.client.publish(Hello(sender=self.id, ts=now, ttl=60, role="client",
                                      python="3.11", version="0.1", slots=0))
            self.client.publish(Want(sender=self.id, ts=now, ttl=60, job="job-7", slots=4,
                                     python="3.11", session=1))

    def wait_for(self, kind: type, role: str | None = None, timeout: float = WAIT) -> Message:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.got.get(timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(msg, kind) and (role is None or getattr(msg, "role", None) == role):
                return msg


def test_host_announces_and_status_reports_who_is_there(
    board_server: Any, tmp_path: Path, processes: List[Any]
) -> None:
    host = start_host(board_server, tmp_path, processes,
                      "--cluster", "friends", "--users", "bob,carol", "--ttl", "1h")
    stderr = Lines(host.stderr)
    line = stderr.wait_for("hosting cluster")
    assert "alice/friends" in line and "alice, bob, carol" in line
    assert board_server.server.wait_for(
        lambda s: s.channel_members("alice/friends") == {"pipe": ["alice"]}, WAIT
    )
    bob = Peer(board_server, "alice/friends")
    bob.client.connect()
    try:
        assert board_server.server.wait_for(
            lambda s: len(s.channel_members("alice/friends").get("pipe", [])) == 2, WAIT
        )
        # carol runs `p2ppool status` (JSON); bob answers her hello, the host re-announces.
        started = time.time()
        result = subprocess.run(
            # --wait 3: bob's answer crosses the board twice, slow on a loaded machine
            p2ppool("status", "--cluster", "alice/friends", "--wait", "3", "--json"),
            env=cli_env(board_server, tmp_path, "carol", "carol"),
            capture_output=True, timeout=WAIT,
        )
        assert result.returncode == 0, result.stderr.decode()
        report = json.loads(result.stdout)
        assert report["cluster"] == "alice/friends"
        [cluster] = report["clusters"]
        assert cluster["name"] == "alice/friends"
        assert started + 3600 - 60 < cluster["expires"] < time.time() + 3600
        assert [h["id"] for h in report["hosts"]] == [cluster["host"]]
        [client] = report["clients"]
        assert client["id"] == bob.id and client["jobs"] == {"job-7": 4}
        assert report["workers"] == [] and report["free_slots"] == 0

        # The table form, as bob.
        table = subprocess.run(
            p2ppool("status", "--cluster", "alice/friends", "--wait", "3"),
            env=cli_env(board_server, tmp_path, "bob", "bob"),
            capture_output=True, timeout=WAIT, text=True,
        )
        assert table.returncode == 0, table.stderr
        assert f"cluster alice/friends: hosted by {cluster['host']}" in table.stdout
        assert "host " in table.stdout
        # bob's own status run does not see bob's Peer answer? It does: a different session.
        assert "client-bob" in table.stdout and "job-7 (wants 4)" in table.stdout

        # bob heard the announcements too; SIGTERM ends the host cleanly with a bye.
        assert isinstance(bob.wait_for(Cluster), Cluster)
        host.send_signal(signal.SIGTERM)
        assert host.wait(timeout=WAIT) == 0
        bye = bob.wait_for(Bye, role="host")
        assert isinstance(bye, Bye) and bye.role == "host" and bye.sender == cluster["host"]
        stderr.wait_for("stopping (SIGTERM)")
    finally:
        bob.client.close()


def test_host_exits_0_when_the_cluster_expires(
    board_server: Any, tmp_path: Path, processes: List[Any]
) -> None:
    host = start_host(board_server, tmp_path, processes, "--cluster", "brief", "--users", "bob",
                      "--ttl", "6s", "--announce-every", "1s")
    stderr = Lines(host.stderr)
    stderr.wait_for("hosting cluster alice/brief")
    bob = Peer(board_server, "alice/brief")
    bob.client.connect()
    try:
        # bob's hello gets an announcement at once (on a loaded machine the periodic ones
        # could all have gone out before bob's connection was up).
        bob.client.publish(Hello(sender=bob.id, ts=time.time(), ttl=60, role="client",
                                 python="3.11", version="0.1", slots=0))
        announced = bob.wait_for(Cluster)
        assert isinstance(announced, Cluster) and announced.name == "alice/brief"
        assert host.wait(timeout=WAIT) == 0
        stderr.wait_for("expired")
        assert isinstance(bob.wait_for(Bye), Bye)
        assert announced.expires <= time.time() + 0.5
    finally:
        bob.client.close()


def test_status_on_a_cluster_you_are_not_listed_on_is_access_denied(
    board_server: Any, tmp_path: Path, processes: List[Any]
) -> None:
    host = start_host(board_server, tmp_path, processes, "--cluster", "closed", "--users", "bob")
    Lines(host.stderr).wait_for("hosting cluster")
    result = subprocess.run(
        p2ppool("status", "--cluster", "alice/closed", "--wait", "5"),
        env=cli_env(board_server, tmp_path, "carol", "carol"),
        capture_output=True, timeout=WAIT, text=True,
    )
    assert result.returncode == 1
    assert "access denied" in result.stderr
    host.send_signal(signal.SIGINT)
    assert host.wait(timeout=WAIT) == 0


def test_host_learns_the_username_from_the_board(
    board_server: Any, tmp_path: Path, processes: List[Any]
) -> None:
    # No --board-user and no P2PPOOL_BOARD_USER: the board's `user` command names bob's key.
    host = subprocess.Popen(
        p2ppool("host", "--cluster", "solo", "--ttl", "1h"),
        env=cli_env(board_server, tmp_path, None, "bob"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    processes.append(host)
    assert "hosting cluster bob/solo" in Lines(host.stderr).wait_for("hosting cluster")
    host.send_signal(signal.SIGINT)
    assert host.wait(timeout=WAIT) == 0


def test_host_without_a_known_username_says_how_to_set_it(
    board_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A board that cannot tell (pico.sh without an account answers `user` with an error).
    from p2ppool import cli
    from p2ppool.board import options as board_options

    monkeypatch.setattr(board_options, "learn_username", lambda *a, **k: None)
    for name, value in cli_env(board_server, tmp_path, None, "alice").items():
        if name.startswith("P2PPOOL_") or name in ("HOME", "XDG_CONFIG_HOME"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("P2PPOOL_BOARD_USER", raising=False)
    assert cli.main(["host", "--cluster", "x"]) == 2
    err = capsys.readouterr().err
    assert "--board-user" in err and "P2PPOOL_BOARD_USER" in err


def test_bad_ttl_is_a_usage_error(board_server: Any, tmp_path: Path) -> None:
    result = subprocess.run(
        p2ppool("host", "--cluster", "x", "--ttl", "soon"),
        env=cli_env(board_server, tmp_path, "alice", "alice"),
        capture_output=True, timeout=WAIT, text=True,
    )
    assert result.returncode == 2
    assert "'soon' is not a duration" in result.stderr


def test_status_with_an_unknown_key_fails_clearly(board_server: Any, tmp_path: Path) -> None:
    result = subprocess.run(
        p2ppool("status", "--cluster", "alice/friends", "--wait", "1"),
        env=cli_env(board_server, tmp_path, "mallory", "mallory"),
        capture_output=True, timeout=WAIT, text=True,
    )
    assert result.returncode == 1
    assert "refused the key" in result.stderr


def test_host_keeps_hosting_across_a_board_restart(
    board_server: Any, tmp_path: Path, processes: List[Any]
) -> None:
    from p2ppool.board.server import BoardServer

    host = start_host(board_server, tmp_path, processes, "--cluster", "sturdy", "--users", "bob",
                      "--announce-every", "1h")
    stderr = Lines(host.stderr)
    stderr.wait_for("hosting cluster alice/sturdy")
    port = board_server.port
    board_server.server.stop()
    stderr.wait_for("reconnecting")
    restarted = BoardServer(
        listen=("127.0.0.1", port),
        host_key_path=board_server.host_key_path,
        users_path=board_server.users_path,
    ).start()
    try:
        assert restarted.wait_for(
            lambda s: s.channel_members("alice/sturdy") == {"pipe": ["alice"]}, WAIT
        )
        bob = Peer(board_server, "alice/sturdy")
        bob.client.connect()
        try:
            # The period is an hour: this announcement answers bob's hello after the restart.
            bob.client.publish(Hello(sender=bob.id, ts=time.time(), ttl=60, role="worker",
                                     python="3.11", version="0.1", slots=2))
            announced = bob.wait_for(Cluster)
            assert isinstance(announced, Cluster) and announced.name == "alice/sturdy"
            assert host.poll() is None
        finally:
            bob.client.close()
        host.send_signal(signal.SIGINT)
        assert host.wait(timeout=WAIT) == 0
    finally:
        restarted.stop()
