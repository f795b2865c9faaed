"""The node's database, from its config: ``[outgoing_pools.rdbms.default]``, or SQLite.

:func:`open_database` is the one way the server, the CLI and the tests get a
:class:`~mongoose.storage.Database`:

- No ``[outgoing_pools.rdbms.default]``: the embedded store, ``mongoose.db`` under
  ``general.data_dir`` (the file the account store has always used, so existing
  accounts are kept).
- Otherwise the pool's ``driver`` (pgsql or cockroachdb) through
  :class:`~mongoose.storage.pg.PgDatabase`, with ``workers`` connections at most and
  ``call_timeout``. Other tags than ``default`` may be configured; the storage uses
  ``default``.

Start-up: before making the pool, one connection is tried. If the database cannot be
reached, the failure is logged (``what=rdbms_connect_failed``, with the pool, the
address, the reason and when the next attempt comes) and the connection tried again
after 1, 2, 4, ... seconds, at most ``max_start_interval`` apart: a node started
before its database waits for it instead of crashing and being restarted in a loop.
``wait`` bounds the whole wait (None: no bound, what a node does; the CLI gives
``--wait``, 0 by default: one attempt); past it, :class:`DatabaseUnreachable` says
which pool could not reach what, and why::

    outgoing_pools.rdbms.default: cannot connect to pgsql at 127.0.0.1:5432/mongooseim
    as mongoose: connection failed: ... Connection refused (1 attempt)

Time is injected (``sleep``, ``clock``), so tests of the retry schedule do not wait.

In a worker: :func:`open_process_database`
    Each process of a node opens the database once, and every backend of the process
    (accounts first) shares it; it is closed when the worker's ``xmpp_services`` stops.
    A worker must not wait for its database before it is up: its root kills a worker
    that is not ready within 30 s, so a worker blocked on an unreachable database would
    be restarted in a loop, and a blocked event loop serves nothing. So a pool's
    database is a :class:`BackgroundDatabase`: a handle made at once, whose opening
    (:func:`open_database` with no bound, then :func:`mongoose.storage.migrate.ensure`)
    runs on a thread of its own, retrying with the backoff above and logging each
    failed attempt (``rdbms_connect_failed``, naming the pool and the address). Until
    it is open, every call raises :class:`StorageUnavailable` saying so: a login gets
    SASL ``temporary-auth-failure``. The worker's start waits a few seconds
    (:data:`FIRST_WAIT`) for the first attempt, so that a reachable database is open
    before the listener accepts clients, then goes on either way. A database without
    the current schema is logged (``rdbms_schema_error``: run ``mongoose db init``) and
    checked again at the same intervals, so the node serves once the schema is there.
    The thread is its own rather than one of the blocking pool's: it may wait for
    hours, and it must not hold the process's exit (it is a daemon; ``close`` ends it
    at its next pause). The embedded SQLite file is opened at once (a local file).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from mongoose.storage.database import Database, Row, StorageUnavailable, Transaction

if TYPE_CHECKING:
    from mongoose.config import Config, RdbmsPool

__all__ = ["DEFAULT_POOL", "FIRST_WAIT", "SQLITE_FILE", "BackgroundDatabase",
           "DatabaseUnreachable", "describe", "open_database", "open_process_database",
           "pool_config", "start_delays"]

log = logging.getLogger(__name__)
T = TypeVar("T")

SQLITE_FILE = "mongoose.db"
DEFAULT_POOL = "default"
#: Seconds a worker's start waits for the first attempt to open its database.
FIRST_WAIT = 5.0


class DatabaseUnreachable(StorageUnavailable):
    """The configured database could not be reached within the time allowed at start."""


def pool_config(config: Config) -> RdbmsPool | None:
    """``[outgoing_pools.rdbms.default]``, or None: the embedded SQLite store."""
    return config.outgoing_pools.rdbms.get(DEFAULT_POOL)


def describe(config: Config) -> str:
    """Where the node's data is: ``sqlite at data/mongoose.db``, ``pgsql at host:port/db
    as user``."""
    pool = pool_config(config)
    if pool is None:
        return f"sqlite at {config.data_path(SQLITE_FILE)}"
    c = pool.connection
    return f"{c.driver} at {c.host}:{c.port_number}/{c.database} as {c.username}"


def start_delays(cap: float, first: float = 1.0) -> Iterator[float]:
    """Seconds between connection attempts at start: doubling from ``first``, at most
    ``cap`` (``max_start_interval``), forever."""
    delay = min(first, cap)
    while True:
        yield delay
        delay = min(delay * 2, cap)


def open_database(
    config: Config,
    *,
    wait: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    **driver_options: Any,
) -> Database:
    """The node's :class:`~mongoose.storage.Database` (see the module doc).

    ``wait``: seconds to keep retrying an unreachable database (None: until it answers;
    0: one attempt). ``driver_options`` go to :class:`~mongoose.storage.pg.PgDatabase`
    (tests: ``inject_serialization_failures``, ``retry_delays``).
    """
    pool = pool_config(config)
    if pool is None:
        from mongoose.storage.sqlite import SqliteDatabase

        return SqliteDatabase(config.data_path(SQLITE_FILE))
    from mongoose.storage import pg

    params = pg.PgParams.from_config(DEFAULT_POOL, pool)
    where = f"outgoing_pools.rdbms.{DEFAULT_POOL}"
    deadline = None if wait is None else clock() + wait
    delays = start_delays(pool.connection.max_start_interval)
    attempt = 0
    while True:
        attempt += 1
        try:
            server = pg.probe(params)
            break
        except StorageUnavailable as error:
            reason = str(error)
        message = f"{where}: cannot connect to {params.address}: {reason}"
        delay = next(delays)
        if deadline is not None and clock() + delay > deadline:
            attempts = f"{attempt} attempt" + ("s" if attempt > 1 else "")
            raise DatabaseUnreachable(f"{message} ({attempts})")
        log.warning(
            f"{message}; retrying in {delay:g} s", extra={
                "what": "rdbms_connect_failed", "pool": DEFAULT_POOL,
                "address": params.address, "reason": reason, "attempt": attempt,
                "retry_in": delay})
        sleep(delay)
    log.info("database reachable", extra={
        "what": "rdbms_connected", "pool": DEFAULT_POOL, "address": params.address,
        "server": server})
    return pg.PgDatabase(
        params,
        pool_size=pool.workers,
        call_timeout=pool.call_timeout / 1000,
        reconnect_timeout=pool.connection.max_start_interval,
        **driver_options,
    )


class _Closed(Exception):
    """The :class:`BackgroundDatabase` was closed while it was opening."""


class BackgroundDatabase:
    """A pool's :class:`~mongoose.storage.Database` opened on a thread of its own (see
    "In a worker" in the module doc): made at once, :meth:`start` begins the opening,
    and until it is done every call raises :class:`StorageUnavailable`. ``opener``
    (``open_database``'s signature) and ``ensure`` (the schema check) are for tests."""

    def __init__(
        self,
        config: Config,
        *,
        opener: Callable[..., Database] = open_database,
        ensure: Callable[[Database], Any] | None = None,
    ) -> None:
        from mongoose.storage import migrate, pg

        pool = pool_config(config)
        if pool is None:
            raise ValueError("no [outgoing_pools.rdbms.default] is configured")
        params = pg.PgParams.from_config(DEFAULT_POOL, pool)
        self.config = config
        self.driver = pool.connection.driver
        self.address = params.address
        self.where = f"outgoing_pools.rdbms.{DEFAULT_POOL}"
        self._interval = pool.connection.max_start_interval
        self._opener = opener
        self._ensure = ensure or migrate.ensure
        self._db: Database | None = None
        #: Why the database is not open yet (for the errors of calls made meanwhile).
        self.problem = "not connected yet"
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._settled = threading.Event()  # the first attempt is over, whatever its outcome
        self._opened = threading.Event()
        self._thread = threading.Thread(target=self._open, name="rdbms-open", daemon=True)

    def start(self) -> BackgroundDatabase:
        self._thread.start()
        return self

    @property
    def ready(self) -> bool:
        """True once the database is open with the current schema."""
        return self._db is not None

    def wait_settled(self, timeout: float | None = None) -> bool:
        """Block until the first attempt is over (or ``timeout``); True if it is."""
        return self._settled.wait(timeout)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the database is open (or ``timeout``); True if it is."""
        return self._opened.wait(timeout)

    def _pause(self, delay: float) -> None:
        """``sleep`` of the opening: a failed attempt is over; wait unless closed."""
        self._settled.set()
        if self._closed.wait(delay):
            raise _Closed

    def _open(self) -> None:
        from mongoose.storage.migrate import SchemaError

        db: Database | None = None
        try:
            db = self._opener(self.config, wait=None, sleep=self._pause)
            delays = start_delays(self._interval)
            while True:
                try:
                    self._ensure(db)
                    break
                except SchemaError as error:
                    self.problem = str(error)
                    delay = next(delays)
                    log.error(f"{self.where}: {error}; checking again in {delay:g} s", extra={
                        "what": "rdbms_schema_error", "pool": DEFAULT_POOL,
                        "address": self.address, "reason": str(error), "retry_in": delay})
                except StorageUnavailable as error:  # lost again (PgDatabase logs it)
                    self.problem = str(error)
                    delay = next(delays)
                self._pause(delay)
        except _Closed:
            if db is not None:
                db.close()
            return
        except Exception as error:  # a bug or a bad config: logged, never silent
            self.problem = f"cannot open: {error}"
            log.error(f"{self.where}: cannot open {self.address}: {error}", exc_info=True,
                      extra={"what": "rdbms_open_failed", "pool": DEFAULT_POOL,
                             "address": self.address})
            if db is not None:
                db.close()
            self._settled.set()
            return
        with self._lock:
            if self._closed.is_set():
                db.close()
                return
            self._db = db
        self._settled.set()
        self._opened.set()
        log.info("database ready", extra={"what": "rdbms_ready", "pool": DEFAULT_POOL,
                                          "address": self.address})

    def _get(self) -> Database:
        db = self._db
        if db is not None:
            return db
        if self._closed.is_set():
            raise StorageUnavailable(f"{self.where}: the database is closed")
        raise StorageUnavailable(f"{self.where}: {self.address}: {self.problem}")

    # The contract: delegated once open.

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._get().query(sql, params)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._get().execute(sql, params)

    def execute_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        self._get().execute_many(sql, params)

    def transaction(self, fn: Callable[[Transaction], T]) -> T:
        return self._get().transaction(fn)

    def close(self) -> None:
        """Close the database, or end the opening at its next pause."""
        with self._lock:
            self._closed.set()
            db, self._db = self._db, None
        if db is not None:
            db.close()


def open_process_database(config: Config) -> Database:
    """This process's database (see "In a worker" in the module doc): the SQLite file,
    open with its schema brought up to date, or a started :class:`BackgroundDatabase`
    for the configured pool."""
    if pool_config(config) is None:
        from mongoose.storage import migrate

        db = open_database(config)
        try:
            migrate.ensure(db)
        except BaseException:
            db.close()
            raise
        return db
    return BackgroundDatabase(config).start()
