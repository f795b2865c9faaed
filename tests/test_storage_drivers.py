"""The storage drivers (mongoose.storage): the Database contract on sqlite, pgsql and
cockroachdb (its driver and schema, run against PostgreSQL), serialization-failure
retries, losing and regaining the server, start-up against an unreachable database,
and the schema migrations."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

import pytest
from helpers import wait_until
from pg_harness import PgServer, free_port, start_server

from mongoose import config
from mongoose.storage import (
    ConstraintViolation,
    StorageError,
    StorageUnavailable,
    TransactionConflict,
    migrate,
)
from mongoose.storage.pg import INJECT_ENV, PgDatabase, convert_placeholders
from mongoose.storage.pools import DatabaseUnreachable, open_database, start_delays
from mongoose.storage.sqlite import SqliteDatabase

pytestmark = pytest.mark.timeout(60)

pg_only = pytest.mark.parametrize("database", ["pgsql", "cockroachdb"], indirect=True)
HOSTILE = [
    "x'); DROP TABLE users; --",
    "100% %s %(name)s %% ? ?? $1 $$ \\' \\",
    'quote " and \'\' and `tick`',
    "ユニコード, émoji 🦆, RTL \u202e",
]


def _put(db, namespace: str, data: str, user: str = "alice") -> int:
    return db.execute(
        "INSERT INTO private_storage (server, username, namespace, data) VALUES (?, ?, ?, ?)",
        ("localhost", user, namespace, data))


def _data(db, user: str = "alice") -> dict[str, str]:
    rows = db.query("SELECT namespace, data FROM private_storage WHERE server = ? AND "
                    "username = ? ORDER BY namespace", ("localhost", user))
    return dict(rows)


class Boom(Exception):
    """Raised by a test inside a transaction."""


# Placeholders


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT ? , ?", "SELECT %s , %s"),
    ("SELECT '?', ?", "SELECT '?', %s"),
    ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', %s"),
    ("SELECT E'\\'?', ?", "SELECT E'\\'?', %s"),
    ('SELECT "col?" FROM t WHERE x = ?', 'SELECT "col?" FROM t WHERE x = %s'),
    ("SELECT 1 -- what? \n, ?", "SELECT 1 -- what? \n, %s"),
    ("SELECT /* ? */ ?", "SELECT /* ? */ %s"),
    ("SELECT $$ ? $$, $tag$ '? $tag$, ?", "SELECT $$ ? $$, $tag$ '? $tag$, %s"),
    ("SELECT 5 % 2, '50%', ?", "SELECT 5 %% 2, '50%%', %s"),
    ("SELECT x$1$y, ?", "SELECT x$1$y, %s"),
])
def test_placeholders_are_converted_outside_literals_only(sql, expected):
    """`?` becomes %s outside literals, identifiers, comments and dollar quotes; every %
    is doubled."""
    assert convert_placeholders(sql) == expected


# The contract, on every driver


def test_execute_and_query(database):
    """execute returns the rows it changed; query returns tuples."""
    assert _put(database, "a", "1") == 1
    assert _put(database, "b", "2") == 1
    assert database.query("SELECT namespace, data FROM private_storage ORDER BY namespace") \
        == [("a", "1"), ("b", "2")]
    changed = database.execute("UPDATE private_storage SET data = ? WHERE username = ?",
                               ("3", "alice"))
    assert changed == 2
    assert database.query("SELECT count(*) FROM private_storage WHERE data = ?", ("3",)) \
        == [(2,)]
    assert database.query("SELECT data FROM private_storage WHERE username = ?", ("bob",)) \
        == []


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_parameters(database, value):
    """Quotes, percent signs, placeholders and unicode in values are stored and read back
    exactly: they are parameters, never SQL text."""
    _put(database, value, value, user=value)
    assert _data(database, user=value) == {value: value}
    assert database.query("SELECT count(*) FROM users") == [(0,)]  # still there
    assert database.query("SELECT ?, ?", (value, "?")) == [(value, "?")]


def test_bytes_integers_and_null_round_trip(database):
    """bytes, 64-bit integers and NULL keep their values on every driver."""
    packet = bytes(range(256))
    database.execute(
        "INSERT INTO offline_message (timestamp, expire, server, username, from_jid, packet,"
        " permanent_fields) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (2**62, None, "localhost", "alice", "bob@localhost", "<message/>", packet))
    row = database.query("SELECT timestamp, expire, permanent_fields FROM offline_message")
    assert [(ts, expire, bytes(blob)) for ts, expire, blob in row] == [(2**62, None, packet)]


def test_generated_ids_increase(database):
    """Ids come from the schema (sequence, BIGSERIAL or AUTOINCREMENT), in order."""
    for user in ("a", "b", "c"):
        database.execute("INSERT INTO mam_server_user (server, user_name) VALUES (?, ?)",
                         ("localhost", user))
    ids = [row[0] for row in database.query("SELECT id FROM mam_server_user ORDER BY user_name")]
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_execute_many_is_all_or_nothing(database):
    """execute_many writes every row, or none when one fails."""
    sql = "INSERT INTO private_storage (server, username, namespace, data) VALUES (?, ?, ?, ?)"
    database.execute_many(sql, [("localhost", "alice", f"ns{i}", str(i)) for i in range(50)])
    assert len(_data(database)) == 50
    with pytest.raises(ConstraintViolation):
        database.execute_many(sql, [("localhost", "bob", "x", "1"), ("localhost", "bob", "x", "2")])
    assert _data(database, "bob") == {}
    database.execute_many(sql, [])  # nothing to do


def test_transaction_commits(database):
    """transaction runs fn in one transaction, commits it and returns fn's result."""
    def fn(tx):
        _put(tx, "a", "1")
        _put(tx, "b", "2")
        return tx.query("SELECT count(*) FROM private_storage")[0][0]

    assert database.transaction(fn) == 2
    assert _data(database) == {"a": "1", "b": "2"}


