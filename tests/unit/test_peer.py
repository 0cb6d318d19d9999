"""The worker's board decisions (p2ppool.peer): explicit `now`, exact actions, no I/O."""

from __future__ import annotations

import base64
from typing import Any, Iterator, List, Tuple

import pytest
from nacl.public import PrivateKey

from p2ppool.peer import (
    Note,
    OpenSession,
    Peer,
    PeerConfig,
    Publish,
    format_bytes,
    payload_refusal,
    refusal_for_open,
)
from p2ppool.protocol import Accept, Bye, Done, Hello, Offer, Want, Withdraw, seal_code
from p2ppool.session_protocol import SESSION_VERSION, Open

T0 = 1_800_000_000.0
ME = "w1"


def key(n: int) -> PrivateKey:
    return PrivateKey(bytes([n]) * 32)


def pub(n: int) -> str:
    return base64.b64encode(bytes(key(n).public_key)).decode()


class Keys:
    """Deterministic key pairs: the 1st offer gets key(1), the 2nd key(2), ..."""

    def __init__(self) -> None:
        self._counter: Iterator[int] = iter(range(1, 200))

    def __call__(self) -> Tuple[Any, str]:
        n = next(self._counter)
        return key(n), pub(n)


def make_peer(slots: int = 4, **kw: Any) -> Peer:
    cfg = PeerConfig(worker_id=ME, python="3.11", version="0.1.0", slots=slots,
                     offer_ttl=10.0, hello_interval=30.0, hello_ttl=90.0, **kw)
    return Peer(cfg, Keys())


def hello(now: float, slots: int) -> Publish:
    return Publish(Hello(sender=ME, ts=now, ttl=90.0, role="worker", python="3.11",
                         version="0.1.0", slots=slots))


def offer(now: float, job: str, slots: int, n: int) -> Publish:
    return Publish(Offer(sender=ME, ts=now, ttl=10.0, job=job, worker=ME, slots=slots,
                         key=pub(n)))


def want(job: str = "j1", slots: int = 2, python: str = "3.11", sender: str = "alice",
         session: int = SESSION_VERSION, ts: float = T0) -> Want:
    return Want(sender=sender, ts=ts, ttl=60.0, job=job, slots=slots, python=python,
                session=session)


def accept(job: str = "j1", n: int = 1, code: str = "7-secret", worker: str = ME,
           sender: str = "alice", ts: float = T0) -> Accept:
    return Accept(sender=sender, ts=ts, ttl=60.0, job=job, worker=worker,
                  code=seal_code(code, pub(n)))


def started(slots: int = 4) -> Peer:
    peer = make_peer(slots)
    assert peer.start(T0) == [hello(T0, slots)]
    return peer


# --- announcing ----------------------------------------------------------------------------


def test_start_announces_all_slots_free() -> None:
    peer = make_peer(3)
    assert peer.start(T0) == [hello(T0, 3)]
    assert peer.next_deadline() == T0 + 30.0


def test_periodic_hello_when_due_and_not_before() -> None:
    peer = started()
    assert peer.timer_expired(T0 + 29.9) == []
    assert peer.timer_expired(T0 + 30.0) == [hello(T0 + 30.0, 4)]
    assert peer.next_deadline() == T0 + 60.0


def test_newcomer_is_greeted_once_until_its_hello_lapses() -> None:
    peer = started()
    alice = Hello(sender="alice", ts=T0, ttl=60.0, role="client", python="3.11",
                  version="0.1.0", slots=0)
    assert peer.got_hello(alice, T0 + 1) == [hello(T0 + 1, 4)]
    assert peer.got_hello(alice, T0 + 2) == []
    # alice's hello lapsed (T0 + 60) and she says hello again: greet her again
    again = Hello(sender="alice", ts=T0 + 70, ttl=60.0, role="client", python="3.11",
                  version="0.1.0", slots=0)
    assert peer.got_hello(again, T0 + 70) == [hello(T0 + 70, 4)]


def test_own_hello_echo_is_ignored() -> None:
    peer = started()
    own = Hello(sender=ME, ts=T0, ttl=90.0, role="worker", python="3.11", version="0.1.0",
                slots=4)
    assert peer.got_hello(own, T0) == []


# --- offering ------------------------------------------------------------------------------


def test_compatible_want_gets_an_offer_and_free_slots_are_reannounced() -> None:
    peer = started(4)
    assert peer.got_want(want(slots=3), T0 + 1) == [offer(T0 + 1, "j1", 3, 1), hello(T0 + 1, 1)]
    assert peer.free_slots == 1
    assert peer.pending_offers() == {"j1": 3}
    assert peer.next_deadline() == T0 + 11.0


