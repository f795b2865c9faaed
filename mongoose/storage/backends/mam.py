"""The message archive (XEP-0313) and its preferences, after MongooseIM's
``mod_mam_rdbms_arch``, ``mod_mam_rdbms_user`` and ``mod_mam_rdbms_prefs``.

Tables: ``mam_server_user`` (an integer id per archive owner), ``mam_message`` (one row
per archived message: ``id``, owner ``user_id``, ``from_jid``, the other party as
``remote_bare_jid`` and ``remote_resource``, ``direction`` I/O, the stanza as bytes in
``message``, ``search_body``, ``origin_id``, ``is_groupchat``) and ``mam_config`` (the
owner's preferences: a default behaviour in the row with ``remote_jid`` '', and the
always/never JIDs).

Message ids
    64-bit, as MongooseIM makes them (``mod_mam_utils:generate_message_id``): the time
    in microseconds since the epoch shifted left by 8 bits, and the node's number
    (0-255, ``discovery_nodes.node_num``) in the low byte. Ids sort by time, so ranges
    of time are ranges of ids (``start``/``end`` of a lookup), and the id is the
    XEP-0359 stanza-id (:func:`encode_id`: base 32, as MongooseIM writes it).
    :class:`MessageIdGenerator` keeps them unique and increasing per generator: a
    stamp is never reused (the next microsecond is taken when two messages share one).
    A node of MongooseIM is one Erlang VM; ours runs W worker processes, each with a
    generator, so worker w of W only uses stamps equal to w modulo W: the workers of a
    node never collide without talking to each other. Across generators ids follow the
    clock, so one archive's ids increase with time but two messages written within a
    few microseconds by different workers or nodes may get ids in the other order --
    the same guarantee MongooseIM gives. The caller generates the id (it goes into the
    stanza before delivery) and the archive stores it as given.

Writing
    :meth:`ArchiveStore.append` writes many messages per statement (a multi-row
    ``INSERT``); :class:`BatchWriter` feeds it from many sessions: a message handed to
    :meth:`BatchWriter.submit` is written within ``flush_interval`` or as soon as
    ``max_batch`` are waiting, and its future tells the caller the outcome -- its id
    once stored, or the :class:`StorageError` that kept it from being stored, so the
    sender can get an error: nothing accepted is lost silently.

Lookups
    :meth:`ArchiveStore.lookup` filters by the other party (``with``: a bare JID matches
    every resource, a full JID one), time, and text, and pages with XEP-0059 RSM: after
    an id, before an id, the last page, or an offset. Every page is returned oldest
    first, with ``complete`` when nothing is left in the direction of paging, and, when
    asked, the RSM count and the index of its first message.

The archive of a user is created (an id in ``mam_server_user``) on its first message or
preference. ``remove_user`` deletes the messages and preferences but keeps the id row,
as MongooseIM does without ``auto_remove``: other processes may hold the id in their
cache, and a re-created account reuses it harmlessly.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from mongoose.storage.backends import (
    Backend,
    escape_like,
    flatten,
    placeholders,
    query,
)
from mongoose.storage.database import (
    Database,
    StorageError,
    StorageUnavailable,
    Transaction,
)

__all__ = ["BEHAVIOURS", "DIRECTIONS", "ArchiveStore", "ArchivedMessage", "BatchWriter",
           "MamPrefs", "MessageIdGenerator", "Page", "WriterStatistics", "decode_id",
           "encode_id", "id_range", "parse_id"]

DIRECTIONS = {"in": "I", "out": "O"}
BEHAVIOURS = {"always": "A", "never": "N", "roster": "R"}
_DIRECTION_OF = {letter: name for name, letter in DIRECTIONS.items()}
_BEHAVIOUR_OF = {letter: name for name, letter in BEHAVIOURS.items()}
BIGINT_MAX = 2**63 - 1
_EXTERNAL_ID = re.compile("[0-9A-Va-v]{1,13}")


# -- message ids ---------------------------------------------------------------------------


class MessageIdGenerator:
    """Unique, increasing 64-bit message ids (see the module docstring).

    ``node_num``: this node's number, 0-255; ``worker`` of ``workers``: this process's
    share of the stamps; ``clock``: nanoseconds since the epoch (injected by tests).
    Thread-safe."""

    def __init__(self, node_num: int = 0, *, worker: int = 0, workers: int = 1,
                 clock: Callable[[], int] = time.time_ns) -> None:
        if not 0 <= node_num <= 255:
            raise ValueError(f"node_num is 0-255, got {node_num}")
        if not 0 <= worker < workers:
            raise ValueError(f"worker is 0-{workers - 1}, got {worker}")
        self.node_num, self.worker, self.workers = node_num, worker, workers
        self._clock = clock
        self._lock = threading.Lock()
        self._last = -1

    def next_id(self, timestamp_us: int | None = None) -> int:
        """A new id for a message received at ``timestamp_us`` (µs since the epoch; now
        by default), or just after if that stamp is taken."""
        candidate = self._clock() // 1000 if timestamp_us is None else timestamp_us
        with self._lock:
            stamp = max(candidate, self._last + 1)
            stamp += (self.worker - stamp) % self.workers
            self._last = stamp
        return (stamp << 8) | self.node_num


def id_range(start_us: int | None, end_us: int | None) -> tuple[int | None, int | None]:
    """The smallest and largest ids of messages stamped from ``start_us`` to ``end_us``
    (µs, both included; None: unbounded)."""
    return (None if start_us is None else start_us << 8,
            None if end_us is None else (end_us << 8) | 0xFF)


def decode_id(message_id: int) -> tuple[int, int]:
    """The (µs timestamp, node_num) of an id."""
    return message_id >> 8, message_id & 0xFF


def encode_id(message_id: int) -> str:
    """The id as clients see it (XEP-0359 stanza-id): base 32, like MongooseIM's
    ``mess_id_to_external_binary``."""
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUV"
    text = ""
    while True:
        message_id, digit = divmod(message_id, 32)
        text = digits[digit] + text
        if not message_id:
            return text


def parse_id(text: str) -> int:
    """The id of a client's ``text`` (from :func:`encode_id`); ValueError if it is not
    one."""
    if not _EXTERNAL_ID.fullmatch(text) or int(text, 32) > BIGINT_MAX:
        raise ValueError(f"not a message id: {text!r}")
    return int(text, 32)


# -- records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchivedMessage:
    """A message in ``user``@``host``'s archive. ``remote_jid``: the other party (bare,
    or full with its resource); ``direction``: "in" (the owner received it) or "out";
    ``packet``: the stanza as serialized XML; ``search_body``: the text XEP-0431
    searches (lower-cased by the caller), None for none."""

    id: int
    user: str
    host: str
    remote_jid: str
    from_jid: str
    direction: str
    packet: bytes
    origin_id: str | None = None
    search_body: str | None = None
    is_groupchat: bool = False

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"not a direction: {self.direction!r}")


@dataclass(frozen=True)
class Page:
    """One page of a lookup: ``messages`` oldest first; ``complete`` when no message is
    left beyond the page in the direction of paging; ``total`` (RSM count: the messages
    matching the filters) and ``first_index`` (RSM index of the first message) when the
    lookup counted, else None."""

    messages: list[ArchivedMessage]
    complete: bool
    total: int | None = None
    first_index: int | None = None


@dataclass(frozen=True)
class MamPrefs:
    """Archiving preferences (XEP-0441): the ``default`` behaviour ("always", "never" or
    "roster") and the JIDs always and never archived."""

    default: str
    always: tuple[str, ...] = ()
    never: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.default not in BEHAVIOURS:
            raise ValueError(f"not an archiving behaviour: {self.default!r}")


_COLUMNS = ("id, user_id, from_jid, remote_bare_jid, remote_resource, direction, message, "
            "search_body, origin_id, is_groupchat")
_READ_COLUMNS = ("id, from_jid, remote_bare_jid, remote_resource, direction, message, "
                 "search_body, origin_id, is_groupchat")


# -- the archive ---------------------------------------------------------------------------


class ArchiveStore(Backend):
    """Archives in ``mam_server_user``, ``mam_message`` and ``mam_config``."""

    name = "mam"
    # Rows per INSERT statement: 10 parameters each, far below every driver's limit.
    ROWS_PER_STATEMENT = 100

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        # (host, user) -> mam_server_user.id; ids never change (see remove_user).
        self._ids: dict[tuple[str, str], int] = {}

    @query
    def archive_id(self, user: str, host: str) -> int:
        """The integer id of the user's archive, created if need be."""
        return self._archive_id(user, host)

    @query
    def append(self, messages: Sequence[ArchivedMessage]) -> None:
        """Store ``messages`` (with their ids set), all or none."""
        rows = [(m.id, self._archive_id(m.user, m.host), m.from_jid,
                 *_split_jid(m.remote_jid), DIRECTIONS[m.direction], m.packet,
                 m.search_body, m.origin_id, m.is_groupchat) for m in messages]
        chunks = [rows[i:i + self.ROWS_PER_STATEMENT]
                  for i in range(0, len(rows), self.ROWS_PER_STATEMENT)]

        def write(tx: Transaction) -> None:
            for chunk in chunks:
                tx.execute(f"INSERT INTO mam_message ({_COLUMNS}) "
                           f"VALUES {placeholders(10, len(chunk))}", flatten(chunk))

        if len(chunks) == 1:
            write(self.db)  # one statement: atomic without a transaction
        elif chunks:
            self.db.transaction(write)

    @query
    def lookup(self, user: str, host: str, *, with_jid: str | None = None,
               start: int | None = None, end: int | None = None, text: str | None = None,
               after: int | None = None, before: int | None = None, last: bool = False,
               offset: int = 0, limit: int = 50, count: bool = False) -> Page:
        """A page of the archive.

        Filters: ``with_jid`` (bare: any resource of it; full: that resource),
        ``start``/``end`` (µs since the epoch, included), ``text`` (a substring of
        ``search_body``). Paging (XEP-0059): ``after`` an id (forward), ``before`` an
        id or ``last`` (backward: the newest ``limit`` before it), skipping ``offset``
        messages first in the direction of paging, at most ``limit`` messages.
        ``count``: also return the RSM count and index (two more queries)."""
        archive = self._existing_id(user, host)
        if archive is None:
            return Page([], True, 0 if count else None, None)
        conditions, params = _filters(archive, with_jid, start, end, text)
        backward = last or before is not None
        page_conditions, page_params = list(conditions), list(params)
        _where(page_conditions, page_params, "id > ?", after)
        _where(page_conditions, page_params, "id < ?", before)
        order = "DESC" if backward else "ASC"
        sql = (f"SELECT {_READ_COLUMNS} FROM mam_message WHERE {' AND '.join(page_conditions)}"
               f" ORDER BY id {order} LIMIT ? OFFSET ?")

        def read(tx: Transaction) -> Page:
            rows = tx.query(sql, (*page_params, limit + 1, offset))
            complete = len(rows) <= limit
            rows = rows[:limit]
            if backward:
                rows.reverse()
            messages = [_message(user, host, row) for row in rows]
            if not count:
                return Page(messages, complete)
            where = " AND ".join(conditions)
            total = tx.query(f"SELECT COUNT(*) FROM mam_message WHERE {where}", params)[0][0]
            index = None
            if messages:
                index = tx.query(f"SELECT COUNT(*) FROM mam_message WHERE {where} AND id < ?",
                                 (*params, messages[0].id))[0][0]
            return Page(messages, complete, total, index)

        return self.db.transaction(read) if count else read(self.db)

    @query
    def get_prefs(self, user: str, host: str) -> MamPrefs | None:
        """The user's archiving preferences, None if never set."""
        archive = self._existing_id(user, host)
        rows = [] if archive is None else self.db.query(
            "SELECT remote_jid, behaviour FROM mam_config WHERE user_id = ?", (archive,))
        default = None
        always, never = [], []
        for jid, letter in rows:
            behaviour = _BEHAVIOUR_OF[letter.strip()]
            if jid == "":
                default = behaviour
            else:
                (always if behaviour == "always" else never).append(jid)
        if default is None:
            return None
        return MamPrefs(default, tuple(sorted(always)), tuple(sorted(never)))

    @query
    def set_prefs(self, user: str, host: str, prefs: MamPrefs) -> None:
        """Replace the user's archiving preferences (a JID in both lists is never
        archived)."""
        archive = self._archive_id(user, host)
        never = set(prefs.never)
        rows = [(archive, "", BEHAVIOURS[prefs.default])]
        rows += [(archive, jid, "A") for jid in sorted(set(prefs.always) - never)]
        rows += [(archive, jid, "N") for jid in sorted(never)]

        def write(tx: Transaction) -> None:
            tx.execute("DELETE FROM mam_config WHERE user_id = ?", (archive,))
            tx.execute_many("INSERT INTO mam_config (user_id, remote_jid, behaviour) "
                            "VALUES (?, ?, ?)", rows)

        self.db.transaction(write)

    @query
    def get_behaviour(self, user: str, host: str, remote_jid: str) -> str | None:
        """Whether to archive a message with ``remote_jid`` (full or bare): the
        behaviour set for that JID, else for its bare JID, else the default; None when
        the user set no preferences."""
        archive = self._existing_id(user, host)
        if archive is None:
            return None
        bare = remote_jid.partition("/")[0]
        rows = dict(self.db.query(
            "SELECT remote_jid, behaviour FROM mam_config "
            "WHERE user_id = ? AND remote_jid IN (?, ?, '')", (archive, remote_jid, bare)))
        for jid in (remote_jid, bare, ""):
            if jid in rows:
                return _BEHAVIOUR_OF[rows[jid].strip()]
        return None

    @query
    def remove_user(self, user: str, host: str) -> None:
        """Delete the user's archive and preferences (see the module docstring)."""
        archive = self._existing_id(user, host)
        if archive is None:
            return

        def write(tx: Transaction) -> None:
            tx.execute("DELETE FROM mam_message WHERE user_id = ?", (archive,))
            tx.execute("DELETE FROM mam_config WHERE user_id = ?", (archive,))

        self.db.transaction(write)

    def _archive_id(self, user: str, host: str) -> int:
        archive = self._existing_id(user, host)
        if archive is None:
            self.db.execute("INSERT INTO mam_server_user (server, user_name) VALUES (?, ?) "
                            "ON CONFLICT (server, user_name) DO NOTHING", (host, user))
            archive = self._existing_id(user, host)
            assert archive is not None
        return archive

    def _existing_id(self, user: str, host: str) -> int | None:
        key = (host, user)
        archive = self._ids.get(key)
        if archive is None:
            rows = self.db.query("SELECT id FROM mam_server_user "
                                 "WHERE server = ? AND user_name = ?", key)
            if rows:
                archive = self._ids[key] = rows[0][0]
        return archive


