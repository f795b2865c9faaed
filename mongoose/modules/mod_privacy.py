"""mod_privacy: XEP-0016 Privacy Lists, and the privacy engine it shares with mod_blocking.

The protocol (``jabber:iq:privacy``, an ``account`` iq handler): get the list names (with
the session's active list and the user's default), get one list, create or replace a
list, remove a list, set the session's active list, set or decline the default list. List
pushes go to every session of the user. Storage is :class:`~mongoose.storage.backends.
privacy.PrivacyStore`, where XEP-0191's block list is the list ``"blocking"``, made the
default by the first block (after MongooseIM): :mod:`mongoose.modules.mod_blocking` is a
second protocol over the same lists and the same engine. Either module starts the engine.

Rules (XEP-0016 §2)
    Items in ``order``; the first whose type matches the other party (``jid`` by the XEP's
    four JID forms, ``subscription`` and ``group`` from the user's roster, or the
    fall-through without type) and whose stanza kinds include the stanza's decides: allow,
    deny, or block (the blocking list's items: deny, answered with XEP-0191's error). No
    match allows. Kinds: ``message``, ``iq`` and ``presence-in`` (inbound), ``presence-out``
    (availability and unavailability only); an item naming no kind matches every stanza
    both ways, subscription requests and outbound messages and iq included. Stanzas between
    the user's own resources, and between the user and its server (the host's own JID:
    disco, pings and their answers), are never checked.

Where the list lives: in the session
    Each session holds the list that applies to it -- its active list, else the user's
    default list -- and a snapshot of the roster when the list is not empty
    (:class:`Session`, in a per-process dict keyed by the session's pid). It is read at
    login (``sm_register_connection``) and again whenever the user's lists change, so no
    stanza waits for the database. Until the first read is back, stanzas *to* the session
    are held and then replayed in order (the default list applies from the first stanza);
    stanzas *from* it pass unchecked for that moment.

    * Inbound (``user_receive_packet``, in the recipient's session, on whatever worker it
      lives): a denied message gets ``service-unavailable`` (one error, from one of the
      sessions a bare-JID message went to), a denied iq get/set too, the rest is dropped
      silently (XEP-0016 §2.13).
    * Outbound (``user_send_packet``): a denied stanza gets ``not-acceptable``, with
      ``<blocked xmlns='urn:xmpp:blocking:errors'/>`` for a blocking-list item.
    * Presence broadcasts (``filter_local_packet``): presence from a full JID whose session
      lives in this worker is checked against that session's presence-out rules; the
      router shard that handles it is on the sender's worker, where the session's state is.
      Denied presence is dropped without an error. The filter is registered only while a
      session of the worker has a non-empty list, so routing pays nothing otherwise.
    * Subscription stanzas (``inbound_subscription``, after mod_presence): mod_presence's
      job, which changes the roster, runs only if the user's default list, read then,
      allows the stanza; denied, it is dropped before the roster knows of it.
    * Offline (``offline_message``, before mod_offline): a message for a user with no
      available session is checked against the default list read from the database (the
      one read per stanza: the offline path writes to the database anyway). Meanwhile the
      message waits, with the user's later ones behind it, and is then routed again.
      Allowed, it takes the ordinary way (mod_offline, or a bounce); denied, it bounces.

Changes
    A change (list edited or removed, default set, block/unblock) is written in the
    writer's worker (per user, in order: :class:`~mongoose.modules.offloop.Serializer`),
    then announced to the relay actor (registered ``mod_privacy``) of every worker of
    every node. Each relay re-reads the list of each of the user's sessions it hosts and
    writes the pushes. Re-reading rather than applying what the message carries keeps
    sessions right when two workers change one user's lists at once: the last read
    follows every write announced before it. The writing session re-reads before it gets
    its result, so its own next stanza is filtered with the new list. A session that
    becomes newly denied presence-out (or allowed again) towards a contact that had its
    presence -- directed presence, or a roster subscription ``from``/``both`` -- sends it
    unavailable presence (or its current presence), straight to the contact's sessions.

Active lists are also recorded in the CETS bag table ``privacy_active`` (bare JID,
resource, pid, list name), owned by the session's worker, so that removing a list another
session uses gets ``conflict`` (§2.11). Not done: the conflict for changing the default
list while other sessions use it (MongooseIM does not either: a user with two sessions
could then never change it); ``item-not-found`` for a group that is not on the roster.
The roster snapshot is read with the list and kept current by mod_roster's roster changes
(its ``foreign_event`` to every session of the user), when that module runs.

Instrumentation (``host_type`` label, spirals): ``mod_privacy_get`` (count),
``mod_privacy_set`` (count, active_count, default_count), ``mod_privacy_push_item``
(count, one per push written), ``mod_privacy_check_packet`` (count, denied_count,
blocked_count: stanzas checked against a non-empty list).
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from lxml import etree

import otp
from mongoose import instrument, iq, router, sm
from mongoose import packet as packet_mod
from mongoose.hooks import Stop, hooks
from mongoose.modules.offloop import Serializer, error_reply
from mongoose.packet import Packet
from mongoose.server import current as current_server
from mongoose.storage.backends.privacy import ListIsDefault, PrivacyItem, PrivacyStore
from mongoose.storage.backends.roster import RosterStore
from mongoose.xmpp import errors, ns
from mongoose.xmpp.jid import JID, InvalidJID
from otp import cets

__all__ = ["FEATURES", "XEPS", "Rule", "Session", "announce", "changed", "compile_rules",
           "decide", "deliver_presence", "engine_start", "engine_stop", "item_element",
           "own_session", "parse_items", "push", "reload", "run", "start", "stop", "store"]

log = logging.getLogger(__name__)

XEPS = ("0016",)
FEATURES = (ns.PRIVACY,)

RELAY = "mod_privacy"
ACTIVE_TABLE = "privacy_active"
BLOCKED_ERRORS = "urn:xmpp:blocking:errors"

# Stanza kinds, as bits of a rule's mask.
MESSAGE, IQ, PRESENCE_IN, PRESENCE_OUT, OTHER = 1, 2, 4, 8, 16
ALL = MESSAGE | IQ | PRESENCE_IN | PRESENCE_OUT | OTHER
_KIND_CHILDREN = {"message": MESSAGE, "iq": IQ, "presence-in": PRESENCE_IN,
                  "presence-out": PRESENCE_OUT}
_NOTIFICATION = ("", "unavailable")  # presence types that presence-in/out rules cover
_SUBSCRIPTIONS = ("none", "to", "from", "both")

_Q = f"{{{ns.PRIVACY}}}"
_PRESENCE = f"{{{ns.CLIENT}}}presence"
_NAME = "mod_privacy"


# -- rules --------------------------------------------------------------------------------


class Rule:
    """One compiled list item: ``action`` ('allow', 'deny', 'block'), the kinds it covers
    (``mask``) and what it matches."""

    __slots__ = ("action", "domain", "local", "mask", "resource", "type", "value")

    def __init__(self, item: PrivacyItem) -> None:
        self.action = item.action
        self.type = item.type
        self.value = item.value
        self.mask = ALL if item.match_all else (
            (MESSAGE if item.match_message else 0) | (IQ if item.match_iq else 0)
            | (PRESENCE_IN if item.match_presence_in else 0)
            | (PRESENCE_OUT if item.match_presence_out else 0))
        self.local = self.domain = self.resource = None
        if item.type == "jid":
            self.local, self.domain, self.resource = _parts(item.value)


def compile_rules(items: Iterable[PrivacyItem]) -> tuple[Rule, ...]:
    return tuple(Rule(item) for item in sorted(items, key=lambda item: item.order))


Roster = dict[str, tuple[str, frozenset[str]]]  # contact bare JID -> (subscription, groups)


def decide(rules: tuple[Rule, ...], kind: int, jid: str, roster: Roster | None) -> str | None:
    """The action of the first rule that matches a stanza of ``kind`` exchanged with
    ``jid``: 'deny' or 'block'; None when it is allowed."""
    parts = None
    for rule in rules:
        if not rule.mask & kind:
            continue
        type_ = rule.type
        if type_ is not None:
            if parts is None:
                parts = _parts(jid)
            if type_ == "jid":
                if not _jid_matches(rule, *parts):
                    continue
            else:
                bare = f"{parts[0]}@{parts[1]}" if parts[0] else parts[1]
                subscription, groups = (roster or {}).get(bare, ("none", frozenset()))
                if type_ == "subscription" and rule.value != subscription:
                    continue
                if type_ == "group" and rule.value not in groups:
                    continue
        return None if rule.action == "allow" else rule.action
    return None


def _parts(jid: str) -> tuple[str, str, str]:
    """(local, domain, resource) of a prepared JID string; '' for an absent part."""
    bare, _, resource = jid.partition("/")
    local, _, domain = bare.rpartition("@")
    return local, domain, resource


def _jid_matches(rule: Rule, local: str, domain: str, resource: str) -> bool:
    """XEP-0016 §2.1: user@domain/resource, user@domain, domain/resource, domain (with
    every address at it or at a subdomain)."""
    if rule.local:
        return (rule.local == local and rule.domain == domain
                and (not rule.resource or rule.resource == resource))
    if rule.resource:
        return not local and rule.domain == domain and rule.resource == resource
    return domain == rule.domain or domain.endswith("." + rule.domain)  # type: ignore[operator]


# -- lists in XML -------------------------------------------------------------------------


def parse_items(list_el: etree._Element) -> list[PrivacyItem]:
    """The items of a ``<list/>`` from a client; ValueError (bad-request) or InvalidJID
    (jid-malformed) for what XEP-0016 §2.1 does not allow."""
    items, orders = [], set()
    for child in list_el:
        if not isinstance(child.tag, str):
            continue
        if child.tag != _Q + "item":
            raise ValueError(f"unexpected {child.tag} in a list")
        action = child.get("action")
        if action not in ("allow", "deny"):
            raise ValueError("an item's action is allow or deny")
        try:
            order = int(child.get("order", ""))
        except ValueError:
            raise ValueError("an item's order is a non-negative integer") from None
        if order < 0 or order in orders or order > 0xFFFFFFFF:
            raise ValueError("an item's order is a unique non-negative integer")
        orders.add(order)
        type_, value = child.get("type"), child.get("value", "")
        if type_ is not None:
            if type_ not in ("jid", "group", "subscription") or not value:
                raise ValueError("an item's type is jid, group or subscription, with a value")
            if type_ == "jid":
                value = str(JID.parse(value))
            elif type_ == "subscription" and value not in _SUBSCRIPTIONS:
                raise ValueError("a subscription is none, to, from or both")
        kinds = set()
        for grandchild in child:
            if isinstance(grandchild.tag, str):
                name = grandchild.tag[len(_Q):] if grandchild.tag.startswith(_Q) else ""
                if name not in _KIND_CHILDREN:
                    raise ValueError(f"unexpected {grandchild.tag} in an item")
                kinds.add(name)
        items.append(PrivacyItem(
            order, action, type_, value if type_ else "", match_iq="iq" in kinds,
            match_message="message" in kinds, match_presence_in="presence-in" in kinds,
            match_presence_out="presence-out" in kinds))
    return items


def item_element(item: PrivacyItem) -> etree._Element:
    """An item as a client sees it (the blocking list's 'block' is 'deny')."""
    el = etree.Element(_Q + "item", nsmap={None: ns.PRIVACY})
    if item.type is not None:
        el.set("type", item.type)
        el.set("value", item.value)
    el.set("action", "allow" if item.action == "allow" else "deny")
    el.set("order", str(item.order))
    for name, flag in (("message", item.match_message), ("iq", item.match_iq),
                       ("presence-in", item.match_presence_in),
                       ("presence-out", item.match_presence_out)):
        if flag:
            etree.SubElement(el, _Q + name)
    return el


# -- per-session state --------------------------------------------------------------------


class Session:
    """The privacy state of one session, in the session's worker (module docstring)."""

    __slots__ = ("active", "bare", "blocklist_requested", "c2s", "closed", "held", "host",
                 "jid", "loaded", "name", "pid", "replay", "roster", "rules", "user")

    def __init__(self, jid: str, pid: otp.Pid, c2s: Any) -> None:
        self.jid = jid
        self.pid = pid
        self.c2s = c2s
        self.bare = jid.partition("/")[0]
        self.user, _, self.host = self.bare.rpartition("@")
        self.active: str | None = None  # the session's active list, if it set one
        self.name: str | None = None  # the list that applies (active or default)
        self.rules: tuple[Rule, ...] = ()
        self.roster: Roster | None = None
        self.loaded = False
        self.closed = False
        self.held: list[Packet] = []  # inbound stanzas that came before the first read
        self.replay: collections.deque[Packet] = collections.deque()
        self.blocklist_requested = False  # mod_blocking: pushes go only to such sessions


_sessions: dict[otp.Pid, Session] = {}
_by_jid: dict[str, Session] = {}
_by_bare: dict[str, list[Session]] = {}
# Offline messages waiting for their recipient's default list, and those re-routed
# after the check (by identity), which the offline hook then lets through.
_offline_waiting: dict[str, list[Packet]] = {}
_rechecked: dict[int, Packet] = {}


# -- the engine: start and stop -----------------------------------------------------------


class _Engine:
    """This process's engine (one per process, whichever module started it)."""

    users = 0  # modules that started it (mod_privacy, mod_blocking)
    store: PrivacyStore
    rosters: RosterStore
    writes = Serializer("privacy_writes")  # by bare JID
    reads = Serializer("privacy_reads")  # by session pid: a session's reads in order
    relay: Any = None
    active: cets.Table | None = None
    sinks: ClassVar[dict[str, dict[str, Any]]] = {}


def register_events() -> None:
    instrument.register("mod_privacy_get", ("host_type",), {"count": "spiral"})
    instrument.register("mod_privacy_set", ("host_type",), {
        "count": "spiral", "active_count": "spiral", "default_count": "spiral"})
    instrument.register("mod_privacy_push_item", ("host_type",), {"count": "spiral"})
    instrument.register("mod_privacy_check_packet", ("host_type",), {
        "count": "spiral", "denied_count": "spiral", "blocked_count": "spiral"})


def engine_start(config: Any) -> None:
    """Start the privacy engine in this process (idempotent; see the module docstring)."""
    _Engine.users += 1
    if _Engine.users > 1:
        return
    register_events()
    _Engine.sinks = {host: {
        name: instrument.prepared(f"mod_privacy_{name}", {"host_type": host})
        for name in ("get", "set", "push_item", "check_packet")}
        for host in config.general.hosts}
    db = current_server().db
    _Engine.store = PrivacyStore(db)
    _Engine.rosters = RosterStore(db)
    _Engine.store.emit_via = _Engine.rosters.emit_via = otp.current().call_soon
    try:
        _Engine.active = cets.get(ACTIVE_TABLE)
    except KeyError:
        _Engine.active = cets.create(ACTIVE_TABLE, type="bag")
    _Engine.relay = _Relay.start()
    if otp.whereis(RELAY) is not None:
        otp.unregister(RELAY)
    otp.register(RELAY, _Engine.relay.pid)
    add = hooks.add
    add("sm_register_connection", _session_opened, module=_NAME)
    add("sm_remove_connection", _session_closed, module=_NAME)
    add("user_send_packet", _outbound, priority=10, module=_NAME)
    add("user_receive_packet", _inbound, priority=10, module=_NAME)
    add("offline_message", _offline, priority=1, module=_NAME)
    add("foreign_event", _roster_changed, priority=60, module=_NAME)
    add("inbound_subscription", _inbound_subscription, priority=90, module=_NAME)


def engine_stop() -> None:
    global _listed
    _Engine.users -= 1
    if _Engine.users > 0:
        return
    hooks.remove_module(_NAME)
    if _Engine.relay is not None:
        if otp.whereis(RELAY) == _Engine.relay.pid:
            otp.unregister(RELAY)
        _Engine.relay.stop(block=False)
        _Engine.relay = None
    _listed = 0
    for state in list(_sessions.values()):
        state.closed = True
    _sessions.clear()
    _by_jid.clear()
    _by_bare.clear()


def sink(host: str, name: str) -> Any:
    return _Engine.sinks[host][name]


def store() -> PrivacyStore:
    return _Engine.store


# -- mod_privacy's own start and stop -----------------------------------------------------


def start(config: Any, module_config: Any) -> None:
    engine_start(config)
    iq.register("account", ns.PRIVACY, _iq)


def stop() -> None:
    iq.unregister("account", ns.PRIVACY)
    engine_stop()


# -- sessions: login, reads, logout -------------------------------------------------------


def _session_opened(acc: Any, params: dict[str, Any]) -> Any:
    jid, pid = params["jid"], params["pid"]
    state = Session(jid, pid, otp.current().lookup(pid))
    _sessions[pid] = state
    _by_jid[jid] = state
    _by_bare.setdefault(state.bare, []).append(state)
    reload(state)
    return acc


def _session_closed(acc: Any, params: dict[str, Any]) -> Any:
    state = _sessions.pop(params["pid"], None)
    if state is None:
        return acc
    state.closed = True
    if _by_jid.get(state.jid) is state:
        del _by_jid[state.jid]
    siblings = _by_bare.get(state.bare, [])
    if state in siblings:
        siblings.remove(state)
        if not siblings:
            del _by_bare[state.bare]
    _set_active_record(state, None)
    _count_listed(state.rules, ())
    return acc


_KEEP: Any = object()  # reload(): keep the session's active list


def reload(state: Session, then: Callable[[str], None] | None = None, *,
           switch_to: str | None = _KEEP) -> None:
    """Read the list that applies to ``state`` and apply it, then call ``then`` with
    'ok', 'item-not-found' (``switch_to`` names no list: nothing changed) or 'error'.
    ``switch_to``: a list to make the session's active list, or None to decline the
    active list. A session's reads run one at a time, in order."""
    user, host = state.user, state.host

    def read() -> Any:
        if switch_to is _KEEP:
            return _read_effective(user, host, state.active)
        return _read_effective(user, host, switch_to, strict=True)

    def done(future: otp.LoopFuture[Any]) -> None:
        try:
            result = future.get(timeout=0)
        except Exception:
            log.exception("cannot read a privacy list", extra={
                "what": "privacy_list_read_failed", "jid": state.jid})
            result = "error"
        if state.closed:
            return
        if type(result) is tuple:
            _apply(state, *result)
            outcome = "ok"
        else:
            outcome = result
            if not state.loaded:
                _apply(state, state.active, None, [], None)  # fail open rather than hold
        if then is not None:
            then(outcome)

    _Engine.reads.submit(state.pid, read, done=done)


def _read_effective(user: str, host: str, active: str | None, *, strict: bool = False) -> Any:
    """(active list name, applied list name, items, roster) -- on the pool. An active
    list that no longer exists falls back to the default list, or with ``strict`` gives
    'item-not-found'."""
    store_ = _Engine.store
    items = store_.get_list(user, host, active) if active is not None else None
    if items is None:
        if strict and active is not None:
            return "item-not-found"
        active = None
        default = store_.get_default_list(user, host)
        name, items = default if default is not None else (None, [])
    else:
        name = active
    roster = _read_roster(user, host) if items else None
    return active, name, items, roster


def _read_roster(user: str, host: str) -> Roster:
    return {item.jid: (item.subscription, frozenset(item.groups))
            for item in _Engine.rosters.get_roster(user, host).items}


def _apply(state: Session, active: str | None, name: str | None, items: list[PrivacyItem],
           roster: Roster | None) -> None:
    old_rules, old_roster = state.rules, state.roster
    state.name = name
    state.rules = compile_rules(items)
    _count_listed(old_rules, state.rules)
    state.roster = roster
    if active != state.active:
        state.active = active
        _set_active_record(state, active)
    if not state.loaded:
        state.loaded = True
        if state.held:  # replay what came meanwhile, in order (see _inbound)
            state.replay.extend(state.held)
            for packet in state.held:
                otp.send(state.pid, ("route", packet))
            state.held.clear()
        return
    _presence_changes(state, old_rules, old_roster)


_listed = 0  # sessions of this process with a non-empty list


def _count_listed(old: tuple[Rule, ...], new: tuple[Rule, ...]) -> None:
    """Keep the router's presence-out filter registered only while some session of this
    process has a list: routing costs nothing more for everyone else."""
    global _listed
    change = bool(new) - bool(old)
    if not change:
        return
    _listed += change
    if _listed == 1 and change == 1:
        hooks.add("filter_local_packet", _presence_out, priority=10, module=_NAME)
    elif _listed == 0:
        hooks.remove("filter_local_packet", _presence_out)


def _set_active_record(state: Session, name: str | None) -> None:
    table = _Engine.active
    if table is None:
        return
    for record in table.lookup(state.bare):
        if record[2] == state.pid:
            table.delete_object(record)
    if name is not None:
        table.insert((state.bare, state.jid.partition("/")[2], state.pid, name))


def _presence_changes(state: Session, old: tuple[Rule, ...], old_roster: Roster | None) -> None:
    """Unavailable presence to contacts that had ours and are now denied it, our
    presence to those allowed it again (XEP-0016 §2.10, XEP-0191 §3.3/§3.4)."""
    c2s = state.c2s
    if c2s is None or not getattr(c2s, "available", False):
        return
    contacts = set(getattr(c2s, "directed", ()))
    for roster in (old_roster, state.roster):
        contacts.update(jid for jid, (sub, _) in (roster or {}).items()
                        if sub in ("from", "both"))
    last = getattr(c2s, "last_presence", None)
    for contact in sorted(contacts):
        was = decide(old, PRESENCE_OUT, contact, old_roster) is None
        now = decide(state.rules, PRESENCE_OUT, contact, state.roster) is None
        if was and not now:
            unavailable = etree.Element(f"{{{ns.CLIENT}}}presence", type="unavailable",
                                        nsmap={None: ns.CLIENT})
            deliver_presence(unavailable, state.jid, contact)
        elif now and not was and last is not None:
            deliver_presence(last, state.jid, contact)


def deliver_presence(el: etree._Element, from_jid: str, to_jid: str) -> None:
    """Presence straight to ``to_jid``'s sessions, past our own presence-out rules (which
    just changed), but still through the contact's inbound check."""
    bare, _, resource = to_jid.partition("/")
    if not router.is_local(bare.rpartition("@")[2]):
        return  # no server-to-server yet
    packet = packet_mod.from_element(el, from_jid, to_jid)
    for record in sm.sessions(bare):
        if (record[1] == resource) if resource else record[3] is not None:
            otp.send(record[2], ("route", packet))


# -- changes: relay and pushes ------------------------------------------------------------


def announce(bare: str, origin: otp.Pid | None, pushes: list[tuple[str, bytes]]) -> None:
    """Tell every worker of the cluster that ``bare``'s lists changed: each re-reads
    the lists of the user's sessions it hosts (but ``origin``'s, which did so itself) and
    writes them ``pushes``: (who, payload) with who 'all' or 'blocklist' (the sessions
    that asked for the block list)."""
    scheduler = otp.current()
    dist = scheduler.dist
    keys = dist.processes() if dist is not None else [(scheduler.node, scheduler.worker)]
    message = ("changed", bare, origin, pushes)
    for node, worker in keys:
        otp.send_named(node, worker, RELAY, message)


class _Relay(otp.LoopActor):
    """Receives :func:`announce` in each worker (registered ``mod_privacy``)."""

    pykka_registry = False

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, (tuple, list)) and message and message[0] == "changed":
            _, bare, origin, pushes = message
            for state in list(_by_bare.get(bare, ())):
                if state.pid != origin:
                    reload(state)
                for who, payload in pushes:
                    if who == "all" or state.blocklist_requested:
                        push(state, payload)
            return None
        return super().on_receive(message)


