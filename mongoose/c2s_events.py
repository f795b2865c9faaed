"""The instrumentation events of client sessions and routing (names, labels and metrics
after MongooseIM's ``mongoose_c2s``, ``mongoose_instrument_xmpp``, ``ejabberd_sm`` and
``mongoose_router``).

Registered when this module is imported, in every process that runs sessions; emitted by
:mod:`mongoose.c2s` and :mod:`mongoose.router`. The log handler writes logins, logouts and
failures at info, the per-stanza and per-read events at debug (a log handler at info then
gets none of them, and sessions skip counting the elements). Authentication and the
account store have theirs in :mod:`mongoose.auth.events`.

==========================  =====================  ======================================
event                       labels                 metrics
==========================  =====================  ======================================
``sm_session``              ``host_type``          ``logins``, ``logouts`` (spirals): one
                                                   per session bound or closed; ``count``
                                                   (counter): +1 at login, -1 at logout,
                                                   the sessions of this process. Info.
``c2s_auth_failed``         ``host_type``          ``count`` (spiral): one per failed SASL
                                                   authentication. Info.
``xmpp_element_in``         ``connection_type``,   one per element a client sends after
                            ``host_type``          login: ``count``; for a stanza also
                                                   ``stanza_count`` and one of
                                                   ``message_count``, ``iq_count``,
                                                   ``presence_count`` or, for type='error',
                                                   ``error_count`` and one of
                                                   ``message_error_count``,
                                                   ``iq_error_count``,
                                                   ``presence_error_count`` (spirals);
                                                   ``byte_size`` (histogram): the
                                                   element's size serialized.
``xmpp_element_out``        same                   the same, per element written to a
                                                   client after login (a stream error
                                                   counts ``count`` and ``error_count``).
``tcp_data_in``,            ``connection_type``    ``byte_size`` (spiral): the bytes read
``tcp_data_out``,                                  or written on plain TCP connections,
``tls_data_in``,                                   or on TLS ones (after decryption,
``tls_data_out``                                   before encryption).
``c2s_message_processed``   ``host_type``          ``time`` (histogram, µs): a message
                                                   from a client, from its parsing to its
                                                   hand-over to the router.
``sm_message_bounced``      ``host_type``          ``count`` (spiral): a message bounced
                                                   (service-unavailable) for want of a
                                                   session.
``router_stanza_dropped``   ``host_type``          ``count`` (spiral): a stanza for a
                                                   local host dropped unanswered: by the
                                                   filter_local_packet hook, or by the
                                                   delivery rules (message or presence to
                                                   the server itself, presence to an
                                                   unavailable resource, a message for an
                                                   offline user that is neither bounced
                                                   nor taken by a module).
``router_no_route_found``   ``host_type``          ``count`` (spiral): a stanza for a
                                                   domain this server does not serve (no
                                                   server-to-server yet), labelled with
                                                   the sender's host.
==========================  =====================  ======================================

``connection_type`` is ``c2s``. Hot paths do not build labels: :func:`setup` (run by
:func:`mongoose.server.setup` in each worker) prepares one :class:`HostSinks` per
configured host and one :class:`DataSinks`, so that every series exists at zero from the
start (Prometheus' ``rate()`` needs that); a session holds its host's object after login.

The per-stanza and per-read events (``xmpp_element_in``/``out``, ``c2s_message_processed``,
``tcp_data_*``, ``tls_data_*``) are batched (:class:`mongoose.instrument.Batch`): a
stanza adds its counts and size in place, and each batch goes out as one event per second
with the sums of that second (histograms as ``Samples``). An event per stanza cost about
1 µs each with the metric store, five per message: a tenth of what the server spends on
a message; the batches cost a fifth of that. The measurement dicts that never change are
built once here (:data:`ELEMENT`: the counts of each kind of element).
"""

from __future__ import annotations

from collections.abc import Iterable

from mongoose import instrument
from mongoose.instrument import Batch, Sink

__all__ = ["DataSinks", "HostSinks", "data_sinks", "host", "register", "setup"]

C2S = "c2s"
HOST = ("host_type",)
CONN_HOST = ("connection_type", "host_type")
SPIRAL = {"count": "spiral"}

KINDS = ("message", "presence", "iq")
ELEMENT_METRICS: dict[str, str] = {
    "count": "spiral", "stanza_count": "spiral",
    **{f"{kind}_count": "spiral" for kind in KINDS},
    "error_count": "spiral",
    **{f"{kind}_error_count": "spiral" for kind in KINDS},
    "byte_size": "histogram",
}
DATA_EVENTS = ("tcp_data_in", "tcp_data_out", "tls_data_in", "tls_data_out")


