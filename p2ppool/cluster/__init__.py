"""The cluster plane: the client side of a cluster, for one Pool.

:class:`~.link.ClusterLink` is the pool manager's :class:`~p2ppool.pool.executors.PoolLink`:
it turns the :class:`~.backend.ClusterBackend`'s events into executors and chunk events.
The backend recruits workers on the board (the pure :mod:`.recruit` decides whom and when)
and runs one transfer session per worker.  :mod:`.host` and :mod:`.status` are the
``p2ppool host`` and ``p2ppool status`` commands::

    manager ─turn─▶ link ─demand─▶ backend ─Want─▶ board ◀─Offer─ workers
                     ▲                │ Accept + sealed code
                     └──events────────┘ wormhole session per worker ─▶ Task/Result

May import: the base modules and the board, transfer, shipping and pool planes.  Pure:
recruit.
"""
