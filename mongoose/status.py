"""Status actors: what `mongoose status` and the shell ask a live node and its workers.

``NodeStatus`` runs in the root process (registered as ``node_status``), ``WorkerStatus``
in each worker (registered as ``worker_status``). Both answer ``"status"`` with plain
data and never block: every figure is read from memory on the loop.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import otp

__all__ = ["NAME", "NodeStatus", "WorkerStatus"]

NAME = "node_status"

log = logging.getLogger(__name__)


class NodeStatus(otp.LoopActor):
    """Answers ``"status"`` with a dict of plain values about this node."""

    def __init__(self, node: str, hosts: tuple[str, ...] | list[str]) -> None:
        super().__init__()
        self.node = node
        self.hosts = list(hosts)
        self.started_at = time.monotonic()

    def on_start(self) -> None:
        otp.register(NAME, self.pid)

    def on_receive(self, message: Any) -> Any:
        if message == "status":
            return self.status()
        return super().on_receive(message)

    def status(self) -> dict[str, Any]:
        stats = otp.current().statistics()
        return {
            "node": self.node,
            "hosts": self.hosts,
            "status": "running",
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "actors": stats["actors"],
            "run_queue": stats["run_queue"],
        }


class WorkerStatus(otp.LoopActor):
    """Answers ``"status"`` with plain data about this worker process."""

    def on_start(self) -> None:
        self.started_at = time.monotonic()
        otp.register("worker_status", self.pid)

    def on_receive(self, message: Any) -> Any:
        if message == "status":
            scheduler = otp.current()
            return {
                "node": scheduler.node,
                "worker": scheduler.worker,
                "os_pid": os.getpid(),
                "uptime_s": round(time.monotonic() - self.started_at, 3),
                **scheduler.statistics(),
            }
        return super().on_receive(message)
