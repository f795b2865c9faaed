"""One direction of an XMPP stream: bytes in, stream events out (RFC 6120 §4, §11).

Reading
-------
:class:`XMLStreamParser` is fed the bytes a peer sends, in whatever pieces the socket
delivers them, and returns the events those bytes complete:

- :class:`StreamStart` once the ``<stream:stream>`` opening tag is complete;
- :class:`Stanza` for each complete top-level child of the stream (stanzas, but also
  ``<starttls/>``, ``<auth/>``, ``<r/>`` ... : every first-level element);
- :class:`StreamEnd` for ``</stream:stream>``.

Contracts the session code relies on:

- A stanza element is a standalone tree: its own lxml document, no parent, its namespaces
  declared on itself. Its tag is in Clark notation, ``{jabber:client}message``, and stays
  clean when moved into another tree (say a carbons ``<forwarded/>``). Detaching it from
  the stream root means memory does not grow with the number of stanzas.
- Whitespace between stanzas (keepalives) produces no event and is not kept anywhere;
  stream-level text that is not whitespace is a ``bad-format`` stream error.
- Any problem raises :class:`StreamError`, whose ``condition`` is the RFC 6120 §4.9.3
  condition to send before closing. The parser is then spent: every later ``feed`` raises
  the same error.
- ``reset()`` starts a new stream on the same parser, as after STARTTLS and SASL success
  (RFC 6120 §5.4.3.3, §6.4.6): the peer sends a new XML declaration and header. Call it
  when the element that triggers the restart has been handled; events later in the same
  ``feed`` result still belong to the old stream (a conforming peer sends nothing there,
  since it waits for ``<proceed/>`` or ``<success/>``).

Limits (RFC 6120 §13.12 on resource exhaustion)
-----------------------------------------------
- ``max_stanza_size``: the parser counts the bytes that may belong to an unfinished
  top-level element and raises ``policy-violation`` as soon as they pass the limit, so an
  endless stanza costs at most about ``max_stanza_size`` of buffered memory. Bytes are fed
  to lxml in slices of at most ``_SLICE`` bytes and counted per slice, so the count can be
  up to one slice too high: a stanza within ``max_stanza_size - _SLICE`` always passes,
  one over ``max_stanza_size`` never completes.
- ``max_depth``: elements nested deeper than this inside a stanza (the stanza itself is
  depth 1) raise ``policy-violation``.
- Huge attribute counts, names and texts are covered by the size limit.

Restricted XML (RFC 6120 §11.1)
-------------------------------
A stream must not contain comments, processing instructions, DTDs or entity references
other than the five predefined ones (character references are fine). lxml is configured
not to load DTDs, resolve entities or touch the network, but we do not rely on that alone:
:class:`_MarkupGuard` scans the raw bytes before lxml sees them, so lxml is never fed a
byte of forbidden markup. It tracks CDATA sections (where ``<!``, ``<?`` and ``&`` are
plain text) and holds back the few bytes of a construct split across ``feed`` calls until
it can judge them. The XML declaration is allowed only as the first markup of a stream and
must not name an encoding other than UTF-8 (RFC 6120 §11.6: ``unsupported-encoding``).

Writing
-------
:func:`stream_header` and :data:`STREAM_END` frame the server's side of the stream;
:func:`to_bytes` serializes a stanza for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from lxml import etree

from mongoose.xmpp import ns

__all__ = [
    "STREAM_END",
    "Event",
    "Stanza",
    "StreamEnd",
    "StreamError",
    "StreamStart",
    "XMLStreamParser",
    "stream_header",
    "to_bytes",
]


class StreamError(Exception):
    """A stream-level error: send ``stream_error(condition, text)`` and close the stream."""

    def __init__(self, condition: str, text: str = "") -> None:
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text


@dataclass(slots=True)
class StreamStart:
    """The peer's ``<stream:stream>`` opening tag.

    `attrs` holds its attributes without a namespace (``to``, ``from``, ``version``,
    ``id``; any namespaced ones in Clark notation), `lang` its ``xml:lang``, `ns` the
    default (content) namespace it declares and `prefix` the prefix bound to the streams
    namespace (normally ``"stream"``). Checking ``to`` and ``version`` (host-unknown,
    unsupported-version) is the session's job.
    """

    attrs: dict[str, str]
    lang: str | None
    ns: str
    prefix: str

    @property
    def to(self) -> str | None:
        return self.attrs.get("to")

    @property
    def from_(self) -> str | None:
        return self.attrs.get("from")

    @property
    def version(self) -> str | None:
        return self.attrs.get("version")

    @property
    def id(self) -> str | None:
        return self.attrs.get("id")


@dataclass(slots=True)
class Stanza:
    """A complete top-level element of the stream, detached and standalone."""

    element: etree._Element


@dataclass(slots=True)
class StreamEnd:
    """The peer closed its stream with ``</stream:stream>``."""


Event = StreamStart | Stanza | StreamEnd

STREAM_END = b"</stream:stream>"

# lxml gets at most this many bytes per call, which bounds how far the stanza size count
# can run ahead of the truth (see "Limits" above).
_SLICE = 4096

_PARSER_OPTIONS = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "huge_tree": False,
    "collect_ids": False,
    "remove_comments": False,  # the guard rejects them; never silently drop what we forbid
    "remove_pis": False,
}

_STREAM_NS = ns.STREAM  # stream_header's `ns` parameter hides the module
_STREAM_TAG = f"{{{ns.STREAM}}}stream"

# libxml2's code for a hit resource limit (its own depth cap of 256, name or text length).
_XML_ERR_RESOURCE_LIMIT = 114
_XML_ERR_UNSUPPORTED_ENCODING = 32


class XMLStreamParser:
    """Incremental parser for the bytes one peer sends on an XMPP stream.

    ``content_ns`` is the default namespace the stream header must declare: ``jabber:client``
    for client streams, ``jabber:server`` for server-to-server ones.
    """

    def __init__(
        self,
        max_stanza_size: int = 262144,
        max_depth: int = 64,
        content_ns: str = ns.CLIENT,
    ) -> None:
        self.max_stanza_size = max_stanza_size
        self.max_depth = max_depth
        self.content_ns = content_ns
        self._error: StreamError | None = None
        self.reset()

    def reset(self) -> None:
        """Expect a brand-new stream: XML declaration (optional) and stream header."""
        self._guard = _MarkupGuard()
        self._parser = etree.XMLPullParser(events=("start", "end"), **_PARSER_OPTIONS)
        self._root: etree._Element | None = None
        # 0 outside the stream element, 1 at stream level, 2 inside a top-level element.
        self._depth = 0
        # Bytes fed to lxml that may belong to an unfinished top-level element.
        self._pending = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes fed that may belong to an unfinished top-level element (an upper bound)."""
        return self._pending

    def feed(self, data: bytes) -> list[Event]:
        """Parse `data`, the next bytes of the stream; return the events they complete."""
        if self._error is not None:
            raise self._error
        try:
            data = self._guard.approve(data)
            events: list[Event] = []
            for start in range(0, len(data), _SLICE):
                self._feed_slice(data[start : start + _SLICE], events)
            return events
        except StreamError as exc:
            self._error = exc
            raise

    def _feed_slice(self, data: bytes, events: list[Event]) -> None:
        try:
            self._parser.feed(data)
        except etree.XMLSyntaxError as exc:
            raise _syntax_error(exc) from None
        boundary = False
        for kind, element in self._parser.read_events():
            if kind == "start":
                self._depth += 1
                if self._depth == 1:
                    events.append(self._stream_start(element))
                    boundary = True
                else:
                    self._check_element(element)
            else:
                self._depth -= 1
                if self._depth == 1:
                    events.append(Stanza(self._detach(element)))
                    boundary = True
                elif self._depth == 0:
                    events.append(StreamEnd())
        # Count what lxml may be holding of an unfinished element. We do not know where in
        # the slice an element ended, so after a boundary the whole slice counts.
        self._pending = len(data) if boundary else self._pending + len(data)
        if self._drop_stream_text() and data.isspace():
            # lxml turned these keepalives into stream-level text, so it holds no
            # unfinished element: nothing is pending.
            self._pending = 0
        if self._pending > self.max_stanza_size:
            raise StreamError(
                "policy-violation", f"stanza larger than {self.max_stanza_size} bytes"
            )

    def _stream_start(self, root: etree._Element) -> StreamStart:
        tag = root.tag
        if tag != _STREAM_TAG:
            if tag[0] != "{" and ":" in tag:
                raise StreamError("bad-namespace-prefix", f"undeclared prefix in <{tag}>")
            raise StreamError("invalid-namespace", f"stream element is {tag}, not {_STREAM_TAG}")
        content_ns = root.nsmap.get(None)
        if content_ns != self.content_ns:
            raise StreamError(
                "invalid-namespace",
                f"default namespace is {content_ns!r}, expected {self.content_ns!r}",
            )
        attrs = dict(root.attrib)
        lang = attrs.pop(ns.XML_LANG, None)
        self._root = root
        return StreamStart(attrs, lang, content_ns, root.prefix)

    def _check_element(self, element: etree._Element) -> None:
        if self._depth > self.max_depth + 1:
            raise StreamError("policy-violation", f"elements nested deeper than {self.max_depth}")
        # libxml2 only warns about undeclared prefixes and keeps "p:name" as a plain name;
        # passing such names on would make us send XML that is not namespace-well-formed.
        tag = element.tag
        if tag[0] != "{" and ":" in tag:
            raise StreamError("bad-namespace-prefix", f"undeclared prefix in <{tag}>")
        # keys() is the cheapest way to list attribute names: iterating an lxml element
        # yields its children, and iterating .attrib is twice as slow.
        for key in element.keys():  # noqa: SIM118
            if key[0] != "{" and ":" in key:
                raise StreamError("bad-namespace-prefix", f"undeclared prefix in {key}=")

    def _detach(self, element: etree._Element) -> etree._Element:
        # A copy taken while the element is still in the stream declares the inherited
        # default namespace on itself; lxml's remove() would instead invent an "ns0:" prefix.
        # (lxml's __copy__ is a deep copy, and skips copy.deepcopy's memo bookkeeping.)
        stanza = element.__copy__()
        tail = element.tail
        self._root.remove(element)
        if tail and not tail.isspace():
            raise StreamError("bad-format", "text at stream level")
        stanza.tail = None
        return stanza

    def _drop_stream_text(self) -> bool:
        """Discard stream-level text (keepalives); say whether there was any."""
        root = self._root
        if root is None:
            return False
        text = root.text
        if not text:
            return False
        if not text.isspace():
            raise StreamError("bad-format", "text at stream level")
        root.text = None
        return True


