"""mod_disco: XEP-0030 Service Discovery for the server's hosts.

disco#info of a host lists the server identity (category "server", type "im") and the
features of the core and of every started module, plus those added through the
``disco_local_features`` hook; disco#items lists ``extra_items`` from the config and
what ``disco_local_items`` handlers add. A query with a ``node`` we do not know gets
``item-not-found``. disco#info addressed to a user's bare JID is answered on the
account's behalf with an "account/registered" identity (RFC 6121 and XEP-0030 §3.3), and
disco#items of it lists the account's available resources (full JIDs, from the session
table): both to the user themself only; others get ``service-unavailable``.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from mongoose import iq
from mongoose.hooks import hooks
from mongoose.xmpp import ns

XEPS = ("0030",)
FEATURES = (ns.DISCO_INFO, ns.DISCO_ITEMS)

_extra_items: tuple[str, ...] = ()

CORE_FEATURES = ("urn:ietf:params:xml:ns:xmpp-sasl", "urn:ietf:params:xml:ns:xmpp-bind",
                 "iq", "presence")


def _host(to_jid: str) -> str:
    return to_jid.partition("/")[0].rpartition("@")[2]


def _info(stanza: Any, from_jid: str, to_jid: str) -> Any:
    from mongoose import modules
    from mongoose.xmpp.errors import make_error_reply

    if stanza.get("type") != "get":
        return make_error_reply(stanza, "not-allowed")
    query = stanza[0]
    if query.get("node"):
        return make_error_reply(stanza, "item-not-found")
    host = _host(to_jid)
    reply = etree.Element(f"{{{ns.DISCO_INFO}}}query", nsmap={None: ns.DISCO_INFO})
    etree.SubElement(reply, f"{{{ns.DISCO_INFO}}}identity", category="server", type="im",
                     name="mongoose")
    features = set(CORE_FEATURES) | set(modules.features())
    features |= set(hooks.run("disco_local_features", [], host))
    for feature in sorted(features):
        etree.SubElement(reply, f"{{{ns.DISCO_INFO}}}feature", var=feature)
    return iq.result(stanza, reply)


def _account_info(stanza: Any, from_jid: str, to_jid: str) -> Any:
    from mongoose.xmpp.errors import make_error_reply

    if stanza.get("type") != "get":
        return make_error_reply(stanza, "not-allowed")
    if from_jid.partition("/")[0] != to_jid.partition("/")[0]:
        return make_error_reply(stanza, "service-unavailable")  # no presence subscription yet
    reply = etree.Element(f"{{{ns.DISCO_INFO}}}query", nsmap={None: ns.DISCO_INFO})
    etree.SubElement(reply, f"{{{ns.DISCO_INFO}}}identity", category="account",
                     type="registered")
    etree.SubElement(reply, f"{{{ns.DISCO_INFO}}}feature", var=ns.DISCO_INFO)
    return iq.result(stanza, reply)


def _account_items(stanza: Any, from_jid: str, to_jid: str) -> Any:
    from mongoose import sm
    from mongoose.xmpp.errors import make_error_reply

    if stanza.get("type") != "get":
        return make_error_reply(stanza, "not-allowed")
    bare = to_jid.partition("/")[0]
    if from_jid.partition("/")[0] != bare:
        return make_error_reply(stanza, "service-unavailable")
    if stanza[0].get("node"):
        return make_error_reply(stanza, "item-not-found")
    reply = etree.Element(f"{{{ns.DISCO_ITEMS}}}query", nsmap={None: ns.DISCO_ITEMS})
    for resource in sorted(record[1] for record in sm.sessions(bare)
                           if record[3] is not None):
        etree.SubElement(reply, f"{{{ns.DISCO_ITEMS}}}item", jid=f"{bare}/{resource}")
    return iq.result(stanza, reply)


def _items(stanza: Any, from_jid: str, to_jid: str) -> Any:
    from mongoose.xmpp.errors import make_error_reply

    if stanza.get("type") != "get":
        return make_error_reply(stanza, "not-allowed")
    if stanza[0].get("node"):
        return make_error_reply(stanza, "item-not-found")
    host = _host(to_jid)
    reply = etree.Element(f"{{{ns.DISCO_ITEMS}}}query", nsmap={None: ns.DISCO_ITEMS})
    items = [(jid, None) for jid in _extra_items]
    items += hooks.run("disco_local_items", [], host)
    for jid, name in items:
        item = etree.SubElement(reply, f"{{{ns.DISCO_ITEMS}}}item", jid=jid)
        if name:
            item.set("name", name)
    return iq.result(stanza, reply)


def start(config: Any, module_config: Any) -> None:
    global _extra_items
    _extra_items = module_config.extra_items
    iq.register("server", ns.DISCO_INFO, _info)
    iq.register("server", ns.DISCO_ITEMS, _items)
    iq.register("account", ns.DISCO_INFO, _account_info)
    iq.register("account", ns.DISCO_ITEMS, _account_items)


def stop() -> None:
    iq.unregister("server", ns.DISCO_INFO)
    iq.unregister("server", ns.DISCO_ITEMS)
    iq.unregister("account", ns.DISCO_INFO)
    iq.unregister("account", ns.DISCO_ITEMS)
