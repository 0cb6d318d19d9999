"""One SSH connection per process per board target, shared by every session on it.

Opening an SSH connection (TCP, key exchange, authentication) costs about 100 ms; opening
one more exec channel on a connection that is already up costs a round trip.  So every board
session of a process (each :class:`~p2ppool.board.client.BoardClient`, ``run_command``,
``learn_username``) takes a :class:`Lease` on the shared connection of its
:class:`~p2ppool.board.sshconfig.SSHTarget` and opens its own channel on it::

    lease = acquire(target, timeout)   # connects, or shares the connection that is up
    channel = lease.transport.open_session()
    ...
    lease.release()                    # the last release lets the connection linger

Rules:

* The cache key is the whole resolved target: host, port, user, identity, the SSH config's
  identities, known_hosts and the jump hosts (``SSHTarget`` is a frozen dataclass, hashed by
  value).  Two targets that differ in any of them get two connections.
* Threads that ask for the same target at once get one connection: the first makes it, the
  others wait for its handshake.  A failure (unreachable, key refused, host key changed)
  reaches every waiter as the same error (a copy of it each) and is not remembered: the next
  :func:`acquire` tries again.
* A connection whose transport is no longer active (the board restarted, the network
  dropped) is never handed out: the next :func:`acquire` makes a new one, which the other
  sessions share again as they reconnect.  The dead one is closed when its last lease goes.
* Releasing a lease closes nothing but the caller's share.  After the last release the
  connection lingers, idle, for ``defaults.BOARD_IDLE_LINGER_S`` seconds: an
  :func:`acquire` in that time reuses it without a handshake (a script that opens pools one
  after another pays one key exchange, not one per pool) and cancels the close; otherwise a
  daemon timer closes the transport and the jump-host connections (outside the lock).  A
  linger of 0 or less closes at the last release (as does a last release that finds the
  connection dead).  A lingering connection that died is never handed out: the
  :func:`acquire` that finds it closes it (else its timer does).
* Interpreter exit (``atexit``) closes the lingering connections, waiting at most
  ``defaults.BOARD_EXIT_CLOSE_S`` (a server that is gone cannot hold the exit up), and
  releases after that close at once.  :func:`close_idle` closes lingering connections on
  demand (:meth:`~p2ppool.local.cluster.LocalCluster.stop` does, before stopping its board).
* Fork safety: a child process starts with an empty cache (``os.register_at_fork``), and a
  lease the child inherited from its parent is released without touching the parent's
  connection (it belongs to the parent's transport thread, which the child does not have).
  The parent's linger timers are threads, which a child does not inherit; and a timer only
  ever closes a connection of the process that made it.
* Keepalives (``defaults.BOARD_KEEPALIVE_S``) are set when the connection is made;
  TCP_NODELAY is set by :func:`~p2ppool.board.sshconfig.connect`.
"""

from __future__ import annotations

import atexit
import copy
import os
import threading
from typing import Dict, List

import paramiko

from .. import defaults
from ..errors import BoardError
from .sshconfig import SSHConnection, SSHTarget, connect

__all__ = ["Lease", "acquire", "close_idle", "shared_targets"]

_lock = threading.Lock()  # guards _entries, every entry's users count and linger timer
_entries: Dict[SSHTarget, _Entry] = {}
_exiting = False  # set at interpreter exit: a last release closes at once


class _Entry:
    """One shared connection (or one being made) and how many leases hold it."""

    def __init__(self, target: SSHTarget, timeout: float) -> None:
        self.target = target
        self.timeout = timeout  # the opener's bound on each connect step
        self.pid = os.getpid()
        self.users = 0
        self.ready = threading.Event()  # set once connection or error is known
        self.connection: SSHConnection | None = None
        self.error: BaseException | None = None
        self.timer: threading.Timer | None = None  # the linger's close, while idle

    def alive(self) -> bool:
        connection = self.connection
        if connection is None:
            return False
        transport = connection.client.get_transport()
        return transport is not None and bool(transport.is_active())


class Lease:
    """A share of a target's SSH connection; :meth:`release` it when done (idempotent)."""

    def __init__(self, entry: _Entry) -> None:
        assert entry.connection is not None
        self._entry = entry
        self._released = False
        #: the shared connection (do not close it: release the lease)
        self.connection: SSHConnection = entry.connection

    @property
    def transport(self) -> paramiko.Transport:
        """The shared transport, to open this user's channel on."""
        return self.connection.transport

    def release(self) -> None:
        """Give up this share; after the last one the connection lingers, then closes (see
        the module docstring).  Never raises."""
        entry = self._entry
        with _lock:
            if self._released:
                return
            self._released = True
            if entry.pid != os.getpid():
                return  # inherited across fork: the parent's connection, not ours to close
            entry.users -= 1
            if entry.users > 0:
                return
            cached = _entries.get(entry.target) is entry
            linger = defaults.BOARD_IDLE_LINGER_S
            if cached and linger > 0 and not _exiting and entry.alive():
                timer = threading.Timer(linger, _expire, args=(entry,))
                timer.daemon = True  # never holds up interpreter exit
                timer.name = "p2ppool-board-linger"
                entry.timer = timer
                timer.start()
                return
            if cached:
                del _entries[entry.target]
        _close_quietly(entry.connection)


