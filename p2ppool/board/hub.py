"""The board's hub: the one owner of the shared state that every session thread uses.

:class:`BoardHub` holds the pure :class:`~p2ppool.board.state.BoardState` (channels,
members, buffers) behind one lock and its condition, the live sessions by id, the session
count per key, the per-key message token buckets and the stopping flag.  Session threads
(:mod:`p2ppool.board.handlers`) call its public methods and never touch the lock or the
state themselves; the SSH server (:mod:`p2ppool.board.server`) builds it and registers
sessions in it.  What the hub needs of a session is the :class:`HubSession` protocol, so
this module imports neither the handlers nor the server::

    server ──> handlers ──> hub ──> state (pure)
    server ───────────────> hub

Lock discipline (the server's module docstring tells the whole story):

* every read or change of the state, the session counts and the buckets happens under
  the one lock, except the lock-free reads documented at :meth:`BoardHub.is_evicted` and
  the fan-out's lookup of a session by sid (one dict read);
* :meth:`BoardHub.publish` queues a chunk under the lock, then, *outside* it and in the
  writer's own thread, sends it to every idle receiver whose window has room (the fast
  path); a receiver's sends are serialised by its ``send_lock``, which the fast path only
  ever tries (never waits for);
* nothing here waits for a client, and nothing here is called from paramiko's threads.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, Iterable, List, NamedTuple, Protocol, Sequence, TypeVar

from .keys import UserKey
from .state import BoardState, BufferPolicy, TokenBucket

__all__ = ["SEND_BATCH_BYTES", "TICK_S", "Batch", "BoardHub", "HubSession", "SessionGone"]

#: Most bytes one send to a receiver takes from its buffer at once.
SEND_BATCH_BYTES = 256 * 1024
#: Tick of the blocking loops (checks for closed channels and server stop).
TICK_S = 0.5


class SessionGone(Exception):
    """The client closed the channel (or the server is stopping)."""


class HubSession(Protocol):
    """What the hub needs of a session: its identity and what the fast path uses.

    Attributes:
        sid: the session number the hub gave it (see :meth:`BoardHub.register`).
        user: the session's key (``fingerprint`` keys the per-key limits).
        wake: set to make the session's own thread look at its buffer again.
        send_lock: held by whoever sends this session's data (its thread, or a writer's
            thread on the fast path, which only tries it).
        pending: data taken from the buffer but not yet sent (the fast path found the
            client's window short); the session's thread sends it first.
        fast_path: whether writers may send to this session from their own thread (set
            by the session once it drains).
    """

    sid: int
    user: UserKey
    wake: threading.Event
    send_lock: threading.Lock
    pending: bytes
    fast_path: bool

    def gone(self) -> bool:
        """Whether the client left (or the server is stopping)."""
        ...

    def send_nowait(self, data: bytes) -> int:
        """Send what the client's window takes now, without waiting; returns bytes sent."""
        ...


S = TypeVar("S", bound=HubSession)


class Batch(NamedTuple):
    """What one :meth:`BoardHub.take` got for a draining session.

    Attributes:
        data: queued bytes to send (possibly empty).
        ending: why the session must end (``"departure"``, ``"evicted"``, ``"gone"`` when
            it is no longer a member), or None.
        message: the end message for stderr (with ``"evicted"``), else empty.
        more: whether more data is queued after this batch.
    """

    data: bytes
    ending: str | None
    message: str
    more: bool


class BoardHub:
    """The board's shared state and the one lock around it.

    Args:
        users: the usernames of this server (their namespaces are protected).
        policy: per-receiver buffer limit and slow-reader grace period.
        max_sessions_per_key: concurrent messaging sessions one key may hold.
        messages_per_s: messages one key may publish per second, sustained (None: no limit).
        message_burst: messages one key may publish at once above that rate.
    """

    def __init__(
        self,
        users: Iterable[str],
        policy: BufferPolicy,
        *,
        max_sessions_per_key: int,
        messages_per_s: float | None,
        message_burst: int,
    ) -> None:
        self.max_sessions_per_key = max_sessions_per_key
        self.messages_per_s = messages_per_s
        self.message_burst = message_burst
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._state = BoardState(users, policy)
        self._stopping = threading.Event()
        self._sessions: Dict[int, HubSession] = {}
        self._next_sid = 1
        #: sid -> key fingerprint, for admitted sessions (what end_session gives back).
        self._admitted: Dict[int, str] = {}
        self._sessions_per_key: Dict[str, int] = {}
        self._buckets: Dict[str, TokenBucket] = {}

    # -- server side -----------------------------------------------------------------------

    def register(self, make: Callable[[int], S]) -> S:
        """Give a new session its number and record it as live.

        Args:
            make: builds the session from its sid (called under the lock, so keep it cheap).

        Returns:
            the session ``make`` built.
        """
        with self._lock:
            sid = self._next_sid
            self._next_sid += 1
            session = make(sid)
            self._sessions[sid] = session
        return session

    def set_users(self, users: Iterable[str]) -> None:
        """Replace the usernames whose namespaces are protected (the users file changed)."""
        with self._lock:
            self._state.users = set(users)

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (sessions then end at their next check)."""
        return self._stopping.is_set()

    def stop(self) -> bool:
        """Mark the board as stopping and wake every waiter and every session.

        Returns:
            False if it was already stopping (nothing done), else True.
        """
        if self._stopping.is_set():
            return False
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
            sessions = list(self._sessions.values())
        for session in sessions:
            session.wake.set()
        return True

    def wait_for_change(self, timeout: float) -> None:
        """Block until membership or buffers next change, or ``timeout`` seconds pass."""
        with self._cond:
            self._cond.wait(timeout)

    def channel_members(self, name: str) -> Dict[str, List[str]]:
        """Snapshot of channel ``name``: role -> usernames of its members (empty if none).

        Roles are ``pub``, ``waiting-pub``, ``sub`` and ``pipe``; members that are ending
        are left out.
        """
        with self._lock:
            channel = self._state.channels.get(name)
            result: Dict[str, List[str]] = {}
            if channel is None:
                return result
            for member in channel.members.values():
                if member.ending is not None:
                    continue
                role = "waiting-pub" if member.waiting else member.role
                result.setdefault(role, []).append(member.user)
            return result

    # -- session side: access and limits ---------------------------------------------------

    def admit(self, session: HubSession) -> str | None:
        """Count a messaging session against its key's limit; :meth:`end_session` gives it
        back.

        Returns:
            the refusal message when the key already holds ``max_sessions_per_key``
            sessions (the session is then not counted), else None.
        """
        key = session.user.fingerprint
        with self._lock:
            count = self._sessions_per_key.get(key, 0)
            if count < self.max_sessions_per_key:
                self._sessions_per_key[key] = count + 1
                self._admitted[session.sid] = key
                return None
        return (f"too many sessions for this key (limit {self.max_sessions_per_key}); "
                "close some and retry")

    def take_message(self, user: UserKey) -> str | None:
        """Charge one message (one read of a writer's stream) to ``user``'s key.

        Returns:
            the refusal message if the key is over its rate, else None.
        """
        rate = self.messages_per_s
        if rate is None:
            return None
        key = user.fingerprint
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(rate, self.message_burst, now)
            if bucket.take(1, now):
                return None
        return (f"message rate limit exceeded: key {key} ({user.username}) may send "
                f"{rate:g} messages per second with bursts of {self.message_burst}; "
                f"disconnected")

    def listing(self, user: str) -> str:
        """The ``ls`` output for ``user`` (see :meth:`BoardState.listing`)."""
        with self._lock:
            return self._state.listing(user)

    # -- session side: membership ----------------------------------------------------------

    def join(
        self,
        session: HubSession,
        *,
        client_id: str,
        role: str,
        topic: str,
        public: bool,
        access: Sequence[str],
        keep_alive: bool,
        replay: bool,
        dispatcher: str,
    ) -> str:
        """Add the session to the channel ``topic`` resolves to (see :meth:`BoardState.join`)
        and wake whoever waits for membership changes.

        Returns:
            the final channel name.

        Raises:
            AccessDenied: the session's user may not use that channel.
        """
        with self._cond:
            member = self._state.join(
                session.sid,
                client_id=client_id,
                user=session.user.username,
                fingerprint=session.user.fingerprint,
                role=role,
                topic=topic,
                public=public,
                access=access,
                keep_alive=keep_alive,
                replay=replay,
                dispatcher=dispatcher,
            )
            self._cond.notify_all()
        return member.channel

    def wait_if_alone(self, sid: int) -> bool:
        """For a blocking pub: if nobody would receive its chunks now, mark it waiting.

        Returns:
            whether it was alone (and now counts as a waiting pub).
        """
        with self._lock:
            alone = not self._state.has_receivers(sid)
            if alone:
                self._state.members[sid].waiting = True
        return alone

    def wait_for_receiver(self, session: HubSession, deadline: float) -> bool:
        """Wait until a chunk from ``session`` would reach someone; it then stops waiting.

        Args:
            deadline: ``time.monotonic()`` value to give up at.

        Returns:
            whether a receiver came before the deadline.

        Raises:
            SessionGone: the session's client left (or the board is stopping).
        """
        sid = session.sid
        with self._cond:
            while not self._state.has_receivers(sid):
                if session.gone():
                    raise SessionGone()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, TICK_S))
            self._state.stop_waiting(sid)
        return True

    def is_evicted(self, sid: int) -> bool:
        """Whether session ``sid`` was evicted as a slow reader.

        Takes no lock (one dict lookup and one attribute read, atomic in CPython): it is
        called from a failing send loop, which must not wait for the lock.
        """
        member = self._state.members.get(sid)
        return member is not None and member.ending == "evicted"

    def end_session(self, session: HubSession) -> None:
        """Forget a session: give back its key's slot, leave its channel (waking the members
        the departure rule ends) and wake whoever waits for membership changes."""
        sid = session.sid
        with self._cond:
            self._sessions.pop(sid, None)
            key = self._admitted.pop(sid, None)
            if key is not None:
                self._sessions_per_key[key] = self._sessions_per_key.get(key, 1) - 1
                if self._sessions_per_key[key] <= 0:
                    del self._sessions_per_key[key]
            for ended in self._state.leave(sid):
                self._wake(ended)
            self._cond.notify_all()

    # -- session side: data ----------------------------------------------------------------

    def publish(self, session: HubSession, data: bytes, block: bool) -> None:
        """Queue one chunk from ``session`` for its channel and send it to idle receivers.

        Waits while some receiver's buffer is full (at most until it is evicted), and, with
        ``block``, while there is no receiver.  Returns once the chunk is queued and sent
        from this thread wherever the fast path could (see :meth:`_fan_out`), or dropped
        (no receiver and not ``block``, or the session is ending).

        Raises:
            SessionGone: the session's client left (or the board is stopping).
        """
        sid = session.sid
        state = self._state
        with self._cond:
            while True:
                if session.gone():
                    raise SessionGone()
                result = state.publish(sid, data, time.monotonic())
                for evicted in result.evicted:
                    self._wake(evicted)
                if result.delivered:
                    woken = result.woken
                    break
                if result.no_receivers:
                    member = state.members.get(sid)
                    if not block or member is None or member.ending is not None:
                        return
                    self._cond.wait(TICK_S)
                    continue
                assert result.retry_at is not None
                self._cond.wait(max(0.0, min(TICK_S, result.retry_at - time.monotonic())))
        self._fan_out(woken)

    def take(self, sid: int) -> Batch:
        """Take the next batch (up to about ``SEND_BATCH_BYTES``) queued for session ``sid``,
        with how it must end; wakes the writers if one waited for this buffer to drain.

        The caller holds the session's ``send_lock``; data queued later wakes the session
        again (its buffer was empty).
        """
        state = self._state
        with self._cond:
            data, was_stalled = state.take(sid, SEND_BATCH_BYTES)
            member = state.members.get(sid)
            if member is None:
                batch = Batch(data, "gone", "", False)
            else:
                batch = Batch(data, member.ending, member.end_message, member.buffered > 0)
            if was_stalled:
                self._cond.notify_all()
        return batch

    def _fan_out(self, sids: List[int]) -> None:
        """Send newly queued data to idle receivers from the writer's own thread.

        Called without the lock after a chunk was queued, with the receivers whose buffer
        was empty.  A receiver whose thread is busy, or whose client window is short, is
        left to its own thread (woken); the others get the data here, with no thread switch
        per receiver.  Nothing here waits for a client.
        """
        state = self._state
        for sid in sids:
            session = self._sessions.get(sid)
            if session is None:
                continue
            if not session.fast_path or not session.send_lock.acquire(blocking=False):
                session.wake.set()
                continue
            try:
                if session.pending:
                    session.wake.set()
                    continue
                with self._cond:
                    data, was_stalled = state.take(sid, SEND_BATCH_BYTES)
                    member = state.members.get(sid)
                    more = member is not None and (member.buffered > 0 or member.ending)
                    if was_stalled:
                        self._cond.notify_all()
                if not data:
                    continue
                sent = session.send_nowait(data)
                if sent < len(data):
                    session.pending = data[sent:]
                    session.wake.set()
                elif more:
                    session.wake.set()
            finally:
                session.send_lock.release()

    def _wake(self, sid: int) -> None:
        session = self._sessions.get(sid)
        if session is not None:
            session.wake.set()
