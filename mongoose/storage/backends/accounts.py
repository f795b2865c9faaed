"""Accounts: who exists on which host, and their SCRAM secrets (MongooseIM's ``users``).

:class:`AccountStore` is the interface the rest of the server uses (SASL, the CLI, in-band
registration); :class:`SqlAccountStore` keeps it in any :class:`Database`: the embedded
SQLite file (``[auth] methods = ["internal"]``) or the configured pool (``"rdbms"``).
:mod:`mongoose.auth.accounts` opens the right one for a config (``open_store``).

Contracts (besides the package's, see :mod:`mongoose.storage.backends`):

- Accounts are keyed by (user, host). ``user`` is a localpart already normalised by the
  caller (``mongoose.auth.accounts.normalize_user``); the store keeps it as given,
  rejecting only what can never be a localpart (empty, '@', '/').
- Passwords are never stored: ``register``, ``set_password`` and ``register_many``
  derive SCRAM secrets (:mod:`mongoose.auth.scram`) with the store's hashes and
  iteration count, before any statement runs (other writers do not wait for PBKDF2,
  about 20 ms for the three hashes at 10,000 iterations). The ``password`` column stays
  empty; ``pass_details`` holds the secrets.
- ``register_many`` is for benchmarks: all accounts or none, in one transaction,
  optionally with a lower iteration count. Clients that follow RFC 7677 (scramp among
  them) refuse a SCRAM iteration count below 4096, so accounts made with fewer log in
  with PLAIN.
- ``list_users`` is sorted by code point whatever the database's collation.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from mongoose.storage.backends import Backend, query
from mongoose.storage.database import ConstraintViolation, Database

if TYPE_CHECKING:
    from mongoose.auth.scram import ScramSecret

__all__ = ["AccountError", "AccountExists", "AccountStore", "InvalidUser", "NoSuchAccount",
           "SqlAccountStore"]


class AccountError(Exception):
    """Base of the store's errors about a particular account, ``jid`` (user@host)."""

    problem = "cannot be used"

    def __init__(self, jid: str):
        super().__init__(f"the account {jid} {self.problem}")
        self.jid = jid


class AccountExists(AccountError):
    """``register`` of a (user, host) that already exists."""

    problem = "exists already"


class NoSuchAccount(AccountError):
    """``set_password`` of a (user, host) that does not exist."""

    problem = "does not exist"


class InvalidUser(ValueError):
    """Text that is not a valid XMPP localpart."""


class AccountStore(Protocol):
    """The accounts of all hosts of a node. Blocking; safe to share between threads."""

    def register(self, user: str, host: str, password: str) -> None:
        """Create the account; ``AccountExists`` if it is there already."""
        ...

    def unregister(self, user: str, host: str) -> bool:
        """Remove the account; False if there was none."""
        ...

    def set_password(self, user: str, host: str, password: str) -> None:
        """Replace the account's secrets; ``NoSuchAccount`` if there is no account."""
        ...

    def get_secrets(self, user: str, host: str) -> dict[str, ScramSecret] | None:
        """The account's SCRAM secrets by hash name, None if there is no account."""
        ...

    def exists(self, user: str, host: str) -> bool: ...

    def list_users(self, host: str) -> list[str]:
        """The users of ``host``, sorted."""
        ...

    def count(self, host: str) -> int: ...

    def register_many(
        self, host: str, accounts: Iterable[tuple[str, str]], *, iterations: int | None = None
    ) -> int:
        """Create all (user, password) accounts or none (``AccountExists`` naming the
        first already there); ``iterations`` overrides the store's count. Returns how many
        were created."""
        ...

    def close(self) -> None: ...


_INSERT = ('INSERT INTO users (username, server, "password", pass_details) '
           "VALUES (?, ?, '', ?)")


