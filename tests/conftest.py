"""Fixtures shared by the test suites in tests/."""

from __future__ import annotations

from collections.abc import Iterator

# Imported up front, on the main thread (see ast_lock): hypothesis's plugin imports it
# lazily at the end of the run, slixmpp its plugins when a client registers them.
import ast_lock  # noqa: F401
import hypothesis  # noqa: F401
import pytest
import slixmpp.plugins.xep_0030
import slixmpp.plugins.xep_0092
import slixmpp.plugins.xep_0199  # noqa: F401
from dist_harness import TestNode
from helpers import ProbeHandle

# PostgreSQL for the storage tests: a throwaway server per session (see pg_harness).
from pg_harness import (  # noqa: F401 - fixtures
    database,
    pg_config_toml,
    pg_database,
    pg_dsn,
    pg_server,
)
from xmpp_client import Client, ClientLoop


@pytest.fixture
def probe() -> Iterator[ProbeHandle]:
    """An actor whose received messages the test reads with ``probe.next()``."""
    handle = ProbeHandle()
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def test_node() -> Iterator[TestNode]:
    """This test process as the root of node test@localhost (made on first use)."""
    node = TestNode()
    yield node
    node.close()


@pytest.fixture(scope="module")
def loop() -> Iterator[ClientLoop]:
    """One loop thread for the XMPP clients of a test module (see xmpp_client)."""
    client_loop = ClientLoop()
    yield client_loop
    client_loop.close()


@pytest.fixture
def clients(loop: ClientLoop) -> Iterator[list[Client]]:
    """The clients a test made (append them); disconnected after it."""
    made: list[Client] = []
    yield made
    for client in made:
        client.disconnect()
