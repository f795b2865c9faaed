"""The offline message interface (mongoose/storage/backends/offline.py) on every driver
of the ``database`` fixture: order, limits, expiry, atomic pops, remove_user."""

from __future__ import annotations

import pytest
from backend_helpers import run_threads

from mongoose.storage import StorageError, backends
from mongoose.storage.backends.offline import OfflineMessage, OfflineStore

pytestmark = pytest.mark.timeout(60)


def message(i: int, *, expire: int | None = None, body: str = "") -> OfflineMessage:
    packet = f"<message to='juliet@localhost' id='{i}'><body>{body or i}</body></message>"
    return OfflineMessage(1_700_000_000_000_000 + i, f"romeo@localhost/r{i}",
                          packet.encode(), expire)


def strip(messages: list[OfflineMessage]) -> list[OfflineMessage]:
    """The messages without the ids the store gave them."""
    return [OfflineMessage(m.timestamp, m.from_jid, m.packet, m.expire) for m in messages]


def test_messages_come_back_in_order_once(database):
    """pop_all returns the messages in the order stored, with their ids, and empties
    the user's store."""
    offline = OfflineStore(database)
    sent = [message(i) for i in range(5)]
    for m in sent[:2]:
        assert offline.store("juliet", "localhost", [m]) is True
    assert offline.store("juliet", "localhost", sent[2:]) is True
    assert offline.count("juliet", "localhost") == 5
    popped = offline.pop_all("juliet", "localhost")
    assert strip(popped) == sent
    assert [m.id for m in popped] == sorted(m.id for m in popped)
    assert offline.pop_all("juliet", "localhost") == []
    assert offline.count("juliet", "localhost") == 0


def test_many_messages_in_one_batch_keep_their_order(database):
    """A batch larger than one INSERT statement is stored whole, in order."""
    offline = OfflineStore(database)
    sent = [message(i) for i in range(OfflineStore.ROWS_PER_STATEMENT * 2 + 7)]
    assert offline.store("juliet", "localhost", sent) is True
    assert strip(offline.pop_all("juliet", "localhost")) == sent


def test_packets_keep_unicode_and_quotes(database):
    """Packets and JIDs with quotes, SQL and non-ASCII text come back byte for byte."""
    offline = OfflineStore(database)
    tricky = message(1, body="O'Brien \"q\" %_ ; -- DROP TABLE offline_message; 日本 🦆")
    offline.store("juliet", "localhost", [tricky])
    assert strip(offline.pop_all("juliet", "localhost")) == [tricky]


def test_the_limit_refuses_a_batch_that_would_pass_it(database):
    """With a limit, a batch that would leave the user with more is refused whole; one
    that reaches the limit exactly is stored."""
    offline = OfflineStore(database)
    assert offline.store("juliet", "localhost", [message(i) for i in range(3)], limit=5)
    assert not offline.store("juliet", "localhost", [message(i) for i in range(3)], limit=5)
    assert offline.count("juliet", "localhost") == 3
    assert offline.store("juliet", "localhost", [message(3), message(4)], limit=5)
    assert not offline.store("juliet", "localhost", [message(5)], limit=5)
    assert offline.store("romeo", "localhost", [message(5)], limit=5)  # per user
    assert offline.count("juliet", "localhost") == 5
    assert offline.store("juliet", "localhost", [])  # nothing to store


def test_count_can_stop_early(database):
    """count(at_most=N) counts up to N."""
    offline = OfflineStore(database)
    offline.store("juliet", "localhost", [message(i) for i in range(10)])
    assert offline.count("juliet", "localhost", at_most=4) == 4
    assert offline.count("juliet", "localhost", at_most=40) == 10


def test_expired_messages_are_dropped(database):
    """pop_all skips (and deletes) expired messages; delete_expired removes every
    user's expired messages and says how many."""
    offline = OfflineStore(database)
    offline.store("juliet", "localhost", [message(1, expire=100), message(2),
                                          message(3, expire=300)])
    offline.store("romeo", "localhost", [message(4, expire=100), message(5, expire=900)])
    assert strip(offline.pop_all("juliet", "localhost", now=200)) == [
        message(2), message(3, expire=300)]
    assert offline.delete_expired(now=100) == 1  # expire <= now
    assert strip(offline.pop_all("romeo", "localhost", now=0)) == [message(5, expire=900)]


def test_concurrent_pops_never_deliver_twice(database):
    """Sessions popping one user's messages at once get each message exactly once."""
    offline = OfflineStore(database)
    sent = [message(i) for i in range(200)]
    offline.store("juliet", "localhost", sent)

    def pop() -> list[OfflineMessage]:
        return offline.pop_all("juliet", "localhost")

    popped = [m for batch in run_threads(*[pop] * 4) for m in batch]
    assert sorted(strip(popped), key=lambda m: m.timestamp) == sent


def test_concurrent_writers_and_a_reader(database):
    """Writers storing while a reader pops: every message is popped once, and each
    writer's messages stay in the order it stored them."""
    offline = OfflineStore(database)

    def write(n: int) -> None:
        for i in range(30):
            offline.store("juliet", "localhost", [message(n * 1000 + i)])

    popped: list[OfflineMessage] = []

    def read() -> None:
        for _ in range(20):
            popped.extend(offline.pop_all("juliet", "localhost"))

    run_threads(*(lambda n=n: write(n) for n in range(3)), read)
    popped.extend(offline.pop_all("juliet", "localhost"))
    assert len(popped) == 90
    for n in range(3):
        mine = [m.timestamp for m in popped if (m.timestamp % 1_000_000) // 1000 == n]
        assert mine == sorted(mine) and len(mine) == 30


def test_remove_user_deletes_only_that_user(database):
    """remove_user deletes the user's messages and no one else's."""
    offline = OfflineStore(database)
    offline.store("juliet", "localhost", [message(1)])
    offline.store("romeo", "localhost", [message(2)])
    offline.remove_user("juliet", "localhost")
    assert offline.count("juliet", "localhost") == 0
    assert offline.count("romeo", "localhost") == 1


def test_a_sqlite_without_returning_is_refused(database, monkeypatch):
    """On SQLite older than 3.35 (no DELETE ... RETURNING) the store refuses to start
    rather than pop messages non-atomically; other drivers do not care."""
    monkeypatch.setattr(backends.sqlite3, "sqlite_version_info", (3, 34, 1))
    if database.driver == "sqlite":
        with pytest.raises(StorageError, match="no RETURNING"):
            OfflineStore(database)
    else:
        OfflineStore(database)
