"""mod_roster: rosters (RFC 6121 §2), roster versioning (XEP-0237), and the roster side of
presence subscriptions (the states of RFC 6121 Appendix A, for mod_presence).

Where the work happens
    A roster iq (get or set, no ``to`` or the user's own bare JID) is taken from the
    session that sent it (``user_send_packet``) and handled there, off the loop for the
    storage call (:meth:`mongoose.c2s.C2S.defer`): the session is the one that must
    remember it asked for the roster (only such "interested" resources get pushes,
    §2.1.6), and it writes the answer and its pushes in order on its own stream. A roster
    iq addressed to anyone else is routed as any iq and gets ``service-unavailable``.

Pushes
    Every change of an item -- a roster set or remove, or a subscription state change
    made for mod_presence -- is committed with a new roster version, then told to every
    session of the user (``("foreign", ("roster", jid, item, version, push))``, the
    ``foreign_event`` hook). Each session drops a change older than one it has seen for
    that contact (changes from different workers may arrive out of order; versions
    follow commit order, see :mod:`mongoose.storage.backends.roster`), writes the push
    if it is interested, and lets later handlers (mod_presence) see the change. The
    session that made a roster set handles its own change at once, so its push comes
    before its iq result.

Hidden items
    An item that exists only because someone asked to subscribe (subscription
    ``none``, pending in, no name, no group, not pre-approved) is a request, not a
    contact: it is left out of roster results and pushes, as MongooseIM and ejabberd
    do; a roster set giving it a name or a group, or any subscription, shows it.

Versioning (``versioning = true``)
    The stream features announce ``urn:xmpp:features:rosterver``. A get with the current
    ``ver`` gets an empty result; with an older one the store can diff from, an empty
    result and one push per contact changed since, in version order, each carrying the
    version of its change (the last is the current version); otherwise the whole roster
    with its version. A get with ``ver=''`` or without ``ver`` gets the whole roster.

Errors (RFC 6121 §2.3.3)
    A set with other than one ``<item/>``, a JID that does not parse, duplicate groups:
    ``bad-request``; the user's own JID as an item: ``not-allowed``; an empty group
    name, or a name or group longer than 1023 characters: ``not-acceptable``; removing
    a contact not on the roster: ``item-not-found``; a new contact beyond
    ``max_roster_size``: ``not-allowed`` with a text saying so -- RFC 6121 §2.3.3
    names ``not-allowed`` for a roster over the server's limit, so we use it rather
    than ``resource-constraint``, whose "wait" type would tell clients to retry. The
    store unreachable: ``internal-server-error`` of type ``wait``.

Subscription states (hooks for mod_presence, run on the blocking pool)
    ``roster_out_subscription`` and ``roster_in_subscription`` apply the tables of RFC
    6121 A.2 and A.3 (outbound and inbound subscribe, subscribed, unsubscribe,
    unsubscribed) to the item in one read-modify-write transaction, including
    pre-approval (§3.4: an outbound ``subscribed`` with no request pending marks the item
    ``approved``; a later inbound ``subscribe`` is then approved at once), and return the
    :class:`~mongoose.storage.backends.roster.Change` (or the ``RosterFull`` error
    instance when a new contact does not fit); they schedule the pushes on the loop.
    ``roster_get`` returns every item (hidden ones included) for presence broadcast.
    Removing a contact with a subscription either way sends ``unsubscribe`` and/or
    ``unsubscribed`` for it (§2.5.2).

Instrumentation: ``mod_roster_get``, ``mod_roster_set`` (per roster get/set handled) and
``mod_roster_push`` (per push written to a client), each ``count`` (spiral), labelled
``host_type``, as MongooseIM's.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
from typing import Any

from lxml import etree

import otp
from mongoose import instrument, iq, router
from mongoose import packet as packet_mod
from mongoose.hooks import Stop, hooks
from mongoose.storage import StorageUnavailable
from mongoose.storage.backends.roster import (
    REMOVE,
    Change,
    Changes,
    RosterFull,
    RosterItem,
    RosterStore,
)
from mongoose.xmpp import errors, ns
from mongoose.xmpp.jid import JID, InvalidJID
from otp import blocking

__all__ = ["NAME", "from_wire", "inbound", "item_element", "notify", "outbound", "visible"]

log = logging.getLogger(__name__)

NAME = "mod_roster"
XEPS = ("0237",)
FEATURES = (ns.ROSTER,)
ROSTERVER = "urn:xmpp:features:rosterver"
PRE_APPROVAL = "urn:xmpp:features:pre-approval"
EVENTS = ("mod_roster_get", "mod_roster_set", "mod_roster_push")

_IQ = f"{{{ns.CLIENT}}}iq"
_QUERY = f"{{{ns.ROSTER}}}query"
_ITEM = f"{{{ns.ROSTER}}}item"
_GROUP = f"{{{ns.ROSTER}}}group"
_MAX_TEXT = 1023
_ONE = {"count": 1}

_store: RosterStore | None = None
_config: Any = None
_scheduler: Any = None
_sinks: dict[str, dict[str, Any]] = {}


@dataclasses.dataclass
class _Session:
    """This module's state in one session (``c2s.mod_state["mod_roster"]``)."""

    interested: bool = False  # asked for the roster: gets pushes (RFC 6121 §2.1.6)
    seen: dict[str, str] = dataclasses.field(default_factory=dict)  # jid -> version