_push_ids = itertools.count(1)


def push(state: Session, payload: bytes) -> None:
    """An iq set with ``payload`` from the user's bare JID to the session."""
    push_id = f"push{next(_push_ids)}"
    data = (f'<iq from="{_quote(state.bare)}" to="{_quote(state.jid)}" type="set" '
            f'id="{push_id}">').encode() + payload + b"</iq>"
    otp.send(state.pid, ("route", Packet(state.bare, state.jid, "iq", "set", push_id, data)))
    sink(state.host, "push_item").emit({"count": 1})


def _quote(value: str) -> str:
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
            .replace(">", "&gt;"))


# -- iq: answering later ------------------------------------------------------------------


def own_session(stanza: etree._Element, from_jid: str, to_jid: str) -> Session | etree._Element:
    """The sending session's state, or the error to answer: these iqs are for one's own
    account, from a session of this worker (whose router shard runs the handler)."""
    if from_jid.partition("/")[0] != to_jid.partition("/")[0]:
        return errors.make_error_reply(stanza, "forbidden")
    state = _by_jid.get(from_jid)
    if state is None:
        return errors.make_error_reply(stanza, "not-allowed")
    return state


def answer(stanza: etree._Element, from_jid: str, to_jid: str, reply: etree._Element) -> None:
    router.route(packet_mod.from_element(reply, to_jid, from_jid))


