"""Privacy lists (XEP-0016) and blocking (XEP-0191), after MongooseIM's
``mod_privacy_rdbms`` and ``mod_blocking``.

Tables: ``privacy_list`` (a user's named lists, each with an id), ``privacy_list_data``
(the items of a list by ``id``, in ``ord`` order: type ``t``, ``value``, ``action`` and
the stanza kinds matched, as MongooseIM encodes them) and ``privacy_default_list`` (the
name of the user's default list).

Blocking is a privacy list, as in MongooseIM: the list named ``"blocking"``
(:data:`BLOCKING_LIST`), whose items are JIDs with action ``block`` matching every
stanza kind; blocking makes it the user's default list. The blocking methods here do
MongooseIM's read-modify-write of that list in one transaction.

Contracts (besides the package's, see :mod:`mongoose.storage.backends`):

- :meth:`PrivacyStore.replace_list` creates the list or replaces all its items; writers
  of one list are serialised (the list's row is locked first), so concurrent
  replacements each apply whole and block/unblock never lose each other's changes.
- :meth:`PrivacyStore.remove_list` refuses to remove the default list
  (:class:`ListIsDefault`: XEP-0016's conflict); the caller checks active lists.
- Items come back in ``order``; list names sorted by code point.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mongoose.storage.backends import Backend, query, set_user_value, user_value
from mongoose.storage.database import Transaction

__all__ = ["ACTIONS", "BLOCKING_LIST", "TYPES", "ListIsDefault", "PrivacyItem",
           "PrivacyStore"]

BLOCKING_LIST = "blocking"
ACTIONS = {"allow": "a", "deny": "d", "block": "b"}
# The item types; None is the fall-through item that matches every sender.
TYPES = {None: "n", "jid": "j", "group": "g", "subscription": "s"}
_ACTION_OF = {letter: name for name, letter in ACTIONS.items()}
_TYPE_OF = {letter: name for name, letter in TYPES.items()}


class ListIsDefault(Exception):
    """``remove_list`` of the user's default list."""


@dataclass(frozen=True)
class PrivacyItem:
    """One rule of a privacy list. ``value``: a JID, a group name or a subscription
    state, by ``type`` ('' for the fall-through item). The ``match_*`` flags name the
    stanza kinds it applies to; none set means all of them."""

    order: int
    action: str
    type: str | None = None
    value: str = ""
    match_iq: bool = False
    match_message: bool = False
    match_presence_in: bool = False
    match_presence_out: bool = False

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"not a privacy action: {self.action!r}")
        if self.type not in TYPES:
            raise ValueError(f"not a privacy item type: {self.type!r}")

    @property
    def match_all(self) -> bool:
        return not (self.match_iq or self.match_message or self.match_presence_in
                    or self.match_presence_out)


def blocking_item(order: int, jid: str) -> PrivacyItem:
    """An item of the blocking list: ``jid`` blocked for every kind of stanza."""
    return PrivacyItem(order, "block", "jid", jid)


_DATA_COLUMNS = ("ord, t, value, action, match_all, match_iq, match_message, "
                 "match_presence_in, match_presence_out")


