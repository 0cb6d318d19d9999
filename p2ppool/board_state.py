"""Pure logic of the self-hosted board server: commands, topics, access lists, buffers.

This module is the whole brain of ``p2ppool board`` (see :mod:`p2ppool.board_server` for the
SSH shell around it).  It does no I/O, starts no threads and never reads the clock: callers
pass ``now`` (seconds, any monotonic origin).  It follows pico.sh ``pipe``
(``../shared/research/pico-pipe.md``) closely, with the deliberate differences listed here.

Command line
    ``help``, ``ls``, ``pub``, ``sub`` and ``pipe``, plus ``user`` (as ``ssh pico.sh user``
    on pico: prints the username, then the key fingerprint).  The exec string is split on single
    spaces, single- or double-quoted spans are kept together with the quotes removed; flags
    follow Go's ``flag`` package (``-x``, ``--x``, ``-x=v``, ``-x v``; bool flags take a value
    only as ``-b=false``; parsing stops at the first non-flag).  ``-t`` takes Go durations.
    A bad flag, ``-h`` or a topic of ``help`` print the usage text and fail with
    ``invalid cmd args``.  Unknown commands print nothing and exit 0, like pico.  Wildcard
    (``*``) subscriptions are not implemented: ``*`` is an ordinary character here.

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

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, Iterable, List, Sequence, Tuple, Union

from .errors import AccessDenied

__all__ = [
    "ACCESS_DENIED",
    "CHUNK_BYTES",
    "COMMAND_FLAGS",
    "ERROR_SLOW_READER",
    "INVALID_ARGS",
    "PUBLIC",
    "TIMEOUT_REACHED",
    "BoardState",
    "BufferPolicy",
    "Channel",
    "Command",
    "FlagSpec",
    "Member",
    "PublishResult",
    "UsageFailure",
    "format_duration",
    "help_text",
    "parse_command",
    "parse_duration",
    "split_command",
]

#: Largest chunk a writer's stdin read produces (pico reads into a 32 KiB buffer).
CHUNK_BYTES = 32 * 1024
#: Reserved namespace of public topics.
PUBLIC = "public"
#: Fatal error texts, exactly as pico prints them (before the ``\n\r``).
ACCESS_DENIED = "access denied"
INVALID_ARGS = "invalid cmd args"
TIMEOUT_REACHED = "timeout reached, exiting"
#: Sent on stderr to a receiver evicted for falling behind (format with ``name``, ``limit``).
ERROR_SLOW_READER = (
    "you fell behind on {name}: more than {limit} bytes waited for you to read; "
    "disconnecting (reconnect to go on; data sent meanwhile is lost)"
)

_NS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]+)")


# --- command line ----------------------------------------------------------------------


def split_command(command: str) -> List[str]:
    """Split an exec command as pico does: on single spaces, quoted spans kept, quotes removed.

    Consecutive spaces give empty tokens (pico's splitter keeps them).  An unbalanced quote
    makes the whole command empty, so the server prints help, as pico does.
    """
    tokens: List[str] = []
    current: List[str] = []
    quote: str | None = None
    for char in command:
        if quote is not None:
            if char == quote:
                quote = None
            else:
                current.append(char)
        elif char in "'\"":
            quote = char
        elif char == " ":
            tokens.append("".join(current))
            current = []
        else:
            current.append(char)
    if quote is not None:
        return []
    tokens.append("".join(current))
    if tokens == [""]:
        return []
    return tokens


def parse_duration(text: str) -> int:
    """Parse a Go duration (``"1h30m"``, ``"500ms"``, ``"0"``) into nanoseconds.

    Raises:
        ValueError: if ``text`` is not a Go duration.
    """
    rest = text
    sign = 1
    if rest[:1] in ("+", "-"):
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise ValueError(f"invalid duration {text!r}")
    total = 0.0
    pos = 0
    while pos < len(rest):
        match = _DURATION_PART.match(rest, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r}")
        number, unit = match.group(1), match.group(2)
        if number in ("", ".") or unit not in _NS_PER_UNIT:
            raise ValueError(f"invalid duration {text!r}")
        total += float(number) * _NS_PER_UNIT[unit]
        pos = match.end()
    return sign * int(round(total))


def _fraction(value: int, precision: int) -> str:
    whole, frac = divmod(value, 10**precision)
    digits = str(frac).rjust(precision, "0").rstrip("0") if precision else ""
    return f"{whole}.{digits}" if digits else str(whole)


def format_duration(ns: int) -> str:
    """Format nanoseconds as Go's ``time.Duration.String()`` does (``720h0m0s``, ``500ms``)."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < 1_000_000_000:
        if u < 1_000:
            return f"{sign}{u}ns"
        if u < 1_000_000:
            return f"{sign}{_fraction(u, 3)}\u00b5s"
        return f"{sign}{_fraction(u, 6)}ms"
    total_s, frac_ns = divmod(u, 1_000_000_000)
    frac = str(frac_ns).rjust(9, "0").rstrip("0")
    seconds = f"{total_s % 60}" + (f".{frac}" if frac else "") + "s"
    minutes, hours = (total_s // 60) % 60, total_s // 3600
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}"
    if total_s >= 60:
        return f"{sign}{minutes}m{seconds}"
    return f"{sign}{seconds}"


@dataclass(frozen=True)
class FlagSpec:
    """One Go-style flag of a command: its kind (``bool``, ``string``, ``duration``)."""

    name: str
    kind: str
    default: Union[bool, str, int]
    usage: str


_ACCESS_USAGE = (
    "Comma separated list of pico usernames or ssh-key fingerprints to allow access to a topic"
)
_CLEAN_USAGE = "Don't send status messages"
_DISPATCH_USAGE = "Type of dispatcher (e.g. multicast, round_robin)"
_TIMEOUT_USAGE = (
    "Timeout as a Go duration to block for a subscriber to be available. Valid time units are "
    "'ns', 'us' (or '\u00b5s'), 'ms', 's', 'm', 'h'. Default is 30 days."
)
_THIRTY_DAYS_NS = 30 * 24 * 3600 * 1_000_000_000

#: The flags of each messaging command, with pico's names, defaults and help texts.
COMMAND_FLAGS: Dict[str, Tuple[FlagSpec, ...]] = {
    "pub": (
        FlagSpec("a", "string", "", _ACCESS_USAGE),
        FlagSpec("e", "bool", False, "Send an empty message to subs"),
        FlagSpec("p", "bool", False, "Publish message to public topic"),
        FlagSpec("b", "bool", True, "Block writes until a subscriber is available"),
        FlagSpec("t", "duration", _THIRTY_DAYS_NS, _TIMEOUT_USAGE),
        FlagSpec("c", "bool", False, _CLEAN_USAGE),
        FlagSpec("d", "string", "multicast", _DISPATCH_USAGE),
    ),
    "sub": (
        FlagSpec("a", "string", "", _ACCESS_USAGE),
        FlagSpec("p", "bool", False, "Subscribe to a public topic"),
        FlagSpec(
            "k", "bool", False, "Keep the subscription alive even after the publisher has died"
        ),
        FlagSpec("c", "bool", False, _CLEAN_USAGE),
    ),
    "pipe": (
        FlagSpec("a", "string", "", _ACCESS_USAGE),
        FlagSpec("p", "bool", False, "Pipe to a public topic"),
        FlagSpec("r", "bool", False, "Replay messages to the client that sent it"),
        FlagSpec("c", "bool", False, _CLEAN_USAGE),
        FlagSpec("d", "string", "multicast", _DISPATCH_USAGE),
    ),
}


@dataclass
class Command:
    """A parsed ``pub``/``sub``/``pipe`` command (or ``help``/``ls``/an unknown word).

    Attributes:
        name: the command word (``""`` for an empty command).
        topic: the topic as typed, or ``""`` when none was given.
        flags: every flag of the command with its value (defaults filled in).
        rest: the tokens after the command word (``ls`` ignores them).
    """

    name: str
    topic: str = ""
    flags: Dict[str, Union[bool, str, int]] = field(default_factory=dict)
    rest: List[str] = field(default_factory=list)

    def flag(self, name: str) -> Union[bool, str, int]:
        """Value of flag ``name``."""
        return self.flags[name]

    @property
    def access(self) -> Tuple[str, ...]:
        """The ``-a`` list, split on commas and trimmed (empty entries dropped)."""
        raw = str(self.flags.get("a", ""))
        return tuple(item.strip() for item in raw.split(",") if item.strip())


@dataclass
class UsageFailure:
    """The command's arguments were bad: print ``output`` on stdout, then fail.

    Attributes:
        output: Go's error line (if any) and the usage text, ``\\n``-terminated lines.
    """

    output: str


def _usage(name: str) -> str:
    lines = [f"Usage: {name} <topic> [args...]", "Args:"]
    for spec in sorted(COMMAND_FLAGS[name], key=lambda s: s.name):
        head = f"  -{spec.name}"
        if spec.kind != "bool":
            head += f" {spec.kind}"
        head += "\t" if len(head) <= 4 else "\n    \t"
        text = head + spec.usage
        if spec.kind == "bool" and spec.default:
            text += " (default true)"
        elif spec.kind == "string" and spec.default:
            text += f' (default "{spec.default}")'
        elif spec.kind == "duration" and spec.default:
            text += f" (default {format_duration(int(spec.default))})"
        lines.append(text)
    return "\n".join(lines) + "\n"


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def _parse_flags(
    name: str, args: Sequence[str]
) -> Union[Tuple[Dict[str, Union[bool, str, int]], List[str]], UsageFailure]:
    specs = {spec.name: spec for spec in COMMAND_FLAGS[name]}
    values: Dict[str, Union[bool, str, int]] = {s.name: s.default for s in specs.values()}
    rest = list(args)
    while rest:
        token = rest[0]
        if len(token) < 2 or token[0] != "-":
            break
        dashes = 2 if token[1] == "-" else 1
        if dashes == 2 and len(token) == 2:
            rest.pop(0)
            break
        flag_name = token[dashes:]
        if not flag_name or flag_name[0] in "-=":
            return UsageFailure(f"bad flag syntax: {token}\n" + _usage(name))
        rest.pop(0)
        value: str | None = None
        if "=" in flag_name:
            flag_name, value = flag_name.split("=", 1)
        spec = specs.get(flag_name)
        if spec is None:
            if flag_name in ("h", "help"):
                return UsageFailure(_usage(name))
            return UsageFailure(f"flag provided but not defined: -{flag_name}\n" + _usage(name))
        if spec.kind == "bool":
            if value is None:
                values[spec.name] = True
            elif value in _TRUE:
                values[spec.name] = True
            elif value in _FALSE:
                values[spec.name] = False
            else:
                return UsageFailure(
                    f'invalid boolean value "{value}" for -{flag_name}: parse error\n'
                    + _usage(name)
                )
            continue
        if value is None:
            if not rest:
                return UsageFailure(f"flag needs an argument: -{flag_name}\n" + _usage(name))
            value = rest.pop(0)
        if spec.kind == "duration":
            try:
                values[spec.name] = parse_duration(value)
            except ValueError:
                return UsageFailure(
                    f'invalid value "{value}" for flag -{flag_name}: parse error\n' + _usage(name)
                )
        else:
            values[spec.name] = value
    return values, rest


def parse_command(argv: Sequence[str]) -> Union[Command, UsageFailure]:
    """Turn a split exec command into a :class:`Command`, or the usage failure to print.

    ``help``, ``ls`` and unknown words come back as a :class:`Command` with that name; the
    caller decides what to do.  For ``pub``/``sub``/``pipe`` the topic and flags are parsed
    as pico does (section 1.3 of the research note).
    """
    if not argv:
        return Command(name="")
    name = argv[0].strip()
    if name not in COMMAND_FLAGS:
        return Command(name=name, rest=list(argv[1:]))
    topic = ""
    flag_args = list(argv[1:])
    if len(argv) > 1 and not argv[1].startswith("-"):
        topic = argv[1].strip()
        flag_args = list(argv[2:])
    parsed = _parse_flags(name, flag_args)
    if isinstance(parsed, UsageFailure):
        return parsed
    values, positional = parsed
    if topic == "help":
        return UsageFailure(_usage(name))
    if not topic and len(positional) == 1:
        topic = positional[0]
    return Command(name=name, topic=topic, flags=values, rest=positional)


def help_text(ssh_target: str) -> str:
    """The ``help`` output, ``\\r\\n`` line ends as pico writes it, for ``ssh <ssh_target>``."""
    text = (
        f"Command: ssh {ssh_target} <command> [args...]\n"
        "\n"
        "The simplest authenticated pubsub system.  Send messages through\n"
        "user-defined topics.  Topics are private to the authenticated\n"
        "ssh user.  The default pubsub model is multicast with bidirectional\n"
        'blocking, meaning a publisher ("pub") will send its message to all\n'
        'subscribers ("sub").  Further, both "pub" and "sub" will wait for\n'
        "at least one event to be sent or received. Pipe (\"pipe\") allows\n"
        "for bidirectional messages to be sent between any clients connected\n"
        "to a pipe.\n"
        "\n"
        "Commands:\n"
        "  help                        Show this help message\n"
        "  ls                          List active pubsub channels\n"
        "  pub <topic> [flags]         Publish messages to a topic\n"
        "  sub <topic> [flags]         Subscribe to messages from a topic\n"
        "  pipe <topic> [flags]        Bidirectional messaging between clients\n"
        "  user                        Show your username and key fingerprint\n"
        "\n"
        f'Use "ssh {ssh_target} <command> -h" for help on a specific command.'
    )
    return text.replace("\n", "\r\n") + "\n"


# --- channels and members ------------------------------------------------------------


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
