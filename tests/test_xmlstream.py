"""The XMPP stream parser: headers, stanzas, restarts, limits and restricted XML."""

from __future__ import annotations

import psutil
import pytest
from lxml import etree

from mongoose.xmpp import ns
from mongoose.xmpp.xmlstream import (
    STREAM_END,
    Stanza,
    StreamEnd,
    StreamError,
    StreamStart,
    XMLStreamParser,
    _MarkupGuard,
    stream_header,
    to_bytes,
)

DECL = b"<?xml version='1.0'?>"
HEADER = (
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    b" to='example.com' version='1.0' xml:lang='en'>"
)
MESSAGE = (
    b"<message to='juliet@example.com/balcony' from='romeo@example.net/orchard' id='m1'"
    b" type='chat'><body>Art thou not Romeo?</body></message>"
)


def started(**kwargs) -> XMLStreamParser:
    """A parser that has already read the XML declaration and the stream header."""
    parser = XMLStreamParser(**kwargs)
    [start] = parser.feed(DECL + HEADER)
    assert isinstance(start, StreamStart)
    return parser


def feed_bytewise(parser: XMLStreamParser, data: bytes) -> list:
    events = []
    for i in range(len(data)):
        events += parser.feed(data[i : i + 1])
    return events


def stream_error(parser: XMLStreamParser, *chunks: bytes) -> StreamError:
    with pytest.raises(StreamError) as info:
        for chunk in chunks:
            parser.feed(chunk)
    return info.value


# --- the stream header -------------------------------------------------------------------


def test_header_attributes():
    """The header's attributes, xml:lang, content namespace and prefix are reported."""
    [start] = XMLStreamParser().feed(DECL + HEADER)
    assert start.attrs == {"to": "example.com", "version": "1.0"}
    assert (start.to, start.from_, start.version, start.id) == ("example.com", None, "1.0", None)
    assert start.lang == "en"
    assert start.ns == ns.CLIENT
    assert start.prefix == "stream"


def test_header_without_xml_declaration():
    """The XML declaration is optional."""
    [start] = XMLStreamParser().feed(HEADER)
    assert isinstance(start, StreamStart)


def test_header_bytewise():
    """A header fed one byte at a time gives one StreamStart once complete."""
    events = feed_bytewise(XMLStreamParser(), DECL + HEADER)
    assert [type(e) for e in events] == [StreamStart]


def test_wrong_stream_namespace():
    """A stream element outside the streams namespace is invalid-namespace."""
    header = b"<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong'>"
    assert stream_error(XMLStreamParser(), header).condition == "invalid-namespace"


def test_wrong_root_element():
    """A root element other than <stream> is invalid-namespace."""
    assert stream_error(XMLStreamParser(), b"<message xmlns='jabber:client'>").condition == (
        "invalid-namespace"
    )


def test_wrong_default_namespace():
    """A default namespace other than the configured content namespace is invalid-namespace."""
    header = HEADER.replace(b"jabber:client", b"jabber:server")
    assert stream_error(XMLStreamParser(), header).condition == "invalid-namespace"


def test_missing_default_namespace():
    """A header without a default namespace is invalid-namespace."""
    header = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>"
    assert stream_error(XMLStreamParser(), header).condition == "invalid-namespace"


def test_server_content_namespace():
    """The accepted content namespace is a constructor parameter."""
    header = HEADER.replace(b"jabber:client", b"jabber:server")
    [start] = XMLStreamParser(content_ns=ns.SERVER).feed(header)
    assert start.ns == ns.SERVER


def test_undeclared_stream_prefix():
    """A stream prefix without a declaration is bad-namespace-prefix."""
    header = b"<stream:stream xmlns='jabber:client'>"
    assert stream_error(XMLStreamParser(), header).condition == "bad-namespace-prefix"


# --- stanzas -----------------------------------------------------------------------------


def test_stanza_in_one_feed():
    """A complete stanza yields one Stanza event with a Clark-notation tag."""
    [event] = started().feed(MESSAGE)
    assert isinstance(event, Stanza)
    assert event.element.tag == "{jabber:client}message"
    assert event.element.get("id") == "m1"
    assert event.element.findtext("{jabber:client}body") == "Art thou not Romeo?"