def _syntax_error(exc: etree.XMLSyntaxError) -> StreamError:
    if exc.code == _XML_ERR_RESOURCE_LIMIT:
        return StreamError("policy-violation", exc.msg)
    if exc.code == _XML_ERR_UNSUPPORTED_ENCODING:
        return StreamError("unsupported-encoding", exc.msg)
    return StreamError("not-well-formed", exc.msg)


# Markup the guard must look at: a possible comment/DTD/CDATA or PI, an entity reference
# that is not one of the five predefined ones or a character reference (including one cut
# off by the end of the buffer), and a "<" whose next byte has not arrived yet.
_SUSPECT = re.compile(rb"<[!?]|<\Z|&(?!(?:lt|gt|amp|quot|apos|#[0-9]{1,7}|#x[0-9a-fA-F]{1,6});)")
# What may still become an allowed reference once more bytes arrive.
_REF_PREFIX = re.compile(rb"&(?:[a-z]{0,4}|#[0-9]{0,7}|#x[0-9a-fA-F]{0,6})\Z")
_ENTITY_REF = re.compile(rb"&[^\s<>&;]{1,64};")
_CDATA_OPEN = b"<![CDATA["
_XML_DECL = re.compile(rb"<\?xml[ \t\r\n][^<>]*?\?>")
_DECL_ENCODING = re.compile(rb"""encoding\s*=\s*(['"])([^'"]*)\1""")
_MAX_DECL = 256