def test_transaction_rolls_back_when_fn_raises(database):
    """An exception from fn rolls everything back and reaches the caller unchanged."""
    def fn(tx):
        _put(tx, "a", "1")
        raise Boom

    with pytest.raises(Boom):
        database.transaction(fn)
    assert _data(database) == {}


def test_nested_transaction_and_database_calls_belong_to_the_outer_one(database):
    """Inside fn, a nested transaction and calls on the database itself (same thread) are
    part of the transaction: they roll back with it."""
    def fn(tx):
        database.transaction(lambda inner: _put(inner, "nested", "1"))
        _put(database, "direct", "2")
        assert set(_data(database)) == {"nested", "direct"}
        raise Boom

    with pytest.raises(Boom):
        database.transaction(fn)
    assert _data(database) == {}


def test_constraint_violation(database):
    """A duplicate key is a ConstraintViolation (a StorageError, not Unavailable)."""
    _put(database, "a", "1")
    with pytest.raises(ConstraintViolation) as caught:
        _put(database, "a", "2")
    assert not isinstance(caught.value, StorageUnavailable)
    if database.driver != "sqlite":
        assert caught.value.sqlstate == "23505"


def test_bad_sql_is_a_storage_error(database):
    """Bad SQL raises StorageError, not StorageUnavailable: a bug, not an outage."""
    with pytest.raises(StorageError) as caught:
        database.query("SELECT nothing FROM nowhere")
    assert not isinstance(caught.value, StorageUnavailable)


def test_many_threads_at_once(database):
    """The driver can be used from many threads at once."""
    def work(n: int) -> None:
        for i in range(20):
            database.transaction(lambda tx, i=i: _put(tx, f"{n}-{i}", "x", user=f"u{n}"))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert database.query("SELECT count(*) FROM private_storage") == [(160,)]


def test_closed_database_is_unavailable(database):
    """After close, calls raise StorageUnavailable."""
    database.close()
    with pytest.raises(StorageUnavailable):
        database.query("SELECT 1")


