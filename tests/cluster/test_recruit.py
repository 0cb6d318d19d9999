"""The client's recruiting logic: exact commands for given events and times (pure, no I/O)."""

from __future__ import annotations

import pytest

from p2ppool.cluster.recruit import (
    AbandonSession,
    AcceptOffer,
    PublishWant,
    PublishWithdraw,
    Recruiter,
)

PY = "3.11"
K1, K2, K3 = "key-one", "key-two", "key-three"  # opaque to the recruiter


def make(**kwargs: float) -> Recruiter:
    settings = dict(
        want_repeat_s=5.0, want_min_interval_s=0.5, offer_window_s=0.1,
        accept_timeout_s=10.0, retry_first_s=2.0, retry_factor=2.0, retry_max_s=5.0,
        offer_margin_s=0.0,
    )
    settings.update(kwargs)
    return Recruiter(PY, **settings)


def test_want_goes_out_at_once_when_demand_starts() -> None:
    r = make()
    assert r.next_wakeup(0.0) is None
    assert r.set_demand(3, 100.0) == [PublishWant(3)]
    assert r.next_wakeup(100.0) == 105.0


def test_no_want_without_demand() -> None:
    r = make()
    assert r.set_demand(0, 100.0) == []
    assert r.got_hello("w1", PY, 100.0) == []
    assert r.next_wakeup(100.0) is None


def test_want_repeats_while_slots_are_wanted() -> None:
    r = make()
    r.set_demand(2, 100.0)
    assert r.timer_expired(104.9) == []
    assert r.timer_expired(105.0) == [PublishWant(2)]
    assert r.next_wakeup(105.0) == 110.0


def test_new_worker_hello_asks_again_soon_but_not_twice_at_once() -> None:
    r = make()
    r.set_demand(2, 100.0)
    assert r.got_hello("w1", PY, 100.2) == []  # within the least interval
    assert r.next_wakeup(100.2) == 100.5
    assert r.timer_expired(100.5) == [PublishWant(2)]
    # The same worker's periodic Hello is not news.
    assert r.got_hello("w1", PY, 101.5) == []
    assert r.next_wakeup(101.5) == 105.5
    # A second worker, after the least interval: at once.
    assert r.got_hello("w2", PY, 101.6) == [PublishWant(2)]


def test_higher_demand_asks_again_lower_does_not() -> None:
    r = make()
    r.set_demand(2, 100.0)
    assert r.set_demand(1, 100.1) == []
    assert r.set_demand(4, 100.2) == []  # rate limited
    assert r.timer_expired(100.5) == [PublishWant(4)]


def test_offers_are_gathered_for_the_window_then_largest_first() -> None:
    r = make(offer_quiet_s=1.0)  # answers keep coming: the window decides
    r.set_demand(3, 100.0)
    assert r.got_offer("w-small", 1, K1, 200.0, 100.01) == []
    assert r.got_offer("w-big", 4, K2, 200.0, 100.05) == []
    assert r.next_wakeup(100.05) == pytest.approx(100.11)
    # 4 slots cover the 3 wanted: one session (taking 3 of them), the small worker is not
    # needed.
    # Covered: the Want is withdrawn, so that w-small's slot is not held for nothing.
    assert r.timer_expired(100.11) == [AcceptOffer("w-big", K2, 3), PublishWithdraw()]
    assert r.outstanding == 3 and r.wanted == 0
    assert r.pending() == ["w-big"]


def test_a_burst_of_offers_that_is_over_is_chosen_from_before_the_window_ends() -> None:
    r = make(offer_window_s=0.1, offer_quiet_s=0.02)
    r.set_demand(3, 100.0)
    assert r.got_offer("w-small", 1, K1, 200.0, 100.01) == []
    assert r.got_offer("w-big", 4, K2, 200.0, 100.015) == []
    # No offer for 20 ms after the last one: the burst is over, 75 ms before the window ends.
    assert r.next_wakeup(100.015) == pytest.approx(100.035)
    assert r.timer_expired(100.034) == []
    assert r.timer_expired(100.035) == [AcceptOffer("w-big", K2, 3), PublishWithdraw()]


