"""WormholeServers: a real mailbox server and transit relay in one child process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from p2ppool.errors import TransferError
from p2ppool.transfer.servers import WormholeServers
from tests.fixtures.cluster import read_until, reap

pytestmark = [pytest.mark.system, pytest.mark.timeout(30)]


def _listening(pid: int) -> set:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def test_servers_listen_on_loopback_only_and_stop_leaves_nothing_behind():
    servers = WormholeServers()
    pid = servers.pid
    state_dir = servers.state_dir
    assert servers.running
    assert servers.relay_url == f"ws://127.0.0.1:{servers.mailbox_port}/v1"
    assert servers.transit == f"tcp:127.0.0.1:{servers.relay_port}"
    assert _listening(pid) == {
        ("127.0.0.1", servers.mailbox_port), ("127.0.0.1", servers.relay_port)
    }
    assert os.path.exists(os.path.join(state_dir, "channels.sqlite"))
    started = time.monotonic()
    servers.stop()
    assert time.monotonic() - started < 5
    assert not servers.running
    assert not psutil.pid_exists(pid)
    assert not os.path.exists(state_dir)
    servers.stop()  # idempotent


def test_context_manager_stops_the_servers_after_an_error():
    with pytest.raises(RuntimeError, match="user code failed"):
        with WormholeServers() as servers:
            pid = servers.pid
            raise RuntimeError("user code failed")
    assert not psutil.pid_exists(pid)


def test_explicit_ports_are_used():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with WormholeServers(mailbox_port=port) as servers:
        assert servers.mailbox_port == port
        assert servers.relay_port not in (0, port)


def test_a_busy_port_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(TransferError, match="exited with code 1 before becoming ready"):
            WormholeServers(relay_port=port)
        assert time.monotonic() - started < 10


def test_servers_exit_when_their_parent_is_killed_and_remove_its_temporary_state():
    """The parent made the state directory; killed, it cannot remove it: the servers do."""
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from p2ppool.transfer.servers import WormholeServers\n"
         "s = WormholeServers()\n"
         "print(s.pid, s.state_dir, flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    try:
        assert parent.stdout is not None
        pid_text, state_dir = parent.stdout.readline().decode().split()
        child_pid = int(pid_text)
        child = psutil.Process(child_pid)
        assert child.is_running()
        assert os.path.isdir(state_dir)
        parent.kill()
        parent.wait(5)
        child.wait(5)  # raises psutil.TimeoutExpired if the orphan lingers
        assert not os.path.exists(state_dir)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)
        if psutil.pid_exists(child_pid):
            psutil.Process(child_pid).kill()


def test_command_line_rejects_bad_ports():
    result = subprocess.run(
        [sys.executable, "-m", "p2ppool.transfer.servers", "--mailbox-port", "70000",
         "--state", "/nonexistent"],
        capture_output=True, text=True, timeout=20,
    )
    assert result.returncode == 2
    assert "--mailbox-port must be between 0 and 65535" in result.stderr


def test_servers_stopped_by_their_parent_remove_nothing(tmp_path):
    """stop() says a word before closing the servers' stdin: they are not orphaned, and
    what they would remove if they were stays (the parent removes what it owns itself)."""
    state = tmp_path / "s"
    state.mkdir()
    keep = tmp_path / "keep"
    keep.mkdir()
    with WormholeServers(state_dir=str(state), remove_if_orphaned=str(keep)) as servers:
        child = psutil.Process(servers.pid)
    child.wait(5)
    assert keep.is_dir() and (state / "channels.sqlite").exists()


def test_servers_without_remove_if_orphaned_keep_their_state(tmp_path):
    """Without ``--remove-if-orphaned`` the servers remove nothing, even when their parent
    goes away (the state directory is the caller's)."""
    state = tmp_path / "s"
    child = subprocess.Popen(
        [sys.executable, "-m", "p2ppool.transfer.servers", "--state", str(state)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    try:
        read_until(child, b'"ready"', timeout=20)
        assert child.stdin is not None
        child.stdin.close()  # the parent went away
        assert child.wait(timeout=10) == 0
        assert (state / "channels.sqlite").exists()
    finally:
        reap(child)


def test_servers_stop_when_their_parent_went_away_before_they_were_ready(tmp_path):
    """A parent interrupted while starting the servers (e.g. Ctrl-C inside ``Popen``: the
    child runs, its pipes are closed, nobody knows its pid) must not leave them running:
    they find nobody to tell they are ready, and stop.  (They used to run forever: the
    failed write of the ready line ended the callback before stdin was watched.)"""
    child = subprocess.Popen(
        [sys.executable, "-m", "p2ppool.transfer.servers", "--state", str(tmp_path / "s")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.close()  # what Popen's cleanup does when interrupted after the fork
        child.stdout.close()
        assert child.wait(timeout=30) == 1
        assert child.stderr is not None
        assert b"the parent is gone" in child.stderr.read()
    finally:
        reap(child)
