"""The contract of a database driver, its errors, and the retry policy of transactions.

SQL text
    Written once for every driver, with ``?`` placeholders and SQL that SQLite,
    PostgreSQL and CockroachDB all accept (no ``RETURNING`` on SQLite older than 3.35,
    no ``SERIAL`` in CockroachDB schemas; the schema files differ, the queries do not).
    A driver converts the placeholders to its own style. **Values are always
    parameters**: nothing a user or a client sends is ever formatted into SQL text.

Calls
    Every method blocks and is safe from several threads at once (each driver keeps a
    pool of connections, or a lock around one). Call them from the blocking pool, never
    on an event loop (see :mod:`mongoose.storage`).

Errors
    :class:`StorageUnavailable`: the database cannot serve the request now: it cannot be
    reached, went away, timed out (``query_timeout``), or a transaction kept conflicting
    (:class:`TransactionConflict`). The same request may work later; callers answer XMPP
    clients with ``wait``/``internal-server-error`` and keep their sessions.
    :class:`StorageError`: anything else, a bug or a conflict the caller must handle:
    bad SQL, or a constraint violated (:class:`ConstraintViolation`: a duplicate key, a
    missing foreign key). Driver exceptions never escape untranslated. A translated
    error carries the SQLSTATE in ``sqlstate`` when the server gave one (PostgreSQL
    and CockroachDB; None on SQLite).

Transactions
    :meth:`Database.transaction` runs ``fn(tx)`` in one transaction and commits it, or
    rolls back when ``fn`` raises. When the database reports a serialization failure
    (CockroachDB's SQLSTATE 40001, SQLite's "database is locked" past its busy timeout),
    the whole ``fn`` runs again after a backoff (:func:`backoff_delays`), so ``fn`` must
    not have effects outside the transaction. After the last retry the failure is
    raised as :class:`TransactionConflict`. On PostgreSQL and CockroachDB a statement
    run outside ``transaction`` is one implicit transaction and is retried the same way.
    Inside ``fn``, the calls of the same thread on the database itself (not only on
    ``tx``) belong to the transaction too, and a nested ``transaction`` is part of the
    outer one. A statement that fails inside ``fn`` fails the transaction: let its error
    propagate. (Catching it and going on works on SQLite, but PostgreSQL and CockroachDB
    abort the transaction, and their driver then raises the error at the end of ``fn``
    anyway; write upserts with ``ON CONFLICT``.)

Batches
    :meth:`Database.execute_many` outside a transaction runs as one transaction: all
    rows or none (and one commit, not one per row).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

__all__ = ["ConstraintViolation", "Database", "Row", "StorageError", "StorageUnavailable",
           "Transaction", "TransactionConflict", "backoff_delays"]

T = TypeVar("T")
Row = tuple[Any, ...]


class StorageError(Exception):
    """A query failed for a reason other than reaching the database."""

    #: The SQLSTATE the server reported (PostgreSQL, CockroachDB), else None.
    sqlstate: str | None = None


class StorageUnavailable(StorageError):
    """The database cannot serve the request now; the same request may work later."""


class TransactionConflict(StorageUnavailable):
    """A transaction still failed with a serialization failure (SQLSTATE 40001, a
    deadlock 40P01, SQLite's "database is locked") after every retry."""


class ConstraintViolation(StorageError):
    """A statement broke a constraint: a duplicate key, a missing referenced row, a NULL
    where none is allowed, a failed CHECK."""


class Transaction(Protocol):
    """What ``fn`` gets inside :meth:`Database.transaction`."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """The rows of a SELECT."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it changed."""

    def execute_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per parameter tuple (one round trip where the driver can)."""


class Database(Transaction, Protocol):
    """A database: queries outside a transaction autocommit."""

    driver: str  # "sqlite", "pgsql" or "cockroachdb"

    def transaction(self, fn: Callable[[Transaction], T]) -> T:
        """``fn(tx)`` in one transaction, retried on serialization failures."""

    def close(self) -> None:
        """Close every connection; later calls raise :class:`StorageUnavailable`."""


def backoff_delays(first: float = 0.01, factor: float = 2.0, cap: float = 1.0,
                   attempts: int = 8) -> Iterator[float]:
    """Seconds to sleep before each retry: exponential from ``first`` up to ``cap``, with
    full jitter (a random part of each step), so that clients that collided do not
    collide again in step; ``attempts`` retries in all."""
    delay = first
    for _ in range(attempts):
        yield random.uniform(delay / 2, delay)
        delay = min(cap, delay * factor)