def _expire(entry: _Entry) -> None:
    """The linger timer: close ``entry`` unless it was reused (or dropped) meanwhile."""
    with _lock:
        if entry.pid != os.getpid() or entry.users > 0 or entry.timer is None:
            return  # reused (its acquire cancelled us while we waited for the lock)
        if threading.current_thread() is not entry.timer:
            return  # an older timer of an entry that was reused and let go again
        entry.timer = None
        if _entries.get(entry.target) is entry:
            del _entries[entry.target]
    _close_quietly(entry.connection)


def _take_idle(entry: _Entry) -> None:
    """Stop ``entry``'s linger (the caller holds the lock and is about to use or close it)."""
    if entry.timer is not None:
        entry.timer.cancel()
        entry.timer = None


def _close_quietly(connection: SSHConnection | None) -> None:
    if connection is None:
        return
    try:
        connection.close()
    except (OSError, EOFError, paramiko.SSHException):
        pass  # the peer is already gone


def acquire(target: SSHTarget, timeout: float = defaults.SSH_CONNECT_TIMEOUT_S) -> Lease:
    """A lease on the process's connection to ``target``, connecting if there is none.

    Args:
        target: from :func:`~p2ppool.board.sshconfig.resolve_target`.
        timeout: bound on each connect step when this call makes the connection (a caller
            that waits for another thread's handshake waits as long as that one takes).

    Raises:
        BoardConnectionError, BoardAuthError, HostKeyMismatch: as
            :func:`~p2ppool.board.sshconfig.connect` (every concurrent caller gets it).
    """
    while True:
        dead: _Entry | None = None
        with _lock:
            entry = _entries.get(target)
            if entry is not None and entry.ready.is_set() and not entry.alive():
                del _entries[target]  # dead: never handed out; its leases release it
                if entry.users == 0:  # lingering: nobody else will
                    _take_idle(entry)
                    dead = entry
                entry = None
            opener = entry is None
            if entry is None:
                entry = _entries[target] = _Entry(target, timeout)
            entry.users += 1
            _take_idle(entry)  # a lingering connection is in use again: no close
        if dead is not None:
            _close_quietly(dead.connection)
        if opener:
            return _open(entry)
        entry.ready.wait()
        if entry.error is None:
            lease = Lease(entry)
            if entry.alive():
                return lease
            lease.release()  # died right after its handshake (closed if we were last)
            continue  # the next round finds it dead and makes another
        with _lock:
            entry.users -= 1
        if isinstance(entry.error, BoardError):
            raise copy.copy(entry.error) from None
        # The opener was interrupted (not a board error): try ourselves.


def _open(entry: _Entry) -> Lease:
    """Make ``entry``'s connection (the caller holds one of its users)."""
    try:
        connection = connect(entry.target, entry.timeout)
        try:
            connection.transport.set_keepalive(int(defaults.BOARD_KEEPALIVE_S))
        except BoardError:
            connection.close()
            raise
    except BaseException as exc:
        with _lock:
            entry.error = exc
            entry.users -= 1
            if _entries.get(entry.target) is entry:
                del _entries[entry.target]  # a failure is not cached
        entry.ready.set()
        raise
    entry.connection = connection
    entry.ready.set()
    return Lease(entry)


def shared_targets() -> List[SSHTarget]:
    """The targets this process has a connection to (or is connecting to) right now,
    lingering ones included."""
    with _lock:
        return list(_entries)


def close_idle(target: SSHTarget | None = None, timeout: float | None = None) -> int:
    """Close the lingering connections now (those in use stay); returns how many.

    Args:
        target: only the connection to this target (None: every target).
        timeout: how long to wait for the closes, which run on a daemon thread (None: as
            long as they take); a close that blocks is left to the kernel at exit.
    """
    with _lock:
        idle = [e for e in _entries.values()
                if e.users == 0 and e.ready.is_set() and e.pid == os.getpid()
                and (target is None or e.target == target)]
        for entry in idle:
            _take_idle(entry)
            del _entries[entry.target]
    if not idle:
        return 0

    def close_all() -> None:
        for entry in idle:
            _close_quietly(entry.connection)

    closer = threading.Thread(target=close_all, name="p2ppool-board-close", daemon=True)
    closer.start()
    closer.join(timeout)
    return len(idle)


def _at_exit() -> None:
    """Interpreter exit: close the lingering connections (bounded); later releases close at
    once (a pool closed by a later exit handler must not linger past the process)."""
    global _exiting
    _exiting = True
    close_idle(timeout=defaults.BOARD_EXIT_CLOSE_S)


def _after_fork_in_child() -> None:
    """Start the child with no connections: the parent's belong to its transport threads."""
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    _entries.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
# Registered after paramiko's own exit handler (imported above), so it runs before it.
atexit.register(_at_exit)
