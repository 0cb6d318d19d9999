"""Pure regressions found by the fault suite (no I/O): each names the fault that showed it."""

from __future__ import annotations

from p2ppool.recruit import AcceptOffer, PublishWant, PublishWithdraw, Recruiter

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
