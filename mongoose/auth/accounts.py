"""Account storage for authentication: the node's store, and the form of a user name.

The store is :class:`mongoose.storage.backends.accounts.SqlAccountStore` (its interface,
:class:`AccountStore`, and its errors are defined there and re-exported here) over the
database ``[auth] methods`` names:

- ``"internal"`` (the default): the embedded SQLite file ``mongoose.db`` under
  ``general.data_dir``, table ``users`` (the file and columns of earlier versions, so
  existing accounts keep working). :class:`SqliteAccountStore` opens it.
- ``"rdbms"``: the ``users`` table of the configured ``[outgoing_pools.rdbms]`` database
  (PostgreSQL or CockroachDB), created by ``mongoose db init``.

Sharing the SQLite file: the database runs in WAL mode with a busy timeout
(:mod:`mongoose.storage.sqlite`), so several worker processes of a node and the
``mongoose account`` CLI can use it at once. Each process must open its own store (a
SQLite connection must not cross a fork). The directory is created mode 0700 and the
file 0600: the secrets are not passwords, but they allow offline guessing.

A worker does not open its store with :func:`open_store`: it opens its database once
(:func:`mongoose.storage.pools.open_process_database`) and :func:`store_on` puts the
store on it, shared with the process's other backends.

Instrumentation: ``storage_query`` {backend="accounts", function=<method>}, emitted
through the store's ``emit_via`` (see :mod:`mongoose.storage.backends`).
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from mongoose.auth import scram
from mongoose.storage import migrate
from mongoose.storage.backends.accounts import (
    AccountError,
    AccountExists,
    AccountStore,
    InvalidUser,
    NoSuchAccount,
    SqlAccountStore,
)
from mongoose.storage.sqlite import BUSY_TIMEOUT_MS, SqliteDatabase

if TYPE_CHECKING:
    from mongoose.config import Config
    from mongoose.storage.database import Database

__all__ = ["BUSY_TIMEOUT_MS", "STORE_FILE", "AccountError", "AccountExists", "AccountStore",
           "InvalidUser", "NoSuchAccount", "SqlAccountStore", "SqliteAccountStore",
           "normalize_user", "open_store", "store_on"]

STORE_FILE = "mongoose.db"
# RFC 7622 §3.3: a localpart is at most 1023 octets.
MAX_LOCALPART_BYTES = 1023
# RFC 7622 §3.3.1 forbids these in a localpart; whitespace is refused separately.
_FORBIDDEN = frozenset("\"&'/:<>@")


def normalize_user(text: str) -> str:
    """The canonical form of the localpart `text`: case-folded, then NFC.

    This approximates PRECIS UsernameCaseMapped (RFC 8265) closely enough for
    comparison: "Juliet" and "juliet" are one account. Raises `InvalidUser` for an empty
    localpart, one too long, or one with characters RFC 7622 forbids (`"&'/:<>@`),
    whitespace or control characters.
    """
    user = unicodedata.normalize("NFC", text.casefold())
    if not user:
        raise InvalidUser("the user name is empty")
    if len(user.encode("utf-8")) > MAX_LOCALPART_BYTES:
        raise InvalidUser(f"the user name is longer than {MAX_LOCALPART_BYTES} bytes")
    for char in user:
        if char in _FORBIDDEN or char.isspace() or unicodedata.category(char)[0] == "C":
            raise InvalidUser(f"the user name may not contain {char!r}")
    return user


class SqliteAccountStore(SqlAccountStore):
    """:class:`SqlAccountStore` over its own SQLite file at ``path``, created or brought
    up to the current schema if need be (:func:`mongoose.storage.migrate.ensure`: a file
    of an earlier version, with only ``users``, keeps its accounts), closed with the
    store."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        hashes: Iterable[str] = tuple(scram.HASHES),
        iterations: int = 10_000,
    ) -> None:
        self.path = Path(path)
        db = SqliteDatabase(self.path)
        try:
            migrate.ensure(db)
        except BaseException:
            db.close()
            raise
        super().__init__(db, hashes=hashes, iterations=iterations, owns_db=True)

    def __enter__(self) -> SqliteAccountStore:
        return self


def open_store(config: Config, *, wait: float | None = None) -> SqlAccountStore:
    """The node's account store, as ``[auth] methods`` says (see the module docstring).

    ``wait``: with "rdbms", seconds to keep trying an unreachable database (None: until
    it answers, what a node does; 0: one attempt, what the CLI does), then
    :class:`mongoose.storage.pools.DatabaseUnreachable`; a database without the current
    schema raises :class:`mongoose.storage.migrate.SchemaError` (run ``mongoose db
    init``)."""
    password = config.auth.password
    if "rdbms" in config.auth.methods:
        from mongoose.storage.pools import open_database

        db = open_database(config, wait=wait)
        try:
            migrate.ensure(db)
        except BaseException:
            db.close()
            raise
        return SqlAccountStore(db, hashes=password.hash,
                               iterations=password.scram_iterations, owns_db=True)
    return SqliteAccountStore(
        config.data_path(STORE_FILE),
        hashes=password.hash,
        iterations=password.scram_iterations,
    )


def store_on(config: Config, db: Database) -> SqlAccountStore:
    """The account store of a worker whose database is ``db`` (the process's one,
    which the store does not own): on ``db`` with ``[auth] methods = ["rdbms"]``, or
    with "internal" when ``db`` is the embedded SQLite file (the same file); "internal"
    beside a configured pool keeps its own SQLite file, as :func:`open_store` does."""
    password = config.auth.password
    if "rdbms" in config.auth.methods or db.driver == "sqlite":
        return SqlAccountStore(db, hashes=password.hash,
                               iterations=password.scram_iterations)
    return SqliteAccountStore(
        config.data_path(STORE_FILE),
        hashes=password.hash,
        iterations=password.scram_iterations,
    )
