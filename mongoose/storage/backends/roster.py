"""Rosters (RFC 6121) and their versions (XEP-0237), after MongooseIM's ``mod_roster_rdbms``.

Tables: ``rosterusers`` (one row per contact: ``nick``, ``subscription`` and ``ask`` as
one letter each, ``askmessage``), ``rostergroups`` (one row per contact and group) and
``roster_version`` (one opaque version string per user).

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
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mongoose.storage.backends import Backend, query, set_user_value, user_value
from mongoose.storage.database import Database, Transaction

__all__ = ["ASKS", "SUBSCRIPTIONS", "Roster", "RosterItem", "RosterStore"]

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
    it ('' for none); ``ask_message``: the text of a pending subscription request."""

    jid: str
    name: str = ""
    subscription: str = "none"
    ask: str = "none"
    groups: tuple[str, ...] = ()
    ask_message: str = ""

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


_ITEM_COLUMNS = "jid, nick, subscription, ask, askmessage"


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
        def read(tx: Transaction) -> RosterItem | None:
            rows = tx.query(f"SELECT {_ITEM_COLUMNS} FROM rosterusers "
                            "WHERE server = ? AND username = ? AND jid = ?", (host, user, jid))
            if not rows:
                return None
            groups = tx.query("SELECT grp FROM rostergroups "
                              "WHERE server = ? AND username = ? AND jid = ?", (host, user, jid))
            return _item(rows[0], [group for (group,) in groups])

        return self.db.transaction(read)

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
        version = self._new_version()

        def write(tx: Transaction) -> str:
            tx.execute(
                f"INSERT INTO rosterusers (server, username, {_ITEM_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (server, username, jid) DO UPDATE "
                "SET nick = excluded.nick, subscription = excluded.subscription, "
                "ask = excluded.ask, askmessage = excluded.askmessage",
                (host, user, item.jid, item.name, SUBSCRIPTIONS[item.subscription],
                 ASKS[item.ask], item.ask_message))
            _delete_groups(tx, user, host, item.jid)
            if item.groups:
                tx.execute_many(
                    "INSERT INTO rostergroups (server, username, jid, grp) VALUES (?, ?, ?, ?)",
                    [(host, user, item.jid, group) for group in item.groups])
            _set_version(tx, user, host, version)
            return version

        return self.db.transaction(write)

    @query
    def delete_item(self, user: str, host: str, jid: str) -> str | None:
        """Remove contact ``jid``; the new version, None (and no change) if it was not
        on the roster."""
        version = self._new_version()

        def write(tx: Transaction) -> str | None:
            _delete_groups(tx, user, host, jid)
            if not tx.execute("DELETE FROM rosterusers WHERE server = ? AND username = ? "
                              "AND jid = ?", (host, user, jid)):
                return None
            _set_version(tx, user, host, version)
            return version

        return self.db.transaction(write)

    @query
    def remove_user(self, user: str, host: str) -> None:
        """Forget the user's roster and its version."""
        def write(tx: Transaction) -> None:
            for table in ("rostergroups", "rosterusers", "roster_version"):
                tx.execute(f"DELETE FROM {table} WHERE server = ? AND username = ?",
                           (host, user))

        self.db.transaction(write)

    def _new_version(self) -> str:
        with self._lock:
            self._last_stamp = stamp = max(self._clock() // 1000, self._last_stamp + 1)
        return f"{stamp:014x}{secrets.token_hex(3)}"


def _item(row: tuple[Any, ...], groups: Iterable[str]) -> RosterItem:
    jid, nick, subscription, ask, ask_message = row
    return RosterItem(jid, nick, _SUBSCRIPTION_OF[subscription.strip()],
                      _ASK_OF[ask.strip()], tuple(groups), ask_message)


def _version(tx: Transaction, user: str, host: str) -> str | None:
    return user_value(tx, "roster_version", "version", user, host)


def _set_version(tx: Transaction, user: str, host: str, version: str) -> None:
    set_user_value(tx, "roster_version", "version", user, host, version)


def _delete_groups(tx: Transaction, user: str, host: str, jid: str) -> None:
    tx.execute("DELETE FROM rostergroups WHERE server = ? AND username = ? AND jid = ?",
               (host, user, jid))
