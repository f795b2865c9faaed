"""Stream, stanza and SASL error builders (RFC 6120 §4.9, §6.5, §8.3)."""

from __future__ import annotations

import pytest
from lxml import etree

from mongoose.xmpp import ns
from mongoose.xmpp.errors import (
    ECHO_PAYLOAD_LIMIT,
    SASL_CONDITIONS,
    STANZA_CONDITIONS,
    STREAM_CONDITIONS,
    StanzaError,
    is_error,
    make_error_reply,
    sasl_failure,
    stream_error,
)

STREAM_OPEN = f"<stream:stream xmlns:stream='{ns.STREAM}' xmlns='{ns.CLIENT}'>".encode()


def stanza(xml: str) -> etree._Element:
    """A stanza element in jabber:client, as the stream parser would produce it."""
    root = etree.fromstring(f"<wrapper xmlns='{ns.CLIENT}'>{xml}</wrapper>")
    return root[0].__copy__()


def parse_in_stream(data: bytes) -> etree._Element:
    """`data` parsed as a child of a stream element, so the stream: prefix is bound."""
    return etree.fromstring(STREAM_OPEN + data + b"</stream:stream>")[0]


def error_parts(reply: etree._Element) -> tuple[str, str, str | None]:
    """(error type, condition name, text) of an error reply."""
    error = reply.find(f"{{{ns.CLIENT}}}error")
    condition = next(c for c in error if c.tag != f"{{{ns.STANZAS}}}text")
    return (
        error.get("type"),
        etree.QName(condition).localname,
        error.findtext(f"{{{ns.STANZAS}}}text"),
    )


# --- stream errors -----------------------------------------------------------------------


def test_stream_conditions_are_rfc6120s():
    """STREAM_CONDITIONS lists the 25 conditions of RFC 6120 §4.9.3."""
    assert len(STREAM_CONDITIONS) == 25
    assert {"not-well-formed", "restricted-xml", "see-other-host", "reset"} <= STREAM_CONDITIONS


def test_stream_error_element():
    """stream_error() is a <stream:error> with the condition in the streams namespace."""
    error = parse_in_stream(stream_error("policy-violation"))
    assert error.tag == f"{{{ns.STREAM}}}error"
    [condition] = error
    assert condition.tag == f"{{{ns.STREAMS_ERR}}}policy-violation"


def test_stream_error_text_is_escaped():
    """The optional text is escaped and carried in <text xml:lang='en'>."""
    error = parse_in_stream(stream_error("not-well-formed", "bad <x> & y"))
    text = error.find(f"{{{ns.STREAMS_ERR}}}text")
    assert text.text == "bad <x> & y"
    assert text.get(ns.XML_LANG) == "en"


def test_stream_error_unknown_condition():
    """An unknown stream condition is a programming error."""
    with pytest.raises(ValueError):
        stream_error("no-such-condition")


# --- SASL failures -----------------------------------------------------------------------


def test_sasl_failure():
    """sasl_failure() is a <failure/> in the SASL namespace with the condition inside."""
    failure = etree.fromstring(sasl_failure("not-authorized", "wrong password"))
    assert failure.tag == f"{{{ns.SASL}}}failure"
    assert failure[0].tag == f"{{{ns.SASL}}}not-authorized"
    assert failure.findtext(f"{{{ns.SASL}}}text") == "wrong password"


def test_sasl_conditions():
    """SASL_CONDITIONS lists RFC 6120 §6.5's eleven conditions; others are refused."""
    assert len(SASL_CONDITIONS) == 11
    with pytest.raises(ValueError):
        sasl_failure("bad-request")


# --- stanza errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "error_type"),
    [
        ("bad-request", "modify"),
        ("forbidden", "auth"),
        ("item-not-found", "cancel"),
        ("not-authorized", "auth"),
        ("recipient-unavailable", "wait"),
        ("resource-constraint", "wait"),
        ("service-unavailable", "cancel"),
        ("jid-malformed", "modify"),
    ],
)
def test_default_error_types(condition, error_type):
    """Each condition's default type is the one RFC 6120 §8.3.3 recommends."""
    assert STANZA_CONDITIONS[condition] == error_type
    reply = make_error_reply(stanza("<iq type='get' id='1'/>"), condition)
    assert error_parts(reply)[:2] == (error_type, condition)


def test_stanza_conditions_complete():
    """All 22 RFC 6120 stanza conditions have a valid default type."""
    assert len(STANZA_CONDITIONS) == 22
    assert set(STANZA_CONDITIONS.values()) <= {"auth", "cancel", "modify", "wait"}


