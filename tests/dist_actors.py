"""Actors that distribution tests start in other OS processes with otp.dist.spawn_on.

This module is imported by worker processes (tests put tests/ on their PYTHONPATH).
"""

from __future__ import annotations

import os
from typing import Any

import otp


class Echo(otp.LoopActor):
    """Answers asks with the message; on ('crash', text) raises; 'os_pid' gives its pid."""

    pykka_registry = False

    def on_receive(self, message: Any) -> Any:
        if message == "os_pid":
            return os.getpid()
        if isinstance(message, tuple) and message[0] == "crash":
            raise RuntimeError(message[1])
        return message


class Forwarder(otp.LoopActor):
    """Forwards every message to ``target`` as (own pid, message)."""

    pykka_registry = False

    def __init__(self, target: otp.Pid) -> None:
        super().__init__()
        self.target = target

    def on_receive(self, message: Any) -> Any:
        otp.send(self.target, (self.pid, message))


class Sender(otp.LoopActor):
    """On ('send', target, n, tag): tells target (tag, i) for i in range(n), in batches."""

    pykka_registry = False

    def on_receive(self, message: Any) -> Any:
        kind = message[0]
        if kind == "send":
            _, target, n, tag = message
            self._batch(target, 0, n, tag)
        elif kind == "more":
            _, target, start, n, tag = message
            self._batch(target, start, n, tag)
        return None

    def _batch(self, target: otp.Pid, start: int, n: int, tag: Any) -> None:
        end = min(n, start + 1000)
        for i in range(start, end):
            otp.send(target, (tag, i))
        if end < n:
            self.actor_ref.tell(("more", target, end, n, tag))


class Linker(otp.LoopActor):
    """Links to the pid it is asked to, and reports trapped exits to ``report_to``."""

    pykka_registry = False

    def __init__(self, report_to: otp.Pid, trap: bool = True) -> None:
        super().__init__()
        self.report_to = report_to
        self.trap_exit = trap

    async def on_receive(self, message: Any) -> Any:
        if isinstance(message, tuple) and message[0] == "link":
            self.link(message[1])
            # Links to other processes are asynchronous, as in Erlang; a round trip to
            # the target after the link request means the link is in place there.
            await otp.ask(message[1], "ping")
            return "linked"
        if isinstance(message, tuple) and message[0] == "monitor":
            return self.monitor(message[1])
        otp.send(self.report_to, (self.pid, message))
        return None


class GlobalFinder(otp.LoopActor):
    """Answers a name with what the cluster-wide registry says in this process."""

    pykka_registry = False

    def on_receive(self, message: Any) -> Any:
        from otp import global_names

        return global_names.whereis(message)


class TableUser(otp.LoopActor):
    """Uses the replicated table ``name`` of its process (creating it if needed)."""

    pykka_registry = False

    def __init__(self, name: str, type: str = "set") -> None:
        super().__init__()
        self.name = name
        self.type = type

    def on_start(self) -> None:
        from otp import cets

        try:
            self.table = cets.get(self.name)
        except KeyError:
            self.table = cets.create(self.name, type=self.type)

    async def on_receive(self, message: Any) -> Any:
        kind, *args = message
        table = self.table
        if kind == "insert":
            await table.insert(args[0], wait=True)
            return "ok"
        if kind == "fill":  # ("fill", prefix, n): n records (f"{prefix}{i}", i), one acked write
            prefix, n = args
            await table.insert_many([(f"{prefix}{i}", i) for i in range(n)], wait=True)
            return "ok"
        if kind == "size":
            return table.size()
        if kind == "insert_nowait":
            table.insert(args[0])
            return "ok"
        if kind == "insert_new":
            return await table.insert_new(args[0])
        if kind == "delete":
            await table.delete(args[0], wait=True)
            return "ok"
        if kind == "lookup":
            return table.lookup(args[0])
        if kind == "all":
            return sorted(table.all())
        if kind == "status":
            return table.status()
        raise ValueError(f"unknown request {kind!r}")