def test_offer_is_capped_by_free_slots_and_nothing_is_offered_when_full() -> None:
    peer = started(2)
    assert peer.got_want(want("j1", slots=8), T0) == [offer(T0, "j1", 2, 1), hello(T0, 0)]
    assert peer.got_want(want("j2", slots=1, sender="bob"), T0) == []


def test_repeated_want_of_the_same_job_does_not_offer_twice() -> None:
    peer = started(4)
    peer.got_want(want("j1", slots=1), T0)
    assert peer.got_want(want("j1", slots=1), T0 + 1) == []
    assert peer.pending_offers() == {"j1": 1}


@pytest.mark.parametrize(
    ("python", "session", "reason"),
    [
        ("2.7", SESSION_VERSION,
         "it needs Python 2.7 and this worker runs Python 3.11"),
        ("3.12", SESSION_VERSION,
         "it needs Python 3.12 and this worker runs Python 3.11"),
        ("3.11", SESSION_VERSION + 1,
         f"it speaks session protocol {SESSION_VERSION + 1} and this worker speaks "
         f"{SESSION_VERSION}"),
    ],
)
def test_incompatible_want_is_never_offered(python: str, session: int, reason: str) -> None:
    peer = started(4)
    actions = peer.got_want(want(python=python, session=session), T0)
    assert actions == [Note(f"not offering to job j1 of alice: {reason}")]
    assert peer.free_slots == 4


def test_withdrawn_worker_offers_nothing_and_says_bye_once() -> None:
    peer = started(4)
    peer.got_want(want("j1", slots=1), T0)
    bye = Bye(sender=ME, ts=T0 + 1, ttl=90.0, role="worker")
    assert peer.withdraw(T0 + 1) == [Publish(bye)]
    assert peer.withdraw(T0 + 2) == []
    assert peer.pending_offers() == {}
    assert peer.got_want(want("j2", sender="bob"), T0 + 2) == []
    assert peer.timer_expired(T0 + 100) == []
    assert peer.next_deadline() is None


# --- offers expire ---------------------------------------------------------------------------


def test_unaccepted_offer_expires_and_frees_its_slots() -> None:
    peer = started(4)
    peer.got_want(want(slots=3), T0)
    assert peer.timer_expired(T0 + 9.9) == []
    assert peer.timer_expired(T0 + 10.0) == [
        Note("offer of 3 slot(s) to job j1 of alice expired unaccepted"),
        hello(T0 + 10.0, 4),
    ]
    assert peer.free_slots == 4


def test_withdraw_or_done_of_a_job_releases_its_offer() -> None:
    peer = started(4)
    peer.got_want(want("j1", slots=2), T0)
    peer.got_want(want("j2", slots=1, sender="bob"), T0)
    assert peer.got_withdraw(Withdraw(sender="alice", ts=T0, ttl=60, job="j1"), T0 + 1) == [
        hello(T0 + 1, 3)
    ]
    # a Done for bob's job sent by someone else is not bob's decision
    assert peer.got_done(Done(sender="mallory", ts=T0, ttl=60, job="j2"), T0 + 2) == []
    assert peer.got_done(Done(sender="bob", ts=T0, ttl=60, job="j2"), T0 + 2) == [
        hello(T0 + 2, 4)
    ]


def test_bye_of_a_client_releases_its_offers() -> None:
    peer = started(4)
    peer.got_want(want("j1", slots=2), T0)
    assert peer.got_bye(Bye(sender="alice", ts=T0, ttl=60, role="client"), T0 + 1) == [
        hello(T0 + 1, 4)
    ]


# --- accepting ------------------------------------------------------------------------------


def test_accept_for_our_offer_opens_a_session_with_the_unsealed_code() -> None:
    peer = started(4)
    peer.got_want(want(slots=2), T0)
    actions = peer.got_accept(accept(code="123-abc"), T0 + 1)
    assert actions == [OpenSession(1, "j1", "alice", 2, "123-abc")]
    assert peer.sessions == {1: 2}
    assert peer.pending_offers() == {}
    assert peer.free_slots == 2
    # the same accept again (a replay) finds no pending offer
    assert peer.got_accept(accept(code="123-abc"), T0 + 2) == [
        Note("ignored an accept for job j1 from alice: no offer of ours is pending for that "
             "job (expired or never made)")
    ]


def test_accept_addressed_to_another_worker_is_ignored_silently() -> None:
    peer = started(4)
    peer.got_want(want(slots=2), T0)
    assert peer.got_accept(accept(worker="w2"), T0 + 1) == []
    assert peer.pending_offers() == {"j1": 2}


