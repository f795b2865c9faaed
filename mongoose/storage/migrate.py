"""The database schema: its versions, and bringing a database up to the latest.

Versions
    :data:`MIGRATIONS` is the ordered list of schema changes; version 1 is the initial
    schema, the files ``schema/pg.sql`` (driver pgsql), ``schema/cockroachdb.sql`` and
    ``schema/sqlite.sql``. A later change adds a :class:`Migration` with the next
    version and its files ``schema/migrations/<version>_<name>.<driver>.sql`` (one per
    driver); files are never edited once released. The table ``schema_version`` holds a
    row per applied version (version, name, applied_at in µs).

Applying (:func:`init`, ``mongoose db init``)
    Applies, in order, every migration whose version has no row yet, and records it.
    Idempotent: a current database is left alone, and every statement of the files is
    written to be applied twice (``IF NOT EXISTS``). On PostgreSQL and SQLite a
    migration is one transaction, file and record together (their DDL is
    transactional); PostgreSQL first locks ``schema_version`` so that two ``init`` at
    once take turns. On CockroachDB each statement runs on its own (schema changes
    inside explicit transactions have limits there, and no LOCK TABLE exists) and the
    record comes last: an interrupted ``init`` leaves the migration unrecorded, and the
    next one applies it again harmlessly.

Status (:func:`status`, ``mongoose db status``)
    The current version (0: no schema yet) against :data:`LATEST`, read without
    changing anything. :func:`ensure` is what a node runs at start: the embedded SQLite
    store initialises itself (no setup); on PostgreSQL and CockroachDB the operator runs
    ``mongoose db init`` (the node's database role need not be allowed DDL); a database
    that is behind raises :class:`SchemaError` saying so, which a node's worker logs
    (``rdbms_schema_error``) and checks again until the schema is there, its storage
    unavailable meanwhile (:mod:`mongoose.storage.pools`).
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

from mongoose.storage.database import ConstraintViolation, Database, StorageError

__all__ = ["LATEST", "MIGRATIONS", "Migration", "SchemaError", "SchemaStatus", "ensure",
           "init", "schema_file", "split_statements", "status"]

_SCHEMA_PACKAGE = "mongoose.storage.schema"
_FILE_OF_DRIVER = {"pgsql": "pg.sql", "cockroachdb": "cockroachdb.sql", "sqlite": "sqlite.sql"}
# As in schema/pg.sql.
_PG_VERSION_TABLE = ("CREATE TABLE IF NOT EXISTS schema_version (version INT NOT NULL "
                     "PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)")


class SchemaError(StorageError):
    """The database's schema is not what this version of the server needs."""


@dataclass(frozen=True)
class Migration:
    """One schema version: its number, a short name, and its SQL for each driver."""

    version: int
    name: str

    def resource(self, driver: str) -> str:
        """The file of this migration for ``driver``, relative to the schema package."""
        if driver not in _FILE_OF_DRIVER:
            raise ValueError(f"unknown driver {driver!r}")
        if self.version == 1:
            return _FILE_OF_DRIVER[driver]
        suffix = "pg" if driver == "pgsql" else driver
        return f"migrations/{self.version}_{self.name}.{suffix}.sql"

    def sql(self, driver: str) -> str:
        return schema_file(self.resource(driver))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial"),
    Migration(2, "roster_versions"),  # per-contact versions, pre-approval (mod_roster)
)
LATEST = MIGRATIONS[-1].version


def schema_file(name: str) -> str:
    """The text of a file of the schema package (``pg.sql``, ``migrations/...``)."""
    return resources.files(_SCHEMA_PACKAGE).joinpath(name).read_text("utf-8")


@dataclass(frozen=True)
class SchemaStatus:
    current: int
    latest: int
    pending: tuple[Migration, ...]

    @property
    def up_to_date(self) -> bool:
        return not self.pending and self.current <= self.latest

    def describe(self) -> str:
        if self.current > self.latest:
            return (f"schema version {self.current}, newer than this server knows "
                    f"({self.latest}): upgrade the server")
        if not self.pending:
            return f"schema version {self.current} (latest {self.latest}): up to date"
        return (f"schema version {self.current} (latest {self.latest}): "
                f"{len(self.pending)} migration(s) pending; run `mongoose db init`")


