"""ClusterBackend._release_idle with a recruiter in a known state (no board, no sessions)."""

from __future__ import annotations

import time
from typing import Any, List

from p2ppool.cluster.backend import _READY, ClusterBackend, ExecutorLost, _Remote
from p2ppool.cluster.recruit import PublishWant, PublishWithdraw, Recruiter
from p2ppool.config import resolve_options


class _QuietSession:
    """Stands in for a Ready session: takes the goodbye and the close."""

    def __init__(self) -> None:
        self.sent: List[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self, reason: str = "") -> None:
        pass


def test_a_released_idle_session_is_not_asked_for_again() -> None:
    # The pool went idle (its demand of 0 not yet given to the recruiter) and another
    # job's Want released its sessions before that demand arrived: the released slots
    # must not be asked for again (a stray Want makes other idle pools let go of theirs).
    options = resolve_options({"cluster": "alice/friends"}, environ={}, read_file=False)
    recruiter = Recruiter("3.11", offer_window_s=0.03, offer_margin_s=0.0)
    backend = ClusterBackend(options, "job-1", 4, None, None, lambda: None, python="3.11",
                             recruiter=recruiter)
    long_ago = time.monotonic() - 100  # the last Want is old enough to be repeated
    assert recruiter.set_demand(4, long_ago) == [PublishWant(4)]
    recruiter.got_offer("w1", 2, "key", long_ago + 1000, long_ago)
    recruiter.timer_expired(long_ago + 0.1)  # w1's 2 slots accepted, 2 more still wanted
    recruiter.session_ready("w1", 2, long_ago + 0.2)
    recruiter.joined_reported("w1", long_ago + 0.2)
    remote = _Remote("w1#1", "w1", 2)
    remote.state, remote.slots, remote.session = _READY, 2, _QuietSession()
    backend._remotes[remote.executor_id] = remote
    backend._by_worker["w1"] = remote
    backend._idle = True

    commands: Any = backend._release_idle("job-2")
    assert not any(isinstance(c, PublishWant) for c in commands), commands
    assert PublishWithdraw() in commands
    assert remote.state != _READY and remote.released
    (lost,) = backend.collect()
    assert isinstance(lost, ExecutorLost) and lost.released
