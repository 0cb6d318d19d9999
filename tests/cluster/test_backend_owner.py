"""ClusterBackend's one owner: other threads only post to its inbox (no board, no sessions)."""

from __future__ import annotations

import threading
from typing import Any, List

import pytest

from p2ppool.cluster.backend import _OPENING, BoardTrouble, ClusterBackend, _Remote
from p2ppool.config import resolve_options
from p2ppool.transfer import session as session_mod


class _FakeSession:
    def __init__(self) -> None:
        self.sent: List[bytes] = []
        self.closed: List[str] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self, reason: str = "") -> None:
        self.closed.append(reason)


def _backend(notify: Any = lambda: None) -> ClusterBackend:
    options = resolve_options({"cluster": "alice/friends"}, environ={}, read_file=False)
    return ClusterBackend(options, "job-1", 4, None, None, notify, python="3.11")


def _opening(backend: ClusterBackend) -> _Remote:
    remote = _Remote("w1#1", "w1", 2)
    backend._remotes[remote.executor_id] = remote
    backend._by_worker["w1"] = remote
    assert remote.state == _OPENING
    return remote


def test_posts_from_other_threads_wait_for_collect_and_notify_once_per_burst() -> None:
    calls: List[int] = []
    backend = _backend(lambda: calls.append(1))
    remote = _opening(backend)
    session = _FakeSession()
    poster = threading.Thread(target=lambda: [backend._post(backend._opened, remote, session)
                                              for _ in range(3)])
    poster.start()
    poster.join()
    assert remote.session is None and not session.sent  # nothing applied off the owner
    assert calls == [1]  # one wakeup for the burst
    backend.collect()
    assert remote.session is session and session.sent  # the owner sent Open
    backend._post(backend._got_job_done, None)  # a failing handler is reported, not raised
    assert calls == [1, 1]
    (trouble,) = backend.collect()
    assert isinstance(trouble, BoardTrouble) and "internal error" in trouble.message


def test_a_session_opened_after_close_is_closed_by_its_opener(
        monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _backend()
    remote = _opening(backend)
    session = _FakeSession()
    monkeypatch.setattr(session_mod.TransferSession, "open",
                        staticmethod(lambda *args, **kwargs: session))
    backend.close(timeout=0.1)  # the owner drains no more
    backend._open(remote, "1-code")
    assert session.closed == ["not needed any more"]
