"""mod_presence: presence subscriptions and presence broadcast (RFC 6121 §3, §4).

What the session (:mod:`mongoose.c2s`) does without this module: presence to the user's
own resources, directed presence and the unavailable presence that follows it. This
module adds everything that depends on the roster; the roster itself is mod_roster's,
reached through hooks (``roster_get``, ``roster_out_subscription``,
``roster_in_subscription``), so this module must start after it.

Per session (``c2s.mod_state["mod_presence"]``, loaded when the session becomes available)
    The contacts with a subscription to the user's presence (``from``/``both``: they get
    its broadcasts) and those the user is subscribed to (``to``/``both``: probed at
    initial presence). Loaded once, by the initial presence, off the loop
    (:meth:`mongoose.c2s.C2S.defer`: the session takes nothing else meanwhile), then
    kept current by the roster pushes every session gets (mod_roster's ``foreign_event``
    ``roster`` events, stale ones already dropped there). Nothing per stanza touches the
    database.

Initial presence (§4.2)
    Sent to every subscriber, a probe (from the session's full JID, so the answers come
    to it alone) to every contact the user is subscribed to, and the subscription
    requests that waited in the roster (pending in, with their text) delivered to this
    resource (§3.1.3: "when the contact next becomes available"). Later available
    presence goes to the subscribers (§4.4), unavailable presence too (§4.5), also when
    the session ends however it ends -- its stream closed, its connection cut, its actor
    killed (the session's ``release``) -- since the subscribers are in memory and nothing
    needs the database then. The session skips directed-presence recipients who got it
    as subscribers.

Probes (§4.3)
    The router hands a probe to the contact's available sessions; each answers with its
    last presence if the prober's bare JID is a subscriber (hook ``presence_probe``).
    A contact with no available session does not answer (§4.3.2 allows it).

Outbound subscriptions (§3.1.2, §3.2.2, §3.3.2, A.2)
    A ``subscribe``, ``subscribed``, ``unsubscribe`` or ``unsubscribed`` from the client
    is taken in the session (``user_send_packet``, late, after any filter) and handled
    off the loop: the roster item changes (``roster_out_subscription``), every session
    of the user gets the push, and the stanza is routed stamped with the user's bare JID
    -- ``subscribe`` and ``unsubscribe`` always, ``subscribed`` only when it approves a
    request (without one it is a pre-approval, §3.4, kept in the roster),
    ``unsubscribed`` only when it cancels or denies something. A new contact beyond
    mod_roster's ``max_roster_size`` gets the client a presence error (``not-allowed``).

Inbound subscriptions (§3.1.3, §3.1.6, §3.2.3, §3.3.3, A.3)
    The router gives a subscription stanza for a local user to the ``inbound_subscription``
    hook; this module returns a job for the router's blocking queue (the router holds
    later packets to that user until it is done): the account must exist (a
    ``subscribe`` to no account gets ``unsubscribed`` back, others are dropped, §8.5.1),
    the roster item changes (``roster_in_subscription``), and then: a ``subscribe`` from
    a contact that already has, or was pre-approved for, a subscription is answered
    ``subscribed`` by the server; another ``subscribe`` goes to the user's available
    resources, or waits in the roster for the next initial presence; the others go to
    the available resources when they changed the state, else nowhere.

Subscription changes seen by the sessions
    When a session learns (from a roster push) that a contact gained a subscription to
    the user, it sends that contact its current presence (§3.1.5); when a contact lost
    it, unavailable presence (§3.2.2, §3.3.3).

A lost worker (``sm_sessions_lost``)
    Its sessions' state died with it: the one process :mod:`mongoose.sm` designates
    reads each lost available session's roster (off the loop) and sends unavailable
    presence from that full JID to its subscribers, and to the user's other resources.
    Directed presence recipients of a lost session are not told (they were known to
    the dead process only).

Instrumentation: ``mod_presence_subscription`` {host_type} counts the subscription
stanzas users send, by type (``subscribe``, ``subscribed``, ``unsubscribe``,
``unsubscribed``: spirals).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

from lxml import etree

import otp
from mongoose import instrument, router, sm
from mongoose import packet as packet_mod
from mongoose.hooks import Stop, hooks
from mongoose.modules.mod_roster import from_wire
from mongoose.packet import Packet
from mongoose.storage.backends.roster import RosterFull, RosterItem
from mongoose.xmpp import errors, ns
from otp import blocking

__all__ = ["NAME"]

log = logging.getLogger(__name__)

NAME = "mod_presence"
XEPS: tuple[str, ...] = ()  # RFC 6121 §3-§4, no XEP
FEATURES: tuple[str, ...] = ()  # "presence" is the core's (mod_disco); pre-approval is
# announced as a stream feature by mod_roster, which keeps it
EVENT = "mod_presence_subscription"
KINDS = ("subscribe", "subscribed", "unsubscribe", "unsubscribed")

_PRESENCE = f"{{{ns.CLIENT}}}presence"
_STATUS = f"{{{ns.CLIENT}}}status"

_sinks: dict[str, dict[str, Any]] = {}


@dataclasses.dataclass
class _Session:
    """This module's state in an available session."""

    subscribers: set[str]  # bare JIDs with from/both: get our presence
    subscriptions: set[str]  # bare JIDs with to/both: we get theirs


