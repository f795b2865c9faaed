"""The node process: `mongoose foreground` comes up, logs it, and stops cleanly on signals;
`mongoose start`/`stop`/`status` run it in the background through its pidfile."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until

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
        with self.proc.stderr:
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


# -- start / stop / status with a pidfile ------------------------------------------------------


def mongoose(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the `mongoose` command to its end."""
    return subprocess.run(
        [sys.executable, "-m", "mongoose", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )


def running(pid: int) -> bool:
    """True if process ``pid`` exists and has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.fixture
def pidfile(config: Path) -> Iterator[Path]:
    """The node's pidfile for ``config``; a node still running at teardown is killed."""
    path = config.parent / "data" / "mongoose.pid"
    yield path
    with contextlib.suppress(OSError, ValueError):
        pid = int(path.read_text())
        if running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_start_returns_once_up_and_stop_stops_it(config: Path, pidfile: Path) -> None:
    """start returns the pid of a detached node that is up; stop stops it; both once."""
    started = mongoose("start", "--config", str(config), cwd=config.parent)
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout)
    assert int(pidfile.read_text()) == pid and running(pid)
    assert pidfile.parent.stat().st_mode & 0o777 == 0o700
    assert os.getsid(pid) == pid  # detached: a session of its own
    log = pidfile.parent / "mongoose.log"
    up = next(e for e in map(json.loads, log.read_text().splitlines()) if e["what"] == "node_up")
    assert up["os_pid"] == pid
    status = mongoose("status", "--config", str(config), cwd=config.parent)
    assert (status.returncode, status.stdout.strip()) == (0, f"mongoose: node running (pid {pid})")

    again = mongoose("start", "--config", str(config), cwd=config.parent)
    assert again.returncode == 1 and f"already running with pid {pid}" in again.stderr

    report = json.loads(mongoose("status", "--config", str(config), "--json",
                                 cwd=config.parent).stdout)
    assert report["running"] is True and report["pid"] == pid
    assert report["status"] == "running" and report["uptime_s"] > 0

    stopped = mongoose("stop", "--config", str(config), "--json", cwd=config.parent)
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout) == {"stopped": pid}
    assert not running(pid) and not pidfile.exists()
    assert '"what":"node_stopped"' in log.read_text()
    status = mongoose("status", "--config", str(config), cwd=config.parent)
    assert (status.returncode, status.stdout.strip()) == (1, "mongoose: no node is running")
    status = mongoose("status", "--config", str(config), "--json", cwd=config.parent)
    assert status.returncode == 1 and json.loads(status.stdout)["running"] is False
    started = mongoose("start", "--config", str(config), "--json", cwd=config.parent)
    assert started.returncode == 0 and json.loads(started.stdout)["pid"] > 0
    assert mongoose("stop", "--config", str(config), cwd=config.parent).returncode == 0


def test_stop_without_a_node_exits_1(config: Path) -> None:
    """stop with no pidfile says no node is running and exits 1."""
    result = mongoose("stop", "--config", str(config), cwd=config.parent)
    assert result.returncode == 1
    assert result.stderr.startswith("mongoose: no node is running (no pidfile ")


def test_stop_with_a_stale_pidfile_reports_and_removes_it(config: Path, pidfile: Path) -> None:
    """A pidfile naming a process that is gone is stale: reported, removed, exit 1."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    pidfile.parent.mkdir()
    pidfile.write_text(f"{gone.pid}\n")
    status = mongoose("status", "--config", str(config), cwd=config.parent)
    assert status.returncode == 1 and f"names pid {gone.pid}" in status.stdout
    result = mongoose("stop", "--config", str(config), cwd=config.parent)
    assert result.returncode == 1
    assert f"names pid {gone.pid}, which is not a running node; removed it" in result.stderr
    assert not pidfile.exists()


def test_foreground_node_writes_and_removes_its_pidfile(config: Path, pidfile: Path) -> None:
    """A foreground node also writes the pidfile once up, and removes it on a clean stop."""
    node = NodeProcess(config)
    try:
        up = node.wait_for("node_up")
        assert up["pidfile"] == "data/mongoose.pid"
        wait_until(pidfile.exists, 20, "the pidfile")  # written just after node_up
        assert int(pidfile.read_text()) == node.proc.pid
        stopped = mongoose("stop", "--config", str(config), "--timeout", "20", cwd=config.parent)
        assert stopped.returncode == 0, stopped.stderr
        assert node.proc.wait(timeout=20) == 0
        assert not pidfile.exists()
    finally:
        node.kill()


def test_stop_timeout_must_be_positive_seconds(config: Path) -> None:
    """A --timeout that is not a positive number is a usage error (exit 2)."""
    result = mongoose("stop", "--config", str(config), "--timeout", "0", cwd=config.parent)
    assert result.returncode == 2 and "expected seconds > 0" in result.stderr


def test_start_of_a_node_that_fails_exits_1_with_the_log_tail(
    config: Path, pidfile: Path
) -> None:
    """A node that dies while starting makes start exit 1 with the end of its log."""
    pidfile.mkdir(parents=True)  # a directory where the pidfile goes: the node cannot write it
    result = mongoose("start", "--config", str(config), cwd=config.parent)
    assert result.returncode == 1
    assert "the node exited with status 1 while starting" in result.stderr
    assert "last lines of data/mongoose.log" in result.stderr
    assert "node_start_failed" in result.stderr


def test_start_that_times_out_stops_the_node_and_exits_1(config: Path, pidfile: Path) -> None:
    """A node not up within --timeout is stopped (and reaped); start exits 1."""
    result = mongoose("start", "--config", str(config), "--timeout", "0.001", cwd=config.parent)
    assert result.returncode == 1
    assert "the node was not up within 0.001 s; stopped it" in result.stderr
    assert not pidfile.exists()
