"""The PostgreSQL and CockroachDB drivers: psycopg 3 over a ``psycopg_pool.ConnectionPool``.

One class, :class:`PgDatabase`, serves both drivers (``driver = "pgsql"`` or
``"cockroachdb"``): CockroachDB speaks PostgreSQL's wire protocol, and everything this
driver does is in the subset both servers support. Nothing here uses what CockroachDB
lacks: no advisory locks, no LISTEN/NOTIFY, no SERIAL (the schema files differ, see
:mod:`mongoose.storage.migrate`). psycopg's PostgreSQL adapters are used for both: the
parameter types our SQL binds (text, integers, booleans, bytea, NULL) work on both
servers, while ``psycopg.crdb``'s adapters type NULL parameters as text, which
PostgreSQL refuses where a number is expected, and the cockroachdb driver is tested
against PostgreSQL (a CockroachDB server cannot be installed where the tests run).

The contract (:mod:`mongoose.storage.database`) on top of psycopg:

Placeholders
    SQL is written with ``?``; :func:`convert_placeholders` turns each ``?`` outside
    string literals, quoted identifiers, comments and dollar-quoted strings into ``%s``
    and doubles every literal ``%`` (psycopg's own placeholder syntax), once per SQL
    text (an LRU cache). Parameters go to the server separately (server-side binding):
    they are never formatted into the SQL. ``?`` is always a placeholder, so
    PostgreSQL's jsonb operators ``?``, ``?|`` and ``?&`` cannot be written (use
    ``jsonb_exists``); block comments do not nest.

Connections
    A pool per :class:`PgDatabase` (``workers`` = ``max_size``; one connection is kept
    open and the others are opened on demand and closed after 10 idle minutes),
    autocommit, ``statement_timeout`` = ``query_timeout`` on each new connection
    (``SET``, which CockroachDB accepts too), TCP keepalives every
    ``keepalive_interval`` s when set (MongooseIM sends ``SELECT 1`` at that interval to
    keep connections alive through load balancers and to notice dead ones; the kernel's
    keepalive probes do both without a query). A connection taken from the pool is
    looked at first without a round trip: if its socket has become readable while it
    was idle (the server closed it: a restart, an idle timeout), it is thrown away and
    another taken, so a database restart costs no failed request once the server is
    back. While the last connection attempt failed, a request waits only
    :data:`DOWN_WAIT` s for a connection before failing with :class:`StorageUnavailable`
    (instead of ``call_timeout``), and a request already waiting gives up within a
    second: requests fail fast while the database is down, and the pool keeps
    reconnecting in the background with an exponential backoff that
    ``reconnect_timeout`` bounds (``max_start_interval`` from the config). Each outage
    is logged once: ``rdbms_connect_failed`` then ``rdbms_reconnected``.

Errors
    Connection failures, ``OperationalError`` (server shutdown, statement timeout, too
    many connections, ...), ``InterfaceError`` and pool timeouts become
    :class:`StorageUnavailable`; integrity errors :class:`ConstraintViolation`; the rest
    :class:`StorageError`. Each carries the server's SQLSTATE in ``sqlstate``.

Retries
    SQLSTATE 40001 (serialization_failure; CockroachDB's "restart transaction") and
    40P01 (deadlock_detected) are retried, for both drivers: the whole function given
    to :meth:`PgDatabase.transaction`, or the statement run outside one (an implicit
    transaction, rolled back whole), after the delays of
    :func:`~mongoose.storage.database.backoff_delays`, on a fresh connection each time;
    then :class:`TransactionConflict`. A statement that fails inside a transaction
    aborts it (PostgreSQL and CockroachDB refuse further statements): if ``fn``
    catches the error and returns, the transaction is rolled back and the error raised
    anyway, so no caller believes a half-done transaction committed. Upserts use ``ON
    CONFLICT`` instead.

Fault injection (tests)
    ``inject_serialization_failures=N`` (or the environment variable
    :data:`INJECT_ENV` = N when the database is made, or
    :meth:`PgDatabase.inject_serialization_failures` later) makes the next N
    transactions fail just before COMMIT, after ``fn`` ran, with a real SQLSTATE 40001
    error raised by the server (a PL/pgSQL ``RAISE ... USING ERRCODE = '40001'``, so
    PostgreSQL only): the retry path of the cockroachdb driver is exercised against
    PostgreSQL. Off (0) by default.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import select
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from mongoose.storage.database import (
    ConstraintViolation,
    Row,
    StorageError,
    StorageUnavailable,
    TransactionConflict,
    backoff_delays,
)

if TYPE_CHECKING:
    from psycopg import Cursor

    from mongoose.config import RdbmsPool, RdbmsTls

__all__ = ["DEFAULT_PORTS", "DOWN_WAIT", "DRIVERS", "INJECT_ENV", "PgDatabase", "PgParams",
           "convert_placeholders", "probe", "tls_options"]

T = TypeVar("T")
log = logging.getLogger(__name__)
# psycopg_pool logs a warning per failed connection attempt and per discarded
# connection; PgDatabase logs the outage once (rdbms_connect_failed, rdbms_reconnected).
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

DRIVERS = ("pgsql", "cockroachdb")
DEFAULT_PORTS = {"pgsql": 5432, "cockroachdb": 26257}
#: SQLSTATEs after which the transaction (or statement) is run again.
RETRY_SQLSTATES = frozenset({"40001", "40P01"})
#: Seconds a request waits for a connection while the database is known to be down.
DOWN_WAIT = 0.25
_UP_SLICE = 1.0
INJECT_ENV = "MONGOOSE_STORAGE_INJECT_40001"
_INJECT_SQL = (
    "DO $$ BEGIN RAISE EXCEPTION 'serialization failure injected for a test' "
    "USING ERRCODE = '40001'; END $$"
)

_TOKENS = re.compile(
    r"""
    (?P<quoted>
        (?<![\w$])[eE]'(?:[^'\\]|\\.|'')*'              # E'...' (backslash escapes)
      | '(?:[^']|'')*'                                  # '...'
      | "(?:[^"]|"")*"                                  # "identifier"
      | --[^\n]*                                        # -- comment
      | /\*.*?\*/                                       # /* comment */
      | (?<![\w$])\$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?\$(?P=tag)\$   # $tag$...$tag$
    )
    | (?P<placeholder>\?)
    | %
    """,
    re.VERBOSE | re.DOTALL,
)


def _token(match: re.Match[str]) -> str:
    if match.group("placeholder"):
        return "%s"
    quoted = match.group("quoted")
    return "%%" if quoted is None else quoted.replace("%", "%%")


@functools.lru_cache(maxsize=4096)
def convert_placeholders(sql: str) -> str:
    """``sql`` with ``?`` placeholders in psycopg's ``%s`` style (see the module doc)."""
    return _TOKENS.sub(_token, sql)


