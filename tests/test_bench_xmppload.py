"""Smoke tests of the XMPP load generator: ``bench/xmppload.py SCENARIO --quick`` against a
real node with a plain-TCP listener and accounts u1..u200 (--quick logs in u1..u10).

One node serves the module; the presence-with-rosters smoke test has a node of its own
with mod_roster and mod_presence and the rosters of bench/roster_setup.py. Each test runs
the tool as a subprocess, as bench/compare.py does, and checks its contract: JSON lines on
stdout (ticks, then the summary last), the same lines in ``events.jsonl``, a ``plot.png``,
and the figures of the summary. The last ones feed bytes to a session's stanza splitter
directly, with no server, and check the ring rosters.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from dist_harness import MongooseNode, TestNode, free_port
from xmpp_harness import PASSWORD, xmpp_node

ROOT = Path(__file__).resolve().parent.parent
# The idle test needs more sessions than the node has ever held at once, so that its RSS
# has to grow: 10 sessions may fit in memory the allocator already has.
IDLE_USERS = 200
USERS = tuple(f"u{i}" for i in range(1, IDLE_USERS + 1))
SUMMARY_KEYS = (
    "scenario", "label", "users", "logins_ok", "logins_failed", "login_rate_per_s",
    "time_to_all_online_s", "sent", "delivered", "lost", "duplicated", "errors",
    "delivered_per_s", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "latency_max_ms",
    "rss_before_bytes", "rss_after_bytes", "rss_per_session_bytes", "generator_cpu_s",
    "elapsed_s", "results_dir",
)


def load_bench(name: str) -> ModuleType:
    """bench/NAME.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, test_node: TestNode) -> Iterator[MongooseNode]:
    port = free_port()
    listen = f'[[listen.c2s]]\nport = {port}\nip_address = "127.0.0.1"\ntls.mode = "none"\n'
    n = xmpp_node(tmp_path_factory.mktemp("xmppload"), "xmppload@localhost",
                  test_node.keys_file, users=USERS, listen_toml=listen)
    n.plain_port = port  # type: ignore[attr-defined]
    yield n
    n.kill()


