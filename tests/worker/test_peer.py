"""The worker's board decisions (p2ppool.worker.peer): explicit `now`, exact actions, no I/O."""

from __future__ import annotations

import base64
from typing import Any, Iterator, List, Tuple

import pytest
from nacl.public import PrivateKey

from p2ppool.board.protocol import Accept, Bye, Done, Hello, Offer, Want, Withdraw, seal_code
from p2ppool.transfer.session_protocol import SESSION_VERSION, Open
from p2ppool.worker.peer import (
    Note,
    OpenSession,
    Peer,
    PeerConfig,
    Publish,
    format_bytes,
    payload_refusal,
    refusal_for_open,
)

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
    # Hello pacing has its own tests: here every change of free slots is announced at once.
    kw.setdefault("hello_min_interval", 0.0)
    cfg = PeerConfig(worker_id=ME, python="3.11", version="0.1.0", slots=slots,
                     offer_ttl=10.0, hello_interval=30.0, hello_ttl=90.0, **kw)
    return Peer(cfg, Keys())


def hello(now: float, slots: int) -> Publish:
    return Publish(Hello(sender=ME, ts=now, ttl=90.0, role="worker", python="3.11",
                         version="0.1.0", slots=slots))


def offer(now: float, job: str, slots: int, n: int, client: str = "alice") -> Publish:
    return Publish(Offer(sender=ME, ts=now, ttl=10.0, job=job, worker=ME, slots=slots,
                         key=pub(n), client=client))


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
        offer(T0, "j2", 1, 2, "bob"), hello(T0, 0)
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
    assert peer.got_want(want("j2", slots=2, sender="bob"), T0) == [offer(T0, "j2", 1, 2, "bob"),
                                                                     hello(T0, 0)]
    peer.got_accept(accept("j2", n=2, sender="bob"), T0)
    assert peer.got_want(want("j3", slots=2, sender="carol"), T0 + 1) == []
    assert peer.waiting_wants() == ["j3"]
    # alice's session opens using 1 of its 3 slots: 2 go to carol's waiting job at once
    # (still 0 free, as last announced: no new Hello)
    assert peer.session_opened(1, 1, T0 + 2) == [offer(T0 + 2, "j3", 2, 3, "carol")]
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
    assert peer.session_ended(1, T0 + 5) == [offer(T0 + 5, "j2", 2, 2, "bob")]
    assert peer.waiting_wants() == []


def test_a_waiting_want_gets_the_slots_of_an_expired_offer_once() -> None:
    peer = started(1)
    peer.got_want(want("j1", slots=1), T0)
    peer.got_want(want("j2", slots=1, sender="bob"), T0 + 1)
    assert peer.timer_expired(T0 + 10) == [
        Note("offer of 1 slot(s) to job j1 of alice expired unaccepted"),
        offer(T0 + 10, "j2", 1, 2, "bob"),
    ]  # free slots stayed 0: no hello
    # bob does not take it either: the slot stays free until someone asks again
    assert peer.timer_expired(T0 + 20) == [
        Note("offer of 1 slot(s) to job j2 of bob expired unaccepted"),
        hello(T0 + 20, 1),
    ]
    assert peer.waiting_wants() == []


def test_expired_waiting_wants_are_dropped() -> None:
    peer = started(1)
    peer.got_want(want("j0", slots=1), T0)  # takes the only slot
    peer.got_want(want("j2", slots=1, sender="carol"), T0)
    peer.got_want(want("old", slots=1, sender="bob", ts=T0 - 59), T0 + 0.5)  # lapses T0 + 1
    assert peer.waiting_wants() == ["old", "j2"]  # the most recently heard first
    actions = peer.got_withdraw(Withdraw(sender="alice", ts=T0, ttl=60, job="j0"), T0 + 2)
    assert actions == [offer(T0 + 2, "j2", 1, 2, "carol")]
    assert peer.waiting_wants() == []


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


def with_requires(requires: tuple[str, ...], job: str = "j1", sender: str = "alice") -> Want:
    return Want(sender=sender, ts=T0, ttl=60.0, job=job, slots=2, python="3.11",
                session=SESSION_VERSION, requires=requires)


