"""Pure regressions found by the fault suite (no I/O): each names the fault that showed it."""

from __future__ import annotations

from p2ppool.cluster.recruit import AcceptOffer, PublishWant, PublishWithdraw, Recruiter

PY = "3.11"


def test_offers_made_before_a_withdraw_are_not_accepted_after_it() -> None:
    """Workers drop their offer when the job is withdrawn; accepting it later would wait
    out the accept timeout (found: a frozen worker's replacement took 15 s to recruit)."""
    r = Recruiter(PY, offer_window_s=0.1, offer_margin_s=0.0)
    assert r.got_hello("w1", PY, 0.0) == []
    assert r.got_hello("w2", PY, 0.0) == []
    assert r.set_demand(2, 0.0) == [PublishWant(2)]
    r.got_offer("w1", 2, "k1", 10.0, 0.0)
    r.got_offer("w2", 2, "k2", 10.0, 0.0)
    # Covered: withdrawn at once (w2 drops its offer)
    assert r.timer_expired(0.2) == [AcceptOffer("w1", "k1", 2), PublishWithdraw()]
    r.session_ready("w1", 2, 0.5)
    r.joined_reported("w1", 0.5)
    assert r.set_demand(0, 0.6) == []
    # w1 is lost: demand again.  w2's old offer is gone with the Withdraw: a Want, no Accept.
    r.session_failed("w1", 1.0)
    commands = r.set_demand(2, 1.0)
    assert not any(isinstance(c, AcceptOffer) for c in commands), commands
    assert PublishWant(2) in commands


def test_an_offer_that_arrives_after_a_covered_want_was_withdrawn_is_not_accepted() -> None:
    """Found by a second reader: withdrawing as soon as a Want is covered makes late answers
    common (any offer more than the 30 ms window after the first).  The worker drops its
    offer when it sees the Withdraw; accepting it when a session then failed made the pool
    wait out the accept timeout (15 s) for a worker that would never connect."""
    r = Recruiter(PY, offer_window_s=0.03, offer_margin_s=0.0)
    assert r.set_demand(2, 100.0) == [PublishWant(2)]
    r.got_offer("a", 2, "k1", 110.0, 100.0)
    assert r.timer_expired(100.03) == [AcceptOffer("a", "k1", 2), PublishWithdraw()]
    assert r.got_offer("b", 2, "k2", 110.0, 100.05) == []  # sent before b saw the Withdraw
    # "a" fails: the job asks again, it does not accept b's dropped offer
    assert r.session_failed("a", 100.5) == [PublishWant(2)]
