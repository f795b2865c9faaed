"""Actors that bench/cets.py starts in worker processes with otp.dist.spawn_on.

Worker processes import this module by name (``cets_actors:Writer``), so the bench puts
bench/ on their PYTHONPATH. Every timing is taken inside the worker, around the calls
measured, so the bench process's thread wake-ups are not in the figures.
"""

from __future__ import annotations

import time
from typing import Any

import otp
from otp import cets


def _table(name: str) -> cets.Table:
    """This process's replica of ``name``, created on first use."""
    try:
        return cets.get(name)
    except KeyError:
        return cets.create(name, type="set")


def _view() -> list[list[Any]]:
    dist = otp.current().dist
    return [[node, worker] for node, worker in dist.processes()]


def _records(n: int, run: int) -> list[tuple[str, int]]:
    """The records of one insert run: keys ``k0`` .. ``k{n-1}``, the run number as value
    (a later run replaces every record of an earlier one, so a table keeps n records)."""
    return [(f"k{i}", run) for i in range(n)]


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    samples = sorted(samples_ns)
    k = len(samples)
    return {
        "p50_us": samples[k // 2] / 1000,
        "p99_us": samples[min(k - 1, (k * 99) // 100)] / 1000,
        "mean_us": sum(samples) / k / 1000,
    }


class Peer(otp.LoopActor):
    """A process's helper: ``("create", name)`` creates this process's replica of table
    ``name``; ``("size", name)`` is that replica's record count; ``("processes",)`` this
    process's view of the cluster, as ``[[node, worker], ...]``; ``("ping",)`` answers
    ``"pong"`` (the far end of the Writer's ask round trips); ``("cpu",)`` this process's
    CPU time so far (``time.process_time()``: every thread, ZeroMQ's I/O thread
    included), in seconds."""

    pykka_registry = False

    def on_receive(self, message: Any) -> Any:
        kind = message[0]
        if kind == "create":
            return _table(message[1]).size()
        if kind == "size":
            return cets.get(message[1]).size()
        if kind == "processes":
            return _view()
        if kind == "ping":
            return "pong"
        if kind == "cpu":
            return time.process_time()
        raise ValueError(f"unexpected message {message!r}")


class Writer(otp.LoopActor):
    """The one writer (and the lookup timer) of the benchmark.

    ``("nowait", name, n, run)``: ``table.insert(record)`` n times in one handler run,
    then one ``await table.insert(barrier, wait=True)``: since each process pair has one
    ordered path, its ack means every replica has applied the n inserts. Answers
    ``{"issue_s", "total_s", "cpu_s"}``: the n calls alone, until that ack, and this
    process's CPU time meanwhile (``time.process_time()``: every thread, ZeroMQ's I/O
    thread included).

    ``("acked", name, n, warmup, run)``: ``await table.insert(record, wait=True)`` warmup
    and then n times, one after the other, each timed. Answers ``{"total_s", "cpu_s",
    "p50_us", "p99_us", "mean_us"}`` (``cpu_s`` as above, over the n timed inserts).

    ``("asks", target, n, warmup)``: ``await otp.ask(target, ("ping",))`` warmup and then
    n times, each timed (a Peer answers): the round trip an acked insert is made of, for
    comparison. Answers ``{"p50_us", "p99_us", "mean_us"}``.

    ``("fill", name, records)``: creates table ``name`` here and inserts ``records``
    records with an acked ``insert_many``; answers the table's size.
    ``("lookup", name, lookups, repeat)``: times ``table.lookup(key)`` and ``dict.get(key)``
    on a dict of the same records, ``lookups`` hits each, ``repeat`` times interleaved,
    and a loop that does nothing with the keys, and ``table.get(key)`` if the table has
    that method. Answers per-run lists of ns per lookup: ``{"lookup_ns", "dict_get_ns",
    "empty_loop_ns"}`` and ``"table_get_ns"``.

    ``("size", name)``: the replica's record count; ``("processes",)``: this process's
    view of the cluster.
    """

    pykka_registry = False

    async def on_receive(self, message: Any) -> Any:
        kind = message[0]
        clock = time.perf_counter_ns
        if kind == "nowait":
            _, name, n, run = message
            table = _table(name)
            records = _records(n, run)
            insert = table.insert
            cpu0 = time.process_time()
            t0 = clock()
            for record in records:
                insert(record)
            t1 = clock()
            await insert(("barrier", run), wait=True)
            t2 = clock()
            cpu = time.process_time() - cpu0
            return {"issue_s": (t1 - t0) / 1e9, "total_s": (t2 - t0) / 1e9, "cpu_s": cpu}
        if kind == "acked":
            _, name, n, warmup, run = message
            table = _table(name)
            insert = table.insert
            for i in range(warmup):
                await insert((f"warmup{i}", run), wait=True)
            records = _records(n, run)
            samples = [0] * n
            cpu0 = time.process_time()
            t0 = clock()
            for i, record in enumerate(records):
                t = clock()
                await insert(record, wait=True)
                samples[i] = clock() - t
            total = clock() - t0
            cpu = time.process_time() - cpu0
            return {"total_s": total / 1e9, "cpu_s": cpu, **_percentiles(samples)}
        if kind == "asks":
            _, target, n, warmup = message
            for _ in range(warmup):
                await otp.ask(target, ("ping",))
            samples = [0] * n
            for i in range(n):
                t = clock()
                await otp.ask(target, ("ping",))
                samples[i] = clock() - t
            return _percentiles(samples)
        if kind == "fill":
            _, name, n = message
            table = cets.create(name, type="set")
            await table.insert_many(_records(n, 0), wait=True)
            return table.size()
        if kind == "lookup":
            _, name, lookups, repeat = message
            return self._lookups(cets.get(name), lookups, repeat)
        if kind == "size":
            return cets.get(message[1]).size()
        if kind == "processes":
            return _view()
        raise ValueError(f"unexpected message {message!r}")

    @staticmethod
    def _lookups(table: cets.Table, lookups: int, repeat: int) -> dict[str, list[float]]:
        records = table.all()
        plain = {record[0]: record for record in records}
        # The very key objects both containers hold (a str caches its hash): hits only,
        # cycling through every record.
        keys = [records[i % len(records)][0] for i in range(lookups)]
        lookup = table.lookup
        get = plain.get
        # Table.get (record or None), where otp.cets has it: timed as well.
        table_get = getattr(table, "get", None)
        clock = time.perf_counter_ns
        out: dict[str, list[float]] = {"lookup_ns": [], "dict_get_ns": [], "empty_loop_ns": []}
        if table_get is not None:
            out["table_get_ns"] = []
        for _ in range(repeat):
            t0 = clock()
            for key in keys:
                lookup(key)
            t1 = clock()
            for key in keys:
                get(key)
            t2 = clock()
            for _key in keys:
                pass
            t3 = clock()
            out["lookup_ns"].append((t1 - t0) / lookups)
            out["dict_get_ns"].append((t2 - t1) / lookups)
            out["empty_loop_ns"].append((t3 - t2) / lookups)
            if table_get is not None:
                t0 = clock()
                for key in keys:
                    table_get(key)
                out["table_get_ns"].append((clock() - t0) / lookups)
        assert lookup(keys[0]) == [plain[keys[0]]]
        if table_get is not None:
            assert table_get(keys[0]) == plain[keys[0]]
        return out