def _state(c2s: Any) -> _Session:
    state = c2s.mod_state.get(NAME)
    if state is None:
        state = c2s.mod_state[NAME] = _Session()
    return state


def _emit(host: str, event: str) -> None:
    sinks = _sinks.get(host)
    if sinks is not None:
        sinks[event].emit(_ONE)


# -- subscription states (RFC 6121 Appendix A) ----------------------------------------------


def _pending_out(item: RosterItem) -> bool:
    return item.ask in ("out", "both", "subscribe")


def _pending_in(item: RosterItem) -> bool:
    return item.ask in ("in", "both")


def _ask(out: bool, in_: bool) -> str:
    return "both" if out and in_ else "out" if out else "in" if in_ else "none"


def _subscription(to: bool, from_: bool) -> str:
    return "both" if to and from_ else "to" if to else "from" if from_ else "none"


def _with(item: RosterItem, *, to: bool, from_: bool, out: bool, in_: bool,
          **changes: Any) -> RosterItem:
    if not in_:
        changes.setdefault("ask_message", "")
    return dataclasses.replace(item, subscription=_subscription(to, from_),
                               ask=_ask(out, in_), **changes)


def outbound(kind: str, old: RosterItem | None, jid: str) -> Any:
    """The item after the user sends ``kind`` to contact ``jid`` (RFC 6121 A.2, §3.4):
    None if nothing changes, REMOVE if a hidden request goes away."""
    item = old or RosterItem(jid)
    to = item.subscription in ("to", "both")
    from_ = item.subscription in ("from", "both")
    out, in_ = _pending_out(item), _pending_in(item)
    if kind == "subscribe":
        new = item if to else _with(item, to=to, from_=from_, out=True, in_=in_)
    elif kind == "unsubscribe":
        new = _with(item, to=False, from_=from_, out=False, in_=in_)
    elif kind == "subscribed":
        if in_:
            new = _with(item, to=to, from_=True, out=out, in_=False, approved=False)
        elif from_:
            new = item
        else:  # no request to approve: a pre-approval (§3.4)
            new = dataclasses.replace(item, approved=True)
    elif kind == "unsubscribed":
        new = _with(item, to=to, from_=False, out=out, in_=False, approved=False)
    else:
        raise ValueError(f"not a subscription type: {kind!r}")
    return _settled(old, new, jid)


def inbound(kind: str, old: RosterItem | None, jid: str, status: str = "") -> Any:
    """The item after contact ``jid`` sends ``kind`` to the user (RFC 6121 A.3, §3.4):
    None if nothing changes, REMOVE if a hidden request goes away. ``status``: the text
    of a subscription request."""
    if old is None and kind != "subscribe":
        return None
    item = old or RosterItem(jid)
    to = item.subscription in ("to", "both")
    from_ = item.subscription in ("from", "both")
    out, in_ = _pending_out(item), _pending_in(item)
    if kind == "subscribe":
        if from_:
            return None
        if item.approved:
            new = _with(item, to=to, from_=True, out=out, in_=False, approved=False)
        else:
            new = _with(item, to=to, from_=from_, out=out, in_=True, ask_message=status)
    elif kind == "subscribed":
        new = _with(item, to=True, from_=from_, out=False, in_=in_) if out else item
    elif kind == "unsubscribe":
        new = _with(item, to=to, from_=False, out=out, in_=False)
    elif kind == "unsubscribed":
        new = _with(item, to=False, from_=from_, out=False, in_=in_)
    else:
        raise ValueError(f"not a subscription type: {kind!r}")
    return _settled(old, new, jid)


