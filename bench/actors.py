"""Micro-benchmark of otp.LoopActor against pykka.ThreadingActor, in one process, one run.

Run from the repository root::

    python bench/actors.py              # defaults: 100,000 actors, 200,000 messages, 3 repeats
    python bench/actors.py --quick      # smoke test, about a second

Prints exactly one JSON line on stdout (progress goes to stderr). The fields are described
in bench/README.md. What is measured, in this order:

1. spawn: 100,000 idle LoopActors (``pykka_registry = False``) started from the loop,
   1000 per loop callback, timed until every ``on_start`` has run; RSS delta per actor;
   then stopping them all. Then, at a smaller count: the same class, the default
   (Pykka-registered) class, and the same class started from the main thread.
2. tell one-to-one: a plain thread ``ref.tell``s N messages to one actor; and a LoopActor
   sender that tells N messages to a LoopActor receiver from its handler, in batches (it
   tells itself to continue). Timed until the receiver has handled all N.
3. tell many-to-many: S sender actors each tell N/S messages round-robin over R receivers.
4. the same tell figures for ``pykka.ThreadingActor`` (repeats interleaved with 2-3), and
   the ratios.
5. ask latency: blocking ``ref.ask`` from the main thread after a warm-up, to a LoopActor
   and to a ThreadingActor.

Throughput figures are end to end (first send to last message handled) and the median of
``--repeat`` runs; all per-run values are in ``runs``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import itertools
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pykka  # noqa: E402

import otp  # noqa: E402
from otp.actor import LoopActor  # noqa: E402

perf_counter = time.perf_counter

# The one message every throughput test sends: built once, so we time the runtime only.
MSG = ("msg", 1)
CONTINUE = ("continue",)


def log(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def rss_bytes() -> int:
    """Resident set size of this process."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover - psutil is a dependency
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def settle() -> None:
    gc.collect()
    gc.collect()


class Latch:
    """Counts down from ``n``; ``wait`` returns when it reaches zero. Thread-safe."""

    __slots__ = ("_lock", "event", "remaining")

    def __init__(self, n: int) -> None:
        self.remaining = n
        self.event = threading.Event()
        self._lock = threading.Lock()
        if n == 0:
            self.event.set()

    def count_down(self) -> None:
        with self._lock:
            self.remaining -= 1
            if self.remaining == 0:
                self.event.set()

    def wait(self, timeout: float = 300.0) -> None:
        if not self.event.wait(timeout):
            raise RuntimeError(f"timed out with {self.remaining} left")


# -- actors ------------------------------------------------------------------------------------
# Idle actors count themselves on a class attribute so that no per-actor state is added to
# what we measure.


class Idle(LoopActor):
    """An idle session-like actor: the mass-actor configuration (no Pykka registry)."""

    pykka_registry = False
    started: Latch | None = None
    stopped: Latch | None = None

    def on_start(self) -> None:
        Idle.started.count_down()  # type: ignore[union-attr]

    def on_stop(self) -> None:
        Idle.stopped.count_down()  # type: ignore[union-attr]


class IdleRegistered(LoopActor):
    """The same, registered in Pykka's ActorRegistry (LoopActor's default)."""

    started: Latch | None = None
    stopped: Latch | None = None

    def on_start(self) -> None:
        IdleRegistered.started.count_down()  # type: ignore[union-attr]

    def on_stop(self) -> None:
        IdleRegistered.stopped.count_down()  # type: ignore[union-attr]


class CounterMixin:
    """Counts received messages; counts a latch down once it got what it expects."""

    left = 0
    latch: Latch | None = None

    def on_receive(self, message: Any) -> Any:
        if message is MSG:
            self.left -= 1
            if not self.left:
                self.latch.count_down()  # type: ignore[union-attr]
            return None
        if message[0] == "expect":
            _, self.left, self.latch = message
            if not self.left:
                self.latch.count_down()  # type: ignore[union-attr]
            return None
        return message  # an ask: echo


