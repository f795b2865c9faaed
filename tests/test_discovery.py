"""The Discovery actor (otp/discovery.py) with a blocking backend: rounds run off the loop,
failures are logged and retried, the actor stays responsive.

The backends here never answer another node's address, so no round joins anything (this
process need not be in a cluster).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import pytest
from helpers import wait_until

import otp
from otp.discovery import Discovery, FileBackend

pytestmark = pytest.mark.timeout(60)

OWN = "127.0.0.1:1"


class ScriptedBackend:
    """A blocking backend whose every call waits for the answer the test gives it."""

    blocking = True

    def __init__(self) -> None:
        self.calls: queue.Queue[int] = queue.Queue()  # thread idents, one per call
        self.answers: queue.Queue[Any] = queue.Queue()
        self.closed_on: int | None = None

    def get_nodes(self) -> list[str]:
        self.calls.put(threading.get_ident())
        answer = self.answers.get(timeout=30)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def status(self) -> dict[str, Any]:
        return {"node_num": 7}

    def close(self) -> None:
        self.closed_on = threading.get_ident()


def loop_thread() -> int:
    return otp.current().run_sync(threading.get_ident)


def status(ref: Any) -> dict[str, Any]:
    return ref.ask("status", timeout=5)


def test_a_blocking_backend_runs_on_the_pool_and_status_answers_meanwhile() -> None:
    """get_nodes runs on a pool thread; while it waits, the actor still answers status."""
    backend = ScriptedBackend()
    ref = Discovery.start(backend, own_address=OWN, interval=0.05)
    try:
        caller = backend.calls.get(timeout=5)
        assert caller != loop_thread()
        # The round is still waiting for its answer: the actor answers anyway.
        assert status(ref) == {"joined": [], "discovered": [], "unavailable": [],
                               "last_error": None, "node_num": 7}
        backend.answers.put([OWN])
        assert backend.calls.get(timeout=5) != loop_thread()  # the next round
        assert status(ref)["discovered"] == []  # own address skipped
    finally:
        backend.answers.put([OWN])
        ref.stop()
    wait_until(lambda: backend.closed_on is not None, what="close() called at stop")
    assert backend.closed_on != loop_thread()


def test_a_failing_backend_is_logged_once_and_retried_next_round(caplog) -> None:
    """Two failed rounds log one discovery_failed; the actor lives on; a working round
    clears the error and logs discovery_recovered."""
    backend = ScriptedBackend()
    with caplog.at_level(logging.INFO, logger="otp.discovery"):
        ref = Discovery.start(backend, own_address=OWN, interval=0.05)
        try:
            backend.calls.get(timeout=5)
            backend.answers.put(ConnectionError("database down"))
            backend.calls.get(timeout=5)
            backend.answers.put(ConnectionError("database down"))
            backend.calls.get(timeout=5)
            assert status(ref)["last_error"] == "ConnectionError: database down"
            failed = [r for r in caplog.records if getattr(r, "what", "") == "discovery_failed"]
            assert len(failed) == 1 and failed[0].reason == "ConnectionError: database down"
            backend.answers.put([OWN])
            wait_until(lambda: status(ref)["last_error"] is None, what="the error cleared")
            assert any(getattr(r, "what", "") == "discovery_recovered" for r in caplog.records)
        finally:
            backend.answers.put([OWN])
            ref.stop()


def test_check_with_a_blocking_backend_awaits_a_round_off_the_loop() -> None:
    """An ask of "check" runs one more round on the pool and answers with the newly
    joined addresses (none here)."""
    backend = ScriptedBackend()
    ref = Discovery.start(backend, own_address=OWN, interval=30)
    try:
        backend.calls.get(timeout=5)
        backend.answers.put([OWN])  # the first round
        future = ref.ask("check", block=False)
        assert backend.calls.get(timeout=5) != loop_thread()
        backend.answers.put([OWN])
        assert future.get(timeout=5) == []
    finally:
        ref.stop()


def test_frequent_status_asks_do_not_postpone_rounds(tmp_path) -> None:
    """Rounds come every interval even when status is asked more often than that."""
    node_list = tmp_path / "nodes.txt"
    node_list.write_text(f"{OWN}\n")

    class Counting(FileBackend):
        rounds = 0

        def get_nodes(self) -> list[str]:
            Counting.rounds += 1
            return super().get_nodes()

    ref = Discovery.start(Counting(node_list), own_address=OWN, interval=0.1)
    try:
        wait_until(lambda: status(ref) and Counting.rounds >= 5, timeout=10,
                   what="five rounds while status is asked every few ms")
    finally:
        ref.stop()


def test_a_missing_node_list_file_is_a_failure_not_a_crash(tmp_path) -> None:
    """The file backend's OSError is reported in status with the file's name."""
    ref = Discovery.start(FileBackend(tmp_path / "absent.txt"), own_address=OWN, interval=0.05)
    try:
        error = wait_until(lambda: status(ref)["last_error"], what="the error in status")
        assert "absent.txt" in error
        assert ref.is_alive()
    finally:
        ref.stop()
