"""Private XML storage (XEP-0049), after MongooseIM's ``mod_private_rdbms``.

Table ``private_storage``: one row per (user, namespace) with the serialized XML element
the client stored under that namespace (``data``).

Contracts (besides the package's, see :mod:`mongoose.storage.backends`): data are
strings (serialized XML, stored and returned as given); setting a namespace replaces
what was stored under it; several namespaces set together (one XEP-0049 query with
several children) are written in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from mongoose.storage.backends import Backend, query

__all__ = ["PrivateStore"]

_UPSERT = ("INSERT INTO private_storage (server, username, namespace, data) "
           "VALUES (?, ?, ?, ?) ON CONFLICT (server, username, namespace) "
           "DO UPDATE SET data = excluded.data")


class PrivateStore(Backend):
    """Private XML in the ``private_storage`` table."""

    name = "private"

    @query
    def get(self, user: str, host: str, namespace: str) -> str | None:
        """What the user stored under ``namespace``, None if nothing."""
        rows = self.db.query("SELECT data FROM private_storage "
                             "WHERE server = ? AND username = ? AND namespace = ?",
                             (host, user, namespace))
        return rows[0][0] if rows else None

    @query
    def get_many(self, user: str, host: str, namespaces: Iterable[str]) -> dict[str, str]:
        """What the user stored under each of ``namespaces`` (those with nothing are
        left out)."""
        wanted = list(dict.fromkeys(namespaces))
        if not wanted:
            return {}
        marks = ", ".join("?" * len(wanted))
        rows = self.db.query("SELECT namespace, data FROM private_storage "
                             f"WHERE server = ? AND username = ? AND namespace IN ({marks})",
                             (host, user, *wanted))
        return dict(rows)

    @query
    def set(self, user: str, host: str, namespace: str, data: str) -> None:
        """Store ``data`` under ``namespace``, replacing what was there."""
        self.db.execute(_UPSERT, (host, user, namespace, data))

    @query
    def set_many(self, user: str, host: str, data: Mapping[str, str]) -> None:
        """Store each namespace's data, all in one transaction."""
        rows = [(host, user, namespace, xml) for namespace, xml in data.items()]
        if rows:
            self.db.transaction(lambda tx: tx.execute_many(_UPSERT, rows))

    @query
    def delete(self, user: str, host: str, namespace: str) -> bool:
        """Forget ``namespace``; False if nothing was stored under it."""
        return self.db.execute("DELETE FROM private_storage "
                               "WHERE server = ? AND username = ? AND namespace = ?",
                               (host, user, namespace)) > 0

    @query
    def remove_user(self, user: str, host: str) -> None:
        """Forget everything the user stored."""
        self.db.execute("DELETE FROM private_storage WHERE server = ? AND username = ?",
                        (host, user))