def _bare(jid: str) -> str:
    return jid.partition("/")[0]


def _has_from(item: RosterItem | None) -> bool:
    return item is not None and item.subscription in ("from", "both")


def _has_to(item: RosterItem | None) -> bool:
    return item is not None and item.subscription in ("to", "both")


def _pending_in(item: RosterItem | None) -> bool:
    return item is not None and item.ask in ("in", "both")


def _presence(kind: str | None = None, status: str | None = None) -> etree._Element:
    el = etree.Element(_PRESENCE, nsmap={None: ns.CLIENT})
    if kind:
        el.set("type", kind)
    if status:
        etree.SubElement(el, _STATUS).text = status
    return el


def _count(host: str, kind: str) -> None:
    sinks = _sinks.get(host)
    if sinks is not None:
        sinks["sink"].emit(sinks[kind])


# -- the user's own presence ---------------------------------------------------------------


def _presence_update(acc: set[str], params: dict[str, Any]) -> set[str]:
    c2s = params["c2s"]
    el = params["element"]
    if params["available"] and params["initial"]:
        c2s.defer(_initial, c2s)
        return acc
    state = c2s.mod_state.get(NAME)
    if state is None:
        return acc
    for contact in sorted(state.subscribers):
        router.route(packet_mod.from_element(el, c2s.jid_str, contact))
    if not params["available"]:
        del c2s.mod_state[NAME]
        return acc | state.subscribers
    return acc


async def _initial(c2s: Any) -> None:
    items = await _roster(c2s.bare_str, c2s.host)
    if items is None or c2s.closed or not c2s.available or c2s.last_presence is None:
        return
    state = _Session({i.jid for i in items if _has_from(i)},
                     {i.jid for i in items if _has_to(i)})
    c2s.mod_state[NAME] = state
    for contact in sorted(state.subscribers):
        router.route(packet_mod.from_element(c2s.last_presence, c2s.jid_str, contact))
    probe = _presence("probe")
    for contact in sorted(state.subscriptions):
        router.route(packet_mod.from_element(probe, c2s.jid_str, contact))
    for item in items:
        if _pending_in(item):  # a request that waited for us (RFC 6121 §3.1.3)
            request = _presence("subscribe", item.ask_message)
            otp.send(c2s.pid, ("route", packet_mod.from_element(request, item.jid,
                                                                c2s.jid_str)))


async def _roster(user: str, host: str) -> list[RosterItem] | None:
    """The user's roster (mod_roster's ``roster_get``, off the loop); None if it could
    not be read."""
    try:
        return await blocking.run(functools.partial(hooks.run, "roster_get", [], host,
                                                    jid=user))
    except Exception:  # hooks.run logs handler crashes; this is the pool failing
        log.exception("cannot read a roster", extra={"what": "mod_presence_roster_failed",
                                                     "jid": user})
        return None


def _probe(acc: bool, params: dict[str, Any]) -> bool:
    state = params["c2s"].mod_state.get(NAME)
    return acc or (state is not None and _bare(params["from_jid"]) in state.subscribers)


def _foreign_event(acc: Any, params: dict[str, Any]) -> Any:
    """A roster change seen by this session (mod_roster dropped stale ones already)."""
    event = params["event"]
    if event[0] != "roster":
        return acc
    c2s = params["c2s"]
    state = c2s.mod_state.get(NAME)
    if state is None or not c2s.available or c2s.last_presence is None:
        return acc
    jid = event[1]
    item = from_wire(event[2])
    was = jid in state.subscribers
    if _has_from(item):
        state.subscribers.add(jid)
    else:
        state.subscribers.discard(jid)
    if _has_to(item):
        state.subscriptions.add(jid)
    else:
        state.subscriptions.discard(jid)
    if _has_from(item) and not was:  # RFC 6121 §3.1.5
        router.route(packet_mod.from_element(c2s.last_presence, c2s.jid_str, jid))
    elif was and not _has_from(item):  # §3.2.2, §3.3.3
        router.route(packet_mod.from_element(_presence("unavailable"), c2s.jid_str, jid))
    return acc


# -- subscriptions the user sends ----------------------------------------------------------


def _user_send_packet(acc: Any, params: dict[str, Any]) -> Any:
    el = acc
    if el is None or el.tag != _PRESENCE:
        return acc
    kind = el.get("type")
    to = params["to_jid"]
    if kind not in KINDS or not to:
        return acc
    c2s = params["c2s"]
    contact = _bare(to)
    if contact == c2s.bare_str or "@" not in contact:
        return Stop(None)  # a subscription to oneself or to a server: meaningless
    c2s.defer(_outbound, c2s, el, kind, contact)
    return Stop(None)


