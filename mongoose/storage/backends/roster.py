"""Rosters (RFC 6121) and their versions (XEP-0237), after MongooseIM's ``mod_roster_rdbms``.

Tables: ``rosterusers`` (one row per contact: ``nick``, ``subscription`` and ``ask`` as
one letter each, ``askmessage``, ``approved``), ``rostergroups`` (one row per contact and
group), ``roster_version`` (one opaque version string per user, and the oldest version
diffs start from) and ``roster_item_version`` (the version of each contact's last change).

Contracts (besides the package's, see :mod:`mongoose.storage.backends`):

- An item is keyed by (user, host, contact JID): the contact's bare JID, normalised by
  the caller. :meth:`RosterStore.upsert_item` replaces the whole item, groups included.
- Every change (:meth:`~RosterStore.upsert_item`, :meth:`~RosterStore.delete_item`) sets
  a new roster version in the same transaction and returns it: a string that sorts after
  the versions this store made before (a microsecond clock in hex, kept increasing, plus
  randomness so that writers on other nodes never make the same one). Versions are
  opaque to clients (XEP-0237); ``get_roster`` returns the items and the version they
  belong to, read in one transaction.
- Items come back sorted by JID (code point order, whatever the database's collation),
  groups sorted and without repeats.

Changes since a version (XEP-0237 diffs; schema version 2)
    Every change also records, per contact, the version it made (``roster_item_version``;
    a removed contact keeps a row marked removed). :meth:`RosterStore.get_changes` then
    answers "what changed after version V": the contacts whose row is newer than V, in
    version order, each with its item or None if removed. It answers None -- send the
    whole roster -- when V is not a version this store makes, is newer than the
    roster's, is older than the oldest version diffs can start from (removed contacts
    beyond :data:`KEEP_REMOVED` per user are pruned, oldest first, and the roster's
    ``oldest`` moves past them), or when some item has no version row (written before
    schema version 2).

    So that a version is a valid point in *this roster's* history, a new version is made
    inside the writing transaction and sorts after the roster's current one, whatever the
    clocks of the nodes writing; writes run at SERIALIZABLE isolation on PostgreSQL and
    CockroachDB (SQLite's writers are serialized already), so versions follow commit
    order and two writers of one roster never both build on the same state.

Read-modify-write (:meth:`RosterStore.update_item`)
    A change that depends on the item's state (RFC 6121 subscription states) reads and
    writes in one transaction: ``change(old item or None)`` returns the new item,
    :data:`REMOVE`, or None for "no change". It may run more than once (a retried
    transaction), so it must be pure. A new contact beyond ``max_items`` raises
    :class:`RosterFull`.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from mongoose.storage.backends import Backend, query, set_user_value, user_value
from mongoose.storage.database import Database, Transaction

__all__ = ["ASKS", "KEEP_REMOVED", "REMOVE", "SUBSCRIPTIONS", "Change", "Changes", "Roster",
           "RosterFull", "RosterItem", "RosterStore"]

# RFC 6121 subscription states, and their letters in rosterusers.subscription.
SUBSCRIPTIONS = {"none": "N", "to": "T", "from": "F", "both": "B"}
# Pending requests (MongooseIM's ask): out (we asked), in (they asked), both; subscribe
# and unsubscribe for the legacy states. Letters in rosterusers.ask.
ASKS = {"none": "N", "out": "O", "in": "I", "both": "B", "subscribe": "S", "unsubscribe": "U"}
_SUBSCRIPTION_OF = {letter: name for name, letter in SUBSCRIPTIONS.items()}
_ASK_OF = {letter: name for name, letter in ASKS.items()}


@dataclass(frozen=True)
class RosterItem:
    """A contact on a roster. ``jid``: its bare JID; ``name``: the handle the user gave
    it ('' for none); ``ask_message``: the text of a pending subscription request;
    ``approved``: the user pre-approved the contact's subscription (RFC 6121 §3.4)."""

    jid: str
    name: str = ""
    subscription: str = "none"
    ask: str = "none"
    groups: tuple[str, ...] = ()
    ask_message: str = ""
    approved: bool = False

    def __post_init__(self) -> None:
        if self.subscription not in SUBSCRIPTIONS:
            raise ValueError(f"not a subscription state: {self.subscription!r}")
        if self.ask not in ASKS:
            raise ValueError(f"not a pending state: {self.ask!r}")
        if not self.jid:
            raise ValueError("a roster item needs a JID")
        object.__setattr__(self, "groups", tuple(sorted(set(self.groups))))


