"""Fixtures shared by the test suites in tests/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dist_harness import TestNode
from helpers import ProbeHandle


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
