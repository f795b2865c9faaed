"""Helpers shared by the benchmarks that run a cluster of real OS processes on this host.

bench/transport.py and bench/cets.py both make the bench process the root (worker 0) of
node A, start worker processes with ``python -m otp.worker`` (bench/ on their PYTHONPATH,
so they can import the benchmark's actor module), and run a second node B as a child
process. This module holds the parts they share: :class:`Child` (a child OS process that
dies with the bench, whose stdout lines are collected), :class:`Root` (this process as a
node's root, with the workers it started), :func:`wait_until`, :func:`log` and the
SIGTERM handler. Importing it puts the repository root and bench/ on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
for _path in (ROOT, BENCH):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import otp  # noqa: E402
from otp import curve  # noqa: E402
from otp.node import READY_LINE, Runtime  # noqa: E402

__all__ = [
    "BENCH",
    "NODE_A",
    "NODE_B",
    "NODE_B_READY",
    "ROOT",
    "START_TIMEOUT",
    "Child",
    "Root",
    "log",
    "on_sigterm",
    "wait_until",
]

NODE_A = "bench-a@localhost"
NODE_B = "bench-b@localhost"
NODE_B_READY = "bench-node-b-ready"
START_TIMEOUT = 30.0

# Linux: the kernel SIGKILLs the child when the thread that started it dies, so nothing
# outlives a bench that is killed. Set between fork and exec by a tiny interpreter that
# then execs the real command (preexec_fn would run Python in the child of a threaded
# process; see otp/osproc.py).
_PDEATHSIG_WRAPPER = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None).prctl(1, 9)\n"  # PR_SET_PDEATHSIG, SIGKILL
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def log(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = START_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class Child:
    """A child OS process whose stdout lines a daemon thread collects."""

    def __init__(self, name: str, cmd: list[str], *, stdin: Any = subprocess.DEVNULL) -> None:
        self.name = name
        if sys.platform.startswith("linux"):
            cmd = [sys.executable, "-I", "-S", "-c", _PDEATHSIG_WRAPPER, str(os.getpid()), *cmd]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(BENCH), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        self.proc = subprocess.Popen(
            cmd, stdin=stdin, stdout=subprocess.PIPE, env=env, cwd=ROOT, text=True
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for_line(self, text: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{self.name}: no {text!r} within {timeout} s") from None
            if line is None:
                raise RuntimeError(f"{self.name} exited ({self.proc.wait()}) before {text!r}")
            if text in line:
                return

    def stop(self, timeout: float = 10.0) -> None:
        """Close its stdin (if a pipe) and wait; SIGTERM it; SIGKILL it after ``timeout``."""
        proc = self.proc
        if proc.stdin is not None:  # node B: stops when its stdin closes
            with contextlib.suppress(OSError):
                proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"{self.name} did not stop in {timeout} s: killing it")
            proc.kill()
            proc.wait()


class Root:
    """This process as a node's root: scheduler, runtime, and the workers it started."""

    def __init__(self, node: str, ipc_dir: Path, key_file: Path) -> None:
        self.node = node
        self.key_file = key_file
        self.scheduler = scheduler = otp.current()
        scheduler.rename(node)
        self.runtime = Runtime(
            scheduler, ipc_dir=ipc_dir, tcp_host="127.0.0.1", keys=curve.load(key_file)
        )
        asyncio.run_coroutine_threadsafe(self.runtime.start(), scheduler.loop).result(10)
        self.dist = self.runtime.dist
        self.workers: dict[int, Child] = {}

    def processes(self) -> list[tuple[str, int]]:
        return self.scheduler.run_sync(self.dist.processes)

    def tcp_address(self) -> str:
        address = self.scheduler.run_sync(self.runtime.tcp_address)
        assert address is not None
        return address

    def start_worker(self, n: int) -> None:
        """Start worker ``n`` of this node and wait until this root knows it."""
        cmd = [
            sys.executable,
            "-m",
            "otp.worker",
            "--node",
            self.node,
            "--worker",
            str(n),
            "--ipc-dir",
            str(self.runtime.ipc_dir),
            "--root",
            self.runtime.ipc_address,
            "--tcp-host",
            "127.0.0.1",
            "--keys",
            str(self.key_file),
            "--log-format",
            "text",
            "--log-level",
            "warning",
        ]
        child = Child(f"{self.node} worker {n}", cmd)
        self.workers[n] = child
        child.wait_for_line(READY_LINE)
        threading.Thread(target=self._watch, args=(n, child), daemon=True).start()
        wait_until(lambda: (self.node, n) in self.processes(), f"{self.node}.{n} in the view")

    def _watch(self, n: int, child: Child) -> None:
        child.proc.wait()
        # What the node's supervisor of worker processes does: pending asks fail at once.
        with contextlib.suppress(RuntimeError):
            self.scheduler.call_soon(self.dist.worker_lost, n)

    def close(self) -> None:
        for child in self.workers.values():
            child.stop()
        self.workers.clear()
        with contextlib.suppress(Exception):
            self.scheduler.run_sync(self.runtime.close)


def on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)
