"""Storage benchmark: archive inserts through the batched writer, and logins with the
accounts in PostgreSQL, each next to its baseline.

Run from the repository root (the .venv of ``./dev test``: the PostgreSQL harness of the
tests is reused, and it needs pytest)::

    python bench/storage.py                     # both scenarios; about 3 min on 2 cores
    python bench/storage.py archive             # only the archive inserts
    python bench/storage.py archive --rate 1000 # latency at a given load, not the most
    python bench/storage.py login --login-users 2000
    python bench/storage.py archive --quick --stores sqlite,pgsql   # tests/test_bench_storage.py
    python bench/storage.py --pg-dsn "host=db port=5432 dbname=bench user=u password=p"

The results are a table per scenario and, as the last line of stdout, one JSON object;
progress goes to stderr.

Databases
---------
Unless ``--pg-dsn`` is given, a throwaway PostgreSQL cluster is started the way the tests
start theirs (``tests/pg_harness.py``: ``initdb`` in a temporary directory, ``postgres``
on a free port of 127.0.0.1, as the ``postgres`` user when run as root), but with
PostgreSQL's durable defaults (``fsync``, ``synchronous_commit`` and
``full_page_writes`` on), not the tests' crash-unsafe tuning; ``--pg-durability off``
gives the tests' settings. It gets one database per driver, each with that driver's
schema (``mongoose.storage.migrate.init``), and is stopped and deleted at the end. SQLite
is a file in a temporary directory, opened as the node opens its embedded store (WAL,
``synchronous = NORMAL``). ``--pg-dsn`` points at a database the bench may write to: it
applies the pgsql schema if missing, runs both drivers on that database, and removes
the rows it wrote (archives of ``u1..uN@storage.bench``, accounts ``u1..uN@localhost``).

archive
-------
For each store (``sqlite``, ``pgsql``, and ``cockroachdb``: the cockroachdb driver and
schema, run against PostgreSQL since no CockroachDB server can be installed here),
``--producers`` threads write archive messages for ``--duration`` seconds (or
``--messages`` in all), in two modes:

* **batched**: each producer hands messages to one shared
  :class:`~mongoose.storage.backends.mam.BatchWriter` (``submit``, as a session does),
  keeping at most ``--window`` of its own unresolved at a time; the writer's thread
  writes up to ``--max-batch`` per statement. Latency: from ``submit`` to the future's
  resolution (stored).
* **unbatched**: each producer calls ``ArchiveStore.append([message])`` itself, one row
  per statement and commit: what a server that wrote each message from its blocking pool
  (``--producers`` threads, default 8 like ``otp.blocking``) would do. Latency: the call.

Without ``--rate`` the producers go as fast as they can (the batched ones as far as
their window lets them): the highest rate, with the latency of a full queue. With
``--rate R`` they are paced to R messages/s in all, which shows the latency at that load
and what each mode costs the database for the same work.

Messages are what the archive stores: a ~300-byte ``<message/>`` (body, origin-id,
stanza-id) of one of ``--users`` owners with another of them (bare JID, a third of the
time a full one), direction in or out, ids from one
:class:`~mongoose.storage.backends.mam.MessageIdGenerator`. Every run starts from an
empty archive (the bench owners' rows deleted, then ``VACUUM`` on PostgreSQL or a WAL
checkpoint on SQLite) with the owners' archive ids already made, after one unrecorded
warm-up run per store and mode (0.5 s: the pools open their connections). Runs are
interleaved (each repeat: every store, batched then unbatched) and each figure is the
median over ``--repeat`` runs. After each run the rows in the table are counted against
the messages reported stored.

Per store and mode: ``inserts_per_s`` (stored over the time from the first submit to
the last resolution), ``latency_p50_ms``/``_p99_ms``/``_max_ms``, the rows per statement
(``batch_mean``, ``batch_p50``, ``batch_max``), ``client_cpu_us_per_insert`` (the bench
process: producers, writer and driver), ``server_cpu_us_per_insert`` (our PostgreSQL,
backends included) and ``wal_syncs_per_1000`` (PostgreSQL's WAL fsyncs, pg_stat_wal),
``failed``, and every run in ``runs``; per store ``batched_vs_unbatched`` (the ratio of
the medians) and its value per repeat.

login
-----
Our node, started as ``bench/compare.py`` starts it (its ``Mongoose`` server class, the
config ``bench/peers/mongoose.toml``: two workers, plain TCP; free ports instead of
compare.py's, so that both can run at once), once with
``[auth] methods = ["rdbms"]`` and the PostgreSQL pool as
``[outgoing_pools.rdbms.default]`` (schema by ``mongoose db init``, accounts by
``mongoose account bulk-register`` with that config), once with the embedded SQLite
store (``"internal"``). Then ``bench/xmppload.py connect --login-rate 0`` logs
``--login-users`` users in as fast as its concurrency allows; a fresh node per run,
``--repeat`` runs per store, interleaved. PLAIN by default: the server derives each
login's SCRAM secret with the account's iteration count (``--iterations``, 4096 as
``compare.py``), which is most of a login's CPU; the store's part is one ``SELECT`` of
the secrets. ``--iterations 1`` makes the derivation nearly free, so that the store's
share shows. Per store: ``login_rate_per_s`` (median), ``server_cpu_ms_per_login`` (the
node's processes), ``db_cpu_ms_per_login`` (our PostgreSQL), ``accounts`` (how fast
bulk-register wrote them), ``runs``; ``pgsql_vs_sqlite`` and its value per repeat. The
generator's output is kept under ``--results`` (default
``bench/results/storage-TIMESTAMP/``), with each node's run directory.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import compare  # noqa: E402 - bench/compare.py, for the login scenario

from mongoose.storage import StorageError, migrate  # noqa: E402
from mongoose.storage.backends.mam import (  # noqa: E402
    ArchivedMessage,
    ArchiveStore,
    BatchWriter,
    MessageIdGenerator,
    encode_id,
)
from mongoose.storage.pg import PgDatabase, PgParams  # noqa: E402
from mongoose.storage.sqlite import SqliteDatabase  # noqa: E402

STORES = ("sqlite", "pgsql", "cockroachdb")
LOGIN_STORES = ("pgsql", "sqlite")
MODES = ("batched", "unbatched")
ARCHIVE_HOST = "storage.bench"
WARM_UP_S = 0.5  # per store and mode, before the measured runs
#: PostgreSQL's own defaults for what the tests turn off (pg_harness.TEST_SETTINGS).
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on",
           "shared_buffers": "128MB"}
QUICK = {"producers": 2, "window": 8, "users": 20, "duration": 0.5, "repeat": 1,
         "login_users": 20}
DEFAULTS = {"producers": 8, "window": 32, "users": 300, "duration": 5.0, "repeat": 3,
            "login_users": 1000}
BODIES = [
    "hi", "are you there?", "see you at the station at six, the train is late again",
    "ok", "sounds good to me", "can you send me the report before the meeting tomorrow?",
    "lol", "I will call you back in five minutes, I am in the lift",
    "the build is green again, merging now", "thanks!", "where are the keys",
    "did you see the match last night? what a finish",
]
RESOURCES = ("phone", "laptop", "tablet-7f3a")


def say(text: str) -> None:
    print(f"storage: {text}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """Something the operator must fix; the message says what."""


# -- figures -------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of ``values`` (None if empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))]


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# -- the stores ----------------------------------------------------------------------------


@dataclass
class Store:
    """One database under test: its name in the output, the database, how it was made."""

    name: str
    db: Any
    note: str


class Databases:
    """The PostgreSQL server (ours or ``--pg-dsn``) and the SQLite directory of a run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server: Any = None  # pg_harness.PgServer when we started one
        self.tmp = Path(tempfile.mkdtemp(prefix="mongoose-bench-storage-"))
        self.external: PgParams | None = None
        self.databases: dict[str, str] = {}  # driver -> database name on our server
        if args.pg_dsn:
            self.external = params_of_dsn(args.pg_dsn)

    def start(self) -> None:
        if self.external is not None or self.server is not None:
            return
        sys.path.insert(0, str(ROOT / "tests"))
        try:
            import pg_harness
        except ImportError as error:
            raise BenchError(f"cannot import tests/pg_harness.py ({error}): install the "
                             "test extra (./dev test), or give --pg-dsn") from None
        settings = dict(pg_harness.TEST_SETTINGS)
        if self.args.pg_durability == "on":
            settings.update(DURABLE)
        try:
            server = pg_harness.PgServer(settings=settings)
        except pg_harness.PgMissing as error:
            raise BenchError(str(error)) from None
        say(f"starting PostgreSQL in {server.dir} (durability {self.args.pg_durability})")
        try:
            server.start()
        except BaseException:
            server.close()
            raise
        self.server = server

    def params(self, driver: str) -> PgParams:
        """Where the ``driver`` store lives: on our server a database of its own with
        that driver's schema; with --pg-dsn the given database."""
        if self.external is not None:
            return dataclasses.replace(self.external, driver=driver)
        self.start()
        if driver not in self.databases:
            name = self.server.create_database()
            db = PgDatabase(self.server.params(name, driver), pool_size=1)
            try:
                migrate.init(db)
            finally:
                db.close()
            self.databases[driver] = name
        return self.server.params(self.databases[driver], driver)

    def open(self, name: str, pool_size: int) -> Store:
        if name == "sqlite":
            db = SqliteDatabase(self.tmp / "archive.db")
            migrate.init(db)
            return Store(name, db, "SQLite file, WAL, synchronous=NORMAL")
        params = self.params(name)
        db = PgDatabase(params, pool_size=pool_size)
        if self.external is not None:
            migrate.init(db)  # idempotent; the pgsql schema serves both drivers here
        note = ("cockroachdb driver and schema, on PostgreSQL" if name == "cockroachdb"
                else "PostgreSQL")
        return Store(name, db, note)

    def pg_version(self) -> str | None:
        """The PostgreSQL server's version, if one was used."""
        if self.server is None and self.external is None:
            return None
        with contextlib.suppress(StorageError):
            db = PgDatabase(self.params("pgsql"), pool_size=1)
            try:
                return str(db.query("SHOW server_version")[0][0])
            finally:
                db.close()
        return None

    def pg_cpu_s(self) -> float | None:
        """CPU seconds of our PostgreSQL server, backends included (None with --pg-dsn)."""
        import psutil

        pid = self.server.pid if self.server is not None else None
        if pid is None:
            return None
        total = 0.0
        with contextlib.suppress(psutil.Error):
            leader = psutil.Process(pid)
            for proc in [leader, *leader.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system
        return total

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        shutil.rmtree(self.tmp, ignore_errors=True)


def params_of_dsn(dsn: str) -> PgParams:
    import psycopg

    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error as error:
        raise BenchError(f"--pg-dsn: {error}") from None
    return PgParams(driver="pgsql", host=str(parts.get("host") or "localhost"),
                    port=int(parts.get("port") or 5432),
                    database=str(parts.get("dbname") or "mongooseim"),
                    username=str(parts.get("user") or "mongooseim"),
                    password=str(parts.get("password") or ""))


# -- archive -------------------------------------------------------------------------------


class RecordingArchive(ArchiveStore):
    """The archive, noting how many messages each ``append`` wrote."""

    def __init__(self, db: Any) -> None:
        super().__init__(db)
        self.sizes: list[int] = []

    def append(self, messages: Sequence[ArchivedMessage]) -> None:
        self.sizes.append(len(messages))
        super().append(messages)


class Messages:
    """Archive messages between ``users`` owners, as a producer makes them."""

    def __init__(self, users: int, ids: MessageIdGenerator, seed: int) -> None:
        self.users = users
        self.ids = ids
        self.rng = random.Random(seed)

    def make(self) -> ArchivedMessage:
        rng = self.rng
        owner = rng.randrange(1, self.users + 1)
        other = rng.randrange(1, self.users)
        other += other >= owner  # never the owner
        resource = RESOURCES[rng.randrange(len(RESOURCES))]
        owner_full = f"u{owner}@{ARCHIVE_HOST}/{RESOURCES[owner % len(RESOURCES)]}"
        other_full = f"u{other}@{ARCHIVE_HOST}/{resource}"
        remote = other_full if rng.random() < 1 / 3 else f"u{other}@{ARCHIVE_HOST}"
        outgoing = rng.random() < 0.5
        sender, to = (owner_full, other_full) if outgoing else (other_full, owner_full)
        body = BODIES[rng.randrange(len(BODIES))]
        message_id = self.ids.next_id()
        origin = f"{rng.getrandbits(64):016x}-{rng.getrandbits(32):08x}"
        packet = (f"<message xmlns='jabber:client' from='{sender}' to='{to}' type='chat' "
                  f"id='{origin}'><body>{body}</body><origin-id xmlns='urn:xmpp:sid:0' "
                  f"id='{origin}'/><stanza-id xmlns='urn:xmpp:sid:0' "
                  f"by='u{owner}@{ARCHIVE_HOST}' id='{encode_id(message_id)}'/></message>")
        return ArchivedMessage(message_id, f"u{owner}", ARCHIVE_HOST, remote, sender,
                               "out" if outgoing else "in", packet.encode(), origin,
                               body.lower())


def packet_bytes(users: int, samples: int = 1000) -> float:
    messages = Messages(users, MessageIdGenerator(), seed=1)
    return statistics.mean(len(messages.make().packet) for _ in range(samples))


def reset_archive(store: Store, archive: RecordingArchive, users: int,
                  compact: bool = True) -> None:
    """Delete the bench owners' messages; make their archive ids; compact."""
    ids = [archive.archive_id(f"u{i}", ARCHIVE_HOST) for i in range(1, users + 1)]
    db = store.db
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        db.execute(f"DELETE FROM mam_message WHERE user_id IN ({', '.join('?' * len(chunk))})",
                   chunk)
    if compact and store.name == "sqlite":
        db.query("PRAGMA wal_checkpoint(TRUNCATE)")
    elif compact:
        with contextlib.suppress(StorageError):
            db.execute("VACUUM mam_message")
    archive.sizes.clear()


@dataclass
class RunResult:
    stored: int = 0
    failed: int = 0
    seconds: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    client_cpu_s: float = 0.0
    server_cpu_s: float | None = None
    wal_syncs: int | None = None


def wal_syncs(store: Store) -> int | None:
    """PostgreSQL's count of WAL fsyncs (pg_stat_wal, PostgreSQL 14 and later)."""
    if store.name == "sqlite":
        return None
    with contextlib.suppress(StorageError, IndexError):
        return int(store.db.query("SELECT wal_sync FROM pg_stat_wal")[0][0])
    return None


def quotas(total: int | None, producers: int) -> list[int | None]:
    if total is None:
        return [None] * producers
    return [total // producers + (k < total % producers) for k in range(producers)]


def drive(args: argparse.Namespace, step: Callable[[int, Messages], None],
          ids: MessageIdGenerator, seed: int) -> int:
    """Run ``step(k, messages)`` over and over in ``--producers`` threads (k: the
    thread's number) until ``--duration`` has passed or each thread has done its share
    of ``--messages``; with ``--rate``, paced to that many calls per second in all.
    Returns when every thread has ended; the start time, ``perf_counter_ns``."""
    stop = threading.Event()
    interval = args.producers / args.rate if args.rate else 0.0

    def produce(k: int, quota: int | None) -> None:
        messages = Messages(args.users, ids, seed * 1000 + k)
        begin = time.perf_counter() + k * interval / args.producers  # staggered
        sent = 0
        while not stop.is_set() and (quota is None or sent < quota):
            if interval:
                delay = begin + sent * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            step(k, messages)
            sent += 1

    threads = [threading.Thread(target=produce, args=(k, q), name=f"producer-{k}")
               for k, q in enumerate(quotas(args.messages, args.producers))]
    start = time.perf_counter_ns()
    for thread in threads:
        thread.start()
    if args.messages is None:
        time.sleep(args.duration)
        stop.set()
    for thread in threads:
        thread.join()
    return start


def run_batched(archive: RecordingArchive, args: argparse.Namespace,
                ids: MessageIdGenerator, seed: int) -> RunResult:
    """Messages through one BatchWriter, at most ``--window`` unresolved per producer;
    latency from ``submit`` to the future's resolution."""
    writer = BatchWriter(archive, max_batch=args.max_batch,
                         flush_interval=args.flush_interval,
                         max_pending=max(args.max_batch, args.producers * args.window))
    result = RunResult()
    outcomes: list[bool] = []
    last_done = [0]
    windows = [threading.Semaphore(args.window) for _ in range(args.producers)]

    def done(started: int, window: threading.Semaphore, future: Any) -> None:
        now = time.perf_counter_ns()  # on the writer's thread
        result.latencies_ns.append(now - started)
        outcomes.append(future.exception() is None)
        last_done[0] = now
        window.release()

    def step(k: int, messages: Messages) -> None:
        message = messages.make()
        windows[k].acquire()
        started = time.perf_counter_ns()
        writer.submit(message).add_done_callback(functools.partial(done, started, windows[k]))

    start = drive(args, step, ids, seed)
    if not writer.flush(timeout=120):
        raise BenchError("the batch writer did not finish within 120 s")
    writer.close()
    result.seconds = (last_done[0] - start) / 1e9
    result.stored = sum(outcomes)
    result.failed = len(outcomes) - result.stored
    return result


def run_unbatched(archive: RecordingArchive, args: argparse.Namespace,
                  ids: MessageIdGenerator, seed: int) -> RunResult:
    """Each producer writes each message itself, one row per statement; latency: the
    call."""
    result = RunResult()
    outcomes: list[bool] = []

    def step(_k: int, messages: Messages) -> None:
        message = messages.make()
        started = time.perf_counter_ns()
        try:
            archive.append([message])
            outcomes.append(True)
        except StorageError:
            outcomes.append(False)
        result.latencies_ns.append(time.perf_counter_ns() - started)

    start = drive(args, step, ids, seed)
    result.seconds = (time.perf_counter_ns() - start) / 1e9
    result.stored = sum(outcomes)
    result.failed = len(outcomes) - result.stored
    return result


RUNNERS: dict[str, Callable[..., RunResult]] = {"batched": run_batched,
                                                "unbatched": run_unbatched}


def run_archive_once(store: Store, archive: RecordingArchive, mode: str,
                     args: argparse.Namespace, dbs: Databases, seed: int) -> RunResult:
    reset_archive(store, archive, args.users)
    ids = MessageIdGenerator(node_num=seed % 256)
    syncs, server_cpu, client_cpu = wal_syncs(store), dbs.pg_cpu_s(), time.process_time()
    result = RUNNERS[mode](archive, args, ids, seed)
    result.client_cpu_s = time.process_time() - client_cpu
    if server_cpu is not None and store.name != "sqlite":
        result.server_cpu_s = (dbs.pg_cpu_s() or 0.0) - server_cpu
    after = wal_syncs(store)
    if syncs is not None and after is not None:
        result.wal_syncs = after - syncs
    result.sizes = list(archive.sizes)
    counted = store.db.query(
        "SELECT COUNT(*) FROM mam_message m JOIN mam_server_user s ON s.id = m.user_id "
        "WHERE s.server = ?", (ARCHIVE_HOST,))[0][0]
    if counted != result.stored:
        raise BenchError(f"{store.name} {mode}: {result.stored} messages reported stored, "
                         f"{counted} in the table")
    return result


def summarize_run(result: RunResult) -> dict[str, Any]:
    latencies_ms = [ns / 1e6 for ns in result.latencies_ns]
    stored = max(result.stored, 1)
    return {
        "inserts_per_s": round(result.stored / result.seconds) if result.seconds else None,
        "stored": result.stored,
        "failed": result.failed,
        "seconds": round(result.seconds, 3),
        "latency_p50_ms": rounded(percentile(latencies_ms, 0.50), 3),
        "latency_p99_ms": rounded(percentile(latencies_ms, 0.99), 3),
        "latency_max_ms": rounded(max(latencies_ms, default=None), 3),
        "statements": len(result.sizes),
        "batch_mean": rounded(statistics.mean(result.sizes), 1) if result.sizes else None,
        "batch_p50": percentile(result.sizes, 0.5),
        "batch_max": max(result.sizes, default=None),
        "client_cpu_us_per_insert": round(result.client_cpu_s / stored * 1e6, 1),
        "server_cpu_us_per_insert": (None if result.server_cpu_s is None
                                     else round(result.server_cpu_s / stored * 1e6, 1)),
        "wal_syncs_per_1000": (None if result.wal_syncs is None
                               else round(result.wal_syncs / stored * 1000, 1)),
    }


def cmd_archive(args: argparse.Namespace, dbs: Databases) -> dict[str, Any]:
    stores: dict[str, Store] = {}
    archives: dict[str, RecordingArchive] = {}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    try:
        for name in args.stores:
            say(f"archive: opening {name}")
            stores[name] = dbs.open(name, args.pool_size)
            archives[name] = RecordingArchive(stores[name].db)
            runs[name] = {mode: [] for mode in MODES}
        # Warm-up, not recorded: opens the pools' connections and warms the caches.
        warm = argparse.Namespace(**{**vars(args), "messages": None,
                                     "duration": min(args.duration / 2, WARM_UP_S)})
        for name in args.stores:
            for mode in MODES:
                run_archive_once(stores[name], archives[name], mode, warm, dbs, 0)
        say("archive: warmed up")
        seed = 0
        for repeat in range(args.repeat):
            for name in args.stores:
                for mode in MODES:
                    seed += 1
                    result = run_archive_once(stores[name], archives[name], mode, args,
                                              dbs, seed)
                    figures = summarize_run(result)
                    runs[name][mode].append(figures)
                    say(f"archive {repeat + 1}/{args.repeat} {name} {mode}: "
                        f"{figures['inserts_per_s']:,}/s, p50 {figures['latency_p50_ms']} ms, "
                        f"p99 {figures['latency_p99_ms']} ms, batch {figures['batch_mean']}, "
                        f"failed {figures['failed']}")
        out: dict[str, Any] = {}
        for name in args.stores:
            out[name] = {"store": stores[name].note}
            for mode in MODES:
                per_run = runs[name][mode]
                out[name][mode] = {
                    **{key: median([r[key] for r in per_run]) for key in per_run[0]
                       if key not in ("stored", "failed", "statements", "seconds")},
                    "stored": sum(r["stored"] for r in per_run),
                    "failed": sum(r["failed"] for r in per_run),
                    "runs": per_run,
                }
            out[name]["batched_vs_unbatched"] = ratio(
                out[name]["batched"]["inserts_per_s"], out[name]["unbatched"]["inserts_per_s"])
            out[name]["batched_vs_unbatched_runs"] = [
                ratio(b["inserts_per_s"], u["inserts_per_s"])
                for b, u in zip(runs[name]["batched"], runs[name]["unbatched"], strict=True)]
        return out
    finally:
        for name, store in stores.items():
            with contextlib.suppress(StorageError, KeyError):  # leave no bench rows behind
                reset_archive(store, archives[name], args.users, compact=False)
                store.db.execute("DELETE FROM mam_server_user WHERE server = ?",
                                 (ARCHIVE_HOST,))
            store.db.close()


def ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return round(a / b, 2)


def archive_table(out: dict[str, Any]) -> str:
    rows = []
    for name, store in out.items():
        label = "cockroachdb (driver, on PostgreSQL)" if name == "cockroachdb" else name
        for mode in MODES:
            f = store[mode]
            rows.append([
                label, mode, compare._fmt(f["inserts_per_s"], 0),
                " ".join(compare._fmt(r["inserts_per_s"]) for r in f["runs"]),
                compare._fmt(f["latency_p50_ms"], 2), compare._fmt(f["latency_p99_ms"], 2),
                compare._fmt(f["batch_mean"], 1), compare._fmt(f["batch_max"]),
                compare._fmt(f["client_cpu_us_per_insert"], 1),
                compare._fmt(f["server_cpu_us_per_insert"], 1),
                compare._fmt(f["wal_syncs_per_1000"], 1), compare._fmt(f["failed"])])
        rows.append([label, "batched/unbatched", compare._fmt(store["batched_vs_unbatched"], 2),
                     " ".join(compare._fmt(r, 2) for r in store["batched_vs_unbatched_runs"]),
                     *[""] * 8])
    return compare.table(
        ["store", "mode", "inserts/s", "runs", "p50 ms", "p99 ms", "batch mean", "batch max",
         "bench CPU µs/insert", "server CPU µs/insert", "WAL fsyncs/1000", "failed"], rows)


# -- login ---------------------------------------------------------------------------------


@dataclass
class StoreNode(compare.Mongoose):
    """Our node as compare.py runs it, with its accounts in the store under test."""

    method: str = "internal"
    pool_toml: str = ""
    iterations: int = compare.ITERATIONS

    def write_config(self) -> None:
        super().write_config()
        # Free ports and a name of its own, so that a compare.py run (or another bench
        # built on it) going on at the same time does not collide with this node.
        self.plain_port, self.tls_port = free_port(), free_port()
        path = self.run_dir / "mongoose.toml"
        text = path.read_text()
        for old, new in (('methods = ["internal"]', f'methods = ["{self.method}"]'),
                         ("port = 5522", f"port = {self.plain_port}"),
                         ("port = 5523", f"port = {self.tls_port}"),
                         ("port = 5529", f"port = {free_port()}"),
                         ('node_name = "compare@localhost"',
                          'node_name = "storage-bench@localhost"')):
            if old not in text:
                raise BenchError(f"{compare.PEERS / 'mongoose.toml'} has no `{old}` to "
                                 "replace")
            text = text.replace(old, new)
        path.write_text(text + self.pool_toml)

    def create_accounts(self) -> str:
        if self.method == "rdbms":
            subprocess.run([sys.executable, "-m", "mongoose", "db", "init", "-c",
                            "mongoose.toml"], cwd=self.run_dir, check=True,
                           stdout=subprocess.DEVNULL)
        with mock.patch.object(compare, "ITERATIONS", self.iterations):
            return super().create_accounts()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pool_toml(params: PgParams, workers: int) -> str:
    """``[outgoing_pools.rdbms.default]`` for ``params`` (JSON strings are TOML strings)."""
    lines = [
        "", "[outgoing_pools.rdbms.default]", f"workers = {workers}",
        "[outgoing_pools.rdbms.default.connection]", f"driver = {json.dumps(params.driver)}",
        f"host = {json.dumps(params.host)}", f"port = {params.port}",
        f"database = {json.dumps(params.database)}",
        f"username = {json.dumps(params.username)}",
        f"password = {json.dumps(params.password)}",
    ]
    return "\n".join(lines) + "\n"


def remove_accounts(params: PgParams, users: int) -> None:
    """Delete accounts u1..uN@localhost from a database given with --pg-dsn."""
    db = PgDatabase(params, pool_size=1)
    try:
        migrate.init(db)
        db.execute_many("DELETE FROM users WHERE server = ? AND username = ?",
                        [(compare.DOMAIN, f"{compare.USER_PREFIX}{i}")
                         for i in range(1, users + 1)])
    finally:
        db.close()


def cmd_login(args: argparse.Namespace, dbs: Databases, results: Path) -> dict[str, Any]:
    setup = compare.Setup(args.login_users, args.mechanism, "plain")
    params = dbs.params("pgsql")
    if dbs.external is not None:
        remove_accounts(params, args.login_users)
    nodes = {
        "pgsql": StoreNode("mongoose-pgsql", results / "run" / "pgsql", setup, method="rdbms",
                           pool_toml=pool_toml(params, args.pool_workers),
                           iterations=args.iterations),
        "sqlite": StoreNode("mongoose-sqlite", results / "run" / "sqlite", setup,
                            iterations=args.iterations),
    }
    load = compare.Load(users=args.login_users, tls="none", mechanism=args.mechanism,
                        rate=1000.0, duration=1.0, login_rate=0.0,
                        processes=args.processes, extra=["--concurrency",
                                                         str(args.concurrency)])
    compare.raise_fd_limit(args.login_users)
    generator = compare.Generator(results)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in LOGIN_STORES}
    try:
        for repeat in range(args.repeat):
            for name in LOGIN_STORES:
                node = nodes[name]
                with node.running("none") as proc:
                    db_cpu = dbs.pg_cpu_s() if name == "pgsql" else None
                    summary = generator.run("connect", node, proc, load, login_rate=0,
                                            label=f"connect-{name}-{repeat + 1}")
                    if db_cpu is not None:
                        db_cpu = (dbs.pg_cpu_s() or 0.0) - db_cpu
                figures = {key: summary.get(key) for key in (
                    "login_rate_per_s", "logins_ok", "logins_failed",
                    "time_to_all_online_s", "server_cpu_s", "generator_cpu_s")}
                logins = summary.get("logins_ok") or 0
                figures["server_cpu_ms_per_login"] = (
                    round(summary["server_cpu_s"] / logins * 1000, 2)
                    if logins and summary.get("server_cpu_s") is not None else None)
                figures["db_cpu_ms_per_login"] = (
                    round(db_cpu / logins * 1000, 3) if logins and db_cpu is not None
                    else None)
                runs[name].append(figures)
                say(f"login {repeat + 1}/{args.repeat} {name}: "
                    f"{figures['login_rate_per_s']} logins/s, failed "
                    f"{figures['logins_failed']}")
    finally:
        generator.stop()
        if dbs.external is not None:
            with contextlib.suppress(StorageError):
                remove_accounts(params, args.login_users)
    out: dict[str, Any] = {}
    for name in LOGIN_STORES:
        per_run = runs[name]
        out[name] = {
            "login_rate_per_s": median([r["login_rate_per_s"] for r in per_run]),
            "server_cpu_ms_per_login": median([r["server_cpu_ms_per_login"]
                                               for r in per_run]),
            "db_cpu_ms_per_login": median([r["db_cpu_ms_per_login"] for r in per_run]),
            "logins_failed": sum(r["logins_failed"] or 0 for r in per_run),
            "accounts": nodes[name].accounts,
            "runs": per_run,
        }
    out["pgsql_vs_sqlite"] = ratio(out["pgsql"]["login_rate_per_s"],
                                   out["sqlite"]["login_rate_per_s"])
    out["pgsql_vs_sqlite_runs"] = [  # each repeat's pair ran back to back
        ratio(p["login_rate_per_s"], q["login_rate_per_s"])
        for p, q in zip(runs["pgsql"], runs["sqlite"], strict=True)]
    return out


def login_table(out: dict[str, Any]) -> str:
    rows = []
    for name in LOGIN_STORES:
        f = out[name]
        rows.append([
            "PostgreSQL (rdbms)" if name == "pgsql" else "SQLite (internal)",
            compare._fmt(f["login_rate_per_s"]),
            " ".join(compare._fmt(r["login_rate_per_s"]) for r in f["runs"]),
            compare._fmt(f["server_cpu_ms_per_login"], 2),
            compare._fmt(f["db_cpu_ms_per_login"], 3), compare._fmt(f["logins_failed"]),
            compare._fmt(f["accounts"].get("per_s"))])
    rows.append(["PostgreSQL/SQLite", compare._fmt(out["pgsql_vs_sqlite"], 2),
                 " ".join(compare._fmt(r, 2) for r in out["pgsql_vs_sqlite_runs"]), "", "", "",
                 ""])
    return compare.table(["accounts in", "logins/s", "runs", "node CPU ms/login",
                          "PostgreSQL CPU ms/login", "failed", "accounts registered/s"], rows)


# -- command line --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Archive inserts through the batched writer on SQLite and PostgreSQL, "
        "and logins with the accounts in PostgreSQL.")
    add = parser.add_argument
    add("scenario", nargs="?", choices=("all", "archive", "login"), default="all")
    add("--stores", type=lambda s: s.split(","), default=list(STORES),
        help="archive: comma-separated, from sqlite,pgsql,cockroachdb")
    add("--producers", type=int, help="archive: producer threads (default 8)")
    add("--window", type=int,
        help="archive, batched: unresolved messages per producer at most (default 32)")
    add("--users", type=int, help="archive: owners of archives (default 300)")
    add("--duration", type=float, help="archive: seconds per run (default 5)")
    add("--messages", type=int, default=None,
        help="archive: messages per run in all, instead of --duration")
    add("--rate", type=float, default=0.0,
        help="archive: messages/s offered in all (default 0: as fast as the producers "
        "and the window go)")
    add("--max-batch", type=int, default=100, help="BatchWriter max_batch (default 100)")
    add("--flush-interval", type=float, default=0.01,
        help="BatchWriter flush_interval, s (default 0.01)")
    add("--pool-size", type=int, default=None,
        help="archive: PostgreSQL connections (default: --producers)")
    add("--repeat", type=int, help="runs of each figure; medians are reported (default 3)")
    add("--login-users", type=int, help="login: accounts and logins per run (default 1000)")
    add("--iterations", type=int, default=compare.ITERATIONS,
        help="login: SCRAM iteration count of the accounts (default %(default)s)")
    add("--mechanism", choices=("PLAIN", "SCRAM-SHA-256"), default="PLAIN")
    add("--concurrency", type=int, default=100, help="login: logins in flight (default 100)")
    add("--processes", type=int, default=1, help="login: generator processes (default 1)")
    add("--pool-workers", type=int, default=4,
        help="login: the node's pool size per worker process (default 4)")
    add("--pg-dsn", default=None, help="use this PostgreSQL database instead of starting one")
    add("--pg-durability", choices=("on", "off"), default="on",
        help="our PostgreSQL: on = PostgreSQL's durable defaults, off = the tests' "
        "fsync/synchronous_commit/full_page_writes off (default on)")
    add("--results", type=Path, default=None,
        help="login: results directory (default bench/results/storage-TIMESTAMP)")
    add("--quick", action="store_true", help="smoke test: " + ", ".join(
        f"{k.replace('_', '-')} {v}" for k, v in QUICK.items()) + " (explicit options win)")
    args = parser.parse_args(argv)
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, QUICK[key] if args.quick else default)
    if args.pool_size is None:
        args.pool_size = args.producers
    unknown = set(args.stores) - set(STORES)
    if unknown:
        parser.error(f"unknown stores: {', '.join(sorted(unknown))}")
    for key in ("producers", "window", "repeat", "login_users", "pool_size", "max_batch",
                "iterations", "concurrency", "processes", "pool_workers"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.users < 2:
        parser.error("--users must be at least 2")
    if args.rate < 0:
        parser.error("--rate must be at least 0")
    if args.messages is not None and args.messages < args.producers:
        parser.error("--messages must be at least --producers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()

    def terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    dbs = Databases(args)
    record: dict[str, Any] = {"bench": "storage", "scenario": args.scenario}
    try:
        if args.scenario in ("all", "archive"):
            record["archive"] = cmd_archive(args, dbs)
            print(archive_table(record["archive"]), flush=True)
        if args.scenario in ("all", "login"):
            stamp = time.strftime("%Y%m%d-%H%M%S")
            results = (args.results or ROOT / "bench" / "results" / f"storage-{stamp}")
            results = results.resolve()
            results.mkdir(parents=True, exist_ok=True)
            say(f"login: results in {results}")
            record["login"] = cmd_login(args, dbs, results)
            record["results_dir"] = str(results)
            print(login_table(record["login"]), flush=True)
        record["postgres"] = dbs.pg_version()
    except (BenchError, compare.CompareError, StorageError) as error:
        say(f"error: {error}")
        return 1
    except subprocess.CalledProcessError as error:
        say(f"error: {error}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        dbs.close()
    record["params"] = {
        key: getattr(args, key) for key in (
            "stores", "producers", "window", "users", "duration", "messages", "rate",
            "max_batch",
            "flush_interval", "pool_size", "repeat", "login_users", "iterations",
            "mechanism", "concurrency", "processes", "pool_workers", "pg_durability",
            "quick")}
    record["params"]["pg"] = "--pg-dsn" if args.pg_dsn else "throwaway"
    record["params"]["packet_bytes_mean"] = round(packet_bytes(args.users))
    record.update({
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "elapsed_s": round(time.perf_counter() - started, 1),
    })
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
