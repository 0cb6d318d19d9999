"""Unit tests of the board's hub (p2ppool.board.hub): fake sessions, no SSH, no threads of ours."""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List

import pytest

from p2ppool.board.hub import TICK_S, BoardHub, HubSession, SessionGone
from p2ppool.board.keys import UserKey
from p2ppool.board.state import BufferPolicy
from p2ppool.errors import AccessDenied

ALICE = UserKey("alice", "SHA256:aaa")
BOB = UserKey("bob", "SHA256:bbb")


class FakeSession:
    """A session as the hub sees it (HubSession): records what the fast path sends."""

    def __init__(self, sid: int, user: UserKey, *, window: int = 1 << 30) -> None:
        self.sid = sid
        self.user = user
        self.wake = threading.Event()
        self.send_lock = threading.Lock()
        self.pending = b""
        self.fast_path = True
        self.closed = False
        self.window = window
        self.sent: List[bytes] = []

    def gone(self) -> bool:
        return self.closed

    def send_nowait(self, data: bytes) -> int:
        taken = data[: self.window]
        self.window -= len(taken)
        if taken:
            self.sent.append(taken)
        return len(taken)


def make_hub(**kw: Any) -> BoardHub:
    policy = kw.pop("policy", BufferPolicy())
    options: Dict[str, Any] = {
        "max_sessions_per_key": 2, "messages_per_s": None, "message_burst": 1,
    }
    options.update(kw)
    return BoardHub({"alice", "bob"}, policy, **options)


def session(hub: BoardHub, user: UserKey = ALICE, **kw: Any) -> FakeSession:
    return hub.register(lambda sid: FakeSession(sid, user, **kw))


def join(hub: BoardHub, s: HubSession, role: str, topic: str = "t", **kw: Any) -> str:
    options: Dict[str, Any] = {"public": False, "access": (), "keep_alive": False, "replay": False,
               "dispatcher": "multicast"}
    options.update(kw)
    return hub.join(s, client_id=f"c{s.sid}", role=role, topic=topic, **options)


def test_register_numbers_sessions_from_one() -> None:
    hub = make_hub()
    assert [session(hub).sid for _ in range(3)] == [1, 2, 3]


def test_admit_limits_sessions_per_key_and_end_session_gives_the_slot_back() -> None:
    hub = make_hub(max_sessions_per_key=2)
    first, second, third = session(hub), session(hub), session(hub)
    assert hub.admit(first) is None
    assert hub.admit(second) is None
    refusal = hub.admit(third)
    assert refusal is not None and "limit 2" in refusal
    assert hub.admit(session(hub, BOB)) is None  # another key has its own count
    hub.end_session(third)  # a refused session gives nothing back
    assert hub.admit(session(hub)) is not None
    hub.end_session(first)
    assert hub.admit(session(hub)) is None
    assert hub.admit(session(hub)) is not None


def test_take_message_charges_the_key_and_refuses_over_the_burst() -> None:
    hub = make_hub(messages_per_s=0.001, message_burst=3)
    assert [hub.take_message(ALICE) for _ in range(3)] == [None, None, None]
    refusal = hub.take_message(ALICE)
    assert refusal is not None
    assert refusal.startswith("message rate limit exceeded: key SHA256:aaa (alice)")
    assert "bursts of 3" in refusal
    assert hub.take_message(BOB) is None  # buckets are per key


def test_take_message_without_a_rate_never_refuses() -> None:
    hub = make_hub(messages_per_s=None)
    assert all(hub.take_message(ALICE) is None for _ in range(10_000))


def test_publish_to_no_receivers_without_block_returns_at_once() -> None:
    hub = make_hub()
    pub = session(hub)
    assert join(hub, pub, "pub") == "alice/t"
    start = time.monotonic()
    hub.publish(pub, b"dropped\n", block=False)
    assert time.monotonic() - start < TICK_S / 2
    sub = session(hub)
    join(hub, sub, "sub")
    assert hub.take(sub.sid).data == b""  # nothing was queued for later receivers


def test_publish_sends_to_an_idle_receiver_from_the_writers_thread() -> None:
    hub = make_hub()
    pub, sub = session(hub), session(hub)
    join(hub, pub, "pub")
    join(hub, sub, "sub")
    hub.publish(pub, b"line\n", block=False)
    assert sub.sent == [b"line\n"]
    assert not sub.wake.is_set()
    assert hub.take(sub.sid) == (b"", None, "", False)