def _split_jid(jid: str) -> tuple[str, str]:
    bare, _, resource = jid.partition("/")
    return bare, resource


def _filters(archive: int, with_jid: str | None, start: int | None, end: int | None,
             text: str | None) -> tuple[list[str], list[Any]]:
    conditions, params = ["user_id = ?"], [archive]
    if with_jid is not None:
        bare, resource = _split_jid(with_jid)
        _where(conditions, params, "remote_bare_jid = ?", bare)
        _where(conditions, params, "remote_resource = ?",
               resource if "/" in with_jid else None)
    low, high = id_range(start, end)
    _where(conditions, params, "id >= ?", low)
    _where(conditions, params, "id <= ?", high)
    _where(conditions, params, "search_body LIKE ? ESCAPE '!'",
           f"%{escape_like(text)}%" if text else None)
    return conditions, params


def _where(conditions: list[str], params: list[Any], condition: str, value: Any) -> None:
    """Add ``condition`` on ``value`` unless ``value`` is None."""
    if value is not None:
        conditions.append(condition)
        params.append(value)


def _message(user: str, host: str, row: tuple[Any, ...]) -> ArchivedMessage:
    (id_, from_jid, bare, resource, direction, packet, search_body, origin_id,
     is_groupchat) = row
    return ArchivedMessage(
        id_, user, host, f"{bare}/{resource}" if resource else bare, from_jid,
        _DIRECTION_OF[direction.strip()], bytes(packet), origin_id, search_body,
        bool(is_groupchat))


