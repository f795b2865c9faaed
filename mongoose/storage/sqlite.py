"""The embedded driver: one SQLite file, for a node with no database server to set up.

One connection per process, guarded by a lock (SQLite serialises writers anyway, and the
queries of one node are short). WAL mode with a busy timeout lets the node's worker
processes and the ``mongoose`` CLI share the file: readers never wait, a writer waits up
to :data:`BUSY_TIMEOUT_MS` for another. Transactions start with ``BEGIN IMMEDIATE``, so a
writer takes the lock before reading and cannot fail halfway on it; "database is locked"
past the timeout counts as a serialization failure and the transaction is retried.
``execute_many`` outside a transaction is one transaction (one commit for the batch).

The directory is created mode 0700 and the file 0600: it holds SCRAM secrets and users'
messages.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mongoose.storage.database import (
    ConstraintViolation,
    Row,
    StorageError,
    StorageUnavailable,
    TransactionConflict,
    backoff_delays,
)

__all__ = ["BUSY_TIMEOUT_MS", "SqliteDatabase"]

T = TypeVar("T")
BUSY_TIMEOUT_MS = 10_000


# OperationalErrors that say the file cannot be used now, rather than that the SQL is wrong.
_UNAVAILABLE = ("unable to open", "disk i/o error", "database or disk is full",
                "readonly database")


def _translate(error: sqlite3.Error) -> StorageError:
    text = str(error)
    if isinstance(error, sqlite3.IntegrityError):
        return ConstraintViolation(f"IntegrityError: {text}")
    if isinstance(error, sqlite3.OperationalError):
        if "locked" in text:
            return TransactionConflict(text)
        if any(part in text.lower() for part in _UNAVAILABLE):
            return StorageUnavailable(text)
    return StorageError(f"{type(error).__name__}: {text}")


class SqliteDatabase:
    """:class:`mongoose.storage.Database` over one SQLite file (``":memory:"`` for tests)."""

    driver = "sqlite"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        #: Where the data is, for messages.
        self.address = f"sqlite at {self.path}"
        if self.path != ":memory:":
            p = Path(self.path)
            try:
                p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                # Created here for its mode; SQLite gives its -wal and -shm files the same.
                os.close(os.open(p, os.O_CREAT | os.O_RDWR, 0o600))
            except OSError as error:
                raise StorageUnavailable(
                    f"cannot open {self.path}: {error.strerror or error}") from None
        db = None
        try:
            # isolation_level=None: autocommit; transactions are ours (BEGIN IMMEDIATE).
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable against a crash of the process; under WAL only a power
            # loss can lose the last commits.
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as error:
            if db is not None:
                db.close()
            raise StorageUnavailable(f"cannot open {self.path}: {error}") from None
        self._db: sqlite3.Connection | None = db
        self._lock = threading.RLock()
        self._in_transaction = False

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageUnavailable(f"{self.path}: the database is closed")
        return self._db

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            try:
                return self._conn().execute(sql, params).fetchall()
            except sqlite3.Error as error:
                raise _translate(error) from None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._lock:
            try:
                return self._conn().execute(sql, params).rowcount
            except sqlite3.Error as error:
                raise _translate(error) from None

    def execute_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        rows = list(params)  # a retried transaction must see the rows again

        def run(_tx: Any) -> None:
            try:
                self._conn().executemany(sql, rows)
            except sqlite3.Error as error:
                raise _translate(error) from None

        # One transaction (or part of the caller's): all rows or none, and one commit.
        self.transaction(run)

    def executescript(self, script: str) -> None:
        """Run several statements (schema files); SQLite only."""
        with self._lock:
            try:
                self._conn().executescript(script)
            except sqlite3.Error as error:
                raise _translate(error) from None

    def transaction(self, fn: Callable[[Any], T]) -> T:
        delays = backoff_delays()
        while True:
            with self._lock:
                if self._in_transaction:  # nested: part of the outer one
                    return fn(self)
                db = self._conn()
                try:
                    db.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as error:
                    if "locked" not in str(error):
                        raise _translate(error) from None
                    retry = next(delays, None)
                    if retry is None:
                        raise TransactionConflict(f"{self.path}: database is locked") from None
                else:
                    self._in_transaction = True
                    try:
                        result = fn(self)
                    except BaseException:
                        # SQLite may have rolled back already (a full disk, an
                        # interrupted statement): a second ROLLBACK would hide the error.
                        if db.in_transaction:
                            db.execute("ROLLBACK")
                        raise
                    finally:
                        self._in_transaction = False
                    try:
                        db.execute("COMMIT")
                    except sqlite3.Error as error:
                        if db.in_transaction:
                            db.execute("ROLLBACK")
                        raise _translate(error) from None
                    return result
            time.sleep(retry)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
