"""Options: keyword arguments, then ``P2PPOOL_*`` environment variables, then a config file.

Every option has one name used in all three places: ``Pool(fallback=5)``,
``P2PPOOL_FALLBACK=5`` and ``fallback = 5`` in the TOML config file (``$P2PPOOL_CONFIG``, else
``~/.config/p2ppool/config.toml``).  The first source that sets an option wins.  A bad value
raises :class:`~p2ppool.errors.ConfigError` naming the option and the source, e.g.::

    ConfigError: fallback: expected a number of seconds or 'none', got 'soon'
                 (from environment variable P2PPOOL_FALLBACK)

The config file may hold the options at top level or under a ``[p2ppool]`` table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Tuple

from . import defaults
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

__all__ = [
    "OPTIONS", "Option", "Options", "config_path", "parse_duration", "resolve_options",
    "split_board",
]

ENV_PREFIX = "P2PPOOL_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_NONE = {"none", "never", "off", "null"}


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``14d``, ``12h``, ``30m``, ``45s``, ``1w``, ``1d12h``.

    A bare number is seconds.

    Raises:
        ValueError: not a positive duration (the message says what is accepted).
    """
    cleaned = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", cleaned):
        seconds = float(cleaned)
    else:
        parts = _DURATION_RE.findall(cleaned)
        if not parts or "".join(n + u for n, u in parts) != cleaned:
            raise ValueError(
                f"{text!r} is not a duration; use a number with a unit s, m, h, d or w, "
                "e.g. 14d, 12h, 30m or 1d12h"
            )
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r}: the duration must be positive")
    return seconds


# --- value parsers: str from env/file or a Python value from kwargs -> typed value -------


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected true/false (1/0, yes/no, on/off), got {value!r}")