class SenderMixin:
    """On ``("go", tells, n, batch, offset)`` tells n messages round-robin over ``tells``,
    ``batch`` per handler run, telling itself to continue in between."""

    _next: Callable[[], Callable[[Any], None]]
    _left = 0
    _batch = 1

    def on_receive(self, message: Any) -> Any:
        if message is CONTINUE:
            self._send_batch()
            return None
        _, tells, n, batch, offset = message
        cycle = itertools.cycle(tells)
        for _ in range(offset % len(tells)):
            next(cycle)
        self._next = cycle.__next__
        self._left = n
        self._batch = batch
        self._send_batch()
        return None

    def _send_batch(self) -> None:
        count = min(self._batch, self._left)
        self._left -= count
        nxt = self._next
        for _ in range(count):
            nxt()(MSG)
        if self._left:
            self.actor_ref.tell(CONTINUE)  # type: ignore[attr-defined]


class LoopCounter(CounterMixin, LoopActor):
    pykka_registry = False


class LoopSender(SenderMixin, LoopActor):
    pykka_registry = False


class ThreadCounter(CounterMixin, pykka.ThreadingActor):
    pass


class ThreadSender(SenderMixin, pykka.ThreadingActor):
    pass


# -- measurements ------------------------------------------------------------------------------


def run_chunked_on_loop(fn: Callable[[int], None], n: int, chunk: int = 1000) -> None:
    """Call ``fn(i)`` for i in range(n) on the scheduler's loop, ``chunk`` calls per loop
    callback (as a listener would spawn sessions: other callbacks run in between)."""
    scheduler = otp.current()
    loop = scheduler.loop

    def step(begin: int) -> None:
        end = min(n, begin + chunk)
        for i in range(begin, end):
            fn(i)
        if end < n:
            loop.call_soon(step, end)

    scheduler.call_soon(step, 0)


def spawn(cls: type[Any], n: int, *, from_thread: bool = False) -> dict[str, Any]:
    """Start n idle actors (on the loop, or from this thread); time until all ran on_start;
    RSS per actor; then stop them all from the loop, in start order (the cheap order for
    Pykka's registry list)."""
    cls.started = Latch(n)
    cls.stopped = Latch(n)
    refs: list[Any] = [None] * n  # preallocated: 8 bytes per actor, counted in the delta
    start = cls.start

    def start_one(i: int) -> None:
        refs[i] = start()

    def stop_one(i: int) -> None:
        refs[i].stop(block=False)

    settle()
    rss0 = rss_bytes()
    t0 = perf_counter()
    if from_thread:
        for i in range(n):
            refs[i] = start()
    else:
        run_chunked_on_loop(start_one, n)
    cls.started.wait()
    elapsed = perf_counter() - t0
    settle()
    rss1 = rss_bytes()
    live = otp.current().statistics()["actors"]
    t0 = perf_counter()
    run_chunked_on_loop(stop_one, n)
    cls.stopped.wait()
    stop_elapsed = perf_counter() - t0
    refs.clear()
    settle()
    return {
        "spawn_rate_per_s": n / elapsed,
        "spawn_seconds": elapsed,
        "rss_delta_bytes": rss1 - rss0,
        "rss_per_actor_bytes": (rss1 - rss0) / n,
        "live_actors_seen": live,
        "stop_rate_per_s": n / stop_elapsed,
    }


def stop_all(refs: list[Any]) -> None:
    futures = [ref.stop(block=False) for ref in refs]
    for future in futures:
        future.get(timeout=60)


def expected_counts(senders: int, receivers: int, per_sender: int) -> list[int]:
    """How many messages each receiver gets when sender j starts its round-robin at j."""
    counts = [0] * receivers
    whole, extra = divmod(per_sender, receivers)
    for j in range(senders):
        for k in range(extra):
            counts[(j + k) % receivers] += 1
    return [c + whole * senders for c in counts]


def tell_from_thread(receiver: Any, n: int) -> float:
    """Messages/s: this thread tells n messages to one actor, until it handled them all."""
    latch = Latch(1)
    receiver.ask(("expect", n, latch))
    settle()
    tell = receiver.tell
    msg = MSG
    t0 = perf_counter()
    for _ in range(n):
        tell(msg)
    latch.wait()
    return n / (perf_counter() - t0)


