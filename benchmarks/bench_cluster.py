"""multiprocessing.Pool, p2ppool.Pool (local) and p2ppool.Pool on a LocalCluster, side by side.

Usage::

    python benchmarks/bench_cluster.py [--quick] [--runs N] [--no-scale] [--no-memory]

Everything runs in one sitting.  A :class:`~p2ppool.local.cluster.LocalCluster` of 2 workers
x 1 process is started first (board, mailbox, relay and workers on 127.0.0.1, workers
already waiting on the board).  Then each run opens one warm pool of each kind
(``multiprocessing``, ``local`` = p2ppool.Pool without a cluster, ``cluster`` = p2ppool.Pool
on the LocalCluster, all with 2 processes) and measures every workload on the three pools in
turn, the order of the kinds rotating from run to run.  One warm-up run is discarded; each
figure is the median of ``--runs`` runs.

Figures (issue 6):

* ``open_s``: open a pool, ``map`` one item, ``close`` + ``join`` (cluster: the workers are
  already waiting on the board, so this includes recruiting them);
* ``map_items_per_s``: ``map`` of 400 000 tiny items, default chunksize;
* ``apply_ms``: median of 200 sequential ``apply`` calls (blocks of 20 calls, kinds
  alternating);
* ``small_map_ms`` (issue 16): median of 100 sequential ``map`` calls of 16 tiny items
  (default chunksize: 8 chunks of 2), the pattern of emcee and scipy's differential
  evolution (hundreds of small maps);
* ``cpu_efficiency``: 20 tasks of ~0.2 s (chunksize 1): ideal (20 x one task timed alone / 2)
  over measured;
* ``payload_mb_per_s``: 10 payloads of 10 MB echoed back, MB moved both ways per second;
* ``imap_first_ms`` / ``imap_total_s``: ``imap`` of 5000 items, chunksize 50 (the median
  of ``IMAP_REPEATS`` per run, kinds alternating: one sample alone was mostly noise);
* ``scale_efficiency`` (``--no-scale`` skips it): 16 processes (cluster: a second
  LocalCluster of 16 workers x 1 process), 320 tasks of ``sleep(0.1)``, chunksize 1;
  efficiency against the 16-way ideal of 2.0 s (medians of ``--scale-runs`` runs);
* memory (``--no-memory`` skips it): peak resident memory of the client process and of the
  workers (each worker process plus its task processes) while ``imap`` maps 1 GB of input
  in 10 MB items (each echoed back and dropped by the consumer), sampled every 10 ms
  (all three kinds; p2ppool reads at most ``READ_AHEAD_PER_SLOT`` chunks per slot ahead).

Wire floor (issue 16; ``--no-wire`` skips it): ``bench_wire.py``'s round trip of 100 bytes
and 10 MB echo over plain TCP and over one dilated wormhole subchannel with no p2ppool code
between, measured in the same sitting (one JSON line each).

Output: one JSON object per line per figure (each kind's median and min..max, the ratio of
each p2ppool kind to multiprocessing, the issue's target for the cluster and whether it was
met), one JSON line about the run (load average before and after, noise), then a markdown
table.  ``--json PATH`` also writes every line's object to PATH as one JSON document.
The machine's load matters: compare ratios from the same run, not absolute numbers across
runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing.pool
import os
import statistics
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import bench_pool  # noqa: E402  (its workload functions and timing helpers)
import bench_wire  # noqa: E402  (the wire floor)
import cloudpickle  # noqa: E402

import p2ppool  # noqa: E402
from p2ppool.local.cluster import LocalCluster  # noqa: E402

# The cluster's workers cannot import bench_pool: send its functions by value.
cloudpickle.register_pickle_by_value(bench_pool)

KINDS = ("multiprocessing", "local", "cluster")
PROCESSES = 2
TASK_S = bench_pool.TASK_S
MB = 1_000_000


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


# --- workloads: each returns the figure's value(s) ----------------------------------------------


def open_map_close(make: Callable[[], Any]) -> float:
    started = time.perf_counter()
    pool = make()
    assert pool.map(bench_pool.tiny, [1]) == [2]
    pool.close()
    pool.join()
    return time.perf_counter() - started


def apply_blocks(pools: Dict[str, Any], calls: int = 200, block: int = 20) -> Dict[str, float]:
    return bench_pool.apply_latencies(pools, calls=calls, block=block)


def small_map_blocks(pools: Dict[str, Any], maps: int = 100, block: int = 10
                     ) -> Dict[str, float]:
    """Median ms of ``maps`` sequential 16-item maps per pool, kinds alternating in blocks."""
    items = list(range(16))
    times: Dict[str, List[float]] = {kind: [] for kind in pools}
    for _ in range(0, maps, block):
        for kind, pool in pools.items():
            for _ in range(block):
                started = time.perf_counter()
                pool.map(bench_pool.tiny, items)
                times[kind].append(time.perf_counter() - started)
    return {kind: statistics.median(values) * 1000 for kind, values in times.items()}


#: imaps per pool and run for ``imap_first_ms`` / ``imap_total_s`` (their medians).
IMAP_REPEATS = 5


def imap_blocks(pools: Dict[str, Any], repeats: int = IMAP_REPEATS
                ) -> Dict[str, Tuple[float, float]]:
    """Median first-result ms and total s of ``repeats`` imaps per pool, kinds alternating."""
    times: Dict[str, List[Tuple[float, float]]] = {kind: [] for kind in pools}
    for _ in range(repeats):
        for kind, pool in pools.items():
            times[kind].append(bench_pool.imap_times(pool))
    return {kind: (statistics.median(f for f, _ in values), statistics.median(t for _, t in values))
            for kind, values in times.items()}


def cpu_efficiency(pool: Any, alone_s: float) -> float:
    return bench_pool.cpu_efficiency(pool, PROCESSES, alone_s)


def scale_efficiency(pool: Any, workers: int, tasks: int, task_s: float) -> float:
    started = time.perf_counter()
    pool.map(nap, [task_s] * tasks, chunksize=1)
    wall = time.perf_counter() - started
    return (tasks * task_s / workers) / wall


# --- figures ------------------------------------------------------------------------------------

# name, unit, higher is better, target on the cluster kind: (text, check(cluster, mp))
# (issue 16's targets where it set one, issue 6's otherwise)
FIGURES: List[Tuple[str, str, bool, str, Callable[[float, float], bool] | None]] = [
    ("open_s", "s", False, "<= 0.15 s", lambda c, m: c <= 0.15),
    ("map_items_per_s", "items/s", True, ">= 1,000,000/s", lambda c, m: c >= 1_000_000),
    ("small_map_ms", "ms", False, "<= 1.5 ms", lambda c, m: c <= 1.5),
    ("apply_ms", "ms", False, "<= 0.5 ms", lambda c, m: c <= 0.5),
    ("cpu_efficiency", "fraction", True, ">= 0.95 x multiprocessing",
     lambda c, m: c >= 0.95 * m),
    ("payload_mb_per_s", "MB/s", True, ">= 400 MB/s", lambda c, m: c >= 400),
    ("imap_first_ms", "ms", False, "<= 2 ms", lambda c, m: c <= 2),
    ("imap_total_s", "s", False, "", None),
    ("scale_efficiency", "fraction", True, ">= 0.9", lambda c, m: c >= 0.9),
]


def rotate(run: int) -> List[str]:
    k = run % len(KINDS)
    return list(KINDS[k:] + KINDS[:k])


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.samples: Dict[str, Dict[str, List[float]]] = {k: {} for k in KINDS}
        self.cluster: LocalCluster | None = None
        self.alone_s = 0.0

    def add(self, kind: str, figure: str, value: float, keep: bool) -> None:
        if keep:
            self.samples[kind].setdefault(figure, []).append(value)

    def make(self, kind: str, processes: int = PROCESSES, cluster: Any = None) -> Any:
        if kind == "multiprocessing":
            return multiprocessing.pool.Pool(processes)
        if kind == "local":
            return p2ppool.Pool(processes)
        return (cluster or self.cluster).pool(processes, fallback=None)

    # one run over every workload, all kinds interleaved
    def run(self, run: int, keep: bool) -> None:
        order = rotate(run)
        for kind in order:
            self.add(kind, "open_s", open_map_close(lambda k=kind: self.make(k)), keep)
        pools = {kind: self.make(kind) for kind in order}
        try:
            for pool in pools.values():  # warm: processes started, peers joined
                pool.map(bench_pool.tiny, range(4), chunksize=1)
            for kind, pool in pools.items():
                self.add(kind, "map_items_per_s", bench_pool.map_items(pool), keep)
            for kind, value in small_map_blocks(pools).items():
                self.add(kind, "small_map_ms", value, keep)
            for kind, value in apply_blocks(pools).items():
                self.add(kind, "apply_ms", value, keep)
            if run < self.args.cpu_runs + 1:
                for kind, pool in pools.items():
                    self.add(kind, "cpu_efficiency", cpu_efficiency(pool, self.alone_s), keep)
            for kind, pool in pools.items():
                self.add(kind, "payload_mb_per_s", bench_pool.payload_rate(pool), keep)
                gc.collect()
            for kind, (first, total) in imap_blocks(pools).items():
                self.add(kind, "imap_first_ms", first, keep)
                self.add(kind, "imap_total_s", total, keep)
        finally:
            for pool in pools.values():
                pool.close()
                pool.join()

    def scale(self) -> Dict[str, Any]:
        workers, tasks, task_s = 16, 320, 0.1
        info: Dict[str, Any] = {}
        started = time.perf_counter()
        with LocalCluster(workers=workers, processes_per_worker=1,
                          start_timeout=120) as cluster:
            info["scale_cluster_start_s"] = round(time.perf_counter() - started, 2)
            pools: Dict[str, Any] = {}
            try:
                for kind in KINDS:
                    started = time.perf_counter()
                    pools[kind] = pool = self.make(kind, workers, cluster)
                    pool.map(nap, [0.0] * workers, chunksize=1)
                    if kind == "cluster":  # wait until every worker has joined
                        manager = pool._manager
                        deadline = time.monotonic() + 60
                        while len(manager.executors) < workers and time.monotonic() < deadline:
                            time.sleep(0.05)
                        info["scale_peers_joined"] = len(manager.executors)
                    info[f"scale_{kind}_ready_s"] = round(time.perf_counter() - started, 2)
                for run in range(self.args.scale_runs + 1):
                    for kind in rotate(run):
                        value = scale_efficiency(pools[kind], workers, tasks, task_s)
                        self.add(kind, "scale_efficiency", value, keep=run > 0)
            finally:
                for pool in pools.values():
                    pool.close()
                    pool.join()
        return info

    def memory(self, kinds: List[str]) -> List[Dict[str, Any]]:
        rows = []
        import psutil

        for kind in kinds:
            before = {c.pid for c in psutil.Process().children()}
            pool = self.make(kind)
            try:
                pool.map(bench_pool.tiny, range(4), chunksize=1)
                if kind == "cluster":
                    assert self.cluster is not None
                    pids = [w.pid for w in self.cluster.workers]
                else:  # the pool's own processes: this process's new children
                    pids = [c.pid for c in psutil.Process().children() if c.pid not in before]
                rows.append(memory_figure(kind, pool, pids))
            finally:
                pool.close()
                pool.join()
            gc.collect()
        return rows


def _tree_rss(pids: List[int]) -> int:
    import psutil

    total = 0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs = [proc] + proc.children(recursive=True)
        except psutil.Error:
            continue
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
    return total


def memory_figure(kind: str, pool: Any, worker_pids: List[int],
                  total_bytes: int = 1000 * MB, item_bytes: int = 10 * MB) -> Dict[str, Any]:
    """Peak RSS of the client and of the workers (``worker_pids`` and their children) while
    ``pool.imap`` maps ``total_bytes`` in items of ``item_bytes``, echoed back."""
    import psutil

    me = psutil.Process()
    client_before = me.memory_info().rss
    workers_before = _tree_rss(worker_pids)
    peak = {"client": client_before, "workers": workers_before}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak["client"] = max(peak["client"], me.memory_info().rss)
            peak["workers"] = max(peak["workers"], _tree_rss(worker_pids))

    def items() -> Iterator[bytes]:
        for i in range(total_bytes // item_bytes):
            yield bytes([i % 251]) * item_bytes

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    count = 0
    for blob in pool.imap(bench_pool.echo, items(), 1):
        assert len(blob) == item_bytes
        count += 1
        del blob
    took = time.perf_counter() - started
    stop.set()
    sampler.join()
    assert count == total_bytes // item_bytes
    return {
        "figure": "memory_imap_1GB", "kind": kind, "items": count,
        "item_mb": item_bytes / MB, "seconds": round(took, 2),
        "client_rss_before_mb": round(client_before / MB),
        "client_rss_peak_mb": round(peak["client"] / MB),
        "workers_rss_before_mb": round(workers_before / MB),
        "workers_rss_peak_mb": round(peak["workers"] / MB),
    }


# --- report -------------------------------------------------------------------------------------


def summarise(samples: Dict[str, Dict[str, List[float]]]) -> List[Dict[str, Any]]:
    rows = []
    for name, unit, higher, target, check in FIGURES:
        if not all(samples[k].get(name) for k in KINDS):
            continue
        row: Dict[str, Any] = {"figure": name, "unit": unit}
        med = {k: statistics.median(samples[k][name]) for k in KINDS}
        for kind in KINDS:
            values = samples[kind][name]
            row[kind] = _round(med[kind])
            row[f"{kind}_range"] = [_round(min(values)), _round(max(values))]
        for kind in ("local", "cluster"):
            m = med["multiprocessing"]
            row[f"{kind}_ratio"] = round(med[kind] / m, 3) if m else None
        row["higher_is_better"] = higher
        row["cluster_target"] = target
        row["met"] = None if check is None else bool(check(med["cluster"],
                                                           med["multiprocessing"]))
        rows.append(row)
    return rows


def _round(x: float) -> float:
    return round(x, 4) if abs(x) < 100 else round(x, 1)


def _fmt(x: float, unit: str) -> str:
    if unit == "items/s":
        return f"{x / 1e6:.2f} M/s"
    if unit == "fraction":
        return f"{x:.3f}"
    if unit == "MB/s":
        return f"{x:.0f} MB/s"
    if unit == "ms":
        return f"{x:.2f} ms"
    return f"{x:.3f} s"


def markdown(rows: List[Dict[str, Any]]) -> str:
    lines = [
        "| figure | multiprocessing | p2ppool local | ratio | p2ppool cluster | ratio "
        "| cluster target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        unit = row["unit"]
        met = {None: "", True: "yes", False: "**no**"}[row["met"]]
        lines.append(
            f"| {row['figure']} | {_fmt(row['multiprocessing'], unit)} "
            f"| {_fmt(row['local'], unit)} | {row['local_ratio']:.2f} "
            f"| {_fmt(row['cluster'], unit)} | {row['cluster_ratio']:.2f} "
            f"| {row['cluster_target']} | {met} |"
        )
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs (default 5)")
    parser.add_argument("--cpu-runs", type=int, default=3,
                        help="measured runs of the CPU figure (default 3)")
    parser.add_argument("--scale-runs", type=int, default=3,
                        help="measured runs of the 16-worker figure (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="2 runs, 1 CPU run, 1 scale run, no memory figure")
    parser.add_argument("--no-scale", action="store_true", help="skip the 16-worker figure")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory figure")
    parser.add_argument("--no-wire", action="store_true", help="skip the wire floor rows")
    parser.add_argument("--json", metavar="PATH", help="also write every row to PATH")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.cpu_runs, args.scale_runs, args.no_memory = 2, 1, 1, True
    args.cpu_runs = min(args.cpu_runs, args.runs)

    load_before = [round(x, 2) for x in os.getloadavg()]
    bench = Bench(args)
    bench.alone_s = statistics.median(
        [_timed(bench_pool.burn, TASK_S) for _ in range(3)])
    started = time.perf_counter()
    with LocalCluster(workers=2, processes_per_worker=1) as cluster:
        cluster_start_s = time.perf_counter() - started
        bench.cluster = cluster
        for run in range(args.runs + 1):  # run 0: warm-up, discarded
            bench.run(run, keep=run > 0)
        memory_rows = [] if args.no_memory else bench.memory(list(KINDS))
    scale_info = {} if args.no_scale else bench.scale()
    wire_rows = [] if args.no_wire else bench_wire.measure(round_trips=1000, bulk_runs=3)

    rows = summarise(bench.samples)
    spreads = [
        (max(v) - min(v)) / statistics.median(v)
        for kind in KINDS for v in bench.samples[kind].values()
        if len(v) > 1 and statistics.median(v)
    ]
    for row in rows + memory_rows + wire_rows:
        print(json.dumps(row), flush=True)
    run_row = {
        "summary": "run", "runs": args.runs, "processes": PROCESSES,
        "cluster": "LocalCluster(workers=2, processes_per_worker=1)",
        "cluster_start_s": round(cluster_start_s, 2), **scale_info,
        "task_alone_s": round(bench.alone_s, 4),
        "median_relative_spread": round(statistics.median(spreads), 3) if spreads else None,
        "max_relative_spread": round(max(spreads), 3) if spreads else None,
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
        "machine": os.uname().nodename, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
    print(json.dumps(run_row), flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"figures": rows, "memory": memory_rows, "wire": wire_rows,
                       "run": run_row}, out, indent=1)
    print()
    print(markdown(rows))
    for wire in wire_rows:
        print(f"\nwire floor, {wire['wire']}: round trip of 100 B {wire['rtt_ms']:.3f} ms, "
              f"{wire['bulk_mb']} MB echo {wire['bulk_mb_per_s']:.0f} MB/s (both ways)")
    for mem in memory_rows:
        print(f"\nmemory, {mem['kind']}: imap of {mem['items']} x {mem['item_mb']:g} MB in "
              f"{mem['seconds']} s: client RSS {mem['client_rss_before_mb']} -> peak "
              f"{mem['client_rss_peak_mb']} MB; workers RSS {mem['workers_rss_before_mb']} "
              f"-> peak {mem['workers_rss_peak_mb']} MB")
    print(f"\nload average {load_before} before, {[round(x, 2) for x in os.getloadavg()]} "
          f"after; ratios are kind / multiprocessing from the same run")
    return 0


def _timed(fn: Callable[..., Any], *args: Any) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
