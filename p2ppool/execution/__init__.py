"""The execution plane: processes that run chunks, on a client (local mode and fallback)
and on a worker (one engine per client session).

:class:`~.engine.ProcessEngine` speaks bytes (function and argument blobs in, result blobs
out); only its child processes (the loop of :mod:`.task_loop`, reading the pipe format of
:mod:`.wire`; tied to the worker's life by :mod:`.child`, or started by :mod:`.sandbox_child`
inside a bubblewrap sandbox built by :mod:`.sandbox`, with the pids cgroup of :mod:`.limits`)
unpickle::

    engine.submit(task, func_blob, args_blob) ─pipe─▶ child: loads, run, dumps
    engine.collect() ◀── TaskDone(task, ok, blob) / TaskLost(task, cause) ◀─┘

May import: the base modules only (errors, defaults, payload).
"""
