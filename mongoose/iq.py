"""IQ handlers by namespace: how the server answers iq get/set addressed to it.

A module registers ``handler(iq, from_jid, to_jid) -> reply element | None`` for the
namespace of the iq's payload (its single child, RFC 6120 §8.2.3), in one of two scopes:

* ``"server"``: iq addressed to a host itself (``to='localhost'``), e.g. disco, ping,
  version, time;
* ``"account"``: iq addressed to a user's bare JID (or with no ``to``), answered by the
  server on the account's behalf, e.g. roster or vCard in later modules.

The handler gets the parsed ``iq`` element and returns the reply (built with
:func:`result` or :func:`mongoose.xmpp.errors.make_error_reply`), or None when it will
answer later by routing a packet itself. An iq whose namespace has no handler gets
``service-unavailable`` (RFC 6120 §8.4); a payload that is not exactly one element gets
``bad-request``. A handler that raises gets the sender ``internal-server-error`` and a
log line (``what=iq_handler_crashed``).

Registries are per process, like hooks: every worker starts the same modules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from lxml import etree

from mongoose import packet as packet_mod
from mongoose.packet import Packet

__all__ = ["handle", "namespaces", "register", "result", "unregister"]

log = logging.getLogger(__name__)

Handler = Callable[[etree._Element, str, str], "etree._Element | None"]

_handlers: dict[tuple[str, str], Handler] = {}  # (scope, namespace) -> handler


def register(scope: str, namespace: str, handler: Handler) -> None:
    assert scope in ("server", "account"), scope
    _handlers[(scope, namespace)] = handler


def unregister(scope: str, namespace: str) -> None:
    _handlers.pop((scope, namespace), None)


def namespaces(scope: str) -> list[str]:
    """Namespaces with a handler in ``scope`` (for disco#info)."""
    return sorted(ns for s, ns in _handlers if s == scope)


def result(iq: etree._Element, payload: etree._Element | None = None) -> etree._Element:
    """A ``type='result'`` reply to ``iq`` with its id, carrying ``payload`` if given.

    No addresses: a reply routed as a packet gets them stamped by
    :func:`mongoose.packet.from_element`, and one written straight to the client's own
    stream (resource binding) needs none."""
    reply = etree.Element(iq.tag, type="result", nsmap={None: etree.QName(iq).namespace})
    if iq.get("id") is not None:
        reply.set("id", iq.get("id"))
    if payload is not None:
        reply.append(payload)
    return reply


def handle(packet: Packet, domain: str, *, scope: str) -> Packet | None:
    """Run the handler for ``packet`` (an iq get/set); the reply packet, or None."""
    from mongoose.xmpp.errors import make_error_reply

    iq = packet_mod.element(packet)
    children = [c for c in iq if isinstance(c.tag, str)]
    if len(children) != 1:
        reply = make_error_reply(iq, "bad-request", "an iq get or set carries one payload")
        return packet_mod.from_element(reply, packet[1], packet[0])
    namespace = etree.QName(children[0]).namespace or ""
    handler = _handlers.get((scope, namespace))
    if handler is None:
        reply = make_error_reply(iq, "service-unavailable")
        return packet_mod.from_element(reply, packet[1], packet[0])
    try:
        reply = handler(iq, packet[0], packet[1])
    except Exception:
        log.exception("iq handler crashed", extra={
            "what": "iq_handler_crashed", "namespace": namespace, "scope": scope})
        reply = make_error_reply(iq, "internal-server-error")
    if reply is None:
        return None
    return packet_mod.from_element(reply, packet[1], packet[0])