@dataclass(frozen=True)
class PgParams:
    """Where and how to connect: what a pool's ``connection`` table says, in libpq terms.

    ``tls`` holds libpq's TLS keywords (``sslmode``, ``sslrootcert``, ...; see
    :func:`tls_options`); ``server_name``, when set, is the name the server's certificate
    is checked against and sent in SNI, with ``host`` then an IP address (libpq's
    ``host``/``hostaddr`` pair).
    """

    driver: str = "pgsql"
    host: str = "localhost"
    port: int = 5432
    database: str = "mongooseim"
    username: str = "mongooseim"
    password: str = ""
    query_timeout: int = 5000  # ms; 0: none
    keepalive_interval: int | None = None  # s
    connect_timeout: int = 10  # s
    tls: Mapping[str, str] = field(default_factory=dict)
    server_name: str = ""
    pool: str = "default"

    def __post_init__(self) -> None:
        if self.driver not in DRIVERS:
            raise ValueError(f"driver must be one of {', '.join(DRIVERS)}, not {self.driver!r}")

    @property
    def address(self) -> str:
        """``pgsql at 127.0.0.1:5432/mongooseim as mongoose``: for messages (no password)."""
        return f"{self.driver} at {self.host}:{self.port}/{self.database} as {self.username}"

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``psycopg.connect``."""
        kwargs: dict[str, Any] = {
            "host": self.server_name or self.host,
            "port": self.port,
            "dbname": self.database,
            "user": self.username,
            "connect_timeout": self.connect_timeout,
            "application_name": "mongoose",
        }
        if self.server_name:
            kwargs["hostaddr"] = self.host
        if self.password:
            kwargs["password"] = self.password
        if self.keepalive_interval:
            kwargs.update(keepalives=1, keepalives_idle=self.keepalive_interval,
                          keepalives_interval=self.keepalive_interval, keepalives_count=3)
        kwargs.update(self.tls)
        return kwargs

    @classmethod
    def from_config(cls, name: str, pool: RdbmsPool) -> PgParams:
        """The parameters of ``[outgoing_pools.rdbms.<name>]`` (already validated)."""
        c = pool.connection
        tls = c.tls
        return cls(
            driver=c.driver,
            host=c.host,
            port=c.port_number,
            database=c.database,
            username=c.username,
            password=c.password,
            query_timeout=c.query_timeout,
            keepalive_interval=c.keepalive_interval,
            tls=tls_options(tls),
            server_name=tls.server_name_indication.host if tls is not None else "",
            pool=name,
        )


_TLS_VERSIONS = {"tlsv1.2": "TLSv1.2", "tlsv1.3": "TLSv1.3"}


def tls_options(tls: RdbmsTls | None) -> dict[str, str]:
    """libpq's TLS keywords for a ``connection.tls`` table, after MongooseIM's meaning.

    No table: no TLS (``sslmode=disable``). ``verify_mode = "none"``: TLS without
    checking the server, attempted (``prefer``) or, with ``required = true``, insisted
    on (``require``). ``"selfsigned_peer"``: the certificate must chain to
    ``cacertfile``, which may be the server's self-signed certificate itself
    (``verify-ca``). ``"peer"`` (the default): that, and the certificate must name the
    host (``verify-full``), unless ``server_name_indication.enabled = false``. A
    verified connection is always required: libpq cannot verify a server it may also
    skip TLS with.
    """
    if tls is None:
        return {"sslmode": "disable"}
    if tls.verify_mode == "none":
        mode = "require" if tls.required else "prefer"
    elif tls.verify_mode == "selfsigned_peer" or not tls.server_name_indication.enabled:
        mode = "verify-ca"
    else:
        mode = "verify-full"
    options = {"sslmode": mode, "sslsni": "1" if tls.server_name_indication.enabled else "0"}
    if tls.cacertfile and tls.verify_mode != "none":
        options["sslrootcert"] = tls.cacertfile
    if tls.certfile:
        options["sslcert"] = tls.certfile
        options["sslkey"] = tls.keyfile
    if tls.password:
        options["sslpassword"] = tls.password
    if tls.versions:
        ordered = sorted(tls.versions)
        options["ssl_min_protocol_version"] = _TLS_VERSIONS[ordered[0]]
        options["ssl_max_protocol_version"] = _TLS_VERSIONS[ordered[-1]]
    return options


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def translate(error: BaseException, where: str) -> StorageError:
    """A psycopg or pool exception as the contract's error, its message prefixed by
    ``where`` (the database's address)."""
    sqlstate = getattr(error, "sqlstate", None)
    text = _first_line(error)
    if isinstance(error, psycopg.Error) and type(error).__module__ == "psycopg.errors":
        text = f"{type(error).__name__}: {text}"
    cls: type[StorageError]
    if sqlstate in RETRY_SQLSTATES:
        cls = TransactionConflict
    elif isinstance(error, psycopg.IntegrityError):
        cls = ConstraintViolation
    elif isinstance(error, psycopg.OperationalError | psycopg.InterfaceError | PoolTimeout
                    | PoolClosed):
        cls = StorageUnavailable
    else:
        cls = StorageError
    failure = cls(f"{where}: {text}")
    failure.sqlstate = sqlstate
    return failure


def probe(params: PgParams) -> str:
    """Connect once (no pool), run ``SELECT version()`` and return the answer;
    :class:`StorageUnavailable` with libpq's reason when that fails."""
    try:
        with psycopg.connect(**params.connect_kwargs(), autocommit=True) as conn:
            row = conn.execute("SELECT version()").fetchone()
    except psycopg.Error as error:
        raise StorageUnavailable(_first_line(error)) from None
    return str(row[0]) if row else ""


def _went_away(conn: psycopg.Connection) -> bool:
    """True if an idle pooled connection should not be used.

    An idle connection in autocommit has nothing to read: we LISTEN to nothing and send
    nothing that would make the server talk. A readable socket almost always means the
    server is closing it (a FATAL message, then the end of the stream: a restart, an
    idle timeout, a terminated backend), and its end may not have arrived yet; the
    rare harmless message (a parameter changed by a configuration reload) costs a
    reconnection. One ``poll``, no round trip.
    """
    if conn.closed or conn.broken:
        return True
    try:
        poller = select.poll()
        poller.register(conn.pgconn.socket, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (psycopg.Error, OSError, ValueError):
        return True


def _rows(cursor: Cursor[Any]) -> list[Row]:
    return cursor.fetchall() if cursor.description is not None else []


def _rowcount(cursor: Cursor[Any]) -> int:
    return cursor.rowcount


class _PgTransaction:
    """The ``tx`` of :meth:`PgDatabase.transaction`: statements on its connection."""

    def __init__(self, db: PgDatabase, conn: psycopg.Connection) -> None:
        self._db = db
        self._conn = conn
        #: The first error of a statement in this transaction (it aborted it).
        self.failure: StorageError | None = None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._run(convert_placeholders(sql), params, _rows)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._run(convert_placeholders(sql), params, _rowcount)

    def execute_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        rows = list(params)
        if not rows:
            return
        try:
            with self._conn.cursor() as cursor:
                cursor.executemany(convert_placeholders(sql), rows)
        except psycopg.Error as error:
            raise self._failed(error) from None

    def _run(self, sql: str, params: Sequence[Any], result: Callable[[Any], T]) -> T:
        try:
            with self._conn.cursor() as cursor:
                cursor.execute(sql, params)
                return result(cursor)
        except psycopg.Error as error:
            raise self._failed(error) from None

    def _failed(self, error: psycopg.Error) -> StorageError:
        failure = translate(error, self._db.address)
        if self.failure is None:
            self.failure = failure
        return failure


class PgDatabase:
    """:class:`mongoose.storage.Database` on PostgreSQL or CockroachDB (see the module doc).

    ``pool_size``: the most connections (``workers``). ``call_timeout``: seconds a
    request waits for a free connection. ``reconnect_timeout``: how long the pool keeps
    retrying one connection with backoff before giving up on it (a later request starts
    a new attempt). ``retry_delays`` and ``sleep``: the serialization-failure retry
    policy and clock, for tests.
    """

    def __init__(
        self,
        params: PgParams,
        *,
        pool_size: int = 10,
        call_timeout: float = 60.0,
        reconnect_timeout: float = 30.0,
        inject_serialization_failures: int | None = None,
        retry_delays: Callable[[], Iterator[float]] = backoff_delays,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.params = params
        self.driver = params.driver
        self.address = params.address
        self._call_timeout = call_timeout
        self._retry_delays = retry_delays
        self._sleep = sleep
        self._local = threading.local()
        self._inject_lock = threading.Lock()
        if inject_serialization_failures is None:
            inject_serialization_failures = int(os.environ.get(INJECT_ENV) or 0)
        self._inject = inject_serialization_failures
        #: libpq's reason of the last failed connection attempt; None once one succeeds.
        self.connect_error: str | None = None
        self._pool: ConnectionPool[psycopg.Connection] = ConnectionPool(
            kwargs={**params.connect_kwargs(), "autocommit": True},
            connection_class=self._connection_class(),
            configure=self._configure,
            min_size=1,
            max_size=max(1, pool_size),
            timeout=call_timeout,
            reconnect_timeout=max(1.0, reconnect_timeout),
            name=f"rdbms.{params.pool}",
            open=False,
        )
        self._pool.open(wait=False)

    def _connection_class(self) -> type[psycopg.Connection]:
        """psycopg's Connection, noting each connection attempt's outcome on ``self``."""
        db = self

        class Connection(psycopg.Connection):  # type: ignore[type-arg]
            @classmethod
            def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
                try:
                    conn = super().connect(conninfo, **kwargs)
                except psycopg.Error as error:
                    db._connect_failed(_first_line(error))
                    raise
                db._connected()
                return conn

        return Connection

    def _connect_failed(self, reason: str) -> None:
        if self.connect_error is None:  # logged once per outage, not per attempt
            log.warning("cannot connect to the database", extra={
                "what": "rdbms_connect_failed", "pool": self.params.pool,
                "address": self.address, "reason": reason})
        self.connect_error = reason

    def _connected(self) -> None:
        if self.connect_error is not None:
            log.warning("connected to the database again", extra={
                "what": "rdbms_reconnected", "pool": self.params.pool,
                "address": self.address})
        self.connect_error = None

    def _configure(self, conn: psycopg.Connection) -> None:
        if self.params.query_timeout:
            # An int from the config, not user input: a SET takes no parameters.
            conn.execute(f"SET statement_timeout = {int(self.params.query_timeout)}")

    # Connections

    def _getconn(self) -> psycopg.Connection:
        """A live connection from the pool, waiting up to ``call_timeout`` for one, or
        :data:`DOWN_WAIT` once connection attempts are failing."""
        deadline = time.monotonic() + self._call_timeout
        while True:
            left = deadline - time.monotonic()
            # In slices, so that a wait begun while the database seemed up ends soon
            # after connection attempts start failing (psycopg_pool cannot tell its
            # waiters). A waiter whose slice ends queues again, behind later ones: only
            # a pool saturated for over a second is less than first-come first-served.
            piece = DOWN_WAIT if self.connect_error is not None else _UP_SLICE
            try:
                conn = self._pool.getconn(timeout=max(min(left, piece), 0.001))
            except PoolTimeout:
                reason = self.connect_error
                if reason is not None:
                    raise StorageUnavailable(
                        f"{self.address}: cannot connect: {reason}") from None
                if time.monotonic() < deadline:
                    continue
                raise StorageUnavailable(
                    f"{self.address}: no free connection within "
                    f"{self._call_timeout:g} s") from None
            except PoolClosed:
                raise StorageUnavailable(f"{self.address}: the database is closed") from None
            if not _went_away(conn):
                return conn
            conn.close()
            self._pool.putconn(conn)  # discarded; the pool opens a new one

    # The contract

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._statement(convert_placeholders(sql), params, _rows)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._statement(convert_placeholders(sql), params, _rowcount)

    def execute_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        rows = list(params)  # a retried transaction must see the rows again
        if rows:
            self.transaction(lambda tx: tx.execute_many(sql, rows))

    def _statement(self, sql: str, params: Sequence[Any], result: Callable[[Any], T]) -> T:
        tx: _PgTransaction | None = getattr(self._local, "tx", None)
        if tx is not None:  # this thread is in a transaction: part of it
            return tx._run(sql, params, result)
        delays: Iterator[float] | None = None
        while True:
            conn = self._getconn()
            try:
                with conn.cursor() as cursor:
                    cursor.execute(sql, params)
                    return result(cursor)
            except psycopg.Error as error:
                failure = translate(error, self.address)
            finally:
                self._pool.putconn(conn)
            if failure.sqlstate not in RETRY_SQLSTATES:
                raise failure
            delays = delays or self._retry_delays()
            delay = next(delays, None)
            if delay is None:
                raise failure
            self._sleep(delay)

    def transaction(self, fn: Callable[[Any], T]) -> T:
        outer: _PgTransaction | None = getattr(self._local, "tx", None)
        if outer is not None:  # nested: part of the outer one
            return fn(outer)
        delays = self._retry_delays()
        attempts = 0
        while True:
            attempts += 1
            conn = self._getconn()
            tx = _PgTransaction(self, conn)
            self._local.tx = tx
            try:
                try:
                    with conn.transaction():
                        result = fn(tx)
                        if tx.failure is not None:  # fn caught it; the transaction is void
                            raise tx.failure
                        self._maybe_inject(conn)
                    return result
                except psycopg.Error as error:  # BEGIN, COMMIT, or the injected failure
                    raise translate(error, self.address) from None
            except BaseException as error:
                conflict = tx.failure if tx.failure is not None else error
                if not (isinstance(conflict, StorageError)
                        and conflict.sqlstate in RETRY_SQLSTATES):
                    raise
            finally:
                self._local.tx = None
                self._pool.putconn(conn)
            delay = next(delays, None)
            if delay is None:
                log.warning(
                    "transaction gave up after serialization failures",
                    extra={"what": "rdbms_transaction_conflict", "pool": self.params.pool,
                           "attempts": attempts, "reason": str(conflict)})
                failure = TransactionConflict(
                    f"{conflict} (gave up after {attempts} attempts)")
                failure.sqlstate = conflict.sqlstate
                raise failure from None
            log.debug("transaction retried", extra={
                "what": "rdbms_transaction_retry", "pool": self.params.pool,
                "attempt": attempts, "sqlstate": conflict.sqlstate, "delay": delay})
            self._sleep(delay)

    def close(self) -> None:
        self._pool.close()

    # Operations

    def inject_serialization_failures(self, count: int) -> None:
        """Make the next ``count`` transactions fail with SQLSTATE 40001 before COMMIT
        (PostgreSQL only; for tests of the retry path)."""
        with self._inject_lock:
            self._inject = count

    @property
    def injections_left(self) -> int:
        return self._inject

    def _maybe_inject(self, conn: psycopg.Connection) -> None:
        if not self._inject:
            return
        with self._inject_lock:
            if self._inject <= 0:
                return
            self._inject -= 1
        conn.execute(_INJECT_SQL)

    def statistics(self) -> dict[str, Any]:
        """The pool's counters (psycopg_pool's ``get_stats``) and the last connect error."""
        return {**self._pool.get_stats(), "connect_error": self.connect_error}
