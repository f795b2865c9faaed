"""A stateful property test of otp.cets across real worker processes.

Hypothesis drives sequences of acked writes, deletes and insert_new from two worker
processes; after every step all replicas (both workers and this process) must hold the
same records, and those must be what a model of the documented rules predicts: a key
belongs to its writer, two writers of one key leave the record of the one that sorts
last, and only the owner deletes. (Losing a worker is covered in test_cets.py; here it
made each example too slow to explore many.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dist_harness import NODE, TestNode
from helpers import wait_until
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

import otp
from otp import cets
from otp.dist import spawn_on

pytestmark = pytest.mark.timeout(300)

WORKERS = (1, 2)
KEYS = st.sampled_from(["k1", "k2", "k3"])
VALUES = st.integers(0, 3)


@pytest.fixture
def workers(test_node: TestNode) -> Iterator[TestNode]:
    for n in WORKERS:
        test_node.start_worker(n)
    yield test_node
    test_node.stop_workers()
    wait_until(lambda: set(test_node.processes()).isdisjoint({(NODE, n) for n in WORKERS}),
               what="workers gone")


def test_replicas_agree_with_the_model(workers: TestNode) -> None:
    """After any sequence of acked operations, every replica equals the model."""
    counter = iter(range(1_000_000))

    class Replicas(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.name = f"stateful{next(counter)}"
            self.local = workers.scheduler.run_sync(cets.create, self.name)
            self.users = {n: self.spawn(n) for n in WORKERS}
            self.model: dict[str, tuple[int, int]] = {}  # key -> (value, owner worker)

        def spawn(self, n: int) -> otp.Pid:
            return spawn_on((NODE, n), "dist_actors:TableUser", self.name).get(timeout=10)

        def ask(self, n: int, *message: Any) -> Any:
            return otp.ask(self.users[n], tuple(message)).get(timeout=10)

        @rule(n=st.sampled_from(WORKERS), key=KEYS, value=VALUES)
        def insert(self, n: int, key: str, value: int) -> None:
            assert self.ask(n, "insert", (key, value)) == "ok"
            held = self.model.get(key)
            if held is None or n >= held[1]:  # another owner's key: the last-sorting wins
                self.model[key] = (value, n)

        @rule(n=st.sampled_from(WORKERS), key=KEYS)
        def delete(self, n: int, key: str) -> None:
            assert self.ask(n, "delete", key) == "ok"
            if key in self.model and self.model[key][1] == n:
                del self.model[key]

        @rule(n=st.sampled_from(WORKERS), key=KEYS, value=VALUES)
        def insert_new(self, n: int, key: str, value: int) -> None:
            inserted = self.ask(n, "insert_new", (key, value))
            assert inserted == (key not in self.model)
            if inserted:
                self.model[key] = (value, n)

        @invariant()
        def replicas_equal_the_model(self) -> None:
            expected = sorted((k, v) for k, (v, _) in self.model.items())
            wait_until(lambda: sorted(self.local.all()) == expected,
                       what=lambda: f"local {sorted(self.local.all())} == {expected}")
            for n in WORKERS:
                assert self.ask(n, "all") == expected, f"worker {n}"

    run_state_machine_as_test(
        Replicas,
        settings=settings(
            max_examples=8, stateful_step_count=12, deadline=None, database=None,
            derandomize=True, suppress_health_check=list(HealthCheck),
        ),
    )
