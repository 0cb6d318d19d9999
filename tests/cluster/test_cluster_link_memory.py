"""A cluster pool remembers wire keys for a bounded number of pickled functions."""

from __future__ import annotations

from typing import Any

from p2ppool import defaults
from p2ppool.cluster.link import ClusterLink
from p2ppool.config import resolve_options


class _Backend:
    """Stands in for ClusterBackend: func_key never reaches it."""

    def start(self) -> None:
        pass


def _link() -> ClusterLink:
    options = resolve_options({"cluster": "alice/x"}, environ={}, read_file=False)
    backend: Any = _Backend()
    return ClusterLink(options, 1, None, None, lambda: None, lambda: None, backend=backend)


def test_the_same_blob_keeps_its_key_and_others_get_new_ones() -> None:
    link = _link()
    a, b = link.func_key(b"a"), link.func_key(b"b")
    assert a != b
    assert link.func_key(b"a") == a and link.func_key(b"b") == b


def test_only_the_most_recent_functions_are_kept_and_keys_are_never_reused() -> None:
    link = _link()
    kept = defaults.CLUSTER_FUNC_KEYS_KEPT
    first = link.func_key(b"first")
    keys = {first}
    for i in range(3 * kept):
        keys.add(link.func_key(b"blob %d" % i))
        assert link.func_key(b"first") == first  # used all along: never forgotten
    assert len(link._func_keys) == kept
    assert len(keys) == 3 * kept + 1  # every distinct blob got its own key
    again = link.func_key(b"blob 0")  # forgotten long ago: a new key, not a used one
    assert again not in keys
