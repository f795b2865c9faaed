"""Status actors: what `mongoose status` and the shell ask a live node and its workers.

``NodeStatus`` runs in the root process (registered as ``node_status``), ``WorkerStatus``
in each worker (registered as ``worker_status``). Both answer ``"status"`` with plain
data and never block: every figure is read from memory on the loop.

``NodeStatus`` also answers the cluster commands (``mongoose cluster ...``, through
:mod:`mongoose.control`): ``("cluster",)`` the membership, ``("join", "tcp://host:port")``
joins the cluster of the node at that address, ``("leave",)`` leaves the cluster (the
node keeps running alone; see :meth:`otp.dist.Dist.leave`). Each returns the membership
as it is right after the request; a join completes a moment later.
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
        if isinstance(message, tuple) and message:
            dist = otp.current().dist
            if dist is None:
                raise RuntimeError("this node is not in a cluster")
            if message[0] == "cluster":
                return cluster(dist)
            if message[0] == "join":
                log.info("joining a cluster", extra={"what": "cluster_join_requested",
                                                     "address": message[1]})
                dist.join([message[1]])
                return cluster(dist)
            if message[0] == "leave":
                if otp.whereis("cets_discovery") is not None:
                    raise RuntimeError(
                        "this node finds its cluster through discovery "
                        "([internal_databases.cets]), which would join it again: take it "
                        "out of the node list or table, or stop it, instead")
                log.info("leaving the cluster", extra={"what": "cluster_leave_requested"})
                dist.leave()
                return cluster(dist)
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


def cluster(dist: Any) -> dict[str, Any]:
    """This node's membership, as its root sees it: member nodes, nodes gone silent,
    the addresses it was told to join."""
    return {
        "node": dist.node,
        "nodes": dist.nodes(),
        "unavailable": dist.unavailable_nodes(),
        "discovered": dist.discovered_nodes(),
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
