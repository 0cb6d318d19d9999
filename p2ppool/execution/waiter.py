"""Waiting on pipes, connections and process sentinels with one lasting ``poll`` object.

The pool's manager thread and the worker's main loop wait on nearly the same objects every
turn; ``multiprocessing.connection.wait`` builds and fills a new selector on each call.
"""

from __future__ import annotations

import math
import multiprocessing.connection
import select
from typing import Any, Dict, List

__all__ = ["Waiter"]


class Waiter:
    """``multiprocessing.connection.wait`` with one lasting ``poll`` object.

    ``connection.wait`` builds and fills a new selector on every call (about as long as a
    whole round trip to a child); the manager waits on nearly the same objects every turn.
    The objects are file descriptors (int) or have a ``fileno()``; what is ready is returned
    as the objects given, as ``connection.wait`` returns them.
    """

    def __init__(self) -> None:
        self._poll = select.poll() if hasattr(select, "poll") else None
        self._objects: Dict[int, Any] = {}

    def wait(self, objects: List[Any], timeout: float | None, changed: bool = True) -> List[Any]:
        """Like ``connection.wait``; ``changed=False`` promises the same objects as last time."""
        if self._poll is None:  # pragma: no cover - platforms without poll()
            return list(multiprocessing.connection.wait(objects, timeout))
        if changed:
            wanted = {(o if isinstance(o, int) else o.fileno()): o for o in objects}
            for fd in self._objects.keys() - wanted.keys():
                self._poll.unregister(fd)
            for fd in wanted.keys() - self._objects.keys():
                self._poll.register(fd, select.POLLIN)
            self._objects = wanted
        millis = None if timeout is None else max(0, math.ceil(timeout * 1000))
        objects_by_fd = self._objects
        return [objects_by_fd[fd] for fd, _ in self._poll.poll(millis)]