def _parse_optional_str(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value.strip() or None


def _parse_str(value: Any) -> str:
    parsed = _parse_optional_str(value)
    if parsed is None:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return parsed


def _parse_path(value: Any) -> str | None:
    parsed = _parse_optional_str(value)
    return None if parsed is None else os.path.expanduser(parsed)


def _parse_start_method(value: Any) -> str | None:
    parsed = _parse_optional_str(value)
    if parsed is None:
        return None
    allowed = ("fork", "spawn", "forkserver")
    if parsed not in allowed:
        raise ValueError(f"expected one of {', '.join(allowed)}, got {value!r}")
    return parsed


def _parse_cluster(value: Any) -> str | None:
    parsed = _parse_optional_str(value)
    if parsed is None:
        return None
    owner, sep, name = parsed.partition("/")
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    if not sep or not owner or not name or not set(owner + name.replace("/", "")) <= allowed:
        raise ValueError(
            f"expected 'owner/name' (letters, digits, '.', '_', '-'), got {value!r}"
        )
    return parsed


def split_board(text: str) -> tuple[str, int | None]:
    """Split a board address ``HOST[:PORT]`` into (host, port); the one parser for it.

    ``HOST`` may be an ``~/.ssh/config`` alias; an IPv6 address with a port is written
    ``[ADDR]:PORT`` (a bare IPv6 address is a host without a port).  Without a port the port
    is None: the SSH config's ``Port`` for the host applies, else 22 (as ``ssh HOST`` does).

    Raises:
        ValueError: an empty host or a port that is not a number in 1..65535.
    """
    text = text.strip()
    if text.startswith("["):
        inner, bracket, rest = text[1:].partition("]")
        host, sep, port = inner, rest[:1], rest[1:]
        if not bracket or (rest and sep != ":"):
            host = ""
    elif text.count(":") == 1:
        host, sep, port = text.partition(":")
    else:  # a name, or a bare IPv6 address
        host, sep, port = text, "", ""
    if not host or (sep and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ValueError(f"expected 'host' or 'host:port', got {text!r}")
    return host, int(port) if sep else None


def _parse_board(value: Any) -> str:
    parsed = _parse_str(value)
    split_board(parsed)
    return parsed


def _seconds_or_none(value: Any) -> float | None:
    """A number of seconds, or None for 'none' (ValueError for anything else)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
        return None
    if isinstance(value, bool):
        raise ValueError(f"expected a number of seconds or 'none', got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of seconds or 'none', got {value!r}") from None


def _parse_fallback(value: Any) -> float | None:
    seconds = _seconds_or_none(value)
    if seconds is not None and not seconds >= 0:
        raise ValueError(f"expected a number of seconds >= 0 or 'none', got {value!r}")
    return seconds


def _parse_timeout(value: Any) -> float | None:
    seconds = _seconds_or_none(value)
    if seconds is None:
        return None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"expected a number of seconds > 0 or 'none', got {value!r}")
    return seconds


def _parse_positive_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected a positive integer, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a positive integer, got {value!r}") from None
    if number < 1 or (isinstance(value, float) and value != number):
        raise ValueError(f"expected a positive integer, got {value!r}")
    return number


def _parse_ship_modules(value: Any) -> Tuple[str, ...]:
    from .shipping.modules import parse_ship_modules

    if not isinstance(value, (str, list, tuple)):
        raise ValueError(f"expected module names ('a,-b' or a list), got {value!r}")
    return parse_ship_modules(value)


def _parse_requirements(value: Any) -> Tuple[str, ...]:
    from .shipping.requirements import parse_requirements

    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"expected a JSON list of requirements, got {value!r}") from None
    if not isinstance(value, (str, list, tuple)):
        raise ValueError(f"expected requirements ('numpy>=2 scipy', a JSON list, or a list), "
                         f"got {value!r}")
    return parse_requirements(value)


def _parse_relay(value: Any) -> str:
    parsed = _parse_str(value)
    if not parsed.startswith(("ws://", "wss://")):
        raise ValueError(f"expected a ws:// or wss:// mailbox URL ending in /v1, got {value!r}")
    return parsed


@dataclasses.dataclass(frozen=True)
class Option:
    """One configurable option: its name, default, parser and one line of documentation."""

    name: str
    default: Any
    parse: Callable[[Any], Any]
    doc: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("progress", False, _parse_bool, "show a tqdm progress bar for map/imap/starmap"),
    Option(
        "start_method", None, _parse_start_method,
        "start method of local processes: fork, spawn or forkserver (default: the platform's)",
    ),
    Option("cluster", None, _parse_cluster, "the cluster to use, 'owner/name'; unset: local only"),
    Option(
        "board", defaults.BOARD_HOST, _parse_board,
        "the message board's SSH host[:port] (no port: the SSH config's Port, else 22)",
    ),
    Option("board_user", None, _parse_optional_str, "your username on the board"),
    Option("identity", None, _parse_path, "SSH private key for the board (default: agent, ~/.ssh)"),
    Option("known_hosts", None, _parse_path, "known_hosts file (default: ~/.ssh/known_hosts)"),
    Option("relay", defaults.RELAY_URL, _parse_relay, "magic-wormhole mailbox server URL"),
    Option("transit", defaults.TRANSIT_HINT, _parse_str, "magic-wormhole transit relay hint"),
    Option(
        "fallback", defaults.FALLBACK_S, _parse_fallback,
        "seconds without a peer before running locally; 'none' never falls back",
    ),
    Option(
        "loopback_only", False, _parse_bool,
        "bind and advertise 127.0.0.1 only for wormhole connections (local clusters, tests)",
    ),
    Option("max_attempts", defaults.MAX_ATTEMPTS, _parse_positive_int, "attempts per chunk"),
    Option(
        "task_timeout", defaults.TASK_TIMEOUT_S, _parse_timeout,
        "seconds a chunk may run before it also runs on another idle worker (first result "
        "wins); 'none': only once it runs far longer than its job's other chunks",
    ),
    Option(
        "requirements", (), _parse_requirements,
        "packages the job needs on workers (PEP 508; workers that lack them do not offer)",
    ),
    Option(
        "ship_modules", (), _parse_ship_modules,
        "modules to ship to workers although installed ('name'), or never to ship ('-name')",
    ),
)

_BY_NAME = {option.name: option for option in OPTIONS}


@dataclasses.dataclass(frozen=True)
class Options:
    """The resolved options of one Pool or command (see :data:`OPTIONS` for documentation)."""

    progress: bool = False
    start_method: str | None = None
    cluster: str | None = None
    board: str = defaults.BOARD_HOST
    board_user: str | None = None
    identity: str | None = None
    known_hosts: str | None = None
    relay: str = defaults.RELAY_URL
    transit: str = defaults.TRANSIT_HINT
    fallback: float | None = defaults.FALLBACK_S
    loopback_only: bool = False
    max_attempts: int = defaults.MAX_ATTEMPTS
    task_timeout: float | None = defaults.TASK_TIMEOUT_S
    requirements: Tuple[str, ...] = ()
    ship_modules: Tuple[str, ...] = ()
    #: option name -> where its value came from ("default", "keyword argument", ...)
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def board_address(self) -> tuple[str, int | None]:
        """``board`` split into (host, port) by :func:`split_board`.

        The port is None when ``board`` names none: the SSH config's ``Port`` for the host
        applies when connecting, else 22.
        """
        return split_board(self.board)

    def as_env(self) -> dict[str, str]:
        """The ``P2PPOOL_*`` variables that reproduce the options that differ from defaults."""
        env: dict[str, str] = {}
        for option in OPTIONS:
            value = getattr(self, option.name)
            if value == option.default:
                continue
            if value is None:
                env[option.env] = "none"
            elif isinstance(value, bool):
                env[option.env] = "1" if value else "0"
            elif option.name == "requirements":
                env[option.env] = json.dumps(list(value))
            elif isinstance(value, tuple):
                env[option.env] = ",".join(value)
            else:
                env[option.env] = str(value)
        return env


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where the config file is read from: ``$P2PPOOL_CONFIG``, else the XDG location."""
    environ = os.environ if environ is None else environ
    explicit = environ.get(ENV_PREFIX + "CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "p2ppool" / "config.toml"


def _read_config_file(path: Path, explicit: bool) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(
                f"config file {path} does not exist (named by {ENV_PREFIX}CONFIG)"
            ) from None
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    table = data.get("p2ppool", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [p2ppool] must be a table")
    unknown = sorted(set(table) - set(_BY_NAME) - {"p2ppool"})
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown option(s) {', '.join(unknown)}; "
            f"known options: {', '.join(sorted(_BY_NAME))}"
        )
    return {key: value for key, value in table.items() if key in _BY_NAME}


def resolve_options(
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    read_file: bool = True,
) -> Options:
    """Merge keyword arguments, ``P2PPOOL_*`` variables and the config file into Options.

    Args:
        overrides: keyword arguments given by the caller (e.g. ``Pool(**options)``).  A key
            that is present counts as given, even with the value ``None`` (``fallback=None``
            means "never fall back"); leave a key out to mean "not given".
        environ: the environment to read (default ``os.environ``).
        read_file: read the config file (default True).

    Returns:
        The resolved :class:`Options`; ``options.sources`` tells where each value came from.

    Raises:
        TypeError: an unknown keyword argument, as Python reports for unexpected keywords.
        ConfigError: a value that does not parse, naming the option and its source.
    """
    overrides = dict(overrides or {})
    environ = os.environ if environ is None else environ
    unknown = sorted(set(overrides) - set(_BY_NAME))
    if unknown:
        raise TypeError(
            f"unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"p2ppool options are: {', '.join(sorted(_BY_NAME))}"
        )
    file_values: dict[str, Any] = {}
    path = config_path(environ)
    if read_file:
        file_values = _read_config_file(path, explicit=bool(environ.get(ENV_PREFIX + "CONFIG")))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        if option.name in overrides:
            raw, source = overrides[option.name], f"keyword argument {option.name}="
        elif option.env in environ:
            raw, source = environ[option.env], f"environment variable {option.env}"
        elif option.name in file_values:
            raw, source = file_values[option.name], f"config file {path}"
        else:
            values[option.name] = option.default
            sources[option.name] = "default"
            continue
        try:
            values[option.name] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{option.name}: {exc} (from {source})") from None
        sources[option.name] = source
    return Options(**values, sources=sources)
