"""Time multiprocessing.Pool and p2ppool.Pool side by side, in the same run, interleaved.

Usage::

    python benchmarks/bench_pool.py [--repeats 5] [--processes 2]

Each figure is measured once per implementation as a warm-up, then ``--repeats`` times with
the two implementations alternating, and the median is kept.  One JSON object per line is
printed per figure: both medians, their spread (min..max), the ratio p2ppool/multiprocessing
of the medians (``ratio``, which the target applies to) and of the best runs (``best_ratio``,
less sensitive to other load on the machine), and the issue's target.  A last line
summarises how noisy the run was.

Figures (local mode):

* ``start_map_close_s``: ``Pool(n)`` + one tiny ``map`` + ``close``/``join``;
* ``map_items_per_s``: ``map`` of 400 000 tiny items (default chunksize);
* ``apply_latency_ms``: the median of 200 sequential ``apply`` calls (both pools alive,
  alternating blocks of 20 calls); ``apply_latency_alone_ms``: the same with only the
  measured pool alive (multiprocessing is often several times faster alone than next to
  another pool on a 2-core machine, so both are shown);
* ``cpu_efficiency``: 20 tasks of ~0.2 s on n processes, against one task timed alone
  (1.0 = perfect parallelism);
* ``payload_mb_per_s``: 10 payloads of 10 MB echoed back, MB moved (both ways) per second;
* ``imap_first_result_ms`` / ``imap_total_s``: ``imap`` of 5000 items, chunksize 50;
* ``imap_unordered_items_per_s``: ``imap_unordered`` of 2000 tiny items, chunksize 1 (one
  round trip per item: what prefetching onto busy processes speeds up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import multiprocessing.pool  # noqa: E402

from bench_tasks import burn, echo, tiny  # noqa: E402,F401  (re-exported for bench_cluster)

import p2ppool  # noqa: E402

KINDS: Dict[str, Callable[..., Any]] = {
    "multiprocessing": multiprocessing.pool.Pool,
    "p2ppool": p2ppool.Pool,
}

TASK_S = 0.2
PAYLOAD = b"\x5a" * (10 * 1024 * 1024)


# --- one measurement each; every function returns the figure's value --------------------------


def start_map_close(make: Callable[..., Any], n: int) -> float:
    started = time.perf_counter()
    pool = make(n)
    pool.map(tiny, range(10))
    pool.close()
    pool.join()
    return time.perf_counter() - started


def map_items(pool: Any) -> float:
    items = range(400_000)
    started = time.perf_counter()
    result = pool.map(tiny, items)
    took = time.perf_counter() - started
    assert result[-1] == 400_000
    return len(items) / took


def apply_latencies(pools: Dict[str, Any], calls: int = 200, block: int = 20) -> Dict[str, float]:
    """Median ms of ``calls`` sequential applies per pool, alternating blocks of ``block``
    calls between the pools so that both see the same machine noise."""
    times: Dict[str, List[float]] = {kind: [] for kind in pools}
    for start in range(0, calls, block):
        for kind, pool in pools.items():
            for i in range(start, start + block):
                started = time.perf_counter()
                pool.apply(tiny, (i,))
                times[kind].append(time.perf_counter() - started)
    return {kind: statistics.median(values) * 1000 for kind, values in times.items()}


def cpu_efficiency(pool: Any, n: int, alone_s: float) -> float:
    started = time.perf_counter()
    pool.map(burn, [TASK_S] * 20, chunksize=1)
    wall = time.perf_counter() - started
    return (20 * alone_s) / (n * wall)


def payload_rate(pool: Any) -> float:
    started = time.perf_counter()
    back = pool.map(echo, [PAYLOAD] * 10, chunksize=1)
    took = time.perf_counter() - started
    assert len(back) == 10 and len(back[-1]) == len(PAYLOAD)
    return 2 * 10 * len(PAYLOAD) / 1e6 / took


def imap_times(pool: Any) -> tuple[float, float]:
    started = time.perf_counter()
    it = pool.imap(tiny, range(5000), 50)
    next(it)
    first = time.perf_counter() - started
    count = 1 + sum(1 for _ in it)
    total = time.perf_counter() - started
    assert count == 5000
    return first * 1000, total


def imap_unordered_items(pool: Any) -> float:
    started = time.perf_counter()
    count = sum(1 for _ in pool.imap_unordered(tiny, range(2000)))
    took = time.perf_counter() - started
    assert count == 2000
    return count / took


# --- the run ----------------------------------------------------------------------------------

FIGURES = [
    # name, unit, target description, target check on ratio (p2ppool / multiprocessing)
    ("start_map_close_s", "s", "none (informative)", None),
    ("map_items_per_s", "items/s", "ratio >= 0.8", lambda r: r >= 0.8),
    ("apply_latency_ms", "ms", "ratio <= 1.5", lambda r: r <= 1.5),
    ("apply_latency_alone_ms", "ms", "ratio <= 1.5", lambda r: r <= 1.5),
    ("cpu_efficiency", "fraction", "within 5 % of multiprocessing", lambda r: abs(r - 1) <= 0.05),
    ("payload_mb_per_s", "MB/s", "ratio >= 0.8", lambda r: r >= 0.8),
    ("imap_first_result_ms", "ms", "none (informative)", None),
    ("imap_total_s", "s", "none (informative)", None),
    ("imap_unordered_items_per_s", "items/s", "none (informative)", None),
]


def measure_once(kind: str, n: int, alone_s: float, include_cpu: bool) -> Dict[str, float]:
    make = KINDS[kind]
    values = {"start_map_close_s": start_map_close(make, n)}
    pool = make(n)
    try:
        values["map_items_per_s"] = map_items(pool)
        values["apply_latency_alone_ms"] = apply_latencies({kind: pool})[kind]
        if include_cpu:
            values["cpu_efficiency"] = cpu_efficiency(pool, n, alone_s)
        values["payload_mb_per_s"] = payload_rate(pool)
        values["imap_first_result_ms"], values["imap_total_s"] = imap_times(pool)
        values["imap_unordered_items_per_s"] = imap_unordered_items(pool)
    finally:
        pool.close()
        pool.join()
    return values


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="measured runs per figure")
    parser.add_argument("--cpu-repeats", type=int, default=3, help="runs of the CPU figure")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    n = args.processes

    alone = []
    for _ in range(3):
        started = time.perf_counter()
        burn(TASK_S)
        alone.append(time.perf_counter() - started)
    alone_s = statistics.median(alone)

    samples: Dict[str, Dict[str, List[float]]] = {k: {} for k in KINDS}
    for kind in KINDS:  # warm-up, discarded
        measure_once(kind, n, alone_s, include_cpu=False)
    for repeat in range(args.repeats):
        order = list(KINDS) if repeat % 2 == 0 else list(reversed(KINDS))
        for kind in order:
            values = measure_once(kind, n, alone_s, include_cpu=repeat < args.cpu_repeats)
            for name, value in values.items():
                samples[kind].setdefault(name, []).append(value)
        # apply latency: both pools alive, alternating small blocks (latency is the most
        # noise-sensitive figure)
        pools = {kind: KINDS[kind](n) for kind in order}
        try:
            apply_latencies(pools, calls=20)  # warm-up
            for kind, value in apply_latencies(pools).items():
                samples[kind].setdefault("apply_latency_ms", []).append(value)
        finally:
            for pool in pools.values():
                pool.close()
                pool.join()

    spreads = []
    for name, unit, target, check in FIGURES:
        row: Dict[str, Any] = {"figure": name, "unit": unit}
        for kind in KINDS:
            values = samples[kind][name]
            median = statistics.median(values)
            row[kind] = round(median, 4)
            row[f"{kind}_range"] = [round(min(values), 4), round(max(values), 4)]
            if median:
                spreads.append((max(values) - min(values)) / median)
        ratio = row["p2ppool"] / row["multiprocessing"] if row["multiprocessing"] else None
        row["ratio"] = None if ratio is None else round(ratio, 3)
        # the best run of each (quietest moment): a view less sensitive to other load
        higher_is_better = unit in ("items/s", "MB/s", "fraction")
        pick = max if higher_is_better else min
        best = {kind: pick(samples[kind][name]) for kind in KINDS}
        if best["multiprocessing"]:
            row["best_ratio"] = round(best["p2ppool"] / best["multiprocessing"], 3)
        row["target"] = target
        row["met"] = None if check is None or ratio is None else bool(check(ratio))
        print(json.dumps(row), flush=True)
    print(json.dumps({
        "summary": "noise",
        "median_relative_spread": round(statistics.median(spreads), 3),
        "max_relative_spread": round(max(spreads), 3),
        "repeats": args.repeats,
        "processes": n,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
