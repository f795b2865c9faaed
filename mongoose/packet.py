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

import re
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

_NAMES = {f"{{jabber:client}}{name}": name for name in ("message", "presence", "iq")}
# lxml writes attributes with double quotes and escapes '"', '<', '>' and '&' in their
# values, so these match whole attributes of the start tag it wrote, and the first '>'
# of its output ends that start tag.
_STAMPED = re.compile(rb'\s(?:from|to|xmlns)="[^"]*"')


def from_element(el: etree._Element, from_jid: str, to_jid: str) -> Packet:
    """Serialize ``el`` as a packet from ``from_jid`` to ``to_jid`` (``el`` is left as it
    is).

    The addresses are written into the serialized start tag rather than set on the
    element first: lxml's attribute setter costs more than the whole serialization
    (measured: two ``set`` 4.7 us, ``tostring`` 2.8 us, this function 5-6 us in all). The
    top element's own ``xmlns="jabber:client"`` is dropped, as the receiving stream
    declares it (see :func:`mongoose.xmpp.xmlstream.to_bytes`).
    """
    data = etree.tostring(el, encoding="utf-8")
    end = data.find(b">")
    head, rest = data[:end], data[end:]
    if head.endswith(b"/"):
        head, rest = head[:-1], b"/" + rest
    space = head.find(b" ")
    if space < 0:
        name, attrs = head, b""
    else:
        name, attrs = head[:space], _STAMPED.sub(b"", head[space:])
    data = b"".join((name, b' from="', _attr(from_jid), b'" to="', _attr(to_jid), b'"',
                     attrs, rest))
    tag = el.tag
    kind = _NAMES.get(tag) or etree.QName(tag).localname
    return Packet(from_jid, to_jid, kind, el.get("type", ""), el.get("id", ""), data)


def _attr(value: str) -> bytes:
    if "&" in value or "<" in value or '"' in value or ">" in value:
        value = (value.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
                 .replace(">", "&gt;"))
    return value.encode()


def element(packet: Packet | tuple) -> etree._Element:
    """The packet's stanza as a tree (parsed from its bytes)."""
    data = packet[5]
    if b"xmlns=" not in data[: data.find(b">")]:
        # The stanza inherits jabber:client from the stream it is written to; give the
        # parsed copy the same namespace.
        space = data.find(b" ")
        data = data[:space] + b' xmlns="jabber:client"' + data[space:]
    return etree.fromstring(data, _PARSER)
