"""The worker plane: ``python -m p2ppool.worker``, a volunteer machine's side of a cluster.

:mod:`.cli` resolves the options into :class:`~.settings.WorkerSettings` and runs the
:class:`~.loop.Worker`: one main loop that owns three parts and wires them with explicit
methods and callbacks (neither component imports the other, nor the loop).  The pure
:class:`~.peer.Peer` decides what to say on the board (hellos, offers, accepts, fair per
sender); :class:`~.presence.BoardPresence` owns the board connection (connect, publish,
rejoin with backoff, close); :class:`~.sessions.Sessions` owns the client sessions (wormhole,
Open/Ready, frames, one :class:`~p2ppool.execution.engine.ProcessEngine` each, their end;
its :class:`~.confinement.Confinement` makes their job directories, sandbox and cgroup).
Other threads only post events to the loop's :class:`~.events.Inbox`::

    board reader, rejoin thread ─ BOARD, BOARD_STATE, BOARD_REJOINED, BOARD_FAILED ─┐
    opener threads, reactor ───── OPENED, OPEN_FAILED, FRAME, LOST ─────────────────┼▶ Inbox
    installer, signal handlers ── REQUIREMENTS, a wakeup byte ──────────────────────┘   │
                                                                                        ▼
    Worker (loop.py, the main thread) drains the Inbox and hands each event to its owner:
      BOARD ────────▶ peer ─Publish─▶ presence.publish;  ─OpenSession─▶ sessions.start
      BOARD_* ──────▶ presence ─announce()─▶ peer.start;  ─failed_for_good()─▶ withdraw
      OPENED, FRAME…▶ sessions ─slots_returned(), ended()─▶ peer (offers the free slots)
      every turn:     sessions.collect(ready), sessions.expire_opens, peer.timer_expired
      stopping:       presence.leave; sessions.withdraw / wind_down / stop_all / end_all

May import: the base modules and the board, transfer, shipping and execution planes.  Pure:
:mod:`.peer` and :mod:`.settings`.
"""
