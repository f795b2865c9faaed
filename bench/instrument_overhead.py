"""What instrumentation costs: one_to_one with it off, and on (prometheus and log at info).

Run from the repository root::

    python bench/instrument_overhead.py --users 1000 --rate 5000 --duration 10 --rounds 3
    python bench/instrument_overhead.py --ladder 8000,9000,10000,11000,12000 --rounds 2

Both variants are our server as bench/compare.py runs it (bench/peers/mongoose.toml: two
workers, plain TCP on loopback, PLAIN); "on" adds ``[instrumentation.prometheus]`` (the
node's /metrics page, scraped every 5 s during the run as Prometheus would, at a
faster pace than its default 15 s) and ``[instrumentation.log] level = "info"``.

Two measurements, each in the same invocation for both variants:

* **CPU per message** at a fixed rate (default): ``--rounds`` rounds, each running "off"
  and "on" once, in alternating order so drift on a noisy machine hits both alike. The
  figure is the server's CPU (all its processes) per message sent, from the generator's
  ``server_cpu_s``; the overhead is the ratio of the medians minus one. When the server is
  the bottleneck, throughput falls by about the same fraction.
* **Throughput** (``--ladder``): each rate of the ladder, ``--rounds`` times, both
  variants back to back; a variant's maximum is the highest rate that passes (as in
  bench/compare.py: p99 < 100 ms, nothing lost, 95 % delivered) in most rounds, and the
  overhead is 1 - on/off. Coarser (the ladder's steps are its resolution) and slower.

The last stdout line is a JSON object with every run; bench/README.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare

METRICS_PORT = 5591
INSTRUMENTATION_ON = f"""
[instrumentation]
  probe_interval = 5

[instrumentation.prometheus]

[instrumentation.log]
  level = "info"

[[listen.http]]
  port = {METRICS_PORT}
  ip_address = "127.0.0.1"
  [[listen.http.handlers.mongoose_prometheus_handler]]
    host = "_"
    path = "/metrics"