def _settled(old: RosterItem | None, new: RosterItem, jid: str) -> Any:
    """What a change returns for ``new``: None if nothing changes; REMOVE when a request
    that was never a contact (hidden) ends with nothing left to remember."""
    if new == old:
        return None
    if new == RosterItem(jid) and not visible(old):
        return None if old is None else REMOVE
    return new


def visible(item: RosterItem | None) -> bool:
    """Whether ``item`` shows in roster results and pushes (see "Hidden items")."""
    return item is not None and not (
        item.subscription == "none" and item.ask == "in" and not item.name
        and not item.groups and not item.approved)


# -- items as XML and on the wire -----------------------------------------------------------


def item_element(item: RosterItem | None, jid: str) -> etree._Element:
    """``<item/>`` for ``item``; for None, the removal of ``jid``."""
    el = etree.Element(_ITEM, jid=jid, nsmap={None: ns.ROSTER})
    if item is None:
        el.set("subscription", "remove")
        return el
    if item.name:
        el.set("name", item.name)
    el.set("subscription", item.subscription)
    if _pending_out(item):
        el.set("ask", "subscribe")
    if item.approved:
        el.set("approved", "true")
    for group in item.groups:
        etree.SubElement(el, _GROUP).text = group
    return el


def _wire(item: RosterItem | None) -> tuple[Any, ...] | None:
    if item is None:
        return None
    return (item.jid, item.name, item.subscription, item.ask, list(item.groups),
            item.ask_message, item.approved)


def from_wire(data: Any) -> RosterItem | None:
    """The item a roster event carries (a tuple, or a list once it crossed processes)."""
    if data is None:
        return None
    jid, name, subscription, ask, groups, ask_message, approved = data
    return RosterItem(jid, name, subscription, ask, tuple(groups), ask_message, approved)


_push_ids = itertools.count(1)


def _push(jid_str: str, item: RosterItem | None, jid: str, version: str | None) -> (
        etree._Element):
    """A roster push of ``item`` (None: its removal) to session ``jid_str`` (§2.1.6)."""
    push = etree.Element(_IQ, type="set", id=f"push{next(_push_ids)}", to=jid_str,
                         nsmap={None: ns.CLIENT})
    query = etree.SubElement(push, _QUERY, nsmap={None: ns.ROSTER})
    if version is not None and _config is not None and _config.versioning:
        query.set("ver", version)
    query.append(item_element(item, jid))
    return push


# -- telling the user's sessions -------------------------------------------------------------


def notify(user: str, change: Change, *, here: Any = None) -> None:
    """Tell every session of ``user`` (a bare JID) about ``change`` (committed, with a
    version); ``here``, a session handling the change itself, gets it at once."""
    if change.version is None:
        return
    from mongoose import sm

    item = change.new
    jid = (item or change.old).jid  # type: ignore[union-attr]
    push = visible(change.old) or visible(item)
    event = ("roster", jid, _wire(item), change.version, push)
    if here is not None and not here.closed:
        hooks.run("foreign_event", None, here.host, c2s=here, event=event)
    for record in sm.sessions(user):
        if here is None or record[2] != here.pid:
            otp.send(record[2], ("foreign", event))


def _notify_soon(user: str, change: Change) -> None:
    """:func:`notify` from a pool thread: on the loop (session table reads and sends
    belong there)."""
    if change.version is not None:
        _scheduler.call_soon(notify, user, change)


def _foreign_event(acc: Any, params: dict[str, Any]) -> Any:
    """A roster change for this session: drop it if stale, push it if interested."""
    event = params["event"]
    if event[0] != "roster":
        return acc
    _, jid, item_data, version, push = event
    c2s = params["c2s"]
    state = _state(c2s)
    seen = state.seen.get(jid)
    if seen is not None and seen >= version:
        return Stop(acc)  # an older change overtaken by a newer one
    state.seen[jid] = version
    if push and state.interested:
        item = from_wire(item_data)
        c2s.send_to_client(_push(c2s.jid_str, item if visible(item) else None, jid, version))
        _emit(c2s.host, "mod_roster_push")
    return acc


# -- the roster iq, in the session -----------------------------------------------------------


