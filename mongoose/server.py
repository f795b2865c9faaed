"""What every part of a worker shares: the config, the database, the account store, TLS
contexts.

:func:`setup` runs once when a worker's tree starts (``supervisors.worker``), before any
session; :func:`current` is then what sessions, routers and modules read. Kept as one
small object so tests can build one for a process of their own. It also prepares the
instrumentation sinks of every configured host (:mod:`mongoose.c2s_events`,
:mod:`mongoose.auth.events`), so that their series exist from the start.

The database: one per process (:func:`mongoose.storage.pools.open_process_database`),
opened here and closed by :func:`close` (when ``xmpp_services`` stops); the account
store, and the later backends, are built on it (``Server.db``). A configured pool's
database opens in the background without blocking the loop, and its calls fail with
``StorageUnavailable`` until it is open: the node serves at once, logins get SASL
``temporary-auth-failure`` meanwhile (see :mod:`mongoose.storage.pools`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

from mongoose.config import C2sListener, Config

__all__ = ["Server", "close", "current", "setup"]


@dataclass
class Server:
    config: Config
    store: Any  # mongoose.auth.accounts.AccountStore, on db (or its own SQLite file)
    hosts: frozenset[str]
    tls_contexts: dict[int, ssl.SSLContext] = field(default_factory=dict)  # by listener index
    # RFC 5929 tls-server-end-point data of each listener's certificate, by listener index
    end_points: dict[int, bytes | None] = field(default_factory=dict)
    throttle: Any = None  # mongoose.auth.sasl.FailureThrottle
    # Key for the fake SCRAM salts of unknown users: the same on every worker and node of
    # the cluster and across restarts (derived from the cluster keys), so asking twice
    # cannot tell a fake salt from a real one.
    fake_salt_key: bytes | None = None
    db: Any = None  # mongoose.storage.Database: the process's one

    def close(self) -> None:
        """Close the account store and the database."""
        self.store.close()
        if self.db is not None:
            self.db.close()

    def tls_context(self, index: int) -> ssl.SSLContext | None:
        return self.tls_contexts.get(index)


_current: Server | None = None


def certificate_paths(config: Config, listener: C2sListener) -> tuple[str, str]:
    """The certificate and key files of ``listener``: configured, or the generated ones."""
    if listener.tls.certfile:
        return str(config.data_path(listener.tls.certfile)), str(
            config.data_path(listener.tls.keyfile))
    from mongoose import tls

    cert, key = tls.ensure_certificate(config.data_path("certs"), list(config.general.hosts))
    return str(cert), str(key)


def setup(config: Config) -> Server:
    """Build this process's server context from ``config``."""
    global _current
    from mongoose import c2s_events, router
    from mongoose import tls as tls_mod
    from mongoose.auth import accounts, sasl
    from mongoose.auth import events as auth_events
    from mongoose.storage import pools
    from otp import scheduler

    contexts, end_points = {}, {}
    for i, listener in enumerate(config.listen.c2s):
        if listener.tls.mode != "none":
            cert, key = certificate_paths(config, listener)
            contexts[i] = tls_mod.server_context(cert, key)
            end_points[i] = tls_mod.certificate_end_point(cert)
    failure = config.auth.failure_delay
    # Every series of the sessions' and the store's events exists from now on, at zero.
    c2s_events.setup(config.general.hosts)
    auth_events.setup(config.general.hosts)
    close()  # a restarted xmpp_services: the last one's database is not used again
    db = pools.open_process_database(config)
    try:
        store = accounts.store_on(config, db)
    except BaseException:
        db.close()
        raise
    # The store runs on blocking threads; its events are emitted on this process's loop.
    store.emit_via = scheduler.current().call_soon
    _current = Server(
        config=config,
        store=store,
        db=db,
        hosts=frozenset(config.general.hosts),
        tls_contexts=contexts,
        end_points=end_points,
        throttle=sasl.FailureThrottle(failure.base_ms, failure.max_ms, failure.window_s),
        fake_salt_key=_salt_key(config),
    )
    router.configure(config.general.hosts)
    return _current


def _salt_key(config: Config) -> bytes | None:
    import hashlib

    try:
        secret = config.data_path(config.cluster.keys_file).read_bytes()
    except OSError:
        return None  # a random key per process: still no leak from one worker
    return hashlib.sha256(b"mongoose fake SCRAM salt\0" + secret).digest()


def close() -> None:
    """Close this process's database and account store (``xmpp_services`` stopping);
    :func:`current` fails afterwards."""
    global _current
    server, _current = _current, None
    if server is not None:
        server.close()


def current() -> Server:
    if _current is None:
        raise RuntimeError("the server context is not set up in this process")
    return _current
