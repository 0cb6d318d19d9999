"""What shipping the caller's own modules costs: a 2,000-line module against a 10-line one.

Usage::

    python benchmarks/bench_shipping.py [--runs N] [--lines L]

A module of ``--lines`` lines (and a 10-line one) is written to a temporary directory and
imported; a :class:`~p2ppool.local.cluster.LocalCluster` of 2 workers x 1 process (workers in
their own empty directories, so the module must travel) is started once.  Each run opens a
fresh cluster pool per module and times the first ``map`` of 16 items (session opening,
the code bundle, the workers' new task processes importing it) and a second one (nothing
left to send), and does the same with ``multiprocessing.Pool`` (the platform's start
method: forked children have the module already).  Output: one JSON line per figure
(medians over ``--runs`` after one warm-up run, the order of the two modules alternating,
with the ratio to multiprocessing), the bundle's sizes, then a markdown table.  Compare
ratios from one run: the machine's load moves absolute times.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from p2ppool import Pool  # noqa: E402
from p2ppool.local.cluster import LocalCluster  # noqa: E402
from p2ppool.shipping.modules import CodeShipper  # noqa: E402


def write_module(directory: str, name: str, lines: int) -> None:
    body = [f'"""A generated module of about {lines} lines."""', "", "SCALE = 3", ""]
    index = 0
    while len(body) < lines - 3:
        body += [f"def helper_{index}(x):", f"    return x * SCALE + {index}", ""]
        index += 1
    body += ["def work(x):", "    return helper_0(x)"]
    with open(os.path.join(directory, f"{name}.py"), "w", encoding="utf-8") as f:
        f.write("\n".join(body) + "\n")


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def first_and_second(make_pool: Callable[[], Any], func: Any) -> Dict[str, float]:
    pool = make_pool()
    try:
        first = timed(lambda: pool.map(func, range(16), chunksize=1))
        second = timed(lambda: pool.map(func, range(16), chunksize=1))
    finally:
        pool.terminate()
        pool.join()
    return {"first_map_s": first, "second_map_s": second}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lines", type=int, default=2000)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="p2ppool-bench-shipping-")
    try:
        write_module(directory, "big_shipped", args.lines)
        write_module(directory, "small_shipped", 10)
        sys.path.insert(0, directory)
        modules = {name: importlib.import_module(name) for name in ("big_shipped",
                                                                    "small_shipped")}
        started = time.perf_counter()
        bundle = CodeShipper().current()
        built_ms = (time.perf_counter() - started) * 1000
        assert bundle is not None
        big = os.path.join(directory, "big_shipped.py")
        started = time.perf_counter()
        with open(big, encoding="utf-8") as f:
            compile(f.read(), big, "exec")
        compile_ms = (time.perf_counter() - started) * 1000
        sizes = {"modules": list(bundle.names), "source_bytes": bundle.source_bytes,
                 "bundle_bytes": len(bundle.blob), "bundle_build_ms": round(built_ms, 2),
                 "big_module_compile_ms": round(compile_ms, 2)}
        print(json.dumps({"bundle": sizes}), flush=True)
        figures: Dict[str, Dict[str, List[float]]] = {}
        with LocalCluster(workers=2, processes_per_worker=1) as cluster:
            options = dict(cluster.options, fallback=None)
            for run in range(args.runs + 1):  # run 0 warms up and is not counted
                order = list(modules.items())
                for name, module in order if run % 2 else order[::-1]:
                    for kind, make in (
                        ("multiprocessing", lambda: multiprocessing.Pool(2)),
                        ("cluster", lambda: Pool(2, **options)),
                    ):
                        for figure, value in first_and_second(make, module.work).items():
                            if not run:
                                continue
                            figures.setdefault(f"{name}.{figure}", {}).setdefault(
                                kind, []).append(value)
        rows = []
        for figure, kinds in figures.items():
            mp = statistics.median(kinds["multiprocessing"])
            cl = statistics.median(kinds["cluster"])
            line = {"figure": figure, "multiprocessing": round(mp, 4), "cluster": round(cl, 4),
                    "ratio": round(cl / mp, 2) if mp else None, "runs": args.runs}
            rows.append(line)
            print(json.dumps(line), flush=True)
        print("\n| figure | multiprocessing s | cluster s | ratio |\n|---|---|---|---|")
        for line in rows:
            print(f"| {line['figure']} | {line['multiprocessing']} | {line['cluster']} | "
                  f"{line['ratio']} |")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