def test_accept_for_an_offer_we_never_made_is_ignored() -> None:
    peer = started(4)
    assert peer.got_accept(accept(job="nope"), T0) == [
        Note("ignored an accept for job nope from alice: no offer of ours is pending for that "
             "job (expired or never made)")
    ]
    assert peer.sessions == {}


def test_accept_after_expiry_is_ignored_even_before_the_timer_ran() -> None:
    peer = started(4)
    peer.got_want(want(slots=2), T0)
    assert peer.got_accept(accept(), T0 + 10.5) == [
        Note("ignored an accept for job j1: our offer expired 0.5 s before it arrived")
    ]
    assert peer.sessions == {}


def test_accept_from_another_sender_is_ignored() -> None:
    peer = started(4)
    peer.got_want(want(slots=2), T0)
    assert peer.got_accept(accept(sender="mallory"), T0 + 1) == [
        Note("ignored an accept for job j1 from mallory: the offer was made to alice")
    ]
    assert peer.pending_offers() == {"j1": 2}


def test_accept_sealed_to_the_wrong_key_is_ignored() -> None:
    peer = started(4)
    peer.got_want(want(slots=2), T0)  # offered with key(1)
    [note] = peer.got_accept(accept(n=9), T0 + 1)
    assert isinstance(note, Note)
    assert note.text.startswith("ignored an accept for job j1: the sealed code does not open")
    assert peer.pending_offers() == {"j1": 2}


def test_each_offer_carries_a_fresh_key() -> None:
    peer = started(4)
    first = peer.got_want(want("j1", slots=1), T0)[0]
    second = peer.got_want(want("j2", slots=1, sender="bob"), T0)[0]
    assert isinstance(first, Publish) and isinstance(second, Publish)
    assert isinstance(first.message, Offer) and isinstance(second.message, Offer)
    assert first.message.key == pub(1) and second.message.key == pub(2)
    # bob's accept must be sealed to the second key
    assert peer.got_accept(accept("j2", n=2, sender="bob", code="9-x"), T0) == [
        OpenSession(1, "j2", "bob", 1, "9-x")
    ]


# --- sessions share the slots ------------------------------------------------------------------


def test_two_sessions_share_slots_and_ending_one_reannounces() -> None:
    peer = started(4)
    peer.got_want(want("j1", slots=3), T0)
    peer.got_accept(accept("j1", n=1), T0)
    assert peer.got_want(want("j2", slots=3, sender="bob"), T0) == [
        offer(T0, "j2", 1, 2), hello(T0, 0)
    ]
    assert peer.got_accept(accept("j2", n=2, sender="bob"), T0) == [
        OpenSession(2, "j2", "bob", 1, "7-secret")
    ]
    assert peer.sessions == {1: 3, 2: 1}
    assert peer.session_ended(1, T0 + 5) == [hello(T0 + 5, 3)]
    assert peer.session_ended(1, T0 + 6) == []  # twice: nothing more to free
    assert peer.session_ended(2, T0 + 7) == [hello(T0 + 7, 4)]


def test_a_session_that_takes_fewer_slots_frees_the_rest_for_other_jobs() -> None:
    peer = started(4)
    peer.got_want(want("j1", slots=3), T0)
    peer.got_accept(accept("j1", n=1), T0)
    # bob wants slots while all 4 are promised or in use: remembered
    assert peer.got_want(want("j2", slots=2, sender="bob"), T0) == [offer(T0, "j2", 1, 2),
                                                                     hello(T0, 0)]
    peer.got_accept(accept("j2", n=2, sender="bob"), T0)
    assert peer.got_want(want("j3", slots=2, sender="carol"), T0 + 1) == []
    assert peer.waiting_wants() == ["j3"]
    # alice's session opens using 1 of its 3 slots: 2 go to carol's waiting job at once
    # (still 0 free, as last announced: no new Hello)
    assert peer.session_opened(1, 1, T0 + 2) == [offer(T0 + 2, "j3", 2, 3)]
    assert peer.sessions == {1: 1, 2: 1}
    assert peer.session_opened(1, 5, T0 + 3) == []  # never more than it had
    assert peer.session_opened(2, None, T0 + 3) == []  # None: every slot
    assert peer.session_ended(1, T0 + 4) == [hello(T0 + 4, 1)]


def test_session_end_while_withdrawing_does_not_announce() -> None:
    peer = started(2)
    peer.got_want(want(slots=2), T0)
    peer.got_accept(accept(), T0)
    peer.withdraw(T0 + 1)
    assert peer.session_ended(1, T0 + 2) == []
    assert peer.free_slots == 2


