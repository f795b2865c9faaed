"""Fixtures shared by the test suites in tests/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import ProbeHandle


@pytest.fixture
def probe() -> Iterator[ProbeHandle]:
    """An actor whose received messages the test reads with ``probe.next()``."""
    handle = ProbeHandle()
    yield handle
    handle.stop()
