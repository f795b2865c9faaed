"""A real PostgreSQL for the tests, started by the test session itself.

:class:`PgServer` runs a throwaway cluster: ``initdb`` into a fresh temporary directory,
then ``postgres`` on a free TCP port of 127.0.0.1 and a Unix socket in that directory,
as the ``postgres`` OS user when the tests run as root (PostgreSQL refuses to run as
root). The server binaries come from the Debian package ``postgresql``
(/usr/lib/postgresql/<version>/bin); ``MONGOOSE_PG_BINDIR`` points elsewhere. Without
them the fixtures fail with what to install: a missing database must not turn into
skipped tests that look like passing ones.

The server is tuned for tests (no fsync, no full-page writes): fast, and
crash-unsafe, which does not matter for a cluster deleted at the end of the session.
The postmaster is a direct child of the test process (``subprocess.Popen(user=...)``,
not a ``runuser`` wrapper), so stopping it is a signal and a ``wait``; it also gets
SIGQUIT if the test process dies first (``PR_SET_PDEATHSIG``), and an ``atexit`` hook
stops whatever is still running, so no server outlives the session.

Databases: the test role ``mongoose`` (password with a quote, a space and a percent
sign, so connection parameters are quoted right) owns them. A template per driver
(``pgsql``, ``cockroachdb``) holds its schema; the databases the fixtures give are
copies of it, emptied between tests (:meth:`PgServer.fresh_database`: a few ms, where a
copy takes half a second) and copied again when a test changed their tables.
:meth:`PgServer.create_database` makes a new one (empty, or from a template). The
admin connection uses the Unix socket as ``postgres`` (trust); the role connects over
TCP with its password (scram-sha-256), as a node would.

Fixtures (registered in conftest.py):

``pg_server``        session: the running :class:`PgServer`.
``pg_database``      a database with the pgsql schema and no rows, for this test
                     (:class:`TestDatabase`: name, dsn, config_toml(driver)).
``pg_dsn``           the libpq connection string of ``pg_database``.
``pg_config_toml``   the ``[outgoing_pools.rdbms.default]`` TOML of ``pg_database`` for a
                     node's config file (driver pgsql).
``database``         parametrized over sqlite, pgsql and cockroachdb: a fresh
                     :class:`mongoose.storage.Database` with the schema applied (the
                     cockroachdb driver runs against PostgreSQL with the CockroachDB
                     schema; see mongoose.storage.pg).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

ROLE = "mongoose"
PASSWORD = "s3cret pa'ss%word"
INSTALL_HINT = (
    "install the PostgreSQL server binaries (initdb, postgres): on Debian/Ubuntu "
    "`apt-get install -y postgresql`, or set MONGOOSE_PG_BINDIR to their directory"
)
READY = "database system is ready to accept connections"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
#: ``postgres -c`` settings of a test server: fast and crash-unsafe (see the module doc).
TEST_SETTINGS = {
    "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
    "max_connections": "300", "shared_buffers": "32MB",
    # Deadlock tests wait this long for the server to notice (default 1 s).
    "deadlock_timeout": "100ms",
    "logging_collector": "off", "log_min_messages": "warning",
}

_running: set[PgServer] = set()


class PgMissing(Exception):
    """The PostgreSQL server binaries are not installed."""


def find_bindir(candidates: list[Path] | None = None) -> Path:
    """The directory with ``initdb`` and ``postgres`` (of ``candidates``, default: the
    usual places); :class:`PgMissing` if none."""
    if candidates is None:
        candidates = _usual_bindirs()
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in ("initdb", "postgres")):
            return bindir
    raise PgMissing(f"no PostgreSQL server found: {INSTALL_HINT}")


def _usual_bindirs() -> list[Path]:
    candidates: list[Path] = []
    if os.environ.get("MONGOOSE_PG_BINDIR"):
        candidates.append(Path(os.environ["MONGOOSE_PG_BINDIR"]))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        candidates.append(Path(out))

    def version(path: Path) -> int:
        return int(path.parent.name) if path.parent.name.isdigit() else 0

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb") or "").resolve().parent)
    return candidates


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


try:  # looked up here: the child of a threaded process must not dlopen
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int) -> Callable[[], None]:
    """For ``preexec_fn``: the child gets ``sig`` when the test process dies."""
    def set_signal() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, sig)

    return set_signal


@dataclass(frozen=True)
class TestDatabase:
    """One database of the test server, owned by the test role."""

    __test__ = False

    server: PgServer
    name: str

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.name)

    def config_toml(self, driver: str = "pgsql", **connection: object) -> str:
        return self.server.config_toml(self.name, driver=driver, **connection)


class PgServer:
    """A PostgreSQL cluster in a temporary directory; :meth:`start` it, :meth:`close` it."""

    def __init__(self, bindir: Path | None = None,
                 settings: dict[str, str] | None = None) -> None:
        self.bindir = bindir or find_bindir()
        #: ``postgres -c`` settings (default :data:`TEST_SETTINGS`; bench/storage.py
        #: runs PostgreSQL's durable defaults).
        self.settings = dict(TEST_SETTINGS if settings is None else settings)
        self.dir = Path(tempfile.mkdtemp(prefix="mongoose-pg-"))
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "run"
        self.host = "127.0.0.1"
        self.port = 0
        self.log: collections.deque[str] = collections.deque(maxlen=200)
        self._proc: subprocess.Popen[str] | None = None
        self._names = itertools.count(1)
        self._templates: dict[str, str] = {}
        self._shapes: dict[str, tuple[object, ...]] = {}
        self._reusable: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._owner: dict[str, object] = {}
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.dir, ignore_errors=True)
                raise PgMissing(f"running as root needs the OS user postgres: {INSTALL_HINT}"
                                ) from None
            self._owner = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        try:
            self.socket_dir.mkdir()
            if self._owner:
                os.chown(self.socket_dir, int(self._owner["user"]), int(self._owner["group"]))
            self._initdb()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    # Life cycle

    def _run(self, *command: str) -> None:
        result = subprocess.run(  # initdb removes what it made on SIGTERM
            [str(self.bindir / command[0]), *command[1:]], capture_output=True, text=True,
            timeout=120, env=self._env(), preexec_fn=_die_with_parent(signal.SIGTERM),
            **self._owner)  # type: ignore[call-overload]
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed ({result.returncode}): "
                               f"{result.stderr.strip() or result.stdout.strip()}")

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _initdb(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                  "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256",
                  "--no-sync", "--no-instructions")

    def start(self) -> PgServer:
        """Start the server (on the port it had, after a :meth:`stop`) and wait until it
        accepts connections."""
        if self._proc is not None:
            return self
        for _ in range(5):
            port = self.port or free_port()
            if self._launch(port):
                self.port = port
                _running.add(self)
                self._setup_role()
                return self
            if self.port:  # a restart: the port must stay the same
                break
        raise RuntimeError("postgres did not start:\n" + "\n".join(self.log))

    def _launch(self, port: int) -> bool:
        command = [
            str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(port),
            "-k", str(self.socket_dir), "-c", f"listen_addresses={self.host}",
        ]
        for name, value in self.settings.items():
            command += ["-c", f"{name}={value}"]
        proc = subprocess.Popen(  # type: ignore[call-overload]
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, env=self._env(),
            preexec_fn=_die_with_parent(signal.SIGQUIT), **self._owner)
        ready = threading.Event()

        def drain() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                self.log.append(line.rstrip())
                if READY in line:
                    ready.set()
            ready.set()  # exited

        threading.Thread(target=drain, name=f"postgres-{port}-log", daemon=True).start()
        if ready.wait(START_TIMEOUT) and proc.poll() is None:
            self._proc = proc
            return True
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(STOP_TIMEOUT)
        return False

    def stop(self) -> None:
        """Fast shutdown: clients are disconnected, the server exits."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _running.discard(self)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs (its backends are its children)."""
        return self._proc.pid if self.running and self._proc is not None else None

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # Roles and databases

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        """A superuser connection over the Unix socket (autocommit)."""
        return psycopg.connect(host=str(self.socket_dir), port=self.port, user="postgres",
                               dbname=dbname, autocommit=True)

    def _setup_role(self) -> None:
        with self.admin() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(PASSWORD)))

    def dsn(self, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host, port=self.port, dbname=dbname, user=ROLE, password=PASSWORD)

    def config_toml(self, dbname: str, driver: str = "pgsql", **connection: object) -> str:
        """``[outgoing_pools.rdbms.default]`` for a node using database ``dbname``."""
        lines = [
            "[outgoing_pools.rdbms.default]",
            "workers = 4",
            "[outgoing_pools.rdbms.default.connection]",
            f'driver = "{driver}"',
            f'host = "{self.host}"',
            f"port = {self.port}",
            f'database = "{dbname}"',
            f'username = "{ROLE}"',
            f"password = {_toml_string(PASSWORD)}",
        ]
        lines += [f"{key} = {_toml_value(value)}" for key, value in connection.items()]
        return "\n".join(lines) + "\n"

    def create_database(self, template: str | None = None) -> str:
        """A new database owned by the test role, empty or a copy of ``template``."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        query = sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(name), sql.Identifier(ROLE))
        if template:
            query += sql.SQL(" TEMPLATE {} STRATEGY WAL_LOG").format(sql.Identifier(template))
        with self.admin() as conn:
            conn.execute(query)
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))

    def template(self, driver: str) -> str:
        """A database holding the schema of ``driver`` (made once), to copy from."""
        from mongoose.storage import migrate
        from mongoose.storage.pg import PgDatabase

        with self._lock:
            if driver not in self._templates:
                name = self.create_database()
                db = PgDatabase(self.params(name, driver), pool_size=1)
                try:
                    migrate.init(db)
                finally:
                    db.close()
                self._templates[driver] = name
                self._shapes[driver] = self._shape(name)
            return self._templates[driver]

    def fresh_database(self, driver: str, slot: str) -> str:
        """A database with the schema of ``driver`` and no rows, for one test at a time.

        The database of ``(driver, slot)`` is made once from the template; later calls
        empty it (DELETE from every table but schema_version, sequences back to 1),
        which takes milliseconds where copying a template takes half a second. If a test
        changed its tables, it is made again from the template.
        """
        template = self.template(driver)
        name = self._reusable.get((driver, slot))
        if name is not None and self._shape(name) == self._shapes[driver]:
            self._empty(name)
            return name
        if name is not None:
            self.drop_database(name)
        name = self.create_database(template=template)
        self._reusable[(driver, slot)] = name
        return name

    def _shape(self, name: str) -> tuple[object, ...]:
        with self.admin(name) as conn:
            return tuple(tuple(conn.execute(query).fetchall()) for query in (
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
                "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public' "
                "ORDER BY 1",
                "SELECT version FROM schema_version ORDER BY 1",
            ))

    def _empty(self, name: str) -> None:
        tables, sequences, _ = self._shape(name)
        with self.admin(name) as conn:
            statements = [sql.SQL("DELETE FROM {}").format(sql.Identifier(table))
                          for (table,) in tables if table != "schema_version"]
            statements += [sql.SQL("SELECT setval({}, 1, false)").format(
                sql.Literal(sequence)) for (sequence,) in sequences]
            conn.execute(sql.SQL("; ").join(statements))

    def params(self, dbname: str, driver: str = "pgsql", **extra: object):  # -> PgParams
        from mongoose.storage.pg import PgParams

        return PgParams(driver=driver, host=self.host, port=self.port, database=dbname,
                        username=ROLE, password=PASSWORD, **extra)  # type: ignore[arg-type]


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _toml_string(value)
    return str(value)


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_running):
        server.close()


def start_server(bindir: Path | None = None) -> PgServer:
    """A started :class:`PgServer`; fails the test (not skips) without PostgreSQL."""
    try:
        server = PgServer(bindir or find_bindir())
    except PgMissing as error:
        pytest.fail(str(error), pytrace=False)
    try:
        return server.start()
    except BaseException:
        server.close()
        raise


# Fixtures


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server."""
    server = start_server()
    yield server
    server.close()


