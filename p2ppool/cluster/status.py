"""``p2ppool status``: who is on a cluster's board now, from what peers announce.

::

    p2ppool status --cluster alice/friends [--wait 3] [--json]

joins the cluster topic, says ``hello`` as an ``observer`` (peers answer a newcomer's hello
with their own, and ``p2ppool host`` re-announces the cluster), listens for ``--wait``
seconds, and prints the cluster announcement, the workers with their free slots, and the
clients with the jobs they want slots for.  The board keeps no history, so a peer that stays
silent during the wait is not shown.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List

from .. import defaults
from .._version import __version__
from ..board.auth import BoardIdentity
from ..board.client import State
from ..board.options import BoardSettings, add_board_arguments
from ..board.protocol import Accept, Bye, Cluster, Done, Hello, Message, Offer, Want, Withdraw
from ..errors import BoardConnectionError, P2PPoolError

__all__ = ["BoardView", "add_arguments", "render_table", "run"]


@dataclass
class PeerInfo:
    """What one peer announced."""

    id: str
    role: str
    python: str = "?"
    version: str = "?"
    slots: int | None = None
    sandbox: str | None = None  # workers: "bwrap", "bwrap+network", "none" (None: unknown)
    last_seen: float = 0.0
    jobs: Dict[str, int] = field(default_factory=dict)  # job id -> slots wanted (clients)


@dataclass
class ClusterInfo:
    """A ``cluster`` announcement."""

    name: str
    host: str
    expires: float


class BoardView:
    """Folds board messages into who is there now.  Pure: ``now`` comes with each message."""

    def __init__(self, own_id: str = "") -> None:
        self.own_id = own_id
        self.peers: Dict[str, PeerInfo] = {}
        self.clusters: Dict[str, ClusterInfo] = {}

    def _peer(self, sender: str, role: str, now: float) -> PeerInfo:
        peer = self.peers.get(sender)
        if peer is None:
            peer = self.peers[sender] = PeerInfo(sender, role)
        peer.last_seen = now
        return peer

    def update(self, msg: Message, now: float) -> None:
        """Take one message into account."""
        if msg.sender == self.own_id:
            return
        if isinstance(msg, Hello):
            peer = self._peer(msg.sender, msg.role, now)
            peer.role, peer.python, peer.version, peer.slots = (
                msg.role,
                msg.python,
                msg.version,
                msg.slots,
            )
            peer.sandbox = msg.sandbox
        elif isinstance(msg, Bye):
            self.peers.pop(msg.sender, None)
            for name in [n for n, c in self.clusters.items() if c.host == msg.sender]:
                del self.clusters[name]
        elif isinstance(msg, Want):
            peer = self._peer(msg.sender, "client", now)
            peer.jobs[msg.job] = msg.slots
        elif isinstance(msg, (Done, Withdraw)):
            self._forget(msg, now)
        elif isinstance(msg, Offer):
            self._peer(msg.sender, "worker", now)
        elif isinstance(msg, Accept):
            self._peer(msg.sender, "client", now)
        elif isinstance(msg, Cluster):
            self.clusters[msg.name] = ClusterInfo(msg.name, msg.sender, msg.expires)
            self._peer(msg.sender, "host", now)

    def _forget(self, msg: Done | Withdraw, now: float) -> None:
        if msg.job is not None:
            peer = self.peers.get(msg.sender)
            if peer is not None:
                peer.jobs.pop(msg.job, None)
                peer.last_seen = now
        if isinstance(msg, Withdraw) and msg.worker is not None and msg.job is None:
            self.peers.pop(msg.worker, None)  # (with a job: it withdrew one offer, not itself)

    def by_role(self, role: str) -> List[PeerInfo]:
        """Peers of one role, by id."""
        return sorted((p for p in self.peers.values() if p.role == role), key=lambda p: p.id)

    def as_dict(self) -> Dict[str, Any]:
        """Everything, JSON-ready."""
        return {
            "clusters": [asdict(c) for c in sorted(self.clusters.values(), key=lambda c: c.name)],
            "hosts": [asdict(p) for p in self.by_role("host")],
            "workers": [asdict(p) for p in self.by_role("worker")],
            "clients": [asdict(p) for p in self.by_role("client")],
            "free_slots": sum(p.slots or 0 for p in self.by_role("worker")),
        }


def _utc(ts: float) -> str:
    moment = datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def render_table(view: BoardView, topic: str) -> str:
    """A plain-text report of ``view`` for a terminal."""
    lines: List[str] = []
    if view.clusters:
        for c in sorted(view.clusters.values(), key=lambda c: c.name):
            lines.append(f"cluster {c.name}: hosted by {c.host}, until {_utc(c.expires)}")
    else:
        name = topic.partition("/")[2] or topic
        lines.append(
            f"cluster {topic}: open cluster (no host announced it): anyone who may use this "
            f"board topic may join; to host it with an access list, its owner runs "
            f"`p2ppool host --cluster {name} --users NAME,...`")
    rows = [("ROLE", "ID", "SLOTS", "SANDBOX", "PYTHON", "VERSION", "JOBS")]
    for role in ("host", "worker", "client"):
        for p in view.by_role(role):
            jobs = ", ".join(f"{j} (wants {n})" for j, n in sorted(p.jobs.items()))
            slots = "-" if p.slots is None or role != "worker" else str(p.slots)
            sandbox = (p.sandbox or "?") if role == "worker" else "-"
            rows.append((role, p.id, slots, sandbox, p.python, p.version, jobs or "-"))
    if len(rows) == 1:
        lines.append("nobody else announced themselves")
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]
            lines.append("  ".join(cells).rstrip())
    workers = view.by_role("worker")
    lines.append(
        f"{len(workers)} worker(s) with {sum(p.slots or 0 for p in workers)} free slot(s), "
        f"{len(view.by_role('client'))} client(s)"
    )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``p2ppool status`` options to ``parser``."""
    parser.add_argument(
        "--cluster", metavar="OWNER/NAME", help="the cluster (default: P2PPOOL_CLUSTER)"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=defaults.STATUS_WAIT_S,
        metavar="SECONDS",
        help=f"how long to listen for announcements (default {defaults.STATUS_WAIT_S:g})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_board_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``p2ppool status``; returns the exit status."""
    try:
        settings = BoardSettings.from_args(args)
    except P2PPoolError as exc:
        print(f"p2ppool status: error: {exc}", file=sys.stderr)
        return 1
    topic = settings.cluster
    if not topic:
        print(
            "p2ppool status: error: which cluster? pass --cluster OWNER/NAME "
            "or set P2PPOOL_CLUSTER",
            file=sys.stderr,
        )
        return 2
    if not args.wait >= 0:
        print("p2ppool status: error: --wait must be >= 0 seconds", file=sys.stderr)
        return 2
    me = BoardIdentity(f"status-{uuid.uuid4().hex[:12]}")
    own_id = me.sender
    view = BoardView(own_id)
    lock = threading.Lock()

    def on_message(msg: Message) -> None:
        with lock:
            view.update(msg, time.time())

    client = settings.client(topic, on_message=on_message, sender=me)
    try:
        client.connect()
        now = time.time()
        client.publish(
            Hello(
                sender=own_id,
                ts=now,
                ttl=max(args.wait, 1.0) + 10.0,
                role="observer",
                python=f"{sys.version_info[0]}.{sys.version_info[1]}",
                version=__version__,
                slots=0,
            )
        )
        # Listening for --wait seconds *is* the job; a refusal (access denied) ends it early.
        client.wait_for_state({State.FAILED}, args.wait)
        if client.error is not None:
            raise client.error
        try:
            client.publish(Bye(sender=own_id, ts=time.time(), ttl=60.0, role="observer"))
        except BoardConnectionError:
            pass  # the board dropped us at the end: the report is still complete
    except P2PPoolError as exc:
        print(f"p2ppool status: error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    with lock:
        if args.json:
            report = view.as_dict()
            report["cluster"] = topic
            report["dropped_lines"] = client.drops
            print(json.dumps(report, indent=2, sort_keys=True))
        else:
            print(render_table(view, topic))
    return 0