def test_fan_out_leaves_a_busy_or_slow_receiver_to_its_own_thread() -> None:
    hub = make_hub()
    pub, off, busy, short = session(hub), session(hub), session(hub), session(hub, window=2)
    off.fast_path = False
    join(hub, pub, "pub")
    for s in (off, busy, short):
        join(hub, s, "sub")
    with busy.send_lock:
        hub.publish(pub, b"line\n", block=False)
    assert off.sent == [] and off.wake.is_set()
    assert busy.sent == [] and busy.wake.is_set()
    assert short.sent == [b"li"] and short.pending == b"ne\n" and short.wake.is_set()
    assert hub.take(off.sid).data == b"line\n"
    assert hub.take(busy.sid).data == b"line\n"
    assert hub.take(short.sid).data == b""  # the rest is in its pending, not its buffer


def test_take_batches_what_piled_up() -> None:
    hub = make_hub()
    pub, sub = session(hub), session(hub)
    sub.fast_path = False
    join(hub, pub, "pub")
    join(hub, sub, "sub")
    for text in (b"a\n", b"b\n", b"c\n"):
        hub.publish(pub, text, block=False)
    assert hub.take(sub.sid) == (b"a\nb\nc\n", None, "", False)


def test_end_session_applies_the_departure_rule_and_wakes_the_ended() -> None:
    hub = make_hub()
    pub, sub = session(hub), session(hub)
    join(hub, pub, "pub")
    join(hub, sub, "sub")
    hub.end_session(pub)
    assert sub.wake.is_set()
    assert hub.take(sub.sid).ending == "departure"
    hub.end_session(sub)
    assert hub.take(sub.sid).ending == "gone"
    assert hub.channel_members("alice/t") == {}


def test_a_blocking_pub_waits_for_its_first_receiver() -> None:
    hub = make_hub()
    pub = session(hub)
    join(hub, pub, "pub")
    assert hub.wait_if_alone(pub.sid)
    assert hub.channel_members("alice/t") == {"waiting-pub": ["alice"]}
    assert not hub.wait_for_receiver(pub, time.monotonic())
    with pytest.raises(AccessDenied):  # bob may not use alice's channel
        join(hub, session(hub, BOB), "sub", topic="alice/t")
    sub = session(hub)
    join(hub, sub, "sub")
    assert hub.wait_for_receiver(pub, time.monotonic() + 5)
    assert hub.channel_members("alice/t") == {"pub": ["alice"], "sub": ["alice"]}
    assert not hub.wait_if_alone(pub.sid)


def test_waiting_for_a_receiver_ends_when_the_session_is_gone() -> None:
    hub = make_hub()
    pub = session(hub)
    join(hub, pub, "pub")
    hub.wait_if_alone(pub.sid)
    pub.closed = True
    with pytest.raises(SessionGone):
        hub.wait_for_receiver(pub, time.monotonic() + 5)
    with pytest.raises(SessionGone):
        hub.publish(pub, b"x", block=True)


def test_a_full_receiver_is_evicted_after_the_grace_period() -> None:
    hub = make_hub(policy=BufferPolicy(max_buffer_bytes=10, slow_reader_grace_s=0.01))
    pub, sub = session(hub), session(hub)
    sub.fast_path = False
    join(hub, pub, "pub")
    join(hub, sub, "sub")
    hub.publish(pub, b"0123456789", block=False)
    assert not hub.is_evicted(sub.sid)
    sub.wake.clear()
    hub.publish(pub, b"more", block=False)  # waits up to the grace period, then evicts
    assert hub.is_evicted(sub.sid)
    assert sub.wake.is_set()
    batch = hub.take(sub.sid)
    assert batch.data == b"" and batch.ending == "evicted"
    assert "alice/t" in batch.message


def test_listing_shows_the_users_channels() -> None:
    hub = make_hub()
    join(hub, session(hub), "pub")
    assert hub.listing("alice").startswith("Channel Information\r\n- alice/t:")
    assert hub.listing("bob") == "no pubsub channels found\n"


def test_set_users_protects_a_new_users_namespace() -> None:
    hub = make_hub()
    assert join(hub, session(hub), "sub", topic="carol/t") == "alice/carol/t"
    hub.set_users({"alice", "bob", "carol"})
    with pytest.raises(AccessDenied):
        join(hub, session(hub), "sub", topic="carol/t")


def test_stop_wakes_every_session_once() -> None:
    hub = make_hub()
    sessions = [session(hub) for _ in range(3)]
    assert not hub.stopping
    assert hub.stop()
    assert hub.stopping
    assert all(s.wake.is_set() for s in sessions)
    assert not hub.stop()
