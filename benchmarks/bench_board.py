"""Load benchmark of the self-hosted board (``p2ppool board``): many peers on one topic.

What it does:

* starts ``python -m p2ppool board`` on 127.0.0.1 in its own process (so its CPU and memory
  are measured alone), with a fresh host key and one user key;
* connects N peers with the real OpenSSH client, each running ``pipe bench -c`` on the same
  topic (ssh is C, so the clients cost little CPU next to the server);
* for each target rate, writes timestamped 100-byte lines into the peers' stdins, spread
  evenly over the peers and over time (open loop), for ``--duration`` seconds, and reads every
  peer's stdout in one selector loop.  A *delivery* is one line arriving at one peer (a line
  written by one of N peers is delivered N-1 times).

Reported per (peers, rate) as JSON: deliveries per second achieved, fan-out latency (from the
write into the sender's ssh to the read from a receiver's ssh) p50/p99/max, lines lost, server
RSS and server CPU seconds per second.

Usage::

    python benchmarks/bench_board.py                       # 50 and 200 peers, default rates
    python benchmarks/bench_board.py --peers 50 --rates 10000 20000 --duration 10
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import psutil

LINE_BYTES = 100
ROOT = Path(__file__).resolve().parents[1]


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(path)],
        check=True,
        timeout=30,
    )
    return Path(str(path) + ".pub").read_text().strip()


class Board:
    """The board server in a child process."""

    def __init__(self, workdir: Path, public_line: str, max_sessions: int) -> None:
        users = workdir / "users"
        users.write_text(f"alice {public_line}\n")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "p2ppool", "board",
                "--listen", "127.0.0.1:0",
                "--host-key", str(workdir / "host_key"),
                "--users", str(users),
                "--max-sessions-per-key", str(max_sessions),
                # every peer here shares one key: lift the per-key message rate limit
                # (100/s by default), which would disconnect them at these rates
                "--messages-per-second", "1000000000",
                "--log-level", "WARNING",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=str(ROOT),
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().decode()
        match = re.match(r"board listening on 127\.0\.0\.1:(\d+)", first)
        if not match:
            raise RuntimeError(f"board did not start: {first!r}")
        self.port = int(match.group(1))
        self.proc.stdout.readline()
        known_line = self.proc.stdout.readline().decode().split("known_hosts line: ", 1)[1]
        self.known_hosts = workdir / "known_hosts"
        self.known_hosts.write_text(known_line)
        self.ps = psutil.Process(self.proc.pid)

    def rss_mib(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def ssh_argv(board: Board, key: Path, command: str) -> List[str]:
    return [
        "ssh", "-F", "/dev/null", "-i", str(key), "-p", str(board.port),
        "-o", f"UserKnownHostsFile={board.known_hosts}", "-o", "StrictHostKeyChecking=yes",
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
        "-T", "127.0.0.1", command,
    ]


def count_pipes(board: Board, key: Path) -> int:
    out = subprocess.run(
        ssh_argv(board, key, "ls"), capture_output=True, timeout=30
    ).stdout.decode()
    return len(re.findall(r"^  - ", out, flags=re.M))


class Peers:
    """N ``ssh ... pipe bench -c`` processes, driven from one selector loop."""

    def __init__(self, board: Board, key: Path, count: int) -> None:
        self.procs: List[subprocess.Popen[bytes]] = []
        for _ in range(count):
            proc = subprocess.Popen(
                ssh_argv(board, key, "pipe bench -c"),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert proc.stdout is not None
            os.set_blocking(proc.stdout.fileno(), False)
            self.procs.append(proc)
        deadline = time.monotonic() + 120
        while count_pipes(board, key) < count:
            if time.monotonic() > deadline:
                raise RuntimeError("peers did not all join within 120 s")
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{len(dead)} ssh peers exited while joining")
        self.selector = selectors.DefaultSelector()
        self.buffers: Dict[int, bytearray] = {}
        for index, proc in enumerate(self.procs):
            assert proc.stdout is not None
            self.selector.register(proc.stdout.fileno(), selectors.EVENT_READ, index)
            self.buffers[index] = bytearray()

    def run_phase(self, deliveries_per_s: float, duration: float) -> Dict[str, Any]:
        n = len(self.procs)
        sends_per_s = deliveries_per_s / (n - 1)
        interval = 1.0 / sends_per_s
        latencies: List[float] = []
        sent = 0
        send_fail = 0
        start = time.monotonic()
        next_send = start
        end_send = start + duration
        drain_until = end_send + 3.0
        received = 0
        received_in_window = 0
        last_rx = start
        while True:
            now = time.monotonic()
            while next_send <= now and next_send < end_send:
                sender = sent % n
                stamp = f"{sender} {sent} {time.monotonic():.9f} "
                line = (stamp + "x" * (LINE_BYTES - 1 - len(stamp)) + "\n").encode()
                stdin = self.procs[sender].stdin
                assert stdin is not None
                try:
                    os.write(stdin.fileno(), line)
                except BlockingIOError:
                    send_fail += 1
                sent += 1
                next_send = start + sent * interval
            if now >= drain_until or (now >= end_send and received >= sent * (n - 1)):
                break
            timeout = max(0.0, min(next_send, drain_until) - now) if now < end_send else 0.05
            for key, _ in self.selector.select(timeout):
                index = key.data
                try:
                    data = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    raise RuntimeError(f"peer {index} closed its output")
                buf = self.buffers[index]
                buf += data
                t_rx = time.monotonic()
                while True:
                    cut = buf.find(b"\n")
                    if cut < 0:
                        break
                    fields = bytes(buf[:cut]).split(b" ", 3)
                    del buf[: cut + 1]
                    latencies.append(t_rx - float(fields[2]))
                    received += 1
                    if t_rx <= end_send:
                        received_in_window += 1
                last_rx = t_rx
        expected = sent * (n - 1)
        latencies.sort()

        def pct(p: float) -> float | None:
            if not latencies:
                return None
            return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)

        span = max(last_rx - start, duration)
        return {
            "target_deliveries_per_s": deliveries_per_s,
            "lines_written": sent,
            "deliveries_expected": expected,
            "deliveries": received,
            "lost": expected - received,
            "deliveries_per_s": round(received / span, 1),
            "deliveries_per_s_in_send_window": round(received_in_window / duration, 1),
            "latency_ms_p50": pct(0.50),
            "latency_ms_p99": pct(0.99),
            "latency_ms_max": round(latencies[-1] * 1000, 2) if latencies else None,
            "stdin_would_block": send_fail,
        }

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        self.selector.close()


def bench(peers: int, rates: List[float], duration: float) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-board-") as tmp:
        workdir = Path(tmp)
        key = workdir / "alice"
        public_line = _keygen(key)
        board = Board(workdir, public_line, max_sessions=peers + 16)
        try:
            rss_idle = board.rss_mib()
            t0 = time.monotonic()
            group = Peers(board, key, peers)
            connect_s = time.monotonic() - t0
            rss_connected = board.rss_mib()
            phases = []
            try:
                for rate in rates:
                    cpu0, w0 = board.cpu_s(), time.monotonic()
                    result = group.run_phase(rate, duration)
                    result["server_cpu_s_per_s"] = round(
                        (board.cpu_s() - cpu0) / (time.monotonic() - w0), 2
                    )
                    result["server_rss_mib"] = round(board.rss_mib(), 1)
                    phases.append(result)
            finally:
                group.close()
            return {
                "peers": peers,
                "connect_all_s": round(connect_s, 2),
                "server_rss_mib_idle": round(rss_idle, 1),
                "server_rss_mib_connected": round(rss_connected, 1),
                "phases": phases,
            }
        finally:
            board.stop()


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, nargs="+", default=[50, 200])
    parser.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=[10_000, 20_000, 40_000],
        help="target deliveries per second, one phase each",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    args = parser.parse_args(argv)
    if shutil.which("ssh") is None:
        print("bench_board needs the OpenSSH client (ssh)", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    results: Dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "line_bytes": LINE_BYTES,
        "duration_s": args.duration,
        "runs": [bench(p, args.rates, args.duration) for p in args.peers],
    }
    # The machine may be shared: a high load average means the numbers understate the server.
    results["loadavg_1m_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
