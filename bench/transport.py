"""Transport benchmark: tell throughput and ask latency within a worker, across workers
(ipc) and across nodes (tcp with CURVE), between real OS processes.

Run from the repository root::

    python bench/transport.py            # defaults: 200,000 messages, 5,000 asks, 3 repeats
    python bench/transport.py --quick    # smoke test, a few seconds

Prints exactly one JSON line on stdout (progress goes to stderr). The fields are described
in bench/README.md.

Topology, all on this host:

* this process is the root (worker 0) of node ``bench-a@localhost`` and starts its workers
  1 and 2 (``python -m otp.worker``, with bench/ on their PYTHONPATH for
  ``transport_actors``); processes of one node talk over ipc;
* a second process, this script with ``--serve-node-b``, is the root of node
  ``bench-b@localhost``: it starts its own worker 1, joins node A through A's root's tcp
  address and waits until its worker sees node A. Nodes talk over tcp on loopback with
  CURVE, with a keypair generated for the run (``otp.curve.generate()``) in a key file
  that every process gets with ``--keys``.

What is measured, with the sender and the asker always in A.1 and the receiver or the
asked actor in A.1 (same worker, the baseline), A.2 (cross worker) or B.1 (cross node):

1. tell throughput: the bench tells a ``Sender`` ``go``; it tells the ``Receiver`` N
   messages ``("msg", 1)``, ``--batch`` per handler run, telling itself to continue in
   between; the receiver counts them and tells the bench ``done``. Timed here, from the
   ``go`` to the ``done``: end to end, including the two hops that carry those.
2. ask latency: an ``Asker`` in A.1, whose async handler awaits ``otp.ask(echo, i)`` K
   times one after the other and times each round trip there, so this process's thread
   wake-ups are not in the figures; p50, p99 and mean in microseconds.

Every figure is the median of ``--repeat`` runs (interleaved over the placements, so a slow
spell of the machine hits all three); every run is in ``runs``. All processes are stopped
and the temporary directory (sockets, key file) removed at the end, also on error.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
for _path in (ROOT, BENCH):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import zmq  # noqa: E402
from cluster_bench import (  # noqa: E402
    NODE_A,
    NODE_B,
    NODE_B_READY,
    START_TIMEOUT,
    Child,
    Root,
    log,
    on_sigterm,
    wait_until,
)

import otp  # noqa: E402
from otp import curve  # noqa: E402
from otp.dist import spawn_on  # noqa: E402
from otp.transport import Transport  # noqa: E402

perf_counter = time.perf_counter

PLACEMENTS = ("same_worker", "cross_worker", "cross_node")


def spawn(node: str, worker: int, cls: str) -> otp.Pid:
    return spawn_on((node, worker), f"transport_actors:{cls}").get(timeout=10)


def sees(asker: otp.Pid, keys: list[tuple[str, int]]) -> bool:
    """True if the worker of ``asker`` has every process in ``keys`` in its view."""
    view = {tuple(p) for p in otp.ask(asker, ("processes",)).get(timeout=10)}
    return all(key in view for key in keys)


# -- node B ----------------------------------------------------------------------------------


def serve_node_b(args: argparse.Namespace) -> int:
    """``--serve-node-b``: be node B's root with one worker, joined to node A, until our
    stdin closes (the bench closes it) or SIGTERM."""
    root: Root | None = None
    try:
        root = Root(NODE_B, Path(args.ipc_dir), Path(args.keys))
        root.start_worker(1)
        root.scheduler.run_sync(root.dist.join, [args.seed])
        wait_until(lambda: NODE_A in root.scheduler.run_sync(root.dist.nodes), "node A")
        asker = spawn(NODE_B, 1, "Asker")
        wait_until(
            lambda: sees(asker, [(NODE_A, 0), (NODE_A, 1), (NODE_A, 2)]),
            "node A's processes in the view of worker B.1",
        )
        print(NODE_B_READY, flush=True)
        sys.stdin.read()  # until the bench closes it, or dies
        return 0
    finally:
        if root is not None:
            root.close()


# -- node A: the bench -----------------------------------------------------------------------


class Collector(otp.LoopActor):
    """Passes every message it receives (the receivers' ``done``) to the bench's thread."""

    pykka_registry = False

    def __init__(self, inbox: queue.Queue[Any]) -> None:
        super().__init__()
        self.inbox = inbox

    def on_receive(self, message: Any) -> None:
        self.inbox.put(message)


class Bench:
    """The bench's side of the measurements: it starts runs and takes the results."""

    def __init__(self, collector: otp.Pid, inbox: queue.Queue[Any]) -> None:
        self.collector = collector
        self.inbox = inbox
        self.tags = 0

    def tell_rate(
        self, sender: otp.Pid, receiver: otp.Pid, n: int, batch: int, cpu_probes: list[otp.Pid]
    ) -> tuple[float, list[float]]:
        """Messages/s from telling the sender ``go`` to the receiver's ``done``, and the CPU
        time each process of ``cpu_probes`` (an Asker in each) spent meanwhile, in us/msg."""
        self.tags += 1
        tag = self.tags
        if otp.ask(receiver, ("expect", n, self.collector, tag)).get(timeout=10) != "ok":
            raise RuntimeError(f"receiver {receiver} did not take ('expect', ...)")
        cpu0 = [otp.ask(probe, ("cpu",)).get(timeout=10) for probe in cpu_probes]
        timeout = max(60.0, n / 2_000)
        t0 = perf_counter()
        otp.send(sender, ("go", receiver, n, batch))
        try:
            message = self.inbox.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(
                f"receiver {receiver} did not count {n} messages in {timeout} s "
                "(dropped? see the transport_dropped warnings above)"
            ) from None
        elapsed = perf_counter() - t0
        cpu1 = [otp.ask(probe, ("cpu",)).get(timeout=10) for probe in cpu_probes]
        if message != ("done", tag):
            raise RuntimeError(f"unexpected message {message!r}, wanted ('done', {tag})")
        return n / elapsed, [(b - a) * 1e6 / n for a, b in zip(cpu0, cpu1, strict=True)]

    def ask_latency(self, asker: otp.Pid, target: otp.Pid, k: int, warmup: int) -> dict[str, float]:
        return otp.ask(asker, ("latency", target, k, warmup)).get(timeout=60 + (k + warmup) / 200)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--messages", type=int, default=200_000, help="messages per tell run")
    p.add_argument("--asks", type=int, default=5_000, help="timed asks per latency run")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    p.add_argument(
        "--batch", type=int, default=1_000, help="messages the sender tells per handler run"
    )
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    p.add_argument("--serve-node-b", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seed", help=argparse.SUPPRESS)
    p.add_argument("--keys", help=argparse.SUPPRESS)
    p.add_argument("--ipc-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_node_b:
        if not (args.seed and args.keys and args.ipc_dir):
            p.error("--serve-node-b needs --seed, --keys and --ipc-dir")
        return args
    if args.quick:
        args.messages = min(args.messages, 20_000)
        args.asks = min(args.asks, 500)
        args.repeat = 1
    for name in ("messages", "asks", "repeat", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    if args.serve_node_b:
        return serve_node_b(args)
    began = perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="otp-bench-transport-"))
    root: Root | None = None
    node_b: Child | None = None
    try:
        key_file = tmp / "cluster-keys.toml"
        curve.save(curve.generate(), key_file)
        log(f"node A: this process as root, workers 1 and 2 (keys and sockets in {tmp})")
        root = Root(NODE_A, tmp / "a", key_file)
        root.start_worker(1)
        root.start_worker(2)
        log("node B: root process, its worker 1, joining node A over tcp with CURVE")
        node_b = Child(
            "node B",
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve-node-b",
                "--seed",
                root.tcp_address(),
                "--keys",
                str(key_file),
                "--ipc-dir",
                str(tmp / "b"),
            ],
            stdin=subprocess.PIPE,
        )
        node_b.wait_for_line(NODE_B_READY, timeout=2 * START_TIMEOUT)
        wait_until(lambda: (NODE_B, 1) in root.processes(), "B.1 in node A's view")
        result = measure(args, root)
        result["elapsed_s"] = perf_counter() - began
    finally:
        if node_b is not None:
            node_b.stop()
        if root is not None:
            root.close()
        shutil.rmtree(tmp, ignore_errors=True)
    for key, value in result.items():
        if isinstance(value, float):
            result[key] = round(value, 3) if value < 1000 else round(value)
    print(json.dumps(result), flush=True)
    return 0


def measure(args: argparse.Namespace, root: Root) -> dict[str, Any]:
    n, k, batch = args.messages, args.asks, args.batch
    tell_warmup = max(1_000, n // 20)
    ask_warmup = max(100, k // 20)
    loop_type = type(root.scheduler.loop)
    result: dict[str, Any] = {
        "bench": "transport",
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": importlib.metadata.version("msgpack"),
        "uvloop": loop_type.__module__.startswith("uvloop"),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "params": {
            "messages": n,
            "asks": k,
            "repeat": args.repeat,
            "batch": batch,
            "quick": args.quick,
            "message": "('msg', 1): a 2-tuple of a short str and an int",
            "tell_warmup": tell_warmup,
            "ask_warmup": ask_warmup,
            "transport_max_batch": Transport.max_batch,
            "transport_hwm": root.runtime.hwm,
            "scheduler_throughput": root.scheduler.throughput,
            "cross_node": "tcp on 127.0.0.1 with CURVE",
        },
    }
    inbox: queue.Queue[Any] = queue.Queue()
    bench = Bench(Collector.start(inbox).pid, inbox)

    log("spawning actors: sender in A.1, an asker, a receiver and an echo in A.1, A.2, B.1")
    sender = spawn(NODE_A, 1, "Sender")
    where = {"same_worker": (NODE_A, 1), "cross_worker": (NODE_A, 2), "cross_node": (NODE_B, 1)}
    askers = {p: spawn(*where[p], "Asker") for p in PLACEMENTS}
    receivers = {p: spawn(*where[p], "Receiver") for p in PLACEMENTS}
    echoes = {p: spawn(*where[p], "Echo") for p in PLACEMENTS}
    asker = askers["same_worker"]  # the one in A.1: it makes the timed asks
    wait_until(lambda: sees(asker, [(NODE_B, 1)]), "B.1 in the view of worker A.1")
    # The processes whose CPU time a tell run counts: A.1, and A.2 or B.1.
    cpu_of = {
        "same_worker": {"a1": asker},
        "cross_worker": {"a1": asker, "a2": askers["cross_worker"]},
        "cross_node": {"a1": asker, "b1": askers["cross_node"]},
    }

    log(f"warm-up: {tell_warmup:,} messages and {ask_warmup} asks per placement")
    for p in PLACEMENTS:
        bench.tell_rate(sender, receivers[p], tell_warmup, batch, [])
        bench.ask_latency(asker, echoes[p], ask_warmup, 0)

    runs: dict[str, list[float]] = {}
    for i in range(args.repeat):
        for p in PLACEMENTS:
            probes = cpu_of[p]
            rate, cpu = bench.tell_rate(sender, receivers[p], n, batch, list(probes.values()))
            runs.setdefault(f"tell_{p}_per_s", []).append(round(rate))
            for proc, us in zip(probes, cpu, strict=True):
                runs.setdefault(f"cpu_us_per_msg_{p}_{proc}", []).append(round(us, 3))
            cpu_text = ", ".join(f"{proc} {us:.2f}" for proc, us in zip(probes, cpu, strict=True))
            log(f"run {i + 1}/{args.repeat} tell {p}: {rate:,.0f} msg/s; CPU us/msg: {cpu_text}")
        for p in PLACEMENTS:
            lat = bench.ask_latency(asker, echoes[p], k, ask_warmup)
            for stat in ("p50_us", "p99_us", "mean_us"):
                runs.setdefault(f"ask_{p}_{stat}", []).append(round(lat[stat], 1))
            log(
                f"run {i + 1}/{args.repeat} ask {p}: p50 {lat['p50_us']:.0f} us, "
                f"p99 {lat['p99_us']:.0f} us"
            )
    for key, values in runs.items():
        result[key] = statistics.median(values)

    same = result["tell_same_worker_per_s"]
    result["cross_worker_vs_same_worker"] = result["tell_cross_worker_per_s"] / same
    result["cross_node_vs_same_worker"] = result["tell_cross_node_per_s"] / same
    result["targets"] = {
        "cross_worker_ge_100k_per_s": result["tell_cross_worker_per_s"] >= 100_000,
        "cross_worker_ge_25pct_of_same_worker": result["cross_worker_vs_same_worker"] >= 0.25,
    }
    result["worker_a1_transport"] = otp.ask(asker, ("transport",)).get(timeout=10)
    result["runs"] = runs
    return result


if __name__ == "__main__":
    sys.exit(main())
