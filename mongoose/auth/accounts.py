"""Account storage: who exists on which host, and their SCRAM secrets.

`AccountStore` is the interface the rest of the server uses; `SqliteAccountStore` is the
embedded implementation (`[auth] methods = ["internal"]`), one SQLite file under
`general.data_dir`. A PostgreSQL store can implement the same protocol later.

Contracts:

- Methods block. Session code calls them through the blocking pool (`otp.blocking`), never
  on an event loop; they are safe to call from several threads at once.
- Accounts are keyed by (host, user). `user` is a localpart already normalised by the
  caller (`normalize_user`); the store keeps it as given, rejecting only what can never
  be a localpart (empty, '@', '/').
- Passwords are never stored: `register`, `set_password` and `register_many` derive SCRAM
  secrets (`mongoose.auth.scram`) with the store's hashes and iteration count; the
  derivation is most of their cost (about 20 ms for the three hashes at 10,000
  iterations).
- `register_many` is for benchmarks: all accounts or none, in one transaction, optionally
  with a lower iteration count. Clients that follow RFC 7677 (scramp among them) refuse a
  SCRAM iteration count below 4096, so accounts made with fewer log in with PLAIN.

Sharing the file: the database runs in WAL mode with a busy timeout, so several worker
processes of a node and the `mongoose account` CLI can use it at once: readers never
wait, a writer waits up to `BUSY_TIMEOUT_MS` for another writer. Each process must open
its own store (a SQLite connection must not cross a fork). The directory is created mode
0700 and the file 0600: the secrets are not passwords, but they allow offline guessing.

Instrumentation: every public method of `SqliteAccountStore` (not `close`) emits
`storage_query` {backend="sqlite", function=<method>} with `count` and, when it returns,
`time` in µs (see `mongoose.auth.events`). The call is timed on the thread that runs it;
the event is emitted through `SqliteAccountStore.emit_via`: None (the default) emits on
that same thread, for single-threaded users (the CLI, tests); a server sets it to its
scheduler's `call_soon`, so that a call made on a blocking thread is counted on the loop,
before the caller's future resolves there.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from mongoose import instrument
from mongoose.auth import events, scram
from mongoose.auth.scram import ScramSecret

if TYPE_CHECKING:
    from mongoose.config import Config

STORE_FILE = "mongoose.db"
BUSY_TIMEOUT_MS = 10_000
# RFC 7622 §3.3: a localpart is at most 1023 octets.
MAX_LOCALPART_BYTES = 1023
# RFC 7622 §3.3.1 forbids these in a localpart; whitespace is refused separately.
_FORBIDDEN = frozenset("\"&'/:<>@")


class AccountError(Exception):
    """Base of the store's errors about a particular account, `jid` (user@host)."""

    problem = "cannot be used"

    def __init__(self, jid: str):
        super().__init__(f"the account {jid} {self.problem}")
        self.jid = jid


class AccountExists(AccountError):
    """`register` of a (user, host) that already exists."""

    problem = "exists already"


class NoSuchAccount(AccountError):
    """`set_password` of a (user, host) that does not exist."""

    problem = "does not exist"


class InvalidUser(ValueError):
    """Text that is not a valid XMPP localpart."""


def normalize_user(text: str) -> str:
    """The canonical form of the localpart `text`: case-folded, then NFC.

    This approximates PRECIS UsernameCaseMapped (RFC 8265) closely enough for
    comparison: "Juliet" and "juliet" are one account. Raises `InvalidUser` for an empty
    localpart, one too long, or one with characters RFC 7622 forbids (`"&'/:<>@`),
    whitespace or control characters.
    """
    user = unicodedata.normalize("NFC", text.casefold())
    if not user:
        raise InvalidUser("the user name is empty")
    if len(user.encode("utf-8")) > MAX_LOCALPART_BYTES:
        raise InvalidUser(f"the user name is longer than {MAX_LOCALPART_BYTES} bytes")
    for char in user:
        if char in _FORBIDDEN or char.isspace() or unicodedata.category(char)[0] == "C":
            raise InvalidUser(f"the user name may not contain {char!r}")
    return user


