"""Storage faults end to end: a real node with its accounts in a real PostgreSQL.

Issue 8, "Faults and bad input": the database lost while the node runs (sessions stay
up, new logins get SASL ``temporary-auth-failure``, logins work again once it is back),
the database unreachable when the node starts (a clear log line naming the pool and
the address, retries with backoff, no worker restarts, logins once it is up), and
values that reach SQL as parameters.

The node's pool uses the pgsql driver and the cockroachdb driver (against PostgreSQL
with the CockroachDB schema; see mongoose.storage.pg). ``pg_server`` is the session's
one server, shared with other tests: every test that stops it starts it again in a
``finally``.
"""

from __future__ import annotations

import base64
import logging
import queue
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import scramp
from dist_harness import MongooseNode, TestNode
from helpers import wait_until
from pg_harness import PgServer
from xmpp_client import Client, ClientLoop
from xmpp_harness import DOMAIN, PASSWORD, RawClient, raw_authenticate, xmpp_node_with

from mongoose import config
from mongoose.auth.accounts import SqlAccountStore
from mongoose.storage import StorageUnavailable, migrate
from mongoose.storage.pg import PgDatabase
from mongoose.storage.pools import BackgroundDatabase
from mongoose.storage.sqlite import SqliteDatabase

pytestmark = pytest.mark.timeout(150)

WORKERS = 2
USERS = ("alice", "bob", "carol", "dave")
# A valid localpart (RFC 7622 allows all of these) full of what SQL text would
# misread: a closing parenthesis, a statement separator, a comment, the placeholders
# of both styles (?, %s, $1), and SCRAM's escaped characters (',' and '=').
SQL_USER = "bobby);delete%s?from,users=1;--$1"
# Not a valid localpart (a quote; whitespace): refused before any query.
QUOTED_USERS = ("o'brien", "x');drop table users;--")
REPLY = (rb"</success>|<success[^>]*/>|</failure>|<failure[^>]*/>"
         rb"|<challenge[^>]*>[^<]*</challenge>")


def rdbms_toml(server: PgServer, dbname: str, driver: str) -> str:
    """[auth] with the rdbms method, and the pool of database ``dbname`` (retried at
    most a second apart, so that the tests wait little after a restart)."""
    return ('[auth]\nmethods = ["rdbms"]\n[auth.failure_delay]\nbase_ms = 0\n'
            + server.config_toml(dbname, driver=driver, max_start_interval=1))


def register(server: PgServer, dbname: str, driver: str, users: tuple[str, ...]) -> None:
    db = PgDatabase(server.params(dbname, driver), pool_size=1)
    try:
        store = SqlAccountStore(db, iterations=4096)
        for user in users:
            store.register(user, DOMAIN, PASSWORD)
    finally:
        db.close()


def users_in(server: PgServer, dbname: str) -> list[str]:
    with psycopg.connect(server.dsn(dbname)) as conn:
        return sorted(row[0] for row in conn.execute("SELECT username FROM users"))


def sasl_reply(port: int, user: str, *, mechanism: str = "PLAIN",
               password: str = PASSWORD) -> bytes:
    """The server's last answer to a SASL exchange for ``user`` after STARTTLS:
    ``<success>`` or ``<failure>``. SCRAM runs scramp's client; a failure to its first
    message (where the account is looked up) ends the exchange there."""
    scram = None
    if mechanism == "PLAIN":
        payload = f"\0{user}\0{password}"
    else:
        scram = scramp.ScramClient([mechanism], user, password)
        payload = scram.get_client_first()
    raw = RawClient(port)
    try:
        raw.open_stream()
        raw.starttls()
        raw.open_stream()
        raw.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mechanism}'>"
                 f"{b64(payload)}</auth>")
        reply = raw.read_until(REPLY)
        challenge = re.search(rb"<challenge[^>]*>([^<]*)</challenge>", reply)
        if scram is None or challenge is None:
            return reply
        scram.set_server_first(base64.b64decode(challenge.group(1)).decode())
        raw.send(f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
                 f"{b64(scram.get_client_final())}</response>")
        return raw.read_until(REPLY)
    finally:
        raw.close()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def events_so_far(node: MongooseNode) -> list[dict[str, Any]]:
    """Every log event of the node not yet taken by ``wait_for``."""
    while True:
        try:
            node.seen.append(node.events.get_nowait())
        except queue.Empty:
            return list(node.seen)


