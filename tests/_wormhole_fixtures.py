"""Fixtures for tests that need a real wormhole mailbox server and transit relay.

``wormhole_servers`` (session scope) runs :class:`p2ppool.transfer.servers.WormholeServers`
on 127.0.0.1 once per test run and stops it at the end.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from p2ppool.transfer.servers import WormholeServers


@pytest.fixture(scope="session")
def wormhole_servers() -> Iterator[WormholeServers]:
    """A real mailbox server and transit relay on 127.0.0.1, shared by the whole run."""
    servers = WormholeServers()
    try:
        yield servers
    finally:
        servers.stop()
