"""vCards (XEP-0054 vcard-temp) and their search fields (XEP-0055), after MongooseIM's
``mod_vcard_rdbms``.

Tables: ``vcard`` (one serialized vCard element per user) and ``vcard_search`` (the
fields users search on, each kept as given and lower-cased, ``l``-prefixed, for
case-insensitive matching).

Contracts (besides the package's, see :mod:`mongoose.storage.backends`):

- ``set`` replaces the user's vCard and its search row in one transaction; without
  search fields the user is no longer found by ``search``.
- ``search`` matches lower-cased: a value ending in ``*`` is a prefix (at least one
  character before it), any other value must equal the field; all given fields must
  match. Results are ordered by user name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from mongoose.storage.backends import (
    Backend,
    escape_like,
    query,
    set_user_value,
    user_value,
)
from mongoose.storage.database import Transaction

__all__ = ["SEARCH_FIELDS", "VcardSearch", "VcardStore"]


@dataclass(frozen=True)
class VcardSearch:
    """The searchable fields of a vCard (XEP-0055 names; '' when absent)."""

    fn: str = ""
    family: str = ""
    given: str = ""
    middle: str = ""
    nickname: str = ""
    bday: str = ""
    ctry: str = ""
    locality: str = ""
    email: str = ""
    orgname: str = ""
    orgunit: str = ""


SEARCH_FIELDS = tuple(f.name for f in dataclasses.fields(VcardSearch))
# "family" is a keyword in CockroachDB (column families): quoted everywhere.
_COLUMN = {name: '"family"' if name == "family" else name for name in SEARCH_FIELDS}
_SEARCH_COLUMNS = ", ".join(
    f"{_COLUMN[name]}, l{name}" for name in SEARCH_FIELDS)


class VcardStore(Backend):
    """vCards in the ``vcard`` and ``vcard_search`` tables."""

    name = "vcard"

    @query
    def get(self, user: str, host: str) -> str | None:
        """The user's vCard (serialized XML), None if it has none."""
        return user_value(self.db, "vcard", "vcard", user, host)

    @query
    def set(self, user: str, host: str, vcard: str,
            search: VcardSearch | None = None) -> None:
        """Store the user's vCard, and the fields it is found by (none: not found)."""
        def write(tx: Transaction) -> None:
            set_user_value(tx, "vcard", "vcard", user, host, vcard)
            _delete_search(tx, user, host)
            if search is not None:
                values = [v for name in SEARCH_FIELDS
                          for v in (getattr(search, name), getattr(search, name).lower())]
                marks = ", ".join("?" * (3 + len(values)))
                tx.execute("INSERT INTO vcard_search (server, username, lusername, "
                           f"{_SEARCH_COLUMNS}) VALUES ({marks})",
                           (host, user, user.lower(), *values))

        self.db.transaction(write)

    @query
    def delete(self, user: str, host: str) -> bool:
        """Remove the user's vCard and search fields; False if it had no vCard."""
        return self._delete(user, host)

    @query
    def search(self, host: str, fields: Mapping[str, str], *,
               limit: int | None = None) -> list[tuple[str, VcardSearch]]:
        """The users of ``host`` whose search fields match ``fields`` (keys from
        ``SEARCH_FIELDS``, or ``user`` for the user name; see the module docstring),
        with their fields; at most ``limit`` of them."""
        conditions, params = ["server = ?"], [host]
        for name, value in fields.items():
            if name != "user" and name not in _COLUMN:
                raise ValueError(f"not a vCard search field: {name!r}")
            column = "lusername" if name == "user" else f"l{name}"
            value = value.lower()
            if value.endswith("*") and len(value) > 1:
                conditions.append(f"{column} LIKE ? ESCAPE '!'")
                params.append(escape_like(value[:-1]) + "%")
            else:
                conditions.append(f"{column} = ?")
                params.append(value)
        sql = (f"SELECT username, {', '.join(_COLUMN.values())} FROM vcard_search "
               f"WHERE {' AND '.join(conditions)} ORDER BY lusername")
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [(row[0], VcardSearch(*row[1:])) for row in self.db.query(sql, params)]

    @query
    def remove_user(self, user: str, host: str) -> None:
        """Forget the user's vCard."""
        self._delete(user, host)

    def _delete(self, user: str, host: str) -> bool:
        def write(tx: Transaction) -> bool:
            _delete_search(tx, user, host)
            return tx.execute("DELETE FROM vcard WHERE server = ? AND username = ?",
                              (host, user)) > 0

        return self.db.transaction(write)


def _delete_search(tx: Transaction, user: str, host: str) -> None:
    tx.execute("DELETE FROM vcard_search WHERE server = ? AND lusername = ?",
               (host, user.lower()))
