"""JIDs (RFC 7622): splitting, preparation of each part, errors and caching."""

from __future__ import annotations

import pytest

from mongoose.xmpp.jid import JID, InvalidJID, make


def test_full_jid_parts():
    """A full JID splits into localpart, domainpart and resourcepart."""
    jid = JID.parse("juliet@example.com/balcony")
    assert (jid.local, jid.domain, jid.resource) == ("juliet", "example.com", "balcony")
    assert str(jid) == jid.full == "juliet@example.com/balcony"
    assert jid.bare_str == "juliet@example.com"


def test_domain_only():
    """A bare domain has no localpart and no resource."""
    jid = JID.parse("example.com")
    assert (jid.local, jid.domain, jid.resource) == (None, "example.com", None)
    assert str(jid) == "example.com"


def test_domain_with_resource():
    """A domain with a resource has no localpart."""
    jid = JID.parse("example.com/admin")
    assert (jid.local, jid.resource) == (None, "admin")
    assert str(jid) == "example.com/admin"


def test_resource_may_contain_separators():
    """Everything after the first '/' is the resource, '@' and '/' included."""
    jid = JID.parse("juliet@example.com/foo@bar/baz")
    assert (jid.local, jid.domain, jid.resource) == ("juliet", "example.com", "foo@bar/baz")


def test_bare():
    """bare drops the resource and is itself for a bare JID."""
    jid = JID.parse("juliet@example.com/balcony")
    bare = jid.bare
    assert bare == JID.parse("juliet@example.com")
    assert bare.bare is bare


def test_equality_and_hash():
    """JIDs that prepare to the same parts are equal and hash alike."""
    a = JID.parse("Juliet@Example.COM/balcony")
    b = make("juliet", "example.com", "balcony")
    assert a == b
    assert {a: 1}[b] == 1


def test_immutable():
    """A JID's parts cannot be changed."""
    jid = JID.parse("juliet@example.com")
    with pytest.raises(AttributeError):
        jid.local = "romeo"


def test_localpart_is_lowercased():
    """The localpart is case-mapped, ASCII and not."""
    assert JID.parse("JULIET@example.com").local == "juliet"
    assert JID.parse("ÉLODIE@example.com").local == "élodie"


def test_localpart_keeps_sharp_s():
    """Case mapping is toLowerCase (RFC 8265), not case folding: 'ß' stays."""
    assert JID.parse("straße@example.com").local == "straße"


def test_localpart_width_mapping():
    """Fullwidth letters in a localpart map to their ordinary forms."""
    assert JID.parse("\uff2a\uff35\uff2c\uff29\uff25\uff34@example.com").local == "juliet"


def test_localpart_nfc():
    """The localpart is NFC-normalized."""
    assert JID.parse("e\u0301lodie@example.com").local == "\u00e9lodie"


def test_domain_lowercased_and_trailing_dot_stripped():
    """The domain is lowercased and loses one trailing dot."""
    assert JID.parse("juliet@Example.COM.").domain == "example.com"


def test_unicode_domain():
    """Unicode domain labels are accepted and lowercased."""
    assert JID.parse("juliet@BÜCHER.example").domain == "bücher.example"


def test_ipv6_literal_domain():
    """A bracketed IPv6 address is a valid domainpart."""
    assert JID.parse("juliet@[0:0::1]/r").domain == "[::1]"


def test_resource_case_and_spaces_kept():
    """The resourcepart keeps its case and inner spaces."""
    assert JID.parse("juliet@example.com/My Balcony").resource == "My Balcony"


def test_resource_nfc_and_space_mapping():
    """The resourcepart is NFC-normalized and non-ASCII spaces become U+0020."""
    jid = JID.parse("juliet@example.com/cafe\u0301\u00a0bar")
    assert jid.resource == "caf\u00e9 bar"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "@example.com",
        "juliet@",
        "juliet@example.com/",
        "example.com/",
        "jul iet@example.com",
        "jul\tiet@example.com",
        'jul"iet@example.com',
        "jul&iet@example.com",
        "jul'iet@example.com",
        "jul:iet@example.com",
        "jul<iet@example.com",
        "jul>iet@example.com",
        "jul\x00iet@example.com",
        "jul\u200biet@example.com",
        "☃@example.com",
        "ﬁ@example.com",
        "a@b@example.com",
        "juliet@exa mple.com",
        "juliet@example..com",
        "juliet@.",
        "juliet@" + "a" * 64 + ".com",
        "juliet@[not-an-ip]",
        "juliet@example.com/bal\x07cony",
    ],
)
def test_invalid(text):
    """Malformed JIDs raise InvalidJID, a ValueError."""
    with pytest.raises(InvalidJID):
        JID.parse(text)
    assert issubclass(InvalidJID, ValueError)


def test_error_message_names_the_problem():
    """The InvalidJID message says which part is wrong and why."""
    with pytest.raises(InvalidJID, match="localpart"):
        JID.parse("jul iet@example.com")


def test_label_of_63_characters():
    """A domain label of exactly 63 characters is allowed."""
    assert JID.parse("juliet@" + "a" * 63 + ".com").domain.startswith("a" * 63)


@pytest.mark.parametrize("part", ["local", "domain", "resource"])
def test_part_length_limit(part):
    """Each part may be 1023 bytes of UTF-8 but not 1024."""
    long_domain = ".".join(["a" * 63] * 16)  # 1023 characters
    fits = {
        "local": ("é" * 511 + "a", "example.com", None),
        "domain": (None, long_domain, None),
        "resource": (None, "example.com", "é" * 511 + "a"),
    }[part]
    make(*fits)
    too_long = {
        "local": ("é" * 512, "example.com", None),
        "domain": (None, "a" * 62 + long_domain[63:] + ".a", None),  # 1024 characters
        "resource": (None, "example.com", "é" * 512),
    }[part]
    with pytest.raises(InvalidJID, match="1023"):
        make(*too_long)


def test_make_validates_each_part():
    """make() prepares parts like parse() and rejects a separator inside a localpart."""
    assert make("Juliet", "Example.com", "Balcony") == JID("juliet", "example.com", "Balcony")
    with pytest.raises(InvalidJID):
        make("juliet@evil", "example.com")
    with pytest.raises(InvalidJID):
        make("", "example.com")
    with pytest.raises(InvalidJID):
        make(None, "example.com", "")


def test_parse_is_cached():
    """Parsing the same short string twice returns the same object from the cache."""
    assert JID.parse("cache@example.com/r") is JID.parse("cache@example.com/r")


def test_long_strings_are_not_cached():
    """Strings longer than the cache's length limit are parsed afresh each time."""
    text = "juliet@example.com/" + "r" * 500
    assert JID.parse(text) == JID.parse(text)
    assert JID.parse(text) is not JID.parse(text)
