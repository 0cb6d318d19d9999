"""Pure logic of the self-hosted board server: topics, access lists, buffers, departures.

This module is the whole brain of ``p2ppool board`` (see :mod:`p2ppool.board.server` for the
SSH shell around it).  It does no I/O, starts no threads and never reads the clock: callers
pass ``now`` (seconds, any monotonic origin).  It follows pico.sh ``pipe``
(``../shared/research/pico-pipe.md``) closely, with the deliberate differences listed here.
Command parsing is in :mod:`p2ppool.board.commands`.

Names
    A user's topic ``t`` is the channel ``user/t``; ``user/t`` typed in full is the same.
    ``-p t`` is ``public/t``.  ``owner/t``, where ``owner`` is *another user of this server*,
    names that user's channel and is allowed only through its access list (below).  Any other
    ``x/t`` is the caller's own ``user/x/t``, as on pico.  ``public`` is reserved: no user may
    be called that.  Unknown keys are refused at authentication, so there is no anonymous
    user.

Access lists (pico's bugs B1-B3 are *not* copied)
    * A list belongs to the *final* channel name and lives exactly as long as the channel has
      members (publishers, waiting publishers, subscribers, pipes).  When the last member
      leaves, the list is dropped.
    * The list is set by the first session that gives a non-empty ``-a`` and may set it: the
      namespace owner, or, for a ``public/`` channel, the session that created the channel.
      Later ``-a`` values are ignored while the list exists (pico keeps the first list too).
    * Entries are usernames or key fingerprints (``SHA256:...`` as ``ssh-keygen -l`` prints).
    * The namespace owner may always use their own channels.  Anyone else gets
      ``access denied`` (stderr, exit status 1) on every command unless listed; on a public
      channel with a list, only listed users and the list's setter get in.  A foreign channel
      that does not exist yet is denied too (its owner has not opened it with a list).

Broker
    Chunks are raw bytes (a writer's reads of up to 32 KiB), forwarded byte-exact, in one total
    order per channel; the sender does not get its own chunks unless it is a ``pipe -r``; there
    is no history.  ``-d round_robin`` (fixed by the session that creates the channel) sends
    each chunk to one receiver in turn.  There is no size limit on lines or streams (like
    pico): a 10 MB line arrives byte-exact, cut into chunks; readers reassemble lines.

Slow readers (unlike pico, one slow reader cannot stall a topic forever)
    Every receiver has a bounded buffer (``BufferPolicy.max_buffer_bytes``, 4 MiB by
    default).  A chunk that does not fit in some receiver's buffer makes the writer wait
    (flow control, as pico does), but at most ``BufferPolicy.slow_reader_grace_s`` per stall:
    a receiver whose buffer has stayed too full for that long is *evicted*: its unsent data is
    dropped, it gets ``ERROR_SLOW_READER`` on stderr and exit status 1 (so its client
    reconnects), and the writers go on.  A buffer never holds more than its limit, plus one
    chunk when it was empty.  ``-c`` does not hide this message (it is on stderr).  So a
    ``pipe`` never waits for a receiver to *appear* (chunks sent while alone are dropped, as
    on pico), but its writes may wait up to the grace period for a full receiver.

Departure rule (as pico)
    When a member leaves and the channel is left with no connected publisher and at most one
    pipe, every remaining subscriber without ``-k`` and the remaining pipe are ended normally:
    their queued data is flushed, then exit status 0.  Waiting publishers are not affected.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, Iterable, List, Sequence, Tuple

from ..errors import AccessDenied

__all__ = [
    "ACCESS_DENIED",
    "CHUNK_BYTES",
    "ERROR_SLOW_READER",
    "PUBLIC",
    "BoardState",
    "BufferPolicy",
    "Channel",
    "Member",
    "PublishResult",
    "TokenBucket",
]

#: Largest chunk a writer's stdin read produces (pico reads into a 32 KiB buffer).
CHUNK_BYTES = 32 * 1024
#: Reserved namespace of public topics.
PUBLIC = "public"
#: Error text, exactly as pico prints it (before the ``\n\r``).
ACCESS_DENIED = "access denied"
#: Sent on stderr to a receiver evicted for falling behind (format with ``name``, ``limit``).
ERROR_SLOW_READER = (
    "you fell behind on {name}: more than {limit} bytes waited for you to read; "
    "disconnecting (reconnect to go on; data sent meanwhile is lost)"
)


# --- channels and members ------------------------------------------------------------


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``burst`` (pure).

    Used per SSH key for the board's message-rate limit; starts full.
    """

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate!r}, {burst!r}")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def take(self, count: int, now: float) -> bool:
        """Take ``count`` tokens if the bucket holds them (after refilling up to ``now``)."""
        self.tokens = min(float(self.burst),
                          self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = max(self.updated, now)
        if count > self.tokens:
            return False
        self.tokens -= count
        return True


@dataclass(frozen=True)
class BufferPolicy:
    """Limits for receivers that fall behind (see the module docstring).

    Attributes:
        max_buffer_bytes: bytes queued for one receiver before writers must wait for it.
        slow_reader_grace_s: how long a receiver may keep writers waiting before eviction.
    """

    max_buffer_bytes: int = 4 * 1024 * 1024
    slow_reader_grace_s: float = 10.0


@dataclass(eq=False)
class Member:
    """One session on a channel (a pub, sub or pipe) and its outgoing buffer.

    Attributes:
        sid: the server's session number (unique while the server runs).
        client_id: ``"<uuid> (<user>@<ip:port>)"``, as ``ls`` shows it.
        user: the authenticated username.
        fingerprint: the session key's ``SHA256:...`` fingerprint.
        role: ``"pub"``, ``"sub"`` or ``"pipe"``.
        channel: the final channel name.
        keep_alive: ``sub -k``.
        replay: ``pipe -r``.
        waiting: a blocking pub still waiting for its first receiver.
        ending: why the session must end (``"departure"``, ``"evicted"``), or None.
        end_message: text for stderr when ending with an error.
    """

    sid: int
    client_id: str
    user: str
    fingerprint: str
    role: str
    channel: str
    keep_alive: bool = False
    replay: bool = False
    waiting: bool = False
    buffer: Deque[bytes] = field(default_factory=deque)
    buffered: int = 0
    stalled_since: float | None = None
    ending: str | None = None
    end_message: str = ""

    @property
    def receives(self) -> bool:
        """Whether chunks are delivered to this member (subs and pipes)."""
        return self.role in ("sub", "pipe") and self.ending is None


@dataclass(eq=False)
class Channel:
    """A channel: its members in join order, its access list and its dispatcher."""

    name: str
    dispatcher: str = "multicast"
    access: Tuple[str, ...] = ()
    access_setter: str | None = None
    creator: str | None = None
    members: Dict[int, Member] = field(default_factory=dict)
    rr_next: int = 0

    def receivers(self, sender: Member | None) -> List[Member]:
        """Members that get a chunk written by ``sender`` (the sender only with ``-r``)."""
        return [
            m
            for m in self.members.values()
            if m.receives and (m is not sender or m.replay)
        ]


@dataclass
class PublishResult:
    """What :meth:`BoardState.publish` did.

    Attributes:
        delivered: the chunk was queued (to ``woken`` receivers, possibly none).
        no_receivers: nobody could receive it; it was queued nowhere.
        woken: sids whose buffer went from empty to non-empty (their writers must wake).
        evicted: sids evicted as slow readers (their writers must end them with an error).
        retry_at: when not delivered because a receiver is full: ``now`` at which to retry
            at the latest (the earliest eviction deadline); wake earlier when a buffer drains.
    """

    delivered: bool
    no_receivers: bool = False
    woken: List[int] = field(default_factory=list)
    evicted: List[int] = field(default_factory=list)
    retry_at: float | None = None


class BoardState:
    """Every channel, member and access list of one board server.

    Not thread-safe: the server serialises calls with one lock.

    Args:
        users: the usernames of this server (their namespaces are protected).
        policy: buffer limits for slow readers.
    """

    def __init__(self, users: Iterable[str] = (), policy: BufferPolicy = BufferPolicy()) -> None:
        self.users = set(users)
        self.policy = policy
        self.channels: Dict[str, Channel] = {}
        self.members: Dict[int, Member] = {}

    # -- names and access --------------------------------------------------------------

    def resolve(self, user: str, topic: str, public: bool) -> str:
        """The channel name ``user`` means by ``topic`` (see the module docstring)."""
        if public:
            return topic if topic.startswith(PUBLIC + "/") else f"{PUBLIC}/{topic}"
        if topic.startswith(user + "/"):
            return topic
        owner = topic.split("/", 1)[0] if "/" in topic else ""
        if owner and owner != user and owner in self.users:
            return topic
        return f"{user}/{topic}"

    @staticmethod
    def owner_of(name: str) -> str | None:
        """The user whose namespace ``name`` is in (None for ``public/`` channels)."""
        owner = name.split("/", 1)[0]
        return None if owner == PUBLIC else owner

    def may_use(self, name: str, user: str, fingerprint: str) -> bool:
        """Whether ``user`` (with key ``fingerprint``) may use channel ``name`` now."""
        owner = self.owner_of(name)
        if owner is not None and owner == user:
            return True
        channel = self.channels.get(name)
        if channel is None or not channel.access:
            return owner is None
        return (
            user in channel.access
            or fingerprint in channel.access
            or (owner is None and user == channel.access_setter)
        )

    # -- membership --------------------------------------------------------------------

    def join(
        self,
        sid: int,
        *,
        client_id: str,
        user: str,
        fingerprint: str,
        role: str,
        topic: str,
        public: bool = False,
        access: Sequence[str] = (),
        keep_alive: bool = False,
        replay: bool = False,
        dispatcher: str = "multicast",
        waiting: bool = False,
    ) -> Member:
        """Add session ``sid`` to the channel ``topic`` resolves to.

        Raises:
            AccessDenied: ``user`` may not use that channel (message: ``access denied``).
        """
        name = self.resolve(user, topic, public)
        if not self.may_use(name, user, fingerprint):
            raise AccessDenied(ACCESS_DENIED)
        channel = self.channels.get(name)
        created = channel is None
        if channel is None:
            channel = Channel(name=name, creator=user)
            if role != "sub" and dispatcher == "round_robin":
                channel.dispatcher = "round_robin"
            self.channels[name] = channel
        owner = self.owner_of(name)
        may_set = user == owner or (owner is None and created)
        if access and not channel.access and may_set:
            channel.access = tuple(access)
            channel.access_setter = user
        member = Member(
            sid=sid,
            client_id=client_id,
            user=user,
            fingerprint=fingerprint,
            role=role,
            channel=name,
            keep_alive=keep_alive,
            replay=replay,
            waiting=waiting,
        )
        channel.members[sid] = member
        self.members[sid] = member
        return member

    def has_receivers(self, sid: int) -> bool:
        """Whether a chunk written by ``sid`` now would reach anyone."""
        member = self.members.get(sid)
        if member is None:
            return False
        return bool(self.channels[member.channel].receivers(member))

    def stop_waiting(self, sid: int) -> None:
        """A blocking pub found its first receiver: it now counts as a connected pub."""
        member = self.members.get(sid)
        if member is not None:
            member.waiting = False

    def leave(self, sid: int) -> List[int]:
        """Remove session ``sid``; apply the departure rule.

        Returns:
            sids of the members ended by the departure rule (``ending == "departure"``): their
            writers must flush what is queued, then exit with status 0.
        """
        member = self.members.pop(sid, None)
        if member is None:
            return []
        channel = self.channels.get(member.channel)
        if channel is None:
            return []
        channel.members.pop(sid, None)
        ended: List[int] = []
        if member.role != "pub" or not member.waiting:
            ended = self._apply_departure_rule(channel)
        if not channel.members:
            del self.channels[channel.name]
        return ended

    def _apply_departure_rule(self, channel: Channel) -> List[int]:
        active = [m for m in channel.members.values() if m.ending is None]
        pubs = sum(1 for m in active if m.role == "pub" and not m.waiting)
        pipes = sum(1 for m in active if m.role == "pipe")
        if pubs or pipes > 1:
            return []
        ended = []
        for m in active:
            if (m.role == "sub" and not m.keep_alive) or m.role == "pipe":
                m.ending = "departure"
                ended.append(m.sid)
        return ended

    # -- data --------------------------------------------------------------------------

    def publish(self, sid: int, data: bytes, now: float) -> PublishResult:
        """Queue chunk ``data`` written by session ``sid`` for every receiver.

        Either the chunk is queued for all receivers at once (total order), or, when some
        receiver's buffer is full, nothing is queued and ``retry_at`` says until when to wait.
        Receivers full for longer than the grace period are evicted first.
        """
        member = self.members.get(sid)
        if member is None or member.ending is not None:
            return PublishResult(delivered=False, no_receivers=True)
        channel = self.channels[member.channel]
        receivers = channel.receivers(member)
        if not receivers:
            return PublishResult(delivered=False, no_receivers=True)
        if channel.dispatcher == "round_robin":
            receivers.sort(key=lambda m: m.client_id)
            receivers = [receivers[channel.rr_next % len(receivers)]]
        limit = self.policy.max_buffer_bytes
        evicted: List[int] = []
        deadline: float | None = None
        for m in receivers:
            if m.buffered == 0 or m.buffered + len(data) <= limit:
                continue
            if m.stalled_since is None:
                m.stalled_since = now
            until = m.stalled_since + self.policy.slow_reader_grace_s
            if now >= until:
                self._evict(m)
                evicted.append(m.sid)
            elif deadline is None or until < deadline:
                deadline = until
        if deadline is not None:
            return PublishResult(delivered=False, evicted=evicted, retry_at=deadline)
        if evicted:
            receivers = [m for m in receivers if m.ending is None]
        if channel.dispatcher == "round_robin":
            channel.rr_next += 1
        woken = []
        for m in receivers:
            if not m.buffer:
                woken.append(m.sid)
            m.buffer.append(data)
            m.buffered += len(data)
        return PublishResult(delivered=True, woken=woken, evicted=evicted)

    def _evict(self, member: Member) -> None:
        member.ending = "evicted"
        member.end_message = ERROR_SLOW_READER.format(
            name=member.channel, limit=self.policy.max_buffer_bytes
        )
        member.buffer.clear()
        member.buffered = 0
        member.stalled_since = None

    def take(self, sid: int, max_bytes: int) -> Tuple[bytes, bool]:
        """Remove and return up to about ``max_bytes`` of queued data for session ``sid``.

        Whole chunks are taken (at least one when any is queued), joined into one string.

        Returns:
            ``(data, was_stalled)``: ``was_stalled`` is True when a writer was waiting for this
            buffer to drain (the caller should wake the writers).
        """
        member = self.members.get(sid)
        if member is None or not member.buffer:
            return b"", False
        parts = [member.buffer.popleft()]
        size = len(parts[0])
        while member.buffer and size + len(member.buffer[0]) <= max_bytes:
            chunk = member.buffer.popleft()
            parts.append(chunk)
            size += len(chunk)
        member.buffered -= size
        was_stalled = member.stalled_since is not None
        member.stalled_since = None
        return (parts[0] if len(parts) == 1 else b"".join(parts)), was_stalled

    def take_all(self, sid: int) -> bytes:
        """Everything queued for ``sid`` (used when a member ended and flushes)."""
        data, _ = self.take(sid, 1 << 62)
        return data

    # -- listing -----------------------------------------------------------------------

    def listing(self, user: str) -> str:
        """The ``ls`` output for ``user``: their own channels, in pico's format."""
        prefix = user + "/"
        names = sorted(n for n in self.channels if n.startswith(prefix))
        if not names:
            return "no pubsub channels found\n"
        out = ["Channel Information\r\n"]
        for name in names:
            channel = self.channels[name]
            line = f"- {name}:"
            if channel.access:
                line += f" (Access List: {', '.join(channel.access)})"
            out.append(line + "\r\n")
            members = list(channel.members.values())
            groups = (
                ("Pubs", [m for m in members if m.role == "pub" and not m.waiting]),
                ("Subs", [m for m in members if m.role == "sub"]),
                ("Pipes", [m for m in members if m.role == "pipe"]),
                ("Waiting Pubs", [m for m in members if m.role == "pub" and m.waiting]),
            )
            for title, group in groups:
                if group:
                    out.append(f"  {title}:\r\n")
                    out.extend(f"  - {m.client_id}\r\n" for m in group)
        return "".join(out)