def test_stanza_bytewise():
    """A stanza fed one byte at a time gives the same element as one feed."""
    [event] = feed_bytewise(started(), MESSAGE)
    [whole] = started().feed(MESSAGE)
    assert etree.tostring(event.element) == etree.tostring(whole.element)


def test_several_stanzas_in_one_feed():
    """Stanzas arriving together come out in order."""
    events = started().feed(MESSAGE + b"<presence/>" + b"<iq type='get' id='1'/>")
    assert [e.element.tag.split("}")[1] for e in events] == ["message", "presence", "iq"]


def test_stanza_is_detached_and_standalone():
    """A stanza has no parent and declares its namespace itself, so it moves cleanly."""
    [event] = started().feed(MESSAGE)
    element = event.element
    assert element.getparent() is None
    assert element.nsmap == {None: ns.CLIENT}
    wrapper = etree.Element(f"{{{ns.FORWARD}}}forwarded", nsmap={None: ns.FORWARD})
    wrapper.append(element)
    assert b'<message xmlns="jabber:client"' in etree.tostring(wrapper)


def test_split_utf8_sequence():
    """A multi-byte UTF-8 character split across feeds is decoded correctly."""
    text = "é€😀"
    data = f"<message><body>{text}</body></message>".encode()
    events = feed_bytewise(started(), data)
    assert events[0].element.findtext("{jabber:client}body") == text


def test_split_entity_reference():
    """A predefined entity reference split across feeds is accepted."""
    parser = started()
    assert parser.feed(b"<message><body>a &am") == []
    [event] = parser.feed(b"p; b &#x4") + parser.feed(b"1;</body></message>")
    assert event.element.findtext("{jabber:client}body") == "a & b A"


def test_cdata_may_contain_markup_lookalikes():
    """Inside CDATA, '<!--', '<?' and '&foo;' are plain text."""
    data = b"<message><body><![CDATA[<!-- <?pi?> &foo; <!DOCTYPE]]></body></message>"
    [event] = started().feed(data)
    assert event.element.findtext("{jabber:client}body") == "<!-- <?pi?> &foo; <!DOCTYPE"


def test_cdata_bytewise():
    """A CDATA section fed byte by byte, its ']]>' split, is still recognised."""
    data = b"<message><body><![CDATA[a]]b]]]></body></message><presence/>"
    events = feed_bytewise(started(), data)
    assert events[0].element.findtext("{jabber:client}body") == "a]]b]"
    assert len(events) == 2


def test_stream_end():
    """</stream:stream> yields StreamEnd."""
    assert started().feed(STREAM_END) == [StreamEnd()]


def test_data_after_stream_end():
    """Elements after the end of the stream are not-well-formed."""
    parser = started()
    parser.feed(STREAM_END)
    assert stream_error(parser, b"<presence/>").condition == "not-well-formed"


def test_undeclared_element_prefix():
    """An element with an undeclared prefix is bad-namespace-prefix."""
    assert stream_error(started(), b"<foo:bar/>").condition == "bad-namespace-prefix"


def test_undeclared_attribute_prefix():
    """An attribute with an undeclared prefix is bad-namespace-prefix."""
    error = stream_error(started(), b"<message foo:x='1'/>")
    assert error.condition == "bad-namespace-prefix"


def test_stream_level_text():
    """Text other than whitespace between stanzas is bad-format."""
    error = stream_error(started(), b"hello <presence/>")
    assert error.condition == "bad-format"


def test_garbage_is_not_well_formed():
    """Bytes that are not XML are not-well-formed."""
    assert stream_error(started(), b"<message><body></message>").condition == "not-well-formed"


def test_error_is_final():
    """After a StreamError every feed raises it again."""
    parser = started()
    first = stream_error(parser, b"<a></b>")
    assert stream_error(parser, MESSAGE) is first


# --- keepalives and restarts -------------------------------------------------------------


def test_keepalives_yield_nothing():
    """Single-byte keepalives give no events and are not counted as a pending stanza."""
    parser = started(max_stanza_size=2000)
    assert parser.feed(MESSAGE) != []
    for _ in range(10_000):
        assert parser.feed(b" ") == []
    assert parser.feed(b"\n\t\r") == []
    assert parser.pending_bytes < 2000
    assert len(parser.feed(MESSAGE)) == 1


