"""XML namespace names used on XMPP streams.

Tags in parsed stanzas are in lxml's Clark notation, ``{namespace}local``; build them with
:func:`tag`, e.g. ``tag(CLIENT, "message") == "{jabber:client}message"``.
"""

from __future__ import annotations

# RFC 6120: the stream, its content namespaces and its negotiation.
STREAM = "http://etherx.jabber.org/streams"
CLIENT = "jabber:client"
SERVER = "jabber:server"
TLS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"

# RFC 3921 session establishment (kept by RFC 6121 clients as an optional no-op).
SESSION = "urn:ietf:params:xml:ns:xmpp-session"

# The `xml:` prefix is bound to this name by the XML Namespaces spec itself.
XML = "http://www.w3.org/XML/1998/namespace"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

# RFC 6121 and XEPs.
ROSTER = "jabber:iq:roster"
PRIVACY = "jabber:iq:privacy"
PRIVATE = "jabber:iq:private"
LAST = "jabber:iq:last"
REGISTER = "jabber:iq:register"
VERSION = "jabber:iq:version"
VCARD = "vcard-temp"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
CAPS = "http://jabber.org/protocol/caps"
MUC = "http://jabber.org/protocol/muc"
MUC_USER = "http://jabber.org/protocol/muc#user"
PUBSUB = "http://jabber.org/protocol/pubsub"
PING = "urn:xmpp:ping"
TIME = "urn:xmpp:time"
SM = "urn:xmpp:sm:3"
CARBONS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"
DELAY = "urn:xmpp:delay"
MAM = "urn:xmpp:mam:2"
CSI = "urn:xmpp:csi:0"
BLOCKING = "urn:xmpp:blocking"
CHAT_STATES = "http://jabber.org/protocol/chatstates"
RECEIPTS = "urn:xmpp:receipts"
STANZA_ID = "urn:xmpp:sid:0"
DATA_FORMS = "jabber:x:data"


def tag(namespace: str, local: str) -> str:
    """The Clark-notation tag lxml uses for `local` in `namespace`."""
    return f"{{{namespace}}}{local}"
