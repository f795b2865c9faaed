"""The node process: `mongoose foreground` comes up, logs it, and stops cleanly on signals."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(60)


class NodeProcess:
    """A `mongoose foreground` child process whose JSON log lines the test can await."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mongoose", "foreground", "--config", str(config),
             "--log-format", "json"],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=config.parent,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            with contextlib.suppress(json.JSONDecodeError):
                self.events.put(json.loads(line))

    def wait_for(self, what: str, timeout: float = 20.0) -> dict[str, Any]:
        """The first log event with this ``what``; fails after ``timeout`` s."""
        while True:
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"no {what!r} log event; output so far:\n{''.join(self.lines)}"
                ) from None
            if event.get("what") == what:
                return event

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mongooseim.toml"
    path.write_text('[general]\nhosts = ["example.test"]\nnode_name = "testnode@localhost"\n')
    return path


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_node_logs_up_and_stops_cleanly_on_signal(config: Path, signum: int) -> None:
    """The node logs node_up with its name, and exits 0 after node_stopped on a signal."""
    node = NodeProcess(config)
    try:
        up = node.wait_for("node_up")
        assert up["node"] == "testnode@localhost"
        assert up["hosts"] == ["example.test"]
        os.kill(node.proc.pid, signum)
        node.wait_for("node_stopping")
        node.wait_for("node_stopped")
        assert node.proc.wait(timeout=20) == 0
    finally:
        node.kill()


def test_node_with_a_bad_config_exits_1_naming_the_key(tmp_path: Path) -> None:
    """A config error stops the node before start, naming the file and key."""
    path = tmp_path / "bad.toml"
    path.write_text('[general]\nloglevel = "loud"\n')
    result = subprocess.run(
        [sys.executable, "-m", "mongoose", "foreground", "--config", str(path)],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1
    assert str(path) in result.stderr and "general.loglevel" in result.stderr
