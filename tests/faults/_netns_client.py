"""The client side of the network-namespace test, run inside its own namespace.

``python -m tests.faults._netns_client CONFIG_JSON``: hosts the cluster's topic (as its
owner, with the workers' user on the access list), waits for ``workers`` Hellos, runs one
map of ``items`` through a Pool with no local fallback, and prints the records as one JSON
line ``{"records": [...]}`` on stdout (``{"error": "..."}`` on failure).  Progress lines
(``hosting``, ``mapping``) go to stdout first, so the test knows when to cut a link.
"""

from __future__ import annotations

import functools
import json
import sys
import threading
from typing import Any, Dict


def main(config: Dict[str, Any]) -> int:
    from p2ppool import Pool
    from p2ppool.board.client import BoardClient
    from p2ppool.board.protocol import Hello

    from ._faults import record

    host, port = config["board"].rsplit(":", 1)
    seen = set()
    ready = threading.Event()

    def on_message(msg: Any) -> None:
        if isinstance(msg, Hello) and msg.role == "worker":
            seen.add(msg.sender)
            if len(seen) >= config["workers"]:
                ready.set()

    hosting = BoardClient(
        host, int(port), topic=config["cluster"].split("/", 1)[1],
        flags=["-a", config["volunteer"]], username=config["owner"],
        identity=config["identity"], known_hosts=config["known_hosts"],
        ssh_config=config["no_ssh_config"], on_message=on_message,
    )
    hosting.connect()
    print("hosting", flush=True)
    try:
        if not ready.wait(60):
            print(json.dumps({"error": f"only {len(seen)} worker(s) said Hello"}), flush=True)
            return 1
        with Pool(config["processes"], cluster=config["cluster"], board=config["board"],
                  board_user=config["owner"], identity=config["identity"],
                  known_hosts=config["known_hosts"], relay=config["relay"],
                  transit=config["transit"], fallback=None,
                  max_attempts=config.get("max_attempts", 3)) as pool:
            result = pool.map_async(
                functools.partial(record, seconds=config["seconds"], log=config["log"],
                                  hold=config.get("hold"), hold_from=config.get("hold_from", 0)),
                range(config["items"]), chunksize=1)
            print("mapping", flush=True)
            records = result.get(timeout=config["timeout"])
        print(json.dumps({"records": records}), flush=True)
        return 0
    except Exception as exc:  # reported to the test, which fails with it
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    finally:
        hosting.close()


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
