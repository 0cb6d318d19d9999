"""``p2ppool demo``: see p2ppool work in one command, with no account and no setup.

It estimates pi by Monte Carlo: ``map`` of independent sampling tasks with a progress bar,
then prints the estimate, who ran how many tasks, and the wall time against one process.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import Counter
from typing import Any


def sample_quarter_circle(seed: int, samples: int = 200_000) -> tuple[int, int, str]:
    """Count random points of the unit square inside the quarter circle.

    Returns (hits, samples, who ran it) so the demo can show how the work was spread.
    """
    rng = random.Random(seed)
    hits = 0
    for _ in range(samples):
        x = rng.random()
        y = rng.random()
        if x * x + y * y <= 1.0:
            hits += 1
    return hits, samples, os.environ.get("P2PPOOL_PEER_NAME") or f"local pid {os.getpid()}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", type=int, default=32, help="number of tasks (default 32)")
    parser.add_argument(
        "--samples", type=int, default=200_000, help="random points per task (default 200000)"
    )


def run(args: argparse.Namespace) -> int:
    from .pool import Pool

    seeds = list(range(args.tasks))
    started = time.perf_counter()
    sample_quarter_circle(seeds[0], args.samples)
    one_task = time.perf_counter() - started

    started = time.perf_counter()
    with Pool(progress=True) as pool:
        results: list[Any] = pool.starmap(
            sample_quarter_circle, [(seed, args.samples) for seed in seeds], chunksize=1
        )
    wall = time.perf_counter() - started

    hits = sum(r[0] for r in results)
    total = sum(r[1] for r in results)
    print(f"pi is about {4 * hits / total:.5f} ({total:,} random points)")
    for who, count in sorted(Counter(r[2] for r in results).items()):
        print(f"  {who}: {count} task(s)")
    serial = one_task * len(seeds)
    print(f"wall time {wall:.2f} s; one process would take about {serial:.2f} s "
          f"(speed-up {serial / wall:.1f}x)")
    return 0
