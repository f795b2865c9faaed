"""CETS discovery through the discovery_nodes table (mongoose/cets_discovery_rdbms.py),
its config keys and the node's choice of backend (mongoose/cets_discovery.py).

The table tests run on SQLite, and on PostgreSQL (tests/pg_harness.py) with the pgsql and
the cockroachdb driver.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dist_harness import PYTHONPATH
from pg_harness import PgServer

from mongoose import config
from mongoose.cets_discovery import discovery_backend, open_node_database
from mongoose.cets_discovery_rdbms import RdbmsBackend, read_node_num, register_node
from mongoose.config import ConfigError
from mongoose.storage import migrate
from mongoose.storage.database import Database, StorageUnavailable
from mongoose.storage.sqlite import SqliteDatabase
from otp.discovery import FileBackend

pytestmark = pytest.mark.timeout(60)



# -- databases ------------------------------------------------------------------------------


class Databases:
    """Opens connections to one fresh database with the discovery table: ``open()`` a new
    connection (each thread or process of a test uses its own, as nodes do)."""

    def __init__(self, open_: Callable[[], Database], sqlite_path: Path | None) -> None:
        self._open = open_
        self.sqlite_path = sqlite_path
        self._opened: list[Database] = []

    def open(self) -> Database:
        db = self._open()
        self._opened.append(db)
        return db

    def close(self) -> None:
        for db in self._opened:
            db.close()


@pytest.fixture(params=["sqlite", "pgsql", "cockroachdb"])
def dbs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    driver = request.param
    if driver == "sqlite":
        path = tmp_path / "mongoose.db"
        made = Databases(lambda: SqliteDatabase(path), path)
        migrate.init(made.open())
        yield made
        made.close()
        return
    # The cockroachdb driver runs against PostgreSQL (see mongoose.storage.pg).
    from mongoose.storage.pg import PgDatabase

    server: PgServer = request.getfixturevalue("pg_server")
    name = server.create_database(template=server.template(driver))  # with the schema
    made = Databases(lambda: PgDatabase(server.params(name, driver), pool_size=2), None)
    yield made
    made.close()
    server.drop_database(name)


def rows(db: Database, cluster: str = "c") -> list[tuple[Any, ...]]:
    return [tuple(r) for r in db.query(
        "SELECT node_name, node_num, address FROM discovery_nodes WHERE cluster_name = ?"
        " ORDER BY node_num", (cluster,))]


def register(db: Database, node: str, *, cluster: str = "c", expiry: int = 60,
             prefer: int | None = None) -> int:
    return register_node(db, cluster_name=cluster, node_name=node,
                         address=f"{node}.example:7100", expiry=expiry, prefer=prefer).node_num


def age(db: Database, node: str, seconds: int) -> None:
    """Make ``node``'s row look ``seconds`` older."""
    db.execute("UPDATE discovery_nodes SET updated_timestamp = updated_timestamp - ?"
               " WHERE node_name = ?", (seconds, node))


# -- one round ------------------------------------------------------------------------------


def test_nodes_get_the_smallest_free_numbers_from_one(dbs: Databases) -> None:
    """Each new node takes the smallest free node_num; every row's address is returned."""
    db = dbs.open()
    assert [register(db, n) for n in ("a", "b", "c")] == [1, 2, 3]
    result = register_node(db, cluster_name="c", node_name="d", address="d:1", expiry=60)
    assert result.node_num == 4
    assert [r[2] for r in result.rows] == ["a.example:7100", "b.example:7100",
                                           "c.example:7100", "d:1"]


def test_numbers_are_unique_per_cluster_not_across_clusters(dbs: Databases) -> None:
    """Two clusters in one table number their nodes independently, and only see their own."""
    db = dbs.open()
    assert register(db, "a", cluster="one") == 1
    assert register(db, "b", cluster="two") == 1
    assert register(db, "c", cluster="two") == 2
    assert [r[0] for r in rows(db, "one")] == ["a"]
    assert [r[0] for r in rows(db, "two")] == ["b", "c"]


def test_a_node_that_moves_to_another_cluster_leaves_the_old_one(dbs: Databases) -> None:
    """node_name is the primary key: registering in a new cluster drops the old row."""
    db = dbs.open()
    register(db, "a", cluster="one")
    register(db, "b", cluster="one")
    register(db, "x", cluster="two")
    assert register(db, "b", cluster="two") == 2
    assert [r[0] for r in rows(db, "one")] == ["a"]
    assert [r[0] for r in rows(db, "two")] == ["x", "b"]


