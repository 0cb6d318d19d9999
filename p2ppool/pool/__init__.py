"""The pool plane: the public API users call and the one manager thread behind it.

``Pool`` (:mod:`.api`, multiprocessing's API), ``ProcessPoolExecutor`` (:mod:`.futures`,
concurrent.futures' API) and the joblib backend (:mod:`.joblib_backend`) all post jobs to one
manager thread per pool (:mod:`.manager`), the only owner of the pool's jobs and chunks
(:mod:`.jobs`), its :class:`~.scheduler.Scheduler` (pure) and its executors
(:mod:`.executors`: the local :class:`~p2ppool.execution.engine.ProcessEngine`, and
the cluster's worker sessions through a :class:`~.executors.PoolLink`)::

    caller thread        manager thread (one owner)                 executors
    ─────────────        ──────────────────────────                 ─────────
    Pool.map ──inbox──▶  chunking ─▶ Scheduler ─Assign─▶ executor.run(chunk)
                                        ▲                        │
    AsyncResult ◀─_set── results ◀─Resolve── ChunkDone/ChunkLost ◀┘
         ▲
         └─_arrive── a peer's Result, for a lone apply (the session's reactor thread)

May import: the base modules (errors, defaults, payload, config) and the execution plane;
only :mod:`.api` imports the cluster plane (to wire a pool's :class:`ClusterLink`).  Pure:
:mod:`.chunking` and :mod:`.scheduler`.
"""
