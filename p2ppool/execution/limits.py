"""A process-count limit for a session's sandboxed task processes (a pids cgroup).

``RLIMIT_NPROC`` cannot bound a task: it counts every process of the volunteer's uid on the
machine (../shared/research/sandbox.md, section 5).  A pids cgroup can: each session of a
worker gets one, its task processes are moved into it as they start (before they run a
task), and ``pids.max`` bounds everything they and their children start; a fork beyond it
fails with ``EAGAIN`` inside the task.  This needs a cgroup the worker may write: cgroup v1's
``pids`` hierarchy, or a cgroup v2 directory whose ``cgroup.subtree_control`` delegates
``pids`` (root, or a delegated systemd scope).  Where neither is writable the worker says so
at start and runs without this limit.
"""

from __future__ import annotations

import logging
import os
from typing import List

__all__ = ["ProcessLimit"]

log = logging.getLogger("p2ppool.worker")


def _own_cgroup_dirs() -> List[str]:
    """Candidate parent directories: v1 ``pids`` first, then v2 with pids delegated."""
    found = []
    try:
        with open("/proc/self/cgroup", encoding="ascii") as f:
            lines = f.read().splitlines()
        with open("/proc/self/mounts", encoding="ascii") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return []
    v1 = [m[1] for m in mounts if m[2] == "cgroup" and "pids" in m[3].split(",")]
    v2 = [m[1] for m in mounts if m[2] == "cgroup2"]
    for line in lines:
        number, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(",") and v1:
            found.append(os.path.join(v1[0], path.lstrip("/")))
        elif number == "0" and v2:
            directory = os.path.join(v2[0], path.lstrip("/"))
            try:
                with open(os.path.join(directory, "cgroup.subtree_control"),
                          encoding="ascii") as f:
                    if "pids" in f.read().split():
                        found.append(directory)
            except OSError:
                pass
    return found


class ProcessLimit:
    """One pids cgroup per session, under a directory of this worker.

    Args:
        max_processes: ``pids.max`` of each session (all its task processes and what they
            start).
        name: the worker's name (part of the directory's name).
    """

    def __init__(self, max_processes: int, name: str, enabled: bool = True) -> None:
        self.max_processes = max_processes
        self.root: str | None = None
        self.reason = "no writable pids cgroup (cgroup v1 pids, or v2 with pids delegated)"
        if not enabled:
            self.reason = "not sandboxed"
            return
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        for parent in _own_cgroup_dirs():
            candidate = os.path.join(parent, f"p2ppool-{safe}-{os.getpid()}")
            try:
                os.mkdir(candidate)
            except OSError as exc:
                self.reason = f"cannot create a cgroup under {parent}: {exc.strerror}"
                continue
            self.root = candidate
            break

    @property
    def available(self) -> bool:
        return self.root is not None

    def session(self, session_id: int | str) -> str | None:
        """A new cgroup for one session (None when unavailable or it cannot be made)."""
        if self.root is None:
            return None
        path = os.path.join(self.root, f"session-{session_id}")
        try:
            os.mkdir(path)
            with open(os.path.join(path, "pids.max"), "w", encoding="ascii") as f:
                f.write(str(self.max_processes))
        except OSError as exc:
            log.warning("no process-count limit for session %s: %s", session_id, exc)
            return None
        return path

    def attach(self, cgroup: str, pid: int) -> None:
        """Move process ``pid`` (a task process's sandbox, before it runs a task) in."""
        with open(os.path.join(cgroup, "cgroup.procs"), "w", encoding="ascii") as f:
            f.write(str(pid))

    def remove(self, cgroup: str) -> None:
        """Remove a session's cgroup (its processes have exited)."""
        try:
            os.rmdir(cgroup)
        except OSError:
            pass  # a process is still exiting: close() tries again

    def close(self) -> None:
        if self.root is None:
            return
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            if os.path.isdir(path):
                self.remove(path)
        try:
            os.rmdir(self.root)
        except OSError:
            pass
        self.root = None