def test_reply_swaps_addresses_and_keeps_id():
    """The reply goes back to the sender, from the recipient, with the same id."""
    original = stanza("<iq from='a@x/r' to='b@y' id='q1' type='set' xml:lang='de'/>")
    reply = make_error_reply(original, "forbidden")
    assert (reply.get("from"), reply.get("to")) == ("b@y", "a@x/r")
    assert reply.get("id") == "q1"
    assert reply.get("type") == "error"
    assert reply.get(ns.XML_LANG) == "de"
    assert reply.tag == original.tag


def test_reply_without_addresses():
    """Absent from/to stay absent (the session stamps the client's address)."""
    reply = make_error_reply(stanza("<iq type='get' id='1'/>"), "bad-request")
    assert reply.get("from") is None and reply.get("to") is None


def test_reply_text_and_explicit_type():
    """The text goes in <text/> in the stanzas namespace; an explicit type wins."""
    reply = make_error_reply(stanza("<message id='m'/>"), "policy-violation", "slow down", "wait")
    assert error_parts(reply) == ("wait", "policy-violation", "slow down")


def test_reply_by_attribute():
    """`by` names the entity that raised the error."""
    reply = make_error_reply(stanza("<iq type='get' id='1'/>"), "forbidden", by="example.com")
    assert reply.find(f"{{{ns.CLIENT}}}error").get("by") == "example.com"


def test_reply_echoes_iq_payload():
    """An iq error carries the original query, so the client sees what was refused."""
    original = stanza("<iq type='get' id='1'><query xmlns='jabber:iq:version'/></iq>")
    reply = make_error_reply(original, "service-unavailable")
    assert reply[0].tag == "{jabber:iq:version}query"
    assert len(original) == 1, "the original keeps its payload"


def test_reply_drops_huge_payload():
    """A payload over ECHO_PAYLOAD_LIMIT bytes is not echoed."""
    body = "x" * (ECHO_PAYLOAD_LIMIT + 1)
    reply = make_error_reply(stanza(f"<message id='m'><body>{body}</body></message>"), "gone")
    assert [etree.QName(c).localname for c in reply] == ["error"]


def test_presence_error_has_no_payload():
    """Presence errors carry only the error element."""
    original = stanza("<presence to='b@y' id='p'><status>hi</status></presence>")
    reply = make_error_reply(original, "remote-server-not-found")
    assert [etree.QName(c).localname for c in reply] == ["error"]


def test_reply_serializes_without_prefixes():
    """The reply serializes with default namespaces only, no generated prefixes."""
    original = stanza("<message to='b@y' id='m'><body>hi</body></message>")
    data = etree.tostring(make_error_reply(original, "item-not-found"))
    assert b"ns0" not in data
    assert data.startswith(b'<message xmlns="jabber:client" from="b@y" id="m" type="error">')


def test_never_answer_an_error():
    """An error stanza is recognised, and answering it raises instead of looping."""
    error = stanza("<message type='error' id='m'/>")
    assert is_error(error)
    assert not is_error(stanza("<message type='chat'/>"))
    with pytest.raises(ValueError):
        make_error_reply(error, "bad-request")


def test_error_reply_is_never_answered():
    """A reply built by make_error_reply is itself an error."""
    reply = make_error_reply(stanza("<iq type='get' id='1'/>"), "bad-request")
    assert is_error(reply)
    with pytest.raises(ValueError):
        make_error_reply(reply, "bad-request")


def test_unknown_condition_or_type():
    """Unknown stanza conditions and types are refused."""
    with pytest.raises(ValueError):
        make_error_reply(stanza("<iq type='get' id='1'/>"), "no-such-condition")
    with pytest.raises(ValueError):
        make_error_reply(stanza("<iq type='get' id='1'/>"), "bad-request", type="later")


def test_stanza_error_exception():
    """StanzaError carries condition, default type and text, and builds the reply."""
    exc = StanzaError("item-not-found", "no such node")
    assert (exc.condition, exc.type, exc.text) == ("item-not-found", "cancel", "no such node")
    reply = exc.reply_to(stanza("<iq type='get' id='7' from='a@x/r'/>"))
    assert reply.get("to") == "a@x/r"
    assert error_parts(reply) == ("cancel", "item-not-found", "no such node")
    with pytest.raises(ValueError):
        StanzaError("nope")
