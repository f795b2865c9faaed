"""Actors that bench/transport.py starts in worker processes with otp.dist.spawn_on.

Worker processes import this module by name (``transport_actors:Sender``), so the bench
puts bench/ on their PYTHONPATH. Every message that crosses a process is something
:mod:`otp.codec` can encode: tuples, ints, strings, pids, dicts of those.
"""

from __future__ import annotations

import time
from typing import Any

import otp

MSG = ("msg", 1)
"""The message every throughput run sends: a small tagged tuple, built once."""

_CONTINUE = ("continue",)


class Sender(otp.LoopActor):
    """On ``("go", target, n, batch)`` tells ``target`` ``MSG`` n times, ``batch`` per
    handler run, telling itself to continue in between (as bench/actors.py's sender)."""

    pykka_registry = False

    def __init__(self) -> None:
        super().__init__()
        self._target: otp.Pid | None = None
        self._left = 0
        self._batch = 1

    def on_receive(self, message: Any) -> Any:
        if message is _CONTINUE:
            self._send_batch()
            return None
        _, self._target, self._left, self._batch = message
        self._send_batch()
        return None

    def _send_batch(self) -> None:
        count = min(self._batch, self._left)
        self._left -= count
        send = otp.send
        target = self._target
        msg = MSG
        for _ in range(count):
            send(target, msg)
        if self._left:
            self.actor_ref.tell(_CONTINUE)


class Receiver(otp.LoopActor):
    """Counts ``MSG``s; once it has the number it was asked to expect, tells
    ``report_to`` ``("done", tag)``. Ask it ``("expect", n, report_to, tag)`` first."""

    pykka_registry = False

    def __init__(self) -> None:
        super().__init__()
        self._left = 0
        self._report_to: otp.Pid | None = None
        self._tag: Any = None

    def on_receive(self, message: Any) -> Any:
        if message[0] == "msg":
            self._left -= 1
            if not self._left:
                otp.send(self._report_to, ("done", self._tag))  # type: ignore[arg-type]
            return None
        if message[0] == "expect":
            _, self._left, self._report_to, self._tag = message
            return "ok"
        raise ValueError(f"unexpected message {message!r}")


class Echo(otp.LoopActor):
    """Answers every ask with the message: the target of the ask round trips."""

    pykka_registry = False

    def on_receive(self, message: Any) -> Any:
        return message


class Asker(otp.LoopActor):
    """Measures ask round trips from inside its worker, where the asks are made.

    ``("latency", target, k, warmup)``: awaits ``otp.ask(target, i)`` warmup times, then
    k times timed with ``perf_counter_ns``, one after the other; answers
    ``{"p50_us", "p99_us", "mean_us"}``. ``("processes",)``: this worker's view of the
    cluster, as ``[[node, worker], ...]``. ``("cpu",)``: this process's CPU time so far
    (``time.process_time()``: every thread, ZeroMQ's I/O thread included), in seconds.
    ``("transport",)``: this worker's transport
    counters (frames and items sent and received, dropped).
    """

    pykka_registry = False

    async def on_receive(self, message: Any) -> Any:
        kind = message[0]
        if kind == "latency":
            _, target, k, warmup = message
            ask = otp.ask
            for i in range(warmup):
                await ask(target, i)
            clock = time.perf_counter_ns
            samples = [0] * k
            for i in range(k):
                t = clock()
                await ask(target, i)
                samples[i] = clock() - t
            samples.sort()
            return {
                "p50_us": samples[k // 2] / 1000,
                "p99_us": samples[min(k - 1, (k * 99) // 100)] / 1000,
                "mean_us": sum(samples) / k / 1000,
            }
        if kind == "cpu":
            return time.process_time()
        dist = otp.current().dist
        if kind == "processes":
            return [[node, worker] for node, worker in dist.processes()]
        if kind == "transport":
            stats = dist.transport.statistics()
            keys = ("frames_sent", "items_sent", "frames_received", "items_received", "dropped")
            return {key: stats[key] for key in keys}
        raise ValueError(f"unexpected message {message!r}")
