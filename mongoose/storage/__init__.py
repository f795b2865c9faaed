"""Persistent storage: one SQL interface over SQLite, PostgreSQL and CockroachDB.

Layers
    :mod:`mongoose.storage.database`  the :class:`Database` contract every driver keeps,
                                      its errors, and the transaction retry policy
    :mod:`mongoose.storage.sqlite`    the embedded default: a file under data_dir
    :mod:`mongoose.storage.pg`        pgsql and cockroachdb: psycopg 3 and a pool
    :mod:`mongoose.storage.pools`     ``[outgoing_pools.rdbms.default]`` -> a Database
                                      (``open_database``), retrying at start
    :mod:`mongoose.storage.migrate`   the schema (``schema/*.sql``), its version and
                                      migrations (``mongoose db init|status``)
    (the backends of accounts, roster, offline, archive, private, vcard, last and
    privacy build on the contract; see their modules)

Threads, not the loop
    Databases are called on the process's blocking pool (:mod:`otp.blocking`), never on
    the event loop: a session awaits ``blocking.run(backend.method, ...)`` or asks for
    the answer as a message. One calling convention for every driver (sqlite3 has no
    asyncio API), and the pool's threads overlap the waits. psycopg's asyncio API would
    save the thread hop (tens of µs) per query; a query costs more than that already,
    and the archive writes, the one hot path, are batched (many rows per statement).
"""

from mongoose.storage.database import (
    ConstraintViolation,
    Database,
    StorageError,
    StorageUnavailable,
    Transaction,
    TransactionConflict,
)

__all__ = ["ConstraintViolation", "Database", "StorageError", "StorageUnavailable",
           "Transaction", "TransactionConflict"]
