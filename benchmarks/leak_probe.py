"""Memory probe: open and lose wormhole sessions over and over; report what this process keeps.

Usage::

    python benchmarks/leak_probe.py MODE [--cycles 300] [--every 50] [--tracemalloc]

Modes (everything on 127.0.0.1: a real mailbox server and transit relay; real processes):

``transfer-close``
    both ends of a :class:`p2ppool.transfer.session.TransferSession` in this process; each cycle
    opens a pair, exchanges a frame and closes it normally (goodbye).
``transfer-kill``
    each cycle opens a session with a peer process (``tests/transfer/_peer.py``), exchanges
    a frame, SIGKILLs the peer and waits until the session is declared lost (heartbeat
    deadline, shortened to 0.6 s here).
``pool-close``
    a :class:`~p2ppool.local.cluster.LocalCluster` of 1 worker; each cycle opens a pool,
    maps a few items on the worker and closes the pool (the session ends with a goodbye).
``pool-tasks``
    a LocalCluster of 1 worker (2 processes) and one pool; each cycle maps 200 items with
    chunksize 1 (``map`` and ``imap_unordered`` in turn): task traffic, no session churn.
``pool-handover``
    a LocalCluster of 1 worker with 1 slot and two long-lived pools that map in turn: each
    map takes the worker from the other, idle, pool (which releases its session): two
    session hand-overs per cycle, the pattern behind most sessions of the soak.
``pool-kill``
    a LocalCluster and one pool; each cycle maps a few items, SIGKILLs the worker serving
    the pool and starts a replacement, so the next map needs a new session (the old one is
    lost: heartbeat deadline).

After every ``--every`` cycles one JSON line is printed: cycles done, RSS (kB), the growth
of RSS since the first report, live ``transfer.Session`` objects (by weakref) and the
object types whose live count grew most since the first report (``gc.get_objects()``).
With ``--tracemalloc`` the allocation sites (3 frames) that grew most are added.  The first
report is taken after ``--warmup`` cycles, so the reactor thread, imports and caches are
not counted as growth.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import weakref
from typing import Any, Callable, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from p2ppool.transfer import session as transfer  # noqa: E402
from p2ppool.transfer.session import CLIENT, WORKER, TransferSession, new_code  # noqa: E402

PEER_SCRIPT = os.path.join(ROOT, "tests", "transfer", "_peer.py")

#: Every Session ever created here, weakly: the live ones are those still referenced.
_SESSIONS: weakref.WeakSet[TransferSession] = weakref.WeakSet()
_original_init = TransferSession.__init__


def _tracking_init(self: TransferSession, *args: Any, **kwargs: Any) -> None:
    _original_init(self, *args, **kwargs)
    _SESSIONS.add(self)


TransferSession.__init__ = _tracking_init  # type: ignore[method-assign]


def rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def type_counts() -> collections.Counter[str]:
    gc.collect()
    return collections.Counter(
        f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects()
    )


class Reporter:
    """Prints one JSON line per checkpoint, relative to the first one."""

    def __init__(self, mode: str, trace: bool) -> None:
        self.mode = mode
        self.trace = trace
        self.base_rss = 0
        self.base_types: collections.Counter[str] = collections.Counter()
        self.base_snapshot: Any = None
        self.started = time.monotonic()

    def baseline(self) -> None:
        self.base_types = type_counts()
        self.base_rss = rss_kb()
        if self.trace:
            self.base_snapshot = tracemalloc.take_snapshot()

    def report(self, cycles: int) -> Dict[str, Any]:
        types = type_counts()
        grew = {k: types[k] - self.base_types.get(k, 0) for k in types}
        top = dict(sorted(((k, v) for k, v in grew.items() if v > 0),
                          key=lambda kv: -kv[1])[:15])
        rss = rss_kb()
        line: Dict[str, Any] = {
            "mode": self.mode, "cycles": cycles, "seconds": round(time.monotonic()
                                                                   - self.started, 1),
            "rss_kb": rss, "rss_growth_kb": rss - self.base_rss,
            "live_sessions": len(_SESSIONS), "gc_objects": sum(types.values()),
            "gc_objects_growth": sum(types.values()) - sum(self.base_types.values()),
            "types_grown": top,
        }
        if self.trace and self.base_snapshot is not None:
            snap = tracemalloc.take_snapshot()
            stats = snap.compare_to(self.base_snapshot, "traceback")[:8]
            line["tracemalloc_top"] = [
                {"kb": round(s.size_diff / 1024, 1), "count": s.count_diff,
                 "where": [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}"
                           for f in s.traceback]}
                for s in stats
            ]
            line["tracemalloc_total_kb"] = round(
                sum(s.size_diff for s in snap.compare_to(self.base_snapshot, "filename"))
                / 1024, 1)
        print(json.dumps(line), flush=True)
        return line


# --- transfer-level cycles ----------------------------------------------------------------

class _Collector:
    def __init__(self) -> None:
        self.frames: List[bytes] = []
        self.cond = threading.Condition()
        self.lost: str | None = None

    def on_frame(self, frame: bytes) -> None:
        with self.cond:
            self.frames.append(frame)
            self.cond.notify_all()

    def on_lost(self, cause: str) -> None:
        with self.cond:
            self.lost = cause
            self.cond.notify_all()

    def wait(self, what: Callable[[], Any], timeout: float) -> None:
        with self.cond:
            if not self.cond.wait_for(what, timeout):
                raise TimeoutError("the probe's session did not get there in time")


def _transfer_close(servers: Any) -> Callable[[], None]:
    def cycle() -> None:
        code = new_code()
        cc, wc = _Collector(), _Collector()
        result: Dict[str, Any] = {}

        def open_worker() -> None:
            result["w"] = TransferSession.open(code, servers.relay_url, servers.transit,
                                               role=WORKER, on_frame=wc.on_frame,
                                               on_lost=wc.on_lost, loopback_only=True,
                                               timeout=20)

        t = threading.Thread(target=open_worker)
        t.start()
        client = TransferSession.open(code, servers.relay_url, servers.transit, role=CLIENT,
                              on_frame=cc.on_frame, on_lost=cc.on_lost, loopback_only=True,
                              timeout=20)
        t.join(25)
        worker = result["w"]
        client.send(b"x" * 1000)
        wc.wait(lambda: wc.frames, 10)
        worker.send(b"y" * 1000)
        cc.wait(lambda: cc.frames, 10)
        client.close("done")
        wc.wait(lambda: wc.lost is not None, 10)
        cc.wait(lambda: cc.lost is not None, 10)
        worker.close()

    return cycle


def _transfer_kill(servers: Any) -> Callable[[], None]:
    def cycle() -> None:
        code = new_code()
        peer = subprocess.Popen(
            [sys.executable, PEER_SCRIPT, "echo", code, servers.relay_url, servers.transit],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            col = _Collector()
            session = TransferSession.open(code, servers.relay_url, servers.transit, role=CLIENT,
                                   on_frame=col.on_frame, on_lost=col.on_lost,
                                   loopback_only=True, timeout=20,
                                   heartbeat_s=0.2, heartbeat_deadline_s=0.6)
            session.send(b"ping" * 250)
            col.wait(lambda: col.frames, 10)
            peer.send_signal(signal.SIGKILL)
            col.wait(lambda: col.lost is not None, 10)
            session.close()
        finally:
            peer.kill()
            peer.wait(10)
            assert peer.stdout is not None
            peer.stdout.close()

    return cycle


# --- pool-level cycles --------------------------------------------------------------------

def _pool_close(cluster: Any) -> Callable[[], None]:
    def cycle() -> None:
        with cluster.pool(1, fallback=None) as pool:
            assert pool.map(abs, range(-4, 0)) == [4, 3, 2, 1]

    return cycle


def _pool_tasks(pool: Any) -> Callable[[], None]:
    round_ = [0]

    def cycle() -> None:
        round_[0] += 1
        items = list(range(round_[0] * 1000, round_[0] * 1000 + 200))
        if round_[0] % 2:
            assert sorted(pool.imap_unordered(abs, items)) == items
        else:
            assert pool.map(abs, items, chunksize=1) == items

    return cycle


def _pool_handover(first: Any, second: Any) -> Callable[[], None]:
    def cycle() -> None:
        # One worker slot, two long-lived pools: each map takes the worker from the idle
        # other pool (it releases its session for the Want), as the soak's pools do.
        assert first.map(abs, range(-4, 0)) == [4, 3, 2, 1]
        assert second.map(abs, range(-4, 0)) == [4, 3, 2, 1]

    return cycle


def _pool_kill(cluster: Any, pool: Any) -> Callable[[], None]:
    def cycle() -> None:
        assert pool.map(abs, range(-4, 0)) == [4, 3, 2, 1]
        alive = [i for i, w in enumerate(cluster.workers) if w.alive]
        cluster.add_worker(wait=True)
        for i in alive:
            cluster.kill_worker(i, signal.SIGKILL)
            cluster.workers[i].process.wait(10)

    return cycle


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/leak_probe.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["transfer-close", "transfer-kill", "pool-close",
                                         "pool-kill", "pool-tasks", "pool-handover"])
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also report the allocation sites that grew (slow)")
    args = parser.parse_args(argv)
    if args.tracemalloc:
        tracemalloc.start(3)
    reporter = Reporter(args.mode, args.tracemalloc)
    stack: List[Any] = []
    try:
        if args.mode.startswith("transfer"):
            from p2ppool.transfer.servers import WormholeServers

            servers = WormholeServers()
            stack.append(servers.stop)
            cycle = (_transfer_close if args.mode == "transfer-close"
                     else _transfer_kill)(servers)
        else:
            from p2ppool.local.cluster import LocalCluster

            cluster = LocalCluster(workers=1,
                                   processes_per_worker=1 if args.mode == "pool-handover" else 2)
            stack.append(cluster.stop)
            if args.mode == "pool-close":
                cycle = _pool_close(cluster)
            elif args.mode == "pool-handover":
                pools = [cluster.pool(1, fallback=None) for _ in range(2)]
                for each in pools:
                    stack.append(lambda each=each: (each.close(), each.join()))
                cycle = _pool_handover(*pools)
            elif args.mode == "pool-tasks":
                pool = cluster.pool(2, fallback=None)
                stack.append(lambda: (pool.close(), pool.join()))
                cycle = _pool_tasks(pool)
            else:
                pool = cluster.pool(1, fallback=None)
                stack.append(lambda: (pool.close(), pool.join()))
                cycle = _pool_kill(cluster, pool)
        for _ in range(args.warmup):
            cycle()
        reporter.baseline()
        for done in range(1, args.cycles + 1):
            cycle()
            if done % args.every == 0 or done == args.cycles:
                reporter.report(done)
    finally:
        for undo in reversed(stack):
            undo()
    return 0


if __name__ == "__main__":
    _ = transfer  # the module is imported first so that its patches are in place
    sys.exit(main())