class PrivacyStore(Backend):
    """Privacy lists in ``privacy_list``, ``privacy_list_data`` and
    ``privacy_default_list``."""

    name = "privacy"

    @query
    def get_list(self, user: str, host: str, name: str) -> list[PrivacyItem] | None:
        """The items of list ``name``, None if the user has no such list."""
        return self.db.transaction(lambda tx: _read_list(tx, user, host, name))

    @query
    def get_list_names(self, user: str, host: str) -> tuple[str | None, list[str]]:
        """The name of the default list (None for none) and the names of all lists."""
        def read(tx: Transaction) -> tuple[str | None, list[str]]:
            names = tx.query("SELECT name FROM privacy_list WHERE server = ? AND username = ?",
                             (host, user))
            return _default(tx, user, host), sorted(name for (name,) in names)

        return self.db.transaction(read)

    @query
    def get_default_list(self, user: str, host: str) -> tuple[str, list[PrivacyItem]] | None:
        """The default list's name and items, None if the user has none."""
        def read(tx: Transaction) -> tuple[str, list[PrivacyItem]] | None:
            name = _default(tx, user, host)
            items = None if name is None else _read_list(tx, user, host, name)
            return None if name is None or items is None else (name, items)

        return self.db.transaction(read)

    @query
    def set_default_list(self, user: str, host: str, name: str) -> bool:
        """Make ``name`` the default list; False (no change) if there is no such list."""
        def write(tx: Transaction) -> bool:
            if _list_id(tx, user, host, name) is None:
                return False
            _set_default(tx, user, host, name)
            return True

        return self.db.transaction(write)

    @query
    def forget_default_list(self, user: str, host: str) -> None:
        """Leave the user without a default list."""
        self.db.execute("DELETE FROM privacy_default_list WHERE server = ? AND username = ?",
                        (host, user))

    @query
    def replace_list(self, user: str, host: str, name: str,
                     items: Sequence[PrivacyItem]) -> None:
        """Create list ``name`` with ``items``, or replace all the items it had."""
        self.db.transaction(lambda tx: _write_list(tx, user, host, name, items))

    @query
    def remove_list(self, user: str, host: str, name: str) -> bool:
        """Remove list ``name``; False if there was none; :class:`ListIsDefault` (and
        nothing removed) if it is the default list."""
        def write(tx: Transaction) -> bool:
            if _default(tx, user, host) == name:
                raise ListIsDefault(name)
            list_id = _list_id(tx, user, host, name)
            if list_id is None:
                return False
            tx.execute("DELETE FROM privacy_list_data WHERE id = ?", (list_id,))
            tx.execute("DELETE FROM privacy_list WHERE id = ?", (list_id,))
            return True

        return self.db.transaction(write)

    @query
    def get_blocklist(self, user: str, host: str) -> list[str]:
        """The JIDs the user blocks (XEP-0191), in the order they were blocked."""
        items = self.db.transaction(lambda tx: _read_list(tx, user, host, BLOCKING_LIST))
        return [item.value for item in items or ()]

    @query
    def block(self, user: str, host: str, jids: Iterable[str]) -> list[str]:
        """Add ``jids`` to the blocking list and make it the default list; the JIDs
        now blocked, in order."""
        def change(blocked: list[str]) -> list[str]:
            added = [jid for jid in dict.fromkeys(jids) if jid not in blocked]
            return blocked + added

        return self.db.transaction(lambda tx: _change_blocklist(tx, user, host, change))

    @query
    def unblock(self, user: str, host: str, jids: Iterable[str] | None = None) -> list[str]:
        """Remove ``jids`` from the blocking list (None: every JID); the JIDs removed."""
        removed: list[str] = []

        def change(blocked: list[str]) -> list[str]:
            gone = set(blocked) if jids is None else set(jids)
            removed[:] = [jid for jid in blocked if jid in gone]
            return [jid for jid in blocked if jid not in gone]

        self.db.transaction(lambda tx: _change_blocklist(tx, user, host, change))
        return removed

    @query
    def remove_user(self, user: str, host: str) -> None:
        """Forget all the user's lists and its default."""
        def write(tx: Transaction) -> None:
            tx.execute("DELETE FROM privacy_list_data WHERE id IN (SELECT id FROM "
                       "privacy_list WHERE server = ? AND username = ?)", (host, user))
            tx.execute("DELETE FROM privacy_list WHERE server = ? AND username = ?",
                       (host, user))
            tx.execute("DELETE FROM privacy_default_list WHERE server = ? AND username = ?",
                       (host, user))

        self.db.transaction(write)


def _change_blocklist(tx: Transaction, user: str, host: str, change: Any) -> list[str]:
    list_id = _lock_list(tx, user, host, BLOCKING_LIST)
    blocked = change([item.value for item in _read_items(tx, list_id)])
    _replace_items(tx, list_id, [blocking_item(i, jid) for i, jid in enumerate(blocked, 1)])
    _set_default(tx, user, host, BLOCKING_LIST)
    return blocked


def _read_list(tx: Transaction, user: str, host: str, name: str) -> list[PrivacyItem] | None:
    list_id = _list_id(tx, user, host, name)
    return None if list_id is None else _read_items(tx, list_id)


def _read_items(tx: Transaction, list_id: int) -> list[PrivacyItem]:
    rows = tx.query(f"SELECT {_DATA_COLUMNS} FROM privacy_list_data WHERE id = ?",
                    (list_id,))
    return [_item(row) for row in sorted(rows)]


def _write_list(tx: Transaction, user: str, host: str, name: str,
                items: Sequence[PrivacyItem]) -> None:
    _replace_items(tx, _lock_list(tx, user, host, name), items)


def _lock_list(tx: Transaction, user: str, host: str, name: str) -> int:
    """The id of list ``name``, created if need be, with its row locked until the end of
    the transaction (an upsert that changes nothing still takes the row lock)."""
    tx.execute("INSERT INTO privacy_list (server, username, name) VALUES (?, ?, ?) "
               "ON CONFLICT (server, username, name) DO UPDATE SET name = excluded.name",
               (host, user, name))
    list_id = _list_id(tx, user, host, name)
    assert list_id is not None
    return list_id


def _replace_items(tx: Transaction, list_id: int, items: Sequence[PrivacyItem]) -> None:
    tx.execute("DELETE FROM privacy_list_data WHERE id = ?", (list_id,))
    if items:
        tx.execute_many(
            f"INSERT INTO privacy_list_data (id, {_DATA_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(list_id, item.order, TYPES[item.type], item.value, ACTIONS[item.action],
              item.match_all, item.match_iq, item.match_message, item.match_presence_in,
              item.match_presence_out) for item in items])


def _list_id(tx: Transaction, user: str, host: str, name: str) -> int | None:
    rows = tx.query("SELECT id FROM privacy_list WHERE server = ? AND username = ? "
                    "AND name = ?", (host, user, name))
    return rows[0][0] if rows else None


def _default(tx: Transaction, user: str, host: str) -> str | None:
    return user_value(tx, "privacy_default_list", "name", user, host)


def _set_default(tx: Transaction, user: str, host: str, name: str) -> None:
    set_user_value(tx, "privacy_default_list", "name", user, host, name)


def _item(row: tuple[Any, ...]) -> PrivacyItem:
    order, type_, value, action, _all, iq, message, presence_in, presence_out = row
    return PrivacyItem(int(order), _ACTION_OF[action.strip()], _TYPE_OF[type_.strip()],
                       value, bool(iq), bool(message), bool(presence_in), bool(presence_out))
