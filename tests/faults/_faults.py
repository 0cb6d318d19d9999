"""Helpers for the fault suite: tasks that say where they ran, and exactly-once checks.

Every task here returns a record ``(item, value, task_pid, worker_pid)``: the item, the
correct result for it, the pid of the task process that computed it and the pid of the
worker that ran that process (the task process is a child of the worker's fork server, a
child of the worker).  A test checks that every item has exactly one record, with the right
value, and may map worker pids to the workers it killed.

With ``log`` (a file name), each execution appends, as it starts, a line
``item pid worker_pid`` to it (``O_APPEND``, one ``write``), so a test can count executions
apart from results: an item that ran twice (a frozen worker's chunk rerun elsewhere) must
still have one result.
"""

from __future__ import annotations

import collections
import os
import time
from typing import Dict, Iterable, List, Sequence, Tuple

Record = Tuple[int, int, int, int]


def worker_pid_of_this_task() -> int:
    """The pid of the worker whose fork server started this process."""
    with open(f"/proc/{os.getppid()}/stat", encoding="ascii") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def value_of(item: int) -> int:
    """The correct result for ``item`` (what :func:`record` computes)."""
    return item * item + 7


def record(item: int, seconds: float = 0.0, log: str | None = None,
           hold: str | None = None, hold_from: int = 0) -> Record:
    """Simulate ``seconds`` of work on ``item`` and return where it ran (logged at start).

    With ``hold`` (a file name), items from ``hold_from`` on wait after they are logged until
    that file exists: the test decides when they may finish, so it knows which tasks are in
    flight (started, no result yet) whatever the machine's speed.
    """
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{item} {os.getpid()} {worker_pid_of_this_task()}\n".encode())
        finally:
            os.close(fd)
    if hold is not None and item >= hold_from:
        deadline = time.monotonic() + 60
        while not os.path.exists(hold):  # polls a file the test creates: a gate's task side
            if time.monotonic() > deadline:
                raise TimeoutError(f"{hold} did not appear within 60 s")
            time.sleep(0.005)
    if seconds:
        time.sleep(seconds)  # the work itself, not synchronisation
    return (item, value_of(item), os.getpid(), worker_pid_of_this_task())


def check_exactly_once(items: Sequence[int], results: Iterable[Record],
                       ordered: bool = True) -> List[Record]:
    """Assert one correct record per item (in order when ``ordered``); return the records."""
    records = list(results)
    counts = collections.Counter(r[0] for r in records)
    duplicated = {item: n for item, n in counts.items() if n > 1}
    missing = sorted(set(items) - set(counts))
    wrong = [r for r in records if r[1] != value_of(r[0])]
    assert not duplicated, f"duplicated results: {duplicated}"
    assert not missing, f"lost results: {missing[:20]} ({len(missing)} in all)"
    assert not wrong, f"wrong results: {wrong[:5]}"
    assert len(records) == len(items)
    if ordered:
        assert [r[0] for r in records] == list(items), "results out of order"
    return records


def executions(log: str) -> Dict[int, int]:
    """Item -> how many times it ran (from the execution log)."""
    counts: Dict[int, int] = collections.Counter()
    try:
        with open(log, encoding="ascii") as f:
            for line in f:
                if line.endswith("\n"):
                    counts[int(line.split()[0])] += 1
    except FileNotFoundError:
        pass
    return dict(counts)


def by_worker(records: Iterable[Record]) -> Dict[int, int]:
    """Worker pid -> results it delivered."""
    return dict(collections.Counter(r[3] for r in records))


