"""Peers in separate network namespaces that reach each other only through the transit relay,
and a link cut in the middle of a map.

The test builds its own little network (root is needed for ``ip netns``; without the
privilege the test is skipped, saying so)::

    ns "wk1" 10.200.1.2/30 ──veth── 10.200.1.1 ┐
    ns "wk2" 10.200.3.2/30 ──veth── 10.200.3.1 ├ ns "srv": board, mailbox, transit relay
    ns "cl"  10.200.2.2/30 ──veth── 10.200.2.1 ┘          (no forwarding between links)

The addresses exist only inside these namespaces (never routed anywhere else); deleting the
namespaces at the end removes everything.  A worker and the client have no route to each
other, so every session runs through the relay: the test checks both.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from p2ppool.local.cluster import _BOARD_MAIN
from p2ppool.local.processes import write_ed25519_key as _write_ed25519_key
from tests.fixtures.cluster import read_until
from tests.fixtures.faults import check_exactly_once, executions

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOARD_PORT, MAILBOX_PORT, RELAY_PORT = 2222, 4000, 4001
LINKS = {"wk1": 1, "cl": 2, "wk2": 3}  # namespace -> x in 10.200.x.0/30
HOLD_FROM = 40  # items from here on wait, once started, until wk1's link is down


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


class Net:
    """The namespaces and links of one test run (unique names; removed by :meth:`remove`)."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.ns = {name: f"p2pf-{tag}-{name}" for name in ("srv", *LINKS)}
        self.veth: Dict[str, str] = {}  # namespace -> its end of the link to srv

    def create(self) -> None:
        for name in self.ns.values():
            self._check(_ip("netns", "add", name))
            self._check(_ip("-n", name, "link", "set", "lo", "up"))
        for name, x in LINKS.items():
            outer, inner = f"p2s{x}{self.ns[name][5:11]}", f"p2c{x}{self.ns[name][5:11]}"
            self._check(_ip("link", "add", outer, "netns", self.ns["srv"], "type", "veth",
                            "peer", "name", inner, "netns", self.ns[name]))
            self._check(_ip("-n", self.ns["srv"], "addr", "add", f"10.200.{x}.1/30",
                            "dev", outer))
            self._check(_ip("-n", self.ns[name], "addr", "add", f"10.200.{x}.2/30",
                            "dev", inner))
            self._check(_ip("-n", self.ns["srv"], "link", "set", outer, "up"))
            self._check(_ip("-n", self.ns[name], "link", "set", inner, "up"))
            self.veth[name] = inner

    def exec(self, name: str) -> List[str]:
        return ["ip", "netns", "exec", self.ns[name]]

    def remove(self) -> None:
        for name in self.ns.values():
            _ip("netns", "del", name)

    @staticmethod
    def _check(done: subprocess.CompletedProcess[str]) -> None:
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(done.args)}: {done.stderr.strip()}")


@pytest.fixture
def net() -> Iterator[Net]:
    if shutil.which("ip") is None:
        pytest.skip("the 'ip' command (iproute2) is not installed")
    probe = f"p2pf-probe-{os.getpid()}"
    done = _ip("netns", "add", probe)
    if done.returncode != 0:
        if "Permission denied" in done.stderr or "Operation not permitted" in done.stderr:
            pytest.skip(f"cannot create network namespaces here: {done.stderr.strip()}")
        raise RuntimeError(f"ip netns add failed: {done.stderr.strip()}")
    _ip("netns", "del", probe)
    network = Net()
    try:
        network.create()
        yield network
    finally:
        network.remove()


