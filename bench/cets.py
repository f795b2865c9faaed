"""Replicated tables benchmark: otp.cets insert rate and latency with 1, 2 and 4 replicas
over real worker processes and nodes, and local lookups next to a plain dict.

Run from the repository root::

    python bench/cets.py            # defaults: 20,000 inserts, 2,000 acked, 3 repeats
    python bench/cets.py --quick    # smoke test, a few seconds

Prints exactly one JSON line on stdout (progress goes to stderr). The fields are described
in bench/README.md.

Topology, all on this host, grown in three steps (the same machinery as
bench/transport.py, from bench/cluster_bench.py):

* this process is the root (worker 0) of node ``bench-a@localhost``; it starts worker 1,
  then worker 2 (``python -m otp.worker``, bench/ on their PYTHONPATH for
  ``cets_actors``);
* then a second process, this script with ``--serve-node-b``, is the root of node
  ``bench-b@localhost`` with workers 1 and 2, joined to node A over tcp with CURVE.

"N workers" is the number of worker processes that hold a replica of the table written:

* 1 worker: A.1 (the writer's process) only; the cluster view is A.0 and A.1;
* 2 workers: A.1 and A.2; the view is A.0, A.1 and A.2;
* 4 workers: A.1, A.2, B.1 and B.2; the view is A.0, A.1, A.2, B.0, B.1 and B.2.

otp.cets sends every write to every *other process in the view*, whether it holds the
table or not, and an acked write waits for all of them: so the writer sends each write to
1, 2 and 5 processes. The roots (A.0 is this process, B.0 node B's) hold no replica; they
receive each write, find no table and ack it.

What is measured, by one ``Writer`` actor in A.1 (async handler, timings taken there):

1. inserts without acks: ``table.insert(record)`` N times in one handler run, then one
   acked insert as a barrier (its ack means every process has applied the N before it, as
   each process pair has one ordered path). Rate = N / time to that ack; the rate of the
   N calls alone, and the CPU time every process of the view spent meanwhile, are
   reported too;
2. acked inserts: ``await table.insert(record, wait=True)`` K times, one after the other,
   each timed: rate, p50, p99 and mean latency, and the CPU time of every process of the
   view meanwhile. Then, for comparison, K plain asks from
   A.1 to an actor in one other process (A.0, A.2, B.1 for 1, 2, 4 workers), timed the
   same way: the single round trip an acked insert waits for several of at once;
3. lookups (at the end, in A.1): ``table.lookup(key)`` on a table of ``--records``
   records (created in A.1 only, filled with one acked ``insert_many``), next to
   ``dict.get(key)`` on a dict of the same records, interleaved in the same handler; and
   ``table.get(key)`` too where otp.cets has it.

The three topologies are measured one after the other (workers cannot be added and
removed between repeats cheaply), each with ``--repeat`` runs whose median is reported;
every run is in ``runs``. After each step every replica's size is checked against the
writer's. All processes are stopped and the temporary directory (sockets, key file)
removed at the end, also on error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

perf_counter = time.perf_counter

Key = tuple[str, int]
A0, A1, A2 = (NODE_A, 0), (NODE_A, 1), (NODE_A, 2)
B0, B1, B2 = (NODE_B, 0), (NODE_B, 1), (NODE_B, 2)
# workers -> (processes holding the table, every process in the view, the ask target)
CASES: dict[int, tuple[list[Key], list[Key], Key]] = {
    1: ([A1], [A0, A1], A0),
    2: ([A1, A2], [A0, A1, A2], A2),
    4: ([A1, A2, B1, B2], [A0, A1, A2, B0, B1, B2], B1),
}
ACK_WARMUP = 100


def name_of(key: Key) -> str:
    return f"{key[0]}.{key[1]}"


def short(key: Key) -> str:
    """``a1`` for (NODE_A, 1): the suffix of per-process fields."""
    return f"{'a' if key[0] == NODE_A else 'b'}{key[1]}"


def label(key: Key) -> str:
    """``A.1`` for (NODE_A, 1), for progress lines."""
    return f"{'A' if key[0] == NODE_A else 'B'}.{key[1]}"


def spawn(key: Key, cls: str) -> otp.Pid:
    return spawn_on(key, f"cets_actors:{cls}").get(timeout=10)


def ask(pid: otp.Pid, *message: Any, timeout: float = 10.0) -> Any:
    return otp.ask(pid, tuple(message)).get(timeout=timeout)


def sees(pid: otp.Pid, keys: list[Key]) -> bool:
    """True if the process of ``pid`` (a Writer or Peer) has every one of ``keys`` in view."""
    view = {(p[0], p[1]) for p in ask(pid, "processes")}
    return all(key in view for key in keys)


# -- node B ----------------------------------------------------------------------------------


def serve_node_b(args: argparse.Namespace) -> int:
    """``--serve-node-b``: be node B's root with workers 1 and 2, joined to node A, until
    our stdin closes (the bench closes it) or SIGTERM."""
    root: Root | None = None
    try:
        root = Root(NODE_B, Path(args.ipc_dir), Path(args.keys))
        root.start_worker(1)
        root.start_worker(2)
        root.scheduler.run_sync(root.dist.join, [args.seed])
        wait_until(lambda: NODE_A in root.scheduler.run_sync(root.dist.nodes), "node A")
        for key in (B1, B2):
            probe = spawn(key, "Peer")
            wait_until(
                lambda probe=probe: sees(probe, [A0, A1, A2]),
                f"node A's processes in the view of {name_of(key)}",
            )
        print(NODE_B_READY, flush=True)
        sys.stdin.read()  # until the bench closes it, or dies
        return 0
    finally:
        if root is not None:
            root.close()


# -- node A: the bench -----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--inserts", type=int, default=20_000, help="inserts per unacked run")
    p.add_argument("--acked", type=int, default=2_000, help="timed inserts per acked run")
    p.add_argument("--records", type=int, default=100_000, help="records in the lookup table")
    p.add_argument("--lookups", type=int, default=1_000_000, help="lookups per lookup run")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
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
        args.inserts = min(args.inserts, 2_000)
        args.acked = min(args.acked, 200)
        args.records = min(args.records, 10_000)
        args.lookups = min(args.lookups, 100_000)
        args.repeat = 1
    for name in ("inserts", "acked", "records", "lookups", "repeat"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    if args.serve_node_b:
        return serve_node_b(args)
    began = perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="otp-bench-cets-"))
    root: Root | None = None
    node_b: Child | None = None
    try:
        key_file = tmp / "cluster-keys.toml"
        curve.save(curve.generate(), key_file)
        log(f"node A: this process as root, worker 1 (keys and sockets in {tmp})")
        root = Root(NODE_A, tmp / "a", key_file)
        root.start_worker(1)
        bench = Bench(args, root)
        bench.run_case(1)

        log("node A: worker 2")
        root.start_worker(2)
        bench.run_case(2)

        log("node B: root process, its workers 1 and 2, joining node A over tcp with CURVE")
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
        wait_until(lambda: {B1, B2} <= set(root.processes()), "B.1 and B.2 in node A's view")
        bench.run_case(4)

        bench.lookups()
        result = bench.result()
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


class Bench:
    """Drives the Writer in A.1 through the cases and collects every run."""

    def __init__(self, args: argparse.Namespace, root: Root) -> None:
        self.args = args
        self.root = root
        self.writer = spawn(A1, "Writer")
        self.peers: dict[Key, otp.Pid] = {}
        self.runs: dict[str, list[float]] = {}
        self.run_id = 0

    def _next_run(self) -> int:
        self.run_id += 1
        return self.run_id

    def _add(self, key: str, value: float) -> None:
        self.runs.setdefault(key, []).append(value)

    def peer(self, key: Key) -> otp.Pid:
        """The Peer actor of process ``key`` (started on first use)."""
        if key not in self.peers:
            self.peers[key] = spawn(key, "Peer")
        return self.peers[key]

    def run_case(self, workers: int) -> None:
        args = self.args
        holders, view, ask_key = CASES[workers]
        table = f"ins{workers}"
        writer = self.writer
        log(
            f"{workers} worker(s): table {table!r} in {', '.join(map(label, holders))}; "
            f"view {', '.join(map(label, view))}"
        )
        probes = {short(key): self.peer(key) for key in view if key != A1}
        replicas = [self.peer(key) for key in holders if key != A1]
        target = self.peer(ask_key)
        for pid in [writer, *probes.values()]:
            wait_until(lambda pid=pid: sees(pid, view), f"the whole view in {pid}")
        for pid in replicas:
            ask(pid, "create", table)
        # Warm-up: opens every connection, fills the table, warms the code paths.
        ask(writer, "nowait", table, max(1_000, args.inserts // 10), 0, timeout=60)
        ask(writer, "acked", table, 1, ACK_WARMUP, 0, timeout=60)
        ask(writer, "asks", target, 1, ACK_WARMUP, timeout=60)
        n, k = args.inserts, args.acked
        prefix = f"insert_nowait_{workers}w"
        for i in range(args.repeat):
            cpu0 = {p: ask(pid, "cpu") for p, pid in probes.items()}
            res = ask(writer, "nowait", table, n, self._next_run(), timeout=60 + n / 500)
            cpu = {p: (ask(pid, "cpu") - cpu0[p]) * 1e6 / n for p, pid in probes.items()}
            cpu["a1"] = res["cpu_s"] * 1e6 / n
            self._add(f"{prefix}_per_s", round(n / res["total_s"]))
            self._add(f"{prefix}_issue_per_s", round(n / res["issue_s"]))
            for p in sorted(cpu):
                self._add(f"{prefix}_cpu_us_{p}", round(cpu[p], 2))
            self._add(f"{prefix}_cpu_us_total", round(sum(cpu.values()), 2))
            cpu0 = {p: ask(pid, "cpu") for p, pid in probes.items()}
            lat = ask(writer, "acked", table, k, 0, self._next_run(), timeout=60 + k / 50)
            acked_cpu = sum(ask(pid, "cpu") - cpu0[p] for p, pid in probes.items())
            acked_cpu = (acked_cpu + lat["cpu_s"]) * 1e6 / k
            self._add(f"insert_acked_{workers}w_per_s", round(k / lat["total_s"]))
            for stat in ("p50_us", "p99_us", "mean_us"):
                self._add(f"insert_acked_{workers}w_{stat}", round(lat[stat], 1))
            self._add(f"insert_acked_{workers}w_cpu_us_a1", round(lat["cpu_s"] * 1e6 / k, 2))
            self._add(f"insert_acked_{workers}w_cpu_us_total", round(acked_cpu, 2))
            rt = ask(writer, "asks", target, k, 0, timeout=60 + k / 50)
            for stat in ("p50_us", "p99_us"):
                self._add(f"ask_{workers}w_{stat}", round(rt[stat], 1))
            cpu_text = ", ".join(f"{p} {cpu[p]:.1f}" for p in sorted(cpu))
            log(
                f"run {i + 1}/{args.repeat} {workers}w: no ack {n / res['total_s']:,.0f}/s "
                f"(calls alone {n / res['issue_s']:,.0f}/s; CPU us/insert {cpu_text}); "
                f"acked {k / lat['total_s']:,.0f}/s, p50 {lat['p50_us']:.0f} us, "
                f"p99 {lat['p99_us']:.0f} us, CPU {acked_cpu:.0f} us/insert in all; "
                f"ask A.1 -> {label(ask_key)} p50 {rt['p50_us']:.0f} us, p99 {rt['p99_us']:.0f} us"
            )
        size = ask(writer, "size", table)
        for pid in replicas:
            other = ask(pid, "size", table)
            if other != size:
                raise RuntimeError(f"replica of {table} in {pid} has {other} records, not {size}")

    def lookups(self) -> None:
        args = self.args
        log(f"lookups: filling a table of {args.records:,} records in A.1")
        size = ask(self.writer, "fill", "lookup", args.records, timeout=120)
        if size != args.records:
            raise RuntimeError(f"lookup table has {size} records, not {args.records}")
        timeout = 60 + args.lookups * args.repeat / 100_000
        res = ask(self.writer, "lookup", "lookup", args.lookups, args.repeat, timeout=timeout)
        for i in range(args.repeat):
            lookup_ns, get_ns = res["lookup_ns"][i], res["dict_get_ns"][i]
            self._add("lookup_ns", round(lookup_ns, 1))
            self._add("dict_get_ns", round(get_ns, 1))
            self._add("empty_loop_ns", round(res["empty_loop_ns"][i], 1))
            self._add("lookup_vs_dict_get", round(lookup_ns / get_ns, 3))
            text = ""
            if "table_get_ns" in res:
                table_get_ns = res["table_get_ns"][i]
                self._add("table_get_ns", round(table_get_ns, 1))
                self._add("table_get_vs_dict_get", round(table_get_ns / get_ns, 3))
                text = f"; Table.get {table_get_ns:.0f} ns ({table_get_ns / get_ns:.2f}x)"
            log(
                f"run {i + 1}/{args.repeat} lookups: Table.lookup {lookup_ns:.0f} ns, "
                f"dict.get {get_ns:.0f} ns ({lookup_ns / get_ns:.2f}x){text}"
            )

    def result(self) -> dict[str, Any]:
        args = self.args
        loop_type = type(self.root.scheduler.loop)
        result: dict[str, Any] = {
            "bench": "cets",
            "python": platform.python_version(),
            "uvloop": loop_type.__module__.startswith("uvloop"),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "params": {
                "inserts": args.inserts,
                "acked": args.acked,
                "records": args.records,
                "lookups": args.lookups,
                "repeat": args.repeat,
                "quick": args.quick,
                "record": "('k<i>', <run>): a 2-tuple of a short str key and an int",
                "table_type": "set",
                "ack_warmup": ACK_WARMUP,
                "cross_node": "tcp on 127.0.0.1 with CURVE",
            },
            "workers_meaning": (
                "N workers = N worker processes hold a replica of the table written (the "
                "writer in A.1 among them); otp.cets sends every write to the other "
                "processes of the view that have not said they hold no replica (node "
                "roots say so after the first write), and an acked write waits for them"
            ),
            "workers": {
                str(w): {
                    "replicas": [name_of(k) for k in holders],
                    "view": [name_of(k) for k in view],
                    "writer_sends_to": len(view) - 1,
                    "ask_target": name_of(ask_key),
                }
                for w, (holders, view, ask_key) in CASES.items()
            },
        }
        for key, values in self.runs.items():
            result[key] = statistics.median(values)
        result["lookup_per_s"] = 1e9 / result["lookup_ns"]
        result["dict_get_per_s"] = 1e9 / result["dict_get_ns"]
        result["targets"] = {
            # Table.get is the set table's lookup (a bound dict.get); lookup() returns a
            # list for bag and set alike and is reported beside it.
            "lookup_within_2x_dict_get": result.get(
                "table_get_vs_dict_get", result["lookup_vs_dict_get"]
            ) <= 2,
            "acked_insert_4w_p99_under_1ms": result["insert_acked_4w_p99_us"] < 1000,
        }
        result["runs"] = self.runs
        return result


if __name__ == "__main__":
    sys.exit(main())
