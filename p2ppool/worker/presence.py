"""The worker's presence on the board: its connection, reconnects, rejoins, what it publishes.

The board client reconnects by itself and reports its state; when the cluster's channel
refuses us (its host may be away), :class:`BoardPresence` makes new connections with backoff
in a thread until one is let in, and the worker announces itself again.

:class:`BoardPresence` is a part of :class:`~p2ppool.worker.loop.Worker` (a mixin): its
methods run on the worker's main thread, except :meth:`BoardPresence._rejoin_in_thread`,
which only posts its outcome to the inbox.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..board.auth import BoardIdentity
from ..errors import P2PPoolError

if TYPE_CHECKING:
    from .loop import WorkerSettings, _Inbox
    from .peer import Peer

log = logging.getLogger("p2ppool.worker")


class BoardPresence:
    """The worker's board methods (a mixin of :class:`~p2ppool.worker.loop.Worker`).

    The state they share is the Worker's, declared here for the type checker.
    """

    settings: WorkerSettings
    inbox: _Inbox
    peer: Peer
    board: Any
    withdrawing: bool
    forced: bool
    exit_status: int
    _board_generation: int
    board_identity: BoardIdentity
    _rejoin: threading.Thread | None
    _stop_rejoin: threading.Event
    _execute: Callable[[Sequence[Any]], None]
    withdraw: Callable[[str], None]

    def connect_board(self) -> None:
        """Connect to the board (raises a clear BoardError if the first contact fails)."""
        self.board = self._make_board(self._board_generation)
        self.board.connect()

    def _make_board(self, generation: int) -> Any:
        from ..board.client import BoardClient

        s = self.settings
        return BoardClient(
            s.board_host, s.board_port, topic=s.cluster, username=s.board_user,
            identity=s.identity, known_hosts=s.known_hosts,
            on_message=lambda msg: self.inbox.post("board", msg),
            on_state=lambda state: self.inbox.post("board_state", generation, state),
            sender=self.board_identity,
        )

    def _board_state(self, state: Any) -> None:
        from ..board.client import State

        if state is State.CONNECTED and self.board.reconnects and not self.withdrawing:
            log.info("board connection re-established; announcing again")
            self._execute(self.peer.start(time.time()))
        elif state is State.RECONNECTING:
            log.warning("board connection lost; reconnecting (running sessions go on)")
        elif state is State.FAILED:
            self._board_failed(self.board.error)

    def _board_failed(self, error: BaseException | None) -> None:
        from ..errors import AccessDenied
        from .loop import EXIT_ERROR  # here: worker_loop imports this module

        if isinstance(error, AccessDenied) and not self.withdrawing:
            # The channel of a cluster exists only while its owner (``p2ppool host``) is on
            # it; after a board restart or a host's reconnect we may simply be early.
            self._start_rejoin(error)
            return
        log.error("board failed for good: %s", error)
        self.exit_status = EXIT_ERROR
        self.withdraw("the board connection failed")

    def _start_rejoin(self, error: BaseException) -> None:
        if self._rejoin is not None and self._rejoin.is_alive():
            return
        log.warning("%s; the cluster's host may be away: retrying with backoff (running "
                    "sessions go on)", error)
        generation = self._board_generation + 1
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
                self.inbox.post("board_failed", exc)
                return
            except (AccessDenied, BoardConnectionError) as exc:
                attempt += 1
                log.info("board rejoin attempt %d failed: %s", attempt, exc)
                continue
            except BoardError as exc:
                self.inbox.post("board_failed", exc)
                return
            self.inbox.post("board_rejoined", generation, client)
            return

    def _board_rejoined(self, generation: int, client: Any) -> None:
        from ..board.client import State

        if self.withdrawing or self.forced:
            client.close()
            return
        old, self.board = self.board, client
        self._board_generation = generation
        old.close()
        if client.state is State.FAILED:  # failed before we got here: its event was stale
            self._board_failed(client.error)
            return
        log.info("rejoined the board; announcing again")
        self._execute(self.peer.start(time.time()))

    def _publish(self, message: Any) -> None:
        from ..board.protocol import Offer

        if self.board is None:
            return
        try:
            self.board.publish(message)
        except P2PPoolError as exc:
            log.warning("could not write %s on the board: %s", message.TYPE, exc)
            return
        if isinstance(message, Offer):
            log.info("offered %d slot(s) to job %s", message.slots, message.job)
