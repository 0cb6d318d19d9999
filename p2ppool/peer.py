"""What a worker decides on the board (pure: no sockets, threads or clock reads).

A worker volunteers ``slots`` child processes to a cluster.  :class:`Peer` holds what it has
promised and decides, message by message, what to say next:

* which :class:`~p2ppool.protocol.Want` to answer: same Python ``major.minor``, the session
  protocol this worker speaks, and only while it has free slots and is not withdrawing;
* how many slots to offer: ``min(want.slots, free)``, where slots promised in a pending offer
  count as taken until the offer is accepted, expires, or its job is withdrawn or done (so
  two clients are never promised the same slot); a session whose Open asks for fewer slots
  than were offered (:meth:`Peer.session_opened`) frees the rest at once;
* whom to offer freed slots to: a compatible Want that found no free slot is remembered until
  it expires (or its job is withdrawn or done) and is offered the first slot that frees up,
  once per Want message; a job that already has a session here is not offered more (a client
  never opens two sessions with one worker);
* which :class:`~p2ppool.protocol.Accept` to act on: addressed to this worker, for an offer it
  made, from the client that asked, before the offer expired, and sealed to that offer's key;
* when to say :class:`~p2ppool.protocol.Hello`: on start, every ``hello_interval`` seconds,
  whenever the number of free slots changes, and once to each newcomer on the board.

Inputs are past-tense events (``got_want``, ``session_ended``, ``timer_expired``) that take
``now`` (unix seconds) and return a list of actions (:class:`Publish`, :class:`OpenSession`,
:class:`Note`) for the edge (``worker.py``) to carry out in order.  The per-session checks
(:func:`refusal_for_open`, :func:`payload_refusal`) are pure functions next to it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import defaults
from .protocol import (
    Accept,
    Bye,
    Done,
    Hello,
    Message,
    MessageRejected,
    Offer,
    Want,
    Withdraw,
    open_code,
)
from .session_protocol import SESSION_VERSION, Open

__all__ = [
    "Action",
    "Note",
    "OpenSession",
    "Peer",
    "PeerConfig",
    "Publish",
    "format_bytes",
    "payload_refusal",
    "refusal_for_open",
]

#: Returns ``(private_key, public_key_b64)``; :func:`p2ppool.protocol.new_offer_keypair`.
KeypairFactory = Callable[[], Tuple[Any, str]]


@dataclasses.dataclass(frozen=True)
class Publish:
    """Write this message on the cluster's board topic."""

    message: Message


@dataclasses.dataclass(frozen=True)
class OpenSession:
    """Open a wormhole session as the worker side, for an accepted offer.

    Attributes:
        session_id: this worker's number for the session (pass it back to ``session_ended``).
        job: the client's job id.
        client: the client's board sender id.
        slots: slots reserved for the session.
        code: the wormhole code, already unsealed.
    """

    session_id: int
    job: str
    client: str
    slots: int
    code: str


@dataclasses.dataclass(frozen=True)
class Note:
    """A line worth logging (a decision a person may want to know about)."""

    text: str


Action = Union[Publish, OpenSession, Note]


#: What a worker says to a job's requirements: offer now, later (installing), or never.
NOW, LATER, NEVER = "now", "later", "never"
#: ``serves(requirements) -> (NOW | LATER | NEVER, what is missing)``
RequirementCheck = Callable[[Sequence[str]], Tuple[str, Optional[str]]]


def _serves_nothing_extra(requirements: Sequence[str]) -> Tuple[str, str | None]:
    return NEVER, ", ".join(requirements)


@dataclasses.dataclass(frozen=True)
class PeerConfig:
    """Who the worker is and how it paces its board messages.

    Attributes:
        worker_id: the worker's board sender id (also its name in logs).
        python: this interpreter's ``major.minor``, e.g. ``"3.11"``.
        version: the p2ppool version.
        slots: child processes this worker volunteers in total (``--processes``).
        offer_ttl: seconds an offer stays valid without an Accept.
        hello_interval: seconds between periodic Hello messages.
        hello_ttl: time-to-live of a Hello (longer than the interval, so it never lapses).
        session_version: the session protocol version this worker speaks.
        sandbox: how its tasks are confined, announced in every Hello.
    """

    worker_id: str
    python: str
    version: str
    slots: int
    offer_ttl: float = defaults.OFFER_TTL_S
    hello_interval: float = defaults.HELLO_INTERVAL_S
    hello_ttl: float = defaults.HELLO_TTL_S
    session_version: int = SESSION_VERSION
    sandbox: str | None = None  # announced in Hello: "bwrap", "bwrap+network" or "none"

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"a worker needs at least 1 slot, got {self.slots}")
        if self.offer_ttl <= 0 or not 0 < self.hello_interval < self.hello_ttl:
            raise ValueError("offer_ttl > 0 and 0 < hello_interval < hello_ttl are required")