# -- the batch writer ----------------------------------------------------------------------


@dataclass
class WriterStatistics:
    """What a :class:`BatchWriter` has done: messages waiting, statements' batches
    written, messages stored and messages failed."""

    pending: int = 0
    batches: int = 0
    stored: int = 0
    failed: int = 0


@dataclass
class _Queue:
    items: list[tuple[ArchivedMessage, Future[int]]] = field(default_factory=list)
    submitted: int = 0  # messages accepted so far
    taken: int = 0  # of those, taken off the queue to be written
    resolved: int = 0  # of those, with an outcome
    flush_to: int = 0  # write without waiting until `taken` reaches this
    deadline: float | None = None  # when the oldest waiting message must be written


class BatchWriter:
    """Writes the messages of many sessions to an :class:`ArchiveStore`, many per
    statement, on a thread of its own.

    A message is written once ``max_batch`` messages wait or ``flush_interval`` seconds
    after the oldest waiting one arrived, whichever comes first. :meth:`submit` returns
    a :class:`concurrent.futures.Future`: its result is the message's id once stored;
    its exception the :class:`StorageError` that kept it from being stored
    (:class:`StorageUnavailable` when the database is unreachable, when more than
    ``max_pending`` messages wait, or after :meth:`close`). When a batch fails for
    another reason than an unreachable database, its messages are written one by one,
    so one bad message fails alone. Callbacks added to the futures run on the writer's
    thread: hand them to the loop (``call_soon_threadsafe``).

    ``clock``: seconds for the deadlines (monotonic; injected by tests)."""

    def __init__(self, archive: ArchiveStore, *, max_batch: int = 100,
                 flush_interval: float = 0.01, max_pending: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_batch < 1 or max_pending < max_batch:
            raise ValueError("expected 1 <= max_batch <= max_pending")
        self.archive = archive
        self.max_batch, self.flush_interval, self.max_pending = (
            max_batch, flush_interval, max_pending)
        self._clock = clock
        self._queue = _Queue()
        self._stats = WriterStatistics()
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="mam-batch-writer",
                                        daemon=True)
        self._thread.start()

    def submit(self, message: ArchivedMessage) -> Future[int]:
        """Queue ``message`` for writing; its future says how that went."""
        future: Future[int] = Future()
        with self._cond:
            queue = self._queue
            if self._closed:
                future.set_exception(StorageUnavailable("the archive writer is closed"))
            elif len(queue.items) >= self.max_pending:
                future.set_exception(StorageUnavailable(
                    f"the archive writer has {len(queue.items)} messages waiting"))
            else:
                queue.items.append((message, future))
                queue.submitted += 1
                if queue.deadline is None:
                    queue.deadline = self._clock() + self.flush_interval
                if len(queue.items) >= self.max_batch:
                    self._cond.notify_all()
                elif len(queue.items) == 1:
                    self._cond.notify_all()  # a new deadline to wait for
        return future

    def flush(self, timeout: float | None = None) -> bool:
        """Write every message submitted so far without waiting for the deadline, and
        wait until each has its outcome; False if ``timeout`` seconds passed first."""
        with self._cond:
            queue = self._queue
            target = queue.submitted
            queue.flush_to = max(queue.flush_to, target)
            self._cond.notify_all()
            return self._cond.wait_for(lambda: queue.resolved >= target, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Write what is waiting, then stop the thread; later submissions fail."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def statistics(self) -> WriterStatistics:
        with self._cond:
            return WriterStatistics(len(self._queue.items), self._stats.batches,
                                    self._stats.stored, self._stats.failed)

    def _due(self) -> bool:
        queue = self._queue
        return bool(queue.items) and (
            len(queue.items) >= self.max_batch or self._closed
            or queue.taken < queue.flush_to
            or (queue.deadline is not None and self._clock() >= queue.deadline))

    def _run(self) -> None:
        queue = self._queue
        while True:
            with self._cond:
                while not self._due():
                    if self._closed and not queue.items:
                        return
                    wait = None if queue.deadline is None else max(
                        0.0, queue.deadline - self._clock())
                    self._cond.wait(wait)
                batch = queue.items[:self.max_batch]
                del queue.items[:self.max_batch]
                queue.taken += len(batch)
                # What is left waited as long as the batch: write it without delay.
                queue.deadline = (self._clock() if queue.items else None)
            stored = self._write(batch)
            with self._cond:
                queue.resolved += len(batch)
                self._stats.batches += 1
                self._stats.stored += stored
                self._stats.failed += len(batch) - stored
                self._cond.notify_all()

    def _write(self, batch: list[tuple[ArchivedMessage, Future[int]]]) -> int:
        """Write ``batch`` and settle its futures; how many were stored."""
        try:
            self.archive.append([message for message, _ in batch])
        except StorageUnavailable as error:
            return _fail(batch, error)
        except StorageError as error:
            if len(batch) == 1:
                return _fail(batch, error)
            return sum(self._write([one]) for one in batch)
        except Exception as error:  # a bug: the senders still hear of it
            return _fail(batch, StorageError(f"archive writer: {error!r}"))
        for message, future in batch:
            future.set_result(message.id)
        return len(batch)


def _fail(batch: list[tuple[ArchivedMessage, Future[int]]], error: StorageError) -> int:
    for _, future in batch:
        future.set_exception(error)
    return 0