def run(state: Session, stanza: etree._Element, from_jid: str, to_jid: str,
        work: Callable[[], Any], finish: Callable[[Any], etree._Element | None]) -> None:
    """Run ``work`` on the pool, in order with the user's other writes; then, on the loop,
    answer with ``finish(result)``: an element, or None when ``finish`` answers itself."""
    def done(future: otp.LoopFuture[Any]) -> None:
        try:
            result = future.get(timeout=0)
        except Exception as error:
            answer(stanza, from_jid, to_jid, _failure(stanza, error))
            return
        reply = finish(result)
        if reply is not None:
            answer(stanza, from_jid, to_jid, reply)

    _Engine.writes.submit(state.bare, work, done=done)


def changed(state: Session, stanza: etree._Element, from_jid: str, to_jid: str,
            pushes: list[tuple[str, bytes]]) -> None:
    """After a write: announce it, re-read this session's list, then answer the iq."""
    announce(state.bare, state.pid, pushes)
    reload(state, lambda _outcome: answer(stanza, from_jid, to_jid, iq.result(stanza)))


def _failure(stanza: etree._Element, error: Exception) -> etree._Element:
    from mongoose.storage import StorageUnavailable

    if isinstance(error, StorageUnavailable):
        return error_reply(stanza, "internal-server-error", "storage is unavailable; try "
                           "again later", "wait")
    log.error("a privacy request failed", exc_info=error, extra={
        "what": "privacy_request_failed"})
    return error_reply(stanza, "internal-server-error")


