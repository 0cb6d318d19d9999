"""Recruiter.session_released: a session the job let go (idle) is not a failure (pure)."""

from __future__ import annotations

from p2ppool.cluster.recruit import AcceptOffer, PublishWant, PublishWithdraw, Recruiter

PY = "3.11"


def _joined(r: Recruiter) -> None:
    """w1 (2 slots) recruited and reported to the pool, starting at t=100."""
    assert r.set_demand(2, 100.0) == [PublishWant(2)]
    r.got_hello("w1", PY, 100.0, slots=2)
    r.got_offer("w1", 2, "k1", 200.0, 100.1)
    assert r.timer_expired(100.2) == [AcceptOffer("w1", "k1", 2), PublishWithdraw()]
    r.session_ready("w1", 2, 100.5)
    r.joined_reported("w1", 100.6)
    r.set_demand(0, 101.0)


def _recruit_again(r: Recruiter, now: float) -> list:
    r.set_demand(2, now)
    r.got_offer("w1", 2, "k2", now + 100, now)
    return r.timer_expired(now + 0.2)


def test_a_released_worker_is_accepted_again_at_once() -> None:
    r = Recruiter(PY, offer_window_s=0.1, retry_first_s=2.0, offer_margin_s=0.0)
    _joined(r)
    r.session_released("w1", 101.0)
    assert r.outstanding == 0
    assert _recruit_again(r, 101.1) == [AcceptOffer("w1", "k2", 2), PublishWithdraw()]


def test_a_failed_session_waits_out_its_backoff_instead() -> None:
    r = Recruiter(PY, offer_window_s=0.1, retry_first_s=2.0, offer_margin_s=0.0)
    _joined(r)
    r.session_failed("w1", 101.0)
    assert _recruit_again(r, 101.1) == []  # retry only from 103.0


def test_releasing_an_unknown_worker_does_nothing() -> None:
    r = Recruiter(PY)
    assert r.session_released("nobody", 1.0) == []
