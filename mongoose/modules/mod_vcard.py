"""mod_vcard: XEP-0054 vcard-temp, and XEP-0055 Jabber Search over vCards (``search``).

vCards (XEP-0054)
    * A user sets its own vCard: ``<iq type='set'><vCard xmlns='vcard-temp'>...</vCard>
      </iq>`` with no ``to`` or to its own bare JID; the new vCard replaces the old one
      whole. Setting another user's is ``forbidden``. A vCard larger than
      ``max_vcard_size`` bytes serialized (photos are the usual culprit) is refused with
      ``not-acceptable``: every contact that asks gets it back in full, so its size is
      the server's business.
    * Anyone may get a user's vCard at the bare JID. A user with none gets an empty
      ``<vCard/>`` (XEP-0054 allows it or ``item-not-found``; clients cope better with
      the empty one); a JID with no account gets ``service-unavailable``, as any iq to
      a missing account (RFC 6121 §8.5.1).
    * The server has a vCard of its own (``to='localhost'``): its name and a line about
      it; it cannot be set.

Search (XEP-0055), when ``search = true``
    Answered at the server's own JID (MongooseIM uses a ``vjud.`` subdomain; this
    server routes no subdomains yet). ``get`` returns the form: the legacy fields
    (``first``, ``last``, ``nick``, ``email``) and a data form (XEP-0004) with
    ``user``, ``fn``, ``first``, ``middle``, ``last``, ``nick``, ``bday``, ``ctry``,
    ``locality``, ``email``, ``orgname``, ``orgunit``. ``set`` searches with whichever
    was used and answers in the same style. Values match case-insensitively, whole, or
    as a prefix when they end with ``*``; all given fields must match; at most
    ``matches`` users come back, by user name. A search with no criterion is
    ``not-acceptable`` (it would list every user).

    Search fields are kept for every vCard set, search on or off, so turning search on
    finds the vCards set before.

Storage: :class:`mongoose.storage.backends.vcard.VcardStore`, called off the loop and
in order per user (:mod:`mongoose.modules.offloop`); the vCard goes with the account
(``remove_user`` hook).
"""

from __future__ import annotations

import functools
from typing import Any

from lxml import etree

from mongoose import iq
from mongoose.hooks import hooks
from mongoose.modules import offloop
from mongoose.modules.events import HostCounters
from mongoose.xmpp import ns

XEPS = ("0054", "0055")
SEARCH = "jabber:iq:search"
FEATURES: tuple[str, ...] = (ns.VCARD,)

_store: Any = None
_accounts: Any = None
_max_size = 65536
_matches = 30
_serializer = offloop.Serializer("mod_vcard")
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def _v(name: str) -> str:
    return f"{{{ns.VCARD}}}{name}"


# -- vCards --------------------------------------------------------------------------------


# Instrumentation: one count per request (mongoose.modules.events).
EVENTS = HostCounters("mod_vcard_get", "mod_vcard_set", "mod_vcard_search")


def _user_vcard(stanza: Any, from_jid: str, to_jid: str) -> Any:
    bare = to_jid.partition("/")[0]
    user, _, host = bare.rpartition("@")
    vcard = stanza[0]
    if etree.QName(vcard).localname != "vCard":
        return offloop.error_reply(stanza, "bad-request", "expected <vCard xmlns='vcard-temp'/>")
    if stanza.get("type") == "get":
        EVENTS.count("mod_vcard_get", host)
        offloop.answer_iq(_serializer, bare, stanza, from_jid, to_jid, _get, stanza, user, host)
        return None
    if from_jid.partition("/")[0] != bare:
        return offloop.error_reply(stanza, "forbidden", "a user sets only its own vCard")
    copy = vcard.__copy__()
    copy.tail = None
    data = etree.tostring(copy, encoding="utf-8")
    if len(data) > _max_size:
        return offloop.error_reply(
            stanza, "not-acceptable", f"the vCard is larger than {_max_size} bytes", echo=False)
    EVENTS.count("mod_vcard_set", host)
    offloop.answer_iq(_serializer, bare, stanza, from_jid, to_jid, _set, stanza, user, host,
                      data.decode("utf-8"), _search_fields(copy))
    return None