def test_got_message_dispatches_by_type() -> None:
    peer = started(1)
    assert peer.got_message(want(slots=1), T0) == [offer(T0, "j1", 1, 1), hello(T0, 0)]
    assert peer.got_message(accept(), T0) == [OpenSession(1, "j1", "alice", 1, "7-secret")]


def test_config_rejects_zero_slots() -> None:
    with pytest.raises(ValueError, match="at least 1 slot"):
        PeerConfig(worker_id=ME, python="3.11", version="0.1.0", slots=0)


# --- per-session checks ----------------------------------------------------------------------


OPEN_CASES: List[Tuple[Open, Any]] = [
    (Open(job="j1", python="3.11", maxtasksperchild=2), None),
    (Open(job="j1", python="2.7"),
     "the client runs Python 2.7 and this worker runs Python 3.11; pickled functions only "
     "move between equal major.minor versions"),
    (Open(job="j2", python="3.11"),
     "the session opened for job j2, but the offer was accepted for j1"),
    (Open(job="j1", python="3.11", version=SESSION_VERSION + 1),
     f"session protocol {SESSION_VERSION + 1} is not supported (this worker speaks "
     f"{SESSION_VERSION})"),
    (Open(job="j1", python="3.11", maxtasksperchild=0),
     "maxtasksperchild must be at least 1, got 0"),
    (Open(job="j1", python="3.11", slots=1), None),
    (Open(job="j1", python="3.11", slots=0),
     "a session needs at least 1 slot, the client asked for 0"),
]


@pytest.mark.parametrize(("frame", "reason"), OPEN_CASES)
def test_refusal_for_open(frame: Open, reason: Any) -> None:
    assert refusal_for_open(frame, job="j1", python="3.11") == reason


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (999, "999 B"), (1000, "1 kB"), (1500, "1.5 kB"), (10_000_000, "10 MB"),
     (12_345_678, "12.3 MB"), (3_000_000_000, "3 GB")],
)
def test_format_bytes(size: int, text: str) -> None:
    assert format_bytes(size) == text


def test_payload_refusal() -> None:
    assert payload_refusal("task 3's arguments", 10_000_000, 10_000_000) is None
    assert payload_refusal("task 3's arguments", 10**9, None) is None
    assert payload_refusal("task 3's arguments", 12_345_678, 10_000_000) == (
        "task 3's arguments (12.3 MB) exceeds this worker's 10 MB payload limit"
    )


# --- wants that wait for a free slot ---------------------------------------------------------


def test_a_want_that_found_no_slot_gets_the_first_one_freed_by_a_session() -> None:
    peer = started(2)
    peer.got_want(want("j1", slots=2), T0)
    peer.got_accept(accept("j1"), T0)
    assert peer.got_want(want("j2", slots=3, sender="bob"), T0 + 1) == []
    assert peer.waiting_wants() == ["j2"]
    # the freed slots go straight to bob's offer: still 0 free, so no new hello
    assert peer.session_ended(1, T0 + 5) == [offer(T0 + 5, "j2", 2, 2)]
    assert peer.waiting_wants() == []


def test_a_waiting_want_gets_the_slots_of_an_expired_offer_once() -> None:
    peer = started(1)
    peer.got_want(want("j1", slots=1), T0)
    peer.got_want(want("j2", slots=1, sender="bob"), T0 + 1)
    assert peer.timer_expired(T0 + 10) == [
        Note("offer of 1 slot(s) to job j1 of alice expired unaccepted"),
        offer(T0 + 10, "j2", 1, 2),
    ]  # free slots stayed 0: no hello
    # bob does not take it either: the slot stays free until someone asks again
    assert peer.timer_expired(T0 + 20) == [
        Note("offer of 1 slot(s) to job j2 of bob expired unaccepted"),
        hello(T0 + 20, 1),
    ]
    assert peer.waiting_wants() == []


def test_waiting_wants_are_served_oldest_first_and_expired_ones_are_dropped() -> None:
    peer = started(1)
    peer.got_want(want("j0", slots=1), T0)  # takes the only slot
    peer.got_want(want("old", slots=1, sender="bob", ts=T0 - 59), T0)  # lapses at T0 + 1
    peer.got_want(want("j2", slots=1, sender="carol"), T0)
    peer.got_want(want("j3", slots=1, sender="dave"), T0)
    assert peer.waiting_wants() == ["old", "j2", "j3"]
    actions = peer.got_withdraw(Withdraw(sender="alice", ts=T0, ttl=60, job="j0"), T0 + 2)
    assert actions == [offer(T0 + 2, "j2", 1, 2)]
    assert peer.waiting_wants() == ["j3"]


