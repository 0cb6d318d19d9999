"""The task process's side of a :class:`~p2ppool.execution.engine.ProcessEngine`: read
functions and tasks from the owner's pipe, run them one at a time, send each result back.

A prefetched task runs only once claimed (the claim protocol is drawn in
:mod:`p2ppool.execution.engine`'s docstring); a sandboxed child (no claim) runs every task it
reads, and kills whatever a task left running before its result goes back.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any, Dict, Sequence

from .. import payload
from .wire import CLAIMED, INFO, KEY, RESULT, RING, TASK, UNLOADABLE, recv_message, send

__all__ = ["LoadFailed", "child_main", "claimed", "kill_strays", "run"]


class LoadFailed:
    """Stands in for a function whose blob did not unpickle in the child."""

    def __init__(self, blob: bytes, info: bytes | None) -> None:
        self.blob = blob
        self.info = info


def child_main(rx: Any, conn: Any, initializer_blob: bytes | None, maxtasks: int | None,
                max_result_bytes: int | None, inherited_fds: Sequence[int] = (),
                code_dir: str | None = None, site_dir: str | None = None,
                env: Dict[str, str] | None = None, work_dir: str | None = None,
                reap_strays: bool = False, claim: Any = None) -> None:
    """The loop of one child process: read tasks from ``rx``, write results to ``conn``.

    ``code_dir`` holds the client's own modules (a shipped code bundle): first on
    ``sys.path``, so they import as real modules before anything is unpickled.  ``site_dir``
    holds the job's installed requirements: next, before the worker's own packages.
    ``env`` replaces the whole environment (a worker's allowlist) and ``work_dir`` is the
    working directory (the session's job directory).  ``reap_strays`` (a sandboxed child,
    alone in its PID namespace) kills every other process there after each task: nothing a
    task starts outlives it.  ``claim``: the ``(lock, counters)`` that prefetched tasks are
    claimed with (see the module docstring); None when the owner never takes tasks back.
    """
    reap_strays = reap_strays and os.getpid() <= 3  # never outside a PID namespace
    try:
        os.setpgid(0, 0)  # own process group, so a kill takes the task's own children too
    except OSError:
        pass
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    if work_dir is not None:
        os.chdir(work_dir)
    if site_dir is not None:
        import site

        site.addsitedir(site_dir)  # its .pth files too
        sys.path.remove(site_dir)
        sys.path.insert(0, site_dir)
    if code_dir is not None:
        sys.path.insert(0, code_dir)
        sys.dont_write_bytecode = True  # the bundle's directory is read-only
    # A forked child inherits the owner's ends of every pipe; holding them would keep its own
    # (and its siblings') pipes open after the owner dies, so nobody would see EOF and exit.
    for fd in inherited_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    if initializer_blob is not None:
        try:
            try:
                initializer, initargs = payload.loads(initializer_blob)
            except Exception as exc:
                info = payload.load_failure(exc, "initializer")
                if info is None:
                    raise
                conn.send_bytes(b"L" + INFO.pack(len(info)) + info + payload.dump_exception(exc))
                conn.close()
                os._exit(1)
            initializer(*initargs)
        except BaseException as exc:  # report it: the owner fails tasks instead of respawning
            conn.send_bytes(b"E" + payload.dump_exception(exc))
            conn.close()
            os._exit(1)
    functions: Dict[int, Any] = {}
    completed = 0
    seq = 0  # task messages read so far: the owner numbers them the same way
    rx_fd = rx.fileno()
    tx_fd = conn.fileno()

    def recv() -> bytes | bytearray:
        return recv_message(rx_fd)
    while maxtasks is None or completed < maxtasks:
        try:
            message = recv()
        except (EOFError, OSError):
            break
        kind = message[:1]
        if kind in (b"T", b"t", b"P", b"p"):
            task_id, key = TASK.unpack_from(message, 1)
            args: Any = memoryview(message)[13:] if kind in (b"T", b"P") else recv()
            seq += 1
            if kind in (b"P", b"p") and not claimed(claim, seq):
                del args
                continue  # the owner took it back for an idle sibling
            ok, blob, info = run(functions.get(key), args, max_result_bytes)
            if reap_strays:
                kill_strays()
            try:
                if info is None:
                    send(tx_fd, b"R", RESULT.pack(task_id, ok), blob)
                else:
                    send(tx_fd, b"U", UNLOADABLE.pack(task_id, len(info)) + info, blob)
            except (OSError, EOFError):
                break
            completed += 1
            del args, blob
        elif kind in (b"F", b"f"):
            (key,) = KEY.unpack_from(message, 1)
            fblob: Any = memoryview(message)[5:] if kind == b"F" else recv()
            try:
                functions[key] = payload.loads(fblob)
            except Exception as exc:
                functions[key] = LoadFailed(payload.dump_exception(exc),
                                             payload.load_failure(exc, "function"))
            del fblob
        elif kind == b"D":
            functions.pop(KEY.unpack_from(message, 1)[0], None)
        else:  # b"X"
            break
    conn.close()
    rx.close()


def kill_strays() -> None:
    """In a sandbox's PID namespace: SIGKILL every process but its init (1) and this one,
    reap this one's own children, and return once none of them runs any more (what a task
    started, detached or not, is gone before its result is sent)."""
    me = os.getpid()
    for attempt in range(200):
        alive = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in (1, me):
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue  # gone already
            if state in (b"Z", b"X"):
                continue  # dead, waiting to be reaped
            alive.append(int(name))
            try:
                os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        if not alive:
            return
        time.sleep(0.001 * min(attempt + 1, 10))


def claimed(claim: Any, seq: int) -> bool:
    """Claim prefetched task ``seq`` before running it: False if the owner withdrew it."""
    if claim is None:  # a launched (sandboxed) child: nothing is ever taken back from it
        return True
    lock, counters = claim
    with lock:
        counters[CLAIMED] = seq
        return bool(counters[1 + seq % RING] != seq)


def run(func: Any, args_blob: Any, max_result_bytes: int | None
         ) -> tuple[bool, bytes, bytes | None]:
    """Load and run one task: ``(ok, blob, unloadable)`` (see :class:`TaskDone`)."""
    if isinstance(func, LoadFailed):
        return False, func.blob, func.info
    try:
        call = payload.loads(args_blob)  # its own phase: an ImportError here is no user bug
    except Exception as exc:
        return False, payload.dump_exception(exc), payload.load_failure(exc, "arguments")
    try:
        if func is None:
            raise RuntimeError("p2ppool internal error: task for an unknown function")
        if call[0] == payload.BATCH:
            # With the time its chunks took here: what they cost without the round trip,
            # by which the client sizes the next map's batches.
            started = time.perf_counter()
            outcomes = payload.execute_batch(func, call[1])
            value = (time.perf_counter() - started, outcomes)
        else:
            value = payload.execute(func, call)
    except Exception as exc:
        return False, payload.dump_exception(exc), None
    ok, blob = payload.dump_result(value, max_result_bytes)
    return ok, blob, None
