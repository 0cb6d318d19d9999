"""Pure parts of `p2ppool host` and `p2ppool status`: durations, the board view, the table."""

from __future__ import annotations

import pytest

from p2ppool.board.protocol import Accept, Bye, Cluster, Done, Hello, Offer, Want, Withdraw
from p2ppool.cluster.host import parse_duration
from p2ppool.cluster.status import BoardView, render_table

NOW = 1_800_000_000.0
KEY = "A" * 43 + "="


@pytest.mark.parametrize(
    "text, seconds",
    [("14d", 14 * 86400), ("12h", 43200), ("30m", 1800), ("45s", 45), ("1w", 604800),
     ("1d12h", 129600), ("90", 90), ("1.5h", 5400), (" 2D ", 172800)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "d", "1x", "-1h", "0s", "1h 2m", "h1"])
def test_bad_durations_say_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def hello(sender: str, role: str, slots: int = 0) -> Hello:
    return Hello(sender=sender, ts=NOW, ttl=60, role=role, python="3.11", version="0.1",
                 slots=slots)


def test_view_collects_workers_clients_jobs_and_the_cluster() -> None:
    view = BoardView(own_id="me")
    for msg in [
        hello("me", "observer"),
        hello("w1", "worker", slots=4),
        hello("w2", "worker", slots=2),
        hello("c1", "client"),
        Want(sender="c1", ts=NOW, ttl=60, job="j1", slots=8, python="3.11", session=1),
        Want(sender="c1", ts=NOW, ttl=60, job="j2", slots=1, python="3.11", session=1),
        Offer(sender="w3", ts=NOW, ttl=60, job="j1", worker="w3", slots=1, key=KEY,
              client="c1"),
        Accept(sender="c2", ts=NOW, ttl=60, job="j9", worker="w3", code="AAAA"),
        Cluster(sender="h1", ts=NOW, ttl=60, name="alice/friends", expires=NOW + 3600),
        Done(sender="c1", ts=NOW, ttl=60, job="j2"),
        Withdraw(sender="w2", ts=NOW, ttl=60, job=None, worker="w2"),
    ]:
        view.update(msg, NOW)
    report = view.as_dict()
    assert [w["id"] for w in report["workers"]] == ["w1", "w3"]
    assert report["free_slots"] == 4
    assert [(c["id"], c["jobs"]) for c in report["clients"]] == [("c1", {"j1": 8}), ("c2", {})]
    assert report["clusters"] == [{"name": "alice/friends", "host": "h1", "expires": NOW + 3600}]
    assert [h["id"] for h in report["hosts"]] == ["h1"]
    assert "me" not in {p["id"] for group in ("workers", "clients", "hosts") for p in report[group]}

    table = render_table(view, "alice/friends")
    assert "cluster alice/friends: hosted by h1, until 2027-01-15 09:00 UTC" in table
    assert "worker  w1  4" in table
    assert "j1 (wants 8)" in table
    assert table.endswith("2 worker(s) with 4 free slot(s), 2 client(s)")

    view.update(Bye(sender="h1", ts=NOW, ttl=60, role="host"), NOW)
    view.update(Bye(sender="c1", ts=NOW, ttl=60, role="client"), NOW)
    assert view.clusters == {} and "c1" not in view.peers


def test_empty_view_says_so() -> None:
    table = render_table(BoardView(), "alice/x")
    # Not a fault: say what having no host means and how to host it.
    assert "cluster alice/x: open cluster (no host announced it)" in table
    assert "`p2ppool host --cluster x --users NAME,...`" in table
    assert "nobody else announced themselves" in table