def _user_send_packet(acc: Any, params: dict[str, Any]) -> Any:
    el = acc
    if el is None or el.tag != _IQ:
        return acc
    query = el.find(_QUERY)
    if query is None or el.get("type") not in ("get", "set"):
        return acc
    c2s = params["c2s"]
    if params["to_jid"] not in ("", c2s.bare_str):
        return acc
    c2s.defer(_roster_iq, c2s, el)
    return Stop(None)


async def _roster_iq(c2s: Any, el: etree._Element) -> None:
    try:
        if el.get("type") == "get":
            await _get(c2s, el)
        else:
            await _set(c2s, el)
    except StorageUnavailable as error:
        log.warning("roster storage unavailable", extra={
            "what": "mod_roster_storage_unavailable", "jid": c2s.jid_str, "reason": str(error)})
        _error(c2s, el, "internal-server-error", "the roster is unavailable; try again later",
               "wait")
    except Exception:  # a bug or a storage error: this iq fails, the session stays
        log.exception("roster iq failed", extra={"what": "mod_roster_iq_failed",
                                                  "jid": c2s.jid_str})
        _error(c2s, el, "internal-server-error")


def _error(c2s: Any, el: etree._Element, condition: str, text: str | None = None,
           kind: str | None = None) -> None:
    reply = errors.make_error_reply(el, condition, text, kind)
    reply.attrib.pop("from", None)
    reply.set("to", c2s.jid_str)
    c2s.send_to_client(reply)


def _result(c2s: Any, el: etree._Element, payload: etree._Element | None = None) -> None:
    reply = iq.result(el, payload)
    reply.set("to", c2s.jid_str)
    c2s.send_to_client(reply)


def _split(bare: str) -> tuple[str, str]:
    user, _, host = bare.rpartition("@")
    return user, host


async def _get(c2s: Any, el: etree._Element) -> None:
    state = _state(c2s)
    state.interested = True
    _emit(c2s.host, "mod_roster_get")
    user, host = _split(c2s.bare_str)
    store = _store
    assert store is not None
    ver = el.find(_QUERY).get("ver") if _config.versioning else None  # type: ignore[union-attr]

    def read() -> Any:
        if ver:
            changes = store.get_changes(user, host, ver)
            if changes is not None:
                return changes
        return store.get_roster(user, host)

    answer = await blocking.run(read)
    if c2s.closed:
        return
    if isinstance(answer, Changes):
        _result(c2s, el)
        for version, jid, item in answer.items:  # what the client says it lacks, all of it
            state.seen[jid] = max(version, state.seen.get(jid, ""))
            c2s.send_to_client(_push(c2s.jid_str, item if visible(item) else None, jid,
                                     version))
            _emit(c2s.host, "mod_roster_push")
        return
    query = etree.Element(_QUERY, nsmap={None: ns.ROSTER})
    if _config.versioning:
        query.set("ver", answer.version or "")
    for item in answer.items:
        if visible(item):
            query.append(item_element(item, item.jid))
    _result(c2s, el, query)


async def _set(c2s: Any, el: etree._Element) -> None:
    _emit(c2s.host, "mod_roster_set")
    query = el.find(_QUERY)
    children = [c for c in el if isinstance(c.tag, str)]
    items = [c for c in query if isinstance(c.tag, str)]  # type: ignore[union-attr]
    if len(children) != 1 or len(items) != 1 or items[0].tag != _ITEM:
        _error(c2s, el, "bad-request", "a roster set carries exactly one item")
        return
    item_el = items[0]
    try:
        jid = str(JID.parse(item_el.get("jid") or ""))
    except InvalidJID as error:
        _error(c2s, el, "bad-request", f"not a valid JID: {error}")
        return
    if jid.partition("/")[0] == c2s.bare_str:
        _error(c2s, el, "not-allowed", "the user's own JID cannot be a contact")
        return
    user, host = _split(c2s.bare_str)
    store = _store
    assert store is not None
    if item_el.get("subscription") == "remove":
        change = await blocking.run(store.update_item, user, host, jid, lambda old: REMOVE)
        if c2s.closed:
            return
        if change.old is None:
            _error(c2s, el, "item-not-found", f"{jid} is not on the roster")
            return
        notify(c2s.bare_str, change, here=c2s)
        _result(c2s, el)
        _cancel_subscriptions(c2s.bare_str, change.old)
        return
    name = item_el.get("name") or ""
    groups = [(g.text or "").strip() for g in item_el if g.tag == _GROUP]
    if any(not g for g in groups) or len(name) > _MAX_TEXT or any(
            len(g) > _MAX_TEXT for g in groups):
        _error(c2s, el, "not-acceptable",
               f"group names must be non-empty, names and groups at most {_MAX_TEXT} "
               "characters")
        return
    if len(set(groups)) != len(groups):
        _error(c2s, el, "bad-request", "a group is named twice")
        return

    def apply(old: RosterItem | None) -> RosterItem:
        return dataclasses.replace(old or RosterItem(jid), name=name, groups=tuple(groups))

    try:
        change = await blocking.run(functools.partial(
            store.update_item, user, host, jid, apply, max_items=_config.max_roster_size))
    except RosterFull:
        _error(c2s, el, "not-allowed",
               f"the roster is full ({_config.max_roster_size} contacts at most)")
        return
    if c2s.closed:
        return
    notify(c2s.bare_str, change, here=c2s)
    _result(c2s, el)


