"""Offline messages (XEP-0160), after MongooseIM's ``mod_offline_rdbms``.

Table ``offline_message``: one row per message kept for a user with no available
resource (``server``, ``username``), with ``timestamp`` (µs since the epoch, when the
server accepted it: the XEP-0203 delay stamp), ``expire`` (µs, NULL for never),
``from_jid`` and ``packet`` (the stanza as serialized XML). The row id orders the
messages of a user as they were stored.

Contracts (besides the package's, see :mod:`mongoose.storage.backends`):

- :meth:`OfflineStore.store` keeps a batch of messages for one user, all or none:
  with a ``limit`` (``max_user_offline_messages``), none when the user would then have
  more than ``limit`` (the caller answers ``resource-constraint``). The count and the
  insert run in one transaction; writers to one user on several nodes at once may
  still overshoot the limit by a batch each under PostgreSQL's read-committed
  isolation, as in MongooseIM.
- :meth:`OfflineStore.pop_all` takes a user's messages out atomically (one ``DELETE ...
  RETURNING``): two sessions logging in at once never both get a message, and a message
  is never lost between the read and the delete. Expired messages are deleted, not
  returned.
- Packets are bytes in and out (UTF-8 XML: the column is text).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from mongoose.storage.backends import Backend, flatten, placeholders, query, require_returning
from mongoose.storage.database import Database, Transaction

__all__ = ["OfflineMessage", "OfflineStore"]


@dataclass(frozen=True)
class OfflineMessage:
    """A message kept for a user. ``timestamp`` and ``expire``: µs since the epoch;
    ``id``: set on messages read back (their order), None on new ones."""

    timestamp: int
    from_jid: str
    packet: bytes
    expire: int | None = None
    id: int | None = None


def now_us() -> int:
    return time.time_ns() // 1000


_COLUMNS = "timestamp, expire, server, username, from_jid, packet"


class OfflineStore(Backend):
    """Offline messages in the ``offline_message`` table."""

    name = "offline"
    # Rows per INSERT statement (7 parameters each: far below every driver's limit).
    ROWS_PER_STATEMENT = 100

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        require_returning(db)

    @query
    def store(self, user: str, host: str, messages: Sequence[OfflineMessage], *,
              limit: int | None = None) -> bool:
        """Keep ``messages`` for the user, in order; False (nothing kept) when the user
        would then have more than ``limit``."""
        rows = [(m.timestamp, m.expire, host, user, m.from_jid, m.packet.decode("utf-8"))
                for m in messages]

        def write(tx: Transaction) -> bool:
            if limit is not None and _count(tx, user, host, limit + 1) + len(rows) > limit:
                return False
            for start in range(0, len(rows), self.ROWS_PER_STATEMENT):
                chunk = rows[start:start + self.ROWS_PER_STATEMENT]
                tx.execute(f"INSERT INTO offline_message ({_COLUMNS}) "
                           f"VALUES {placeholders(6, len(chunk))}", flatten(chunk))
            return True

        return self.db.transaction(write) if rows else True

    @query
    def count(self, user: str, host: str, *, at_most: int | None = None) -> int:
        """How many messages the user has; with ``at_most``, counting stops there (a
        cheap check against a limit)."""
        return _count(self.db, user, host, at_most)

    @query
    def pop_all(self, user: str, host: str, *, now: int | None = None) -> list[OfflineMessage]:
        """Delete the user's messages and return those not expired at ``now`` (µs; the
        current time by default), oldest first."""
        now = now_us() if now is None else now
        rows = self.db.query(
            "DELETE FROM offline_message WHERE server = ? AND username = ? "
            "RETURNING id, timestamp, expire, from_jid, packet", (host, user))
        return [OfflineMessage(timestamp, from_jid, packet.encode("utf-8"), expire, id_)
                for id_, timestamp, expire, from_jid, packet in sorted(rows)
                if expire is None or expire > now]

    @query
    def delete_expired(self, *, now: int | None = None) -> int:
        """Delete every user's messages expired at ``now`` (µs); how many there were."""
        now = now_us() if now is None else now
        return self.db.execute("DELETE FROM offline_message "
                               "WHERE expire IS NOT NULL AND expire <= ?", (now,))

    @query
    def remove_user(self, user: str, host: str) -> None:
        """Delete the user's messages."""
        self.db.execute("DELETE FROM offline_message WHERE server = ? AND username = ?",
                        (host, user))


def _count(tx: Transaction, user: str, host: str, at_most: int | None) -> int:
    if at_most is None:
        return tx.query("SELECT COUNT(*) FROM offline_message "
                        "WHERE server = ? AND username = ?", (host, user))[0][0]
    return tx.query("SELECT COUNT(*) FROM (SELECT 1 FROM offline_message "
                    "WHERE server = ? AND username = ? LIMIT ?) AS counted",
                    (host, user, at_most))[0][0]
