"""What the task sandbox costs: a LocalCluster with ``--sandbox bwrap`` against one with
``--sandbox none``, and ``multiprocessing.Pool``, in the same run.

Usage::

    python benchmarks/bench_sandbox.py [--runs N] [--items N]

Two LocalClusters of 2 workers x 1 process are started (one per sandbox mode).  Each run
measures, on each kind in turn (order rotating):

* ``open_s``: open a pool, first ``apply`` result, close (recruiting and the sandboxed
  task processes' start included);
* ``apply_ms``: median of 100 sequential ``apply`` calls on a warm pool;
* ``items_per_s``: ``map`` of ``--items`` tiny items (default chunksize).

Output: one JSON line per figure (medians over ``--runs``; the bwrap/none ratio and the
issue's targets: at most 5 % throughput cost, at most 50 ms more on open), then a markdown
table.  Compare ratios from one run: the machine's load moves absolute times.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from p2ppool import Pool  # noqa: E402
from p2ppool.local.cluster import LocalCluster  # noqa: E402


def measure(make_pool: Callable[[], Any], items: int) -> Dict[str, float]:
    started = time.perf_counter()
    pool = make_pool()
    pool.apply(abs, (-1,))
    pool.close()
    pool.join()
    open_s = time.perf_counter() - started
    pool = make_pool()
    try:
        pool.apply(abs, (-1,))
        latencies = []
        for _ in range(100):
            t = time.perf_counter()
            pool.apply(abs, (-1,))
            latencies.append(time.perf_counter() - t)
        t = time.perf_counter()
        pool.map(abs, range(items))
        rate = items / (time.perf_counter() - t)
    finally:
        pool.terminate()
        pool.join()
    return {"open_s": open_s, "apply_ms": statistics.median(latencies) * 1000,
            "items_per_s": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--items", type=int, default=200_000)
    args = parser.parse_args()
    figures: Dict[str, Dict[str, List[float]]] = {}
    with LocalCluster(workers=2, sandbox="bwrap") as sandboxed, \
            LocalCluster(workers=2, sandbox="none", cluster_name="plain") as plain:
        kinds: Dict[str, Callable[[], Any]] = {
            "multiprocessing": lambda: multiprocessing.Pool(2),
            "bwrap": lambda: Pool(2, **{**sandboxed.options, "fallback": None}),
            "none": lambda: Pool(2, **{**plain.options, "fallback": None}),
        }
        names = list(kinds)
        for run in range(args.runs + 1):  # run 0 warms up and is not counted
            order = names[run % 3:] + names[:run % 3]
            for kind in order:
                for figure, value in measure(kinds[kind], args.items).items():
                    if run:
                        figures.setdefault(figure, {}).setdefault(kind, []).append(value)
    targets = {"open_s": "bwrap - none <= 0.05 s", "items_per_s": "bwrap >= 0.95 x none",
               "apply_ms": ""}
    rows = []
    for figure, kinds_values in figures.items():
        medians = {k: statistics.median(v) for k, v in kinds_values.items()}
        ratio = medians["bwrap"] / medians["none"]
        if figure == "open_s":
            met: bool | None = medians["bwrap"] - medians["none"] <= 0.05
        elif figure == "items_per_s":
            met = ratio >= 0.95
        else:
            met = None
        line = {"figure": figure, **{k: round(v, 4) for k, v in medians.items()},
                "bwrap_over_none": round(ratio, 3), "target": targets[figure], "met": met,
                "runs": args.runs}
        rows.append(line)
        print(json.dumps(line), flush=True)
    print("\n| figure | multiprocessing | none | bwrap | bwrap / none | target | met |")
    print("|---|---|---|---|---|---|---|")
    for line in rows:
        print(f"| {line['figure']} | {line['multiprocessing']} | {line['none']} | "
              f"{line['bwrap']} | {line['bwrap_over_none']} | {line['target']} | "
              f"{line['met']} |")
    print(f"\nload average {os.getloadavg()}")


if __name__ == "__main__":
    main()
