"""Last activity (XEP-0012), after MongooseIM's ``mod_last_rdbms``.

Table ``last``: one row per user with ``seconds`` (when the user's last session ended,
seconds since the epoch) and ``state`` (the status text of its last unavailable
presence, '' for none).

Contracts (besides the package's, see :mod:`mongoose.storage.backends`): ``set``
replaces the user's row; ``count_active`` counts the users of a host seen since a time,
for statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

from mongoose.storage.backends import Backend, query

__all__ = ["LastActivity", "LastStore"]


@dataclass(frozen=True)
class LastActivity:
    """When the user was last seen (seconds since the epoch) and its status text then."""

    seconds: int
    status: str = ""


class LastStore(Backend):
    """Last activity in the ``last`` table."""

    name = "last"

    @query
    def get(self, user: str, host: str) -> LastActivity | None:
        """The user's last activity, None if never recorded."""
        rows = self.db.query("SELECT seconds, state FROM last "
                             "WHERE server = ? AND username = ?", (host, user))
        return LastActivity(rows[0][0], rows[0][1]) if rows else None

    @query
    def set(self, user: str, host: str, seconds: int, status: str = "") -> None:
        """Record that the user was last seen at ``seconds`` with ``status``."""
        self.db.execute("INSERT INTO last (server, username, seconds, state) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (server, username) "
                        "DO UPDATE SET seconds = excluded.seconds, state = excluded.state",
                        (host, user, seconds, status))

    @query
    def count_active(self, host: str, since: int) -> int:
        """How many users of ``host`` were last seen at ``since`` (seconds) or later."""
        return self.db.query("SELECT COUNT(*) FROM last WHERE server = ? AND seconds >= ?",
                             (host, since))[0][0]

    @query
    def remove_user(self, user: str, host: str) -> None:
        """Forget the user's last activity."""
        self.db.execute("DELETE FROM last WHERE server = ? AND username = ?", (host, user))
