"""Fixtures shared by the test suites in tests/."""

from __future__ import annotations

from collections.abc import Iterator

# Imported here, on the main thread, before any test starts a thread: CPython 3.11's
# compiler keeps its AST recursion counter per interpreter, so pytest rewriting a module
# being imported lazily in one thread while another thread compiles can fail with
# "SystemError: AST constructor recursion depth mismatch". hypothesis's plugin imports
# hypothesis lazily at the end of the run; slixmpp loads its plugins lazily.
import hypothesis  # noqa: F401
import pytest
import slixmpp.plugins.xep_0030
import slixmpp.plugins.xep_0092
import slixmpp.plugins.xep_0199  # noqa: F401
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