def test_offers_that_keep_coming_are_chosen_from_when_the_window_ends() -> None:
    r = make(offer_window_s=0.1, offer_quiet_s=0.02)
    r.set_demand(5, 100.0)
    for i in range(7):  # one every 15 ms: never 20 ms without one
        assert r.got_offer(f"w{i}", 1, f"key-{i}", 200.0, 100.0 + 0.015 * i) == []
        assert r.next_wakeup(100.0 + 0.015 * i) == pytest.approx(
            min(100.1, 100.0 + 0.015 * i + 0.02))
    assert r.timer_expired(100.1) == [AcceptOffer(f"w{i}", f"key-{i}", 1) for i in range(5)] + [
        PublishWithdraw()]


def test_fewest_sessions_that_cover_the_demand() -> None:
    r = make()
    r.set_demand(5, 100.0)
    r.got_offer("a", 2, K1, 200.0, 100.0)
    r.got_offer("b", 2, K2, 200.0, 100.0)
    r.got_offer("c", 3, K3, 200.0, 100.0)
    assert r.timer_expired(100.1) == [AcceptOffer("c", K3, 3), AcceptOffer("a", K1, 2),
                                      PublishWithdraw()]
    assert r.wanted == 0


def test_ties_go_to_the_earlier_offer() -> None:
    r = make()
    r.set_demand(1, 100.0)
    r.got_offer("late", 2, K1, 200.0, 100.05)
    r.got_offer("early", 2, K2, 200.0, 100.02)
    assert r.timer_expired(100.12) == [AcceptOffer("early", K2, 1), PublishWithdraw()]


def test_partial_cover_keeps_asking_for_the_rest() -> None:
    r = make()
    r.set_demand(4, 100.0)
    r.got_offer("a", 1, K1, 200.0, 100.0)
    # One slot accepted, three still wanted: more than the last Want asked?  No: 3 < 4.
    assert r.timer_expired(100.1) == [AcceptOffer("a", K1, 1)]
    assert r.wanted == 3
    assert r.timer_expired(105.0) == [PublishWant(3)]


def test_one_session_per_worker_and_the_offer_key_is_used_once() -> None:
    r = make()
    r.set_demand(4, 100.0)
    r.got_offer("a", 1, K1, 200.0, 100.0)
    assert r.timer_expired(100.1) == [AcceptOffer("a", K1, 1)]
    assert r.got_offer("a", 1, K2, 200.0, 100.2) == []  # it already has a session
    assert r.timer_expired(100.4) == []


def test_ready_slots_count_until_the_pool_is_told() -> None:
    r = make()
    r.set_demand(2, 100.0)
    r.got_offer("a", 2, K1, 200.0, 100.0)
    r.timer_expired(100.1)
    assert r.session_ready("a", 2, 100.3) == []
    # The pool's demand was computed before it heard of "a": no new Want.
    assert r.set_demand(2, 100.4) == []
    assert r.wanted == 0
    assert r.joined_reported("a", 100.5) == []
    assert (r.outstanding, r.demand) == (0, 0)
    # Now a demand of 2 is on top of "a": ask for it.
    assert r.set_demand(2, 100.6) == [PublishWant(2)]


def test_pending_accept_times_out_and_the_worker_waits_out_a_backoff() -> None:
    r = make()
    r.set_demand(1, 100.0)
    r.got_offer("a", 1, K1, 300.0, 100.0)
    r.timer_expired(100.1)
    assert r.next_wakeup(100.1) == pytest.approx(110.1)
    assert r.timer_expired(110.0) == []
    cause = "its session was not ready within 10 s"
    # Slots are wanted again at once; the Want is older than the least interval.
    assert r.timer_expired(110.1) == [AbandonSession("a", cause), PublishWant(1)]
    assert r.pending() == []
    # A fresh offer from "a" waits for the backoff (2 s).
    assert r.got_offer("a", 1, K2, 300.0, 110.2) == []
    assert r.next_wakeup(110.2) == pytest.approx(112.1)
    assert r.timer_expired(112.1) == [AcceptOffer("a", K2, 1), PublishWithdraw()]


