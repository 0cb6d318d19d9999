"""The entry of a task process started in its own sandbox: ``main([_, RX, TX])``, run by
:func:`p2ppool.execution.sandbox.task_command`
(see :class:`p2ppool.execution.engine.ProcessEngine`'s
``launcher``).

``RX`` and ``TX`` are the two pipe ends the worker passed in.  The first message on ``RX``
carries the engine's settings (JSON) and the initializer blob; then the usual task loop of
:func:`p2ppool.execution.task_loop.child_main` runs.  Nothing else of the worker reaches the
process: bwrap cleared its environment and mounted only what the sandbox shows.
"""

from __future__ import annotations

import json
import multiprocessing.connection
import sys

from . import task_loop, wire


def main(argv: list[str]) -> None:
    rx_fd, tx_fd = int(argv[1]), int(argv[2])
    try:
        message = wire.recv_message(rx_fd)
    except EOFError:
        return  # let go before it got its settings (a spare, a session that never opened)
    kind, body = message[:1], message[1:]
    end = body.index(b"\n")
    settings = json.loads(body[:end])
    initializer = body[end + 1:] if kind == b"C" else wire.recv_message(rx_fd)
    if settings.get("memory_mb") is not None:
        from .child import limit_memory

        limit_memory(float(settings["memory_mb"]))
    # Inside bwrap's PID namespace the parent is bwrap's init (pid 1); --die-with-parent
    # ties the sandbox to the worker instead of p2ppool.execution.child's PDEATHSIG.
    rx = multiprocessing.connection.Connection(rx_fd, writable=False)
    tx = multiprocessing.connection.Connection(tx_fd, readable=False)
    task_loop.child_main(rx, tx, bytes(initializer) or None, settings.get("maxtasks"),
                       settings.get("max_result_bytes"), (), settings.get("code_dir"),
                       settings.get("site_dir"), None, settings.get("work_dir"),
                       reap_strays=True)


if __name__ == "__main__":
    main(sys.argv)