def test_a_round_refreshes_the_row_and_keeps_the_number(dbs: Databases) -> None:
    """A registered node's next round updates its address and timestamp, not its number."""
    db = dbs.open()
    register(db, "a")
    register(db, "b")
    age(db, "b", 30)
    result = register_node(db, cluster_name="c", node_name="b", address="b:9", expiry=60)
    assert result.node_num == 2 and result.expired == []
    assert rows(db) == [("a", 1, "a.example:7100"), ("b", 2, "b:9")]
    stamp = db.query("SELECT updated_timestamp FROM discovery_nodes WHERE node_name = 'b'")
    assert stamp[0][0] == result.rows[1][3]  # refreshed to the database's now


def test_rows_older_than_the_expiry_are_deleted_and_others_stay_listed(dbs: Databases) -> None:
    """A row not updated for longer than the expiry goes; a stale but younger one stays
    listed (a stopped node is listed until it expires)."""
    db = dbs.open()
    for node in ("a", "b", "c"):
        register(db, node)
    age(db, "b", 100)  # past the expiry
    age(db, "c", 30)  # stale, not expired
    result = register_node(db, cluster_name="c", node_name="a", address="a:1", expiry=60)
    assert result.expired == ["b"]
    assert [r[0] for r in result.rows] == ["a", "c"]
    assert [r[0] for r in rows(db)] == ["a", "c"]


def test_a_node_never_expires_its_own_row(dbs: Databases) -> None:
    """A node back after a pause longer than the expiry keeps its row and number."""
    db = dbs.open()
    register(db, "a")
    register(db, "b")
    age(db, "b", 100)
    assert register(db, "b") == 2
    assert [r[0] for r in rows(db)] == ["a", "b"]


def test_a_freed_number_is_reused_by_the_next_new_node(dbs: Databases) -> None:
    """Once a node's row expired, its number is the smallest free one again."""
    db = dbs.open()
    for node in ("a", "b", "c"):
        register(db, node)
    age(db, "b", 100)
    assert register(db, "d") == 2  # the same round expires b and takes its number
    assert rows(db) == [("a", 1, "a.example:7100"), ("d", 2, "d.example:7100"),
                        ("c", 3, "c.example:7100")]


def test_a_node_whose_row_expired_takes_its_number_back_when_free(dbs: Databases) -> None:
    """``prefer``: a node that lost its row gets its old number again if nobody took it."""
    db = dbs.open()
    for node in ("a", "b", "c"):
        register(db, node)
    db.execute("DELETE FROM discovery_nodes WHERE node_name IN ('a', 'c')")
    assert register(db, "c", prefer=3) == 3  # 1 is free and smaller; 3 is kept
    assert register(db, "a", prefer=2) == 1  # 2 is taken: the smallest free one


class HideOnce:
    """A database whose first read of the cluster's rows misses ``node``'s row: as if that
    row was inserted by another node between our read and our insert."""

    def __init__(self, db: Database, node: str) -> None:
        self.db = db
        self.driver = db.driver
        self.node = node
        self.hidden = False

    def transaction(self, fn: Callable[[Any], Any]) -> Any:
        return self.db.transaction(lambda tx: fn(_HidingTx(tx, self)))


class _HidingTx:
    def __init__(self, tx: Any, owner: HideOnce) -> None:
        self.tx = tx
        self.owner = owner

    def query(self, sql: str, params: Any = ()) -> list[Any]:
        found = self.tx.query(sql, params)
        if "SELECT node_name, node_num" in sql and not self.owner.hidden:
            self.owner.hidden = True
            found = [r for r in found if r[0] != self.owner.node]
        return found

    def execute(self, sql: str, params: Any = ()) -> int:
        return self.tx.execute(sql, params)


def test_a_number_taken_after_the_read_makes_the_node_pick_the_next(dbs: Databases) -> None:
    """The insert of a number another node took meanwhile inserts nothing, and the node
    picks the next free number in the same transaction."""
    db = dbs.open()
    register(db, "a")
    register(db, "b")
    racing = HideOnce(db, "b")
    assert register(racing, "c") == 3  # tried 2 (b's, unseen), then 3  # type: ignore[arg-type]
    assert racing.hidden
    assert [r[1] for r in rows(db)] == [1, 2, 3]


def test_its_own_row_appearing_after_the_read_is_found_on_a_retry(dbs: Databases) -> None:
    """If the node's own row was inserted after the read (the same node registering twice
    at once), no number can be inserted; the transaction runs again and finds the row."""
    db = dbs.open()
    register(db, "a")
    register(db, "b")
    racing = HideOnce(db, "b")
    assert register(racing, "b") == 2  # type: ignore[arg-type]
    assert [r[0] for r in rows(db)] == ["a", "b"]


