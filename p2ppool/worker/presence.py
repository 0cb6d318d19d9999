"""The worker's presence on the board: its connection, reconnects, rejoins, what it publishes.

:class:`BoardPresence` owns the board client (and the one that replaces it after a rejoin)
and the rejoin thread.  The board client reconnects by itself and reports its state; when
the cluster's channel refuses us (its host may be away), a thread makes new connections
with backoff until one is let in, and the worker announces itself again.  It knows nothing
of sessions or of the pure board logic (:mod:`p2ppool.worker.peer`, the loop's): what the
peer decides to say reaches it as :meth:`BoardPresence.publish`, and what it learns goes
back through the two callables the loop gives it::

    loop ── connect() / publish(message) / leave() / close() ──> BoardPresence
    loop ── got_state / rejoined / failed (inbox events) ───────> BoardPresence
    BoardPresence ── announce() ──────> loop: peer.start (hello and offers again)
    BoardPresence ── failed_for_good(error) ──> loop: exit status 2, withdraw
    board reader / rejoin thread ── BOARD, BOARD_STATE, BOARD_REJOINED, BOARD_FAILED ──> inbox

Its methods run on the worker's main thread, except :meth:`BoardPresence._rejoin_in_thread`,
which only posts its outcome to the inbox.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from ..board.auth import BoardIdentity
from ..errors import P2PPoolError
from .events import BOARD, BOARD_FAILED, BOARD_REJOINED, BOARD_STATE, Inbox
from .settings import WorkerSettings

__all__ = ["BoardPresence"]

log = logging.getLogger("p2ppool.worker")


class BoardPresence:
    """The worker's board connection, owned by the main thread.

    Args:
        settings: where the board is and which cluster's channel to join.
        identity: signs the worker's board lines (its sender id is ``name~key``).
        inbox: where the board client's threads and the rejoin thread post their events.
        announce: called when a new or re-established connection should hear the worker's
            hello and offers again.
        failed_for_good: called when the board cannot be used any more (the worker stops).
    """

    def __init__(self, settings: WorkerSettings, identity: BoardIdentity, inbox: Inbox, *,
                 announce: Callable[[], None],
                 failed_for_good: Callable[[BaseException | None], None]) -> None:
        self._settings = settings
        self._identity = identity
        self._inbox = inbox
        self._announce = announce
        self._failed_for_good = failed_for_good
        self._board: Any = None
        self._generation = 0
        self._leaving = False  # the worker withdraws: no rejoins, no announcing again
        self._rejoin: threading.Thread | None = None
        self._stop_rejoin = threading.Event()

    @property
    def client(self) -> Any:
        """The board client in use (None before :meth:`connect`)."""
        return self._board

    def connect(self) -> None:
        """Connect to the board (raises a clear BoardError if the first contact fails)."""
        self._board = self._make_board(self._generation)
        self._board.connect()

    def leave(self) -> None:
        """The worker withdraws: do not rejoin or announce again (its Bye is published)."""
        self._leaving = True

    def _make_board(self, generation: int) -> Any:
        from ..board.client import BoardClient

        s = self._settings
        return BoardClient(
            s.board_host, s.board_port, topic=s.cluster, username=s.board_user,
            identity=s.identity, known_hosts=s.known_hosts,
            on_message=lambda msg: self._inbox.post(BOARD, msg),
            on_state=lambda state: self._inbox.post(BOARD_STATE, generation, state),
            sender=self._identity,
        )

    def got_state(self, generation: int, state: Any) -> None:
        """The board client of ``generation`` changed state (a replaced client's is ignored)."""
        from ..board.client import State

        if generation != self._generation:
            return
        if state is State.CONNECTED and self._board.reconnects and not self._leaving:
            log.info("board connection re-established; announcing again")
            self._announce()
        elif state is State.RECONNECTING:
            log.warning("board connection lost; reconnecting (running sessions go on)")
        elif state is State.FAILED:
            self.failed(self._board.error)

    def failed(self, error: BaseException | None) -> None:
        """The board connection failed: rejoin if the channel refused us, else give up."""
        from ..errors import AccessDenied

        if isinstance(error, AccessDenied) and not self._leaving:
            # The channel of a cluster exists only while its owner (``p2ppool host``) is on
            # it; after a board restart or a host's reconnect we may simply be early.
            self._start_rejoin(error)
            return
        log.error("board failed for good: %s", error)
        self._failed_for_good(error)

    def _start_rejoin(self, error: BaseException) -> None:
        if self._rejoin is not None and self._rejoin.is_alive():
            return
        log.warning("%s; the cluster's host may be away: retrying with backoff (running "
                    "sessions go on)", error)
        generation = self._generation + 1
        self._rejoin = threading.Thread(target=self._rejoin_in_thread, args=(generation,),
                                        name="p2ppool-board-rejoin", daemon=True)
        self._rejoin.start()

    def _rejoin_in_thread(self, generation: int) -> None:
        """Make new board connections with backoff until one is let in (or we stop)."""
        import random

        from ..board.client import backoff_delay
        from ..errors import (
            AccessDenied,
            BoardAuthError,
            BoardConnectionError,
            BoardError,
            HostKeyMismatch,
        )

        attempt = 0
        rng = random.Random()  # not the global one: tests that share the process seed it
        while not self._stop_rejoin.wait(backoff_delay(attempt, rng.random())):
            client = self._make_board(generation)
            try:
                client.connect()
            except (BoardAuthError, HostKeyMismatch) as exc:
                self._inbox.post(BOARD_FAILED, exc)
                return
            except (AccessDenied, BoardConnectionError) as exc:
                attempt += 1
                log.info("board rejoin attempt %d failed: %s", attempt, exc)
                continue
            except BoardError as exc:
                self._inbox.post(BOARD_FAILED, exc)
                return
            self._inbox.post(BOARD_REJOINED, generation, client)
            return

    def rejoined(self, generation: int, client: Any) -> None:
        """The rejoin thread got a client let in: it replaces the failed one."""
        from ..board.client import State

        if self._leaving:
            client.close()
            return
        old, self._board = self._board, client
        self._generation = generation
        old.close()
        if client.state is State.FAILED:  # failed before we got here: its event was stale
            self.failed(client.error)
            return
        log.info("rejoined the board; announcing again")
        self._announce()

    def publish(self, message: Any) -> None:
        """Write one board message (what :mod:`~p2ppool.worker.peer` decided to say)."""
        from ..board.protocol import Offer

        if self._board is None:
            return
        try:
            self._board.publish(message)
        except P2PPoolError as exc:
            log.warning("could not write %s on the board: %s", message.TYPE, exc)
            return
        if isinstance(message, Offer):
            log.info("offered %d slot(s) to job %s", message.slots, message.job)

    def close(self) -> None:
        """Stop the rejoin thread and close the board client (logging dropped lines)."""
        self._stop_rejoin.set()
        if self._rejoin is not None:
            self._rejoin.join(1.0)  # a daemon thread: it must not hold up the exit
        if self._board is not None:
            drops = self._board.drops
            if drops:
                log.info("board lines dropped (by reason): %s",
                         ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
            self._board.close()
