"""Real nodes that find each other through the discovery_nodes table, with no seeds.

Every node runs `[internal_databases.cets] backend = "rdbms"` on one database: a
PostgreSQL database (tests/pg_harness.py) given to every node as its
`[outgoing_pools.rdbms.default]`, or one SQLite file shared by the nodes (each node's
`<data_dir>/mongoose.db` is a symlink to it). This test process joins the first node's
cluster (as test@localhost) to watch the view and ask each node's discovery actor for its
status.
"""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dist_harness import MongooseNode, TestNode, free_port
from helpers import wait_until

import otp
from mongoose.storage.database import Database
from mongoose.storage.sqlite import SqliteDatabase

pytestmark = pytest.mark.timeout(180)

EXPIRY = 5  # seconds: long enough to see a stopped node listed, short for the test


class RdbmsCluster:
    """Nodes sharing one discovery table; all killed at the end.

    ``pool_toml``: the nodes' `[outgoing_pools.rdbms.default]` ("" for the SQLite file
    ``sqlite_path``); ``db``: this test's own connection to that database.
    """

    def __init__(self, directory: Path, test_node: TestNode, db: Database, *,
                 pool_toml: str = "", sqlite_path: Path | None = None) -> None:
        self.dir = directory
        self.test_node = test_node
        self.db = db
        self.pool_toml = pool_toml
        self.sqlite_path = sqlite_path
        self.cluster_name = f"test-{uuid.uuid4().hex[:8]}"
        self.nodes: list[MongooseNode] = []

    def node(self, name: str) -> MongooseNode:
        node = MongooseNode(
            self.dir, name, port=free_port(), keys_file=self.test_node.keys_file, workers=1,
            extra_toml=(
                '[internal_databases.cets]\nbackend = "rdbms"\n'
                f'cluster_name = "{self.cluster_name}"\n'
                f"discovery_interval = 0.2\nnode_expiry = {EXPIRY}\n" + self.pool_toml
            ),
        )
        if self.sqlite_path is not None:
            data = node.dir / "data"
            data.mkdir(mode=0o700, exist_ok=True)
            (data / "mongoose.db").symlink_to(self.sqlite_path)
        self.nodes.append(node)
        return node

    def rows(self) -> dict[str, tuple[int, str]]:
        """node_name -> (node_num, address) of the cluster's rows."""
        return {
            name: (num, address)
            for name, num, address in self.db.query(
                "SELECT node_name, node_num, address FROM discovery_nodes"
                " WHERE cluster_name = ?", (self.cluster_name,))
        }

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        self.db.close()


@pytest.fixture(params=["sqlite", "pgsql"])
def rdbms_cluster(
    request: pytest.FixtureRequest, tmp_path: Path, test_node: TestNode
) -> Iterator[RdbmsCluster]:
    if request.param == "sqlite":
        path = tmp_path / "shared.db"
        cluster = RdbmsCluster(tmp_path, test_node, SqliteDatabase(path), sqlite_path=path)
    else:
        from mongoose.storage.pg import PgDatabase

        database = request.getfixturevalue("pg_database")
        db = PgDatabase(database.server.params(database.name), pool_size=1)
        cluster = RdbmsCluster(tmp_path, test_node, db, pool_toml=database.config_toml())
    yield cluster
    cluster.close()
    wait_until(lambda: test_node.nodes() == ["test@localhost"], timeout=15,
               what="the test node alone again")


def discovery_status(node: str) -> dict[str, Any]:
    return otp.ask_named(node, 0, "cets_discovery", "status").get(timeout=5)


def address(node: MongooseNode) -> str:
    return node.address.removeprefix("tcp://")


def test_nodes_find_each_other_through_the_table(
    rdbms_cluster: RdbmsCluster, test_node: TestNode
) -> None:
    """Three nodes without seeds form one cluster through discovery_nodes, each with its
    own node_num; a stopped node stays listed (and unavailable) until its row expires,
    then its number goes to the next node, which joins through the table too."""
    a, b, c = (rdbms_cluster.node(f"{n}@localhost") for n in "abc")
    starters = [threading.Thread(target=node.start) for node in (a, b, c)]
    for starter in starters:
        starter.start()
    for starter in starters:
        starter.join(60)
    test_node.join(a.address)
    names = {"a@localhost", "b@localhost", "c@localhost"}
    wait_until(lambda: names <= set(test_node.nodes()), timeout=30,
               what=lambda: f"a, b and c in one cluster: {test_node.nodes()}")
    # The view of every node, not only a's: each found the others by itself.
    for name in names:
        wait_until(lambda name=name: set(discovery_status(name)["discovered"])
                   == {address(n) for n in (a, b, c) if n.name != name}, timeout=10,
                   what=lambda name=name: f"{name} discovered the others: "
                   f"{discovery_status(name)}")
    rows = rdbms_cluster.rows()
    assert {name: row[1] for name, row in rows.items()} == {n.name: address(n) for n in (a, b, c)}
    assert sorted(num for num, _ in rows.values()) == [1, 2, 3]
    for name in names:
        status = discovery_status(name)
        assert status["node_num"] == rows[name][0]
        assert status["cluster_name"] == rdbms_cluster.cluster_name
        assert status["last_error"] is None

    # b stops: it leaves the view at once, but its row lives until it expires.
    b_num = rows["b@localhost"][0]
    b.signal(signal.SIGTERM)
    assert b.wait() == 0
    wait_until(lambda: "b@localhost" not in test_node.nodes(), what="b left the view")
    for name in ("a@localhost", "c@localhost"):
        wait_until(lambda name=name: address(b) in discovery_status(name)["unavailable"],
                   what=lambda name=name: f"{name} sees b unavailable: "
                   f"{discovery_status(name)}")
        assert address(b) in discovery_status(name)["discovered"]
    assert "b@localhost" in rdbms_cluster.rows()  # still listed
    assert discovery_status("a@localhost")["unavailable"] == [address(b)]

    # After the expiry, a round of a or c deletes b's row.
    wait_until(lambda: "b@localhost" not in rdbms_cluster.rows(), timeout=EXPIRY + 10,
               what="b's row expired")
    wait_until(lambda: all(address(b) not in discovery_status(n)["discovered"]
                           for n in ("a@localhost", "c@localhost")),
               what="b no longer discovered")
    assert discovery_status("a@localhost")["unavailable"] == []

    # A new node, no seeds: it joins through the table and takes b's freed number.
    d = rdbms_cluster.node("d@localhost")
    d.start()
    wait_until(lambda: "d@localhost" in test_node.nodes(), timeout=30,
               what=lambda: f"d joined: {test_node.nodes()}")
    wait_until(lambda: discovery_status("d@localhost")["node_num"] is not None,
               what="d registered")
    assert discovery_status("d@localhost")["node_num"] == b_num
    assert rdbms_cluster.rows()["d@localhost"] == (b_num, address(d))
    for name in ("a@localhost", "c@localhost"):
        wait_until(lambda name=name: address(d) in discovery_status(name)["discovered"],
                   what=f"{name} discovered d")
