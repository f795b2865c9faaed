"""The node's metrics: one /metrics page merged from every worker, and the Graphite push.

A real node with two workers, prometheus served on a ``[[listen.http]]`` port and
graphite pushing every second to a listener in this test; real slixmpp clients.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from dist_harness import MongooseNode, TestNode, free_port
from helpers import wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_c2s_cluster import _worker_os_pid
from test_c2s_features import wait_reachable
from test_instrument import CarbonServer
from xmpp_client import Client
from xmpp_harness import DOMAIN, PASSWORD, xmpp_node_with

pytestmark = pytest.mark.timeout(90)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int, path: str = "/metrics") -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def workers_of(samples: Samples, name: str) -> set[str]:
    return {dict(labels).get("worker", "") for n, labels in samples if n == name}


@pytest.fixture(scope="module")
def carbon() -> Iterator[CarbonServer]:
    server = CarbonServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, test_node: TestNode,
         carbon: CarbonServer) -> Iterator[MongooseNode]:
    http_port = free_port()
    instrumentation = (
        "[instrumentation]\nprobe_interval = 1\n[instrumentation.prometheus]\n"
        f'[instrumentation.graphite]\nhost = "127.0.0.1"\nport = {carbon.port}\n'
        'interval = 1\nprefix = "mim"\n'
        f'[[listen.http]]\nport = {http_port}\nip_address = "127.0.0.1"\n'
        '[[listen.http.handlers.mongoose_prometheus_handler]]\nhost = "_"\n'
        'path = "/metrics"\n')
    n = xmpp_node_with(tmp_path_factory.mktemp("metrics"), "metrics@localhost",
                       test_node.keys_file, users=("alice", "bob"),
                       modules_toml="[modules.mod_ping]\n" + instrumentation)
    n.http_port = http_port  # type: ignore[attr-defined]
    yield n
    n.kill()


def test_a_real_session_shows_on_the_merged_page(node, clients, loop):
    """Scraped while alice and bob chat: logins and stanzas summed over the workers, with
    the host_type label; per-process gauges for the root and both workers."""
    before = scrape(node.http_port)
    logins = value(before, "sm_session_logins_total", host_type="localhost") or 0
    messages = value(before, "xmpp_element_in_message_count_total",
                     connection_type="c2s", host_type="localhost") or 0
    alice = Client(loop, f"alice@{DOMAIN}/m", PASSWORD, port=node.c2s_port).connect()
    bob = Client(loop, f"bob@{DOMAIN}/m", PASSWORD, port=node.c2s_port).connect()
    clients.extend([alice, bob])
    # Bob's session reaches alice's worker's replica of the session table a moment after
    # his login; headlines until one arrives (they never bounce).
    wait_reachable(lambda body: alice.send_message(bob.jid, body, mtype="headline"), bob)
    for i in range(5):
        alice.send_message(bob.jid, f"hi {i}")
    wait_until(lambda: sum(b.startswith("hi ") for b in bob.bodies()) == 5,
               what="bob's five messages")

    def counted() -> bool:
        now = scrape(node.http_port)
        return (value(now, "sm_session_logins_total", host_type="localhost") == logins + 2
                and value(now, "xmpp_element_in_message_count_total", connection_type="c2s",
                          host_type="localhost") >= messages + 5)

    wait_until(counted, timeout=20, what="two logins and five messages on /metrics")
    # Probes run every probe_interval (1 s here) from each process's start.
    wait_until(lambda: workers_of(scrape(node.http_port), "system_memory_total")
               == {"0", "1", "2"}, timeout=10, what="memory gauges of the root and 2 workers")
    now = scrape(node.http_port)
    assert all(v > 1_000_000 for (n, _), v in now.items() if n == "system_memory_total")
    assert workers_of(now, "system_up_time_seconds") == {"0", "1", "2"}
    wait_until(lambda: sum(
        v for (n, labels), v in scrape(node.http_port).items()
        if n == "actor_mailbox_actors" and ("kind", "C2S") in labels) >= 2,
        timeout=10, what="the mailbox probe counting the two sessions")
    assert value(now, "actor_started_count_total", kind="C2S") >= 2
    assert value(now, "cets_info_joined_nodes", worker="1") == 1


def test_a_crashed_session_and_a_restarted_worker_are_counted(node, clients, loop):
    """A session actor that crashes counts in actor_crashed{kind=C2S}; a worker killed
    with SIGKILL is restarted by its supervisor in the root: actor_restarted counts it,
    and the page is served throughout."""
    before = scrape(node.http_port)
    crashed = value(before, "actor_crashed_count_total", kind="C2S") or 0
    victim = Client(loop, f"alice@{DOMAIN}/crash", PASSWORD, port=node.c2s_port).connect()
    clients.append(victim)
    victim.send_raw("<iq type='set' id='boom'><crash xmlns='urn:mongoose:test'/></iq>")
    wait_until(victim.disconnected.is_set, what="the crashed session's client dropped")
    wait_until(lambda: (value(scrape(node.http_port), "actor_crashed_count_total",
                              kind="C2S") or 0) == crashed + 1,
               timeout=20, what="actor_crashed{kind=C2S} + 1")

    restarted = value(before, "actor_restarted_count_total", kind="WorkerProcess") or 0
    os.kill(_worker_os_pid(node, 2), 9)
    node.wait_for("worker_up", worker=2, timeout=30)

    def restarted_and_merged() -> bool:
        now = scrape(node.http_port)
        return (value(now, "actor_restarted_count_total", kind="WorkerProcess") == restarted + 1
                and "2" in workers_of(now, "system_memory_total"))

    wait_until(restarted_and_merged, timeout=30,
               what="the worker's restart counted and its metrics back on the page")


def test_graphite_gets_the_merged_values(node, carbon, clients, loop):
    """Every second the node pushes prefix.event.labels.metric lines of the merged
    values, per-process gauges with a worker part."""
    alice = Client(loop, f"alice@{DOMAIN}/g", PASSWORD, port=node.c2s_port).connect()
    clients.append(alice)

    def pushed() -> list[str]:
        return carbon.data.decode(errors="replace").splitlines()

    wait_until(lambda: any(line.startswith("mim.sm_session.localhost.logins ")
                           for line in pushed()), timeout=20, what="a pushed logins line")
    lines = pushed()
    assert any(line.startswith("mim.system_memory.worker1.total ") for line in lines)
    assert all(len(line.split(" ")) == 3 for line in lines if line)


def test_other_paths_are_not_found(node):
    with pytest.raises(urllib.error.HTTPError) as error:
        scrape(node.http_port, "/other")
    assert error.value.code == 404


def test_a_taken_metrics_port_fails_the_start_naming_the_address(tmp_path, test_node):
    """A node whose metrics port is taken does not start, and says which address."""
    import socket

    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        n = MongooseNode(tmp_path, "taken@localhost", port=free_port(),
                         keys_file=test_node.keys_file,
                         extra_toml=f"[instrumentation.prometheus]\nport = {port}\n")
        n.start(wait=False)
        event = n.wait_for("node_start_failed", timeout=30)
        assert f"127.0.0.1:{port}" in event["reason"], event
        assert n.wait(30) == 1
    finally:
        taken.close()
        n.kill()
