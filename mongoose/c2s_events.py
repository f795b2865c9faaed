"""The instrumentation events of client sessions (names and metrics after MongooseIM's).

Registered when this module is imported, in every process that runs sessions; emitted by
:mod:`mongoose.c2s`. With no handler configured, emitting costs about 0.15 µs. The log
handler writes logins, logouts and failures at info, the per-stanza events at debug.

``sm_session``
    ``{host_type}``: ``logins`` and ``logouts`` (spirals), one per bound session opened
    or closed.
``c2s_auth_failed``
    ``{host_type}``: ``count`` (spiral), one per failed SASL authentication.
``xmpp_element_in``
    ``{connection_type, host_type}``: one per stanza a client sends after login:
    ``count`` and one of ``message_count``, ``presence_count``, ``iq_count`` (spirals).
``sm_message_bounced``
    ``{host_type}``: ``count`` (spiral), one per message bounced for want of a session.
"""

from __future__ import annotations

from mongoose import instrument

HOST = ("host_type",)

instrument.register("sm_session", HOST, {"logins": "spiral", "logouts": "spiral"},
                    log_level="info")
instrument.register("c2s_auth_failed", HOST, {"count": "spiral"}, log_level="info")
instrument.register(
    "xmpp_element_in", ("connection_type", "host_type"),
    {"count": "spiral", "message_count": "spiral", "presence_count": "spiral",
     "iq_count": "spiral"},
)
instrument.register("sm_message_bounced", HOST, {"count": "spiral"})

execute = instrument.execute

# One measurement dict per stanza kind, built once (handlers must not keep or change them).
ELEMENT_IN = {
    kind: {"count": 1, f"{kind}_count": 1} for kind in ("message", "presence", "iq")
}
ONE = {"count": 1}
LOGIN = {"logins": 1}
LOGOUT = {"logouts": 1}
