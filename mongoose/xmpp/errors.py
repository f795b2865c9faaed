"""Stream, stanza and SASL errors of RFC 6120, as bytes or lxml elements ready to send.

- :func:`stream_error` builds ``<stream:error>`` (§4.9); after sending it, send
  ``</stream:stream>`` and close. Every condition is in :data:`STREAM_CONDITIONS`.
- :func:`make_error_reply` builds the error response to a stanza (§8.3). It refuses to
  answer an error (``type="error"``), since two entities answering each other's errors
  would loop forever; callers test :func:`is_error` first, or catch ``ValueError``.
- :class:`StanzaError` is what a handler raises to have the session answer with an error.
- :func:`sasl_failure` builds ``<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>`` (§6.5).

Payload echo: §8.3.1 lets the error include the original payload so the sender can see
what was refused. We echo the children of ``iq`` and ``message`` stanzas (a client can
then match and fix a request) unless their serialized size passes
:data:`ECHO_PAYLOAD_LIMIT`, so an error never doubles a large stanza; presence errors carry
no payload, as presence content is rebroadcast state the sender already has.
"""

from __future__ import annotations

from types import MappingProxyType
from xml.sax.saxutils import escape

from lxml import etree

from mongoose.xmpp import ns

__all__ = [
    "ECHO_PAYLOAD_LIMIT",
    "SASL_CONDITIONS",
    "STANZA_CONDITIONS",
    "STREAM_CONDITIONS",
    "StanzaError",
    "is_error",
    "make_error_reply",
    "sasl_failure",
    "stream_error",
]

# RFC 6120 §4.9.3.
STREAM_CONDITIONS = frozenset(
    {
        "bad-format",
        "bad-namespace-prefix",
        "conflict",
        "connection-timeout",
        "host-gone",
        "host-unknown",
        "improper-addressing",
        "internal-server-error",
        "invalid-from",
        "invalid-namespace",
        "invalid-xml",
        "not-authorized",
        "not-well-formed",
        "policy-violation",
        "remote-connection-failed",
        "reset",
        "resource-constraint",
        "restricted-xml",
        "see-other-host",
        "system-shutdown",
        "undefined-condition",
        "unsupported-encoding",
        "unsupported-feature",
        "unsupported-stanza-type",
        "unsupported-version",
    }
)

# RFC 6120 §8.3.3: each stanza error condition with the error type the RFC recommends.
# Where it allows two (policy-violation: modify or wait; unexpected-request: wait or
# modify) the first is the default; undefined-condition has none, and we use cancel.
STANZA_CONDITIONS: MappingProxyType[str, str] = MappingProxyType(
    {
        "bad-request": "modify",
        "conflict": "cancel",
        "feature-not-implemented": "cancel",
        "forbidden": "auth",
        "gone": "cancel",
        "internal-server-error": "cancel",
        "item-not-found": "cancel",
        "jid-malformed": "modify",
        "not-acceptable": "modify",
        "not-allowed": "cancel",
        "not-authorized": "auth",
        "policy-violation": "modify",
        "recipient-unavailable": "wait",
        "redirect": "modify",
        "registration-required": "auth",
        "remote-server-not-found": "cancel",
        "remote-server-timeout": "wait",
        "resource-constraint": "wait",
        "service-unavailable": "cancel",
        "subscription-required": "auth",
        "undefined-condition": "cancel",
        "unexpected-request": "wait",
    }
)

ERROR_TYPES = frozenset({"auth", "cancel", "continue", "modify", "wait"})

# RFC 6120 §6.5.
SASL_CONDITIONS = frozenset(
    {
        "aborted",
        "account-disabled",
        "credentials-expired",
        "encryption-required",
        "incorrect-encoding",
        "invalid-authzid",
        "invalid-mechanism",
        "malformed-request",
        "mechanism-too-weak",
        "not-authorized",
        "temporary-auth-failure",
    }
)

# Largest original payload (serialized bytes) echoed back in an error reply.
ECHO_PAYLOAD_LIMIT = 4096

_ECHOED_STANZAS = frozenset({"iq", "message"})


def stream_error(condition: str, text: str | None = None) -> bytes:
    """The ``<stream:error>`` element for `condition`, with an optional English `text`."""
    if condition not in STREAM_CONDITIONS:
        raise ValueError(f"unknown stream error condition {condition!r}")
    return (
        f"<stream:error><{condition} xmlns='{ns.STREAMS_ERR}'/>"
        f"{_text_element(ns.STREAMS_ERR, text)}</stream:error>"
    ).encode()


