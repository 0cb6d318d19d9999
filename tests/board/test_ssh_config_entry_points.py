"""Every entry point honours ``~/.ssh/config`` for the board (issue 15, item 1).

The board is named only by an SSH config alias (``P2PPOOL_BOARD=myboard``, no port); the
config gives its ``HostName``, ``Port`` (the real board's free port, not 22), ``User`` and
``IdentityFile`` (alice's key) and ``UserKnownHostsFile``.  No ``P2PPOOL_IDENTITY`` or
``P2PPOOL_BOARD_USER`` is set, ``HOME`` is a fresh directory (so ``~/.ssh/config`` is the test's
file and no other key is found) and the ssh-agent is hidden.  Each entry point must then log
in to the real board on 127.0.0.1 as alice: the Pool's
:class:`~p2ppool.cluster.backend.ClusterBackend`,
``p2ppool worker`` and ``p2ppool status``.  Before the fix the Pool and the worker used port 22.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

pytestmark = pytest.mark.system

WAIT = 20.0
ROOT = Path(__file__).resolve().parents[2]
ALIAS = "myboard"
CLUSTER = "alice/sshcfg"
#: Dead loopback addresses: nothing here may reach a public wormhole server.
DEAD_RELAY = "ws://127.0.0.1:9/v1"
DEAD_TRANSIT = "tcp:127.0.0.1:9"


def ssh_env(board: Any, tmp_path: Path) -> Dict[str, str]:
    """The environment of a user whose ``~/.ssh/config`` alone says how to reach the board."""
    home = tmp_path / "home"
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(ssh_dir, 0o700)
    (ssh_dir / "config").write_text(
        f"Host {ALIAS}\n"
        "  HostName 127.0.0.1\n"
        f"  Port {board.port}\n"
        "  User alice\n"
        f"  IdentityFile {board.key_path('alice')}\n"
        f"  UserKnownHostsFile {board.known_hosts}\n"
        "Host *\n"
        "  User nobody-here\n"  # only the alias's entry may apply
    )
    assert board.port != 22
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("P2PPOOL_") and k != "SSH_AUTH_SOCK"}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),  # no p2ppool config file
        PYTHONPATH=str(ROOT),
        P2PPOOL_BOARD=ALIAS,
        P2PPOOL_CLUSTER=CLUSTER,
        P2PPOOL_RELAY=DEAD_RELAY,
        P2PPOOL_TRANSIT=DEAD_TRANSIT,
        P2PPOOL_LOOPBACK_ONLY="1",
    )
    return env


def p2ppool(*args: str) -> list[str]:
    return [sys.executable, "-m", "p2ppool", *args]


def alice_on_the_board(server: Any) -> bool:
    """Alice (and no one else) has a pipe session on the cluster's channel."""
    return bool(server.channel_members(CLUSTER).get("pipe") == ["alice"])


@pytest.fixture
def use_ssh_env(board_server: Any, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Dict[str, str]]:
    """:func:`ssh_env` applied to this process (``os.environ``), undone after the test."""
    env = ssh_env(board_server, tmp_path)
    for name in [k for k in os.environ if k.startswith("P2PPOOL_") or k == "SSH_AUTH_SOCK"]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if os.environ.get(name) != value:
            monkeypatch.setenv(name, value)
    yield env


def test_pool_cluster_backend_uses_the_ssh_config(
    board_server: Any, use_ssh_env: Dict[str, str]
) -> None:
    from p2ppool.cluster.backend import ClusterBackend
    from p2ppool.config import resolve_options

    options = resolve_options({})  # what Pool() resolves: P2PPOOL_* from the environment
    backend = ClusterBackend(options, "job-sshcfg", 1, None, None, lambda: None)
    backend.start()
    try:
        assert board_server.server.wait_for(alice_on_the_board, WAIT), (
            f"no pipe session as alice on {CLUSTER}: "
            f"{board_server.server.channel_members(CLUSTER)}; events {backend.collect()!r}"
        )
    finally:
        backend.terminate()
    assert board_server.server.wait_for(
        lambda s: not s.channel_members(CLUSTER).get("pipe"), WAIT
    )


def test_worker_uses_the_ssh_config(board_server: Any, tmp_path: Path) -> None:
    process = subprocess.Popen(
        p2ppool("worker", "--processes", "1", "--name", "sshcfg-worker"),
        env=ssh_env(board_server, tmp_path),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + WAIT
        while not alice_on_the_board(board_server.server) and process.poll() is None:
            assert time.monotonic() < deadline, "the worker never joined the board"
            board_server.server.wait_for(alice_on_the_board, 0.2)
        assert process.poll() is None, (
            f"the worker exited ({process.returncode}): "
            f"{process.stderr.read().decode()[-600:] if process.stderr else ''}"
        )
        process.terminate()  # SIGTERM: a graceful stop (no tasks in flight)
        assert process.wait(timeout=WAIT) == 0
        assert board_server.server.wait_for(
            lambda s: not s.channel_members(CLUSTER).get("pipe"), WAIT
        )
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


def test_status_uses_the_ssh_config(board_server: Any, tmp_path: Path) -> None:
    result = subprocess.run(
        p2ppool("status", "--wait", "1", "--json"),
        env=ssh_env(board_server, tmp_path),
        stdin=subprocess.DEVNULL, capture_output=True, timeout=WAIT,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["cluster"] == CLUSTER