def test_a_want_whose_requirements_are_missing_gets_no_offer() -> None:
    from p2ppool.worker.peer import NEVER

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
    from p2ppool.worker.peer import LATER, NOW

    state = {"verdict": LATER}
    peer = Peer(PeerConfig(worker_id=ME, python="3.11", version="0.1.0", slots=4,
                           offer_ttl=10.0, hello_interval=30.0, hello_ttl=90.0), Keys(),
                serves=lambda reqs: (state["verdict"], None))
    peer.start(T0)
    plain = peer.got_want(want(job="j0"), T0 + 1)  # no requirements: offered at once
    assert [a.message.job for a in plain if isinstance(a, Publish)
            and isinstance(a.message, Offer)] == ["j0"]
    actions = peer.got_want(with_requires(("numpy>=2",), sender="bob"), T0 + 1)
    assert not [a for a in actions if isinstance(a, Publish) and isinstance(a.message, Offer)]
    assert peer.waiting_wants() == ["j1"]
    assert not [a for a in peer.timer_expired(T0 + 2)
                if isinstance(a, Publish) and isinstance(a.message, Offer)]
    state["verdict"] = NOW
    offers = [a.message for a in peer.requirements_changed(T0 + 3)
              if isinstance(a, Publish) and isinstance(a.message, Offer)]
    assert [o.job for o in offers] == ["j1"] and peer.waiting_wants() == []


def test_requirements_travel_in_the_want_line() -> None:
    import dataclasses

    from p2ppool.board.auth import BoardIdentity
    from p2ppool.board.protocol import MessageRejected, decode, encode

    me = BoardIdentity("alice")
    line = encode(dataclasses.replace(with_requires(("numpy>=2", "scipy")), sender=me.sender),
                  me, "alice/friends")
    assert b'"requires":["numpy>=2","scipy"]' in line
    assert decode(line, T0, "alice/friends").requires == ("numpy>=2", "scipy")  # type: ignore[attr-defined]
    with pytest.raises(MessageRejected, match="requirement strings"):
        with_requires(tuple(f"p{i}" for i in range(40)))


# --- fair, bounded recruiting (issue 17) -------------------------------------------------------


def offers_in(actions: List[Any]) -> List[Offer]:
    return [a.message for a in actions if isinstance(a, Publish)
            and isinstance(a.message, Offer)]


def withdrawn(now: float, job: str, client: str = "mallory") -> Publish:
    return Publish(Withdraw(sender=ME, ts=now, ttl=10.0, job=job, worker=ME, client=client))


def busy(peer: Peer, job: str = "j0", sender: str = "owner", now: float = T0) -> int:
    """Give every free slot of ``peer`` to a session; return its session id."""
    made = offers_in(peer.got_want(want(job, slots=99, sender=sender, ts=now), now))
    assert made, "the peer had no free slot"
    [opened] = [a for a in peer.got_accept(accept(job, n=_last_key(made[0]), sender=sender,
                                                  ts=now), now)
                if isinstance(a, OpenSession)]
    return opened.session_id


def _last_key(offer_message: Offer) -> int:
    return next(n for n in range(1, 200) if pub(n) == offer_message.key)


def test_freed_slots_go_round_robin_over_senders_not_oldest_first() -> None:
    peer = started(1)
    session = busy(peer)
    for job in ("b1", "b2", "b3"):
        peer.got_want(want(job, slots=1, sender="bob"), T0 + 1)
    peer.got_want(want("c1", slots=1, sender="carol"), T0 + 2)
    # never offered yet: the most recently heard first; a sender's newest Want first
    assert peer.waiting_wants() == ["c1", "b3", "b2", "b1"]
    assert offers_in(peer.session_ended(session, T0 + 3))[0].job == "c1"
    peer.got_accept(accept("c1", n=2, sender="carol"), T0 + 3)
    peer.got_want(want("c2", slots=1, sender="carol"), T0 + 4)  # carol asks again at once
    # carol was served at T0 + 3, bob never: bob's turn, however recent carol's ask
    assert peer.waiting_wants() == ["b3", "b2", "b1", "c2"]
    assert offers_in(peer.session_ended(2, T0 + 5))[0].job == "b3"
    peer.got_accept(accept("b3", n=3, sender="bob"), T0 + 5)
    assert offers_in(peer.session_ended(3, T0 + 6))[0].job == "c2"


def test_a_sender_keeps_at_most_four_waiting_wants_and_the_newest_win() -> None:
    peer = started(1)
    busy(peer)
    for i in range(300):
        peer.got_want(want(f"fake{i}", slots=1000, sender="mallory"), T0 + 1)
    assert peer.waiting_wants() == ["fake299", "fake298", "fake297", "fake296"]


def test_state_per_sender_is_bounded_least_recently_heard_forgotten_first() -> None:
    peer = make_peer(1, senders_kept=3)
    peer.start(T0)
    busy(peer)  # sender "owner" is known, first
    for i in range(1000):
        peer.got_want(want(f"j{i}", slots=1, sender=f"forged{i}"), T0 + 1)
        peer.got_hello(Hello(sender=f"h{i}", ts=T0, ttl=90.0, role="client", python="3.11",
                             version="0.1", slots=0), T0 + 1)
    assert peer.known_senders() == 3
    assert peer.waiting_wants() == ["j999"]  # forged999, h999, h998 are kept


