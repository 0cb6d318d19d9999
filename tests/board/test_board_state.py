"""Unit tests of the board server's pure state (p2ppool.board.state): no I/O, explicit now."""

from __future__ import annotations

from typing import Any, Dict

import pytest

from p2ppool.board.state import ERROR_SLOW_READER, BoardState, BufferPolicy
from p2ppool.errors import AccessDenied

FP = {"alice": "SHA256:aaa", "bob": "SHA256:bbb", "carol": "SHA256:ccc"}


def make_state(**policy: Any) -> BoardState:
    return BoardState({"alice", "bob", "carol"}, BufferPolicy(**policy))


_next_sid = [0]


def join(state: BoardState, user: str, role: str, topic: str, **kw: Any) -> int:
    _next_sid[0] += 1
    sid = _next_sid[0]
    state.join(
        sid,
        client_id=f"{sid:04d} ({user}@127.0.0.1:{sid})",
        user=user,
        fingerprint=FP[user],
        role=role,
        topic=topic,
        **kw,
    )
    return sid


# --- names and access lists -------------------------------------------------------------


@pytest.mark.parametrize(
    "topic, public, name",
    [
        ("x", False, "alice/x"),
        ("alice/x", False, "alice/x"),
        ("bob/x", False, "bob/x"),  # another user's namespace: access list decides
        ("team/x", False, "alice/team/x"),  # not a user: alice's own nested topic
        ("x", True, "public/x"),
        ("public/x", True, "public/x"),
        ("public/x", False, "alice/public/x"),
        ("", False, "alice/"),
    ],
)
def test_resolve(topic: str, public: bool, name: str) -> None:
    assert make_state().resolve("alice", topic, public) == name


def test_access_list_admits_listed_user_and_refuses_others() -> None:
    state = make_state()
    join(state, "alice", "pipe", "t", access=["bob"])
    assert state.channels["alice/t"].access == ("bob",)
    bob = join(state, "bob", "pipe", "alice/t")
    assert state.members[bob].channel == "alice/t"
    with pytest.raises(AccessDenied, match="^access denied$"):
        join(state, "carol", "sub", "alice/t")


def test_fingerprint_entries() -> None:
    state = make_state()
    join(state, "alice", "pipe", "t", access=[FP["carol"]])
    carol = join(state, "carol", "sub", "alice/t")
    assert state.members[carol].channel == "alice/t"
    with pytest.raises(AccessDenied):
        join(state, "bob", "sub", "alice/t")


def test_foreign_channel_without_list_or_not_open_is_denied() -> None:
    state = make_state()
    with pytest.raises(AccessDenied):
        join(state, "bob", "sub", "alice/t")  # alice has not opened it
    join(state, "alice", "pipe", "t")  # no list
    with pytest.raises(AccessDenied):
        join(state, "bob", "sub", "alice/t")


def test_b1_a_stranger_cannot_become_creator() -> None:
    # pico bug B1: carol's first connection to alice/x made her "creator" and let her in.
    state = make_state()
    join(state, "alice", "pipe", "x", access=["bob"])
    for _ in range(2):
        with pytest.raises(AccessDenied):
            join(state, "carol", "pub", "alice/x", access=["carol"])
    assert state.channels["alice/x"].access == ("bob",)


def test_b2_guest_leaving_keeps_the_owners_list() -> None:
    state = make_state()
    alice = join(state, "alice", "pipe", "x", access=["bob"])
    join(state, "alice", "sub", "x", keep_alive=True)
    bob = join(state, "bob", "pipe", "alice/x")
    state.leave(bob)
    assert state.channels["alice/x"].access == ("bob",)
    with pytest.raises(AccessDenied):
        join(state, "carol", "sub", "alice/x")
    assert alice in state.members


def test_b3_list_outlives_its_setter_while_channel_has_members() -> None:
    state = make_state()
    alice = join(state, "alice", "pipe", "x", access=["bob"])
    join(state, "bob", "sub", "alice/x", keep_alive=True)
    join(state, "bob", "sub", "alice/x", keep_alive=True)
    state.leave(alice)
    assert state.channels["alice/x"].access == ("bob",)
    with pytest.raises(AccessDenied):
        join(state, "carol", "sub", "alice/x")


