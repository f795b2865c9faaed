"""Discovery: where a node finds the other nodes of its cluster, after CETS's backends.

A backend answers one question, :meth:`Backend.get_nodes`: the distribution addresses
(``host:port`` of other nodes' root processes) that should be in the cluster. The
:class:`Discovery` actor asks it every ``interval`` seconds and joins the addresses it
has not joined yet (:meth:`otp.dist.Dist.join`); joining a member again is harmless, so
a failed or lost join is simply retried on the next round.

Rounds
    A round starts ``interval`` seconds after the previous one ended (a timer, not the
    actor's idle timeout, so that frequent ``status`` asks do not postpone rounds), and
    once at start. ``"check"`` (an ask) runs a round at once and answers with the
    addresses it newly joined. A failed round -- an ``OSError`` from the file backend,
    the database down for the RDBMS backend, any exception -- is logged
    (``what=discovery_failed``, once per distinct reason, and ``discovery_recovered`` when
    a round works again), kept in ``status``, and the next round tries again: discovery
    never crashes on a backend's failure.

Blocking backends
    A backend that sets ``blocking = True`` (a database client) is never called on the
    loop: each round runs ``get_nodes`` on the process's blocking pool
    (:mod:`otp.blocking`), and its answer comes back as a :class:`otp.actor.Reply`
    message, so the actor answers ``status`` while the backend waits. At most one timed
    round is in flight; a ``"check"`` ask awaits its own call (the backend must tolerate
    two calls at once, as the RDBMS backend does with a lock). Such a backend may have a
    ``close()``, called on the pool when the actor stops.

Status
    ``"status"`` answers ``joined`` (addresses this actor asked the node to join),
    ``discovered`` (the last successful answer, this node excluded), ``unavailable`` (the
    discovered addresses that are not the address of any node in the cluster view: a
    node stopped or dead whose entry the backend still lists -- the RDBMS backend keeps
    a row until it expires), ``last_error``, and whatever the backend's own ``status()``
    returns (the RDBMS backend's ``node_num``, ...).

Backends
    :class:`FileBackend` reads a file with one address per line (blank lines and lines
    starting with ``#`` are skipped), re-read when its modification time changes: an
    operator or a provisioning tool edits the file and the nodes follow.
    The RDBMS backend over MongooseIM's ``discovery_nodes`` table lives with the
    persistence layer (``mongoose.cets_discovery_rdbms``): ``otp`` knows no database.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

from otp import blocking
from otp.actor import LoopActor, Reply

__all__ = ["Backend", "Discovery", "FileBackend", "parse_node_list"]

logger = logging.getLogger("otp.discovery")


class Backend(Protocol):
    """What :class:`Discovery` asks. Optional: ``blocking = True`` (call me off the
    loop), ``status() -> dict`` (plain data, read on the loop: must not block) and
    ``close()`` (called when discovery stops)."""

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


_TICK = ("otp.discovery", "tick")  # the round timer's message
_ROUND = ("otp.discovery", "round")  # tag of a blocking round's Reply


class Discovery(LoopActor):
    """Asks a backend for the cluster's nodes every ``interval`` s and joins new ones.

    ``own_address`` (this node's ``host:port``) is skipped. With ``name``, the actor
    registers under it (the node registers ``cets_discovery``). Runs in a root process.
    """

    def __init__(
        self, backend: Backend, *, own_address: str | None, interval: float = 5.0,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.own_address = own_address
        self.interval = interval
        self.name = name
        self.blocking = bool(getattr(backend, "blocking", False))
        self.joined: set[str] = set()
        self.discovered: list[str] = []
        self.last_error: str | None = None
        self._in_flight = False

    def on_start(self) -> None:
        if self.name is not None:
            from otp.process import register

            register(self.name, self.pid)
        self._tick()

    def on_stop(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is None:
            return
        if self.blocking:  # the Reply goes to a dead pid: dropped
            blocking.cast(close, reply_to=self.pid)
        else:
            close()

    def on_receive(self, message: Any) -> Any:
        if message == _TICK:
            return self._tick()
        if message.__class__ is Reply and message.tag == _ROUND:
            self._in_flight = False
            if message.error is not None:
                self._failed(message.error)
            else:
                self._found(message.value)
            self.send_after(self.interval, _TICK)
            return None
        if message == "check":
            return self._check_off_loop() if self.blocking else self.check()
        if message == "status":
            return self.status()
        return super().on_receive(message)

    def _tick(self) -> None:
        if not self.blocking:
            self.check()
            self.send_after(self.interval, _TICK)
        elif not self._in_flight:  # the round in flight arms the next tick
            self._in_flight = True
            blocking.cast(self.backend.get_nodes, reply_to=self.pid, tag=_ROUND)

    def check(self) -> list[str]:
        """One round with a non-blocking backend: returns the addresses newly joined."""
        try:
            nodes = self.backend.get_nodes()
        except Exception as error:
            self._failed(error)
            return []
        return self._found(nodes)

    async def _check_off_loop(self) -> list[str]:
        try:
            nodes = await blocking.run(self.backend.get_nodes)
        except Exception as error:
            self._failed(error)
            return []
        return self._found(nodes)

    def _failed(self, error: Exception) -> None:
        if isinstance(error, OSError) and error.filename is not None:
            message = f"{error.strerror or error}: {error.filename}"
        else:
            message = f"{type(error).__name__}: {error}"
        if message != self.last_error:
            logger.warning(
                "discovery failed", extra={"what": "discovery_failed", "reason": message}
            )
        self.last_error = message

    def _found(self, nodes: list[str]) -> list[str]:
        from otp import scheduler as scheduler_mod

        if self.last_error is not None:
            logger.info("discovery works again", extra={"what": "discovery_recovered"})
            self.last_error = None
        self.discovered = [n for n in nodes if n != self.own_address]
        new = [n for n in self.discovered if n not in self.joined]
        if new:
            dist = scheduler_mod.current().dist
            dist.join(f"tcp://{address}" for address in new)
            self.joined.update(new)
            logger.info("discovered nodes", extra={"what": "discovery_join", "nodes": new})
        return new

    def status(self) -> dict[str, Any]:
        """Plain data; see the module docstring."""
        live = _live_addresses()
        backend_status = getattr(self.backend, "status", None)
        return {
            "joined": sorted(self.joined),
            "discovered": sorted(self.discovered),
            "unavailable": sorted(a for a in self.discovered if a not in live),
            "last_error": self.last_error,
            **(backend_status() if backend_status is not None else {}),
        }


def _live_addresses() -> set[str]:
    """``host:port`` of the root of every member node in this process's cluster view
    (hidden nodes, such as an operator's shell, are not members)."""
    from otp import scheduler as scheduler_mod

    dist = scheduler_mod.current().dist
    if dist is None:
        return set()
    return {
        root["tcp"].removeprefix("tcp://")
        for entry in dist.view.values()
        if not entry.get("hidden")
        and (root := entry["procs"].get(0)) is not None
        and "tcp" in root
    }