@pg_only
def test_failed_statement_voids_the_transaction(database):
    """On PostgreSQL and CockroachDB a failed statement aborts the transaction: catching
    its error in fn does not let fn commit the rest."""
    _put(database, "a", "1")

    def fn(tx):
        _put(tx, "b", "2")
        with contextlib.suppress(ConstraintViolation):
            _put(tx, "a", "again")
        return "committed?"

    with pytest.raises(ConstraintViolation):
        database.transaction(fn)
    assert _data(database) == {"a": "1"}


def test_sqlite_execute_many_is_one_transaction(tmp_path):
    """SQLite: a failing row of execute_many leaves none of the batch."""
    db = SqliteDatabase(tmp_path / "m.db")
    migrate.init(db)
    sql = "INSERT INTO last (server, username, seconds, state) VALUES (?, ?, ?, ?)"
    with pytest.raises(ConstraintViolation):
        db.execute_many(sql, [("h", "a", 1, ""), ("h", "b", 2, ""), ("h", "a", 3, "")])
    assert db.query("SELECT count(*) FROM last") == [(0,)]
    db.close()


def test_sqlite_unwritable_directory_is_unavailable(tmp_path):
    """SQLite: a file that cannot be created is StorageUnavailable, not OSError."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StorageUnavailable):
        SqliteDatabase(blocker / "sub" / "m.db")


# Serialization failures: retried (pgsql and cockroachdb, against PostgreSQL)


def _fresh(server: PgServer, driver: str, **options) -> PgDatabase:
    sleeps: list[float] = []
    options.setdefault("retry_delays", lambda: iter([0.0] * 4))
    db = PgDatabase(server.params(server.fresh_database(driver, "retries"), driver),
                    pool_size=4, sleep=sleeps.append, **options)
    db.sleeps = sleeps  # type: ignore[attr-defined]
    return db


@pytest.mark.parametrize("driver", ["pgsql", "cockroachdb"])
def test_transaction_retried_after_serialization_failures(pg_server, driver):
    """A transaction failing with SQLSTATE 40001 runs again, whole, until it commits."""
    db = _fresh(pg_server, driver, inject_serialization_failures=3)
    calls = []

    def fn(tx):
        calls.append(1)
        _put(tx, f"try{len(calls)}", "x")
        return len(calls)

    try:
        assert db.transaction(fn) == 4
        assert _data(db) == {"try4": "x"}  # the failed attempts left nothing
        assert db.sleeps == [0.0, 0.0, 0.0]
        assert db.injections_left == 0
    finally:
        db.close()


@pytest.mark.parametrize("driver", ["pgsql", "cockroachdb"])
def test_transaction_gives_up_after_the_last_retry(pg_server, driver):
    """Past the retries, TransactionConflict (SQLSTATE 40001) and nothing committed."""
    db = _fresh(pg_server, driver, inject_serialization_failures=10)
    calls = []
    try:
        with pytest.raises(TransactionConflict) as caught:
            db.transaction(lambda tx: calls.append(_put(tx, "a", "1")))
        assert caught.value.sqlstate == "40001"
        assert isinstance(caught.value, StorageUnavailable)
        assert "gave up after 5 attempts" in str(caught.value)
        assert len(calls) == 5
        assert _data(db) == {}
    finally:
        db.close()


def test_injection_from_the_environment(pg_server, monkeypatch):
    """MONGOOSE_STORAGE_INJECT_40001=N arms the hook for the next N transactions."""
    monkeypatch.setenv(INJECT_ENV, "2")
    db = _fresh(pg_server, "cockroachdb")
    try:
        assert db.injections_left == 2
        db.transaction(lambda tx: _put(tx, "a", "1"))
        assert db.injections_left == 0 and len(db.sleeps) == 2
    finally:
        db.close()


@pytest.mark.parametrize("driver", ["pgsql", "cockroachdb"])
def test_statement_outside_a_transaction_is_retried(pg_server, driver):
    """A single statement failing with 40001 (an implicit transaction) runs again."""
    db = _fresh(pg_server, driver)
    try:
        db.execute("CREATE SEQUENCE IF NOT EXISTS flaky_calls")
        db.execute("SELECT setval('flaky_calls', 1, false)")
        db.execute("""
            CREATE OR REPLACE FUNCTION flaky() RETURNS int AS $$
            BEGIN
                IF nextval('flaky_calls') <= 2 THEN
                    RAISE EXCEPTION 'conflict' USING ERRCODE = '40001';
                END IF;
                RETURN 42;
            END $$ LANGUAGE plpgsql""")
        assert db.query("SELECT flaky()") == [(42,)]
        assert db.sleeps == [0.0, 0.0]
    finally:
        db.execute("DROP FUNCTION IF EXISTS flaky(); DROP SEQUENCE IF EXISTS flaky_calls")
        db.close()


@pytest.mark.parametrize("driver", ["pgsql", "cockroachdb"])
def test_real_deadlock_is_retried(pg_server, driver):
    """Two transactions that lock two rows in opposite orders deadlock (40P01); the one
    the server aborts runs again and both commit."""
    db = _fresh(pg_server, driver, retry_delays=lambda: iter([0.01] * 4))
    _put(db, "a", "0")
    _put(db, "b", "0")
    both_locked_first = threading.Barrier(2)
    attempts = []

    def swap(first: str, second: str):
        def fn(tx):
            attempts.append(first)
            tx.execute("UPDATE private_storage SET data = data || '+' WHERE namespace = ?",
                       (first,))
            if len(attempts) <= 2:  # only the first attempts meet in the middle
                both_locked_first.wait(10)
            tx.execute("UPDATE private_storage SET data = data || '+' WHERE namespace = ?",
                       (second,))
        return lambda: db.transaction(fn)

    errors = []

    def run(job):
        try:
            job()
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(swap(a, b),)) for a, b in (("a", "b"),
                                                                          ("b", "a"))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert _data(db) == {"a": "0++", "b": "0++"}
        # At least one retry; a retry can deadlock again with the other's first try.
        assert len(attempts) >= 3 and db.sleeps
    finally:
        db.close()


def test_query_timeout_is_unavailable(pg_server):
    """A statement over query_timeout is cancelled: StorageUnavailable, SQLSTATE 57014."""
    name = pg_server.fresh_database("pgsql", "retries")
    db = PgDatabase(pg_server.params(name, query_timeout=50), pool_size=1)
    try:
        with pytest.raises(StorageUnavailable) as caught:
            db.query("SELECT pg_sleep(5)")
        assert caught.value.sqlstate == "57014"
        assert db.query("SELECT 1") == [(1,)]
    finally:
        db.close()


# Losing the server, and getting it back


@pytest.fixture(scope="module")
def spare_server():
    """A second server, stopped and started by the tests of this module."""
    server = start_server()
    yield server
    server.close()


@pytest.fixture
def spare_db(spare_server):
    spare_server.start()
    name = spare_server.fresh_database("pgsql", "outage")
    db = PgDatabase(spare_server.params(name), pool_size=4, call_timeout=10)
    yield db
    db.close()
    spare_server.start()


def _hold_connections(db: PgDatabase, n: int) -> None:
    """Make the pool open n connections (n transactions at once), then return them."""
    together = threading.Barrier(n)
    threads = [threading.Thread(target=db.transaction,
                                args=(lambda tx: together.wait(10),)) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)


def test_restart_costs_no_request(spare_server, spare_db):
    """After a server restart, idle pooled connections that the server closed are
    replaced before use: no request fails once the server is back."""
    _hold_connections(spare_db, 4)
    assert spare_db.statistics()["pool_available"] == 4
    spare_server.restart()
    for _ in range(6):
        assert spare_db.query("SELECT 1") == [(1,)]
    spare_db.transaction(lambda tx: _put(tx, "after", "restart"))


@pytest.mark.timeout(90)
def test_server_stopped_then_back(spare_server, spare_db):
    """With the server stopped, calls fail fast with StorageUnavailable naming the
    address; when it is back, calls work again."""
    _put(spare_db, "before", "1")
    spare_server.stop()
    for call in (lambda: spare_db.query("SELECT 1"),
                 lambda: spare_db.transaction(lambda tx: _put(tx, "during", "1")),
                 lambda: spare_db.execute_many(
                     "INSERT INTO last (server, username, seconds, state) VALUES (?, ?, ?, ?)",
                     [("h", "u", 1, "")])):
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as caught:
            call()
        assert time.monotonic() - started < 5
        assert f"127.0.0.1:{spare_server.port}" in str(caught.value)
    assert spare_db.connect_error is not None
    spare_server.start()

    def works() -> bool:
        try:
            return spare_db.query("SELECT 1") == [(1,)]
        except StorageUnavailable:
            return False

    wait_until(works, timeout=60, what="queries to work again after the restart")
    assert _data(spare_db) == {"before": "1"}
    assert spare_db.connect_error is None


# Start-up: open_database


def _pool_config(port: int, **connection) -> config.Config:
    lines = ["[outgoing_pools.rdbms.default.connection]", 'driver = "pgsql"',
             'host = "127.0.0.1"', f"port = {port}", 'database = "mongooseim"',
             'username = "mongoose"']
    lines += [f"{key} = {value}" for key, value in connection.items()]
    return config.loads("\n".join(lines), "test.toml")


class FakeTime:
    """A clock that only moves when sleep is called."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep = lambda n: None

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.on_sleep(len(self.sleeps))