@dataclasses.dataclass
class _PendingOffer:
    client: str
    slots: int
    private_key: Any
    expires: float


class Peer:
    """The worker's board state machine (see the module docstring).

    Args:
        config: identity, slot count and timings.
        new_keypair: makes a fresh X25519 key pair per offer; tests pass a deterministic one.
    """

    def __init__(self, config: PeerConfig, new_keypair: KeypairFactory,
                 serves: RequirementCheck | None = None) -> None:
        self.config = config
        self._new_keypair = new_keypair
        self._serves = serves or _serves_nothing_extra
        self._offers: Dict[str, _PendingOffer] = {}  # job -> offer
        self._wants: Dict[str, Want] = {}  # job -> latest compatible Want not yet offered
        self._sessions: Dict[int, Tuple[str, int]] = {}  # session id -> (job, slots)
        self._next_session = 1
        self._next_hello: float | None = None  # None before start() and after withdraw()
        self._announced: int | None = None  # free slots in the last Hello
        self._seen: Dict[str, float] = {}  # newcomers greeted -> when their Hello lapses
        self.withdrawn = False

    # --- queries -------------------------------------------------------------------------

    @property
    def free_slots(self) -> int:
        """Slots neither in a session nor promised in a pending offer."""
        taken = (sum(slots for _, slots in self._sessions.values())
                 + sum(o.slots for o in self._offers.values()))
        return self.config.slots - taken

    @property
    def sessions(self) -> Dict[int, int]:
        """Session id -> slots, for every session opened and not yet ended."""
        return {sid: slots for sid, (_, slots) in self._sessions.items()}

    def waiting_wants(self) -> List[str]:
        """Jobs whose Want is remembered for the next free slot, oldest first."""
        return list(self._wants)

    def pending_offers(self) -> Dict[str, int]:
        """Job -> slots, for every offer not yet accepted or expired."""
        return {job: offer.slots for job, offer in self._offers.items()}

    def next_deadline(self) -> float | None:
        """When :meth:`timer_expired` must be called next (None: no timer pending)."""
        times = [o.expires for o in self._offers.values()]
        if self._next_hello is not None:
            times.append(self._next_hello)
        return min(times) if times else None

    # --- inputs --------------------------------------------------------------------------

    def start(self, now: float) -> List[Action]:
        """The worker is on the board: announce it."""
        return [Publish(self._hello(now))]

    def got_message(self, msg: Message, now: float) -> List[Action]:
        """Dispatch any board message to the matching ``got_*`` input (others are ignored)."""
        handlers: Dict[type, Callable[[Any, float], List[Action]]] = {
            Want: self.got_want,
            Accept: self.got_accept,
            Hello: self.got_hello,
            Withdraw: self.got_withdraw,
            Done: self.got_done,
            Bye: self.got_bye,
        }
        handler = handlers.get(type(msg))
        return handler(msg, now) if handler is not None else []

    def got_want(self, want: Want, now: float) -> List[Action]:
        """A client job wants slots: offer what is free if the job can run here.

        A compatible Want that finds no free slot is remembered and answered when a slot
        frees up (see the module docstring).
        """
        if self.withdrawn or want.sender == self.config.worker_id:
            return []
        reason = self._incompatibility(want)
        if reason is None and want.requires:
            verdict, detail = self._serves(want.requires)
            if verdict == NEVER:
                reason = f"it requires {detail}, which this worker lacks (see --allow-install)"
        if reason is not None:
            return [Note(f"not offering to job {want.job} of {want.sender}: {reason}")]
        if want.job in self._offers or self._has_session(want.job):
            return []  # our earlier offer still stands, or the job already has our slots
        self._wants.pop(want.job, None)
        self._wants[want.job] = want  # (re)inserted last: the newest ask waits longest
        return self._announce_if_changed(self._offer_to_waiting(now), now)

    def got_accept(self, accept: Accept, now: float) -> List[Action]:
        """A client took an offer: open its sealed code and start a session, if it is ours."""
        if accept.worker != self.config.worker_id:
            return []  # for another worker: normal traffic on a shared topic
        offer = self._offers.get(accept.job)
        if offer is None:
            return [Note(f"ignored an accept for job {accept.job} from {accept.sender}: "
                         "no offer of ours is pending for that job (expired or never made)")]
        if offer.expires < now:
            return [Note(f"ignored an accept for job {accept.job}: our offer expired "
                         f"{now - offer.expires:.1f} s before it arrived")]
        if accept.sender != offer.client:
            return [Note(f"ignored an accept for job {accept.job} from {accept.sender}: "
                         f"the offer was made to {offer.client}")]
        try:
            code = open_code(accept.code, offer.private_key)
        except MessageRejected as exc:
            return [Note(f"ignored an accept for job {accept.job}: {exc.detail}")]
        del self._offers[accept.job]
        self._wants.pop(accept.job, None)
        session_id = self._next_session
        self._next_session += 1
        self._sessions[session_id] = (accept.job, offer.slots)
        return [OpenSession(session_id, accept.job, accept.sender, offer.slots, code)]

    def got_hello(self, hello: Hello, now: float) -> List[Action]:
        """Greet a peer seen for the first time (so a newcomer learns of us at once)."""
        sender = hello.sender
        if sender == self.config.worker_id or self.withdrawn or self._next_hello is None:
            return []
        known = self._seen.get(sender)
        self._seen[sender] = hello.expires_at()
        if known is not None and known >= now:
            return []
        return [Publish(self._hello(now))]

    def got_bye(self, bye: Bye, now: float) -> List[Action]:
        """A peer left: forget it, and drop our offer to it if any."""
        self._seen.pop(bye.sender, None)
        jobs = [job for job, offer in self._offers.items() if offer.client == bye.sender]
        for job in jobs:
            del self._offers[job]
        self._wants = {j: w for j, w in self._wants.items() if w.sender != bye.sender}
        return self._announce_if_changed(self._offer_to_waiting(now), now)

    def got_withdraw(self, withdraw: Withdraw, now: float) -> List[Action]:
        """A job no longer wants slots: release what we promised it."""
        if withdraw.job is None:
            return []
        return self._drop_offer(withdraw.job, withdraw.sender, now)

    def got_done(self, done: Done, now: float) -> List[Action]:
        """A job finished: release what we promised it."""
        return self._drop_offer(done.job, done.sender, now)

    def session_opened(self, session_id: int, slots: int | None, now: float) -> List[Action]:
        """The client opened the session and uses at most ``slots`` of its slots (None: all).

        A job that wanted fewer slots than a whole offer takes only what it wanted; the rest
        are free again at once, for other jobs.
        """
        found = self._sessions.get(session_id)
        if found is None or slots is None or slots >= found[1]:
            return []
        self._sessions[session_id] = (found[0], max(1, slots))
        return self._announce_if_changed(self._offer_to_waiting(now), now)

    def requirements_changed(self, now: float) -> List[Action]:
        """An install finished (or failed): offer to the Wants that waited for it."""
        return self._announce_if_changed(self._offer_to_waiting(now), now)

    def session_ended(self, session_id: int, now: float) -> List[Action]:
        """A session closed, failed to open, or was lost: its slots are free again."""
        if self._sessions.pop(session_id, None) is None:
            return []
        return self._announce_if_changed(self._offer_to_waiting(now), now)

    def timer_expired(self, now: float) -> List[Action]:
        """Expire offers nobody accepted and send the periodic Hello when due."""
        actions: List[Action] = []
        for job in [j for j, o in self._offers.items() if o.expires <= now]:
            offer = self._offers.pop(job)
            actions.append(Note(f"offer of {offer.slots} slot(s) to job {job} of "
                                f"{offer.client} expired unaccepted"))
        self._seen = {s: t for s, t in self._seen.items() if t >= now}
        actions.extend(self._offer_to_waiting(now))
        if self._next_hello is not None and self._next_hello <= now:
            actions.append(Publish(self._hello(now)))
            return actions
        return self._announce_if_changed(actions, now)

    def withdraw(self, now: float) -> List[Action]:
        """Stop offering: pending offers are dropped and a Bye is published (once)."""
        if self.withdrawn:
            return []
        self.withdrawn = True
        self._offers.clear()
        self._wants.clear()
        self._next_hello = None
        bye = Bye(sender=self.config.worker_id, ts=now, ttl=self.config.hello_ttl, role="worker")
        return [Publish(bye)]

    # --- helpers -------------------------------------------------------------------------

    def _incompatibility(self, want: Want) -> str | None:
        if want.python != self.config.python:
            return (f"it needs Python {want.python} and this worker runs Python "
                    f"{self.config.python}")
        if want.session != self.config.session_version:
            return (f"it speaks session protocol {want.session} and this worker speaks "
                    f"{self.config.session_version}")
        return None

    def _drop_offer(self, job: str, sender: str, now: float) -> List[Action]:
        want = self._wants.get(job)
        if want is not None and want.sender == sender:
            del self._wants[job]
        offer = self._offers.get(job)
        if offer is None or offer.client != sender:
            return []
        del self._offers[job]
        return self._announce_if_changed(self._offer_to_waiting(now), now)

    def _has_session(self, job: str) -> bool:
        return any(j == job for j, _ in self._sessions.values())

    def _offer_to_waiting(self, now: float) -> List[Action]:
        """Offer free slots to remembered Wants, oldest first; forget expired ones."""
        actions: List[Action] = []
        for job, want in list(self._wants.items()):
            if self.free_slots < 1:
                break
            if want.expires_at() < now or job in self._offers or self._has_session(job):
                del self._wants[job]
                continue
            if want.requires and self._serves(want.requires)[0] == LATER:
                continue  # its packages are being installed: remembered until then
            del self._wants[job]
            actions.append(Publish(self._make_offer(want, now)))
        return actions

    def _make_offer(self, want: Want, now: float) -> Offer:
        slots = min(want.slots, self.free_slots)
        private_key, public_b64 = self._new_keypair()
        expires = now + self.config.offer_ttl
        self._offers[want.job] = _PendingOffer(want.sender, slots, private_key, expires)
        return Offer(
            sender=self.config.worker_id, ts=now, ttl=self.config.offer_ttl,
            job=want.job, worker=self.config.worker_id, slots=slots, key=public_b64,
        )

    def _hello(self, now: float) -> Hello:
        self._announced = self.free_slots
        self._next_hello = now + self.config.hello_interval
        return Hello(
            sender=self.config.worker_id, ts=now, ttl=self.config.hello_ttl, role="worker",
            python=self.config.python, version=self.config.version, slots=self.free_slots,
            sandbox=self.config.sandbox,
        )

    def _announce_if_changed(self, actions: List[Action], now: float) -> List[Action]:
        if self._next_hello is not None and self.free_slots != self._announced:
            actions.append(Publish(self._hello(now)))
        return actions