class SqlAccountStore(Backend):
    """:class:`AccountStore` in the ``users`` table of ``db``.

    ``owns_db``: :meth:`close` closes ``db`` too (the store opened it for itself);
    otherwise the database is shared and its owner closes it.
    """

    name = "accounts"

    def __init__(self, db: Database, *, hashes: Iterable[str] | None = None,
                 iterations: int = 10_000, owns_db: bool = False) -> None:
        super().__init__(db)
        self._scram = _scram()
        self.hashes = tuple(hashes) if hashes is not None else tuple(self._scram.HASHES)
        self.iterations = iterations
        self.owns_db = owns_db

    def close(self) -> None:
        if self.owns_db:
            self.db.close()

    def __enter__(self) -> SqlAccountStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @query
    def register(self, user: str, host: str, password: str) -> None:
        _check_key(user, host)
        details = self._details(password, self.iterations)
        changed = self.db.execute(
            _INSERT + " ON CONFLICT (server, username) DO NOTHING",
            (user, host, details))
        if changed == 0:
            raise AccountExists(f"{user}@{host}")

    @query
    def unregister(self, user: str, host: str) -> bool:
        return self._delete(user, host)

    @query
    def set_password(self, user: str, host: str, password: str) -> None:
        details = self._details(password, self.iterations)
        changed = self.db.execute(
            "UPDATE users SET pass_details = ? WHERE server = ? AND username = ?",
            (details, host, user))
        if changed == 0:
            raise NoSuchAccount(f"{user}@{host}")

    @query
    def get_secrets(self, user: str, host: str) -> dict[str, ScramSecret] | None:
        rows = self.db.query(
            "SELECT pass_details FROM users WHERE server = ? AND username = ?", (host, user))
        return self._scram.decode_secrets(rows[0][0]) if rows else None

    @query
    def exists(self, user: str, host: str) -> bool:
        return bool(self.db.query(
            "SELECT 1 FROM users WHERE server = ? AND username = ?", (host, user)))

    @query
    def list_users(self, host: str) -> list[str]:
        rows = self.db.query("SELECT username FROM users WHERE server = ?", (host,))
        return sorted(row[0] for row in rows)

    @query
    def count(self, host: str) -> int:
        return self.db.query("SELECT COUNT(*) FROM users WHERE server = ?", (host,))[0][0]

    @query
    def register_many(
        self, host: str, accounts: Iterable[tuple[str, str]], *, iterations: int | None = None
    ) -> int:
        count = iterations or self.iterations
        rows = []
        for user, password in accounts:
            _check_key(user, host)
            rows.append((user, host, self._details(password, count)))
        try:
            self.db.transaction(lambda tx: tx.execute_many(_INSERT, rows))
        except ConstraintViolation:
            existing = self._first_existing(host, rows)
            if existing is None:
                raise
            raise AccountExists(existing) from None
        return len(rows)

    @query
    def remove_user(self, user: str, host: str) -> None:
        """Account deletion, as every backend has it: :meth:`unregister` without the
        answer."""
        self._delete(user, host)

    def _delete(self, user: str, host: str) -> bool:
        return self.db.execute(
            "DELETE FROM users WHERE server = ? AND username = ?", (host, user)) > 0

    def _details(self, password: str, iterations: int) -> str:
        scram = self._scram
        return scram.encode_secrets(scram.make_secrets(password, iterations, self.hashes))

    def _first_existing(self, host: str, rows: list[tuple[str, str, str]]) -> str | None:
        """Which account of a failed bulk insert was already there (or repeated)."""
        seen: set[str] = set()
        for user, _, _ in rows:
            if user in seen or self.exists(user, host):
                return f"{user}@{host}"
            seen.add(user)
        return None


def _scram() -> ModuleType:
    # Imported when a store is made: mongoose.auth's package imports
    # mongoose.auth.accounts, which imports this module, so importing mongoose.auth at
    # the top here would be circular.
    from mongoose.auth import scram

    return scram


def _check_key(user: str, host: str) -> None:
    if not user or "@" in user or "/" in user:
        raise InvalidUser(f"not a user name: {user!r}")
    if not host:
        raise ValueError("the host is empty")