def test_backoff_grows_and_is_capped() -> None:
    r = make()
    r.set_demand(1, 0.0)
    retry_at = []
    now = 0.0
    for _ in range(4):
        r.got_offer("a", 1, K1, 1000.0, now)
        now += 0.1
        while r.pending() != ["a"]:
            r.timer_expired(now)
            now = r.next_wakeup(now) or now + 1
        r.session_failed("a", now)
        r.got_offer("a", 1, K1, 1000.0, now)
        retry_at.append(round(r.next_wakeup(now) - now, 3))  # type: ignore[operator]
    assert retry_at == [2.0, 4.0, 5.0, 5.0]


def test_ready_resets_the_backoff() -> None:
    r = make()
    r.set_demand(1, 0.0)
    r.got_offer("a", 1, K1, 1000.0, 0.0)
    r.timer_expired(0.1)
    r.session_failed("a", 1.0)
    r.got_offer("a", 1, K2, 1000.0, 1.0)
    assert r.timer_expired(3.0) == [AcceptOffer("a", K2, 1), PublishWithdraw()]
    r.session_ready("a", 1, 3.5)
    r.joined_reported("a", 3.5)
    r.session_failed("a", 4.0)  # a lost session after Ready: first failure again
    assert r.set_demand(1, 4.0) == [PublishWant(1)]
    r.got_offer("a", 1, K3, 1000.0, 4.0)
    assert r.next_wakeup(4.0) == 6.0


def test_refusal_is_final_for_the_job() -> None:
    r = make()
    r.set_demand(1, 100.0)
    r.got_offer("old", 1, K1, 300.0, 100.0)
    r.timer_expired(100.1)
    r.session_refused("old", "python 3.11 is not 3.12", 100.2)
    assert r.refused_by() == {"old": "python 3.11 is not 3.12"}
    assert r.got_offer("old", 1, K2, 300.0, 100.3) == []
    assert r.timer_expired(1000.0) == [PublishWant(1)]  # still asking, never accepting "old"


def test_incompatible_python_in_hello_is_never_accepted() -> None:
    r = make()
    r.set_demand(1, 100.0)
    r.got_hello("py27", "2.7", 100.0)
    assert r.got_offer("py27", 8, K1, 300.0, 100.0) == []
    assert r.timer_expired(100.1) == []
    assert r.got_offer("ok", 1, K2, 300.0, 100.2) == []
    assert r.timer_expired(100.3) == [AcceptOffer("ok", K2, 1), PublishWithdraw()]


def test_expired_offers_are_not_accepted() -> None:
    r = make()
    r.got_offer("a", 1, K1, 100.5, 100.0)
    assert r.set_demand(1, 101.0) == [PublishWant(1)]
    assert r.timer_expired(101.2) == []


def test_offers_about_to_expire_are_not_accepted() -> None:
    r = make(offer_margin_s=2.0)
    assert r.set_demand(1, 100.0) == [PublishWant(1)]
    r.got_offer("a", 1, K1, 103.0, 100.0)
    assert r.timer_expired(101.0) == []  # 2.0 s left: too late to accept
    r2 = make(offer_margin_s=2.0)
    r2.set_demand(1, 100.0)
    r2.got_offer("a", 1, K1, 103.0, 100.0)
    assert r2.timer_expired(100.9) == [AcceptOffer("a", K1, 1), PublishWithdraw()]  # 2.1 s