async def _outbound(c2s: Any, el: etree._Element, kind: str, contact: str) -> None:
    _count(c2s.host, kind)
    if not hooks.has("roster_out_subscription", c2s.host):
        router.route(packet_mod.from_element(el, c2s.bare_str, contact))
        return
    status = el.findtext(_STATUS) or ""
    change = await blocking.run(functools.partial(
        hooks.run, "roster_out_subscription", None, c2s.host, user=c2s.bare_str,
        contact=contact, type=kind, status=status))
    if c2s.closed:
        return
    if isinstance(change, RosterFull):
        _presence_error(c2s, el, contact, "not-allowed", "the roster is full")
        return
    if change is None:
        _presence_error(c2s, el, contact, "internal-server-error", None)
        return
    old, new = change.old, change.new
    if kind in ("subscribe", "unsubscribe"):
        route = True
    elif kind == "subscribed":
        route = _has_from(new) and not _has_from(old)
    else:
        route = (_has_from(old) and not _has_from(new)) or (
            _pending_in(old) and not _pending_in(new))
    if route:
        router.route(packet_mod.from_element(el, c2s.bare_str, contact))


def _presence_error(c2s: Any, el: etree._Element, contact: str, condition: str,
                    text: str | None) -> None:
    reply = errors.make_error_reply(el, condition, text)
    reply.set("from", contact)
    reply.set("to", c2s.jid_str)
    c2s.send_to_client(reply)


# -- subscriptions for our users (in the router) --------------------------------------------


def _inbound_subscription(acc: Any, params: dict[str, Any]) -> Any:
    packet: Packet = params["packet"]
    user = _bare(packet[1])
    contact = _bare(packet[0])
    kind = packet[3]
    local, _, host = user.rpartition("@")
    if not hooks.has("roster_in_subscription", host) or "@" not in contact:
        return acc

    def job() -> Any:
        from mongoose.server import current

        if not current().store.exists(local, host):
            return lambda: _no_such_user(packet, user, contact)
        status = ""
        if kind == "subscribe":
            status = packet_mod.element(packet).findtext(_STATUS) or ""
        change = hooks.run("roster_in_subscription", None, host, user=user, contact=contact,
                           type=kind, status=status)
        return lambda: _deliver_inbound(packet, user, contact, change)

    return job


def _no_such_user(packet: Packet, user: str, contact: str) -> None:
    """RFC 6121 §8.5.1: a subscription request to no account is refused; the rest of
    the subscription stanzas are dropped."""
    if packet[3] == "subscribe":
        router.route(packet_mod.from_element(_presence("unsubscribed"), user, contact))


def _deliver_inbound(packet: Packet, user: str, contact: str, change: Any) -> None:
    if change is None or isinstance(change, Exception):
        return  # storage failed (logged by the hook) or the roster is full: dropped
    kind = packet[3]
    if kind == "subscribe":
        if _has_from(change.new):  # subscribed already, or pre-approved (§3.1.3, §3.4)
            router.route(packet_mod.from_element(_presence("subscribed"), user, contact))
            return
        if _pending_in(change.new):  # to the available resources; else it waits
            router.presence_to_available(packet, sm.sessions(user))
        return
    if change.version is not None:
        router.presence_to_available(packet, sm.sessions(user))


# -- sessions of a lost worker --------------------------------------------------------------


def _sessions_lost(acc: Any, params: dict[str, Any]) -> Any:
    for record in params["records"]:
        if record[3] is None:
            continue  # never available: nobody saw it online
        bare, resource = record[0], record[1]
        full = f"{bare}/{resource}"
        gone = _presence("unavailable")
        for other in sm.sessions(bare):
            otp.send(other[2], ("own_presence", packet_mod.from_element(
                gone, full, f"{other[0]}/{other[1]}")))
        host = bare.rpartition("@")[2]
        read = functools.partial(hooks.run, "roster_get", [], host, jid=bare)
        blocking.run(read).add_done_callback(
            lambda future, full=full: _tell_subscribers(future, full))
    return acc


def _tell_subscribers(future: Any, full: str) -> None:
    try:
        items = future.get(timeout=0)
    except Exception:
        log.exception("cannot read a roster", extra={"what": "mod_presence_roster_failed",
                                                     "jid": full})
        return
    gone = _presence("unavailable")
    for item in items:
        if _has_from(item):
            router.route(packet_mod.from_element(gone, full, item.jid))


# -- start and stop ---------------------------------------------------------------------------


def start(config: Any, module_config: Any) -> None:
    instrument.register(EVENT, ("host_type",), dict.fromkeys(KINDS, "spiral"))
    _sinks.clear()
    for host in config.general.hosts:
        _sinks[host] = {"sink": instrument.prepared(EVENT, {"host_type": host}),
                        **{kind: {kind: 1} for kind in KINDS}}
    hooks.add("user_presence_update", _presence_update, module=NAME)
    hooks.add("presence_probe", _probe, module=NAME)
    hooks.add("foreign_event", _foreign_event, priority=50, module=NAME)
    hooks.add("user_send_packet", _user_send_packet, priority=90, module=NAME)
    hooks.add("inbound_subscription", _inbound_subscription, module=NAME)
    hooks.add("sm_sessions_lost", _sessions_lost, module=NAME)


def stop() -> None:
    hooks.remove_module(NAME)
