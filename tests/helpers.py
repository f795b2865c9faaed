"""Shared test helpers: waiting on conditions, and a probe actor that reports to the test.

Tests never sleep to synchronise: they wait for a condition or a message, with a
deadline, and fail with a clear message when the deadline passes.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import otp


def wait_until(
    predicate: Callable[[], Any], timeout: float = 5.0, what: str | Callable[[], str] = ""
) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` s.

    ``what`` describes the condition in the failure message; a callable is called at
    the failure, so it can show the state then.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(
                f"timed out after {timeout} s waiting for {described or predicate}"
            )
        time.sleep(0.002)


def run_quick_bench(script: str, timeout: float) -> dict[str, Any]:
    """Run ``bench/<script> --quick``; check it printed exactly one JSON line on stdout
    and exited 0, and return that line decoded."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, str(root / "bench" / script), "--quick"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


class Probe(otp.LoopActor):
    """An actor that passes every message it receives to the test thread's queue."""

    def __init__(self) -> None:
        super().__init__()
        self.inbox: queue.Queue[Any] = queue.Queue()

    def on_receive(self, message: Any) -> None:
        self.inbox.put(message)


class ProbeHandle:
    """The test's side of a probe: its pid and the messages it received."""

    def __init__(self) -> None:
        self.ref = Probe.start()
        self.pid = self.ref.pid
        actor = otp.current().lookup(self.pid)
        assert actor is not None
        self._inbox: queue.Queue[Any] = actor.inbox  # type: ignore[attr-defined]
        self._held: list[Any] = []

    def next(self, timeout: float = 5.0) -> Any:
        """The next message the probe received; fails after ``timeout`` s."""
        if self._held:
            return self._held.pop(0)
        return self._take(timeout)

    def _take(self, timeout: float) -> Any:
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"probe got no message within {timeout} s") from None

    def next_matching(self, predicate: Callable[[Any], bool], timeout: float = 5.0) -> Any:
        """The first message for which ``predicate`` holds; others stay for ``next()``."""
        for i, message in enumerate(self._held):
            if predicate(message):
                return self._held.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            message = self._take(max(0.0, deadline - time.monotonic()))
            if predicate(message):
                return message
            self._held.append(message)

    def monitor(self, pid: otp.Pid) -> otp.Ref:
        """Make the probe monitor ``pid``; returns the monitor's ref."""
        return otp.monitor(self.pid, pid)

    def down(self, mref: otp.Ref, timeout: float = 5.0) -> Any:
        """Wait for the Down of monitor ``mref`` and return its reason."""
        message = self.next_matching(
            lambda m: isinstance(m, otp.Down) and m.ref == mref, timeout
        )
        return message.reason

    def empty(self) -> bool:
        return not self._held and self._inbox.empty()

    def stop(self) -> None:
        self.ref.stop()