class _MarkupGuard:
    """Rejects restricted XML in the raw bytes before lxml sees them (RFC 6120 §11.1).

    ``approve(data)`` returns the bytes lxml may parse now: `data` itself, or with a few
    bytes of an undecided construct at the end held back and put in front of the next
    call's data.
    """

    __slots__ = ("_at_start", "_carry", "_in_cdata")

    def __init__(self) -> None:
        self._carry = b""
        self._in_cdata = False
        self._at_start = True  # no "<" approved yet: the XML declaration may still come

    def approve(self, data: bytes) -> bytes:
        buf = self._carry + data if self._carry else data
        if self._at_start:
            _check_byte_order(buf)
        elif not self._in_cdata and _nothing_suspect(buf):
            self._carry = b""
            return buf
        pos = 0
        while True:
            if self._in_cdata:
                end = buf.find(b"]]>", pos)
                if end < 0:
                    return self._hold(buf, max(pos, len(buf) - _cdata_end_prefix(buf)))
                self._in_cdata = False
                pos = end + 3
                continue
            match = _SUSPECT.search(buf, pos)
            if match is None:
                return self._hold(buf, len(buf))
            pos = self._judge(buf, match.start())
            if pos is None:
                return self._hold(buf, match.start())

    def _judge(self, buf: bytes, i: int) -> int | None:
        """Where to resume scanning after the markup at `i`, or None to wait for more."""
        if buf[i] == 0x26:  # "&"
            if _REF_PREFIX.match(buf, i):
                return None
            ref = _ENTITY_REF.match(buf, i)
            if ref:
                name = ref.group().decode("utf-8", "replace")
                raise StreamError("restricted-xml", f"entity reference {name} is not allowed")
            raise StreamError("not-well-formed", "'&' must start a character or entity reference")
        head = buf[i : i + len(_CDATA_OPEN)]
        if len(head) < 2:
            return None
        if head[1] == 0x21:  # "<!"
            if head == _CDATA_OPEN:
                self._in_cdata = True
                return i + len(_CDATA_OPEN)
            if len(head) < len(_CDATA_OPEN) and _CDATA_OPEN.startswith(head):
                return None
            what = "comments" if head.startswith(b"<!--") else "DTDs and markup declarations"
            raise StreamError("restricted-xml", f"{what} are not allowed")
        return self._judge_declaration(buf, i)

    def _judge_declaration(self, buf: bytes, i: int) -> int | None:
        if not (self._at_start and buf.find(b"<") == i):
            raise StreamError("restricted-xml", "processing instructions are not allowed")
        decl = _XML_DECL.match(buf, i)
        if decl is None:
            if b">" not in buf[i:] and len(buf) - i < _MAX_DECL:
                return None
            raise StreamError("restricted-xml", "processing instructions are not allowed")
        encoding = _DECL_ENCODING.search(decl.group())
        if encoding and encoding.group(2).lower() not in (b"utf-8", b"utf8"):
            raise StreamError("unsupported-encoding", "streams must be UTF-8")
        self._at_start = False
        return decl.end()

    def _hold(self, buf: bytes, cut: int) -> bytes:
        self._carry = buf[cut:]
        approved = buf[:cut] if cut < len(buf) else buf
        if self._at_start and b"<" in approved:
            self._at_start = False
        return approved


