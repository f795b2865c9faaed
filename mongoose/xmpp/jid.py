"""JIDs, RFC 7622: ``[localpart@]domainpart[/resourcepart]``.

Parsing splits at the first ``/`` (the resourcepart may itself contain ``/`` and ``@``),
then at the first ``@`` before it (RFC 7622 §3.2), and prepares each part:

- localpart: an approximation of the PRECIS UsernameCaseMapped profile (RFC 8265 §3.3):
  fullwidth and halfwidth forms mapped to their ordinary forms, lowercased (RFC 8265 maps
  case with toLowerCase, so ``ß`` stays ``ß``; Python's ``casefold`` would give ``ss``),
  NFC. Rejected: ``"&'/:<>@``, whitespace, control and format characters, and outside
  ASCII anything but letters, marks and digits, or with a compatibility decomposition
  (PRECIS IdentifierClass disallows symbols, punctuation and HasCompat code points).
- domainpart: IDNA-style, without the full IDNA2008 tables: NFC, lowercased, one trailing
  dot stripped; labels non-empty, at most 63 characters, and free of whitespace, controls
  and URI delimiters. An IPv6 literal in brackets is accepted when ``ipaddress`` accepts it.
- resourcepart: PRECIS OpaqueString (RFC 8265 §4.2): non-ASCII spaces mapped to U+0020,
  NFC, case kept; control characters rejected.

Each part is 1 to 1023 bytes of UTF-8 after preparation; a separator with nothing after it
(``@example.com``, ``example.com/``) is an error. Errors are :class:`InvalidJID`, a
``ValueError`` whose message names the problem.

Parsing runs for every stanza's addresses, so :meth:`JID.parse` keeps an LRU cache of
65536 whole strings; strings longer than ``_CACHED_MAX_LEN`` are parsed uncached so that
hostile long addresses cannot pin up to 3 KB each in the cache. Invalid input is never
cached (``lru_cache`` does not keep exceptions).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from dataclasses import dataclass

__all__ = ["JID", "InvalidJID", "make"]

_MAX_PART_BYTES = 1023
_MAX_LABEL_CHARS = 63
_CACHE_SIZE = 65536
_CACHED_MAX_LEN = 256

# ASCII characters each part rejects: C0 controls, space and DEL everywhere, plus the
# characters RFC 7622 §3.3.1 excludes from localparts and URI delimiters in domains.
_LOCAL_BAD_ASCII = re.compile(r"[\x00-\x20\x7f\"&'/:<>@]")
_DOMAIN_BAD_ASCII = re.compile(r"[\x00-\x20\x7f\"&'/:<>@\\\[\]?#%]")
_RESOURCE_BAD_ASCII = re.compile(r"[\x00-\x1f\x7f]")
# Unicode general categories PRECIS IdentifierClass lets through outside ASCII.
_IDENTIFIER_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd"})


class InvalidJID(ValueError):
    """The text is not a valid JID; the message says why."""


@dataclass(frozen=True, slots=True)
class JID:
    """A prepared JID. Immutable and hashable; equal JIDs have equal parts.

    Build one with :meth:`parse` or :func:`make`, which validate and normalize; the
    constructor trusts its arguments.
    """

    local: str | None
    domain: str
    resource: str | None = None

    @staticmethod
    def parse(text: str) -> JID:
        """Parse and prepare `text`; raise :class:`InvalidJID` if it is not a JID."""
        if len(text) <= _CACHED_MAX_LEN:
            return _parse_cached(text)
        return _parse(text)

    @property
    def bare(self) -> JID:
        """This JID without its resource."""
        return self if self.resource is None else JID(self.local, self.domain)

    @property
    def bare_str(self) -> str:
        """``local@domain``, or ``domain`` when there is no localpart."""
        return self.domain if self.local is None else f"{self.local}@{self.domain}"

    @property
    def full(self) -> str:
        """The whole JID as a string, the same as ``str(jid)``."""
        return str(self)

    def __str__(self) -> str:
        if self.resource is None:
            return self.bare_str
        return f"{self.bare_str}/{self.resource}"


def make(local: str | None, domain: str, resource: str | None = None) -> JID:
    """A JID from its parts, each validated and prepared as :meth:`JID.parse` would."""
    return JID(
        None if local is None else _prep_local(local),
        _prep_domain(domain),
        None if resource is None else _prep_resource(resource),
    )


def _parse(text: str) -> JID:
    if not isinstance(text, str):
        raise InvalidJID(f"a JID is a string, not {type(text).__name__}")
    address, slash, resource = text.partition("/")
    local, at, domain = address.partition("@")
    if not at:
        local, domain = "", address
    if slash and not resource:
        raise InvalidJID(f"empty resourcepart after '/' in {text!r}")
    if at and not local:
        raise InvalidJID(f"empty localpart before '@' in {text!r}")
    return JID(
        _prep_local(local) if at else None,
        _prep_domain(domain),
        _prep_resource(resource) if slash else None,
    )


_parse_cached = functools.lru_cache(maxsize=_CACHE_SIZE)(_parse)


def _prep_local(local: str) -> str:
    if not local:
        raise InvalidJID("empty localpart")
    if local.isascii():
        # The common case: no width or compatibility forms, so a lowercase is enough.
        _reject_ascii(_LOCAL_BAD_ASCII, local, "localpart")
        prepared = local.lower()
    else:
        prepared = unicodedata.normalize("NFC", _map_width(local).lower())
        for char in prepared:
            if char.isascii():
                _reject_ascii(_LOCAL_BAD_ASCII, char, "localpart")
            elif unicodedata.category(char) not in _IDENTIFIER_CATEGORIES:
                raise InvalidJID(f"character {char!r} is not allowed in a localpart")
        if unicodedata.normalize("NFKC", prepared) != prepared:
            raise InvalidJID(f"localpart {local!r} has compatibility characters")
    return _check_length(prepared, "localpart")


def _reject_ascii(pattern: re.Pattern[str], text: str, part: str) -> None:
    bad = pattern.search(text)
    if bad:
        raise InvalidJID(f"character {bad.group()!r} is not allowed in a {part}")


def _map_width(text: str) -> str:
    # PRECIS width mapping: fullwidth and halfwidth forms become their decomposition.
    chars = []
    for char in text:
        decomposition = unicodedata.decomposition(char)
        if decomposition.startswith(("<wide> ", "<narrow> ")):
            char = chr(int(decomposition.split()[1], 16))
        chars.append(char)
    return "".join(chars)


def _prep_domain(domain: str) -> str:
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain:
        raise InvalidJID("empty domainpart")
    if domain[0] == "[":
        return _prep_ip_literal(domain)
    prepared = domain.lower() if domain.isascii() else unicodedata.normalize("NFC", domain).lower()
    for label in prepared.split("."):
        if not label:
            raise InvalidJID(f"empty label in domainpart {domain!r}")
        if len(label) > _MAX_LABEL_CHARS:
            raise InvalidJID(f"label longer than {_MAX_LABEL_CHARS} characters in {domain!r}")
    _reject_ascii(_DOMAIN_BAD_ASCII, prepared, "domainpart")
    if not prepared.isascii():
        for char in prepared:
            if unicodedata.category(char)[0] in "CZ":
                raise InvalidJID(f"character {char!r} is not allowed in a domainpart")
    return _check_length(prepared, "domainpart")


def _prep_ip_literal(domain: str) -> str:
    if not domain.endswith("]"):
        raise InvalidJID(f"unterminated IP literal {domain!r}")
    try:
        address = ipaddress.IPv6Address(domain[1:-1])
    except ValueError:
        raise InvalidJID(f"invalid IPv6 literal {domain!r}") from None
    return f"[{address.compressed}]"


def _prep_resource(resource: str) -> str:
    if not resource:
        raise InvalidJID("empty resourcepart")
    if not resource.isascii():
        resource = unicodedata.normalize("NFC", _map_spaces(resource))
        for char in resource:
            if unicodedata.category(char) in ("Cc", "Cs", "Cn"):
                raise InvalidJID(f"character {char!r} is not allowed in a resourcepart")
    _reject_ascii(_RESOURCE_BAD_ASCII, resource, "resourcepart")
    return _check_length(resource, "resourcepart")


def _map_spaces(text: str) -> str:
    return "".join(" " if unicodedata.category(char) == "Zs" else char for char in text)


def _check_length(part: str, name: str) -> str:
    if len(part.encode()) > _MAX_PART_BYTES:
        raise InvalidJID(f"{name} longer than {_MAX_PART_BYTES} bytes")
    return part
