"""Soak run: a LocalCluster of 4 workers serving 3 concurrent pools for N minutes, with
random SIGKILLs of workers (each replaced at once).

Usage::

    python benchmarks/soak.py [--minutes 10] [--kill-every 5] [--seed 1] [--items 200]

Each of the 3 pools (4 slots each, 8 slots on the workers: they compete) runs maps back
to back, alternating ``map`` and ``imap_unordered`` (chunksize 1) of ``--items`` tasks of
10-30 ms that return ``(item, value, pid, worker_pid)``.  Every result is checked: an item
with no result is *lost*, one with two is a *duplicate*, a wrong value is *wrong* (each
must be 0).  Every task start is also appended to an execution log, so *retries* (starts
beyond one per item: tasks cut short by a kill and run again) are counted apart from
results.  Meanwhile the main thread SIGKILLs a random worker every ``--kill-every`` seconds
on average (exponential gaps) and starts a replacement.

One JSON object is printed at the end: tasks completed, maps, failed maps (a chunk out of
attempts: a clear ``ChunkFailed``, counted, not hidden), stalled maps (no progress for
``MAP_TIMEOUT_S``: that pool stops), whether the board and wormhole servers were still up,
retries, duplicates, lost, wrong,
kills, this process's RSS and open file descriptors before (after a warm-up cluster and
pool, so that the reactor thread's own descriptors are not counted) and after, and the
minutes run.  Exit status 0 only if duplicates, lost and wrong are all 0.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from p2ppool.errors import ChunkFailed  # noqa: E402
from p2ppool.local.cluster import LocalCluster  # noqa: E402
from tests.fixtures.faults import record, value_of  # noqa: E402

#: A map (or one imap result) that takes longer than this counts as stalled; that pool stops.
MAP_TIMEOUT_S = 120.0


def _rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Totals:
    """Counters shared by the pool threads (under one lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Dict[str, int] = collections.Counter()
        self.errors: List[str] = []

    def add(self, **counts: int) -> None:
        with self.lock:
            for key, value in counts.items():
                self.counts[key] += value


def _pool_loop(cluster: LocalCluster, index: int, items: int, log: str, stop: threading.Event,
               totals: Totals, seed: int) -> None:
    try:
        _pool_rounds(cluster, index, items, log, stop, totals, seed)
    except Exception as exc:  # reported in the JSON, not lost in a thread
        totals.add(crashed_pools=1)
        with totals.lock:
            totals.errors.append(f"pool {index} crashed: {type(exc).__name__}: {exc}")


def _pool_rounds(cluster: LocalCluster, index: int, items: int, log: str,
                 stop: threading.Event, totals: Totals, seed: int) -> None:
    rng = random.Random(seed * 100 + index)
    with cluster.pool(4, fallback=None, max_attempts=10) as pool:
        round_ = 0
        while not stop.is_set():
            base = index * 10**9 + round_ * 10**4
            batch = [base + i for i in range(items)]
            func = functools.partial(record, seconds=rng.uniform(0.01, 0.03), log=log)
            try:
                if round_ % 2:
                    iterator = pool.imap_unordered(func, batch)  # .next(timeout) needs size 1
                    records = [iterator.next(MAP_TIMEOUT_S) for _ in batch]
                else:
                    records = pool.map_async(func, batch, chunksize=1).get(MAP_TIMEOUT_S)
            except multiprocessing.TimeoutError:
                totals.add(stalled_maps=1)
                with totals.lock:
                    totals.errors.append(f"pool {index}: a map made no progress for "
                                         f"{MAP_TIMEOUT_S:g} s")
                return
            except ChunkFailed as exc:
                totals.add(failed_maps=1)
                with totals.lock:
                    totals.errors.append(str(exc)[:300])
                round_ += 1
                continue
            seen = collections.Counter(r[0] for r in records)
            totals.add(
                maps=1,
                tasks=len(records),
                duplicates=sum(n - 1 for n in seen.values() if n > 1),
                lost=len(set(batch) - set(seen)),
                wrong=sum(1 for r in records if r[1] != value_of(r[0])),
                foreign=len(set(seen) - set(batch)),
            )
            round_ += 1


def _executions(log: str) -> int:
    try:
        with open(log, encoding="ascii") as f:
            return sum(1 for line in f if line.endswith("\n"))
    except FileNotFoundError:
        return 0


def soak(minutes: float, kill_every: float, seed: int, items: int) -> Dict[str, Any]:
    """Run the soak; return the report (see the module docstring)."""
    rng = random.Random(seed)
    # Warm up first, so that what stays for the life of the process (the Twisted reactor
    # thread and its wakeup pipe, imported modules) is not counted as growth.
    with LocalCluster(workers=1) as warm, warm.pool(1, fallback=None) as pool:
        pool.map(abs, range(4))
    fds_before = _fds()
    rss_before = _rss_kb()
    totals = Totals()
    kills = 0
    with tempfile.TemporaryDirectory(prefix="p2ppool-soak-") as tmp:
        log = os.path.join(tmp, "executions")
        started = time.monotonic()
        with LocalCluster(workers=4, processes_per_worker=2) as cluster:
            stop = threading.Event()
            threads = [threading.Thread(target=_pool_loop, name=f"soak-pool-{i}",
                                        args=(cluster, i, items, log, stop, totals, seed))
                       for i in range(3)]
            for thread in threads:
                thread.start()
            rss_warm = None
            end = started + minutes * 60
            # Kills come from this thread: the cluster's children die with the thread that
            # started them (PR_SET_PDEATHSIG).
            while time.monotonic() < end:
                stop.wait(min(rng.expovariate(1.0 / kill_every), max(0.0, end - time.monotonic())))
                if rss_warm is None and totals.counts["maps"] >= 3:
                    rss_warm = _rss_kb()
                if time.monotonic() >= end:
                    break
                alive = [i for i, w in enumerate(cluster.workers) if w.alive]
                if len(alive) >= 2:
                    cluster.kill_worker(rng.choice(alive), signal.SIGKILL)
                    kills += 1
                cluster.add_worker(wait=False)
                if any(not t.is_alive() for t in threads):
                    break  # a pool thread died: report it below
            stop.set()
            for thread in threads:
                thread.join(MAP_TIMEOUT_S + 30)
            hung = [t.name for t in threads if t.is_alive()]
            workers_started = len(cluster.workers)
            servers_alive = {"board": cluster._board_proc is not None
                             and cluster._board_proc.poll() is None,
                             "mailbox_and_relay": bool(cluster._servers.running)}
        elapsed = time.monotonic() - started
        executions = _executions(log)
    rss_after = _rss_kb()
    fds_after = _fds()
    counts = totals.counts
    return {
        "minutes": round(elapsed / 60, 2),
        "maps": counts["maps"],
        "failed_maps": counts["failed_maps"],
        "tasks_completed": counts["tasks"],
        "retries": executions - counts["tasks"],
        "duplicates": counts["duplicates"],
        "lost": counts["lost"],
        "wrong": counts["wrong"] + counts["foreign"],
        "kills": kills,
        "workers_started": workers_started,
        "stalled_maps": counts["stalled_maps"],
        "crashed_pools": counts["crashed_pools"],
        "hung_pools": hung,
        "servers_alive_at_end": servers_alive,
        "rss_kb_before": rss_before,
        "rss_kb_warm": rss_warm,
        "rss_kb_after": rss_after,
        "rss_growth_kb_after_warmup": rss_after - (rss_warm or rss_before),
        "fds_before": fds_before,
        "fds_after": fds_after,
        "errors": totals.errors[:5],
    }


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/soak.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--kill-every", type=float, default=5.0, metavar="S",
                        help="mean seconds between worker kills (default 5)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--items", type=int, default=200, help="tasks per map (default 200)")
    args = parser.parse_args(argv)
    report = soak(args.minutes, args.kill_every, args.seed, args.items)
    print(json.dumps(report), flush=True)
    ok = (report["duplicates"] == 0 and report["lost"] == 0 and report["wrong"] == 0
          and not report["hung_pools"] and not report["stalled_maps"]
          and not report["crashed_pools"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
