"""Every exception p2ppool raises, in one tree.

::

    P2PPoolError(Exception)                       base for every p2ppool failure
    ├── PoolNotRunning(P2PPoolError, ValueError)   after close()/terminate(): "Pool not running"
    ├── BrokenPool(P2PPoolError)                   sticky: the pool cannot go on
    ├── ConfigError(P2PPoolError, ValueError)      a bad option; names where it came from
    ├── ChunkFailed(P2PPoolError)                  retries used up; .chunk_id .attempts .causes
    │   ├── NoWorkers(ChunkFailed)                 no peer took the chunk and fallback is off
    │   └── ProcessLost(ChunkFailed, BrokenProcessPool)   ProcessPoolExecutor: every attempt's
    │                                              process or peer was lost
    ├── InitializerFailed(P2PPoolError, BrokenProcessPool)  ProcessPoolExecutor: the
    │                                              initializer raised; the executor is broken
    ├── TaskLimitExceeded(P2PPoolError)            a worker's limit (time, memory, size) hit
    ├── ProtocolError(P2PPoolError)               a malformed, unknown or incompatible board
    │                                              line (board plane) or session frame
    │                                              (transfer plane), or one too large to send
    ├── BoardError(P2PPoolError)                   the board plane: SSH and the pub/sub
    │   ├── BoardConnectionError                   ssh connect/auth failed or session lost
    │   │   ├── BoardAuthError                     the board refused our key
    │   │   └── HostKeyMismatch                    the board's host key changed
    │   └── AccessDenied                           the board refused the topic
    └── TransferError(P2PPoolError)                the transfer plane: wormhole sessions
        ├── SessionLost                            the peer stopped answering heartbeats
        └── TransferTimeout(TransferError, builtins.TimeoutError)

    TimeoutError = multiprocessing.TimeoutError    AsyncResult.get(timeout), as multiprocessing

``BrokenProcessPool`` is ``concurrent.futures.process.BrokenProcessPool`` (a
``BrokenExecutor``, a ``RuntimeError``), so code written for concurrent.futures catches
the executor's two failures where it expects them.

A user function's own exception is never wrapped: it is re-raised as its own type, with the
remote traceback text attached as ``__cause__`` (a :class:`RemoteTraceback`), exactly as
``multiprocessing`` does.  Board and transfer errors in one attempt are retried inside the
pool; callers see them only in :attr:`ChunkFailed.causes`.
"""

from __future__ import annotations

import builtins
import multiprocessing
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]
from typing import Sequence

__all__ = [
    "AccessDenied",
    "BoardAuthError",
    "BoardConnectionError",
    "BoardError",
    "BrokenPool",
    "ChunkFailed",
    "ConfigError",
    "HostKeyMismatch",
    "InitializerFailed",
    "MaybeEncodingError",
    "NoWorkers",
    "P2PPoolError",
    "PoolNotRunning",
    "ProcessLost",
    "ProtocolError",
    "RemoteTraceback",
    "SessionLost",
    "TaskLimitExceeded",
    "TimeoutError",
    "TransferError",
    "TransferTimeout",
]

# The timeout users of multiprocessing already catch (AsyncResult.get(timeout)).
TimeoutError = multiprocessing.TimeoutError  # noqa: A001


class P2PPoolError(Exception):
    """Base class of every error p2ppool raises on its own behalf."""


class PoolNotRunning(P2PPoolError, ValueError):
    """The pool was closed or terminated; it takes no more work.

    A ``ValueError`` too, because that is what ``multiprocessing.Pool`` raises.
    """

    def __init__(self, message: str = "Pool not running") -> None:
        super().__init__(message)


class BrokenPool(P2PPoolError):
    """The pool cannot continue (for example its manager thread died).

    Sticky: once raised, every pending result fails with it and new work is refused.
    """


class ConfigError(P2PPoolError, ValueError):
    """An option has a bad value.  The message names the option and where it came from
    (keyword argument, environment variable, or config file and line)."""


class ChunkFailed(P2PPoolError):
    """A chunk of work could not be run after every allowed attempt.

    Attributes:
        chunk_id: which chunk.
        attempts: how many times it was tried.
        causes: one human-readable line per failed attempt, e.g. ``"peer w3 lost: SIGKILL(-9)"``.
    """

    def __init__(self, chunk_id: object, attempts: int, causes: Sequence[str]) -> None:
        self.chunk_id = chunk_id
        self.attempts = attempts
        self.causes = list(causes)
        detail = "; ".join(self.causes) if self.causes else "no cause recorded"
        super().__init__(f"chunk {chunk_id} failed after {attempts} attempt(s): {detail}")

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.chunk_id, self.attempts, self.causes))


class NoWorkers(ChunkFailed):
    """No peer took the chunk in time and local fallback is disabled (``fallback=None``)."""


class ProcessLost(ChunkFailed, BrokenProcessPool):
    """:class:`~p2ppool.ProcessPoolExecutor`: the task's process (or peer) was lost on every
    attempt (killed, crashed, ``os._exit``), so the task did not run to its end.

    concurrent.futures raises ``BrokenProcessPool`` at the first lost process and breaks the
    whole executor; p2ppool runs the task again on a fresh process (``max_attempts`` tries in
    all) and the executor keeps working.  ``causes`` names each loss, e.g. ``"local: process
    4711 died with SIGKILL(-9)"``.
    """


class InitializerFailed(P2PPoolError, BrokenProcessPool):
    """:class:`~p2ppool.ProcessPoolExecutor`: the ``initializer`` raised in a process.

    As in concurrent.futures, the executor is then broken: every pending task fails with
    this error and ``submit`` raises ``BrokenProcessPool``.  The initializer's own exception
    and traceback are in the message and in ``__cause__``.
    """


class TaskLimitExceeded(P2PPoolError):
    """A task hit a limit (run time, memory, payload size) and was stopped.

    The message names the limit and the peer that enforced it.
    """


class BoardError(P2PPoolError):
    """Something went wrong on the message board (the SSH pub/sub control plane)."""


class BoardConnectionError(BoardError):
    """Could not reach or stay connected to the board (network, SSH or authentication)."""


class BoardAuthError(BoardConnectionError):
    """The board refused our SSH key.  Check the identity option and the board's users list."""


class HostKeyMismatch(BoardConnectionError):
    """The board's host key differs from the one in known_hosts: possibly an attack.

    Remove the old line from known_hosts only if you know the server's key changed.
    """


class AccessDenied(BoardError):
    """The board refused access to the topic (we are not on its access list)."""


class ProtocolError(P2PPoolError):
    """A message was malformed, of an unknown type, or of an incompatible protocol version."""


class TransferError(P2PPoolError):
    """The data plane (magic-wormhole) failed for one session."""


class SessionLost(TransferError):
    """The peer of a wormhole session stopped answering (no heartbeat within the deadline)."""


class TransferTimeout(TransferError, builtins.TimeoutError):
    """A wormhole operation did not finish in time."""


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised in another process or peer.

    Attached as ``__cause__`` of the re-raised exception, so the remote stack is printed.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb
