"""The node's status actor: what `mongoose status` and the shell will ask a live node.

Registered as ``node_status`` under the node supervisor. It answers ``"status"`` with
plain data (node name, pid, uptime, the scheduler's counts) and never blocks: every
figure is read from memory on the loop.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import otp

__all__ = ["NAME", "NodeStatus"]

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
