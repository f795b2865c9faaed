"""Helpers of the storage backend tests (tests/test_storage_backends*.py), which take
the ``database`` fixture of pg_harness (a fresh Database with the shipped schema, for
sqlite, pgsql and cockroachdb -- its driver and schema, run against PostgreSQL).

``recording()``: the events emitted within a ``with`` block. ``run_threads``: run
functions on threads at once and re-raise what they raised. ``unreachable_pool_toml()``:
an ``[outgoing_pools.rdbms.default]`` whose server does not answer.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from pg_harness import free_port

from mongoose import instrument
from mongoose.instrument import MemoryHandler
from mongoose.storage.backends import register_events

__all__ = ["recording", "run_threads", "unreachable_pool_toml"]


@contextlib.contextmanager
def recording() -> Iterator[MemoryHandler]:
    """Records the events emitted within the block."""
    handler = MemoryHandler()
    register_events()
    instrument.set_handlers([handler])
    try:
        yield handler
    finally:
        instrument.set_handlers([])


def run_threads(*functions: Callable[[], Any], timeout: float = 60.0) -> list[Any]:
    """Start a thread per function at once (behind a barrier), join them all, and
    return their results in order; the first exception raised in one is raised here."""
    barrier = threading.Barrier(len(functions))
    results: list[Any] = [None] * len(functions)
    errors: list[BaseException] = []

    def run(i: int, fn: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout)
            results[i] = fn()
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(functions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "a thread did not finish"
    if errors:
        raise errors[0]
    return results


def unreachable_pool_toml() -> str:
    """A pgsql pool on a port of 127.0.0.1 where nothing listens."""
    return f"""
[outgoing_pools.rdbms.default.connection]
driver = "pgsql"
host = "127.0.0.1"
port = {free_port()}
database = "mongooseim"
username = "mongoose"
password = "x"
"""