def test_unreachable_at_start_retries_then_names_pool_and_address(caplog):
    """An unreachable database: each failed attempt is logged (rdbms_connect_failed) and
    retried after 1, 2, 4, ... s up to max_start_interval; past `wait`, the error names
    the pool, the driver, the address, the database and the user."""
    port = free_port()
    fake = FakeTime()
    caplog.set_level(logging.WARNING, logger="mongoose.storage")
    with pytest.raises(DatabaseUnreachable) as caught:
        open_database(_pool_config(port, max_start_interval=4), wait=20,
                      sleep=fake.sleep, clock=fake.clock)
    assert fake.sleeps == [1, 2, 4, 4, 4, 4]
    message = str(caught.value)
    assert message.startswith(
        f"outgoing_pools.rdbms.default: cannot connect to pgsql at 127.0.0.1:{port}/mongooseim"
        " as mongoose: ")
    assert "refused" in message and message.endswith("(7 attempts)")
    events = [r for r in caplog.records if getattr(r, "what", None) == "rdbms_connect_failed"]
    assert [r.retry_in for r in events] == [1, 2, 4, 4, 4, 4]
    assert {r.pool for r in events} == {"default"}
    assert all(str(port) in r.address and "refused" in r.reason for r in events)


def test_wait_zero_is_one_attempt():
    """wait=0: one attempt, no sleep."""
    fake = FakeTime()
    with pytest.raises(DatabaseUnreachable, match=r"\(1 attempt\)$"):
        open_database(_pool_config(free_port()), wait=0, sleep=fake.sleep, clock=fake.clock)
    assert fake.sleeps == []