# -- jabber:iq:privacy --------------------------------------------------------------------


def _iq(stanza: etree._Element, from_jid: str, to_jid: str) -> etree._Element | None:
    state = own_session(stanza, from_jid, to_jid)
    if not isinstance(state, Session):
        return state
    children = [c for c in stanza[0] if isinstance(c.tag, str)]
    user, host = state.user, state.host
    store_ = _Engine.store
    if stanza.get("type") == "get":
        sink(host, "get").emit({"count": 1})
        if not children:
            run(state, stanza, from_jid, to_jid, lambda: store_.get_list_names(user, host),
                lambda names: _names_reply(stanza, state, *names))
            return None
        name = children[0].get("name")
        if len(children) > 1 or children[0].tag != _Q + "list" or name is None:
            return errors.make_error_reply(stanza, "bad-request")
        run(state, stanza, from_jid, to_jid, lambda: store_.get_list(user, host, name),
            lambda items: _list_reply(stanza, name, items))
        return None
    if len(children) != 1:
        return errors.make_error_reply(stanza, "bad-request", "one of active, default, list")
    child = children[0]
    name = child.get("name")
    set_sink = sink(host, "set")
    if child.tag == _Q + "active":
        set_sink.emit({"count": 1, "active_count": 1})
        return _set_active(state, stanza, from_jid, to_jid, name)
    if child.tag == _Q + "default":
        set_sink.emit({"count": 1, "default_count": 1})
        if name is None:
            run(state, stanza, from_jid, to_jid,
                lambda: store_.forget_default_list(user, host),
                lambda _: changed(state, stanza, from_jid, to_jid, []))
        else:
            run(state, stanza, from_jid, to_jid,
                lambda: store_.set_default_list(user, host, name),
                lambda found: changed(state, stanza, from_jid, to_jid, []) if found
                else errors.make_error_reply(stanza, "item-not-found"))
        return None
    if child.tag != _Q + "list" or name is None:
        return errors.make_error_reply(stanza, "bad-request")
    set_sink.emit({"count": 1})
    list_push = [("all", _list_push(name))]
    if not any(isinstance(c.tag, str) for c in child):
        if any(r[3] == name and r[2] != state.pid for r in _active_records(state.bare)):
            return errors.make_error_reply(stanza, "conflict", "another session uses it")
        run(state, stanza, from_jid, to_jid, lambda: _remove(user, host, name),
            lambda outcome: changed(state, stanza, from_jid, to_jid, list_push)
            if outcome is True else errors.make_error_reply(stanza, outcome))
        return None
    try:
        items = parse_items(child)
    except InvalidJID as error:
        return errors.make_error_reply(stanza, "jid-malformed", str(error))
    except ValueError as error:
        return errors.make_error_reply(stanza, "bad-request", str(error))
    run(state, stanza, from_jid, to_jid, lambda: store_.replace_list(user, host, name, items),
        lambda _: changed(state, stanza, from_jid, to_jid, list_push))
    return None