def test_withdraw_done_or_bye_forget_a_waiting_want() -> None:
    peer = started(1)
    peer.got_want(want("j0", slots=1), T0)
    peer.got_want(want("j1", slots=1, sender="bob"), T0)
    peer.got_want(want("j2", slots=1, sender="carol"), T0)
    peer.got_want(want("j3", slots=1, sender="dave"), T0)
    peer.got_withdraw(Withdraw(sender="bob", ts=T0, ttl=60, job="j1"), T0)
    peer.got_done(Done(sender="carol", ts=T0, ttl=60, job="j2"), T0)
    peer.got_bye(Bye(sender="dave", ts=T0, ttl=60, role="client"), T0)
    assert peer.waiting_wants() == []


def test_a_job_with_a_session_here_is_not_offered_more() -> None:
    peer = started(4)
    peer.got_want(want("j1", slots=1), T0)
    peer.got_accept(accept("j1"), T0)
    assert peer.got_want(want("j1", slots=3), T0 + 1) == []
    assert peer.waiting_wants() == []
    assert peer.free_slots == 3


def test_withdrawing_forgets_waiting_wants() -> None:
    peer = started(1)
    peer.got_want(want("j0", slots=1), T0)
    peer.got_accept(accept("j0"), T0)
    peer.got_want(want("j1", slots=1, sender="bob"), T0)
    peer.withdraw(T0 + 1)
    assert peer.waiting_wants() == []
    assert peer.session_ended(1, T0 + 2) == []


# --- per-job requirements -----------------------------------------------------------------


def with_requires(requires: tuple[str, ...], job: str = "j1") -> Want:
    return Want(sender="alice", ts=T0, ttl=60.0, job=job, slots=2, python="3.11",
                session=SESSION_VERSION, requires=requires)


def test_a_want_whose_requirements_are_missing_gets_no_offer() -> None:
    from p2ppool.peer import NEVER

    peer = Peer(PeerConfig(worker_id=ME, python="3.11", version="0.1.0", slots=4,
                           offer_ttl=10.0, hello_interval=30.0, hello_ttl=90.0), Keys(),
                serves=lambda reqs: (NEVER, "numpy>=2"))
    peer.start(T0)
    actions = peer.got_want(with_requires(("numpy>=2",)), T0 + 1)
    assert not [a for a in actions if isinstance(a, Publish) and isinstance(a.message, Offer)]
    assert any(isinstance(a, Note) and "requires numpy>=2, which this worker lacks" in a.text
               for a in actions)
    assert peer.waiting_wants() == []


def test_a_want_waits_while_its_requirements_install_then_gets_its_offer() -> None:
    from p2ppool.peer import LATER, NOW

    state = {"verdict": LATER}
    peer = Peer(PeerConfig(worker_id=ME, python="3.11", version="0.1.0", slots=4,
                           offer_ttl=10.0, hello_interval=30.0, hello_ttl=90.0), Keys(),
                serves=lambda reqs: (state["verdict"], None))
    peer.start(T0)
    plain = peer.got_want(want(job="j0"), T0 + 1)  # no requirements: offered at once
    assert [a.message.job for a in plain if isinstance(a, Publish)
            and isinstance(a.message, Offer)] == ["j0"]
    actions = peer.got_want(with_requires(("numpy>=2",)), T0 + 1)
    assert not [a for a in actions if isinstance(a, Publish) and isinstance(a.message, Offer)]
    assert peer.waiting_wants() == ["j1"]
    assert not [a for a in peer.timer_expired(T0 + 2)
                if isinstance(a, Publish) and isinstance(a.message, Offer)]
    state["verdict"] = NOW
    offers = [a.message for a in peer.requirements_changed(T0 + 3)
              if isinstance(a, Publish) and isinstance(a.message, Offer)]
    assert [o.job for o in offers] == ["j1"] and peer.waiting_wants() == []


def test_requirements_travel_in_the_want_line() -> None:
    from p2ppool.protocol import MessageRejected, decode, encode

    line = encode(with_requires(("numpy>=2", "scipy")))
    assert b'"requires":["numpy>=2","scipy"]' in line
    assert decode(line, T0).requires == ("numpy>=2", "scipy")  # type: ignore[attr-defined]
    with pytest.raises(MessageRejected, match="requirement strings"):
        with_requires(tuple(f"p{i}" for i in range(40)))
