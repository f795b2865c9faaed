"""CETS discovery through the database: MongooseIM's ``discovery_nodes`` table.

After MongooseIM's ``mongoose_cets_discovery_rdbms``: every node of a cluster keeps one row
in the node's database (PostgreSQL, CockroachDB, or the embedded SQLite file)::

    discovery_nodes(cluster_name, node_name, node_num, address, updated_timestamp)
        PRIMARY KEY (node_name), UNIQUE (cluster_name, node_num)

and finds the other nodes by reading the rows of its cluster. :class:`RdbmsBackend` is an
:class:`otp.discovery.Backend` with ``blocking = True``: the Discovery actor calls it on the
blocking pool, never on the loop.

One round (:func:`register_node`), in one transaction
    1. ``now``: the database server's clock in seconds (as MongooseIM's
       ``mongoose_rdbms_timestamp``), so nodes with skewed clocks agree on ages.
    2. Delete the cluster's rows not updated for more than ``expiry`` seconds (this
       node's own row excepted), logged as ``cets_expired_nodes``. A node that stopped
       keeps its row until then: the others list it and see it unavailable.
    3. Read the cluster's rows.
    4. This node's row exists: update its ``address`` and ``updated_timestamp``; its
       ``node_num`` stays. Otherwise delete its row in another cluster if any (a node is
       in one cluster), and insert it with a ``node_num``: the number it had
       before if that is still free (its row had expired, say after a long pause), else
       the smallest free number from 1. The insert is ``ON CONFLICT DO NOTHING``: when it
       inserts nothing, another node took that number between our read and our insert
       (PostgreSQL's READ COMMITTED allows it; SQLite's ``BEGIN IMMEDIATE`` does not),
       and we pick the next free number in the same transaction (the conflict does not
       abort it), up to :data:`PICKS_PER_TRANSACTION` times; past that (a node inserting
       its own row twice at once: two nodes configured with one name), the whole
       transaction runs again after a backoff, up to :data:`TRANSACTION_ATTEMPTS` times.
       MongooseIM instead writes 0 and tries again at the next round; we pick again at
       once, so that a registered node always has a number of its own.
    5. Return every row's address: the Discovery actor skips its own.

The ``node_num``
    Unique within the cluster while the node's row lives, and kept across rounds and
    restarts of the node (the row survives a restart). :attr:`RdbmsBackend.node_num`
    holds it (None before the first successful round); the Discovery actor's ``status``
    shows it; :func:`read_node_num` reads it from the table in any process of the node.
    It goes into archive message ids, as MongooseIM's ``mongoose_node_num`` (which keeps
    8 bits of it: a cluster of more than 255 nodes would need more).

SQL
    ``?`` placeholders and statements that SQLite (3.24+: ``ON CONFLICT``), PostgreSQL and
    CockroachDB all accept; only the clock query differs per driver. The table is in the
    schema files (:mod:`mongoose.storage.migrate`): when the backend opens the database
    it runs :func:`~mongoose.storage.migrate.ensure`, as every user of the node's
    database does at start, so the embedded SQLite file gets its schema and a
    PostgreSQL or CockroachDB database without it fails the round with a
    :class:`~mongoose.storage.migrate.SchemaError` that says to run ``mongoose db
    init`` (logged as ``discovery_failed``; tried again each round).

Differences from MongooseIM
    ``cluster_name`` is used as configured (MongooseIM appends the CETS version, so that
    nodes with incompatible CETS never cluster); ``address`` is the node's distribution
    address ``host:port`` (MongooseIM stores an IP for its epmd module).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from mongoose.storage import migrate
from mongoose.storage.database import Database, Row, StorageError, Transaction, backoff_delays

__all__ = [
    "PICKS_PER_TRANSACTION",
    "TRANSACTION_ATTEMPTS",
    "RdbmsBackend",
    "Registration",
    "read_node_num",
    "register_node",
]

log = logging.getLogger("mongoose.cets_discovery_rdbms")

PICKS_PER_TRANSACTION = 64
"""Numbers one transaction tries when other nodes take the ones it picked."""
TRANSACTION_ATTEMPTS = 5
"""Transactions tried before a round fails (see step 4 of a round)."""

_NOW_SQL = {
    "sqlite": "SELECT CAST(strftime('%s', 'now') AS INTEGER)",
    "pgsql": "SELECT CAST(EXTRACT(EPOCH FROM now()) AS BIGINT)",
    "cockroachdb": "SELECT CAST(EXTRACT(EPOCH FROM now()) AS BIGINT)",
}


class Registration(NamedTuple):
    """The outcome of one round: this node's number, the cluster's rows (node_name,
    node_num, address, updated_timestamp) and the names of rows that expired."""

    node_num: int
    rows: list[Row]
    expired: list[str]


class _NumTaken(Exception):
    """Another node inserted the number we picked first; run the transaction again."""


def _smallest_free(taken: set[int]) -> int:
    """The smallest number from 1 that is not in ``taken``."""
    num = 1
    while num in taken:
        num += 1
    return num


def register_node(
    db: Database,
    *,
    cluster_name: str,
    node_name: str,
    address: str,
    expiry: int,
    prefer: int | None = None,
) -> Registration:
    """One discovery round for ``node_name`` (see the module docstring); ``prefer`` is
    the number to take again if this node has no row and that number is free."""
    now_sql = _NOW_SQL.get(db.driver, _NOW_SQL["pgsql"])

    def round_(tx: Transaction) -> Registration:
        now = int(tx.query(now_sql)[0][0])
        stale = (cluster_name, node_name, now - expiry)
        expired = [row[0] for row in tx.query(
            "SELECT node_name FROM discovery_nodes"
            " WHERE cluster_name = ? AND node_name <> ? AND updated_timestamp < ?", stale)]
        if expired:
            tx.execute(
                "DELETE FROM discovery_nodes"
                " WHERE cluster_name = ? AND node_name <> ? AND updated_timestamp < ?", stale)
        rows = tx.query(
            "SELECT node_name, node_num, address, updated_timestamp FROM discovery_nodes"
            " WHERE cluster_name = ? ORDER BY node_num", (cluster_name,))
        own = next((row for row in rows if row[0] == node_name), None)
        if own is not None:
            tx.execute(
                "UPDATE discovery_nodes SET address = ?, updated_timestamp = ?"
                " WHERE cluster_name = ? AND node_name = ?",
                (address, now, cluster_name, node_name))
            num = int(own[1])
            rows = [row if row[0] != node_name else (node_name, num, address, now)
                    for row in rows]
            return Registration(num, rows, expired)
        # node_name is the table's primary key (MongooseIM's schema): a row of this node
        # in another cluster goes.
        tx.execute("DELETE FROM discovery_nodes WHERE node_name = ? AND cluster_name <> ?",
                   (node_name, cluster_name))
        taken = {int(row[1]) for row in rows}
        if prefer is not None and prefer > 0 and prefer not in taken:
            num = prefer
        else:
            num = _smallest_free(taken)
        for _ in range(PICKS_PER_TRANSACTION):
            if tx.execute(
                "INSERT INTO discovery_nodes"
                " (cluster_name, node_name, node_num, address, updated_timestamp)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (cluster_name, node_name, num, address, now),
            ) == 1:
                rows = sorted([*rows, (node_name, num, address, now)], key=lambda r: r[1])
                return Registration(num, rows, expired)
            taken.add(num)  # by a node that registered after our read
            num = _smallest_free(taken)
        raise _NumTaken(num)

    delays = backoff_delays(attempts=TRANSACTION_ATTEMPTS - 1)
    while True:
        try:
            return db.transaction(round_)
        except _NumTaken:
            delay = next(delays, None)
            if delay is None:
                raise StorageError(
                    f"discovery_nodes: no node_num could be inserted for {node_name} in "
                    f"cluster {cluster_name} in {TRANSACTION_ATTEMPTS} transactions"
                ) from None
            time.sleep(delay)


def read_node_num(db: Database, cluster_name: str, node_name: str) -> int | None:
    """The node_num of ``node_name`` in the table, None if it has no row."""
    rows = db.query(
        "SELECT node_num FROM discovery_nodes WHERE cluster_name = ? AND node_name = ?",
        (cluster_name, node_name))
    return int(rows[0][0]) if rows else None


class RdbmsBackend:
    """:class:`otp.discovery.Backend` over ``discovery_nodes``; call it off the loop.

    ``open_db`` makes the database on first use (on a pool thread: opening may block or
    fail, and a failure is retried at the next round, so it should try once, not wait);
    its schema is then checked (:func:`~mongoose.storage.migrate.ensure`). The backend
    owns the database and closes it in :meth:`close`.
    """

    blocking = True

    def __init__(
        self,
        open_db: Callable[[], Database],
        *,
        cluster_name: str,
        node_name: str,
        address: str,
        expiry: int = 3600,
    ) -> None:
        self._open_db = open_db
        self._db: Database | None = None
        self._lock = threading.Lock()
        self.cluster_name = cluster_name
        self.node_name = node_name
        self.address = address
        self.expiry = expiry
        self.node_num: int | None = None

    def get_nodes(self) -> list[str]:
        """One round: register this node, expire stale rows, return every address."""
        with self._lock:
            if self._db is None:
                db = self._open_db()
                try:
                    migrate.ensure(db)
                except BaseException:
                    db.close()
                    raise
                self._db = db
            result = register_node(
                self._db, cluster_name=self.cluster_name, node_name=self.node_name,
                address=self.address, expiry=self.expiry, prefer=self.node_num)
            if result.expired:
                log.warning("expired nodes removed from discovery_nodes", extra={
                    "what": "cets_expired_nodes", "cluster_name": self.cluster_name,
                    "expired_nodes": result.expired})
            if result.node_num != self.node_num:
                log.info("node_num assigned", extra={
                    "what": "cets_node_num", "cluster_name": self.cluster_name,
                    "node_num": result.node_num, "previous": self.node_num})
                self.node_num = result.node_num
            return _addresses(result.rows)

    def status(self) -> dict[str, Any]:
        return {"cluster_name": self.cluster_name, "node_name": self.node_name,
                "node_num": self.node_num}

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _addresses(rows: Sequence[Row]) -> list[str]:
    return [row[2] for row in rows if row[2]]