def _set_active(state: Session, stanza: etree._Element, from_jid: str, to_jid: str,
                name: str | None) -> None:
    def done(outcome: str) -> None:
        if outcome == "ok":
            reply = iq.result(stanza)
        elif outcome == "item-not-found":
            reply = errors.make_error_reply(stanza, "item-not-found")
        else:
            reply = error_reply(stanza, "internal-server-error")
        answer(stanza, from_jid, to_jid, reply)

    reload(state, done, switch_to=name)


def _remove(user: str, host: str, name: str) -> bool | str:
    try:
        return _Engine.store.remove_list(user, host, name) or "item-not-found"
    except ListIsDefault:
        return "conflict"


def _active_records(bare: str) -> list[tuple[Any, ...]]:
    return _Engine.active.lookup(bare) if _Engine.active is not None else []


def _names_reply(stanza: etree._Element, state: Session, default: str | None,
                 names: list[str]) -> etree._Element:
    query = etree.Element(_Q + "query", nsmap={None: ns.PRIVACY})
    if state.active is not None:
        etree.SubElement(query, _Q + "active", name=state.active)
    if default is not None:
        etree.SubElement(query, _Q + "default", name=default)
    for name in names:
        etree.SubElement(query, _Q + "list", name=name)
    return iq.result(stanza, query)