def test_offers_that_come_with_no_want_out_are_ignored() -> None:
    # Such an offer answered a Want withdrawn since; the worker dropped it on the Withdraw.
    r = make()
    r.got_offer("a", 2, K1, 300.0, 100.0)
    assert r.set_demand(1, 101.0) == [PublishWant(1)]
    assert r.timer_expired(101.1) == []


def test_a_late_offer_is_taken_only_for_the_slots_still_wanted() -> None:
    # Pool(2): w1 offers its last free slot first, w2 offers 2 after the window.  Taking
    # w2's offer whole would give the pool 3 slots, more chunks in flight than `processes`.
    r = make()
    r.set_demand(2, 100.0)
    r.got_offer("w1", 1, K1, 300.0, 100.0)
    assert r.timer_expired(100.1) == [AcceptOffer("w1", K1, 1)]
    assert r.got_offer("w2", 2, K2, 300.0, 100.2) == []
    assert r.timer_expired(100.3) == [AcceptOffer("w2", K2, 1), PublishWithdraw()]
    assert r.outstanding == 2 and r.wanted == 0
    # Both Ready: the pool is told of 2 slots in all.
    r.session_ready("w1", 1, 100.5)
    r.session_ready("w2", 1, 100.6)
    assert r.outstanding == 2


def test_withdraw_when_covered_and_when_demand_drops_to_zero() -> None:
    r = make()
    r.set_demand(2, 100.0)
    r.got_offer("a", 1, K1, 300.0, 100.0)
    r.got_offer("b", 1, K2, 300.0, 100.0)
    assert r.timer_expired(100.1) == [AcceptOffer("a", K1, 1), AcceptOffer("b", K2, 1),
                                      PublishWithdraw()]  # after the Accepts
    assert r.set_demand(0, 100.2) == []  # withdrawn already
    assert r.set_demand(3, 100.3) == [PublishWant(1)]  # not covered: asks at once
    assert r.set_demand(0, 100.4) == [PublishWithdraw()]
    assert r.set_demand(0, 100.5) == []
    # Demand again (pending "a" and "b" cover 2): nothing; 3 asks at once after a Withdraw.
    assert r.set_demand(2, 100.6) == []
    assert r.set_demand(3, 100.6) == [PublishWant(1)]


def test_a_covered_want_drops_the_other_offers_and_a_failure_asks_again_at_once() -> None:
    r = make()
    r.set_demand(1, 100.0)
    r.got_offer("a", 1, K1, 300.0, 100.0)
    r.got_offer("b", 1, K2, 300.0, 100.01)
    assert r.timer_expired(100.1) == [AcceptOffer("a", K1, 1), PublishWithdraw()]
    # b dropped its offer on the Withdraw: it is not accepted when "a" fails ...
    assert r.session_failed("a", 100.5) == [PublishWant(1)]  # ... the job asks again at once
    assert r.timer_expired(100.6) == []
    r.got_offer("b", 1, K3, 300.0, 100.7)
    assert r.timer_expired(100.8) == [AcceptOffer("b", K3, 1), PublishWithdraw()]


def test_close_withdraws_once_and_ignores_everything_after() -> None:
    r = make()
    r.set_demand(1, 100.0)
    assert r.close(100.1) == [PublishWithdraw()]
    assert r.close(100.2) == []
    assert r.set_demand(3, 100.3) == []
    assert r.got_offer("a", 1, K1, 300.0, 100.3) == []
    assert r.timer_expired(200.0) == []
    assert r.next_wakeup(200.0) is None


def test_close_without_a_want_out_publishes_nothing() -> None:
    assert make().close(1.0) == []


def test_bye_abandons_a_session_being_opened() -> None:
    r = make()
    r.set_demand(1, 100.0)
    r.got_offer("a", 1, K1, 300.0, 100.0)
    r.timer_expired(100.1)
    # The covered Want was withdrawn: the slot lost again is asked for at once.
    assert r.got_bye("a", 100.2) == [
        AbandonSession("a", "it left the board before the session opened"), PublishWant(1),
    ]