@dataclass(frozen=True)
class Roster:
    """A user's roster as read at one moment: the items and their version (None when
    the roster was never changed)."""

    version: str | None
    items: list[RosterItem] = field(default_factory=list)


class RosterFull(Exception):
    """A new contact would take the roster beyond its size limit."""


class _Remove:
    def __repr__(self) -> str:
        return "REMOVE"


REMOVE: Final = _Remove()
"""What a :meth:`RosterStore.update_item` change returns to remove the item."""

KEEP_REMOVED = 100
"""Removed contacts remembered per user for diffs (see the module docstring)."""


@dataclass(frozen=True)
class Change:
    """What :meth:`RosterStore.update_item` did: the item before and after (None: not
    on the roster), and the new roster version (None: nothing changed)."""

    old: RosterItem | None
    new: RosterItem | None
    version: str | None


@dataclass(frozen=True)
class Changes:
    """The roster's changes after some version: ``version`` is the roster's current one;
    ``items`` lists ``(version, jid, item or None if removed)`` in version order."""

    version: str | None
    items: list[tuple[str, str, RosterItem | None]] = field(default_factory=list)


_ITEM_COLUMNS = "jid, nick, subscription, ask, askmessage, approved"
_VERSION = re.compile(r"[0-9a-f]{20}")