def _list_reply(stanza: etree._Element, name: str,
                items: list[PrivacyItem] | None) -> etree._Element:
    if items is None:
        return errors.make_error_reply(stanza, "item-not-found")
    query = etree.Element(_Q + "query", nsmap={None: ns.PRIVACY})
    list_el = etree.SubElement(query, _Q + "list", name=name)
    for item in items:
        list_el.append(item_element(item))
    return iq.result(stanza, query)


def _list_push(name: str) -> bytes:
    query = etree.Element(_Q + "query", nsmap={None: ns.PRIVACY})
    etree.SubElement(query, _Q + "list", name=name)
    return etree.tostring(query)


# -- checking stanzas ---------------------------------------------------------------------


def _inbound(packet: Packet, params: dict[str, Any]) -> Any:
    state = _sessions.get(params["c2s"].pid)
    if state is None:
        return packet
    if not state.loaded:
        state.held.append(packet)
        return Stop(None)
    if _rechecked:  # an offline message re-routed after its check found a session
        _rechecked.pop(id(packet), None)
    replay = state.replay
    if replay:
        if packet is replay[0]:
            replay.popleft()
        else:  # came before the held ones were replayed: it goes after them
            replay.append(packet)
            otp.send(state.pid, ("route", packet))
            return Stop(None)
    if not state.rules:
        return packet
    sender = packet[0]
    if _exempt(state, sender):
        return packet
    name, kind = packet[2], packet[3]
    if name == "message":
        if kind == "error":
            return packet
        bit = MESSAGE
    elif name == "iq":
        bit = IQ
    else:
        bit = PRESENCE_IN if kind in _NOTIFICATION else OTHER
    action = decide(state.rules, bit, sender, state.roster)
    checked = sink(state.host, "check_packet")
    if action is None:
        checked.emit({"count": 1})
        return packet
    checked.emit({"count": 1, f"{'blocked' if action == 'block' else 'denied'}_count": 1})
    if (name == "message" and _answers_for_all(state, packet)) or (
            name == "iq" and kind in ("get", "set")):
        router.bounce(packet, "service-unavailable")
    return Stop(None)