def test_bye_forgets_an_idle_worker_so_its_return_is_news() -> None:
    r = make()
    r.set_demand(1, 100.0)
    assert r.got_hello("a", PY, 100.6) == [PublishWant(1)]
    assert r.got_bye("a", 101.0) == []
    assert r.got_hello("a", PY, 101.2) == [PublishWant(1)]


def test_bad_demand_is_refused() -> None:
    with pytest.raises(ValueError, match="demand must be >= 0"):
        make().set_demand(-1, 0.0)


def test_a_busy_worker_becoming_free_is_news() -> None:
    r = make()
    assert r.got_hello("a", PY, 100.0, slots=0) == []
    assert r.set_demand(1, 100.0) == [PublishWant(1)]
    assert r.got_hello("a", PY, 101.0, slots=0) == []  # still busy: nothing new
    assert r.got_hello("a", PY, 102.0, slots=2) == [PublishWant(1)]  # free again: ask now
    assert r.got_hello("a", PY, 103.0, slots=1) == []  # was not busy
    assert r.next_wakeup(103.0) == 107.0


def test_silent_workers_are_forgotten_but_not_busy_or_refused_ones() -> None:
    r = make(forget_silent_s=90.0)
    r.set_demand(1, 0.0)
    for i in range(50):  # workers killed without a Bye: heard once, never again
        r.got_hello(f"gone{i}", PY, float(i))
    r.session_refused("refuser", "too old", 1.0)
    r.got_offer("busy", 1, K1, 1000.0, 1.0)
    r.timer_expired(1.2)  # the offer window closes: busy is accepted
    assert r.pending() == ["busy"]
    r.got_hello("fresh", PY, 100.0)
    # silent for 90 s or more: gone0 to gone10 (heard at 0-10 s)
    assert r.known() == sorted(["busy", "fresh", "refuser"] + [f"gone{i}" for i in range(11, 50)])
    r.got_hello("fresh", PY, 200.0)  # everyone silent for 90 s and idle is gone now
    assert r.known() == ["busy", "fresh", "refuser"]


# --- issue 17: withdrawn offers, bounded state ----------------------------------------------


def test_a_withdrawn_offer_is_forgotten_before_it_is_accepted() -> None:
    r = make()
    r.set_demand(1, 100.0)
    r.got_offer("a", 1, K1, 300.0, 100.0)
    assert r.offer_withdrawn("a", 100.05) == []
    assert r.timer_expired(100.2) == []  # nothing left to accept
    assert r.pending() == []


def test_a_withdrawn_offer_abandons_its_session_and_asks_again_without_backoff() -> None:
    r = make()
    r.set_demand(1, 100.0)
    r.got_offer("a", 1, K1, 300.0, 100.0)
    r.timer_expired(100.1)  # accepted; the covered Want is withdrawn
    assert r.pending() == ["a"]
    assert r.offer_withdrawn("a", 100.2) == [
        AbandonSession("a", "it withdrew its offer before the session opened"),
        PublishWant(1),
    ]
    # no backoff: a's next offer is taken at once
    assert r.got_offer("a", 1, K2, 300.0, 100.3) == []
    assert r.timer_expired(100.4)[0] == AcceptOffer("a", K2, 1)


def test_an_offer_withdrawn_by_a_worker_we_never_heard_is_ignored() -> None:
    r = make()
    r.set_demand(1, 100.0)
    assert r.offer_withdrawn("stranger", 100.1) == []
    assert r.known() == []


def test_forged_worker_names_cannot_grow_the_state() -> None:
    r = make(workers_kept=8)
    r.set_demand(1, 0.0)
    r.got_offer("busy", 1, K1, 1000.0, 0.0)
    r.timer_expired(0.2)
    assert r.pending() == ["busy"]
    for i in range(1500):
        r.got_hello(f"forged{i}", PY, 1.0 + i * 0.001)
    known = r.known()
    assert len(known) == 8 and "busy" in known  # a worker with a session is never dropped
    assert "forged1499" in known