# Statements


_STATEMENT_PARTS = re.compile(
    r"""
      '(?:[^']|'')*'                                    # '...'
    | "(?:[^"]|"")*"                                    # "identifier"
    | --[^\n]*                                          # -- comment
    | /\*.*?\*/                                         # /* comment */
    | \$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?\$(?P=tag)\$      # $tag$...$tag$
    | (?P<end>;)
    """,
    re.VERBOSE | re.DOTALL,
)


def split_statements(script: str) -> list[str]:
    """The statements of an SQL script: split at semicolons outside literals, quoted
    names, comments and dollar-quoted bodies; comments and blanks dropped."""
    statements = []
    start = 0
    for match in _STATEMENT_PARTS.finditer(script):
        if match.group("end"):
            statements.append(script[start:match.start()])
            start = match.end()
    statements.append(script[start:])
    return [s for s in (_strip_comments(s) for s in statements) if s]


def _strip_comments(statement: str) -> str:
    def keep(match: re.Match[str]) -> str:
        text = match.group(0)
        return " " if text.startswith(("--", "/*")) else text

    return _STATEMENT_PARTS.sub(keep, statement).strip()


# Reading the version


def _has_version_table(db: Any, driver: str) -> bool:
    if driver == "sqlite":
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    else:
        sql = ("SELECT 1 FROM information_schema.tables "
               "WHERE table_schema = current_schema() AND table_name = 'schema_version'")
    return bool(db.query(sql))


def _applied(db: Any) -> set[int]:
    return {row[0] for row in db.query("SELECT version FROM schema_version")}


def status(db: Database) -> SchemaStatus:
    """Where the database's schema is; changes nothing."""
    applied = _applied(db) if _has_version_table(db, db.driver) else set()
    current = max(applied, default=0)
    pending = tuple(m for m in MIGRATIONS if m.version not in applied)
    return SchemaStatus(current, LATEST, pending)


# Applying


def init(db: Database) -> list[int]:
    """Apply every pending migration in order; the versions applied (``[]``: none)."""
    if db.driver not in _FILE_OF_DRIVER:
        raise ValueError(f"unknown driver {db.driver!r}")
    done: list[int] = []
    for migration in status(db).pending:
        if _apply(db, migration):
            done.append(migration.version)
    return done


def _record(tx: Any, migration: Migration) -> None:
    tx.execute(
        "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?) "
        "ON CONFLICT (version) DO NOTHING",
        (migration.version, migration.name, time.time_ns() // 1000))


def _apply(db: Database, migration: Migration) -> bool:
    """Apply one migration unless it is (or meanwhile was) applied; True if we did."""
    statements = split_statements(migration.sql(db.driver))
    if db.driver == "cockroachdb":
        for statement in statements:
            db.execute(statement)
        db.transaction(lambda tx: _record(tx, migration))
        return True
    if db.driver == "pgsql":
        # Made first, on its own, so that the transaction below can lock it; two
        # `init`s creating it at once may collide, and then it exists.
        with contextlib.suppress(ConstraintViolation):
            db.execute(_PG_VERSION_TABLE)

    def apply(tx: Any) -> bool:
        if db.driver == "pgsql":
            # Serialises concurrent `init`s: the second waits, then sees the row.
            tx.execute("LOCK TABLE schema_version IN SHARE ROW EXCLUSIVE MODE")
        if _has_version_table(tx, db.driver) and migration.version in _applied(tx):
            return False
        for statement in statements:
            tx.execute(statement)
        _record(tx, migration)
        return True

    return db.transaction(apply)


def ensure(db: Database) -> SchemaStatus:
    """At a node's start: SQLite brings itself up to date; another database must be
    current already (:class:`SchemaError` tells the operator to run ``mongoose db
    init``). The status after that."""
    if db.driver == "sqlite":
        init(db)
    state = status(db)
    if not state.up_to_date:
        where = getattr(db, "address", db.driver)
        raise SchemaError(f"{where}: {state.describe()}")
    return state
