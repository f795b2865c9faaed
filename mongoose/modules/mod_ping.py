"""mod_ping: XEP-0199 XMPP Ping.

Answers pings addressed to the server (``to`` a host) or to the client's own account (no
``to``) with an empty result. Server-initiated pings of idle clients (``send_pings``) live
in the session (:mod:`mongoose.c2s`), which owns the timers; they read this module's
config.
"""

from __future__ import annotations

from typing import Any

from mongoose import iq
from mongoose.xmpp import ns

XEPS = ("0199",)
FEATURES = (ns.PING,)


def _pong(stanza: Any, from_jid: str, to_jid: str) -> Any:
    return iq.result(stanza)


def start(config: Any, module_config: Any) -> None:
    iq.register("server", ns.PING, _pong)
    iq.register("account", ns.PING, _pong)


def stop() -> None:
    iq.unregister("server", ns.PING)
    iq.unregister("account", ns.PING)
