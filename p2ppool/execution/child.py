"""Tie a worker's task processes to the worker's life (Linux), so none outlives it.

A worker starts its task processes through a multiprocessing fork server, and preloads this
module there.  Importing it in the fork server

* asks the kernel to SIGKILL the fork server when the worker dies (``PR_SET_PDEATHSIG``; the
  fork server would otherwise notice only at its next read), and
* registers an after-fork hook that runs in every task process before the task loop starts
  and asks the same for the task process when the fork server dies (and applies the
  worker's ``--max-memory-mb``, if any, as ``RLIMIT_AS``).

So SIGKILL of the worker takes its fork server and, with it, every task process, even one
busy in a long task.  (A graceful stop kills them itself; this covers the worker being
killed.)  On other systems the module does nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from multiprocessing import util

__all__ = ["ENV_FLAG", "MEMORY_ENV", "die_with_parent", "limit_memory"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int) -> None:
    """SIGKILL this process when its parent exits; exit now if the parent is already gone.

    Args:
        expected_parent: the parent's pid; if ``os.getppid()`` differs after the request,
            the parent died before it took effect.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != expected_parent:
        os._exit(1)


class _AfterFork:
    """Holds the fork server's pid; multiprocessing keeps hooks only while this lives."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.memory_mb: float | None = None


def limit_memory(megabytes: float) -> None:
    """Cap this process's address space (``RLIMIT_AS``) at ``megabytes``; an allocation
    beyond it raises ``MemoryError``, which is reported as the limit (see
    :func:`p2ppool.payload.dump_exception`)."""
    import resource

    from .. import payload

    limit = int(megabytes * 1024 * 1024)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    payload.memory_limit_mb = megabytes


def _in_task_process(hook: _AfterFork) -> None:
    if os.getpid() != hook.server_pid:
        die_with_parent(hook.server_pid)
        if hook.memory_mb is not None:
            limit_memory(hook.memory_mb)


def _install() -> _AfterFork:
    hook = _AfterFork(os.getpid())
    memory = os.environ.pop(MEMORY_ENV, "")
    hook.memory_mb = float(memory) if memory else None
    parent = os.getppid()
    if parent > 1:
        die_with_parent(parent)
    util.register_after_fork(hook, _in_task_process)
    return hook


#: Set by the worker only while it starts its fork server; removed here at once, so task
#: processes do not inherit it.
ENV_FLAG = "P2PPOOL_WORKER_FORKSERVER"
#: Likewise: the worker's ``--max-memory-mb``, applied in every task process after the fork.
MEMORY_ENV = "P2PPOOL_WORKER_MAX_MEMORY_MB"

# Only in a worker's fork server (which preloads this module); importing it anywhere else
# does nothing.
_HOOK = _install() if os.environ.pop(ENV_FLAG, None) == "1" else None
