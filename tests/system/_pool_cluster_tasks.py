"""Task functions for tests/system/test_pool_cluster.py (imported by worker children too).

They say where they ran: the worker's name from ``P2PPOOL_WORKER`` (set in a worker's task
processes), ``"local"`` in the Pool's own processes.
"""

from __future__ import annotations

import os
import time
from typing import Tuple

WORKER_ENV = "P2PPOOL_WORKER"


def where() -> str:
    """The worker running this task, or ``"local"``."""
    return os.environ.get(WORKER_ENV, "local")


def record(arg: Tuple[int, str, float]) -> Tuple[int, int, str]:
    """Append ``"item pid worker"`` to ``path`` as the task starts, work ``seconds``, and
    return ``(item, pid, worker)``: the file counts executions, the result deliveries."""
    item, path, seconds = arg
    line = f"{item} {os.getpid()} {where()}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one small O_APPEND write: lines never interleave
    finally:
        os.close(fd)
    time.sleep(seconds)  # the task's work
    return item, os.getpid(), where()


def record_or_stall(arg: Tuple[int, str, float, str, int, int, str]) -> Tuple[int, int, str]:
    """:func:`record`, except that on worker ``stall_on`` every item from ``stall_from`` on
    reports to the TaskGate on ``gate_port`` and hangs there (until the test kills that
    worker): the test then knows that worker holds a chunk it will never finish.

    On any other worker, items from ``stall_from`` on wait (before they count as executed)
    until the file ``hold_path`` exists: the others cannot finish the map before the
    ``stall_on`` worker has joined and stalled, however late it joins."""
    item, path, seconds, stall_on, stall_from, gate_port, hold_path = arg
    if where() == stall_on and item >= stall_from:
        import socket

        conn = socket.create_connection(("127.0.0.1", gate_port), timeout=30)
        conn.sendall(f"{item} {os.getpid()}\n".encode())
        conn.settimeout(30)
        conn.recv(1)  # never answered: the worker dies first
    elif item >= stall_from:
        wait_for_path(hold_path)
    return record((item, path, seconds))


def wait_for_path(path: str, timeout: float = 45.0) -> None:
    """Block until ``path`` exists (the test creates it when the task may go on)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout:g} s")
        time.sleep(0.005)  # polling a file the test creates: the task's side of a gate


def paced(arg: Tuple[int, str]) -> Tuple[int, str]:
    """Work 50 ms unless ``stop_path`` exists; return ``(item, worker)``."""
    item, stop_path = arg
    if not os.path.exists(stop_path):
        time.sleep(0.05)  # the task's work
    return item, where()


def square_where(x: int) -> Tuple[int, str]:
    return x * x, where()


def square_where_after(arg: Tuple[int, str]) -> Tuple[int, str]:
    """:func:`square_where` of ``x`` once the file ``path`` exists."""
    x, path = arg
    wait_for_path(path)
    return square_where(x)


def pid_where(_: object = None) -> Tuple[int, str]:
    return os.getpid(), where()