def matching(node: MongooseNode, what: str, **fields: Any) -> list[dict[str, Any]]:
    return [e for e in events_so_far(node) if e.get("what") == what
            and all(e.get(k) == v for k, v in fields.items())]


def wait_events(node: MongooseNode, what: str, count: int, timeout: float = 30.0,
                **fields: Any) -> list[dict[str, Any]]:
    """The node's first ``count`` log events ``what`` with these fields, waited for."""
    found = wait_until(lambda: len(matching(node, what, **fields)) >= count,
                       timeout=timeout, what=f"{count} {what} {fields}")
    assert found
    return matching(node, what, **fields)[:count]


def no_restarts(node: MongooseNode) -> None:
    """Each worker came up once, and no supervisor restarted anything."""
    events = events_so_far(node)
    ups = sorted(e.get("worker") for e in events if e.get("what") == "worker_up")
    assert ups == list(range(1, WORKERS + 1)), ups
    restarts = [e for e in events if e.get("what") in (
        "supervisor_child_restarted", "supervisor_child_start_failed",
        "supervisor_intensity_exceeded")]
    assert not restarts, restarts


def wait_reachable(sender: Client, target: Client) -> None:
    """Wait until headlines from ``sender`` reach ``target``: the session table is
    replicated between workers, and the sender's worker may learn of a new session a
    moment late. Headlines never bounce; one probe every 0.2 s at most."""
    probes = 0

    def arrived() -> bool:
        return any(b.startswith("probe") for b in target.bodies())

    def reachable() -> bool:
        nonlocal probes
        probes += 1
        sender.send_message(target.jid, f"probe{probes}", mtype="headline")
        try:
            wait_until(arrived, timeout=0.2)
        except AssertionError:
            return False
        return True

    wait_until(reachable, timeout=20, what=f"{target.jid} reachable from {sender.jid}")


def login(node: MongooseNode, loop: ClientLoop, clients: list[Client], jid: str) -> Client:
    client = Client(loop, jid, PASSWORD, port=node.c2s_port)  # type: ignore[attr-defined]
    clients.append(client)
    return client.connect()


def login_when_up(node: MongooseNode, loop: ClientLoop, clients: list[Client], jid: str,
                  timeout: float = 30.0) -> Client:
    """Log in as ``jid``, again with a new client while the login fails (the database
    is coming back), until the deadline."""
    deadline = time.monotonic() + timeout
    outcomes = []
    while time.monotonic() < deadline:
        client = Client(loop, jid, PASSWORD, port=node.c2s_port)  # type: ignore[attr-defined]
        clients.append(client)
        outcome = client.try_connect()
        if outcome == "session":
            loop.call(client.xmpp.send_presence)
            return client
        outcomes.append(outcome)
        client.disconnect()
    raise AssertionError(f"no login as {jid} within {timeout} s: {outcomes}")


@pytest.fixture(scope="module", params=["pgsql", "cockroachdb"])
def rdbms_node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               test_node: TestNode, pg_server: PgServer) -> Iterator[MongooseNode]:
    """A node (2 workers) whose accounts are in a fresh database of ``pg_server``,
    through the driver of the parameter; USERS, SQL_USER and QUOTED_USERS registered
    straight in the users table (the store keeps what it is given)."""
    driver = request.param
    pg_server.start()  # in case a test before this module left it stopped
    dbname = pg_server.fresh_database(driver, "storage_faults_node")
    register(pg_server, dbname, driver, (*USERS, SQL_USER, *QUOTED_USERS))
    node = xmpp_node_with(tmp_path_factory.mktemp(f"faults_{driver}"),
                          f"faults_{driver}@localhost", test_node.keys_file, workers=WORKERS,
                          users=(), auth_toml=rdbms_toml(pg_server, dbname, driver))
    node.driver = driver  # type: ignore[attr-defined]
    node.dbname = dbname  # type: ignore[attr-defined]
    yield node
    node.kill()


