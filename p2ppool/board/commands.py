"""Pure parsing of board commands, as pico.sh ``pipe`` parses them (no I/O).

Part of the self-hosted board (:mod:`p2ppool.board.state` holds the rest of the rules,
:mod:`p2ppool.board.server` the SSH shell).

Command line
    ``help``, ``ls``, ``pub``, ``sub``, ``pipe``, and ``user`` (which pico answers on
    ``pico.sh`` rather than on its pipe host: the name the board takes the key for).  The
    exec string is split on single spaces, single- or double-quoted spans are kept together
    with the quotes removed; flags follow Go's ``flag`` package (``-x``, ``--x``, ``-x=v``,
    ``-x v``; bool flags take a value only as ``-b=false``; parsing stops at the first
    non-flag).  ``-t`` takes Go durations.
    A bad flag, ``-h`` or a topic of ``help`` print the usage text and fail with
    ``invalid cmd args``.  Unknown commands print nothing and exit 0, like pico.  Wildcard
    (``*``) subscriptions are not implemented: ``*`` is an ordinary character here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple, Union

__all__ = [
    "COMMAND_FLAGS",
    "INVALID_ARGS",
    "TIMEOUT_REACHED",
    "Command",
    "FlagSpec",
    "UsageFailure",
    "format_duration",
    "help_text",
    "parse_command",
    "parse_duration",
    "split_command",
]

#: Fatal error texts, exactly as pico prints them (before the ``\n\r``).
INVALID_ARGS = "invalid cmd args"
TIMEOUT_REACHED = "timeout reached, exiting"

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


def user_text(username: str, fingerprint: str) -> str:
    """The ``user`` output: who the board takes this key for, first line the username.

    pico's ``ssh pico.sh user`` prints name, user id, created_at and pico+ expiry, joined
    with ``\\n`` and ended with ``\\r\\n``; clients read the first line.  This board keeps
    no accounts, so it prints the name, the key's fingerprint in place of an account id,
    and no dates.
    """
    return "\n".join([username, fingerprint, "", ""]) + "\r\n"


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
        "\n"
        f'Use "ssh {ssh_target} <command> -h" for help on a specific command.'
    )
    return text.replace("\n", "\r\n") + "\n"