def test_a_want_ttl_is_honoured_only_up_to_its_cap() -> None:
    peer = started(1)
    session = busy(peer)
    forever = Want(sender="mallory", ts=T0, ttl=1e300, job="forever", slots=1000,
                   python="3.11", session=SESSION_VERSION)
    peer.got_want(forever, T0)
    assert peer.waiting_wants() == ["forever"]
    # it expires here 120 s after it arrived, whatever its ttl says
    assert offers_in(peer.session_ended(session, T0 + 121)) == []
    assert peer.waiting_wants() == []


def test_an_offer_left_unaccepted_is_withdrawn_for_another_senders_want() -> None:
    peer = started(2)
    assert offers_in(peer.got_want(want("fake", slots=1000, sender="mallory"), T0)) != []
    assert peer.got_want(want("real", slots=2, sender="alice"), T0 + 1) == []
    assert peer.next_deadline() == T0 + 2.0  # when mallory's offer counts as unanswered
    assert peer.timer_expired(T0 + 1.9) == []
    assert peer.timer_expired(T0 + 2.0) == [
        Note("withdrew the offer of 2 slot(s) to job fake of mallory: not accepted within "
             "2 s while another job waits"),
        withdrawn(T0 + 2.0, "fake"),
        offer(T0 + 2.0, "real", 2, 2),
    ]
    assert peer.strikes("mallory") == 1
    assert peer.got_accept(accept("fake", n=1, sender="mallory"), T0 + 2.1) == [
        Note("ignored an accept for job fake from mallory: no offer of ours is pending for "
             "that job (expired or never made)")
    ]
    assert peer.got_accept(accept("real", n=2), T0 + 2.1) == [
        OpenSession(1, "real", "alice", 2, "7-secret")
    ]


def test_an_unaccepted_offer_is_kept_while_nobody_else_waits() -> None:
    peer = started(2)
    peer.got_want(want("j1", slots=2), T0)
    assert peer.timer_expired(T0 + 5) == []
    assert peer.pending_offers() == {"j1": 2}
    assert peer.next_deadline() == T0 + 10.0  # its expiry


def test_a_sender_whose_offer_lapsed_waits_behind_the_others_until_one_is_accepted() -> None:
    peer = started(1)
    peer.got_want(want("m1", slots=1, sender="mallory"), T0)
    peer.timer_expired(T0 + 10)  # expired unaccepted: a strike, and the slot is free
    assert peer.strikes("mallory") == 1
    session = busy(peer, now=T0 + 11)
    peer.got_want(want("b1", slots=1, sender="bob"), T0 + 12)
    peer.got_want(want("m2", slots=1, sender="mallory"), T0 + 13)  # heard later, but struck
    assert peer.waiting_wants() == ["b1", "m2"]
    assert offers_in(peer.session_ended(session, T0 + 14))[0].job == "b1"
    # a sender that takes what it is offered is forgiven
    [m2] = offers_in(peer.got_withdraw(Withdraw(sender="bob", ts=T0, ttl=60, job="b1"),
                                       T0 + 15))
    assert m2.job == "m2"
    peer.got_accept(accept("m2", n=_last_key(m2), sender="mallory"), T0 + 15)
    assert peer.strikes("mallory") == 0


def test_a_sender_has_at_most_one_pending_offer() -> None:
    peer = started(4)
    assert [o.job for o in offers_in(peer.got_want(want("m1", slots=1, sender="m"), T0))] \
        == ["m1"]
    assert offers_in(peer.got_want(want("m2", slots=1, sender="m"), T0)) == []
    assert peer.free_slots == 3 and peer.waiting_wants() == ["m2"]
    assert [o.job for o in offers_in(peer.got_want(want("b1", slots=1, sender="b"), T0))] \
        == ["b1"]


@pytest.mark.parametrize("same_sender", [True, False])
def test_300_forged_wants_delay_a_real_want_by_the_answer_time_only(same_sender: bool) -> None:
    peer = started(2)
    for i in range(300):
        sender = "mallory" if same_sender else f"forged{i}"
        peer.got_message(Want(sender=sender, ts=T0, ttl=1e6, job=f"fake{i}", slots=1000,
                              python="3.11", session=SESSION_VERSION), T0)
    real = want("real", slots=2, sender="client:real", ts=T0 + 1)
    assert offers_in(peer.got_want(real, T0 + 1)) == []
    deadline = peer.next_deadline()
    assert deadline == T0 + 2.0
    assert [o.job for o in offers_in(peer.timer_expired(deadline))] == ["real"]