def _nothing_suspect(buf: bytes) -> bool:
    """A quick pass for the common stanza: no "&", "<!", "<?" nor a trailing "<"."""
    # Single-byte searches are memchr calls, several times faster than _SUSPECT or a
    # two-byte search, so the two-byte ones run only when "!" or "?" occurs at all.
    return (
        b"&" not in buf
        and (b"!" not in buf or b"<!" not in buf)
        and (b"?" not in buf or b"<?" not in buf)
        and buf[-1:] != b"<"
    )


def _check_byte_order(buf: bytes) -> None:
    # UTF-16 and UTF-32 show up as a byte order mark or a NUL among the first bytes.
    if buf.startswith((b"\xfe\xff", b"\xff\xfe")) or b"\x00" in buf[:4]:
        raise StreamError("unsupported-encoding", "streams must be UTF-8")


def _cdata_end_prefix(buf: bytes) -> int:
    """How many bytes at the end of `buf` could begin a "]]>" completed by the next feed."""
    if buf.endswith(b"]]"):
        return 2
    return 1 if buf.endswith(b"]") else 0


def stream_header(
    *,
    from_: str,
    id_: str | None,
    to: str | None,
    version: str = "1.0",
    lang: str = "en",
    ns: str = ns.CLIENT,
) -> bytes:
    """The XML declaration and ``<stream:stream ...>`` opening tag a server sends."""
    attrs = [f"from={quoteattr(from_)}"]
    if to is not None:
        attrs.append(f"to={quoteattr(to)}")
    if id_ is not None:
        attrs.append(f"id={quoteattr(id_)}")
    if version:
        attrs.append(f"version={quoteattr(version)}")
    if lang:
        attrs.append(f"xml:lang={quoteattr(lang)}")
    return (
        f"<?xml version='1.0'?><stream:stream {' '.join(attrs)}"
        f' xmlns={quoteattr(ns)} xmlns:stream="{_STREAM_NS}">'
    ).encode()


def to_bytes(element: etree._Element, content_ns: str = ns.CLIENT) -> bytes:
    """Serialize a top-level element for a stream whose default namespace is `content_ns`.

    UTF-8, no XML declaration. The stream already declares `content_ns` as the default
    namespace, so the top element's own ``xmlns="jabber:client"`` is dropped; every other
    declaration stays, so children keep their meaning.
    """
    data = etree.tostring(element, encoding="utf-8", xml_declaration=False)
    declaration = f' xmlns="{content_ns}"'.encode()
    # lxml escapes '>' and '"' in attribute values, so the first '>' ends the top start
    # tag and the declaration found before it is the top element's own.
    i = data.find(declaration, 0, data.find(b">"))
    if i < 0:
        return data
    return data[:i] + data[i + len(declaration) :]