def _get(stanza: Any, user: str, host: str) -> Any:
    data = _store.get(user, host)
    if data is None:
        if not _accounts.exists(user, host):
            return offloop.error_reply(stanza, "service-unavailable")
        return iq.result(stanza, etree.Element(_v("vCard"), nsmap={None: ns.VCARD}))
    return iq.result(stanza, etree.fromstring(data.encode("utf-8"), _PARSER))


def _set(stanza: Any, user: str, host: str, data: str, search: Any) -> Any:
    _store.set(user, host, data, search)
    return iq.result(stanza)


def _search_fields(vcard: etree._Element) -> Any:
    """The XEP-0055 search fields of a vCard (what the store indexes)."""
    from mongoose.storage.backends.vcard import VcardSearch

    def text(*path: str) -> str:
        found = vcard.find("/".join(_v(p) for p in path))
        return (found.text or "").strip() if found is not None else ""

    email = text("EMAIL", "USERID") or text("EMAIL")
    return VcardSearch(
        fn=text("FN"), family=text("N", "FAMILY"), given=text("N", "GIVEN"),
        middle=text("N", "MIDDLE"), nickname=text("NICKNAME"), bday=text("BDAY"),
        ctry=text("ADR", "CTRY"), locality=text("ADR", "LOCALITY"), email=email,
        orgname=text("ORG", "ORGNAME"), orgunit=text("ORG", "ORGUNIT"))


def _server_vcard(stanza: Any, from_jid: str, to_jid: str) -> Any:
    if stanza.get("type") != "get":
        return offloop.error_reply(stanza, "not-allowed", "the server's vCard is read-only")
    vcard = etree.Element(_v("vCard"), nsmap={None: ns.VCARD})
    etree.SubElement(vcard, _v("FN")).text = "mongoose"
    etree.SubElement(vcard, _v("DESC")).text = "An XMPP server in Python, after MongooseIM"
    return iq.result(stanza, vcard)


# -- search --------------------------------------------------------------------------------

# Data form variable -> (label, store field); "user" is the user name itself.
_FORM_FIELDS = {
    "user": ("User", "user"), "fn": ("Full Name", "fn"), "first": ("Name", "given"),
    "middle": ("Middle Name", "middle"), "last": ("Family Name", "family"),
    "nick": ("Nickname", "nickname"), "bday": ("Birthday", "bday"),
    "ctry": ("Country", "ctry"), "locality": ("City", "locality"),
    "email": ("Email", "email"), "orgname": ("Organization Name", "orgname"),
    "orgunit": ("Organization Unit", "orgunit"),
}
# Legacy XEP-0055 fields -> store field.
_LEGACY_FIELDS = {"first": "given", "last": "family", "nick": "nickname", "email": "email"}


def _s(name: str) -> str:
    return f"{{{SEARCH}}}{name}"


def _x(name: str) -> str:
    return f"{{{ns.DATA_FORMS}}}{name}"


def _search(stanza: Any, from_jid: str, to_jid: str) -> Any:
    host = to_jid
    query = stanza[0]
    if stanza.get("type") == "get":
        return iq.result(stanza, _search_form())
    form = query.find(_x("x"))
    if form is not None:
        criteria = {}
        for field in form.findall(_x("field")):
            var = field.get("var", "")
            value = (field.findtext(_x("value")) or "").strip()
            if var in _FORM_FIELDS and value:
                criteria[_FORM_FIELDS[var][1]] = value
    else:
        criteria = {_LEGACY_FIELDS[etree.QName(child).localname]: (child.text or "").strip()
                    for child in query
                    if isinstance(child.tag, str) and etree.QName(child).namespace == SEARCH
                    and etree.QName(child).localname in _LEGACY_FIELDS}
        criteria = {k: v for k, v in criteria.items() if v}
    if not criteria:
        return offloop.error_reply(stanza, "not-acceptable", "give at least one criterion")
    EVENTS.count("mod_vcard_search", host)
    # Searches only read: each its own key, so they run side by side.
    offloop.answer_iq(_serializer, object(), stanza, from_jid, to_jid, _find,
                      stanza, host, criteria, form is not None)
    return None