def register() -> None:
    """Register the events (idempotent: a second call with the same specs is a no-op)."""
    instrument.register("sm_session", HOST,
                        {"logins": "spiral", "logouts": "spiral", "count": "counter"},
                        log_level="info")
    instrument.register("c2s_auth_failed", HOST, SPIRAL, log_level="info")
    instrument.register("xmpp_element_in", CONN_HOST, ELEMENT_METRICS)
    instrument.register("xmpp_element_out", CONN_HOST, ELEMENT_METRICS)
    for name in DATA_EVENTS:
        instrument.register(name, ("connection_type",), {"byte_size": "spiral"})
    instrument.register("c2s_message_processed", HOST, {"time": "histogram"})
    instrument.register("sm_message_bounced", HOST, SPIRAL)
    instrument.register("router_stanza_dropped", HOST, SPIRAL)
    instrument.register("router_no_route_found", HOST, SPIRAL)


register()

# The counts of an element by (stanza name, is an error), without its byte_size: an
# element adds one to each of the xmpp_element_in/out batch's sums named in
# ELEMENT[name, is_error] (mongoose.c2s._count), and its size to the byte_size histogram.
ELEMENT: dict[tuple[str, bool], dict[str, int]] = {}
for _kind in KINDS:
    ELEMENT[_kind, False] = {"count": 1, "stanza_count": 1, f"{_kind}_count": 1}
    ELEMENT[_kind, True] = {"count": 1, "stanza_count": 1, "error_count": 1,
                            f"{_kind}_error_count": 1}
OTHER_ELEMENT = {"count": 1}  # not a stanza (unexpected element)
STREAM_ERROR = {"count": 1, "error_count": 1}

ONE = {"count": 1}
LOGIN = {"logins": 1, "count": 1}
LOGOUT = {"logouts": 1, "count": -1}


class HostSinks:
    """The prepared sinks and batches of one host's events, held by each session of the
    host."""

    __slots__ = ("auth_failed", "element_in", "element_out", "host", "message_bounced",
                 "message_processed", "no_route_found", "sm_session", "stanza_dropped")

    def __init__(self, host: str) -> None:
        self.host = host
        labels = {"host_type": host}
        conn = {"connection_type": C2S, "host_type": host}
        prepared = instrument.prepared
        batch = instrument.batch
        self.element_in: Batch = batch("xmpp_element_in", conn)
        self.element_out: Batch = batch("xmpp_element_out", conn)
        self.message_processed: Batch = batch("c2s_message_processed", labels)
        self.sm_session: Sink = prepared("sm_session", labels)
        self.auth_failed: Sink = prepared("c2s_auth_failed", labels)
        self.message_bounced: Sink = prepared("sm_message_bounced", labels)
        self.stanza_dropped: Sink = prepared("router_stanza_dropped", labels)
        self.no_route_found: Sink = prepared("router_no_route_found", labels)


class DataSinks:
    """The batches of the socket data events of one connection type: a read or a write
    adds its size (``batch.sums["byte_size"] += n``), and the sums go out every second."""

    __slots__ = ("tcp_in", "tcp_out", "tls_in", "tls_out")

    def __init__(self, connection_type: str) -> None:
        labels = {"connection_type": connection_type}
        self.tcp_in: Batch = instrument.batch("tcp_data_in", labels)
        self.tcp_out: Batch = instrument.batch("tcp_data_out", labels)
        self.tls_in: Batch = instrument.batch("tls_data_in", labels)
        self.tls_out: Batch = instrument.batch("tls_data_out", labels)


_hosts: dict[str, HostSinks] = {}
_data: DataSinks | None = None


def setup(hosts: Iterable[str]) -> None:
    """Prepare the sinks and batches of every host and of the c2s data events (see the
    module docstring); those prepared before are forgotten (a test may have reset the
    registry)."""
    global _data
    register()
    _hosts.clear()
    _data = DataSinks(C2S)
    for name in hosts:
        host(name)


def host(name: str) -> HostSinks:
    """The sinks of host ``name`` (prepared now if :func:`setup` did not)."""
    sinks = _hosts.get(name)
    if sinks is None:
        register()
        sinks = _hosts[name] = HostSinks(name)
    return sinks


def data_sinks() -> DataSinks:
    """The batches of the c2s data events."""
    global _data
    if _data is None:
        register()
        _data = DataSinks(C2S)
    return _data