# --- per-session checks ------------------------------------------------------------------


def refusal_for_open(frame: Open, *, job: str, python: str,
                     session_version: int = SESSION_VERSION) -> str | None:
    """Why a session's Open frame is refused, or None when the session can go ahead.

    Args:
        frame: the client's first frame.
        job: the job the accepted offer was for.
        python: this worker's Python ``major.minor``.
        session_version: the session protocol version this worker speaks.
    """
    if frame.version != session_version:
        return (f"session protocol {frame.version} is not supported (this worker speaks "
                f"{session_version})")
    if frame.python != python:
        return (f"the client runs Python {frame.python} and this worker runs Python {python}; "
                "pickled functions only move between equal major.minor versions")
    if frame.job != job:
        return f"the session opened for job {frame.job}, but the offer was accepted for {job}"
    if frame.maxtasksperchild is not None and frame.maxtasksperchild < 1:
        return f"maxtasksperchild must be at least 1, got {frame.maxtasksperchild}"
    if frame.slots is not None and frame.slots < 1:
        return f"a session needs at least 1 slot, the client asked for {frame.slots}"
    return None


def format_bytes(size: int) -> str:
    """A size for people, in decimal units: ``"512 B"``, ``"12.3 MB"``, ``"10 MB"``."""
    if size < 1000:
        return f"{size} B"
    unit, scale = "kB", 1e3
    for name, factor in (("MB", 1e6), ("GB", 1e9)):
        if size >= factor:
            unit, scale = name, factor
    text = f"{size / scale:.1f}".rstrip("0").rstrip(".")
    return f"{text} {unit}"


def payload_refusal(what: str, size: int, limit: int | None) -> str | None:
    """The error text for a payload over this worker's limit, or None when it fits.

    Args:
        what: what the payload is, e.g. ``"task 7's arguments"``.
        size: its size in bytes.
        limit: the worker's limit in bytes (None: unlimited).
    """
    if limit is None or size <= limit:
        return None
    return (f"{what} ({format_bytes(size)}) exceeds this worker's {format_bytes(limit)} "
            "payload limit")
