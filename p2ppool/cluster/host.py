"""``p2ppool host``: host a shared cluster on the board until it expires.

::

    p2ppool host --cluster friends --users bob,carol --ttl 14d

opens the cluster topic ``<you>/friends`` with the access list ``-a you,bob,carol`` (only
those users may join it) and announces the cluster there (a ``cluster`` message with its
expiry, and a ``hello`` with role ``host``) every ``HOST_ANNOUNCE_S`` seconds and whenever a
newcomer says hello, until the TTL runs out.  Then it says ``bye`` and exits 0.  Ctrl-C or
SIGTERM end it early, cleanly (``bye``, exit 0).  Members then use ``--cluster you/friends``.

This is future.p2p's ``host_cluster()``.  The board keeps no state of its own: the access
list lives as long as the channel has members, so keep ``p2ppool host`` running for as long as
the cluster should exist.
"""

from __future__ import annotations

import argparse
import datetime
import re
import signal
import sys
import threading
import time
import uuid
from types import FrameType
from typing import Any, Callable, List, Set

from .. import defaults
from .._version import __version__
from ..board.auth import BoardIdentity
from ..board.client import BoardClient, State
from ..board.options import BoardSettings, add_board_arguments
from ..board.protocol import Bye, Cluster, Hello, Message
from ..config import parse_duration
from ..errors import BoardConnectionError, P2PPoolError

__all__ = ["add_arguments", "parse_duration", "run"]

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _users_arg(text: str) -> List[str]:
    users = [u.strip() for u in text.split(",") if u.strip()]
    for user in users:
        if not re.fullmatch(r"[A-Za-z0-9._:+/=-]{1,128}", user):
            raise argparse.ArgumentTypeError(
                f"{user!r} is not a board username or SHA256: key fingerprint"
            )
    return users


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``p2ppool host`` options to ``parser``."""
    parser.add_argument(
        "--cluster", required=True, metavar="NAME", help="cluster name (the topic <you>/NAME)"
    )
    parser.add_argument(
        "--users",
        type=_users_arg,
        default=[],
        metavar="USER,...",
        help="who may join: board usernames or SHA256: key fingerprints, comma-separated",
    )
    parser.add_argument(
        "--ttl",
        type=_duration_arg,
        default=defaults.HOST_TTL_S,
        metavar="DURATION",
        help="how long to host the cluster, e.g. 14d, 12h, 30m (default 14d)",
    )
    parser.add_argument(
        "--announce-every",
        type=_duration_arg,
        default=defaults.HOST_ANNOUNCE_S,
        metavar="DURATION",
        help=f"re-announce period (default {defaults.HOST_ANNOUNCE_S:g}s)",
    )
    add_board_arguments(parser)


def _utc(ts: float) -> str:
    moment = datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _say(text: str) -> None:
    print(f"p2ppool host: {text}", file=sys.stderr, flush=True)


class _Host:
    """The announcing loop: waits on an event, never polls."""

    def __init__(self, cluster: str, expires: float, period: float) -> None:
        self.cluster = cluster
        self.expires = expires
        self.period = period
        self.identity = BoardIdentity(f"host-{uuid.uuid4().hex[:12]}")
        self.sender = self.identity.sender
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.seen: Set[str] = set()
        self.client: BoardClient | None = None

    def on_message(self, msg: Message) -> None:
        # A newcomer's hello gets an immediate re-announcement, so `p2ppool status` and
        # joining peers learn about the cluster without waiting a whole period.
        if isinstance(msg, Hello) and msg.sender not in self.seen:
            self.seen.add(msg.sender)
            self.wake.set()
        elif isinstance(msg, Bye):
            self.seen.discard(msg.sender)

    def on_state(self, state: State) -> None:
        if state is State.CONNECTED:
            self.wake.set()
        elif state is State.RECONNECTING:
            _say("lost the board connection; reconnecting")
        elif state is State.FAILED:
            self.wake.set()

    def announce(self, now: float) -> None:
        assert self.client is not None
        ttl = max(1.0, min(self.period * 3, self.expires - now))
        try:
            self.client.publish(
                Cluster(
                    sender=self.sender, ts=now, ttl=ttl, name=self.cluster, expires=self.expires
                )
            )
            self.client.publish(
                Hello(
                    sender=self.sender,
                    ts=now,
                    ttl=ttl,
                    role="host",
                    python=f"{sys.version_info[0]}.{sys.version_info[1]}",
                    version=__version__,
                    slots=0,
                )
            )
        except BoardConnectionError:
            pass  # announced again as soon as the connection is back (on_state)

    def loop(self, clock: Callable[[], float] = time.time) -> int:
        assert self.client is not None
        next_announce = clock()
        while not self.stop.is_set():
            now = clock()
            if now >= self.expires:
                _say(f"cluster {self.cluster} expired at {_utc(self.expires)}")
                break
            if self.client.state is State.FAILED:
                _say(f"error: {self.client.error}")
                return 1
            if now >= next_announce or self.wake.is_set():
                self.wake.clear()
                self.announce(now)
                next_announce = now + self.period
            self.wake.wait(max(0.0, min(next_announce, self.expires) - clock()))
        self.say_bye(clock())
        return 0

    def say_bye(self, now: float) -> None:
        assert self.client is not None
        try:
            self.client.publish(Bye(sender=self.sender, ts=now, ttl=60.0, role="host"))
        except P2PPoolError:
            pass


def run(args: argparse.Namespace) -> int:
    """Run ``p2ppool host``; returns the exit status (0: expired or stopped cleanly)."""
    try:
        settings = BoardSettings.from_args(args, cluster_option=False)
        owner = settings.username()
    except P2PPoolError as exc:
        _say(f"error: {exc}")
        return 1
    if not owner:
        _say(
            "error: cannot tell your board username (the board does not say); "
            "pass --board-user NAME or set P2PPOOL_BOARD_USER"
        )
        return 2
    name = args.cluster
    if "/" in name:
        given_owner, _, name = name.partition("/")
        if given_owner != owner:
            _say(f"error: you ({owner}) can only host clusters under {owner}/, not {args.cluster}")
            return 2
    if not _NAME_RE.match(name):
        _say(f"error: cluster name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        return 2
    cluster = f"{owner}/{name}"
    members = [owner] + [u for u in args.users if u != owner]
    host = _Host(cluster, time.time() + args.ttl, args.announce_every)
    host.client = settings.client(
        cluster, ["-a", ",".join(members)], on_message=host.on_message, on_state=host.on_state,
        sender=host.identity,
    )
    previous = _install_signal_handlers(host)
    try:
        host.client.connect()
        _say(
            f"hosting cluster {cluster} for {', '.join(members)} until {_utc(host.expires)}; "
            f"members join with --cluster {cluster}"
        )
        return host.loop()
    except P2PPoolError as exc:
        _say(f"error: {exc}")
        return 1
    finally:
        host.client.close()
        _restore_signal_handlers(previous)


def _install_signal_handlers(host: _Host) -> List[Any]:
    if threading.current_thread() is not threading.main_thread():
        return []

    def stop(signum: int, frame: FrameType | None) -> None:
        _say(f"stopping ({signal.Signals(signum).name})")
        host.stop.set()
        host.wake.set()

    previous = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous.append((sig, signal.signal(sig, stop)))
    return previous


def _restore_signal_handlers(previous: List[Any]) -> None:
    for sig, handler in previous:
        signal.signal(sig, handler)
