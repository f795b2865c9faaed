"""A routed stanza: what crosses from one session to another, possibly between processes.

A :class:`Packet` is a plain tuple, so it travels through mailboxes and between workers
(msgpack) as it is::

    (from_jid, to_jid, name, type, id, data)

``from_jid``/``to_jid`` are JID strings (``to_jid`` may be a bare JID or a domain),
``name`` is ``"message"``, ``"presence"`` or ``"iq"``, ``type`` the stanza's type
attribute (``""`` when absent), ``id`` its id (``""`` when absent), and ``data`` the
serialized stanza exactly as the receiving client will get it, with ``from`` and ``to``
already set. The stanza is serialized once, by the sender's side; the receiving session
writes ``data`` to its socket without parsing it again unless a hook needs the tree
(:func:`element`). Measured in shared/DESIGN.md: re-serializing costs about as much as
parsing, and a message crossing workers costs more than either, so bytes are the form that
travels.
"""

from __future__ import annotations

from typing import NamedTuple

from lxml import etree

__all__ = ["Packet", "element", "from_element"]


class Packet(NamedTuple):
    from_jid: str
    to_jid: str
    name: str
    type: str
    id: str
    data: bytes


_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def from_element(el: etree._Element, from_jid: str, to_jid: str) -> Packet:
    """Stamp ``from``/``to`` on ``el`` and serialize it into a packet."""
    from mongoose.xmpp.xmlstream import to_bytes

    el.set("from", from_jid)
    el.set("to", to_jid)
    name = etree.QName(el).localname
    return Packet(from_jid, to_jid, name, el.get("type", ""), el.get("id", ""), to_bytes(el))


def element(packet: Packet | tuple) -> etree._Element:
    """The packet's stanza as a tree (parsed from its bytes)."""
    return etree.fromstring(packet[5], _PARSER)