def test_million_keepalives_do_not_grow_memory():
    """Twenty million bytes of keepalives are parsed and dropped, not accumulated."""
    parser = started(max_stanza_size=10_000)
    process = psutil.Process()
    chunk = b" " * 1_000_000
    parser.feed(chunk)
    before = process.memory_info().rss
    for _ in range(20):
        assert parser.feed(chunk) == []
        assert parser.pending_bytes < 10_000
    assert process.memory_info().rss - before < 10_000_000
    assert len(parser.feed(MESSAGE)) == 1


def test_restart_after_reset():
    """After reset() a new XML declaration and header start a new stream."""
    parser = started()
    parser.feed(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    parser.reset()
    [start] = parser.feed(DECL + HEADER.replace(b"example.com", b"example.org"))
    assert start.to == "example.org"
    assert len(parser.feed(MESSAGE)) == 1


def test_xml_declaration_mid_stream():
    """An XML declaration after the header, without a reset, is restricted-xml."""
    assert stream_error(started(), DECL).condition == "restricted-xml"


# --- restricted XML (RFC 6120 §11.1) -----------------------------------------------------


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param(b"<!DOCTYPE stream>", id="doctype"),
        pytest.param(
            b'<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>',
            id="billion-laughs",
        ),
        pytest.param(
            b'<!DOCTYPE foo [<!ENTITY x SYSTEM "file:///etc/passwd">]>', id="external-entity"
        ),
        pytest.param(b"<message><body>&foo;</body></message>", id="undefined-entity"),
        pytest.param(b"<message to='&foo;'/>", id="entity-in-attribute"),
        pytest.param(b"<?xml-stylesheet href='x'?>", id="processing-instruction"),
        pytest.param(b"<message><?pi data?></message>", id="nested-pi"),
        pytest.param(b"<!-- comment -->", id="comment"),
        pytest.param(b"<message><!-- c --></message>", id="nested-comment"),
    ],
)
def test_restricted_xml(hostile):
    """DTDs, entity declarations and references, comments and PIs are restricted-xml."""
    assert stream_error(started(), hostile).condition == "restricted-xml"


@pytest.mark.parametrize(
    "hostile",
    [
        b"<!DOCTYPE stream:stream [<!ENTITY x 'y'>]>" + HEADER,
        b"<!-- hi -->" + HEADER,
        b"<?php echo 1; ?>" + HEADER,
    ],
)
def test_restricted_xml_before_header(hostile):
    """Restricted markup before the stream header is caught too, even byte by byte."""
    assert stream_error(XMLStreamParser(), hostile).condition == "restricted-xml"
    parser = XMLStreamParser()
    error = stream_error(parser, *(hostile[i : i + 1] for i in range(len(hostile))))
    assert error.condition == "restricted-xml"


def test_restricted_xml_split_across_feeds():
    """A comment whose '<!' and '--' arrive in different feeds is still rejected."""
    assert stream_error(started(), b"<message><", b"!", b"-- x -->").condition == ("restricted-xml")


def test_guard_holds_back_undecided_markup():
    """The guard passes nothing of a split '<!' on to lxml before rejecting the DOCTYPE."""
    guard = _MarkupGuard()
    assert guard.approve(HEADER + b"<!") == HEADER
    with pytest.raises(StreamError) as info:
        guard.approve(b"DOCTYPE x>")
    assert info.value.condition == "restricted-xml"


# --- encodings ---------------------------------------------------------------------------


def test_invalid_utf8():
    """Bytes that are not UTF-8 are not-well-formed."""
    error = stream_error(started(), b"<message><body>\xc3\x28</body></message>")
    assert error.condition == "not-well-formed"


def test_truncated_utf8():
    """A multi-byte sequence cut short by markup is not-well-formed."""
    error = stream_error(started(), b"<message><body>\xe2\x82", b"</body></message>")
    assert error.condition == "not-well-formed"


def test_declared_other_encoding():
    """An XML declaration naming an encoding other than UTF-8 is unsupported-encoding."""
    decl = b"<?xml version='1.0' encoding='ISO-8859-1'?>"
    assert stream_error(XMLStreamParser(), decl + HEADER).condition == "unsupported-encoding"


def test_declared_utf8_encoding():
    """An XML declaration naming UTF-8 is fine."""
    decl = b"<?xml version='1.0' encoding='UTF-8'?>"
    [start] = XMLStreamParser().feed(decl + HEADER)
    assert isinstance(start, StreamStart)


