"""The floor under every cross-process ask: one message there and back, nothing else.

Two OS processes, each on its own uvloop loop, pass a 50-byte message back and forth,
one at a time, over (a) a pair of ZeroMQ PUSH/PULL sockets on ipc, watched with
``loop.add_reader`` exactly as :mod:`otp.transport` watches them, and (b) one Unix stream
socket through asyncio streams. No actor, codec or table is involved, so whatever an
acked CETS insert or an ``otp.ask`` between workers costs on top is ours; what this
prints is the transport's.

Why it exists: ZeroMQ moves every message through its own I/O thread on both sides, so a
round trip wakes four threads in two processes instead of two; on a small virtual
machine each of those wake-ups costs tens of microseconds of CPU and, under load,
scheduling delay. Issue 4's target (an acked insert under 1 ms p99) sits below this
floor on our 2-vCPU machines; see bench/README.md.

Prints one JSON line: p50/p99 round-trip latency and the CPU of the asking side per
round trip, for each transport (medians over ``--repeat`` runs), and their ratios.

    python bench/roundtrip.py             # 3,000 round trips per run, 3 runs
    python bench/roundtrip.py --quick     # smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import uvloop
import zmq

PAYLOAD = b"x" * 50


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def _zmq_side(role: str, directory: str, n: int) -> dict[str, float] | None:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(f"ipc://{directory}/{role}")
    push = ctx.socket(zmq.PUSH)
    push.connect(f"ipc://{directory}/{'echo' if role == 'asker' else 'asker'}")
    loop = asyncio.get_running_loop()
    waiting: list[asyncio.Future[None]] = []
    done = asyncio.Event()

    def readable() -> None:
        while True:
            try:
                message = pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if role == "echo":
                if message == b"stop":
                    done.set()
                else:
                    push.send(message)
            elif waiting:
                waiting.pop().set_result(None)

    loop.add_reader(pull.FD, readable)
    loop.call_soon(readable)
    try:
        if role == "echo":
            print("ready", flush=True)
            await done.wait()
            return None
        return await _ask_loop(n, lambda: push.send(PAYLOAD), waiting, loop)
    finally:
        if role == "asker":
            push.send(b"stop")
        loop.remove_reader(pull.FD)
        ctx.destroy(linger=1000)


async def _ask_loop(
    n: int, send: object, waiting: list[asyncio.Future[None]], loop: asyncio.AbstractEventLoop
) -> dict[str, float]:
    samples: list[float] = []
    for i in range(n + n // 10):  # the first tenth warms up
        future = loop.create_future()
        waiting.append(future)
        if i == n // 10:
            cpu0 = time.process_time()
        began = time.perf_counter()
        send()  # type: ignore[operator]
        await future
        if i >= n // 10:
            samples.append(time.perf_counter() - began)
    cpu = time.process_time() - cpu0
    return {
        "p50_us": _percentile(samples, 0.5) * 1e6,
        "p99_us": _percentile(samples, 0.99) * 1e6,
        "cpu_us": cpu * 1e6 / n,
    }


async def _unix_side(role: str, directory: str, n: int) -> dict[str, float] | None:
    path = os.path.join(directory, "unix")
    if role == "echo":
        closed = asyncio.Event()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
            writer.close()
            closed.set()

        server = await asyncio.start_unix_server(echo, path)
        print("ready", flush=True)
        await closed.wait()
        server.close()
        return None
    reader, writer = await asyncio.open_unix_connection(path)
    loop = asyncio.get_running_loop()
    waiting: list[asyncio.Future[None]] = []

    async def read_replies() -> None:
        while await reader.read(65536):
            if waiting:
                waiting.pop().set_result(None)

    task = loop.create_task(read_replies())
    try:
        return await _ask_loop(n, lambda: writer.write(PAYLOAD), waiting, loop)
    finally:
        writer.close()
        task.cancel()


def _side(kind: str, role: str, directory: str, n: int) -> dict[str, float] | None:
    side = _zmq_side if kind == "zmq_ipc" else _unix_side
    return uvloop.run(side(role, directory, n))


def _run(kind: str, n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        echo = subprocess.Popen(
            [sys.executable, __file__, "--side", kind, "echo", directory, str(n)],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
            result = _side(kind, "asker", directory, n)
            assert result is not None
            echo.wait(timeout=10)
            return result
        finally:
            if echo.poll() is None:
                echo.kill()
                echo.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--round-trips", type=int, default=3_000, help="timed round trips per run")
    p.add_argument("--repeat", type=int, default=3, help="runs per transport (median)")
    p.add_argument("--quick", action="store_true", help="300 round trips, one run")
    p.add_argument("--side", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side:
        kind, role, directory, n = args.side
        _side(kind, role, directory, int(n))
        return 0
    if args.quick:
        args.round_trips, args.repeat = 300, 1
    runs: dict[str, list[dict[str, float]]] = {"zmq_ipc": [], "unix_socket": []}
    for _ in range(args.repeat):  # interleaved, so a noisy spell hits both
        for kind in runs:
            runs[kind].append(_run(kind, args.round_trips))
    result: dict[str, object] = {"cpu_count": os.cpu_count(), "round_trips": args.round_trips,
                                 "repeat": args.repeat}
    for kind, results in runs.items():
        for stat in ("p50_us", "p99_us", "cpu_us"):
            result[f"{kind}_{stat}"] = round(statistics.median(r[stat] for r in results), 1)
    for stat in ("p50_us", "p99_us", "cpu_us"):
        result[f"zmq_over_unix_{stat}"] = round(
            result[f"zmq_ipc_{stat}"] / max(result[f"unix_socket_{stat}"], 0.1), 2  # type: ignore[operator]
        )
    result["runs"] = runs
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
