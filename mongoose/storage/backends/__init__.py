"""The storage interfaces of the server's features, one module each, over a :class:`Database`.

=================  ==========================  ==============================================
module             class                       what it keeps (MongooseIM tables)
=================  ==========================  ==============================================
``accounts``       :class:`SqlAccountStore`    users and SCRAM secrets (``users``)
``roster``         :class:`RosterStore`        RFC 6121 rosters, XEP-0237 versions
                                               (``rosterusers``, ``rostergroups``,
                                               ``roster_version``,
                                               ``roster_item_version``)
``offline``        :class:`OfflineStore`       XEP-0160 offline messages
                                               (``offline_message``)
``mam``            :class:`ArchiveStore`,      XEP-0313 archive and preferences
                   :class:`BatchWriter`        (``mam_server_user``, ``mam_message``,
                                               ``mam_config``)
``private``        :class:`PrivateStore`       XEP-0049 private XML (``private_storage``)
``vcard``          :class:`VcardStore`         XEP-0054 vCards, XEP-0055 search fields
                                               (``vcard``, ``vcard_search``)
``last``           :class:`LastStore`          XEP-0012 last activity (``last``)
``privacy``        :class:`PrivacyStore`       XEP-0016 lists, XEP-0191 blocking as the
                                               list "blocking" (``privacy_list``,
                                               ``privacy_list_data``,
                                               ``privacy_default_list``)
=================  ==========================  ==============================================

Contracts shared by every backend:

- A backend is a class built on a :class:`mongoose.storage.Database` (any driver: SQLite,
  PostgreSQL, CockroachDB); it does not own it (it never closes it, except
  :class:`SqlAccountStore` when told to). The SQL is written once, with ``?`` placeholders,
  in the dialect the three share (``INSERT ... ON CONFLICT (...) DO UPDATE/NOTHING``,
  ``LIMIT ?``, ``DELETE ... RETURNING`` -- SQLite 3.35 or later); values are always
  parameters. Lists returned whole (users, roster items, list names) are sorted in
  Python, by code point, whatever the database's collation; the one text ordering done
  in SQL, vCard search results (which a limit cuts), follows the database's collation.
- Methods block: call them from the blocking pool (:mod:`otp.blocking`), never on an event
  loop. They are safe to call from several threads at once. Several statements that must
  agree run in one :meth:`Database.transaction`, retried whole on serialization failures,
  so the functions given to it have no effect outside the database.
- Users are keyed by (user, host), a localpart and domain already normalised by the caller;
  JIDs are stored as given (callers pass them normalised, bare where a bare JID is meant).
- Errors: :class:`mongoose.storage.StorageUnavailable` when the database cannot be reached
  (callers answer ``wait`` or ``internal-server-error`` and keep the session),
  :class:`mongoose.storage.StorageError` for the rest; each module adds the few outcomes
  its callers must tell apart (``AccountExists``, ``ListIsDefault``...).
- Each backend has ``remove_user(user, host)``, for account deletion.

Instrumentation: every public method marked :func:`query` emits ``storage_query``
{backend=<the module's name: "roster", "mam"...>, function=<the method>} with ``count``
(failed calls included) and, when it returns, ``time`` in µs -- MongooseIM's
``mongoose_backend:call_tracked``. The call is timed on the thread that runs it and the
event emitted through the backend's ``emit_via``: None (the default) emits on that thread,
for single-threaded users (the CLI, tests); a server sets it to its scheduler's
``call_soon``, because metric stores are only updated on the loop's thread. The series of
every method are prepared when the backend is built, so they exist (at zero) from the start.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

from mongoose import instrument
from mongoose.storage.database import Database, StorageError, Transaction

__all__ = ["Backend", "escape_like", "flatten", "placeholders", "query", "register_events",
           "require_returning", "set_user_value", "user_value"]

F = TypeVar("F", bound=Callable[..., Any])

_TIMED = {"count": "spiral", "time": "histogram"}


def register_events() -> None:
    """Register ``storage_query`` (idempotent)."""
    instrument.register("storage_query", ("backend", "function"), _TIMED)


def query(method: F) -> F:
    """Mark ``method`` of a :class:`Backend` as a query: timed, and counted in
    ``storage_query`` (see the module docstring)."""
    function = method.__name__

    @functools.wraps(method)
    def timed(self: Backend, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter_ns()
        try:
            result = method(self, *args, **kwargs)
        except BaseException:
            self._emit(function, {"count": 1})
            raise
        self._emit(function, {"count": 1, "time": (time.perf_counter_ns() - start) // 1000})
        return result

    timed._storage_query = True  # type: ignore[attr-defined]
    return timed  # type: ignore[return-value]


class Backend:
    """Base of the storage interfaces: a database, and the ``storage_query`` sinks of
    the methods marked :func:`query`. Subclasses set ``name`` (the ``backend`` label)."""

    name: ClassVar[str]
    # The methods marked @query, collected from the class and its bases.
    queries: ClassVar[tuple[str, ...]] = ()
    # How events of calls made on other threads reach the loop (module docstring).
    emit_via: Callable[..., None] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.queries = tuple(sorted({
            attr for klass in cls.__mro__ for attr, value in vars(klass).items()
            if getattr(value, "_storage_query", False)}))

    def __init__(self, db: Database) -> None:
        self.db = db
        register_events()
        self._sinks = {
            function: instrument.prepared(
                "storage_query", {"backend": self.name, "function": function})
            for function in self.queries
        }

    def _emit(self, function: str, measurements: dict[str, int]) -> None:
        sink = self._sinks[function]
        emit_via = self.emit_via
        if emit_via is None:
            sink.emit(measurements)
        else:
            emit_via(sink.emit, measurements)


def user_value(tx: Transaction, table: str, column: str, user: str, host: str) -> Any:
    """``column`` of the user's row in ``table`` (keyed by server and username), None
    if there is none. Table and column are names from the code, never input."""
    rows = tx.query(f"SELECT {column} FROM {table} WHERE server = ? AND username = ?",
                    (host, user))
    return rows[0][0] if rows else None


def set_user_value(tx: Transaction, table: str, column: str, user: str, host: str,
                   value: Any) -> None:
    """Set ``column`` of the user's row in ``table``, made if need be (an upsert)."""
    tx.execute(f"INSERT INTO {table} (server, username, {column}) VALUES (?, ?, ?) "
               f"ON CONFLICT (server, username) DO UPDATE SET {column} = excluded.{column}",
               (host, user, value))


def escape_like(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern written with ``ESCAPE '!'``."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def placeholders(columns: int, rows: int = 1) -> str:
    """``(?, ?, ?)`` for one row of ``columns`` values, comma-separated ``rows`` times."""
    row = "(" + ", ".join("?" * columns) + ")"
    return ", ".join([row] * rows)


def flatten(rows: Sequence[Sequence[Any]]) -> list[Any]:
    """The parameters of a multi-row ``VALUES`` list, row after row."""
    return [value for row in rows for value in row]


def require_returning(db: Database) -> None:
    """Refuse a SQLite too old for ``DELETE ... RETURNING`` (before 3.35, 2021), which
    the backends that take rows out atomically rely on."""
    if db.driver == "sqlite" and sqlite3.sqlite_version_info < (3, 35):
        raise StorageError(f"SQLite {sqlite3.sqlite_version} has no RETURNING: "
                           "3.35 or later is needed")
