"""Discovery: where a node finds the other nodes of its cluster, after CETS's backends.

A backend answers one question, :meth:`Backend.get_nodes`: the distribution addresses
(``host:port`` of other nodes' root processes) that should be in the cluster. The
:class:`Discovery` actor asks it every ``interval`` seconds and joins the addresses it
has not joined yet (:meth:`otp.dist.Dist.join`); joining a member again is harmless, so
a failed or lost join is simply retried on the next round.

Backends
    :class:`FileBackend` reads a file with one address per line (blank lines and lines
    starting with ``#`` are skipped), re-read when its modification time changes: an
    operator or a provisioning tool edits the file and the nodes follow. A missing or
    unreadable file is logged (``what=discovery_failed``) and tried again next round.
    The RDBMS backend over MongooseIM's ``discovery_nodes`` table arrives with the
    persistence layer; it implements the same method.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

from otp.actor import LoopActor

__all__ = ["Backend", "Discovery", "FileBackend", "parse_node_list"]

logger = logging.getLogger("otp.discovery")


class Backend(Protocol):
    def get_nodes(self) -> list[str]:
        """Addresses (``host:port``) of the cluster's nodes, this one possibly included."""
        ...


def parse_node_list(text: str) -> list[str]:
    """The addresses in a node list file's text, in order, without duplicates."""
    seen: dict[str, None] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            for token in line.split():
                seen.setdefault(token, None)
    return list(seen)


class FileBackend:
    """Node addresses from a file, re-read when it changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._mtime: float | None = None
        self._nodes: list[str] = []

    def get_nodes(self) -> list[str]:
        mtime = self.path.stat().st_mtime  # OSError is the caller's to report
        if mtime != self._mtime:
            self._nodes = parse_node_list(self.path.read_text())
            self._mtime = mtime
        return list(self._nodes)


class Discovery(LoopActor):
    """Asks a backend for the cluster's nodes every ``interval`` s and joins new ones.

    ``own_address`` (this node's ``host:port``) is skipped. Runs in a root process.
    """

    def __init__(self, backend: Backend, *, own_address: str | None, interval: float = 5.0) -> None:
        super().__init__()
        self.backend = backend
        self.own_address = own_address
        self.receive_timeout = interval
        self.joined: set[str] = set()
        self.last_error: str | None = None

    def on_start(self) -> None:
        self.check()

    def on_timeout(self) -> None:
        self.check()

    def on_receive(self, message: Any) -> Any:
        if message == "check":
            return self.check()
        if message == "status":
            return {"joined": sorted(self.joined), "last_error": self.last_error}
        return super().on_receive(message)

    def check(self) -> list[str]:
        """One round: returns the addresses newly joined."""
        from otp import scheduler as scheduler_mod

        try:
            nodes = self.backend.get_nodes()
        except OSError as error:
            message = f"{error.strerror or error}: {getattr(error, 'filename', '')}"
            if message != self.last_error:
                logger.warning(
                    "discovery failed", extra={"what": "discovery_failed", "reason": message}
                )
            self.last_error = message
            return []
        self.last_error = None
        new = [n for n in nodes if n != self.own_address and n not in self.joined]
        if new:
            dist = scheduler_mod.current().dist
            dist.join(f"tcp://{address}" for address in new)
            self.joined.update(new)
            logger.info("discovered nodes", extra={"what": "discovery_join", "nodes": new})
        return new