def _env(directory: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("P2PPOOL_") or k == "P2PPOOL_SANDBOX"}
    config = os.path.join(directory, "config.toml")
    with open(config, "w", encoding="utf-8") as f:
        f.write("# no user configuration\n")
    env["P2PPOOL_CONFIG"] = config
    env["PYTHONPATH"] = ROOT
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Procs:
    """The test's processes, each in a session of its own; :meth:`stop` SIGKILLs them all.

    They share a ``TMPDIR`` that :meth:`stop` removes: a killed worker cannot remove
    multiprocessing's directory (``pymp-*``) of its fork server.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.env = _env(directory)
        # Not under ``directory`` (pytest's): a Unix socket path in it would be too long.
        self.tmpdir = tempfile.mkdtemp(prefix="tmp-netns-")
        self.env["TMPDIR"] = self.tmpdir
        self.procs: List[subprocess.Popen[bytes]] = []

    def start(self, argv: List[str], name: str, stdin: Any = subprocess.DEVNULL
              ) -> subprocess.Popen[bytes]:
        log = open(os.path.join(self.directory, f"{name}.log"), "ab")
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=log,
                                env=self.env, cwd=ROOT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in self.procs:
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def log(self, name: str) -> str:
        with open(os.path.join(self.directory, f"{name}.log"), encoding="utf-8",
                  errors="replace") as f:
            return "\n".join(f.read().splitlines()[-15:])


def test_peers_in_separate_namespaces_use_the_relay_and_survive_a_cut_link(
        net: Net, tmp_path: Any) -> None:
    directory = str(tmp_path)
    keys = {}
    users = []
    for user in ("alice", "volunteer"):
        keys[user] = os.path.join(directory, f"id_{user}")
        users.append(f"{user} {_write_ed25519_key(keys[user], user)}")
    with open(os.path.join(directory, "users"), "w", encoding="ascii") as f:
        f.write("\n".join(users) + "\n")
    host_key = os.path.join(directory, "host_key")
    host_public = _write_ed25519_key(host_key, "board")
    known_hosts = os.path.join(directory, "known_hosts")
    with open(known_hosts, "w", encoding="ascii") as f:
        for x in LINKS.values():
            f.write(f"[10.200.{x}.1]:{BOARD_PORT} {host_public}\n")
    log = os.path.join(directory, "executions")
    hold = os.path.join(directory, "link-is-down")  # items from HOLD_FROM on wait for it
    procs = Procs(directory)
    try:
        board = procs.start(net.exec("srv") + [
            sys.executable, "-c", _BOARD_MAIN, "--listen", f"0.0.0.0:{BOARD_PORT}",
            "--host-key", host_key, "--users", os.path.join(directory, "users"),
            "--log-level", "WARNING"], "board")
        read_until(board, b"board listening on", 20)
        servers = procs.start(net.exec("srv") + [
            sys.executable, "-m", "p2ppool.transfer.servers", "--interface", "0.0.0.0",
            "--mailbox-port", str(MAILBOX_PORT), "--relay-port", str(RELAY_PORT),
            "--state", os.path.join(directory, "wormhole")], "servers", stdin=subprocess.PIPE)
        read_until(servers, b'"ready": true', 20)

        def via(name: str) -> Dict[str, str]:
            x = LINKS[name]
            return {"board": f"10.200.{x}.1:{BOARD_PORT}",
                    "relay": f"ws://10.200.{x}.1:{MAILBOX_PORT}/v1",
                    "transit": f"tcp:10.200.{x}.1:{RELAY_PORT}"}

        config = {
            "cluster": "alice/nettest", "owner": "alice", "volunteer": "volunteer",
            "identity": keys["alice"], "known_hosts": known_hosts,
            "no_ssh_config": os.path.join(directory, "no_ssh_config"), "workers": 2,
            "processes": 4, "items": 400, "seconds": 0.05, "log": log, "timeout": 80,
            "max_attempts": 5, "hold": hold, "hold_from": HOLD_FROM, **via("cl"),
        }
        client = procs.start(net.exec("cl") + [
            sys.executable, "-m", "tests.fixtures.netns_client", json.dumps(config)], "client")
        read_until(client, b"hosting", 30)
        workers = {}
        for name in ("wk1", "wk2"):
            v = via(name)
            workers[name] = procs.start(net.exec(name) + [
                sys.executable, "-m", "p2ppool.worker", "--cluster", "alice/nettest",
                "--processes", "2", "--board", v["board"], "--identity", keys["volunteer"],
                "--known-hosts", known_hosts, "--user", "volunteer", "--relay", v["relay"],
                "--transit", v["transit"], "--name", name, "--grace", "1"], name)
        # No route between a worker's namespace and the client's.
        for name in ("wk1", "wk2"):
            assert _ip("-n", net.ns[name], "route", "get", "10.200.2.2").returncode != 0
        read_until(client, b"mapping", 60)
        deadline = time.monotonic() + 40
        pid1 = workers["wk1"].pid

        def served(pid: int) -> int:
            try:
                with open(log, encoding="ascii") as f:
                    return sum(1 for line in f if line.endswith("\n")
                               and int(line.split()[2]) == pid)
            except FileNotFoundError:
                return 0

        # Items before HOLD_FROM run freely; later ones wait for the hold file once started.
        # Once 4 of them have started, all 4 slots (2 on each worker) hold one: wk1 surely
        # has work in flight when its link goes down, however slow this machine is.
        while (sum(executions(log).values()) < HOLD_FROM + 4
               or served(workers["wk2"].pid) < 1):
            assert time.monotonic() < deadline, (
                f"both workers did not start serving: {procs.log('client')}\n"
                f"{procs.log('wk1')}\n{procs.log('wk2')}")
            try:
                client.wait(0.05)  # the client exiting early ends the wait (and fails below)
                break
            except subprocess.TimeoutExpired:
                pass
        # Every session goes through the relay: it has connections from both workers'
        # namespaces and from the client's.
        relayed = subprocess.run(
            net.exec("srv") + ["ss", "-Htn", "state", "established",
                               f"( sport = :{RELAY_PORT} )"],
            capture_output=True, text=True, timeout=10).stdout
        for x in LINKS.values():
            assert f"10.200.{x}.2:" in relayed, relayed
        # Cut wk1's only link in the middle of the map.
        assert _ip("-n", net.ns["wk1"], "link", "set", net.veth["wk1"], "down").returncode == 0
        Path(hold).touch()
        line = read_until(client, b'{"', 90).splitlines()[-1]
        outcome = json.loads(line)
        assert "records" in outcome, (f"{outcome}\n{procs.log('client')}\n"
                                      f"{procs.log('wk2')}")
        records = [tuple(r) for r in outcome["records"]]
        check_exactly_once(list(range(400)), records)  # type: ignore[arg-type]
        runs = executions(log)
        reruns = sum(runs.values()) - 400
        print(f"\nnetns: 400 items, wk1 served {served(pid1)} before and after the cut, "
              f"{reruns} task(s) started again elsewhere")
        assert reruns >= 2, "the cut cost wk1 its 2 tasks in flight: they ran again"
        assert {r[3] for r in records} <= {pid1, workers["wk2"].pid}
        assert workers["wk2"].pid in {r[3] for r in records}
    finally:
        procs.stop()
