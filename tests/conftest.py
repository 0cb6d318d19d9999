"""Shared fixtures.  Each area's fixtures live in a module of its own (tests/fixtures/)."""

from __future__ import annotations

import importlib
import os

# Most tests watch their tasks from the host (task pids, files in tmp_path, signals), which a
# sandboxed task cannot show them: their LocalClusters and workers run with --sandbox none.
# tests/execution/test_sandbox.py runs the real sandbox (bwrap) and what must work inside it.
os.environ.setdefault("P2PPOOL_SANDBOX", "none")

# tests.fixtures.litter: the run fails if it leaves temporary entries or processes behind (issue
# 15.2); pytester: tests/system/test_litter_check.py runs inner sessions to prove that check fails.
pytest_plugins = ["tests.fixtures.litter", "pytester"]

# Fixture modules of each area; star-imported so every test directory sees them.
for _name in ("tests.fixtures.board", "tests.fixtures.wormhole", "tests.fixtures.cluster"):
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as _exc:
        if _exc.name != _name:
            raise
        continue
    globals().update(
        {key: value for key, value in vars(_module).items() if not key.startswith("__")}
    )

import sys  # noqa: E402
from typing import Iterator  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_board_connection_lingers_past_a_test() -> Iterator[None]:
    """A board connection left idle (``defaults.BOARD_IDLE_LINGER_S``) is closed when its
    test ends, so no test sees another's connections (to a server that is gone by then)."""
    yield
    transports = sys.modules.get("p2ppool.board.transports")  # not imported: nothing to do
    if transports is not None:
        transports.close_idle(timeout=5.0)


# Property tests: no per-example deadline and no "too slow" health check anywhere (a loaded
# CI machine makes single examples slow; what they prove does not depend on speed).
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "p2ppool", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("p2ppool")
