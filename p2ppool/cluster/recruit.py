"""Which workers a client job recruits, and when it asks the board (pure).

Client-side matchmaking for one job.  Pure: no sockets, threads or clock; every input takes
``now`` (seconds, any monotonic origin) and returns the commands to carry out, in order::

    set_demand(n) ──> PublishWant(slots) ──board──> workers answer with Offer(slots, key)
                                                         │ gathered until none came for
                                                         │ ``offer_quiet_s``, at most for
                                                         │ ``offer_window_s``
    AcceptOffer(worker, key) <── largest offers first ───┘
        │ the edge seals a fresh code to ``key``, publishes Accept, opens the session
        ├── session_ready(worker)    its slots count as recruited until the pool is told
        │   └── joined_reported(worker)   (the pool's next demand accounts for them)
        ├── session_refused(worker)  never this worker again for this job
        └── no Ready within ``accept_timeout_s``  ──> AbandonSession(worker, cause)
            or session_failed(worker)              the worker may be retried after a backoff

**Demand.**  :meth:`Recruiter.set_demand` takes how many *more* remote slots the pool could
use beyond the sessions it already knows about (those reported by :meth:`joined_reported`).
Slots of sessions being opened, or ready but not yet reported, are counted against it, so
the recruiter never opens more sessions than needed: ``wanted = demand - outstanding``.
When a session is reported its slots leave both the outstanding count and the demand (the
demand was given before the pool knew of it), until the pool sets the demand again.

**When a Want is published.**  As soon as slots are wanted and no Want is out (job start,
or after a Withdraw); again while slots are still wanted, every ``want_repeat_s``; sooner
(but at most every ``want_min_interval_s``) when a worker we had not seen says Hello (or
one whose Hello showed no free slots shows some again), or
when more slots are wanted than the last Want still asks for (its slots minus the offers
accepted since: a failed session, or a higher demand).  A :class:`PublishWithdraw` follows
as soon as the wanted slots are covered (after the Accepts that cover them), when the demand
drops to zero, and on :meth:`Recruiter.close`: workers drop their offers to a withdrawn job,
and forget its Want, so that slots this job does not need are not held from other jobs until
the offers expire (10 s).  Slots wanted again (a session that failed, a higher demand) are
asked for at once.

**Which offers are accepted.**  Offers for the job are remembered until they expire (less
``offer_margin_s``, so that the Accept reaches the worker in time).  Once
slots are wanted and either no usable offer came for ``offer_quiet_s`` or the oldest is
``offer_window_s`` old (so that a burst of answers to one Want is compared as a whole, and
a burst that is over is not waited for: on one machine or a LAN every answer comes within
a few milliseconds), the largest offers are accepted first (ties:
the earlier offer, then the worker id) until the wanted slots are covered: this is the
fewest sessions that cover the demand; of the last offer, only the slots still wanted are
taken (the session's Open tells the worker, which frees the rest), so a job never holds more
slots than it asked for.  Never two sessions with one worker, and a session never grows: a
worker's slots left out of it stay out of this job's reach while it lasts.  Offers that
arrive while no Want is out are ignored (they answered a withdrawn Want, and the worker has
dropped them); one that answered the previous Want but arrives after the next one is still
taken, and its Accept fails (the accept timeout ends it): rare, and not closed, as Offers do
not say which Want they answer.  Offers are
ignored from workers that refused this job, that said Hello with another Python
``major.minor``, or that are waiting out a retry backoff.

**A worker withdraws its offer** (:meth:`Recruiter.offer_withdrawn`: it was not accepted in
time while another job waited there): the offer is forgotten, and a session being opened on
it is abandoned at once, with no backoff (the worker will not open it).

**Bounded state** (issue 17): anyone on the board can say Hello as a worker under any name,
so at most ``workers_kept`` workers are remembered; past that, the least recently heard one
with nothing under way is forgotten first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple, Union

from .. import defaults

__all__ = [
    "AbandonSession",
    "AcceptOffer",
    "Command",
    "PublishWant",
    "PublishWithdraw",
    "Recruiter",
]


@dataclass(frozen=True)
class PublishWant:
    """Publish ``Want(job, slots)`` on the board."""

    slots: int


@dataclass(frozen=True)
class PublishWithdraw:
    """Publish ``Withdraw(job)``: the job wants no more slots."""


@dataclass(frozen=True)
class AcceptOffer:
    """Accept the worker's offer: seal a fresh code to ``key``, publish Accept, open a session.

    ``slots`` is how many of the offered slots the job takes: all of them, or fewer when it
    wants fewer (the session's Open tells the worker, which frees the rest).
    """

    worker: str
    key: str
    slots: int


@dataclass(frozen=True)
class AbandonSession:
    """Give up on the session being opened with ``worker`` (close it); ``cause`` says why."""

    worker: str
    cause: str


Command = Union[PublishWant, PublishWithdraw, AcceptOffer, AbandonSession]

# Session states of a worker.
_PENDING = "pending"  # accepted; waiting for the session to be Ready
_READY = "ready"  # Ready, but the pool has not been told yet
_JOINED = "joined"  # Ready and reported to the pool


@dataclass
class _Offer:
    slots: int
    key: str
    expires: float
    received: float


@dataclass
class _Worker:
    python: str | None = None
    offer: _Offer | None = None
    state: str | None = None
    state_since: float = 0.0
    slots: int = 0
    failures: int = 0
    retry_at: float = 0.0
    refused: str | None = None
    free: int | None = None  # free slots in its last Hello
    heard: float = 0.0  # when its last Hello or Offer arrived


class Recruiter:
    """The recruiting state of one client job.  Feed it events; carry out what it returns.

    Args:
        python: the job's Python ``major.minor``; workers that say otherwise are not used.
        want_repeat_s: seconds between repeated Wants while slots are still wanted.
        want_min_interval_s: least seconds between two Wants (except the first after a
            Withdraw or at start, which goes out at once).
        offer_window_s: most seconds to gather offers before choosing among them.
        offer_quiet_s: choose sooner, once no offer has come for this long.
        accept_timeout_s: seconds an accepted worker has to make its session Ready.
        offer_margin_s: an offer is accepted only while it has at least this long to live
            (the Accept must reach the worker before the offer expires there).
        retry_first_s: backoff before a worker whose session failed may be tried again;
            multiplied by ``retry_factor`` on each further failure, up to ``retry_max_s``.
        forget_silent_s: a worker with nothing under way (no session, offer, refusal or
            backoff) that has said nothing for this long is forgotten: killed workers never
            say Bye, and a long-lived pool must not keep every name it ever saw.
        workers_kept: most workers remembered (idle ones least recently heard go first).
    """

    def __init__(
        self,
        python: str,
        *,
        want_repeat_s: float = defaults.RECRUIT_WANT_REPEAT_S,
        want_min_interval_s: float = defaults.RECRUIT_WANT_MIN_INTERVAL_S,
        offer_window_s: float = defaults.RECRUIT_OFFER_WINDOW_S,
        offer_quiet_s: float = defaults.RECRUIT_OFFER_QUIET_S,
        accept_timeout_s: float = defaults.RECRUIT_ACCEPT_TIMEOUT_S,
        offer_margin_s: float = defaults.RECRUIT_OFFER_MARGIN_S,
        retry_first_s: float = defaults.RECRUIT_RETRY_FIRST_S,
        retry_factor: float = defaults.RECRUIT_RETRY_FACTOR,
        retry_max_s: float = defaults.RECRUIT_RETRY_MAX_S,
        forget_silent_s: float = defaults.HELLO_TTL_S,
        workers_kept: int = defaults.RECRUIT_WORKERS_KEPT,
    ) -> None:
        self.python = python
        self._repeat = want_repeat_s
        self._min_interval = want_min_interval_s
        self._window = offer_window_s
        self._quiet = offer_quiet_s
        self._accept_timeout = accept_timeout_s
        self._margin = offer_margin_s
        self._retry_first = retry_first_s
        self._retry_factor = retry_factor
        self._retry_max = retry_max_s
        self._forget_after = forget_silent_s
        self._workers_kept = workers_kept
        self._workers: Dict[str, _Worker] = {}
        self._demand = 0
        self._want_out = False  # a Want is on the board and not withdrawn
        self._last_want_at = 0.0
        self._asked = 0  # slots the last Want asked for, minus offers accepted since
        self._new_hello = False  # a worker we had not seen said Hello since the last Want
        self._closed = False

    # --- what callers may ask ---------------------------------------------------------------

    @property
    def demand(self) -> int:
        """The last demand given to :meth:`set_demand`."""
        return self._demand

    @property
    def outstanding(self) -> int:
        """Slots of sessions being opened or ready but not yet reported to the pool."""
        return sum(w.slots for w in self._workers.values() if w.state in (_PENDING, _READY))

    @property
    def wanted(self) -> int:
        """Slots still to recruit: the demand minus the outstanding slots (0 after close)."""
        if self._closed:
            return 0
        return max(0, self._demand - self.outstanding)

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def known(self) -> List[str]:
        """Names of the workers this job keeps any state for."""
        return sorted(self._workers)

    def usable(self) -> List[str]:
        """Workers heard from that this job may use (not refused or declined, the right
        Python, busy or not), sorted."""
        return sorted(n for n, w in self._workers.items() if self._may_use_ever(w))

    def pending(self) -> List[str]:
        """Workers accepted whose session is not Ready yet, sorted."""
        return sorted(n for n, w in self._workers.items() if w.state == _PENDING)

    def refused_by(self) -> Dict[str, str]:
        """Workers that refused this job -> their reason."""
        return {n: w.refused for n, w in self._workers.items() if w.refused is not None}

    def next_wakeup(self, now: float) -> float | None:
        """When :meth:`timer_expired` should be called next, or None when nothing is due."""
        if self._closed:
            return None
        times: List[float] = []
        times += [w.state_since + self._accept_timeout
                  for w in self._workers.values() if w.state == _PENDING]
        if self.wanted > 0:
            times.append(self._next_want_at())
            offering = self._offering(now)
            usable = [offer for _, worker, offer in offering if worker.retry_at <= now]
            if usable:
                times.append(self._choose_at(usable))
            times += [worker.retry_at for _, worker, _ in offering if worker.retry_at > now]
        return min(times) if times else None

    # --- inputs -------------------------------------------------------------------------------

    def set_demand(self, slots: int, now: float) -> List[Command]:
        """The pool could use ``slots`` more remote slots now (0: it wants none)."""
        if slots < 0:
            raise ValueError(f"demand must be >= 0, not {slots!r}")
        if self._closed:
            return []
        self._demand = slots
        if slots == 0 and self._want_out:
            return [self._withdraw()]
        return self._step(now)

    def got_hello(
        self, worker: str, python: str, now: float, slots: int | None = None
    ) -> List[Command]:
        """A worker announced itself (``Hello`` with role ``worker``, ``slots`` free).

        A worker not seen before (or back after a Bye), and a worker whose free slots went
        from 0 to more, are news: a Want goes out soon if slots are wanted.
        """
        if self._closed:
            return []
        self._forget_silent(now)
        found = self._worker(worker)
        if found.python is None or (found.free == 0 and slots is not None and slots > 0):
            self._new_hello = True
        found.python, found.heard = python, now
        if slots is not None:
            found.free = slots
        return self._step(now)

    def got_bye(self, worker: str, now: float) -> List[Command]:
        """A worker left the board: forget its offer; abandon a session still being opened."""
        found = self._workers.get(worker)
        if self._closed or found is None:
            return []
        commands: List[Command] = []
        if found.state == _PENDING:
            commands.append(AbandonSession(worker, "it left the board before the session opened"))
            self._failed(found, now)
        if found.state is None and found.refused is None and found.failures == 0:
            del self._workers[worker]  # a later Hello counts as a new worker
        else:
            found.offer = None
            found.python = None
        return commands + self._step(now)

    def got_offer(
        self, worker: str, slots: int, key: str, expires: float, now: float
    ) -> List[Command]:
        """A worker offered ``slots`` slots to this job; ``key`` seals the code for it.

        ``expires`` is when the offer goes stale (the message's ``ts + ttl``, in the same
        clock as ``now``).  A newer offer of the same worker replaces the older one.

        Ignored while no Want is out: such an offer answered a Want withdrawn since, and the
        worker drops it when it sees the Withdraw (an Accept would then wait out the accept
        timeout).  Withdrawing as soon as a Want is covered makes these late answers common.
        """
        if self._closed or slots < 1 or not self._want_out:
            return []
        found = self._worker(worker)
        found.heard = now
        if found.state is None:
            found.offer = _Offer(slots, key, expires, now)
        return self._step(now)

    def offer_withdrawn(self, worker: str, now: float) -> List[Command]:
        """``worker`` withdrew its offer to this job (``Withdraw(job, worker)`` from it):
        forget the offer; a session being opened on it is abandoned, with no backoff."""
        found = self._workers.get(worker)
        if self._closed or found is None:
            return []
        found.offer = None
        commands: List[Command] = []
        if found.state == _PENDING:
            commands.append(AbandonSession(worker, "it withdrew its offer before the "
                                                   "session opened"))
            found.state, found.slots = None, 0
        return commands + self._step(now)

    def session_ready(self, worker: str, slots: int, now: float) -> List[Command]:
        """The session with ``worker`` is Ready with ``slots`` slots."""
        found = self._workers.get(worker)
        if self._closed or found is None or found.state != _PENDING:
            return []
        found.state, found.state_since, found.slots = _READY, now, slots
        found.failures = 0
        return self._step(now)

    def joined_reported(self, worker: str, now: float) -> List[Command]:
        """The pool has been told that ``worker`` joined; its next demand accounts for it."""
        found = self._workers.get(worker)
        if found is not None and found.state == _READY:
            found.state = _JOINED
            # The last demand did not count this session; it does not want its slots twice.
            self._demand = max(0, self._demand - found.slots)
        return self._step(now)

    def session_refused(self, worker: str, reason: str, now: float) -> List[Command]:
        """The worker refused the session: it is never used again for this job."""
        found = self._workers.setdefault(worker, _Worker())
        found.refused = reason
        found.state, found.slots, found.offer = None, 0, None
        return self._step(now)

    def session_failed(self, worker: str, now: float) -> List[Command]:
        """The session with ``worker`` failed to open, or ended: retry it after a backoff."""
        found = self._workers.get(worker)
        if found is None or found.state is None:
            return []
        self._failed(found, now)
        return self._step(now)

    def session_released(self, worker: str, now: float) -> List[Command]:
        """This job ended its session with ``worker`` on purpose (idle, another job wants
        slots): the worker may be recruited again at once, without a backoff."""
        found = self._workers.get(worker)
        if found is None or found.state is None:
            return []
        found.state, found.slots, found.offer = None, 0, None
        return self._step(now)

    def timer_expired(self, now: float) -> List[Command]:
        """Time passed: abandon sessions not Ready in time; publish or accept what is due."""
        if self._closed:
            return []
        commands: List[Command] = []
        for name in self.pending():
            found = self._workers[name]
            if now >= found.state_since + self._accept_timeout:
                cause = f"its session was not ready within {self._accept_timeout:g} s"
                commands.append(AbandonSession(name, cause))
                self._failed(found, now)
        return commands + self._step(now)

    def close(self, now: float) -> List[Command]:
        """The job ends (close or terminate): withdraw it.  Later inputs return nothing."""
        if self._closed:
            return []
        self._closed = True
        if self._want_out:
            self._want_out = False
            return [PublishWithdraw()]
        return []

    # --- internals ----------------------------------------------------------------------------

    def _failed(self, worker: _Worker, now: float) -> None:
        worker.state, worker.slots, worker.offer = None, 0, None
        worker.failures += 1
        delay = self._retry_first * self._retry_factor ** (worker.failures - 1)
        worker.retry_at = now + min(delay, self._retry_max)

    def _worker(self, name: str) -> _Worker:
        """The state of ``name``; past ``workers_kept`` workers, the least recently heard
        one with nothing under way is forgotten to make room."""
        found = self._workers.get(name)
        if found is not None:
            return found
        if len(self._workers) >= self._workers_kept:
            idle = [(w.heard, n) for n, w in self._workers.items()
                    if w.state is None and w.refused is None and w.failures == 0]
            if idle:
                del self._workers[min(idle)[1]]
        found = self._workers[name] = _Worker()
        return found

    def _forget_silent(self, now: float) -> None:
        silent = [
            name for name, w in self._workers.items()
            if w.state is None and w.refused is None and w.retry_at <= now
            and (w.offer is None or w.offer.expires <= now)
            and now - w.heard >= self._forget_after
        ]
        for name in silent:
            del self._workers[name]

    def _may_use_ever(self, worker: _Worker) -> bool:
        return worker.refused is None and (worker.python is None or worker.python == self.python)

    def _may_use(self, worker: _Worker) -> bool:
        return (
            worker.state is None
            and worker.refused is None
            and (worker.python is None or worker.python == self.python)
        )

    def _offering(self, now: float) -> List[Tuple[str, _Worker, _Offer]]:
        """The workers with a live offer (``offer_margin_s`` to spare) that may be used,
        backoff or not: ``(name, worker, offer)``."""
        return [(name, worker, worker.offer) for name, worker in self._workers.items()
                if worker.offer is not None and worker.offer.expires - self._margin > now
                and self._may_use(worker)]

    def _choose_at(self, offers: List[_Offer]) -> float:
        """When to choose among ``offers``: no new one for ``offer_quiet_s``, or the oldest
        ``offer_window_s`` old, whichever comes first."""
        received = [offer.received for offer in offers]
        return min(min(received) + self._window, max(received) + self._quiet)

    def _next_want_at(self) -> float:
        if not self._want_out:
            return self._last_want_at  # at once
        if self._new_hello or self.wanted > self._asked:
            return self._last_want_at + self._min_interval
        return self._last_want_at + self._repeat

    def _step(self, now: float) -> List[Command]:
        if self._closed:
            return []
        commands: List[Command] = self._accept(now)
        wanted = self.wanted
        if wanted > 0 and (not self._want_out or now >= self._next_want_at()):
            self._want_out, self._new_hello = True, False
            self._last_want_at, self._asked = now, wanted
            commands.append(PublishWant(wanted))
        elif wanted == 0 and self._want_out and self._demand > 0:
            # Covered (by sessions opening or open): the other workers' offers, and the
            # Want that busy workers remember, would keep their slots from other jobs until
            # the offers expire.  After the Accepts, so that the chosen worker sees its Accept
            # first (the board keeps one sender's order).  A session that then fails asks again
            # at once.
            commands.append(self._withdraw())
        return commands

    def _withdraw(self) -> PublishWithdraw:
        self._want_out = False
        # Workers drop their offers to a withdrawn job: an Accept would find nothing.
        for worker in self._workers.values():
            worker.offer = None
        return PublishWithdraw()

    def _accept(self, now: float) -> List[Command]:
        wanted = self.wanted
        if wanted <= 0:
            return []
        usable = [(name, offer) for name, worker, offer in self._offering(now)
                  if worker.retry_at <= now]
        if not usable or self._choose_at([offer for _, offer in usable]) > now:
            return []
        usable.sort(key=lambda item: (-item[1].slots, item[1].received, item[0]))
        commands: List[Command] = []
        for name, offer in usable:
            if wanted <= 0:
                break
            worker = self._workers[name]
            taken = min(offer.slots, wanted)  # never more than wanted: `processes` bounds
            worker.state, worker.state_since, worker.slots = _PENDING, now, taken
            worker.offer = None  # an offer's key is used once
            commands.append(AcceptOffer(name, offer.key, taken))
            wanted -= taken
            self._asked = max(0, self._asked - taken)
        return commands