def test_start_waits_for_the_database_to_come_up(spare_server):
    """A node started before its database keeps trying, and connects once it is up."""
    spare_server.start()
    spare_server.stop()
    fake = FakeTime()
    fake.on_sleep = lambda n: spare_server.start() if n == 3 else None
    toml = spare_server.config_toml("postgres")
    db = open_database(config.loads(toml, "t.toml"), wait=None, sleep=fake.sleep,
                       clock=fake.clock)
    try:
        assert fake.sleeps == [1, 2, 4]
        assert db.driver == "pgsql"
        assert db.query("SELECT current_user") == [("mongoose",)]
    finally:
        db.close()


def test_start_delays_cap():
    """The start-up delays double from 1 s up to max_start_interval."""
    delays = start_delays(30)
    assert [next(delays) for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_no_pool_is_the_sqlite_file_under_data_dir(tmp_path):
    """Without [outgoing_pools.rdbms.default], the database is data_dir/mongoose.db."""
    cfg = config.loads(f'[general]\ndata_dir = "{tmp_path}"\n')
    db = open_database(cfg)
    try:
        assert isinstance(db, SqliteDatabase)
        assert Path(db.path) == tmp_path / "mongoose.db"
    finally:
        db.close()


def test_pool_from_config_connects_with_its_settings(pg_database):
    """open_database with the fixture's TOML reaches the fixture's database."""
    cfg = config.loads(pg_database.config_toml("cockroachdb", query_timeout=1234), "t.toml")
    db = open_database(cfg, wait=0)
    try:
        assert db.driver == "cockroachdb"
        assert db.query("SELECT current_database(), current_setting('statement_timeout')") \
            == [(pg_database.name, "1234ms")]
        assert migrate.status(db).up_to_date
    finally:
        db.close()


# Schema and migrations


@pytest.mark.parametrize("driver", ["pgsql", "cockroachdb"])
def test_init_on_an_empty_database_then_idempotent(pg_server, driver):
    """init applies every version to an empty database, then finds nothing to do."""
    name = pg_server.create_database()
    db = PgDatabase(pg_server.params(name, driver), pool_size=2)
    try:
        assert migrate.status(db).current == 0
        assert migrate.init(db) == [m.version for m in migrate.MIGRATIONS]
        assert migrate.init(db) == []
        state = migrate.status(db)
        assert (state.current, state.up_to_date) == (migrate.LATEST, True)
        tables = {row[0] for row in db.query(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema()")}
        assert tables == {table for migration in migrate.MIGRATIONS
                          for table in _tables_of(migration.resource("pgsql"))}
    finally:
        db.close()
        pg_server.drop_database(name)


def test_concurrent_init_applies_once(pg_server):
    """Two inits at once on PostgreSQL: one applies, the other waits and finds it done."""
    name = pg_server.create_database()
    dbs = [PgDatabase(pg_server.params(name), pool_size=1) for _ in range(2)]
    results: list[list[int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(db):
        try:
            start.wait(10)
            results.append(migrate.init(db))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(db,)) for db in dbs]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        versions = [m.version for m in migrate.MIGRATIONS]
        assert sorted(results) == [[], versions]
        assert dbs[0].query("SELECT count(*) FROM schema_version") == [(len(versions),)]
    finally:
        for db in dbs:
            db.close()
        pg_server.drop_database(name)


def test_database_fixture_has_the_latest_schema(database):
    """Every driver's fixture database is current; init there does nothing."""
    assert migrate.status(database).up_to_date
    assert migrate.init(database) == []
    assert migrate.ensure(database).current == migrate.LATEST


def test_sqlite_store_made_before_the_schema_keeps_its_accounts(tmp_path):
    """A mongoose.db holding only the old users table gains the schema and keeps its rows."""
    db = SqliteDatabase(tmp_path / "mongoose.db")
    db.execute("CREATE TABLE users (username TEXT NOT NULL, server TEXT NOT NULL, "
               "password TEXT NOT NULL DEFAULT '', pass_details TEXT NOT NULL, "
               "created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP, "
               "PRIMARY KEY (server, username)) WITHOUT ROWID")
    db.execute("INSERT INTO users (username, server, pass_details) VALUES (?, ?, ?)",
               ("alice", "localhost", "{}"))
    assert migrate.status(db).current == 0
    assert migrate.ensure(db).up_to_date  # a node's start: SQLite initialises itself
    assert db.query("SELECT username FROM users") == [("alice",)]
    assert migrate.init(db) == []
    db.close()


def test_ensure_refuses_an_uninitialised_server_database(pg_server):
    """At start, a PostgreSQL database without the schema is refused, pointing to init."""
    name = pg_server.create_database()
    db = PgDatabase(pg_server.params(name), pool_size=1)
    try:
        with pytest.raises(migrate.SchemaError, match="run `mongoose db init`"):
            migrate.ensure(db)
        assert migrate.status(db).current == 0  # nothing was created
    finally:
        db.close()
        pg_server.drop_database(name)


def _tables_of(file: str) -> list[str]:
    text = migrate.schema_file(file)
    return [line.split()[2] for line in text.splitlines() if line.startswith("-- table: ")]


def test_schema_files_have_the_same_tables():
    """pg.sql, cockroachdb.sql and sqlite.sql declare the same tables, block by block,
    including every table the storage needs."""
    tables = _tables_of("pg.sql")
    assert tables == _tables_of("cockroachdb.sql") == _tables_of("sqlite.sql")
    assert set(tables) >= {
        "users", "rosterusers", "rostergroups", "roster_version", "offline_message",
        "mam_server_user", "mam_message", "mam_config", "private_storage", "vcard",
        "vcard_search", "last", "privacy_default_list", "privacy_list",
        "privacy_list_data", "discovery_nodes", "schema_version"}
    for file in ("pg.sql", "cockroachdb.sql", "sqlite.sql"):
        text = migrate.schema_file(file)
        assert text.count("-- table: ") == text.count("-- end: ")


def test_cockroachdb_schema_uses_nothing_cockroachdb_lacks():
    """cockroachdb.sql: sequences rather than SERIAL; no CREATE TYPE, no functions, no
    advisory locks or LISTEN/NOTIFY."""
    statements = [s.upper() for s in migrate.split_statements(
        migrate.schema_file("cockroachdb.sql"))]
    text = " ".join(statements)
    for forbidden in ("SERIAL", "CREATE TYPE", "CREATE FUNCTION", "ADVISORY", "LISTEN",
                      "NOTIFY", "LOCK TABLE"):
        assert forbidden not in text
    assert sum(s.startswith("CREATE SEQUENCE IF NOT EXISTS") for s in statements) == 3
    assert all(" IF NOT EXISTS " in s for s in statements)


def test_split_statements():
    """Statements split at semicolons outside literals, comments and dollar quotes."""
    script = """
        -- a comment; with a semicolon
        CREATE TABLE t (x TEXT DEFAULT ';');
        /* block; */ INSERT INTO t VALUES ('a;b');
        DO $$ BEGIN PERFORM 1; END $$;
    """
    assert migrate.split_statements(script) == [
        "CREATE TABLE t (x TEXT DEFAULT ';')",
        "INSERT INTO t VALUES ('a;b')",
        "DO $$ BEGIN PERFORM 1; END $$",
    ]


def test_schema_files_ship_with_the_package():
    """The schema directory is a package whose *.sql files setuptools' package-data takes."""
    import tomllib
    from importlib import resources

    root = Path(__file__).resolve().parent.parent
    package_data = tomllib.loads((root / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-data"]
    assert "*.sql" in package_data["*"]
    schema = resources.files("mongoose.storage.schema")
    assert {"pg.sql", "cockroachdb.sql", "sqlite.sql", "__init__.py"} <= {
        entry.name for entry in schema.iterdir()}


def test_missing_postgresql_fails_with_what_to_install(tmp_path, monkeypatch):
    """Without the server binaries the PostgreSQL fixtures fail (not skip), saying what
    to install."""
    import pg_harness

    with pytest.raises(pg_harness.PgMissing, match="apt-get install -y postgresql"):
        pg_harness.find_bindir([tmp_path])
    find = pg_harness.find_bindir
    monkeypatch.setattr(pg_harness, "find_bindir", lambda: find([tmp_path]))
    with pytest.raises(pytest.fail.Exception, match="install the PostgreSQL server"):
        start_server()
