"""Consecutive cluster pools of one process, with and without the board connection's linger.

Usage::

    python benchmarks/bench_pool_reopen.py [--blocks N] [--pools K]

Starts ``p2ppool local --workers 2`` in a subprocess (board, wormhole servers and workers
in other processes, so the pools of this process are the only users of its board
connection; an in-process :class:`~p2ppool.local.cluster.LocalCluster` would hold one
itself), then alternates blocks of ``--pools`` consecutive pools (``Pool()`` from the
cluster's ``P2PPOOL_*`` environment: open, ``map(abs, [-1])``, ``close`` + ``join``, the
``open_s`` of bench_cluster.py) with ``defaults.BOARD_IDLE_LINGER_S`` at 0 (the last pool's
close closes the SSH connection: every pool makes a new one) and at its default (the next
pool reuses the idle connection).  Each block starts with no idle connection and one
discarded pool.  Prints one JSON line: median and min..max seconds per mode, and how many
SSH connections the measured pools of each mode made.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from p2ppool import defaults  # noqa: E402
from p2ppool.board import transports  # noqa: E402

LINGER = defaults.BOARD_IDLE_LINGER_S
HANDSHAKES = [0]  # SSH connections this process made (transports.connect calls)
_real_connect = transports.connect


def _counting_connect(*args: Any, **kwargs: Any) -> Any:
    HANDSHAKES[0] += 1
    return _real_connect(*args, **kwargs)


transports.connect = _counting_connect  # type: ignore[assignment]


def start_cluster(directory: str) -> subprocess.Popen[bytes]:
    env_file = os.path.join(directory, "env")
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2ppool", "local", "--workers", "2", "--write-env", env_file],
        stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(env_file):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("p2ppool local did not start")
        time.sleep(0.1)
    with open(env_file, encoding="utf-8") as f:
        for line in f:
            if line.startswith("export "):
                name, _, value = line[len("export "):].strip().partition("=")
                os.environ[name] = shlex.split(value)[0] if value else ""
    return proc


def open_map_close() -> float:
    from p2ppool import Pool

    started = time.perf_counter()
    pool = Pool(2)
    assert pool.map(abs, [-1]) == [1]
    pool.close()
    pool.join()
    return time.perf_counter() - started


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=6, help="blocks per mode (default 6)")
    parser.add_argument("--pools", type=int, default=5, help="measured pools per block")
    args = parser.parse_args(argv)
    times: Dict[str, List[float]] = {"linger_0": [], f"linger_{LINGER:g}": []}
    handshakes = {mode: 0 for mode in times}
    with tempfile.TemporaryDirectory(prefix="p2ppool-bench-") as directory:
        proc = start_cluster(directory)
        try:
            open_map_close()  # warm-up of the whole process (imports, first recruit)
            for _ in range(args.blocks):
                for mode, linger in (("linger_0", 0.0), (f"linger_{LINGER:g}", LINGER)):
                    transports.close_idle()
                    defaults.BOARD_IDLE_LINGER_S = linger
                    open_map_close()  # discarded (the linger one makes the connection)
                    before = HANDSHAKES[0]
                    times[mode] += [open_map_close() for _ in range(args.pools)]
                    handshakes[mode] += HANDSHAKES[0] - before
        finally:
            transports.close_idle()
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    row: Dict[str, object] = {"blocks": args.blocks, "pools": args.pools,
                              "load_average": os.getloadavg()[0]}
    for mode, values in times.items():
        row[f"{mode}_open_s"] = round(statistics.median(values), 4)
        row[f"{mode}_open_s_range"] = [round(min(values), 4), round(max(values), 4)]
        row[f"{mode}_handshakes"] = handshakes[mode]
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