def test_logins_with_sql_in_the_name_are_parameters(rdbms_node, loop, clients, pg_server):
    """A user whose name is full of SQL logs in with PLAIN and SCRAM; names with a quote
    are refused as not-authorized (not valid localparts), the connection staying
    usable; and the users table is intact."""
    node = rdbms_node
    port = node.c2s_port
    raw, _ = raw_authenticate(port, SQL_USER)
    raw.close()
    assert b"<success" in sasl_reply(port, SQL_USER, mechanism="SCRAM-SHA-256")
    client = login(node, loop, clients, f"{SQL_USER}@{DOMAIN}/scram")
    assert client.jid == f"{SQL_USER}@{DOMAIN}/scram"
    for user in QUOTED_USERS:
        for mechanism in ("PLAIN", "SCRAM-SHA-256"):
            reply = sasl_reply(port, user, mechanism=mechanism)
            assert b"<not-authorized/>" in reply, (user, mechanism, reply)
    # A wrong password for the SQL user: refused like any other.
    assert b"<not-authorized/>" in sasl_reply(port, SQL_USER, password="' OR '1'='1")
    assert users_in(pg_server, node.dbname) == sorted((*USERS, SQL_USER, *QUOTED_USERS))


def test_database_lost_while_running(rdbms_node, loop, clients, pg_server):
    """PostgreSQL stops: logged-in users stay connected and keep messaging; a new login
    gets temporary-auth-failure (PLAIN and SCRAM), logged, and may retry on the same
    stream; PostgreSQL starts again: logins work. No worker restarts meanwhile."""
    node = rdbms_node
    port = node.c2s_port
    alice = login(node, loop, clients, f"alice@{DOMAIN}/lost")
    bob = login(node, loop, clients, f"bob@{DOMAIN}/lost")
    wait_reachable(alice, bob)
    wait_reachable(bob, alice)
    alice.send_message(bob.jid, "before")
    wait_until(lambda: "before" in bob.bodies(), timeout=10, what="the first message")
    try:
        pg_server.stop()
        for mechanism in ("PLAIN", "SCRAM-SHA-256"):
            reply = sasl_reply(port, "carol", mechanism=mechanism)
            assert b"<temporary-auth-failure/>" in reply, (mechanism, reply)
        failures = wait_events(node, "c2s_auth_failed", 2, condition="temporary-auth-failure")
        assert [f["failures"] for f in failures] == [1, 1], failures
        [logged, _] = wait_events(node, "sasl_store_error", 2)
        assert logged["level"] == "warning" and "traceback" not in logged, logged
        assert logged["reason"].startswith(f"{node.driver} at 127.0.0.1:"), logged

        alice.send_message(bob.jid, "during")
        bob.send_message(alice.jid, "during too")
        wait_until(lambda: "during" in bob.bodies() and "during too" in alice.bodies(),
                   timeout=10, what=lambda: f"{bob.bodies()} / {alice.bodies()}")
        assert not alice.disconnected.is_set() and not bob.disconnected.is_set()

        # The stream that got temporary-auth-failure is still open and may try again
        # (here, still down: the same answer, at once, not throttled).
        raw = RawClient(port)
        try:
            raw.open_stream()
            raw.starttls()
            raw.open_stream()
            auth = ("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                    f"{b64(chr(0) + 'dave' + chr(0) + PASSWORD)}</auth>")
            for _ in range(2):
                raw.send(auth)
                assert b"<temporary-auth-failure/>" in raw.read_until(REPLY, timeout=5)
        finally:
            raw.close()
    finally:
        pg_server.start()
    # Each worker's pool reconnects on its own, within a second or two of the restart
    # (max_start_interval = 1); until then a login there still fails temporarily.
    carol = login_when_up(node, loop, clients, f"carol@{DOMAIN}/after")
    wait_reachable(alice, carol)
    alice.send_message(carol.jid, "after")
    wait_until(lambda: "after" in carol.bodies(), timeout=10, what="a message after")
    assert not alice.disconnected.is_set() and not bob.disconnected.is_set()
    no_restarts(node)


@pytest.mark.parametrize("driver", ["pgsql"])
def test_node_started_while_the_database_is_down(driver, tmp_path, test_node, pg_server,
                                                 loop, clients):
    """A node started with PostgreSQL down: each worker logs rdbms_connect_failed
    naming the pool and the address and tries again with backoff, the workers stay up
    (no restarts), the node answers logins with temporary-auth-failure; once
    PostgreSQL starts, the workers open the database and logins succeed. (pgsql only:
    the opening is the same for both drivers, and the lost-database test runs both.)"""
    pg_server.start()
    dbname = pg_server.fresh_database(driver, "storage_faults_start")
    register(pg_server, dbname, driver, USERS)
    address = f"{driver} at {pg_server.host}:{pg_server.port}/{dbname}"
    node = None
    try:
        pg_server.stop()
        node = xmpp_node_with(tmp_path, "down_at_start@localhost", test_node.keys_file,
                              workers=WORKERS, users=(),
                              auth_toml=rdbms_toml(pg_server, dbname, driver))
        port = node.c2s_port  # type: ignore[attr-defined]
        # One first attempt per worker process (a restarted worker would log another),
        # naming the pool and the address; then retries, a second apart.
        firsts = wait_events(node, "rdbms_connect_failed", WORKERS, attempt=1)
        for failed in firsts:
            assert failed["pool"] == "default" and failed["address"].startswith(address)
            assert failed["msg"].startswith(
                f"outgoing_pools.rdbms.default: cannot connect to {address}"), failed
            assert failed["level"] == "warning" and failed["retry_in"] == 1, failed
        wait_events(node, "rdbms_connect_failed", WORKERS, attempt=3)
        reply = sasl_reply(port, "alice")
        assert b"<temporary-auth-failure/>" in reply, reply
        no_restarts(node)

        pg_server.start()
        wait_events(node, "rdbms_ready", WORKERS)
        assert len(matching(node, "rdbms_connect_failed", attempt=1)) == WORKERS
        alice = login(node, loop, clients, f"alice@{DOMAIN}/up")
        assert alice.jid == f"alice@{DOMAIN}/up"
        no_restarts(node)
    finally:
        pg_server.start()
        if node is not None:
            node.kill()


# BackgroundDatabase on its own (no node): the opening is injected.


def pool_config(tmp_path) -> config.Config:
    return config.loads(
        f'[general]\ndata_dir = "{tmp_path}"\n[auth]\nmethods = ["rdbms"]\n'
        "[outgoing_pools.rdbms.default.connection]\n"
        'driver = "pgsql"\nhost = "127.0.0.1"\nport = 1\ndatabase = "mim"\n'
        'username = "mongoose"\nmax_start_interval = 1\n')


@pytest.mark.timeout(30)
def test_a_background_database_fails_fast_until_open_then_serves(tmp_path, caplog):
    """Calls made before the database is open raise StorageUnavailable naming the pool
    and the address; a schema that is behind is logged and checked again; once open,
    calls reach the database; close closes it."""
    release = threading.Event()
    schema_checks = []

    def opener(cfg, *, wait, sleep):
        assert wait is None  # a worker waits for its database without a bound
        while not release.is_set():
            sleep(0.01)  # a failed attempt, then the pause before the next
        db = SqliteDatabase(tmp_path / "real.db")
        migrate.init(db)
        return db

    def ensure(db):
        schema_checks.append(db)
        if len(schema_checks) == 1:
            raise migrate.SchemaError("schema version 0 (latest 1): run `mongoose db init`")
        return migrate.ensure(db)

    caplog.set_level(logging.INFO, logger="mongoose.storage.pools")
    db = BackgroundDatabase(pool_config(tmp_path), opener=opener, ensure=ensure).start()
    try:
        assert db.wait_settled(10) and not db.ready
        with pytest.raises(StorageUnavailable, match=r"^outgoing_pools\.rdbms\.default: "
                           r"pgsql at 127\.0\.0\.1:1/mim as mongoose: not connected yet"):
            db.query("SELECT 1")
        store = SqlAccountStore(db, iterations=4096)
        with pytest.raises(StorageUnavailable):
            store.get_secrets("alice", "localhost")
        release.set()
        assert db.wait_ready(10)
        assert len(schema_checks) == 2
        [logged] = [r for r in caplog.records if getattr(r, "what", "") == "rdbms_schema_error"]
        assert logged.levelname == "ERROR" and "mongoose db init" in logged.getMessage()
        store.register("alice", "localhost", PASSWORD)
        assert store.exists("alice", "localhost")
        assert db.transaction(lambda tx: tx.query("SELECT COUNT(*) FROM users")) == [(1,)]
    finally:
        db.close()
    with pytest.raises(StorageUnavailable, match="closed"):
        db.query("SELECT 1")


@pytest.mark.timeout(30)
def test_closing_a_background_database_ends_its_opening(tmp_path):
    """close() while the database is still unreachable ends the opening thread at its
    next pause; nothing is opened afterwards."""
    attempts = []

    def opener(cfg, *, wait, sleep):
        while True:
            attempts.append(1)
            sleep(0.05)

    db = BackgroundDatabase(pool_config(tmp_path), opener=opener).start()
    assert db.wait_settled(10)
    db.close()
    db._thread.join(10)
    assert not db._thread.is_alive() and not db.ready
    with pytest.raises(StorageUnavailable, match="closed"):
        db.execute("SELECT 1")