def _exempt(state: Session, jid: str) -> bool:
    """Stanzas with the user's own account and resources, or with its server, are never
    checked (XEP-0016 §2.1: a user's resources always reach each other)."""
    return jid == state.host or jid.partition("/")[0] == state.bare


def _answers_for_all(state: Session, packet: Packet) -> bool:
    """Whether this session answers a refused message: always when it was addressed to
    it; for one sent to the bare JID, only the first of the sessions that got it."""
    if packet[1] == state.jid:
        return True
    own = state.jid.partition("/")[2]
    others = router.message_recipients(sm.sessions(state.bare), packet[3])
    return own == min({r[1] for r in others} | {own})


def _outbound(el: etree._Element | None, params: dict[str, Any]) -> Any:
    state = _sessions.get(params["c2s"].pid)
    if state is None or not state.rules or el is None:
        return el
    to = params["to_jid"]
    if not to or _exempt(state, to):
        return el
    kind = el.get("type", "")
    bit = PRESENCE_OUT if el.tag == _PRESENCE and kind in _NOTIFICATION else OTHER
    action = decide(state.rules, bit, to, state.roster)
    checked = sink(state.host, "check_packet")
    if action is None:
        checked.emit({"count": 1})
        return el
    checked.emit({"count": 1, f"{'blocked' if action == 'block' else 'denied'}_count": 1})
    if kind != "error":
        _refuse_outbound(state, el, to, action)
    return Stop(None)