def test_list_dropped_when_channel_empties_and_first_list_wins() -> None:
    state = make_state()
    a1 = join(state, "alice", "pipe", "x", access=["bob"])
    a2 = join(state, "alice", "pipe", "x", access=["carol"])  # ignored: a list exists
    assert state.channels["alice/x"].access == ("bob",)
    state.leave(a1)
    state.leave(a2)
    assert "alice/x" not in state.channels
    join(state, "alice", "pipe", "x", access=["carol"])
    assert state.channels["alice/x"].access == ("carol",)


def test_owner_sets_list_later_if_first_session_gave_none() -> None:
    state = make_state()
    join(state, "alice", "pipe", "x")
    join(state, "alice", "pipe", "x", access=["bob"])
    assert state.channels["alice/x"].access == ("bob",)


def test_guest_cannot_set_or_change_list() -> None:
    state = make_state()
    join(state, "alice", "pipe", "x", access=["bob"])
    join(state, "bob", "pipe", "alice/x", access=["carol"])
    assert state.channels["alice/x"].access == ("bob",)


def test_public_topics() -> None:
    state = make_state()
    join(state, "alice", "sub", "open", public=True)
    join(state, "carol", "pub", "open", public=True)  # no list: anyone
    join(state, "alice", "pipe", "club", public=True, access=["bob"])
    join(state, "bob", "sub", "club", public=True)
    join(state, "alice", "sub", "club", public=True)  # the list's setter
    with pytest.raises(AccessDenied):
        join(state, "carol", "pipe", "club", public=True)


# --- broker ---------------------------------------------------------------------------


def test_publish_reaches_receivers_not_sender_nor_pubs() -> None:
    state = make_state()
    a = join(state, "alice", "pipe", "t", access=["bob"])
    b = join(state, "bob", "pipe", "alice/t")
    s = join(state, "alice", "sub", "t")
    p = join(state, "alice", "pub", "t")
    result = state.publish(a, b"one\n", now=0.0)
    assert result.delivered and sorted(result.woken) == sorted([b, s])
    assert state.take(a, 1 << 20) == (b"", False)
    assert state.take(b, 1 << 20) == (b"one\n", False)
    assert state.take(s, 1 << 20) == (b"one\n", False)
    assert state.take(p, 1 << 20) == (b"", False)


def test_replay_and_total_order() -> None:
    state = make_state()
    a = join(state, "alice", "pipe", "t", replay=True)
    b = join(state, "alice", "pipe", "t")
    for i in range(5):
        state.publish(a if i % 2 else b, b"%d" % i, now=0.0)
    assert state.take_all(a) == b"01234"  # replay: a also gets its own chunks
    assert state.take_all(b) == b"13"  # without -r: only the others'


def test_woken_only_when_buffer_was_empty_and_take_coalesces() -> None:
    state = make_state()
    a = join(state, "alice", "pipe", "t")
    b = join(state, "alice", "pipe", "t")
    assert state.publish(a, b"x", 0.0).woken == [b]
    assert state.publish(a, b"y", 0.0).woken == []
    assert state.take(b, 1) == (b"x", False)  # at least one whole chunk
    state.publish(a, b"z", 0.0)
    assert state.take(b, 100) == (b"yz", False)


def test_no_receivers() -> None:
    state = make_state()
    p = join(state, "alice", "pub", "t")
    assert not state.has_receivers(p)
    result = state.publish(p, b"lost", 0.0)
    assert not result.delivered and result.no_receivers
    s = join(state, "alice", "sub", "t")
    assert state.has_receivers(p)
    assert state.take_all(s) == b""  # no history


def test_round_robin() -> None:
    state = make_state()
    w = join(state, "alice", "pipe", "t", dispatcher="round_robin")
    r1 = join(state, "alice", "sub", "t")
    r2 = join(state, "alice", "sub", "t")
    for i in range(4):
        state.publish(w, b"%d" % i, 0.0)
    got = sorted([state.take_all(r1), state.take_all(r2)])
    assert got == [b"02", b"13"]


