"""What a worker is told: :class:`WorkerSettings`, resolved by :mod:`p2ppool.worker.cli`.

A leaf module: the loop, its sessions and its board presence all read the settings, and
none of them imports another for it.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Tuple

from .. import defaults

__all__ = ["WorkerSettings"]


def _python() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs, resolved from the command line and ``P2PPOOL_*``."""

    cluster: str
    name: str
    processes: int
    board_host: str
    board_port: int | None  # None: the SSH config's Port, else 22
    board_user: str | None
    identity: str | None
    known_hosts: str | None
    relay: str
    transit: str | None
    loopback_only: bool
    max_task_seconds: float | None
    max_payload_bytes: int
    ttl: float | None
    grace: float = defaults.WORKER_GRACE_S
    max_memory_mb: float | None = None
    python: str = dataclasses.field(default_factory=_python)
    #: let cluster members have packages installed here (``requirements=``)
    allow_install: bool = False
    install_cache: str | None = None  # where installed requirement sets live
    install_cache_bytes: int = defaults.WORKER_INSTALL_CACHE_BYTES
    #: how tasks are confined: "auto" (bwrap where it works), "bwrap" or "none"
    sandbox: str = "auto"
    allow_network: bool = False  # sandboxed tasks share the host's network
    sandbox_ro: Tuple[str, ...] = ()  # extra paths sandboxed tasks may read
    sandbox_rw: Tuple[str, ...] = ()  # extra paths sandboxed tasks may write
    #: processes one session's sandboxed tasks may have at once (a pids cgroup, if allowed)
    max_task_processes: int = defaults.WORKER_MAX_TASK_PROCESSES
    #: bytes of functions one session may keep here (``--max-functions-mb``)
    max_function_bytes: int = defaults.WORKER_FUNCTION_BYTES_PER_SESSION
    #: while idle, keep sandboxed task processes started for the next session
    spare_sandboxes: bool = defaults.WORKER_SPARE_SANDBOXES

    @property
    def function_budget(self) -> int:
        """Bytes of functions a session may keep: at least one function of any size allowed."""
        return max(self.max_function_bytes, self.max_payload_bytes)

    @property
    def max_frame_bytes(self) -> int:
        """Largest frame a session reads: a payload up to twice the limit is read and
        refused with a clear Lost; a larger one closes the session at its header."""
        return 2 * self.max_payload_bytes + 1024 * 1024
