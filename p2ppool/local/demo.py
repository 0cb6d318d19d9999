"""``p2ppool demo``: see p2ppool work in one command, with no account and no setup.

It starts a whole cluster on 127.0.0.1 (:class:`~p2ppool.local.cluster.LocalCluster`: a board,
a magic-wormhole mailbox server and transit relay, and two ``p2ppool worker`` processes),
estimates pi by Monte Carlo with a ``Pool`` that uses only that cluster (``fallback=None``: no
task runs in the demo's own process), and prints the estimate, which worker ran how many
tasks, and the wall time against one process.  Then it stops everything and exits 0.

Each task reports where it ran: a worker's task processes find the worker's name in the
environment variable ``P2PPOOL_WORKER`` (:data:`p2ppool.payload.WORKER_NAME_ENV`); a
task that ran in the Pool's own local processes reports ``local``.

Exit status: 0 done; 1 the cluster did not start or the work did not finish (the message
names the logs, which are kept); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import random
import sys
import time
from collections import Counter
from typing import List, Sequence, Tuple

from ..payload import WORKER_NAME_ENV

__all__ = ["add_arguments", "run", "sample_quarter_circle", "who_am_i"]


#: How long the demo waits for the work before it gives up (a stuck cluster must not hang a
#: newcomer's terminal): this many seconds per million random points, at least
#: _MIN_TIMEOUT_S.  (A million points take about 0.1 s of CPU on a 2020s laptop.)
_TIMEOUT_S_PER_MILLION_POINTS = 2.0
_MIN_TIMEOUT_S = 60.0

#: Below this speed-up the demo says why it may be low.
_LOW_SPEED_UP = 1.3


def who_am_i() -> str:
    """The worker this process runs tasks for, or ``"local"`` outside a worker."""
    return os.environ.get(WORKER_NAME_ENV) or "local"


def sample_quarter_circle(seed: int, samples: int) -> Tuple[int, int, str, float]:
    """Count random points of the unit square that fall inside the quarter circle.

    Args:
        seed: the random seed (one per task, so the tasks are independent).
        samples: points to draw.

    Returns:
        ``(hits, samples, where, cpu_seconds)``: ``4 * hits / samples`` estimates pi;
        ``where`` is :func:`who_am_i` of the process that ran it; ``cpu_seconds`` the CPU
        time the sampling took there (one process running every task needs at least their
        sum).
    """
    cpu_started = time.process_time()
    rng = random.Random(seed)
    draw = rng.random
    hits = 0
    for _ in range(samples):
        x = draw()
        y = draw()
        if x * x + y * y <= 1.0:
            hits += 1
    return hits, samples, who_am_i(), time.process_time() - cpu_started


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``p2ppool demo``."""
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="workers in the local cluster (default 2)")
    parser.add_argument("--processes-per-worker", type=int, default=1, metavar="K",
                        help="task processes per worker (default 1)")
    parser.add_argument("--tasks", type=int, default=40, metavar="N",
                        help="independent sampling tasks (default 40)")
    parser.add_argument("--samples", type=int, default=2_000_000, metavar="M",
                        help="random points per task (default 2000000)")


def _per_worker(results: Sequence[Tuple[int, int, str, float]]) -> List[Tuple[str, int]]:
    counts = Counter(r[2] for r in results)
    return sorted(counts.items(), key=lambda item: (item[0] == "local", item[0]))


def run(args: argparse.Namespace) -> int:
    """``p2ppool demo``: returns the exit status."""
    problems = [f"{flag} must be at least 1, not {value}" for flag, value in (
        ("--workers", args.workers), ("--processes-per-worker", args.processes_per_worker),
        ("--tasks", args.tasks), ("--samples", args.samples)) if value < 1]
    if problems:
        print(f"p2ppool demo: {'; '.join(problems)}", file=sys.stderr)
        return 2
    try:
        return _demo(args)
    except KeyboardInterrupt:
        print("p2ppool demo: interrupted; everything it started is stopped", file=sys.stderr)
        return 130


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 'es' if word.endswith('s') else 's'}"


def _demo(args: argparse.Namespace) -> int:
    from ..errors import P2PPoolError
    from ..errors import TimeoutError as PoolTimeout
    from .cluster import LocalCluster

    cores = os.cpu_count() or 1
    print(f"p2ppool demo: pi from {_plural(args.tasks, 'task')} x {args.samples:,} random "
          f"points, on a cluster on this machine ({_plural(cores, 'CPU core')})", flush=True)
    started = time.perf_counter()
    try:
        cluster = LocalCluster(args.workers, args.processes_per_worker)
    except (P2PPoolError, TimeoutError, OSError) as exc:
        print(f"p2ppool demo: could not start the local cluster: {exc}", file=sys.stderr)
        return 1
    with cluster:
        names = ", ".join(w.name for w in cluster.workers)
        print(f"  started a board, a wormhole mailbox and relay, and "
              f"{'worker' if args.workers == 1 else 'workers'} {names} in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        timeout = max(_MIN_TIMEOUT_S, _TIMEOUT_S_PER_MILLION_POINTS
                      * args.tasks * args.samples / 1e6)
        started = time.perf_counter()
        deadline = started + timeout
        results: List[Tuple[int, int, str, float]] = []
        first = 0.0
        try:
            # fallback=None: only the cluster's workers run tasks, never this process; as
            # many tasks in flight as the workers have slots, whatever this machine's cores.
            slots = args.workers * args.processes_per_worker
            with cluster.pool(slots, progress=True, fallback=None) as pool:
                sample = functools.partial(sample_quarter_circle, samples=args.samples)
                found = pool.imap_unordered(sample, range(args.tasks), chunksize=1)
                for _ in range(args.tasks):
                    results.append(found.next(max(0.0, deadline - time.perf_counter())))
                    first = first or time.perf_counter() - started
        except (P2PPoolError, PoolTimeout) as exc:
            cluster.keep_dir = True
            what = (f"did not finish within {timeout:.0f} s" if isinstance(exc, PoolTimeout)
                    else f"failed: {exc}")
            print(f"p2ppool demo: the work on the cluster {what}; the logs of the board, "
                  f"the servers and the workers are kept in {cluster.directory}",
                  file=sys.stderr)
            return 1
        wall = time.perf_counter() - started

    hits = sum(r[0] for r in results)
    points = sum(r[1] for r in results)
    estimate = 4 * hits / points
    print(f"pi is about {estimate:.5f} (off by {abs(estimate - math.pi):.5f})")
    print("tasks run by each worker: "
          + ", ".join(f"{who} {count}" for who, count in _per_worker(results)))
    if any(r[2] == "local" for r in results):
        print("  (local: tasks that ran in the demo's own processes, not on a worker)")
    serial = sum(r[3] for r in results)
    print(f"wall time: {wall:.1f} s on {_plural(args.workers, 'worker')} x "
          f"{_plural(args.processes_per_worker, 'process')} "
          f"(first result after {first:.1f} s, connecting included)")
    print(f"one process: about {serial:.1f} s (the CPU time the tasks took), so the cluster "
          f"was {serial / wall:.1f}x as fast")
    if serial / wall < _LOW_SPEED_UP:
        print("  (connecting, and other programs using the CPUs, weigh less with more work: "
              "try --tasks 100)")
    print("stopped the cluster and everything it started.")
    print("next: `p2ppool local` runs a cluster for your own scripts (see README.rst)")
    return 0