def test_slow_reader_blocks_writers_then_is_evicted_after_grace() -> None:
    state = make_state(max_buffer_bytes=10, slow_reader_grace_s=5.0)
    w = join(state, "alice", "pipe", "t")
    slow = join(state, "alice", "sub", "t", keep_alive=True)
    fast = join(state, "alice", "sub", "t", keep_alive=True)
    assert state.publish(w, b"12345678", 0.0).delivered
    state.take_all(fast)
    full = state.publish(w, b"abcd", 1.0)
    assert not full.delivered and full.retry_at == 6.0 and full.evicted == []
    assert not state.publish(w, b"abcd", 5.9).delivered
    result = state.publish(w, b"abcd", 6.0)
    assert result.delivered and result.evicted == [slow]
    member = state.members[slow]
    assert member.ending == "evicted" and member.buffered == 0
    assert member.end_message == ERROR_SLOW_READER.format(name="alice/t", limit=10)
    assert state.take_all(fast) == b"abcd"
    assert state.take_all(slow) == b""
    # an evicted member no longer receives
    assert state.publish(w, b"more", 7.0).woken == [fast]


def test_draining_resets_the_stall() -> None:
    state = make_state(max_buffer_bytes=10, slow_reader_grace_s=5.0)
    w = join(state, "alice", "pipe", "t")
    r = join(state, "alice", "sub", "t")
    state.publish(w, b"12345678", 0.0)
    assert not state.publish(w, b"abcd", 1.0).delivered
    assert state.take(r, 4) == (b"12345678", True)  # a writer was waiting
    assert state.publish(w, b"abcd", 1.5).delivered
    state.publish(w, b"efghij", 2.0)
    blocked = state.publish(w, b"k", 3.0)
    assert blocked.retry_at == 8.0  # the grace restarts from the new stall


def test_a_huge_chunk_fits_an_empty_buffer() -> None:
    state = make_state(max_buffer_bytes=10)
    w = join(state, "alice", "pipe", "t")
    r = join(state, "alice", "sub", "t")
    assert state.publish(w, b"x" * 100, 0.0).delivered
    assert state.take_all(r) == b"x" * 100


# --- departure rule -------------------------------------------------------------------


def test_subs_end_when_last_pub_leaves_except_keepalive() -> None:
    state = make_state()
    s = join(state, "alice", "sub", "t")
    k = join(state, "alice", "sub", "t", keep_alive=True)
    p1 = join(state, "alice", "pub", "t")
    p2 = join(state, "alice", "pub", "t")
    assert state.leave(p1) == []  # another pub remains
    assert state.leave(p2) == [s]
    assert state.members[s].ending == "departure"
    assert state.members[k].ending is None


def test_two_pipe_conversation_ends_with_the_other_pipe() -> None:
    state = make_state()
    a = join(state, "alice", "pipe", "t")
    b = join(state, "alice", "pipe", "t")
    c = join(state, "alice", "pipe", "t")
    assert state.leave(c) == []
    assert state.leave(b) == [a]


def test_waiting_pub_neither_triggers_nor_is_ended() -> None:
    state = make_state()
    s = join(state, "alice", "sub", "t", keep_alive=True)
    w = join(state, "alice", "pub", "t", waiting=True)
    s2 = join(state, "alice", "sub", "t")
    assert state.leave(w) == []
    assert state.members[s2].ending is None
    assert s in state.members


def test_ended_member_gets_no_more_data_but_keeps_its_queue() -> None:
    state = make_state()
    s = join(state, "alice", "sub", "t")
    p = join(state, "alice", "pub", "t")
    state.publish(p, b"last", 0.0)
    assert state.leave(p) == [s]
    assert state.take_all(s) == b"last"


# --- ls ---------------------------------------------------------------------------------


def test_listing_format() -> None:
    state = make_state()
    assert state.listing("alice") == "no pubsub channels found\n"
    join(state, "alice", "pipe", "t", access=["bob", "carol"])
    join(state, "bob", "sub", "alice/t")
    join(state, "alice", "pub", "u", waiting=True)
    join(state, "bob", "pipe", "mine")
    ids: Dict[str, str] = {
        m.role + m.user: m.client_id for m in state.members.values()
    }
    assert state.listing("alice") == (
        "Channel Information\r\n"
        "- alice/t: (Access List: bob, carol)\r\n"
        "  Subs:\r\n"
        f"  - {ids['subbob']}\r\n"
        "  Pipes:\r\n"
        f"  - {ids['pipealice']}\r\n"
        "- alice/u:\r\n"
        "  Waiting Pubs:\r\n"
        f"  - {ids['pubalice']}\r\n"
    )
    assert "alice" not in state.listing("bob")