def _cancel_subscriptions(user: str, old: RosterItem) -> None:
    """A removed contact: cancel the subscriptions both ways (RFC 6121 §2.5.2)."""
    kinds = []
    if old.subscription in ("to", "both") or _pending_out(old):
        kinds.append("unsubscribe")
    if old.subscription in ("from", "both") or _pending_in(old):
        kinds.append("unsubscribed")
    for kind in kinds:
        el = etree.Element(f"{{{ns.CLIENT}}}presence", type=kind, nsmap={None: ns.CLIENT})
        router.route(packet_mod.from_element(el, user, old.jid))


# -- hooks for mod_presence (called on the blocking pool) -------------------------------------


def _roster_get(acc: list[Any], params: dict[str, Any]) -> list[Any]:
    user, host = _split(params["jid"])
    return [*acc, *_store.get_roster(user, host).items]  # type: ignore[union-attr]


def _subscription_hook(direction: str) -> Any:
    def handler(acc: Any, params: dict[str, Any]) -> Any:
        user_bare, contact, kind = params["user"], params["contact"], params["type"]
        status = params.get("status") or ""
        user, host = _split(user_bare)
        if direction == "out":
            def change(old: RosterItem | None) -> RosterItem | None:
                return outbound(kind, old, contact)
        else:
            def change(old: RosterItem | None) -> RosterItem | None:
                return inbound(kind, old, contact, status)
        try:
            result = _store.update_item(  # type: ignore[union-attr]
                user, host, contact, change, max_items=_config.max_roster_size)
        except RosterFull as error:
            return error
        _notify_soon(user_bare, result)
        return result
    return handler


def _remove_user(acc: list[Any], params: dict[str, Any]) -> list[Any]:
    store = _store
    return [*acc, lambda: store.remove_user(params["user"], params["server"])]  # type: ignore


def _stream_features(acc: list[Any], params: dict[str, Any]) -> list[Any]:
    features = [etree.Element(f"{{{PRE_APPROVAL}}}sub", nsmap={None: PRE_APPROVAL})]
    if _config.versioning:
        features.append(etree.Element(f"{{{ROSTERVER}}}ver", nsmap={None: ROSTERVER}))
    return [*acc, *features]


# -- start and stop ---------------------------------------------------------------------------


def start(config: Any, module_config: Any) -> None:
    global _store, _config, _scheduler
    from mongoose.server import current

    _config = module_config
    _scheduler = otp.current()
    _store = RosterStore(current().db)
    _store.emit_via = _scheduler.call_soon
    for event in EVENTS:
        instrument.register(event, ("host_type",), {"count": "spiral"})
    _sinks.clear()
    for host in config.general.hosts:
        _sinks[host] = {event: instrument.prepared(event, {"host_type": host})
                        for event in EVENTS}
    hooks.add("user_send_packet", _user_send_packet, priority=90, module=NAME)
    hooks.add("foreign_event", _foreign_event, priority=40, module=NAME)
    hooks.add("c2s_stream_features", _stream_features, module=NAME)
    hooks.add("roster_get", _roster_get, module=NAME)
    hooks.add("roster_out_subscription", _subscription_hook("out"), module=NAME)
    hooks.add("roster_in_subscription", _subscription_hook("in"), module=NAME)
    hooks.add("remove_user", _remove_user, module=NAME)


def stop() -> None:
    hooks.remove_module(NAME)
