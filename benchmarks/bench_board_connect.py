"""What a board client's ``connect()`` costs: the first of a process, and the next ones.

Usage::

    python benchmarks/bench_board_connect.py [--runs N]

Starts a :class:`~p2ppool.local.cluster.LocalCluster` without workers (its board on
127.0.0.1) and, ``--runs`` times, connects one :class:`~p2ppool.board.client.BoardClient` as
the member ``carol`` (no other session of the process uses that target, so this one makes
the SSH connection: TCP, key exchange, authentication), then a second one on another topic
(which opens a channel on the shared connection, issue 16), then closes both and the idle
connection (which would otherwise linger for the next run's first connect).  Prints one
JSON line: the median and min..max milliseconds of each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from p2ppool.board import transports  # noqa: E402
from p2ppool.board.client import BoardClient  # noqa: E402
from p2ppool.local.cluster import LocalCluster  # noqa: E402

MEMBER = "carol"


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="measured runs (default 20)")
    args = parser.parse_args(argv)
    times: Dict[str, List[float]] = {"first_connect_ms": [], "second_connect_ms": []}
    with LocalCluster(workers=0, members=(MEMBER,)) as cluster:
        host, port = cluster.board.rsplit(":", 1)

        def client(topic: str) -> BoardClient:
            return BoardClient(host, int(port), topic=f"{MEMBER}/{topic}", username=MEMBER,
                               identity=cluster.identity(MEMBER),
                               known_hosts=cluster.known_hosts, ssh_config="/dev/null")

        for run in range(args.runs + 1):  # run 0: warm-up, discarded
            started = time.perf_counter()
            first = client("one").connect()
            between = time.perf_counter()
            second = client("two").connect()
            ended = time.perf_counter()
            second.close()
            first.close()
            transports.close_idle()  # no linger: the next run's first connect makes its own
            if run:
                times["first_connect_ms"].append((between - started) * 1000)
                times["second_connect_ms"].append((ended - between) * 1000)
    row: Dict[str, object] = {"runs": args.runs, "load_average": os.getloadavg()[0]}
    for name, values in times.items():
        row[name] = round(statistics.median(values), 2)
        row[f"{name}_range"] = [round(min(values), 2), round(max(values), 2)]
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