def test_node_numbers_stay_unique_when_threads_register_at_once(dbs: Databases) -> None:
    """Twelve nodes (each with its own connection) registering at the same moment get
    twelve different numbers, 1 to 12."""
    count = 12
    connections = [dbs.open() for _ in range(count)]
    barrier = threading.Barrier(count)
    numbers: dict[int, int] = {}
    errors: list[BaseException] = []

    def node(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            numbers[i] = register(connections[i], f"n{i}")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=node, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(numbers.values()) == list(range(1, count + 1))
    assert sorted(r[1] for r in rows(connections[0])) == list(range(1, count + 1))


REGISTER_SCRIPT = textwrap.dedent("""
    import sys
    from mongoose.cets_discovery_rdbms import register_node
    from mongoose.storage.sqlite import SqliteDatabase
    db = SqliteDatabase(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()
    print(register_node(db, cluster_name="c", node_name=sys.argv[2], address="x:1",
                        expiry=60).node_num, flush=True)
""")


def test_node_numbers_stay_unique_when_processes_register_at_once(dbs: Databases) -> None:
    """Six processes on one SQLite file, released at once, get six different numbers."""
    if dbs.sqlite_path is None:
        pytest.skip("processes share a SQLite file; PostgreSQL is covered by the threads")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", REGISTER_SCRIPT, str(dbs.sqlite_path), f"p{i}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={"PYTHONPATH": PYTHONPATH, "PATH": "/usr/bin:/bin"},
        )
        for i in range(6)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        numbers = [int(proc.communicate(timeout=30)[0]) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert sorted(numbers) == [1, 2, 3, 4, 5, 6]


def test_a_round_is_run_again_after_serialization_failures(dbs: Databases) -> None:
    """A round that fails at COMMIT with SQLSTATE 40001 (CockroachDB's restart) is run
    again whole by the driver and registers the node once."""
    db = dbs.open()
    if not hasattr(db, "inject_serialization_failures"):
        pytest.skip("injected 40001 failures are a feature of the PostgreSQL drivers")
    register(db, "a")
    db.inject_serialization_failures(2)
    assert register(db, "b") == 2
    assert db.injections_left == 0
    assert rows(db) == [("a", 1, "a.example:7100"), ("b", 2, "b.example:7100")]


def test_read_node_num(dbs: Databases) -> None:
    """Any process of a node can read its number from the table."""
    db = dbs.open()
    register(db, "a")
    register(db, "b")
    assert read_node_num(db, "c", "b") == 2
    assert read_node_num(db, "c", "z") is None
    assert read_node_num(db, "other", "b") is None


# -- the backend ----------------------------------------------------------------------------


def backend_on(dbs: Databases, node: str = "a@localhost", **kwargs: Any) -> RdbmsBackend:
    return RdbmsBackend(dbs.open, cluster_name="c", node_name=node,
                        address=f"{node.split('@')[0]}:7100", **kwargs)


def test_the_backend_registers_and_exposes_its_node_num(dbs: Databases) -> None:
    """get_nodes: this node's row written, every address returned, node_num kept."""
    b = backend_on(dbs, "b@localhost")
    a = backend_on(dbs, "a@localhost")
    assert a.blocking is True
    assert a.node_num is None and a.status()["node_num"] is None
    assert b.get_nodes() == ["b:7100"]
    assert a.get_nodes() == ["b:7100", "a:7100"]
    assert (a.node_num, b.node_num) == (2, 1)
    assert a.status() == {"cluster_name": "c", "node_name": "a@localhost", "node_num": 2}
    assert b.get_nodes() == ["b:7100", "a:7100"]
    a.close()
    b.close()


def test_the_backend_opens_its_database_on_first_use_and_again_after_a_failure(
    tmp_path: Path,
) -> None:
    """Opening happens in get_nodes (off the loop); a database that cannot be opened
    fails the round, and the next round opens it again. SQLite gets its schema."""
    attempts: list[int] = []

    def open_db() -> Database:
        attempts.append(1)
        if len(attempts) == 1:
            raise StorageUnavailable("cannot connect to 127.0.0.1:5432")
        return SqliteDatabase(tmp_path / "fresh.db")

    backend = RdbmsBackend(open_db, cluster_name="c", node_name="a@localhost",
                           address="127.0.0.1:7100", expiry=60)
    assert attempts == []
    with pytest.raises(StorageUnavailable):
        backend.get_nodes()
    assert backend.get_nodes() == ["127.0.0.1:7100"]  # the table was created
    assert backend.get_nodes() == ["127.0.0.1:7100"]
    assert len(attempts) == 2 and backend.node_num == 1
    backend.close()


def test_the_backend_logs_expired_nodes(dbs: Databases, caplog) -> None:
    """Rows it deletes are logged as cets_expired_nodes, with their names."""
    db = dbs.open()
    register(db, "gone@localhost")
    age(db, "gone@localhost", 100)
    backend = backend_on(dbs, expiry=60)
    assert backend.get_nodes() == ["a:7100"]
    expired = [r for r in caplog.records if getattr(r, "what", "") == "cets_expired_nodes"]
    assert [r.expired_nodes for r in expired] == [["gone@localhost"]]
    backend.close()


def test_a_database_without_the_schema_fails_the_round_saying_so(pg_server: PgServer) -> None:
    """On PostgreSQL the node does not create tables: a round on an empty database fails
    with the SchemaError that tells the operator to run `mongoose db init`."""
    from mongoose.storage.pg import PgDatabase

    name = pg_server.create_database()
    try:
        backend = RdbmsBackend(lambda: PgDatabase(pg_server.params(name), pool_size=1),
                               cluster_name="c", node_name="a@localhost", address="a:1")
        with pytest.raises(migrate.SchemaError, match="mongoose db init"):
            backend.get_nodes()
        assert backend.node_num is None
        backend.close()
    finally:
        pg_server.drop_database(name)


# -- config ---------------------------------------------------------------------------------


def load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "mongooseim.toml"
    path.write_text(text)
    return config.load(path)


def error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value


def test_cets_config_defaults() -> None:
    """Defaults: the file backend (off without a file), cluster "mongooseim", 1 h expiry."""
    cets = config.Config().internal_databases.cets
    assert (cets.backend, cets.node_list_file, cets.cluster_name, cets.node_expiry) == (
        "file", "", "mongooseim", 3600)


def test_cets_rdbms_config(tmp_path: Path) -> None:
    """backend = "rdbms" with a cluster name and an expiry."""
    cets = load(tmp_path, '[internal_databases.cets]\nbackend = "rdbms"\n'
                          'cluster_name = "prod"\nnode_expiry = 600\n').internal_databases.cets
    assert (cets.backend, cets.cluster_name, cets.node_expiry) == ("rdbms", "prod", 600)


@pytest.mark.parametrize(("toml", "key"), [
    ('backend = "mnesia"', "internal_databases.cets.backend"),
    ('cluster_name = ""', "internal_databases.cets.cluster_name"),
    (f'cluster_name = "{"x" * 251}"', "internal_databases.cets.cluster_name"),
    ("node_expiry = 0", "internal_databases.cets.node_expiry"),
    ('node_expiry = "1h"', "internal_databases.cets.node_expiry"),
    ('backend = "rdbms"\nnode_list_file = "nodes.txt"',
     "internal_databases.cets.node_list_file"),
    ('backend = "rdbms"\ndiscovery_interval = 10\nnode_expiry = 10',
     "internal_databases.cets.node_expiry"),
])
def test_cets_config_errors_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
    """Each bad value is refused with an error that names its key."""
    err = error(tmp_path, f"[internal_databases.cets]\n{toml}\n")
    assert err.key == key
    assert f"{key}: expected" in str(err)


def test_the_node_builds_the_configured_backend(tmp_path: Path) -> None:
    """rdbms: an RdbmsBackend with the config's values; file: a FileBackend under
    data_dir; file without a file: no discovery."""
    rdbms = load(tmp_path, '[general]\nnode_name = "n1@host"\n'
                           '[internal_databases.cets]\nbackend = "rdbms"\n'
                           'cluster_name = "prod"\nnode_expiry = 120\n')
    backend = discovery_backend(rdbms, "10.0.0.1:7100")
    assert isinstance(backend, RdbmsBackend)
    assert (backend.cluster_name, backend.node_name, backend.address, backend.expiry) == (
        "prod", "n1@host", "10.0.0.1:7100", 120)
    file = load(tmp_path, f'[general]\ndata_dir = "{tmp_path}"\n'
                          '[internal_databases.cets]\nnode_list_file = "nodes.txt"\n')
    backend = discovery_backend(file, None)
    assert isinstance(backend, FileBackend) and backend.path == tmp_path / "nodes.txt"
    assert discovery_backend(config.Config(), None) is None


def test_the_node_database_defaults_to_the_sqlite_file_in_data_dir(tmp_path: Path) -> None:
    """Without a configured pool, discovery uses <data_dir>/mongoose.db."""
    cfg = load(tmp_path, f'[general]\ndata_dir = "{tmp_path / "data"}"\n')
    db = open_node_database(cfg)
    try:
        assert db.driver == "sqlite"
        migrate.init(db)
        register(db, "a")
        assert rows(SqliteDatabase(tmp_path / "data" / "mongoose.db")) == [
            ("a", 1, "a.example:7100")]
    finally:
        db.close()