def sasl_failure(condition: str, text: str | None = None) -> bytes:
    """The SASL ``<failure/>`` element for `condition`, with an optional English `text`."""
    if condition not in SASL_CONDITIONS:
        raise ValueError(f"unknown SASL failure condition {condition!r}")
    text_element = "" if text is None else f"<text xml:lang='en'>{escape(text)}</text>"
    return f"<failure xmlns='{ns.SASL}'><{condition}/>{text_element}</failure>".encode()


def _text_element(namespace: str, text: str | None) -> str:
    if text is None:
        return ""
    return f"<text xmlns='{namespace}' xml:lang='en'>{escape(text)}</text>"


class StanzaError(Exception):
    """Raised by a stanza handler to answer the stanza with an error.

    `type` defaults to the condition's RFC type from :data:`STANZA_CONDITIONS`.
    """

    def __init__(self, condition: str, text: str | None = None, type: str | None = None) -> None:
        if condition not in STANZA_CONDITIONS:
            raise ValueError(f"unknown stanza error condition {condition!r}")
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text
        self.type = type or STANZA_CONDITIONS[condition]

    def reply_to(self, stanza: etree._Element) -> etree._Element:
        """The error reply to `stanza` for this error (see :func:`make_error_reply`)."""
        return make_error_reply(stanza, self.condition, self.text, self.type)


def is_error(stanza: etree._Element) -> bool:
    """Whether `stanza` is itself an error, which must never be answered with one."""
    return stanza.get("type") == "error"


def make_error_reply(
    stanza: etree._Element,
    condition: str,
    text: str | None = None,
    type: str | None = None,
    *,
    by: str | None = None,
) -> etree._Element:
    """The error response to `stanza` (RFC 6120 §8.3), as a new element.

    Same element name and namespace; ``from`` and ``to`` swapped (each only if present);
    ``id`` and ``xml:lang`` kept; ``type="error"``; the original payload echoed as the
    module docstring says; then ``<error type=...>`` with the condition and optional text
    in the stanzas namespace, and `by` (the entity that raised the error) if given.
    `stanza` is not modified. Raises ``ValueError`` for an unknown condition or type, or
    when `stanza` is itself an error.
    """
    if is_error(stanza):
        raise ValueError("never answer an error stanza with an error")
    if condition not in STANZA_CONDITIONS:
        raise ValueError(f"unknown stanza error condition {condition!r}")
    error_type = type or STANZA_CONDITIONS[condition]
    if error_type not in ERROR_TYPES:
        raise ValueError(f"unknown stanza error type {error_type!r}")

    namespace, name = _split_tag(stanza.tag)
    reply = etree.Element(stanza.tag, nsmap={None: namespace} if namespace else None)
    for source, target in (("to", "from"), ("from", "to")):
        address = stanza.get(source)
        if address is not None:
            reply.set(target, address)
    for kept in ("id", ns.XML_LANG):
        value = stanza.get(kept)
        if value is not None:
            reply.set(kept, value)
    reply.set("type", "error")
    if name in _ECHOED_STANZAS:
        _echo_payload(stanza, reply)

    error = etree.SubElement(reply, _in(namespace, "error"), type=error_type)
    if by is not None:
        error.set("by", by)
    etree.SubElement(error, f"{{{ns.STANZAS}}}{condition}", nsmap={None: ns.STANZAS})
    if text is not None:
        text_element = etree.SubElement(error, f"{{{ns.STANZAS}}}text", nsmap={None: ns.STANZAS})
        text_element.set(ns.XML_LANG, "en")
        text_element.text = text
    return reply


def _echo_payload(stanza: etree._Element, reply: etree._Element) -> None:
    children = list(stanza)
    size = sum(len(etree.tostring(child)) for child in children)
    if not children or size > ECHO_PAYLOAD_LIMIT:
        return
    for child in children:
        copied = child.__copy__()  # deep: the original stanza stays intact
        copied.tail = None
        reply.append(copied)


def _split_tag(tag: str) -> tuple[str | None, str]:
    if tag[0] == "{":
        namespace, _, name = tag[1:].partition("}")
        return namespace, name
    return None, tag


def _in(namespace: str | None, name: str) -> str:
    return f"{{{namespace}}}{name}" if namespace else name