def _search_form() -> etree._Element:
    query = etree.Element(_s("query"), nsmap={None: SEARCH})
    etree.SubElement(query, _s("instructions")).text = (
        "Fill in one or more fields to search for users; end a value with * to match "
        "what begins with it.")
    for name in _LEGACY_FIELDS:
        etree.SubElement(query, _s(name))
    form = etree.SubElement(query, _x("x"), nsmap={None: ns.DATA_FORMS}, type="form")
    etree.SubElement(form, _x("title")).text = "Search users"
    hidden = etree.SubElement(form, _x("field"), type="hidden", var="FORM_TYPE")
    etree.SubElement(hidden, _x("value")).text = SEARCH
    for var, (label, _) in _FORM_FIELDS.items():
        etree.SubElement(form, _x("field"), type="text-single", var=var, label=label)
    return query


def _find(stanza: Any, host: str, criteria: dict[str, str], with_form: bool) -> Any:
    found = _store.search(host, criteria, limit=_matches)
    query = etree.Element(_s("query"), nsmap={None: SEARCH})
    if not with_form:
        for user, fields in found:
            item = etree.SubElement(query, _s("item"), jid=f"{user}@{host}")
            for name, attribute in _LEGACY_FIELDS.items():
                etree.SubElement(item, _s(name)).text = getattr(fields, attribute)
        return iq.result(stanza, query)
    form = etree.SubElement(query, _x("x"), nsmap={None: ns.DATA_FORMS}, type="result")
    hidden = etree.SubElement(form, _x("field"), type="hidden", var="FORM_TYPE")
    etree.SubElement(hidden, _x("value")).text = SEARCH
    reported = etree.SubElement(form, _x("reported"))
    etree.SubElement(reported, _x("field"), var="jid", label="JID", type="jid-single")
    shown = [var for var in _FORM_FIELDS if var != "user"]
    for var in shown:
        etree.SubElement(reported, _x("field"), var=var, label=_FORM_FIELDS[var][0],
                         type="text-single")
    for user, fields in found:
        item = etree.SubElement(form, _x("item"))
        field = etree.SubElement(item, _x("field"), var="jid")
        etree.SubElement(field, _x("value")).text = f"{user}@{host}"
        for var in shown:
            field = etree.SubElement(item, _x("field"), var=var)
            etree.SubElement(field, _x("value")).text = getattr(fields, _FORM_FIELDS[var][1])
    return iq.result(stanza, query)


# -- module --------------------------------------------------------------------------------


def _remove_user(acc: list[Any], params: dict[str, Any]) -> list[Any]:
    return [*acc, functools.partial(_store.remove_user, params["user"], params["server"])]


def start(config: Any, module_config: Any) -> None:
    global _store, _accounts, _max_size, _matches, FEATURES
    from mongoose.server import current
    from mongoose.storage.backends.vcard import VcardStore
    from otp import scheduler

    server = current()
    _store = VcardStore(server.db)
    _store.emit_via = scheduler.current().call_soon
    _accounts = server.store
    _max_size = module_config.max_vcard_size
    _matches = module_config.matches
    EVENTS.start(config.general.hosts)
    iq.register("account", ns.VCARD, _user_vcard)
    iq.register("server", ns.VCARD, _server_vcard)
    FEATURES = (ns.VCARD,)
    if module_config.search:
        iq.register("server", SEARCH, _search)
        FEATURES = (ns.VCARD, SEARCH)
    hooks.add("remove_user", _remove_user, module="mod_vcard")


def stop() -> None:
    iq.unregister("account", ns.VCARD)
    iq.unregister("server", ns.VCARD)
    iq.unregister("server", SEARCH)
    hooks.remove_module("mod_vcard")
