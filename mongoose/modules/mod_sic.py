"""mod_sic: XEP-0279 Server IP Check.

A client asks its server which IP address and port it connects from (behind NAT, for
example): ``<iq type='get'><address xmlns='urn:xmpp:sic:1'/></iq>``, with no ``to`` or
addressed to the server, and gets ``<address xmlns='urn:xmpp:sic:1'><ip>192.0.2.1</ip>
<port>49152</port></address>``. The first version of the XEP is answered too:
``<ip xmlns='urn:xmpp:sic:0'/>`` gets ``<ip xmlns='urn:xmpp:sic:0'>192.0.2.1</ip>`` (it
had no port). Asking about another user's connection, at their bare JID, is
``forbidden``.

The address belongs to the asking session, which may live on another worker than the
router that handles the iq: the handler asks the session actor for it (its ``info``)
and answers when the session does; a session that is gone by then gets no answer.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

import otp
from mongoose import iq, router, sm
from mongoose import packet as packet_mod
from mongoose.modules import offloop
from mongoose.modules.events import HostCounters

XEPS = ("0279",)
SIC = "urn:xmpp:sic:1"
SIC_0 = "urn:xmpp:sic:0"
FEATURES = (SIC, SIC_0)


# Instrumentation: one count per query (mongoose.modules.events).
EVENTS = HostCounters("mod_sic_get")


def _address(stanza: Any, from_jid: str, to_jid: str) -> Any:
    if stanza.get("type") != "get":
        return offloop.error_reply(stanza, "not-allowed")
    bare, _, resource = from_jid.partition("/")
    if "@" in to_jid and to_jid.partition("/")[0] != bare:
        return offloop.error_reply(stanza, "forbidden")
    session = next((r for r in sm.sessions(bare) if r[1] == resource), None)
    if session is None:
        return None  # the asker is gone: nobody to answer
    namespace = etree.QName(stanza[0]).namespace
    EVENTS.count("mod_sic_get", bare.rpartition("@")[2])

    def answer(future: otp.LoopFuture[Any]) -> None:
        try:
            peer = future.get(timeout=0)["peer"]
        except Exception:
            return  # the session ended meanwhile
        ip, _, port = peer.rpartition(":")
        if namespace == SIC:
            address = etree.Element(f"{{{SIC}}}address", nsmap={None: SIC})
            etree.SubElement(address, f"{{{SIC}}}ip").text = ip
            etree.SubElement(address, f"{{{SIC}}}port").text = port
        else:
            address = etree.Element(f"{{{SIC_0}}}ip", nsmap={None: SIC_0})
            address.text = ip
        router.route(packet_mod.from_element(iq.result(stanza, address), to_jid, from_jid))

    otp.ask(session[2], ("info",)).add_done_callback(answer)
    return None


def start(config: Any, module_config: Any) -> None:
    EVENTS.start(config.general.hosts)
    for namespace in FEATURES:
        iq.register("server", namespace, _address)
        iq.register("account", namespace, _address)


def stop() -> None:
    for namespace in FEATURES:
        iq.unregister("server", namespace)
        iq.unregister("account", namespace)
