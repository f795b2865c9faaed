"""mod_private: XEP-0049 Private XML Storage.

A user stores XML fragments on the server, each under the namespace of its root element,
and reads them back: ``<iq type='set'><query xmlns='jabber:iq:private'><exodus
xmlns='exodus:prefs'>...</exodus></query></iq>``, then a get with ``<exodus
xmlns='exodus:prefs'/>``. Only the user's own resources may do either: the iq has no
``to`` or is addressed to the user's bare JID; to anyone else's the answer is
``forbidden`` (the XEP prefers it to ``service-unavailable``).

Rules (XEP-0049 §2.3)
    * The query carries at least one child, each in a namespace of its own (a child in
      no namespace, or none at all: ``not-acceptable``).
    * Reserved namespaces are refused with ``not-acceptable``: those beginning with
      ``jabber:`` or ``http://jabber.org/``, and ``vcard-temp`` (the XEP makes the
      refusal optional; storing roster or vCard data here would only mislead clients).
    * A set may carry several elements of one namespace; they are stored together and
      come back together. Setting a namespace replaces what it held; several namespaces
      in one set are written in one transaction.
    * A get names the namespaces it wants by empty elements; each comes back with what
      is stored, or as it was asked (empty) when nothing is.

Storage: :class:`mongoose.storage.backends.private.PrivateStore` on the worker's
database, called off the loop and in order per user (:mod:`mongoose.modules.offloop`).
The user's data goes with the account (the ``remove_user`` hook).
"""

from __future__ import annotations

import functools
from typing import Any

from lxml import etree

from mongoose import iq
from mongoose.hooks import hooks
from mongoose.modules import offloop
from mongoose.modules.events import HostCounters
from mongoose.xmpp import ns

XEPS = ("0049",)
FEATURES = (ns.PRIVATE,)

_RESERVED_PREFIXES = ("jabber:", "http://jabber.org/")
_RESERVED = frozenset({ns.VCARD})

_store: Any = None
_serializer = offloop.Serializer("mod_private")
# Parses stored fragments (our own serialization) back; no network, no entities.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


# Instrumentation: one count per request (mongoose.modules.events).
EVENTS = HostCounters("mod_private_get", "mod_private_set")


def _reserved(namespace: str) -> bool:
    return namespace in _RESERVED or namespace.startswith(_RESERVED_PREFIXES)


def _private(stanza: Any, from_jid: str, to_jid: str) -> Any:
    sender = from_jid.partition("/")[0]
    if to_jid.partition("/")[0] != sender:
        return offloop.error_reply(stanza, "forbidden", "private data is the user's own")
    kind = stanza.get("type")
    query = stanza[0]
    children = [c for c in query if isinstance(c.tag, str)]
    if not children:
        return offloop.error_reply(stanza, "not-acceptable",
                                   "name or give at least one namespaced element")
    grouped: dict[str, list[etree._Element]] = {}
    for child in children:
        namespace = etree.QName(child).namespace
        if not namespace:
            return offloop.error_reply(stanza, "not-acceptable",
                                       "each element needs a namespace of its own")
        if _reserved(namespace):
            return offloop.error_reply(stanza, "not-acceptable",
                                       f"{namespace} is a reserved namespace")
        grouped.setdefault(namespace, []).append(child)
    user, _, host = sender.rpartition("@")
    EVENTS.count(f"mod_private_{'set' if kind == 'set' else 'get'}", host)
    if kind == "set":
        data = {namespace: b"".join(_serialize(e) for e in elements).decode("utf-8")
                for namespace, elements in grouped.items()}
        offloop.answer_iq(_serializer, sender, stanza, from_jid, to_jid, _set,
                          stanza, user, host, data)
    else:
        offloop.answer_iq(_serializer, sender, stanza, from_jid, to_jid, _get,
                          stanza, user, host, grouped)
    return None


def _serialize(element: etree._Element) -> bytes:
    copy = element.__copy__()
    copy.tail = None
    return etree.tostring(copy, encoding="utf-8")


def _set(stanza: Any, user: str, host: str, data: dict[str, str]) -> Any:
    _store.set_many(user, host, data)
    return iq.result(stanza)


def _get(stanza: Any, user: str, host: str, asked: dict[str, list[etree._Element]]) -> Any:
    stored = _store.get_many(user, host, asked)
    query = etree.Element(f"{{{ns.PRIVATE}}}query", nsmap={None: ns.PRIVATE})
    for namespace, elements in asked.items():
        data = stored.get(namespace)
        if data is None:
            for element in elements:
                query.append(etree.Element(element.tag, nsmap={None: namespace}))
            continue
        # Stored fragments are one or more sibling elements: parse them under a wrapper.
        wrapper = etree.fromstring(b"<w>" + data.encode("utf-8") + b"</w>", _PARSER)
        for element in list(wrapper):
            query.append(element)
    return iq.result(stanza, query)


def _remove_user(acc: list[Any], params: dict[str, Any]) -> list[Any]:
    return [*acc, functools.partial(_store.remove_user, params["user"], params["server"])]


def start(config: Any, module_config: Any) -> None:
    global _store
    from mongoose.server import current
    from mongoose.storage.backends.private import PrivateStore
    from otp import scheduler

    _store = PrivateStore(current().db)
    _store.emit_via = scheduler.current().call_soon
    EVENTS.start(config.general.hosts)
    iq.register("account", ns.PRIVATE, _private)
    hooks.add("remove_user", _remove_user, module="mod_private")


def stop() -> None:
    iq.unregister("account", ns.PRIVATE)
    hooks.remove_module("mod_private")
