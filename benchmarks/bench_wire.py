"""The wire floor under a cluster round trip: plain TCP and one dilated wormhole subchannel.

Usage::

    python benchmarks/bench_wire.py [--round-trips 2000] [--bulk-mb 10] [--bulk-runs 5]

Two processes on 127.0.0.1 (this script and itself started again with ``--peer``), with no
p2ppool code on the data path:

* ``tcp``: a blocking socket pair (TCP_NODELAY); the peer echoes every byte it reads;
* ``dilated``: a real mailbox server and transit relay on loopback
  (:class:`p2ppool.transfer.servers.WormholeServers`), one wormhole per side with
  ``dilation=True``, one subchannel; the peer's Twisted protocol writes back every byte it
  receives.  The client drives everything from the reactor thread, so no thread hand-off is
  timed.  :func:`p2ppool.transfer.wormhole_patches.install_patches` is applied on both sides (the
  dilation p2ppool runs: TCP_NODELAY, loopback-only listening, batched acks).

Figures, each the median over the runs: ``rtt_ms`` (100 bytes out, the same 100 bytes
back), ``bulk_mb_per_s`` (``--bulk-mb`` MB written in 64 KiB pieces and echoed back, MB
moved both ways per second, as ``payload_mb_per_s`` of ``bench_cluster.py`` counts them).
Prints one JSON object per line; ``bench_cluster.py`` imports :func:`measure` (unless
``--no-wire``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PIECE = 64 * 1024
SMALL = b"x" * 100
APPID = "p2ppool.bench/wire"
SUBPROTOCOL = "bench/1"


# --- the peer ------------------------------------------------------------------------------------


def _dilate(reactor: Any, code: str, relay_url: str, transit: str) -> Any:
    """One side's wormhole with the given code, dilated loopback-only: ``(wormhole, dilated)``."""
    import wormhole

    w = wormhole.create(APPID, relay_url, reactor, dilation=True)
    w.set_code(code)
    dw = w.dilate(transit_relay_location=transit, no_listen=False)
    dw._manager._p2ppool_loopback_only = True
    return w, dw


