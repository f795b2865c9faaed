"""A Transport in its own OS process, driven by tests/test_transport.py over stdin/stdout.

Each stdin line is a JSON command with an ``id``; each reply is a JSON line with the same
``id``. Replies to ``wait_*`` commands come when their condition holds, so they may
arrive after replies to later commands. Items are encoded in JSON as follows: peers as
``[node, worker]`` lists; values for ``send_values`` travel hex-encoded through
``otp.codec`` so that pids, refs and tuples survive the trip to this process.

Commands: start, connect, disconnect, send_values, send_seq, echo, wait_seq, flood,
stats, close.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from typing import Any

import psutil

from otp import codec
from otp.curve import load
from otp.scheduler import new_event_loop
from otp.transport import Transport


def _jsonable(stats: dict[str, Any]) -> dict[str, Any]:
    out = dict(stats)
    out["dropped_by_peer"] = {f"{p[0]}/{p[1]}": n for p, n in stats["dropped_by_peer"].items()}
    out["peers"] = {f"{p[0]}/{p[1]}": a for p, a in stats["peers"].items()}
    return out


class Peer:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: Transport | None = None
        self.echo_to: tuple[str, int] | None = None
        # wait_seq state: items are (tag, seq); per tag the next expected seq
        self.next_seq: dict[str, int] = {}
        self.violations = 0
        self.received = 0
        self.switches = 0
        self.last_tag: str | None = None
        self.waiting: tuple[int, int] | None = None  # (command id, total)
        self.others = 0  # items that are not (tag, seq) pairs

    def reply(self, cid: int, **fields: Any) -> None:
        sys.stdout.write(json.dumps({"id": cid, **fields}) + "\n")
        sys.stdout.flush()

    def on_items(self, items: list[Any]) -> None:
        t = self.transport
        assert t is not None
        if self.echo_to is not None:
            for item in items:
                t.send(self.echo_to, item)
            return
        for item in items:
            if type(item) is tuple and len(item) == 2 and type(item[0]) is str:
                tag, seq = item
                if seq != self.next_seq.get(tag, 0):
                    self.violations += 1
                self.next_seq[tag] = seq + 1
                if tag != self.last_tag:
                    self.switches += 1
                    self.last_tag = tag
                self.received += 1
            else:
                self.others += 1
        self.check_wait()

    def check_wait(self) -> None:
        if self.waiting is not None and self.received >= self.waiting[1]:
            cid, _ = self.waiting
            self.waiting = None
            self.reply(cid, received=self.received, violations=self.violations,
                       per_tag=self.next_seq, switches=self.switches, others=self.others)

    def handle(self, cmd: dict[str, Any]) -> None:
        cid = cmd["id"]
        op = cmd["cmd"]
        t = self.transport
        if op == "start":
            keys = load(cmd["keys"]) if cmd.get("keys") else None
            self.transport = Transport(
                self.loop, name=tuple(cmd["name"]), bind=cmd["bind"], curve=keys,
                hwm=cmd.get("hwm", 10_000), on_items=self.on_items,
            )
            self.transport.start()
            self.reply(cid, addresses=self.transport.addresses)
        elif op == "connect":
            assert t is not None
            t.connect(tuple(cmd["peer"]), cmd["address"])
            self.reply(cid, ok=True)
        elif op == "disconnect":
            assert t is not None
            t.disconnect(tuple(cmd["peer"]))
            self.reply(cid, ok=True)
        elif op == "echo":
            self.echo_to = tuple(cmd["peer"])
            self.reply(cid, ok=True)
        elif op == "send_values":
            assert t is not None
            for value in codec.loads(bytes.fromhex(cmd["values"])):
                t.send(tuple(cmd["peer"]), value)
            self.reply(cid, ok=True)
        elif op == "send_seq":
            self.send_seq(cid, tuple(cmd["peer"]), cmd["tag"], cmd["count"], cmd["per_turn"])
        elif op == "wait_seq":
            self.waiting = (cid, cmd["total"])
            self.check_wait()
        elif op == "flood":
            self.flood(cid, tuple(cmd["peer"]), cmd["count"], cmd["per_turn"])
        elif op == "stats":
            assert t is not None
            self.reply(cid, stats=_jsonable(t.statistics()))
        elif op == "close":
            if t is not None:
                t.close()
            self.reply(cid, ok=True)
            self.loop.stop()
        else:
            self.reply(cid, error=f"unknown command {op!r}")

    def send_seq(self, cid: int, peer: tuple[str, int], tag: str, count: int,
                 per_turn: int) -> None:
        """Send (tag, 0..count-1), per_turn items per loop turn; reply when all are out."""
        t = self.transport
        assert t is not None

        def chunk(start: int) -> None:
            for seq in range(start, min(start + per_turn, count)):
                t.send(peer, (tag, seq))
            if start + per_turn < count:
                self.loop.call_soon(chunk, start + per_turn)
            else:  # queued after this turn's flush
                self.loop.call_soon(lambda: self.reply(cid, stats=_jsonable(t.statistics())))

        chunk(0)

    def flood(self, cid: int, peer: tuple[str, int], count: int, per_turn: int) -> None:
        """Send ``count`` items to a peer that does not read; measure RSS and timer gaps."""
        t = self.transport
        assert t is not None
        proc = psutil.Process()
        rss_before = proc.memory_info().rss
        ticks = [0, time.monotonic(), 0.0]  # count, last tick, largest gap

        def tick() -> None:
            now = time.monotonic()
            ticks[0] += 1
            ticks[2] = max(ticks[2], now - ticks[1])
            ticks[1] = now
            timer[0] = self.loop.call_later(0.005, tick)

        timer = [self.loop.call_later(0.005, tick)]
        payload = b"x" * 16

        def chunk(start: int) -> None:
            for i in range(start, min(start + per_turn, count)):
                t.send(peer, (i, payload))
            if start + per_turn < count:
                self.loop.call_soon(chunk, start + per_turn)
            else:
                self.loop.call_soon(done)

        def done() -> None:
            timer[0].cancel()
            self.reply(cid, rss_before=rss_before, rss_after=proc.memory_info().rss,
                       ticks=ticks[0], max_gap=ticks[2], stats=_jsonable(t.statistics()))

        chunk(0)


def main() -> None:
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    peer = Peer(loop)

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip():
                loop.call_soon_threadsafe(peer.handle, json.loads(line))
        loop.call_soon_threadsafe(loop.stop)  # the test went away

    threading.Thread(target=read_stdin, daemon=True).start()
    try:
        loop.run_forever()
    finally:
        if peer.transport is not None:
            peer.transport.close()
        loop.close()


if __name__ == "__main__":
    main()