def _roster_changed(acc: Any, params: dict[str, Any]) -> Any:
    """mod_roster's roster change for a session: keep the roster snapshot current, so
    subscription and group items see the change at once (XEP-0016 §2.9)."""
    event = params["event"]
    if event[0] != "roster":
        return acc
    state = _sessions.get(params["c2s"].pid)
    if state is None or state.roster is None:
        return acc
    from mongoose.modules.mod_roster import from_wire

    jid, item = event[1], from_wire(event[2])
    if item is None:
        state.roster.pop(jid, None)
    else:
        state.roster[jid] = (item.subscription, frozenset(item.groups))
    return acc


def _refuse_outbound(state: Session, el: etree._Element, to: str, action: str) -> None:
    """not-acceptable (XEP-0016 §2.13), with XEP-0191's <blocked/> for a blocking item,
    written to the client as if from ``to``."""
    reply = errors.make_error_reply(el, "not-acceptable", type="cancel")
    if action == "block":
        error = reply.find(f"{{{ns.CLIENT}}}error")
        etree.SubElement(error, f"{{{BLOCKED_ERRORS}}}blocked", nsmap={None: BLOCKED_ERRORS})
    reply.set("from", to)
    reply.set("to", state.jid)
    state.c2s.send_to_client(reply)


def _presence_out(packet: Packet, params: dict[str, Any]) -> Any:
    if packet[2] != "presence":
        return packet
    state = _by_jid.get(packet[0])
    if state is None or not state.rules or _exempt(state, packet[1]):
        return packet
    bit = PRESENCE_OUT if packet[3] in _NOTIFICATION else OTHER
    if decide(state.rules, bit, packet[1], state.roster) is None:
        return packet
    return Stop(None)


def _offline(outcome: Any, params: dict[str, Any]) -> Any:
    packet = params["packet"]
    if _rechecked and _rechecked.pop(id(packet), None) is packet:
        return outcome
    bare = packet[1].partition("/")[0]
    if packet[3] == "error" or packet[0].partition("/")[0] == bare:
        return outcome
    waiting = _offline_waiting.get(bare)
    if waiting is not None:
        waiting.append(packet)
        return Stop("deferred")
    _offline_waiting[bare] = [packet]
    user, _, host = bare.rpartition("@")

    def done(future: otp.LoopFuture[Any]) -> None:
        packets = _offline_waiting.pop(bare, [])
        try:
            items, roster = future.get(timeout=0)
        except Exception:
            log.exception("cannot read a privacy list; delivering", extra={
                "what": "privacy_offline_check_failed", "jid": bare})
            items, roster = [], None
        rules = compile_rules(items)
        for waiting_packet in packets:
            if rules and decide(rules, MESSAGE, waiting_packet[0], roster) is not None:
                router.bounce(waiting_packet, "service-unavailable")
                continue
            _rechecked[id(waiting_packet)] = waiting_packet
            router.route(waiting_packet)

    _Engine.reads.submit(("offline", bare), _read_default, user, host, done=done)
    return Stop("deferred")


def _read_default(user: str, host: str) -> tuple[list[PrivacyItem], Roster | None]:
    """The user's default list, and the roster if its items need it (on the pool)."""
    default = _Engine.store.get_default_list(user, host)
    items = default[1] if default is not None else []
    needs_roster = any(item.type in ("group", "subscription") for item in items)
    return items, _read_roster(user, host) if needs_roster else None


def _inbound_subscription(job: Any, params: dict[str, Any]) -> Any:
    """Wrap mod_presence's job for a subscription stanza to a local user (it runs on the
    pool while the router holds that user's later packets): check the user's default
    list first, and drop the stanza, before any roster change, if it is denied (XEP-0016
    §2.4: privacy lists come before subscription handling). Without a job the stanza
    goes to the sessions, whose lists apply."""
    if job is None:
        return job
    packet = params["packet"]
    bare = packet[1].partition("/")[0]
    sender = packet[0]
    if sender.partition("/")[0] == bare:
        return job
    user, _, host = bare.rpartition("@")

    def checked() -> Any:
        items, roster = _read_default(user, host)
        if items and decide(compile_rules(items), OTHER, sender, roster) is not None:
            return None
        return job()

    return checked