@pytest.fixture
def pg_database(pg_server: PgServer) -> TestDatabase:
    """A database with the pgsql schema and no rows, for this test."""
    return TestDatabase(pg_server, pg_server.fresh_database("pgsql", "pg_database"))


@pytest.fixture
def pg_dsn(pg_database: TestDatabase) -> str:
    """libpq connection string of a fresh database with the pgsql schema."""
    return pg_database.dsn


@pytest.fixture
def pg_config_toml(pg_database: TestDatabase) -> str:
    """``[outgoing_pools.rdbms.default]`` TOML for a node on a fresh pgsql database."""
    return pg_database.config_toml()


@pytest.fixture(params=["sqlite", "pgsql", "cockroachdb"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    """A fresh Database with the schema applied, for each driver."""
    from mongoose.storage import migrate
    from mongoose.storage.pg import PgDatabase
    from mongoose.storage.sqlite import SqliteDatabase

    driver = request.param
    if driver == "sqlite":
        db = SqliteDatabase(tmp_path / "mongoose.db")
        migrate.init(db)
        yield db
        db.close()
        return
    server: PgServer = request.getfixturevalue("pg_server")
    db = PgDatabase(server.params(server.fresh_database(driver, "database"), driver),
                    pool_size=4)
    yield db
    db.close()