def test_the_workers_own_messages_are_bounded_by_its_bucket() -> None:
    peer = make_peer(100, messages_per_s=5.0, message_burst=20, hello_min_interval=1.0)
    peer.start(T0)  # a Hello: one token of twenty
    actions: List[Any] = []
    for i in range(100):
        actions += peer.got_want(want(f"j{i}", slots=1, sender=f"s{i}"), T0)
    publishes = [a for a in actions if isinstance(a, Publish)]
    assert len(publishes) == 19  # the rest of the burst (offers, and Hellos of the changes)
    assert len(peer.waiting_wants()) == 100 - len(offers_in(actions))
    assert peer.next_deadline() == pytest.approx(T0 + 0.2)  # the next token
    later = [a for a in peer.timer_expired(T0 + 1.0) if isinstance(a, Publish)]
    assert len(later) == 5  # five tokens a second
    # never more than five a second after the burst, and the worker says Hello meanwhile
    hellos = []
    for t in range(2, 40):
        published = [a.message for a in peer.timer_expired(T0 + t) if isinstance(a, Publish)]
        assert len(published) <= 5
        hellos += [m.ts for m in published if isinstance(m, Hello)]
    assert hellos and hellos[0] <= T0 + 30


# --- no amplification (issue 17, item 2) -----------------------------------------------------


def paced(slots: int = 4) -> Peer:
    peer = make_peer(slots, hello_min_interval=1.0)
    assert peer.start(T0) == [hello(T0, slots)]
    return peer


def client_hello(sender: str, ts: float = T0, ttl: float = 60.0) -> Hello:
    return Hello(sender=sender, ts=ts, ttl=ttl, role="client", python="3.11",
                 version="0.1.0", slots=0)


def test_one_hello_answers_every_newcomer_since_the_last_and_no_sooner_than_a_second() -> None:
    peer = paced()
    actions: List[Any] = []
    for i in range(1500):
        actions += peer.got_hello(client_hello(f"forged{i}"), T0 + 0.5)
    assert actions == []  # our start Hello went out 0.5 s ago
    assert peer.next_deadline() == T0 + 1.0
    assert peer.timer_expired(T0 + 1.0) == [hello(T0 + 1.0, 4)]
    assert peer.timer_expired(T0 + 5.0) == []  # one Hello answered them all
    assert peer.next_deadline() == T0 + 31.0  # the periodic one


def test_a_newcomer_answered_recently_is_not_answered_again() -> None:
    peer = paced()
    assert peer.got_hello(client_hello("alice"), T0 + 2) == [hello(T0 + 2, 4)]
    assert peer.got_hello(client_hello("alice", ts=T0 + 3), T0 + 3) == []
    # its Hello lapsed (T0 + 63): it is a newcomer again
    assert peer.got_hello(client_hello("alice", ts=T0 + 70), T0 + 70) == [hello(T0 + 70, 4)]


def test_a_forged_hello_that_lives_for_ever_is_answered_again_after_the_cap() -> None:
    peer = paced()
    assert peer.got_hello(client_hello("mallory", ttl=1e300), T0 + 2) == [hello(T0 + 2, 4)]
    peer.timer_expired(T0 + 199)  # (the periodic Hello, due meanwhile)
    assert peer.got_hello(client_hello("mallory", ts=T0 + 200), T0 + 200) == []
    peer.timer_expired(T0 + 302)
    # honoured for 300 s after it arrived, whatever its ttl said
    assert peer.got_hello(client_hello("mallory", ts=T0 + 303), T0 + 303) == [
        hello(T0 + 303, 4)]


def test_changes_of_free_slots_are_announced_at_once_while_tokens_last() -> None:
    peer = make_peer(4, hello_min_interval=1.0, messages_per_s=1.0, message_burst=6)
    peer.start(T0)  # 4 tokens left
    assert peer.got_want(want("j1", slots=1), T0 + 0.2) == [offer(T0 + 0.2, "j1", 1, 1),
                                                            hello(T0 + 0.2, 3)]
    assert peer.got_want(want("j2", slots=1, sender="bob"), T0 + 0.4) == [
        offer(T0 + 0.4, "j2", 1, 2, "bob"), hello(T0 + 0.4, 2)]
    assert peer.got_want(want("j3", slots=1, sender="carol"), T0 + 0.5) == [
        offer(T0 + 0.5, "j3", 1, 3, "carol")]  # no token left for the Hello ...
    assert peer.next_deadline() == pytest.approx(T0 + 1.0)  # ... until the next one
    assert peer.timer_expired(T0 + 1.0) == [hello(T0 + 1.0, 1)]
