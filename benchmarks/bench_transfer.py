"""Benchmark of the wormhole data plane: two processes on loopback, real mailbox and relay.

Run: ``python benchmarks/bench_transfer.py [--sessions 10] [--round-trips 1000]``.
Prints one JSON object with medians:

* ``setup_ms``: client ``TransferSession.open`` until the dilated subchannel is open (the worker is
  already waiting on the code), one fresh code per session;
* ``rtt_ms``: one frame out and the same frame back, per payload size;
* ``bulk_MBps``: one large frame to the peer until its small acknowledgement returns;
* ``close_ms``: ``TransferSession.close`` with the goodbye handshake.

The peer is this script started again with ``--peer`` (it reads codes on stdin, opens one
session per code as the worker, echoes frames starting with ``E`` and acknowledges frames
starting with ``A`` with their length).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from p2ppool import defaults  # noqa: E402
from p2ppool.transfer.servers import WormholeServers  # noqa: E402
from p2ppool.transfer.session import CLIENT, WORKER, TransferSession, new_code  # noqa: E402


def run_peer(relay_url: str, transit: str) -> int:
    """The worker side: one session per code read from stdin."""
    for line in sys.stdin:
        if line.strip():
            serve_one(line.strip(), relay_url, transit)
    return 0


def serve_one(code: str, relay_url: str, transit: str) -> None:
    """Open one worker session and answer frames until the client closes it."""
    ended = threading.Event()
    holder: Dict[str, TransferSession] = {}
    early: List[bytes] = []

    def reply(session: TransferSession, frame: bytes) -> None:
        if frame[:1] == b"A":
            session.send(b"ok %d" % len(frame))
        else:
            session.send(frame)

    def on_frame(frame: bytes) -> None:
        session = holder.get("s")
        if session is None:
            early.append(frame)
        else:
            reply(session, frame)

    print("waiting", flush=True)
    session = TransferSession.open(code, relay_url, transit, role=WORKER, loopback_only=True,
                           on_frame=on_frame, on_lost=lambda cause: ended.set(), timeout=30)
    holder["s"] = session
    for frame in early:
        reply(session, frame)
    ended.wait(600)


def median_ms(samples: List[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--round-trips", type=int, default=1000)
    parser.add_argument("--bulk-mb", type=int, default=50)
    parser.add_argument("--bulk-repeats", type=int, default=3)
    parser.add_argument("--piece-kb", type=int, default=defaults.WRITE_PIECE_BYTES // 1024,
                        help="client write piece size in KiB (default: defaults.WRITE_PIECE_BYTES)")
    parser.add_argument("--peer", nargs=2, metavar=("RELAY_URL", "TRANSIT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        return run_peer(*args.peer)

    with WormholeServers() as servers:
        peer = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--peer", servers.relay_url,
             servers.transit],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert peer.stdin is not None and peer.stdout is not None
        try:
            result = measure(args, servers, peer)
        finally:
            peer.kill()
            peer.wait(10)
    print(json.dumps(result, indent=2))
    return 0


def measure(args: Any, servers: WormholeServers, peer: subprocess.Popen[str]) -> Dict[str, Any]:
    assert peer.stdin is not None and peer.stdout is not None
    setups: List[float] = []
    closes: List[float] = []
    result: Dict[str, Any] = {"sessions": args.sessions, "piece_kb": args.piece_kb}
    for index in range(args.sessions):
        code = new_code()
        peer.stdin.write(code + "\n")
        peer.stdin.flush()
        if peer.stdout.readline().strip() != "waiting":
            raise SystemExit("the peer process did not start")
        frames: queue.Queue[bytes] = queue.Queue()
        started = time.perf_counter()
        session = TransferSession.open(code, servers.relay_url, servers.transit, role=CLIENT,
                               loopback_only=True, on_frame=frames.put, timeout=30,
                               write_piece_bytes=args.piece_kb * 1024)
        setups.append(time.perf_counter() - started)
        if index == 0:
            result.update(steady_state(args, session, frames))
        started = time.perf_counter()
        session.close()
        closes.append(time.perf_counter() - started)
    result["setup_ms"] = median_ms(setups)
    result["setup_ms_range"] = [median_ms([min(setups)]), median_ms([max(setups)])]
    result["close_ms"] = median_ms(closes)
    return result


def steady_state(args: Any, session: TransferSession, frames: queue.Queue[bytes]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"rtt_ms": {}, "bulk_MBps": {}}
    for size in (100, 10_000, 100_000):
        payload = b"E" + bytes(size - 1)
        for _ in range(20):  # warm up
            session.send(payload)
            frames.get(timeout=10)
        samples = []
        for _ in range(args.round_trips if size <= 10_000 else args.round_trips // 5):
            started = time.perf_counter()
            session.send(payload)
            frames.get(timeout=10)
            samples.append(time.perf_counter() - started)
        out["rtt_ms"][f"{size}B"] = median_ms(samples)
    for mb in (1, 10, args.bulk_mb):
        payload = b"A" + bytes(mb * 1024 * 1024 - 1)
        rates = []
        for _ in range(args.bulk_repeats):
            started = time.perf_counter()
            session.send(payload)
            ack = frames.get(timeout=60)
            elapsed = time.perf_counter() - started
            assert ack == b"ok %d" % len(payload), ack
            rates.append(len(payload) / elapsed / 1e6)
        out["bulk_MBps"][f"{mb}MB"] = round(statistics.median(rates), 1)
    return out


if __name__ == "__main__":
    sys.exit(main())
