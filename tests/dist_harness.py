"""Harness for tests with several OS processes: this test process as a node, and real nodes.

* :class:`TestNode` makes the pytest process the root (worker 0) of node
  ``test@localhost``, with tcp and the cluster keys, so tests can start worker processes
  of their own, join real nodes, and talk to actors anywhere with the ordinary API.
* :class:`MongooseNode` runs ``mongoose foreground`` as a real node process with a
  config written for the test, and reads its JSON log events.

Everything waits on conditions with deadlines; nothing sleeps for synchronisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from helpers import wait_until

import otp
from otp import curve
from otp.node import READY_LINE, Runtime

NODE = "test@localhost"
TESTS = Path(__file__).resolve().parent
ROOT_DIR = TESTS.parent
PYTHONPATH = f"{TESTS}{os.pathsep}{ROOT_DIR}"


def free_port() -> int:
    """A tcp port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TestNode:
    """This process as the root of node test@localhost, plus workers a test starts."""

    __test__ = False  # not a test class, despite the name

    def __init__(self) -> None:
        scheduler = otp.current()
        scheduler.rename(NODE)
        self.scheduler = scheduler
        self.dir = tempfile.mkdtemp(prefix="otp-test-")
        self.ipc_dir = os.path.join(self.dir, "ipc")
        self.keys_file = os.path.join(self.dir, "cluster.keys")
        curve.save(curve.generate(), self.keys_file)
        self.keys = curve.load(self.keys_file)
        self.runtime = Runtime(
            scheduler, ipc_dir=self.ipc_dir, tcp_host="127.0.0.1", keys=self.keys,
            heartbeat_interval=0.3, node_timeout=3.0,
        )
        asyncio.run_coroutine_threadsafe(self.runtime.start(), scheduler.loop).result(10)
        self.dist = self.runtime.dist
        self.workers: dict[int, subprocess.Popen[str]] = {}

    @property
    def tcp_address(self) -> str:
        address = self.runtime.tcp_address()
        assert address is not None
        return address

    def processes(self) -> list[tuple[str, int]]:
        """Every process in this node's view of the cluster."""
        return self.scheduler.run_sync(self.dist.processes)

    def nodes(self) -> list[str]:
        return self.scheduler.run_sync(self.dist.nodes)

    def join(self, address: str) -> None:
        """Join the cluster of the node whose root listens at ``address`` (tcp://...)."""
        self.scheduler.run_sync(self.dist.join, [address])

    def start_worker(self, n: int) -> subprocess.Popen[str]:
        """Start worker ``n`` of this node and wait until this root knows it."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "otp.worker", "--node", NODE, "--worker", str(n),
             "--ipc-dir", self.ipc_dir, "--root", self.runtime.ipc_address,
             "--tcp-host", "127.0.0.1", "--keys", self.keys_file,
             "--log-format", "text", "--log-level", "warning"],
            stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=PYTHONPATH), text=True,
        )
        assert proc.stdout is not None
        assert READY_LINE in proc.stdout.readline()
        self.workers[n] = proc
        threading.Thread(target=self._watch, args=(n, proc), daemon=True).start()
        wait_until(lambda: (NODE, n) in self.processes(), what=f"worker {n} in the view")
        return proc

    def _watch(self, n: int, proc: subprocess.Popen[str]) -> None:
        proc.wait()
        # What the node's supervisor of worker processes does when one exits.
        self.scheduler.call_soon(self.dist.worker_lost, n)

    def stop_workers(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.workers.clear()

    def close(self) -> None:
        self.stop_workers()
        shutil.rmtree(self.dir, ignore_errors=True)


class MongooseNode:
    """A real node: ``mongoose foreground`` with a config made for the test."""

    def __init__(
        self,
        directory: Path,
        name: str,
        *,
        port: int,
        keys_file: str,
        seeds: list[str] = (),  # type: ignore[assignment]
        workers: int = 2,
        heartbeat_interval: float = 0.3,
        node_timeout: float = 3.0,
        extra_toml: str = "",
    ) -> None:
        self.name = name
        self.dir = directory / name.split("@")[0]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "mongooseim.toml"
        seeds_toml = ", ".join(f'"{s}"' for s in seeds)
        if "[[listen.c2s]]" not in extra_toml:
            # Runtime tests need no XMPP port: a plain one on any free port per worker
            # (not the default 5222 with TLS, which every test node would share).
            extra_toml += '\n[[listen.c2s]]\nport = 0\nip_address = "127.0.0.1"\n' \
                          'tls.mode = "none"\n'
        if "[auth" not in extra_toml:
            extra_toml += "\n[auth.password]\nscram_iterations = 4096\n"
        self.config.write_text(
            f'[general]\nnode_name = "{name}"\nworkers = {workers}\ndata_dir = "data"\n'
            f'[cluster]\nport = {port}\nkeys_file = "{keys_file}"\nseeds = [{seeds_toml}]\n'
            f"heartbeat_interval = {heartbeat_interval}\nnode_timeout = {node_timeout}\n"
            + extra_toml
        )
        self.address = f"tcp://127.0.0.1:{port}"
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self, *, wait: bool = True) -> dict[str, Any]:
        """Start the node and return its node_up event (with ``wait=False``, at once: an
        empty dict; the test waits for what it expects)."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mongoose", "foreground", "--config", str(self.config),
             "--log-format", "json"],
            cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONPATH=PYTHONPATH, OTP_FAULT_INJECTION="1"),
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return self.wait_for("node_up") if wait else {}

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        with proc.stderr:
            for line in proc.stderr:
                with contextlib.suppress(json.JSONDecodeError):
                    self.events.put(json.loads(line))

    def wait_for(self, what: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        """The first log event (not returned before) with ``what`` and these fields."""
        for event in self.seen:
            if event.get("what") == what and all(event.get(k) == v for k, v in fields.items()):
                self.seen.remove(event)
                return event
        deadline = timeout
        while True:
            try:
                event = self.events.get(timeout=deadline)
            except queue.Empty:
                raise AssertionError(f"{self.name}: no {what} {fields} event") from None
            if event.get("what") == what and all(event.get(k) == v for k, v in fields.items()):
                return event
            self.seen.append(event)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