class AccountStore(Protocol):
    """The accounts of all hosts of a node. Blocking; safe to share between threads."""

    def register(self, user: str, host: str, password: str) -> None:
        """Create the account; `AccountExists` if it is there already."""
        ...

    def unregister(self, user: str, host: str) -> bool:
        """Remove the account; False if there was none."""
        ...

    def set_password(self, user: str, host: str, password: str) -> None:
        """Replace the account's secrets; `NoSuchAccount` if there is no account."""
        ...

    def get_secrets(self, user: str, host: str) -> dict[str, ScramSecret] | None:
        """The account's SCRAM secrets by hash name, None if there is no account."""
        ...

    def exists(self, user: str, host: str) -> bool: ...

    def list_users(self, host: str) -> list[str]:
        """The users of `host`, sorted."""
        ...

    def count(self, host: str) -> int: ...

    def register_many(
        self, host: str, accounts: Iterable[tuple[str, str]], *, iterations: int | None = None
    ) -> int:
        """Create all (user, password) accounts or none (`AccountExists` naming the
        first already there); `iterations` overrides the store's count. Returns how many
        were created."""
        ...

    def close(self) -> None: ...


F = TypeVar("F", bound=Callable[..., Any])

BACKEND = "sqlite"  # the storage_query label of this store
# The instrumented methods, whose storage_query series are prepared with each store.
_QUERIES: list[str] = []