def xmppload(node: MongooseNode, scenario: str, results: Path,
             *extra: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the tool with --quick; check the output contract; return (summary, ticks)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "xmppload.py"), scenario, "--quick",
         "--port", str(node.plain_port), "--password", PASSWORD,  # type: ignore[attr-defined]
         "--results", str(results), "--label", "mongoose", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines and lines[-1]["kind"] == "summary", result.stdout
    assert all(line["kind"] == "tick" for line in lines[:-1]), result.stdout
    events = [json.loads(line) for line in (results / "events.jsonl").read_text().splitlines()]
    assert events == lines
    assert (results / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = lines[-1]
    assert [key for key in SUMMARY_KEYS if key not in summary] == []
    assert summary["scenario"] == scenario and summary["label"] == "mongoose"
    assert summary["results_dir"] == str(results)
    return summary, lines[:-1]


@pytest.mark.timeout(40)
def test_connect_logs_every_user_in(node, tmp_path):
    """connect logs all 10 users in, times it and reports no failure."""
    summary, ticks = xmppload(node, "connect", tmp_path)
    assert summary["logins_ok"] == 10 and summary["logins_failed"] == 0
    assert summary["time_to_all_online_s"] > 0 and summary["login_rate_per_s"] > 0
    assert summary["sent"] is None and summary["rss_per_session_bytes"] is None
    assert sum(tick["logins_ok"] for tick in ticks) == 10


@pytest.mark.timeout(40)
def test_one_to_one_delivers_every_message_once(node, tmp_path):
    """one_to_one delivers what it sends, with no loss, duplicate or error, and times it."""
    summary, ticks = xmppload(node, "one_to_one", tmp_path)
    assert summary["logins_ok"] == 10
    assert summary["delivered"] > 0 and summary["delivered"] == summary["sent"]
    assert (summary["lost"], summary["duplicated"], summary["errors"]) == (0, 0, 0)
    assert 0 < summary["latency_p50_ms"] <= summary["latency_p99_ms"] \
        <= summary["latency_max_ms"]
    assert summary["generator_cpu_s"] > 0
    assert sum(tick["sent"] for tick in ticks) == summary["sent"]


@pytest.mark.timeout(40)
def test_idle_reports_server_memory_per_session(node, tmp_path):
    """idle with --server-pid reports the server's RSS before and after, per session."""
    summary, ticks = xmppload(node, "idle", tmp_path, "--server-pid", str(node.proc.pid),
                              "--users", str(IDLE_USERS), "--login-rate", "0")
    assert summary["logins_ok"] == IDLE_USERS
    assert summary["rss_after_bytes"] > summary["rss_before_bytes"] > 0
    assert summary["rss_per_session_bytes"] > 0
    assert ticks and all(tick["online"] == IDLE_USERS for tick in ticks)


@pytest.mark.timeout(40)
def test_presence_is_not_available_without_rosters(node, tmp_path):
    """presence without --roster-size or --force says it is not available and still writes
    its files."""
    summary, ticks = xmppload(node, "presence", tmp_path)
    assert summary["available"] is False and summary["reason"]
    assert ticks == []


@pytest.mark.timeout(40)
def test_presence_with_force_times_each_users_own_echo(node, tmp_path):
    """presence --force times the echo of each user's initial presence."""
    summary, _ = xmppload(node, "presence", tmp_path, "--force")
    assert summary["available"] is True
    assert summary["sent"] == summary["delivered"] == 10 and summary["lost"] == 0
    assert summary["latency_p50_ms"] > 0
    assert summary["presence_stanzas_received"] == 0
    assert "presence_pairs_expected" not in summary


ROSTER_USERS = 10  # --quick's users
ROSTER_SIZE = 4


@pytest.fixture(scope="module")
def roster_node(tmp_path_factory: pytest.TempPathFactory,
                test_node: TestNode) -> Iterator[MongooseNode]:
    if not (ROOT / "mongoose" / "modules" / "mod_presence.py").is_file():
        pytest.skip("mongoose/modules/mod_presence.py is not written yet: our server "
                    "does not broadcast presence to rosters")
    from mongoose import config as config_mod

    port = free_port()
    listen = f'[[listen.c2s]]\nport = {port}\nip_address = "127.0.0.1"\ntls.mode = "none"\n'
    n = xmpp_node(tmp_path_factory.mktemp("xmppload-rosters"), "xmppload-rosters@localhost",
                  test_node.keys_file, users=USERS[:ROSTER_USERS], listen_toml=listen,
                  extra_toml="[modules.mod_roster]\n[modules.mod_presence]\n")
    n.plain_port = port  # type: ignore[attr-defined]
    cfg = config_mod.load(n.config)
    load_bench("roster_setup").mongoose_rosters(
        n.dir / cfg.general.data_dir / "mongoose.db", "localhost", "u", 1, ROSTER_USERS,
        ROSTER_SIZE)
    yield n
    n.kill()


@pytest.mark.timeout(40)
def test_presence_with_rosters_reaches_every_contact(roster_node, tmp_path):
    """presence --roster-size: each user's roster comes back whole and every user sees
    the presence of each of its contacts, and of no one else."""
    summary, ticks = xmppload(roster_node, "presence", tmp_path,
                              "--roster-size", str(ROSTER_SIZE))
    pairs = ROSTER_USERS * ROSTER_SIZE
    assert summary["available"] is True and summary["logins_ok"] == ROSTER_USERS
    assert summary["presence_pairs_expected"] == summary["presence_pairs_seen"] == pairs
    assert summary["presence_complete"] is True and summary["presence_pairs_missing"] == 0
    assert 0 < summary["time_to_full_presence_s"] < summary["elapsed_s"]
    assert summary["presence_stanzas_received"] == pairs + summary["presence_duplicates"]
    assert summary["presence_from_non_contacts"] == 0
    assert summary["roster_items_received"] == summary["roster_items_expected"] == pairs
    assert ticks[-1]["pairs_seen"] == pairs
    assert sum(tick["pairs"] for tick in ticks) == pairs


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


@pytest.mark.timeout(10)
def test_stanza_splitter_counts_stanzas_cut_at_every_byte(tmp_path):
    """Input cut at every byte: one delivery, one duplicate, one bounce, one message of an
    earlier run, a pong to a server ping, and the close on the server's stream end."""
    module = load_bench("xmppload")
    opts = module.parse_args(["one_to_one", "--results", str(tmp_path)])
    worker = module.Worker(opts, range(1, 2), None)
    client = module.Client(worker, 1)
    client.transport = transport = FakeTransport()
    client.running = True
    run = opts.run_id
    body = f"<body>xmppload {run} 2 7 {10**18}</body>"
    stream = (
        "<presence from='u1@localhost/xmppload'/>"
        "<iq type='get' id='p1' from='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
        f"<message xml:lang='en' type='chat' from='u2@localhost/xmppload'>{body}</message>"
        f"<message type=\"chat\" from='u2@localhost/xmppload'>{body}</message>"
        f"<message type=\"error\" from='u9@localhost'><body>xmppload {run} 1 0 1</body>"
        "<error type='cancel'/></message>"
        f"<message type='chat'><body>xmppload 0000 2 8 {10**18}</body></message>"
        "<message/></stream:stream>"
    ).encode()
    for i in range(len(stream)):
        client.data_received(stream[i:i + 1])
    counts = (worker.delivered, worker.duplicated, worker.errors, worker.stale)
    assert counts == (1, 1, 1, 1)
    assert len(worker.latencies) == 1
    assert transport.written == [b"<iq type='result' id='p1' to='localhost'/>"]
    assert transport.closed and client.buf == b""


@pytest.mark.timeout(10)
def test_presence_splitter_counts_each_contact_once(tmp_path):
    """Presence cut at every byte: the own echo is timed, a contact counts once however
    often it comes, a non-contact, an unavailable presence and a subscription request do
    not count as contacts, and the roster result's items are counted."""
    module = load_bench("xmppload")
    opts = module.parse_args(["presence", "--users", "10", "--roster-size", "4",
                              "--results", str(tmp_path)])
    worker = module.Worker(opts, range(5, 6), None)
    client = module.Client(worker, 5)
    client.transport = FakeTransport()
    client.running = True
    client.presence_ns = 1
    stream = (
        b"<iq type='result' id='roster' to='u5@localhost/xmppload'><query "
        b"xmlns='jabber:iq:roster'><item jid='u3@localhost' subscription='both'/>"
        b"<item jid='u4@localhost' subscription='both'/></query></iq>"
        b"<presence from='u5@localhost/xmppload' to='u5@localhost/xmppload'/>"
        b"<presence from='u4@localhost/xmppload'><priority>0</priority></presence>"
        b"<presence from=\"u7@localhost/xmppload\"/>"
        b"<presence from='u4@localhost/xmppload'/>"
        b"<presence from='u9@localhost/xmppload'/>"
        b"<presence from='u6@localhost/xmppload' type='unavailable'/>"
        b"<presence from='u3@localhost' type='subscribe'/>"
        b"<presence from='someone@localhost/x'/>"
    )
    for i in range(len(stream)):
        client.data_received(stream[i:i + 1])
    assert worker.echoes == 1 and client.buf == b""
    assert (worker.pairs, worker.presences, worker.strangers) == (2, 5, 2)
    assert (worker.rosters, worker.roster_items) == (1, 2)


@pytest.mark.timeout(10)
def test_ring_rosters_are_symmetric_and_slots_distinct():
    """Each user's R contacts are distinct others, the relation is symmetric, each
    contact has its own slot, and expected pairs count only online ends."""
    module = load_bench("xmppload")
    first, users, size = 3, 11, 6
    everyone = range(first, first + users)
    for i in everyone:
        contacts = module.roster_contacts(i, first, users, size)
        assert len(set(contacts)) == size and i not in contacts
        assert {module.contact_slot(i, j, first, users, size) for j in contacts} \
            == set(range(size))
        for j in everyone:
            assert (j in contacts) == (i in module.roster_contacts(j, first, users, size))
            if j not in contacts:
                assert module.contact_slot(i, j, first, users, size) is None
    assert module.expected_pairs(list(everyone), first, users, size) == users * size
    assert module.expected_pairs([3, 4, 13], first, users, size) == 6