def _tcp_peer(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        data = sock.recv(1 << 20)
        if not data:
            break
        sock.sendall(data)
    sock.close()


def _dilated_peer(code: str, relay_url: str, transit: str) -> None:
    from twisted.internet import protocol, reactor

    from p2ppool.transfer.wormhole_patches import install_patches

    install_patches()

    class Echo(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)

        def connectionLost(self, reason: Any = None) -> None:
            if reactor.running:
                reactor.stop()

    def start() -> None:
        _w, dw = _dilate(reactor, code, relay_url, transit)
        dw.listener_for(SUBPROTOCOL).listen(protocol.Factory.forProtocol(Echo))

    reactor.callWhenRunning(start)
    reactor.callLater(120, reactor.stop)  # never outlive a lost client
    reactor.run()


# --- the client ----------------------------------------------------------------------------------


def _tcp(round_trips: int, bulk: bytes, bulk_runs: int) -> Dict[str, float]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    peer = subprocess.Popen([sys.executable, __file__, "--peer", "tcp",
                             str(server.getsockname()[1])])
    try:
        sock, _ = server.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for _ in range(round_trips):
            started = time.perf_counter()
            sock.sendall(SMALL)
            got = 0
            while got < len(SMALL):
                got += len(sock.recv(65536))
            times.append(time.perf_counter() - started)
        rates = []
        for _ in range(bulk_runs):
            started = time.perf_counter()
            writer = threading.Thread(target=sock.sendall, args=(bulk,))
            writer.start()
            got = 0
            while got < len(bulk):
                got += len(sock.recv(1 << 20))
            writer.join()
            rates.append(2 * len(bulk) / 1e6 / (time.perf_counter() - started))
        sock.close()
        return {"rtt_ms": statistics.median(times) * 1000,
                "bulk_mb_per_s": statistics.median(rates)}
    finally:
        server.close()
        peer.wait(10)


class _Client:
    """The dilated client, run entirely in the reactor thread."""

    def __init__(self, round_trips: int, bulk: bytes, bulk_runs: int) -> None:
        self.round_trips, self.bulk, self.bulk_runs = round_trips, bulk, bulk_runs
        self.times: List[float] = []
        self.rates: List[float] = []
        self.done = threading.Event()
        self.proto: Any = None
        self.want = 0
        self.got = 0
        self.started = 0.0
        self.phase = "rtt"

    def connected(self, proto: Any) -> None:
        self.proto = proto
        self._next_rtt()

    def _next_rtt(self) -> None:
        if len(self.times) >= self.round_trips:
            self.phase = "bulk"
            self._next_bulk()
            return
        self.want, self.got = len(SMALL), 0
        self.started = time.perf_counter()
        self.proto.transport.write(SMALL)

    def _next_bulk(self) -> None:
        if len(self.rates) >= self.bulk_runs:
            self.proto.transport.loseConnection()
            self.done.set()
            return
        self.want, self.got = len(self.bulk), 0
        self.started = time.perf_counter()
        view = memoryview(self.bulk)
        for i in range(0, len(view), PIECE):
            self.proto.transport.write(view[i:i + PIECE].tobytes())

    def received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got < self.want:
            return
        took = time.perf_counter() - self.started
        if self.phase == "rtt":
            self.times.append(took)
            self._next_rtt()
        else:
            self.rates.append(2 * len(self.bulk) / 1e6 / took)
            self._next_bulk()


def _dilated(round_trips: int, bulk: bytes, bulk_runs: int) -> Dict[str, float]:
    from twisted.internet import protocol

    from p2ppool.transfer import reactor as reactor_mod
    from p2ppool.transfer.servers import WormholeServers
    from p2ppool.transfer.session import new_code
    from p2ppool.transfer.wormhole_patches import install_patches

    install_patches()
    client = _Client(round_trips, bulk, bulk_runs)

    class Proto(protocol.Protocol):
        def connectionMade(self) -> None:
            client.connected(self)

        def dataReceived(self, data: bytes) -> None:
            client.received(data)

    code = new_code()
    with WormholeServers() as servers:
        peer = subprocess.Popen([sys.executable, __file__, "--peer", "dilated", code,
                                 servers.relay_url, servers.transit])
        holder: Dict[str, Any] = {}
        try:
            reactor = reactor_mod.ensure_running()

            def start() -> None:
                w, dw = _dilate(reactor, code, servers.relay_url, servers.transit)
                dw.connector_for(SUBPROTOCOL).connect(protocol.Factory.forProtocol(Proto))
                holder["w"] = w

            reactor.callFromThread(start)
            if not client.done.wait(120):
                raise RuntimeError("the dilated echo did not finish within 120 s")
            reactor.callFromThread(lambda: holder["w"].close().addErrback(lambda _f: None))
        finally:
            try:
                peer.wait(15)
            except subprocess.TimeoutExpired:
                peer.kill()
                peer.wait()
    return {"rtt_ms": statistics.median(client.times) * 1000,
            "bulk_mb_per_s": statistics.median(client.rates)}


def measure(round_trips: int = 2000, bulk_mb: int = 10, bulk_runs: int = 5
            ) -> List[Dict[str, Any]]:
    """One row per wire (``tcp``, ``dilated``): its medians."""
    bulk = b"\x5a" * (bulk_mb * 1_000_000)
    rows = []
    for wire, fn in (("tcp", _tcp), ("dilated", _dilated)):
        figures = fn(round_trips, bulk, bulk_runs)
        rows.append({"figure": "wire", "wire": wire, "round_trips": round_trips,
                     "bulk_mb": bulk_mb,
                     **{k: round(v, 4 if k == "rtt_ms" else 1) for k, v in figures.items()}})
    return rows


def main(argv: List[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--peer"]:
        if argv[1] == "tcp":
            _tcp_peer(int(argv[2]))
        else:
            _dilated_peer(argv[2], argv[3], argv[4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--bulk-mb", type=int, default=10)
    parser.add_argument("--bulk-runs", type=int, default=5)
    args = parser.parse_args(argv)
    for row in measure(args.round_trips, args.bulk_mb, args.bulk_runs):
        print(json.dumps(row), flush=True)
    print(json.dumps({"summary": "wire", "load_average": [round(x, 2)
                                                          for x in os.getloadavg()]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