def test_utf16_stream():
    """A UTF-16 stream is unsupported-encoding."""
    data = "\ufeff<stream:stream>".encode("utf-16-le")
    assert stream_error(XMLStreamParser(), data).condition == "unsupported-encoding"


# --- limits ------------------------------------------------------------------------------


def test_oversized_stanza_rejected_while_arriving():
    """An endless stanza is policy-violation before it is all fed, holding ~max bytes."""
    parser = started(max_stanza_size=10_000)
    chunks = [b"<message><body>"] + [b"x" * 100] * 1000
    fed = 0
    with pytest.raises(StreamError) as info:
        for chunk in chunks:
            parser.feed(chunk)
            fed += 1
    assert info.value.condition == "policy-violation"
    assert fed < 110


def test_oversized_attribute_rejected_while_arriving():
    """An endless start tag (huge attribute) is cut off by the size limit as well."""
    parser = started(max_stanza_size=10_000)
    chunks = [b"<message to='"] + [b"x" * 100] * 1000
    error = stream_error(parser, *chunks)
    assert error.condition == "policy-violation"


def test_endless_whitespace_inside_a_tag():
    """Whitespace is counted while a start tag is unfinished, unlike keepalives."""
    parser = started(max_stanza_size=10_000)
    error = stream_error(parser, b"<message a='>'", *([b" " * 100] * 1000))
    assert error.condition == "policy-violation"


def test_large_stanza_within_limit():
    """A stanza well under the limit passes, in small chunks or in one feed."""
    data = b"<message><body>" + b"y" * 100_000 + b"</body></message>"
    chunked = started()
    events = []
    for i in range(0, len(data), 1000):
        events += chunked.feed(data[i : i + 1000])
    assert len(events) == 1
    assert len(started().feed(data)) == 1


def test_depth_limit():
    """Nesting deeper than max_depth below the stanza is policy-violation."""
    ok = b"<a>" * 4 + b"</a>" * 4
    assert len(started(max_depth=4).feed(ok)) == 1
    error = stream_error(started(max_depth=4), b"<a>" * 5)
    assert error.condition == "policy-violation"


def test_very_deep_nesting_in_one_feed():
    """Nesting past libxml2's own cap in a single feed is policy-violation as well."""
    assert stream_error(started(), b"<a>" * 1000).condition == "policy-violation"


# --- writing -----------------------------------------------------------------------------


def test_stream_header_roundtrip():
    """stream_header() produces a header our own parser accepts, attributes escaped."""
    header = stream_header(from_="example.com", id_="a'b\"c", to="juliet@example.com")
    assert header.startswith(b"<?xml version='1.0'?><stream:stream ")
    [start] = XMLStreamParser().feed(header)
    assert start.attrs == {
        "from": "example.com",
        "to": "juliet@example.com",
        "id": "a'b\"c",
        "version": "1.0",
    }
    assert start.lang == "en"


def test_stream_header_optional_attributes():
    """Omitted id and to leave the attributes out; ns picks the content namespace."""
    header = stream_header(from_="example.com", id_=None, to=None, ns=ns.SERVER)
    [start] = XMLStreamParser(content_ns=ns.SERVER).feed(header)
    assert set(start.attrs) == {"from", "version"}


def test_to_bytes_drops_only_the_redundant_declaration():
    """to_bytes removes the top xmlns='jabber:client' and keeps nested declarations."""
    data = b"<iq type='get' id='1'><query xmlns='jabber:iq:version'/></iq>"
    [event] = started().feed(data)
    assert to_bytes(event.element) == (
        b'<iq type="get" id="1"><query xmlns="jabber:iq:version"/></iq>'
    )


def test_to_bytes_utf8_and_escaping():
    """to_bytes writes UTF-8 text and escapes markup characters."""
    element = etree.Element("{jabber:client}message", nsmap={None: ns.CLIENT})
    etree.SubElement(element, "{jabber:client}body").text = "é <&> \"'"
    assert to_bytes(element) == "<message><body>é &lt;&amp;&gt; \"'</body></message>".encode()


def test_to_bytes_other_namespace_untouched():
    """An element in another namespace keeps its declaration."""
    element = etree.Element("{urn:x}thing", nsmap={None: "urn:x"})
    assert to_bytes(element) == b'<thing xmlns="urn:x"/>'