def _query(method: F) -> F:
    """Time ``method`` and emit ``storage_query`` for it (see the module docstring)."""
    function = method.__name__

    @functools.wraps(method)
    def timed(self: SqliteAccountStore, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter_ns()
        try:
            result = method(self, *args, **kwargs)
        except BaseException:
            self._emit(function, {"count": 1})
            raise
        self._emit(function, {"count": 1, "time": (time.perf_counter_ns() - start) // 1000})
        return result

    _QUERIES.append(function)
    return timed  # type: ignore[return-value]


class SqliteAccountStore(AccountStore):
    """`AccountStore` in one SQLite file (see the module docstring for sharing it).

    One connection per store, behind a lock: every query is a primary-key lookup or a
    short scan that takes microseconds, so threads queueing for the connection cost
    less than the connections they would each need.

    ``emit_via``: how the ``storage_query`` events of calls made on other threads reach
    the thread that owns the metrics (see the module docstring).
    """

    emit_via: Callable[..., None] | None = None

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        hashes: Iterable[str] = tuple(scram.HASHES),
        iterations: int = 10_000,
    ) -> None:
        self.path = Path(path)
        self.hashes = tuple(hashes)
        self.iterations = iterations
        self._lock = threading.Lock()
        self._db = _connect(self.path)
        # One sink per instrumented method, prepared now: every series exists from the start.
        events.register()
        self._sinks = {
            name: instrument.prepared("storage_query", {"backend": BACKEND, "function": name})
            for name in _QUERIES
        }

    def _emit(self, function: str, measurements: dict[str, int]) -> None:
        sink = self._sinks[function]
        emit_via = self.emit_via
        if emit_via is None:
            sink.emit(measurements)
        else:
            emit_via(sink.emit, measurements)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteAccountStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @_query
    def register(self, user: str, host: str, password: str) -> None:
        _check_key(user, host)
        details = scram.encode_secrets(self._secrets(password, self.iterations))
        try:
            with self._write() as db:
                db.execute(
                    "INSERT INTO users (username, server, pass_details) VALUES (?, ?, ?)",
                    (user, host, details),
                )
        except sqlite3.IntegrityError:
            raise AccountExists(f"{user}@{host}") from None

    @_query
    def unregister(self, user: str, host: str) -> bool:
        with self._write() as db:
            cursor = db.execute(
                "DELETE FROM users WHERE server = ? AND username = ?", (host, user)
            )
        return cursor.rowcount > 0

    @_query
    def set_password(self, user: str, host: str, password: str) -> None:
        details = scram.encode_secrets(self._secrets(password, self.iterations))
        with self._write() as db:
            cursor = db.execute(
                "UPDATE users SET pass_details = ? WHERE server = ? AND username = ?",
                (details, host, user),
            )
        if cursor.rowcount == 0:
            raise NoSuchAccount(f"{user}@{host}")

    @_query
    def get_secrets(self, user: str, host: str) -> dict[str, ScramSecret] | None:
        row = self._one(
            "SELECT pass_details FROM users WHERE server = ? AND username = ?", (host, user)
        )
        return None if row is None else scram.decode_secrets(row[0])

    @_query
    def exists(self, user: str, host: str) -> bool:
        query = "SELECT 1 FROM users WHERE server = ? AND username = ?"
        return self._one(query, (host, user)) is not None

    @_query
    def list_users(self, host: str) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT username FROM users WHERE server = ? ORDER BY username", (host,)
            ).fetchall()
        return [row[0] for row in rows]

    @_query
    def count(self, host: str) -> int:
        row = self._one("SELECT COUNT(*) FROM users WHERE server = ?", (host,))
        return row[0] if row else 0

    @_query
    def register_many(
        self, host: str, accounts: Iterable[tuple[str, str]], *, iterations: int | None = None
    ) -> int:
        # Derive before taking the write lock: other writers should not wait for PBKDF2.
        count = iterations or self.iterations
        rows = []
        for user, password in accounts:
            _check_key(user, host)
            rows.append((user, host, scram.encode_secrets(self._secrets(password, count))))
        try:
            with self._write() as db:
                db.executemany(
                    "INSERT INTO users (username, server, pass_details) VALUES (?, ?, ?)", rows
                )
        except sqlite3.IntegrityError:
            raise AccountExists(self._first_existing(host, rows)) from None
        return len(rows)

    def _secrets(self, password: str, iterations: int) -> dict[str, ScramSecret]:
        return scram.make_secrets(password, iterations, self.hashes)

    def _first_existing(self, host: str, rows: list[tuple[str, str, str]]) -> str:
        """Which account of a failed bulk insert was already there (or repeated)."""
        seen: set[str] = set()
        for user, _, _ in rows:
            if user in seen or self.exists(user, host):
                return f"{user}@{host}"
            seen.add(user)
        return f"(one of them)@{host}"

    def _one(self, query: str, params: tuple[str, ...]) -> tuple | None:
        with self._lock:
            return self._db.execute(query, params).fetchone()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction. BEGIN IMMEDIATE takes the write lock at once, so a busy
        database is waited for (busy timeout) instead of failing halfway."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


def open_store(config: Config) -> SqliteAccountStore:
    """The node's account store: `mongoose.db` under `general.data_dir`."""
    password = config.auth.password
    return SqliteAccountStore(
        config.data_path(STORE_FILE),
        hashes=password.hash,
        iterations=password.scram_iterations,
    )


def _check_key(user: str, host: str) -> None:
    if not user or "@" in user or "/" in user:
        raise InvalidUser(f"not a user name: {user!r}")
    if not host:
        raise ValueError("the host is empty")


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Create the file ourselves for its mode; SQLite gives its -wal and -shm files the
    # same permissions as the database file.
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    # isolation_level=None: we issue BEGIN/COMMIT ourselves (see `_write`).
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA journal_mode = WAL")
        # NORMAL is durable against a crash of the process; under WAL only a power loss
        # can lose the last commits.
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(_schema())
    except BaseException:
        db.close()
        raise
    return db


def _schema() -> str:
    return resources.files("mongoose.auth").joinpath("accounts.sql").read_text("utf-8")
