"""What a worker decides on the board (pure: no sockets, threads or clock reads).

A worker volunteers ``slots`` child processes to a cluster.  :class:`Peer` holds what it has
promised and decides, message by message, what to say next:

* which :class:`~p2ppool.board.protocol.Want` to answer: same Python ``major.minor``, the session
  protocol this worker speaks, and only while it has free slots and is not withdrawing;
* how many slots to offer: ``min(want.slots, free)``, where slots promised in a pending offer
  count as taken until the offer is accepted, expires, or its job is withdrawn or done (so
  two clients are never promised the same slot); a session whose Open asks for fewer slots
  than were offered (:meth:`Peer.session_opened`) frees the rest at once;
* whom to offer freed slots to: a compatible Want that found no free slot is remembered until
  it expires (or its job is withdrawn or done) and may get a slot that frees up later, once
  per Want message; a job that already has a session here is not offered more (a client
  never opens two sessions with one worker);
* which :class:`~p2ppool.board.protocol.Accept` to act on: addressed to this worker, for an offer it
  made, from the client that asked, before the offer expired, and sealed to that offer's key;
  a job is its sender's: offers, sessions and Withdraw/Done are keyed by (client, job), so
  another member's Want under a real job's id gets an offer of its own (naming it as
  ``client``), never the real client's;
* when to say :class:`~p2ppool.board.protocol.Hello`: on start, every ``hello_interval`` seconds,
  whenever the number of free slots changes, and when a newcomer says Hello, but then not
  within ``hello_min_interval`` of the last one (one Hello answers every newcomer since).

**Fairness and bounds** (issue 17: one member cannot stall the cluster).  Board sender ids
are authenticated (:mod:`p2ppool.board.auth`), but anyone may make new ones, so anything
kept per sender is bounded, and whoever does not take what it asked for pays for it, not
the others:

* state is kept for at most ``senders_kept`` senders (the least recently heard is forgotten
  first), and at most ``wants_per_sender`` waiting Wants per sender (its newest win);
* a message's time-to-live is honoured only up to a cap per type, counted from its arrival
  (``want_ttl_max``, ``hello_ttl_max``): a Want stamped to live for ever expires here;
* waiting Wants are served round robin over senders, never one sender's twice while another
  waits: first the senders with the fewest unaccepted offers (strikes), then those offered
  slots least recently (never: first), then the most recently heard; a sender has at most
  one pending offer here;
* an offer that is still not accepted ``offer_answer_s`` after it was made, while another
  sender's Want waits, is withdrawn (``Withdraw(job, worker)`` tells its client) and its slots
  are offered to that Want; an offer withdrawn so, or expired, is a strike against its sender
  (forgiven when one of its offers is accepted);
* everything the worker writes (Hellos, Offers, Withdraws) takes a token from one bucket of
  ``messages_per_s`` with a burst of ``message_burst``: whatever others write, the worker's
  own traffic stays bounded.  An Offer without a token waits (its Want stays remembered).

Inputs are past-tense events (``got_want``, ``session_ended``, ``timer_expired``) that take
``now`` (unix seconds) and return a list of actions (:class:`Publish`, :class:`OpenSession`,
:class:`Note`) for the edge (the worker's loop, :mod:`p2ppool.worker.loop`) to carry out in
order.  The per-session checks (:func:`refusal_for_open`, :func:`payload_refusal`) are pure
functions next to it.

Size: one pure state machine (a worker's Wants, offers and sessions per sender, with its
fairness and bounds); its rules interact and are tested as one.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .. import defaults
from ..board.protocol import (
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
from ..board.state import TokenBucket
from ..transfer.session_protocol import SESSION_VERSION, Open

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

#: Returns ``(private_key, public_key_b64)``; :func:`p2ppool.board.protocol.new_offer_keypair`.
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
        hello_min_interval: least seconds between two Hellos.
        offer_answer_s: an offer not accepted this long may be withdrawn for another sender.
        wants_per_sender: waiting Wants kept per sender (its newest).
        senders_kept: senders any state is kept for (least recently heard forgotten).
        want_ttl_max, hello_ttl_max: the longest time-to-live honoured, from arrival.
        messages_per_s, message_burst: the bucket every message this worker writes takes
            a token from.
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
    hello_min_interval: float = defaults.WORKER_HELLO_MIN_INTERVAL_S
    offer_answer_s: float = defaults.WORKER_OFFER_ANSWER_S
    wants_per_sender: int = defaults.WORKER_WANTS_PER_SENDER
    senders_kept: int = defaults.WORKER_SENDERS_KEPT
    want_ttl_max: float = defaults.WORKER_WANT_TTL_MAX_S
    hello_ttl_max: float = defaults.WORKER_HELLO_TTL_MAX_S
    messages_per_s: float = defaults.WORKER_MESSAGES_PER_S
    message_burst: int = defaults.WORKER_MESSAGE_BURST

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"a worker needs at least 1 slot, got {self.slots}")
        if self.offer_ttl <= 0 or not 0 < self.hello_interval < self.hello_ttl:
            raise ValueError("offer_ttl > 0 and 0 < hello_interval < hello_ttl are required")
        if (self.hello_min_interval < 0 or self.offer_answer_s <= 0
                or self.wants_per_sender < 1 or self.senders_kept < 1
                or self.want_ttl_max <= 0 or self.hello_ttl_max <= 0
                or self.messages_per_s <= 0 or self.message_burst < 1):
            raise ValueError("the fairness bounds must be positive (hello_min_interval >= 0)")


@dataclasses.dataclass
class _PendingOffer:
    client: str
    slots: int
    private_key: Any
    expires: float
    made: float


_NEVER = -math.inf
#: A job is its sender's: (client sender id, job id).
_JobKey = Tuple[str, str]


@dataclasses.dataclass
class _Sender:
    """What a worker keeps about one board sender (bounded: see ``senders_kept``)."""

    #: job -> (its latest Want, when it expires here), oldest first; at most wants_per_sender
    wants: Dict[str, Tuple[Want, float]] = dataclasses.field(default_factory=dict)
    heard: float = _NEVER  # when its latest Want arrived
    served: float = _NEVER  # when it was last offered slots
    strikes: int = 0  # offers to it that expired or were withdrawn unaccepted
    greeted: float = _NEVER  # its Hello counts as answered until then
    noted: bool = False  # an incompatible Want of it was logged once


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
        self._offers: Dict[_JobKey, _PendingOffer] = {}  # (client, job) -> offer
        self._senders: collections.OrderedDict[str, _Sender] = collections.OrderedDict()
        self._waiting = 0  # Wants remembered over every sender
        self._sessions: Dict[int, Tuple[_JobKey, int]] = {}  # id -> ((client, job), slots)
        self._next_session = 1
        self._next_hello: float | None = None  # None before start() and after withdraw()
        self._hello_at = _NEVER  # no Hello before then (hello_min_interval)
        self._greet = False  # a newcomer said Hello since our last one
        self._announced: int | None = None  # free slots in the last Hello
        self._bucket: TokenBucket | None = None  # made by start()
        self._clock = _NEVER  # the latest `now` an input brought
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
        """Jobs whose Want is remembered for a free slot, in the order they would get one
        (expired ones included until they are looked at)."""
        order = sorted(self._senders.values(), key=_priority)
        return [job for sender in order for job in reversed(sender.wants)]

    def pending_offers(self) -> Dict[str, int]:
        """Job -> slots, for every offer not yet accepted or expired."""
        return {job: offer.slots for (_, job), offer in self._offers.items()}

    def known_senders(self) -> int:
        """Senders this worker keeps any state for (at most ``senders_kept``)."""
        return len(self._senders)

    def strikes(self, sender: str) -> int:
        """Unaccepted offers counted against ``sender``."""
        found = self._senders.get(sender)
        return found.strikes if found is not None else 0

    def next_deadline(self) -> float | None:
        """When :meth:`timer_expired` must be called next (None: no timer pending)."""
        expiries = [o.expires for o in self._offers.values()]  # timer_expired acts on these
        times: List[float] = []
        if self._next_hello is not None:
            times.append(self._next_hello)
            if self._greet:
                times.append(max(self._hello_at, self._token_at()))
            if self.free_slots != self._announced:
                times.append(self._token_at())
        if self._waiting:
            if self.free_slots < 1:
                times += [o.made + self.config.offer_answer_s for o in self._offers.values()]
            else:
                times.append(self._token_at())
        # Every input settles what is due (see _settle): a time already passed at the last
        # input cannot be acted on until something else happens, and must not spin the loop.
        future = expiries + [t for t in times if t > self._clock]
        return min(future) if future else None

    # --- inputs --------------------------------------------------------------------------

    def start(self, now: float) -> List[Action]:
        """The worker is on the board: announce it."""
        if self._bucket is None:
            self._bucket = TokenBucket(self.config.messages_per_s, self.config.message_burst,
                                       now)
        self._bucket.take(1, now)  # (a start always says Hello: a reconnect must announce)
        self._clock = max(self._clock, now)
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

        A compatible Want that finds no free slot is remembered and may be answered when a
        slot frees up (see the module docstring).
        """
        if self.withdrawn or want.sender == self.config.worker_id:
            return []
        reason = self._incompatibility(want)
        if reason is None and want.requires:
            verdict, detail = self._serves(want.requires)
            if verdict == NEVER:
                reason = f"it requires {detail}, which this worker lacks (see --allow-install)"
        sender = self._sender(want.sender)
        if reason is not None:
            if sender.noted:
                return []  # said once per sender: a flood of them must not flood the log
            sender.noted = True
            return [Note(f"not offering to job {want.job} of {want.sender}: {reason}")]
        if (want.sender, want.job) in self._offers or self._has_session(want.sender, want.job):
            return self._settle([], now)  # our offer stands, or the job has our slots
        sender.heard = now
        if sender.wants.pop(want.job, None) is not None:
            self._waiting -= 1
        expires = min(want.expires_at(), now + self.config.want_ttl_max)
        sender.wants[want.job] = (want, expires)  # (re)inserted last: its newest
        self._waiting += 1
        while len(sender.wants) > self.config.wants_per_sender:
            del sender.wants[next(iter(sender.wants))]  # the oldest goes
            self._waiting -= 1
        return self._settle([], now)

    def got_accept(self, accept: Accept, now: float) -> List[Action]:
        """A client took an offer: open its sealed code and start a session, if it is ours."""
        if accept.worker != self.config.worker_id:
            return []  # for another worker: normal traffic on a shared topic
        key = (accept.sender, accept.job)
        offer = self._offers.get(key)
        if offer is None:
            others = [client for client, job in self._offers if job == accept.job]
            if others:
                return [Note(f"ignored an accept for job {accept.job} from {accept.sender}: "
                             f"the offer was made to {others[0]}")]
            return [Note(f"ignored an accept for job {accept.job} from {accept.sender}: "
                         "no offer of ours is pending for that job (expired or never made)")]
        if offer.expires < now:
            return [Note(f"ignored an accept for job {accept.job}: our offer expired "
                         f"{now - offer.expires:.1f} s before it arrived")]
        try:
            code = open_code(accept.code, offer.private_key)
        except MessageRejected as exc:
            return [Note(f"ignored an accept for job {accept.job}: {exc.detail}")]
        del self._offers[key]
        sender = self._senders.get(accept.sender)
        if sender is not None:
            sender.strikes = 0  # it takes what it asks for
            if sender.wants.pop(accept.job, None) is not None:
                self._waiting -= 1
        session_id = self._next_session
        self._next_session += 1
        self._sessions[session_id] = (key, offer.slots)
        return [OpenSession(session_id, accept.job, accept.sender, offer.slots, code)]

    def got_hello(self, hello: Hello, now: float) -> List[Action]:
        """A peer said Hello: a newcomer (or one whose Hello lapsed) is answered by our next
        Hello (at most one per ``hello_min_interval``, whoever says Hello)."""
        if (hello.sender == self.config.worker_id or self.withdrawn
                or self._next_hello is None):
            return []
        sender = self._sender(hello.sender)
        if sender.greeted < now:
            self._greet = True
        sender.greeted = min(hello.expires_at(), now + self.config.hello_ttl_max)
        return self._settle([], now)

    def got_bye(self, bye: Bye, now: float) -> List[Action]:
        """A peer left: forget it, and drop our offer to it if any."""
        sender = self._senders.pop(bye.sender, None)
        if sender is not None:
            self._waiting -= len(sender.wants)
        for key in [key for key, offer in self._offers.items() if offer.client == bye.sender]:
            del self._offers[key]
        return self._settle([], now)

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
        return self._settle([], now)

    def requirements_changed(self, now: float) -> List[Action]:
        """An install finished (or failed): offer to the Wants that waited for it."""
        return self._settle([], now)

    def session_ended(self, session_id: int, now: float) -> List[Action]:
        """A session closed, failed to open, or was lost: its slots are free again."""
        if self._sessions.pop(session_id, None) is None:
            return []
        return self._settle([], now)

    def timer_expired(self, now: float) -> List[Action]:
        """Expire offers nobody accepted; withdraw, offer and say Hello when due."""
        actions: List[Action] = []
        for key in [k for k, o in self._offers.items() if o.expires <= now]:
            offer = self._offers.pop(key)
            job = key[1]
            self._sender(offer.client).strikes += 1
            actions.append(Note(f"offer of {offer.slots} slot(s) to job {job} of "
                                f"{offer.client} expired unaccepted"))
        return self._settle(actions, now)

    def withdraw(self, now: float) -> List[Action]:
        """Stop offering: pending offers are dropped and a Bye is published (once)."""
        if self.withdrawn:
            return []
        self.withdrawn = True
        self._offers.clear()
        for sender in self._senders.values():
            sender.wants.clear()
        self._waiting = 0
        self._next_hello = None
        bye = Bye(sender=self.config.worker_id, ts=now, ttl=self.config.hello_ttl, role="worker")
        return [Publish(bye)]

    # --- helpers -------------------------------------------------------------------------

    def _sender(self, name: str) -> _Sender:
        """The state of ``name``, made the most recently heard; the least recently heard
        sender is forgotten when there are more than ``senders_kept``."""
        found = self._senders.get(name)
        if found is None:
            found = self._senders[name] = _Sender()
            while len(self._senders) > self.config.senders_kept:
                _, forgotten = self._senders.popitem(last=False)
                self._waiting -= len(forgotten.wants)
        else:
            self._senders.move_to_end(name)
        return found

    def _incompatibility(self, want: Want) -> str | None:
        if want.python != self.config.python:
            return (f"it needs Python {want.python} and this worker runs Python "
                    f"{self.config.python}")
        if want.session != self.config.session_version:
            return (f"it speaks session protocol {want.session} and this worker speaks "
                    f"{self.config.session_version}")
        return None

    def _drop_offer(self, job: str, sender: str, now: float) -> List[Action]:
        found = self._senders.get(sender)
        if found is not None and found.wants.pop(job, None) is not None:
            self._waiting -= 1
        self._offers.pop((sender, job), None)  # only its owner's offer: a job is its sender's
        return self._settle([], now)

    def _has_session(self, client: str, job: str) -> bool:
        return any(key == (client, job) for key, _ in self._sessions.values())

    def _settle(self, actions: List[Action], now: float) -> List[Action]:
        """After every input: offer free slots to waiting Wants, withdraw an offer that
        keeps another sender waiting, and say Hello when one is owed."""
        self._clock = max(self._clock, now)
        if self._next_hello is None:  # not started, or withdrawn: say nothing
            return actions
        if now >= self._next_hello and now >= self._hello_at and self._take_token(now):
            actions.append(Publish(self._hello(now)))  # first: presence must not lapse
        while True:
            actions += self._offer_to_waiting(now)
            withdrawn = self._withdraw_unanswered(now)
            if not withdrawn:
                break
            actions += withdrawn
        # A change of free slots is news at once (others wait for it); answering newcomers
        # is not, and one Hello answers all of them.  Both take a token.
        greet = self._greet and now >= self._hello_at
        if (greet or self.free_slots != self._announced) and self._take_token(now):
            actions.append(Publish(self._hello(now)))
        return actions

    def _best_waiting(self, now: float) -> Tuple[_Sender, Want] | None:
        """The Want to offer to next (see the module docstring), forgetting stale ones."""
        holding = {o.client for o in self._offers.values()}
        best: Tuple[Any, _Sender, Want] | None = None
        for name, sender in self._senders.items():
            if not sender.wants or name in holding:
                continue
            key = _priority(sender)
            if best is not None and key >= best[0]:
                continue
            for job, (want, expires) in reversed(list(sender.wants.items())):
                if (expires < now or (name, job) in self._offers
                        or self._has_session(name, job)):
                    del sender.wants[job]
                    self._waiting -= 1
                    continue
                if want.requires and self._serves(want.requires)[0] == LATER:
                    continue  # its packages are being installed: remembered until then
                best = (key, sender, want)
                break
        return None if best is None else (best[1], best[2])

    def _offer_to_waiting(self, now: float) -> List[Action]:
        actions: List[Action] = []
        while self._waiting and self.free_slots >= 1 and self._has_token(now):
            found = self._best_waiting(now)
            if found is None:
                break
            sender, want = found
            del sender.wants[want.job]
            self._waiting -= 1
            sender.served = now
            self._take_token(now)
            actions.append(Publish(self._make_offer(want, now)))
        return actions

    def _withdraw_unanswered(self, now: float) -> List[Action]:
        """Withdraw the oldest offer left unaccepted past ``offer_answer_s`` if another
        sender's Want waits for its slots (and a token allows saying so)."""
        if not self._waiting or self.free_slots >= 1 or not self._offers:
            return []
        (client, job), offer = min(self._offers.items(), key=lambda item: item[1].made)
        if now < offer.made + self.config.offer_answer_s or not self._has_token(now):
            return []
        if self._best_waiting(now) is None:
            return []
        del self._offers[(client, job)]
        self._sender(offer.client).strikes += 1
        self._take_token(now)
        withdraw = Withdraw(sender=self.config.worker_id, ts=now, ttl=self.config.offer_ttl,
                            job=job, worker=self.config.worker_id, client=client)
        return [Note(f"withdrew the offer of {offer.slots} slot(s) to job {job} of "
                     f"{offer.client}: not accepted within {self.config.offer_answer_s:g} s "
                     "while another job waits"), Publish(withdraw)]

    def _has_token(self, now: float) -> bool:
        bucket = self._bucket
        if bucket is None:
            return True
        bucket.take(0, now)  # refill up to now
        return bucket.tokens >= 1

    def _take_token(self, now: float) -> bool:
        return self._bucket is None or self._bucket.take(1, now)

    def _token_at(self) -> float:
        """When the bucket next holds a token."""
        bucket = self._bucket
        if bucket is None or bucket.tokens >= 1:
            return _NEVER
        return bucket.updated + (1 - bucket.tokens) / bucket.rate

    def _make_offer(self, want: Want, now: float) -> Offer:
        slots = min(want.slots, self.free_slots)
        private_key, public_b64 = self._new_keypair()
        expires = now + self.config.offer_ttl
        self._offers[(want.sender, want.job)] = _PendingOffer(want.sender, slots, private_key,
                                                              expires, now)
        return Offer(
            sender=self.config.worker_id, ts=now, ttl=self.config.offer_ttl,
            job=want.job, worker=self.config.worker_id, slots=slots, key=public_b64,
            client=want.sender,
        )

    def _hello(self, now: float) -> Hello:
        self._announced = self.free_slots
        self._next_hello = now + self.config.hello_interval
        self._hello_at = now + self.config.hello_min_interval
        self._greet = False
        return Hello(
            sender=self.config.worker_id, ts=now, ttl=self.config.hello_ttl, role="worker",
            python=self.config.python, version=self.config.version, slots=self.free_slots,
            sandbox=self.config.sandbox,
        )


def _priority(sender: _Sender) -> Tuple[int, float, float]:
    """Who is offered slots first: fewest strikes, then least recently served, then the
    most recently heard."""
    return (sender.strikes, sender.served, -sender.heard)


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
