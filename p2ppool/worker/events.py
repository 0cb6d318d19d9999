"""The worker's inbox: how threads hand events to the main loop, and the events' names.

A leaf module shared by :mod:`~p2ppool.worker.loop` (which waits on the inbox and
dispatches), :mod:`~p2ppool.worker.sessions` and :mod:`~p2ppool.worker.presence` (whose
threads post to it).  Every event is a tuple whose first item is one of the kinds below;
only the main thread reads them, so the state they lead to has one owner.

::

    posted by                          event                          the loop calls
    ─────────────────────────────────  ─────────────────────────────  ────────────────────────
    board reader (BoardClient)         (BOARD, message)               peer.got_message
                                       (BOARD_STATE, generation, st)  presence.got_state
    rejoin thread (BoardPresence)      (BOARD_REJOINED, gen, client)  presence.rejoined
                                       (BOARD_FAILED, error)          presence.failed
    opener thread (Sessions)           (OPENED, sid, transport)       sessions.opened
                                       (OPEN_FAILED, sid, error)      sessions.open_failed
    reactor (a session's transport)    (FRAME, sid, data)             sessions.got_frame
                                       (LOST, sid, cause)             sessions.lost
    installer (Environments)           (REQUIREMENTS,)                peer.requirements_changed
    signal handlers                    (a wakeup byte only)           withdraw / force
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Any, Deque, List, Tuple

__all__ = [
    "BOARD", "BOARD_FAILED", "BOARD_REJOINED", "BOARD_STATE", "FRAME", "LOST", "OPENED",
    "OPEN_FAILED", "REQUIREMENTS", "Inbox",
]

BOARD = "board"
BOARD_STATE = "board_state"
BOARD_REJOINED = "board_rejoined"
BOARD_FAILED = "board_failed"
OPENED = "opened"
OPEN_FAILED = "open_failed"
FRAME = "frame"
LOST = "lost"
REQUIREMENTS = "requirements"


class Inbox:
    """A thread-safe event queue whose wakeup pipe the main loop waits on."""

    def __init__(self) -> None:
        self._events: Deque[Tuple[Any, ...]] = collections.deque()
        self._lock = threading.Lock()
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)

    def post(self, *event: Any) -> None:
        with self._lock:
            self._events.append(event)
        self.wake()

    def wake(self) -> None:
        """Make the main loop's wait return (safe in a signal handler: no lock)."""
        try:
            os.write(self.write_fd, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the loop is awake anyway

    def drain(self) -> List[Tuple[Any, ...]]:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._lock:
            events = list(self._events)
            self._events.clear()
        return events

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
