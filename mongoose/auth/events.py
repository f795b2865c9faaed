"""The instrumentation events of authentication and the account store (after MongooseIM's
``ejabberd_auth`` and backend events).

Registered when this module is imported (and again by :func:`setup`, a no-op then);
emitted by :mod:`mongoose.auth.sasl` and :mod:`mongoose.auth.accounts`. Both are rare
next to stanzas (one of each per login), so they are logged at info and debug.

=====================  ======================  ==========================================
event                  labels                  metrics
=====================  ======================  ==========================================
``auth_authorize``     ``host_type``           ``count`` (spiral): one per SASL exchange
                                               that got as far as checking credentials,
                                               whatever the outcome; ``time``
                                               (histogram, µs): the server's share of
                                               it, the account lookup and the password
                                               or proof check (not the client's round
                                               trips). Logged at info.
``storage_query``      ``backend``,            ``count`` (spiral): one per call of a
                       ``function``            public method of a storage backend, failed
                                               ones included; ``time`` (histogram, µs):
                                               the duration of each successful one.
                                               ``backend`` is the interface
                                               (``accounts`` for the account store),
                                               ``function`` the method (``get_secrets``,
                                               ``exists``, ``register`` ...). Logged at
                                               debug. Registered and emitted by
                                               :mod:`mongoose.storage.backends`.
=====================  ======================  ==========================================

The store's methods run on blocking threads (:mod:`otp.blocking`); metric stores are
updated on the loop's thread only, so the store times a call where it runs and hands the
emission to the loop (see :mod:`mongoose.storage.backends`).
"""

from __future__ import annotations

from collections.abc import Iterable

from mongoose import instrument
from mongoose.instrument import Sink
from mongoose.storage.backends import register_events as register_storage_events

__all__ = ["authorize_sink", "register", "setup"]

TIMED = {"count": "spiral", "time": "histogram"}


def register() -> None:
    """Register the events (idempotent: a second call with the same specs is a no-op)."""
    instrument.register("auth_authorize", ("host_type",), TIMED, log_level="info")
    register_storage_events()


register()

# host -> the auth_authorize sink of that host (filled by setup, or on first use)
_authorize: dict[str, Sink] = {}


def setup(hosts: Iterable[str]) -> None:
    """Prepare the sinks of every host, so that each series exists (at zero) from the
    start; forget sinks prepared before (a test may have reset the registry)."""
    register()
    _authorize.clear()
    for host in hosts:
        authorize_sink(host)


def authorize_sink(host: str) -> Sink:
    sink = _authorize.get(host)
    if sink is None:
        register()  # after a test's instrument.reset(), say
        sink = _authorize[host] = instrument.prepared("auth_authorize", {"host_type": host})
    return sink