"""


class Variant(compare.Mongoose):
    """Our server with or without instrumentation."""

    instrumented = False

    def write_config(self) -> None:
        super().write_config()
        if self.instrumented:
            path = self.run_dir / "mongoose.toml"
            path.write_text(path.read_text() + INSTRUMENTATION_ON)


class Instrumented(Variant):
    instrumented = True


class Scraper:
    """Scrapes /metrics every ``interval`` seconds on a thread while a run lasts."""

    def __init__(self, port: int, interval: float = 5.0) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval = interval
        self.scrapes = 0
        self.failures = 0
        self.last = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as reply:
                    self.last = reply.read().decode()
                self.scrapes += 1
            except OSError:
                self.failures += 1


def run_once(server: Variant, load: compare.Load, generator: compare.Generator, label: str,
             rate: float) -> dict[str, Any]:
    with server.running(load.tls) as proc:
        if server.instrumented:
            with Scraper(METRICS_PORT) as scraper:
                summary = generator.run("one_to_one", server, proc, load, rate=rate,
                                        label=label)
            summary["scrapes"], summary["scrape_failures"] = scraper.scrapes, scraper.failures
            if "xmpp_element_in" not in scraper.last:
                raise compare.CompareError(f"{label}: /metrics had no xmpp_element_in")
        else:
            summary = generator.run("one_to_one", server, proc, load, rate=rate, label=label)
    return summary


def cpu_rounds(args: argparse.Namespace, servers: dict[str, Variant], load: compare.Load,
               generator: compare.Generator) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for n in range(args.rounds):
        order = ("off", "on") if n % 2 == 0 else ("on", "off")
        for name in order:
            summary = run_once(servers[name], load, generator, f"cpu-{name}-{n}", args.rate)
            per_msg = compare._per_message(summary)
            runs[name].append({"server_cpu_us_per_msg": per_msg,
                               "delivered_per_s": summary.get("delivered_per_s"),
                               "latency_p99_ms": summary.get("latency_p99_ms"),
                               "lost": summary.get("lost"),
                               "scrapes": summary.get("scrapes")})
            compare.say(f"round {n} {name}: {per_msg} µs/msg, "
                        f"p99 {summary.get('latency_p99_ms')} ms")
    medians = {name: statistics.median(r["server_cpu_us_per_msg"] for r in rs)
               for name, rs in runs.items()}
    return {"rate": args.rate, "runs": runs, "median_cpu_us_per_msg": medians,
            "cpu_overhead": round(medians["on"] / medians["off"] - 1, 4)}


def ladder(args: argparse.Namespace, servers: dict[str, Variant], load: compare.Load,
           generator: compare.Generator) -> dict[str, Any]:
    """Each rate of ``--ladder``, ``--rounds`` times, "off" and "on" back to back in
    alternating order: drift on a shared machine hits both variants alike, which two
    separate searches (minutes apart) cannot promise. A variant's maximum is the highest
    rate it passed (compare.passes: p99 < 100 ms, nothing lost, 95 % delivered) in most
    rounds."""
    tried: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for n in range(args.rounds):
        for i, rate in enumerate(args.ladder):
            order = ("off", "on") if (n + i) % 2 == 0 else ("on", "off")
            for name in order:
                summary = run_once(servers[name], load, generator,
                                   f"ladder-{name}-{rate:g}-{n}", rate)
                ok, why = compare.passes(summary, rate)
                tried[name].append({"rate": rate, "round": n, "ok": ok, "why": why or None,
                                    "delivered_per_s": summary.get("delivered_per_s"),
                                    "latency_p99_ms": summary.get("latency_p99_ms"),
                                    "server_cpu_us_per_msg": compare._per_message(summary)})
                compare.say(f"round {n} {name} {rate:,.0f} msg/s: "
                            f"{'passes' if ok else 'fails: ' + why}")
    best: dict[str, float | None] = {}
    for name, runs in tried.items():
        passing = [rate for rate in args.ladder
                   if sum(r["ok"] for r in runs if r["rate"] == rate) * 2 > args.rounds]
        best[name] = max(passing) if passing else None
    off, on = best["off"], best["on"]
    return {"max_rate": best,
            "throughput_overhead": round(1 - on / off, 4) if off and on else None,
            "tried": tried}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=5000.0, help="messages/s (CPU runs)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ladder", type=lambda text: [float(r) for r in text.split(",")],
                        default=None, help="comma-separated rates: find each variant's "
                        "highest passing rate among them instead")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    args.tls, args.mechanism, args.login_rate, args.processes = "none", "PLAIN", 500.0, 1
    args.generator_args = []
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = (args.results or compare.BENCH / "results" / f"instrument-{stamp}").resolve()
    results.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)
    compare.raise_fd_limit(args.users)
    setup = compare.Setup(args.users, "PLAIN", "plain")
    servers: dict[str, Variant] = {
        "off": Variant("mongoose-off", results / "run" / "off", setup),
        "on": Instrumented("mongoose-on", results / "run" / "on", setup),
    }
    load = compare.make_load(args)
    generator = compare.Generator(results)
    started = time.perf_counter()
    try:
        record = (ladder if args.ladder else cpu_rounds)(args, servers, load, generator)
    except compare.CompareError as e:
        compare.say(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        compare.say("interrupted; servers stopped")
        return 130
    finally:
        generator.stop()
    if "cpu_overhead" in record:
        m = record["median_cpu_us_per_msg"]
        print(f"CPU per message at {args.rate:g} msg/s, median of {args.rounds}: off "
              f"{m['off']} µs, on {m['on']} µs: overhead {record['cpu_overhead']:+.1%}")
    else:
        r = record["max_rate"]
        print(f"max rate: off {r['off']}, on {r['on']} msg/s: throughput overhead "
              f"{record['throughput_overhead']:+.1%}" if record["throughput_overhead"]
              is not None else f"max rate: off {r['off']}, on {r['on']}")
    record = {"kind": "instrument_overhead", "params": vars_of(args), **record,
              "machine": compare.machine_facts(),
              "elapsed_s": round(time.perf_counter() - started, 1)}
    (results / "instrument_overhead.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record), flush=True)
    return 0


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def vars_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


if __name__ == "__main__":
    sys.exit(main())