class RosterStore(Backend):
    """Rosters in the ``rosterusers``, ``rostergroups`` and ``roster_version`` tables.

    ``clock``: nanoseconds since the epoch, for versions (injected by tests)."""

    name = "roster"

    def __init__(self, db: Database, *, clock: Callable[[], int] = time.time_ns) -> None:
        super().__init__(db)
        self._clock = clock
        self._lock = threading.Lock()
        self._last_stamp = 0

    @query
    def get_roster(self, user: str, host: str) -> Roster:
        """Every item of the user's roster, with the version they belong to."""
        def read(tx: Transaction) -> Roster:
            version = _version(tx, user, host)
            rows = tx.query(f"SELECT {_ITEM_COLUMNS} FROM rosterusers "
                            "WHERE server = ? AND username = ?", (host, user))
            groups: dict[str, list[str]] = {}
            for jid, group in tx.query("SELECT jid, grp FROM rostergroups "
                                       "WHERE server = ? AND username = ?", (host, user)):
                groups.setdefault(jid, []).append(group)
            items = [_item(row, groups.get(row[0], ())) for row in rows]
            return Roster(version, sorted(items, key=lambda item: item.jid))

        return self.db.transaction(read)

    @query
    def get_item(self, user: str, host: str, jid: str) -> RosterItem | None:
        """The item of contact ``jid``, None if it is not on the roster."""
        return self.db.transaction(lambda tx: _read_item(tx, user, host, jid))

    @query
    def get_version(self, user: str, host: str) -> str | None:
        """The roster's version, None if it was never changed."""
        return _version(self.db, user, host)

    @query
    def count_items(self, user: str, host: str) -> int:
        """How many contacts the roster has (for the roster size limit)."""
        return self.db.query("SELECT COUNT(*) FROM rosterusers "
                             "WHERE server = ? AND username = ?", (host, user))[0][0]

    @query
    def upsert_item(self, user: str, host: str, item: RosterItem) -> str:
        """Add ``item`` or replace the item of its JID, groups included; the new version."""
        def write(tx: Transaction) -> str:
            self._serializable(tx)
            version = self._next_version(tx, user, host)
            _write_item(tx, user, host, item)
            _set_version(tx, user, host, version)
            _mark(tx, user, host, item.jid, version, removed=False)
            return version

        return self.db.transaction(write)

    @query
    def delete_item(self, user: str, host: str, jid: str) -> str | None:
        """Remove contact ``jid``; the new version, None (and no change) if it was not
        on the roster."""
        def write(tx: Transaction) -> str | None:
            self._serializable(tx)
            if not _delete_item(tx, user, host, jid):
                return None
            version = self._next_version(tx, user, host)
            _set_version(tx, user, host, version)
            _mark(tx, user, host, jid, version, removed=True)
            _prune_removed(tx, user, host)
            return version

        return self.db.transaction(write)

    @query
    def update_item(self, user: str, host: str, jid: str,
                    change: Callable[[RosterItem | None], Any], *,
                    max_items: int | None = None) -> Change:
        """Read the item of ``jid``, apply ``change`` and write the result, in one
        transaction (see "Read-modify-write" in the module docstring)."""
        def write(tx: Transaction) -> Change:
            self._serializable(tx)
            old = _read_item(tx, user, host, jid)
            new = change(old)
            if new is None or new == old or (new is REMOVE and old is None):
                return Change(old, old, None)
            version = self._next_version(tx, user, host)
            if new is REMOVE:
                _delete_item(tx, user, host, jid)
                _set_version(tx, user, host, version)
                _mark(tx, user, host, jid, version, removed=True)
                _prune_removed(tx, user, host)
                return Change(old, None, version)
            if new.jid != jid:
                raise ValueError(f"a change of {jid}'s item returned {new.jid}'s")
            if old is None and max_items is not None and tx.query(
                    "SELECT COUNT(*) FROM rosterusers WHERE server = ? AND username = ?",
                    (host, user))[0][0] >= max_items:
                raise RosterFull(f"{user}@{host} has {max_items} contacts already")
            _write_item(tx, user, host, new)
            _set_version(tx, user, host, version)
            _mark(tx, user, host, jid, version, removed=False)
            return Change(old, new, version)

        return self.db.transaction(write)

    @query
    def get_changes(self, user: str, host: str, since: str) -> Changes | None:
        """The changes after version ``since``, or None when they cannot be told apart
        from the roster's whole history (see the module docstring: send it all)."""
        if not _VERSION.fullmatch(since):
            return None

        def read(tx: Transaction) -> Changes | None:
            rows = tx.query("SELECT version, oldest FROM roster_version "
                            "WHERE server = ? AND username = ?", (host, user))
            if not rows:
                return None
            version, oldest = rows[0]
            if since > version or (oldest is not None and since < oldest):
                return None
            unversioned = tx.query(
                "SELECT COUNT(*) FROM rosterusers r WHERE r.server = ? AND r.username = ? "
                "AND NOT EXISTS (SELECT 1 FROM roster_item_version v WHERE v.server = "
                "r.server AND v.username = r.username AND v.jid = r.jid)", (host, user))
            if unversioned[0][0]:
                return None
            changed = tx.query("SELECT jid, version, removed FROM roster_item_version "
                               "WHERE server = ? AND username = ? AND version > ?",
                               (host, user, since))
            items = []
            for jid, item_version, removed in changed:
                item = None if removed else _read_item(tx, user, host, jid)
                items.append((item_version, jid, item))
            items.sort(key=lambda change: (change[0], change[1]))
            return Changes(version, items)

        return self.db.transaction(read)

    @query
    def remove_user(self, user: str, host: str) -> None:
        """Forget the user's roster and its version."""
        def write(tx: Transaction) -> None:
            for table in ("rostergroups", "rosterusers", "roster_version",
                          "roster_item_version"):
                tx.execute(f"DELETE FROM {table} WHERE server = ? AND username = ?",
                           (host, user))

        self.db.transaction(write)

    def _serializable(self, tx: Transaction) -> None:
        if self.db.driver in ("pgsql", "cockroachdb"):
            tx.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")

    def _next_version(self, tx: Transaction, user: str, host: str) -> str:
        """A version after the roster's current one and after every one this store made
        (a microsecond clock in hex, plus randomness; see the module docstring)."""
        current = _version(tx, user, host)
        floor = int(current[:14], 16) + 1 if current and _VERSION.fullmatch(current) else 0
        with self._lock:
            self._last_stamp = stamp = max(self._clock() // 1000, self._last_stamp + 1, floor)
        return f"{stamp:014x}{secrets.token_hex(3)}"


def _read_item(tx: Transaction, user: str, host: str, jid: str) -> RosterItem | None:
    rows = tx.query(f"SELECT {_ITEM_COLUMNS} FROM rosterusers "
                    "WHERE server = ? AND username = ? AND jid = ?", (host, user, jid))
    if not rows:
        return None
    groups = tx.query("SELECT grp FROM rostergroups "
                      "WHERE server = ? AND username = ? AND jid = ?", (host, user, jid))
    return _item(rows[0], [group for (group,) in groups])


def _write_item(tx: Transaction, user: str, host: str, item: RosterItem) -> None:
    tx.execute(
        f"INSERT INTO rosterusers (server, username, {_ITEM_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (server, username, jid) DO UPDATE "
        "SET nick = excluded.nick, subscription = excluded.subscription, "
        "ask = excluded.ask, askmessage = excluded.askmessage, approved = excluded.approved",
        (host, user, item.jid, item.name, SUBSCRIPTIONS[item.subscription],
         ASKS[item.ask], item.ask_message, item.approved))
    _delete_groups(tx, user, host, item.jid)
    if item.groups:
        tx.execute_many(
            "INSERT INTO rostergroups (server, username, jid, grp) VALUES (?, ?, ?, ?)",
            [(host, user, item.jid, group) for group in item.groups])


def _delete_item(tx: Transaction, user: str, host: str, jid: str) -> bool:
    _delete_groups(tx, user, host, jid)
    return bool(tx.execute("DELETE FROM rosterusers WHERE server = ? AND username = ? "
                           "AND jid = ?", (host, user, jid)))


def _mark(tx: Transaction, user: str, host: str, jid: str, version: str, *,
          removed: bool) -> None:
    tx.execute("INSERT INTO roster_item_version (server, username, jid, version, removed) "
               "VALUES (?, ?, ?, ?, ?) ON CONFLICT (server, username, jid) DO UPDATE "
               "SET version = excluded.version, removed = excluded.removed",
               (host, user, jid, version, removed))


def _prune_removed(tx: Transaction, user: str, host: str) -> None:
    """Forget removed contacts beyond KEEP_REMOVED, oldest first; diffs then start at
    the newest version forgotten."""
    rows = tx.query("SELECT version FROM roster_item_version WHERE server = ? AND "
                    "username = ? AND removed = ? ORDER BY version DESC LIMIT 1 OFFSET ?",
                    (host, user, True, KEEP_REMOVED))
    if not rows:
        return
    cut = rows[0][0]
    tx.execute("DELETE FROM roster_item_version WHERE server = ? AND username = ? AND "
               "removed = ? AND version <= ?", (host, user, True, cut))
    tx.execute("UPDATE roster_version SET oldest = ? WHERE server = ? AND username = ?",
               (cut, host, user))


def _item(row: tuple[Any, ...], groups: Iterable[str]) -> RosterItem:
    jid, nick, subscription, ask, ask_message, approved = row
    return RosterItem(jid, nick, _SUBSCRIPTION_OF[subscription.strip()],
                      _ASK_OF[ask.strip()], tuple(groups), ask_message, bool(approved))


def _version(tx: Transaction, user: str, host: str) -> str | None:
    return user_value(tx, "roster_version", "version", user, host)


def _set_version(tx: Transaction, user: str, host: str, version: str) -> None:
    set_user_value(tx, "roster_version", "version", user, host, version)


def _delete_groups(tx: Transaction, user: str, host: str, jid: str) -> None:
    tx.execute("DELETE FROM rostergroups WHERE server = ? AND username = ? AND jid = ?",
               (host, user, jid))