def tell_between(senders: list[Any], receivers: list[Any], n: int, batch: int) -> float:
    """Messages/s: each sender tells n/len(senders) messages round-robin to receivers."""
    per_sender = n // len(senders)
    total = per_sender * len(senders)
    counts = expected_counts(len(senders), len(receivers), per_sender)
    latch = Latch(len(receivers))
    for receiver, count in zip(receivers, counts, strict=True):
        receiver.ask(("expect", count, latch))
    tells = [r.tell for r in receivers]
    gos = [("go", tells, per_sender, batch, j) for j in range(len(senders))]
    settle()
    t0 = perf_counter()
    for sender, go in zip(senders, gos, strict=True):
        sender.tell(go)
    latch.wait()
    return total / (perf_counter() - t0)


def ask_latency(ref: Any, n: int, warmup: int) -> dict[str, float]:
    """Blocking ask round trips from this thread: p50/p99/mean in microseconds."""
    ask = ref.ask
    msg = ("ping",)
    for _ in range(warmup):
        ask(msg)
    settle()
    clock = time.perf_counter_ns
    samples = [0] * n
    for i in range(n):
        t = clock()
        ask(msg)
        samples[i] = clock() - t
    samples.sort()
    return {
        "p50_us": samples[n // 2] / 1000,
        "p99_us": samples[min(n - 1, (n * 99) // 100)] / 1000,
        "mean_us": sum(samples) / n / 1000,
    }


def parse_shape(text: str) -> tuple[int, int]:
    try:
        senders, receivers = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SxR, e.g. 100x100, not {text!r}") from None
    if senders < 1 or receivers < 1:
        raise argparse.ArgumentTypeError("SxR must be positive")
    return senders, receivers


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--actors", type=int, default=100_000, help="idle LoopActors to spawn")
    p.add_argument(
        "--small-actors",
        type=int,
        default=10_000,
        help="count for the spawn variants: registered class, spawned from a thread",
    )
    p.add_argument("--messages", type=int, default=200_000, help="messages per tell run")
    p.add_argument("--repeat", type=int, default=3, help="runs per throughput figure (median)")
    p.add_argument("--asks", type=int, default=20_000, help="timed asks (after warm-up)")
    p.add_argument(
        "--many",
        type=parse_shape,
        default=(100, 100),
        metavar="SxR",
        help="LoopActor senders x receivers for many-to-many (default 100x100)",
    )
    p.add_argument(
        "--threading-many",
        type=parse_shape,
        default=(10, 10),
        metavar="SxR",
        help="ThreadingActor senders x receivers (default 10x10)",
    )
    p.add_argument(
        "--batch", type=int, default=100, help="messages an actor sender tells per handler run"
    )
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.actors = min(args.actors, 2_000)
        args.small_actors = min(args.small_actors, 500)
        args.messages = min(args.messages, 20_000)
        args.asks = min(args.asks, 1_000)
        args.repeat = 1
        args.many = (10, 10)
        args.threading_many = (4, 4)
    for name in ("actors", "small_actors", "messages", "repeat", "asks", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = perf_counter()
    scheduler = otp.current()
    loop_type = type(scheduler.loop)
    result: dict[str, Any] = {
        "bench": "actors",
        "python": platform.python_version(),
        "pykka": importlib.metadata.version("pykka"),
        "uvloop": loop_type.__module__.startswith("uvloop"),
        "event_loop": f"{loop_type.__module__}.{loop_type.__qualname__}",
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "params": {
            "actors": args.actors,
            "small_actors": args.small_actors,
            "messages": args.messages,
            "repeat": args.repeat,
            "asks": args.asks,
            "ask_warmup": max(100, args.asks // 20),
            "batch": args.batch,
            "many": "{}x{}".format(*args.many),
            "threading_many": "{}x{}".format(*args.threading_many),
            "scheduler_throughput": scheduler.throughput,
            "quick": args.quick,
            "spawn_from": "loop, 1000 per callback (spawn_rate_from_thread_per_s: main thread)",
        },
    }
    runs: dict[str, list[float]] = {}
    n, batch = args.messages, args.batch

    # 1. Spawn.
    log(f"spawning {args.actors:,} LoopActors (pykka_registry=False) on the loop")
    mass = spawn(Idle, args.actors)
    if mass["live_actors_seen"] < args.actors:
        raise RuntimeError(f"only {mass['live_actors_seen']} actors were alive")
    result["actors"] = args.actors
    result["spawn_rate_per_s"] = mass["spawn_rate_per_s"]
    result["spawn_seconds"] = mass["spawn_seconds"]
    result["rss_delta_bytes"] = mass["rss_delta_bytes"]
    result["rss_per_actor_bytes"] = mass["rss_per_actor_bytes"]
    result["stop_rate_per_s"] = mass["stop_rate_per_s"]
    m = args.small_actors
    log(f"spawning {m:,} LoopActors: unregistered, registered, from a thread")
    result["small_actors"] = m
    result["spawn_rate_small_per_s"] = spawn(Idle, m)["spawn_rate_per_s"]
    registered = spawn(IdleRegistered, m)
    result["spawn_rate_registered_per_s"] = registered["spawn_rate_per_s"]
    result["stop_rate_registered_per_s"] = registered["stop_rate_per_s"]
    result["spawn_rate_from_thread_per_s"] = spawn(Idle, m, from_thread=True)["spawn_rate_per_s"]

    # 2-4. Tell throughput, LoopActor and ThreadingActor. The repeats are interleaved
    # (loop, threading, loop, ...) so that the machine's slow and fast spells hit both.
    log("tell throughput: LoopActor and ThreadingActor, interleaved")
    loop_receiver = LoopCounter.start()
    loop_sender = LoopSender.start()
    s, r = args.many
    loop_senders = [LoopSender.start() for _ in range(s)]
    loop_receivers = [LoopCounter.start() for _ in range(r)]
    thread_receiver = ThreadCounter.start()
    s, r = args.threading_many
    thread_senders = [ThreadSender.start() for _ in range(s)]
    thread_receivers = [ThreadCounter.start() for _ in range(r)]
    measures: dict[str, Callable[[], float]] = {
        "tell_1to1_thread_per_s": lambda: tell_from_thread(loop_receiver, n),
        "threading_tell_1to1_thread_per_s": lambda: tell_from_thread(thread_receiver, n),
        "tell_1to1_actor_per_s": lambda: tell_between([loop_sender], [loop_receiver], n, batch),
        "tell_many_per_s": lambda: tell_between(loop_senders, loop_receivers, n, batch),
        "threading_tell_many_per_s": (
            lambda: tell_between(thread_senders, thread_receivers, n, batch)
        ),
    }
    for key in measures:
        runs[key] = []
    for i in range(args.repeat):
        for key, measure in measures.items():
            value = measure()
            runs[key].append(round(value))
            log(f"run {i + 1}/{args.repeat} {key}: {value:,.0f}")
    for key, values in runs.items():
        result[key] = statistics.median(values)

    # 5. Ask latency from this (non-loop) thread, and the same for a ThreadingActor.
    log("ask latency")
    warmup = result["params"]["ask_warmup"]
    lat = ask_latency(loop_receiver, args.asks, warmup)
    result["ask_p50_us"] = lat["p50_us"]
    result["ask_p99_us"] = lat["p99_us"]
    result["ask_mean_us"] = lat["mean_us"]
    lat = ask_latency(thread_receiver, args.asks, warmup)
    result["threading_ask_p50_us"] = lat["p50_us"]
    result["threading_ask_p99_us"] = lat["p99_us"]
    result["threading_ask_mean_us"] = lat["mean_us"]
    stop_all([loop_receiver, loop_sender, *loop_senders, *loop_receivers])
    stop_all([thread_receiver, *thread_senders, *thread_receivers])

    result["tell_1to1_ratio_vs_threading"] = (
        result["tell_1to1_thread_per_s"] / result["threading_tell_1to1_thread_per_s"]
    )
    result["tell_many_ratio_vs_threading"] = (
        result["tell_many_per_s"] / result["threading_tell_many_per_s"]
    )
    result["targets"] = {
        "actors_100k": args.actors >= 100_000,
        "rss_per_actor_le_4KiB": result["rss_per_actor_bytes"] <= 4096,
        "tell_1to1_ge_3x_threading": result["tell_1to1_ratio_vs_threading"] >= 3,
        "tell_many_ge_3x_threading": result["tell_many_ratio_vs_threading"] >= 3,
    }
    result["runs"] = runs
    result["elapsed_s"] = perf_counter() - began
    for key, value in result.items():
        if isinstance(value, float):
            result[key] = round(value, 3) if value < 1000 else round(value)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
