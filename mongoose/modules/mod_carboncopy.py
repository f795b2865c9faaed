"""mod_carboncopy: XEP-0280 Message Carbons (``urn:xmpp:carbons:2``).

A session turns carbons on or off with ``<iq type='set'><enable|disable
xmlns='urn:xmpp:carbons:2'/></iq>`` (no ``to``, or its own bare JID); from then on it gets
a copy of the user's chat messages that went to, or came from, the user's other resources.

Who has carbons on
    The CETS bag table ``carboncopy`` (:mod:`otp.cets`), replicated to every worker of
    every node, holds one record per session with carbons on::

        (bare_jid, resource, pid)

    keyed by the bare JID, so "does any session of this user want copies?" is one dict
    lookup in the local replica, wherever the stanza is handled; for a user with no such
    session that lookup is all the module costs per message. The enable iq is handled in
    the router shard of the sender's worker (an ``account`` iq handler), which is also the
    session's worker: the record is owned by the session's worker, so it vanishes from
    every replica when that worker or its node is lost (the table layer's cleanup, as for
    the session table). The session's end removes it (``sm_remove_connection``); a session
    that ended before its enable iq reached the router is no longer in the local session
    table, and nothing is written.

Which messages are copied (§6)
    Type ``chat``, or ``normal``/absent with a ``<body/>``; not those with ``<private
    xmlns='urn:xmpp:carbons:2'/>`` (§7) or ``<no-copy xmlns='urn:xmpp:hints'/>``
    (XEP-0334), nor carbons themselves (``<sent/>``/``<received/>``), nor MUC private
    messages (``<x xmlns='http://jabber.org/protocol/muc#user'/>``), nor messages between
    the user's own resources.

Sent copies (§5)
    In ``user_send_packet`` of the sending session: each other carbons-enabled session
    of the user gets ``<message from=bare to=full type=...><sent
    xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>`` + the message
    as routed + ``</forwarded></sent></message>``, sent straight to its pid.

Received copies (§4)
    In ``user_receive_packet`` of the session that gets the original. A message addressed
    to this session's full JID: copies to the user's other carbons-enabled sessions. A
    message addressed to the bare JID (or to a resource that is not there, which the
    router delivers as to the bare JID) went to every session of the highest priority
    (:func:`mongoose.router.message_recipients`): those get no copy, and only one of them
    -- the one with the smallest resource -- sends the copies, so that several recipients
    do not each copy it. Both decisions are taken from the recipient worker's replica of
    the session table; for the moment a new session or priority takes to replicate, a
    copy may be missing or doubled.

The copies bypass the router (there is nothing to route: the targets' pids are in the
table), and the wrapper is built from the bytes the recipient got, without re-serializing
the message; only a message that has carbon targets is parsed, to check its eligibility.

Instrumentation: ``mod_carboncopy_iq`` {host_type} with ``enable_count`` and
``disable_count``, ``mod_carboncopy_copy`` {host_type} with ``sent_count`` and
``received_count`` (spirals): one per copy made.
"""

from __future__ import annotations

import logging
from typing import Any
from xml.sax.saxutils import escape

from lxml import etree

import otp
from mongoose import instrument, iq, router, sm
from mongoose import packet as packet_mod
from mongoose.hooks import hooks
from mongoose.packet import Packet
from mongoose.xmpp import errors, ns
from otp import cets

__all__ = ["FEATURES", "TABLE", "XEPS", "start", "stop"]

log = logging.getLogger(__name__)

XEPS = ("0280",)
FEATURES = (ns.CARBONS,)
TABLE = "carboncopy"

HINTS = "urn:xmpp:hints"
_MESSAGE = f"{{{ns.CLIENT}}}message"
_BODY = f"{{{ns.CLIENT}}}body"
# Children that make a message ineligible for copies (see the module docstring).
_NOT_COPIED = frozenset({
    f"{{{ns.CARBONS}}}private", f"{{{ns.CARBONS}}}sent", f"{{{ns.CARBONS}}}received",
    f"{{{HINTS}}}no-copy", f"{{{ns.MUC_USER}}}x",
})
_CANDIDATE_TYPES = frozenset({"chat", "normal", ""})
_ENABLE = f"{{{ns.CARBONS}}}enable"
_DISABLE = f"{{{ns.CARBONS}}}disable"
_NAME = "mod_carboncopy"

_table: cets.Table | None = None
_sinks: dict[str, tuple[Any, Any]] = {}  # host -> (iq sink, copy sink)


def register_events() -> None:
    instrument.register("mod_carboncopy_iq", ("host_type",),
                        {"enable_count": "spiral", "disable_count": "spiral"})
    instrument.register("mod_carboncopy_copy", ("host_type",),
                        {"sent_count": "spiral", "received_count": "spiral"})


def start(config: Any, module_config: Any) -> None:
    global _table
    register_events()
    for host in config.general.hosts:
        labels = {"host_type": host}
        _sinks[host] = (instrument.prepared("mod_carboncopy_iq", labels),
                        instrument.prepared("mod_carboncopy_copy", labels))
    try:
        _table = cets.get(TABLE)
    except KeyError:
        _table = cets.create(TABLE, type="bag")
    iq.register("account", ns.CARBONS, _iq)
    hooks.add("user_send_packet", _sent, priority=50, module=_NAME)
    hooks.add("user_receive_packet", _received, priority=50, module=_NAME)
    hooks.add("sm_remove_connection", _session_closed, module=_NAME)


def stop() -> None:
    iq.unregister("account", ns.CARBONS)
    hooks.remove_module(_NAME)


# -- enable / disable ------------------------------------------------------------------------


def _iq(stanza: etree._Element, from_jid: str, to_jid: str) -> etree._Element:
    bare, _, resource = from_jid.partition("/")
    if bare != to_jid.partition("/")[0] or not resource:
        return errors.make_error_reply(stanza, "not-allowed")  # another user's carbons
    payload = stanza[0]
    if stanza.get("type") != "set" or payload.tag not in (_ENABLE, _DISABLE) or len(payload):
        return errors.make_error_reply(stanza, "bad-request")
    record = _session(bare, resource)
    if record is None:  # the session ended meanwhile; the answer goes nowhere
        return errors.make_error_reply(stanza, "not-allowed")
    table = _table
    assert table is not None
    iq_sink = _sinks[bare.rpartition("@")[2]][0]
    if payload.tag == _ENABLE:
        if record not in table.lookup(bare):
            table.insert(record)
        iq_sink.emit({"enable_count": 1})
    else:
        table.delete_object(record)
        iq_sink.emit({"disable_count": 1})
    return iq.result(stanza)


def _session(bare: str, resource: str) -> tuple[str, str, otp.Pid] | None:
    """The sending session's (bare, resource, pid), if it lives in this worker: the
    router shard that runs the iq handler is the session's own (see the docstring)."""
    scheduler = otp.current()
    for record in sm.sessions(bare):
        if record[1] == resource and scheduler.is_local(record[2]):
            return (bare, resource, record[2])
    return None


def _session_closed(acc: Any, params: dict[str, Any]) -> Any:
    jid = params["jid"]
    bare, _, resource = jid.partition("/")
    if _table is not None and _table.lookup(bare):
        _table.delete_object((bare, resource, params["pid"]))
    return acc


# -- copies -----------------------------------------------------------------------------------


def _sent(el: etree._Element | None, params: dict[str, Any]) -> Any:
    if el is None or el.tag != _MESSAGE:
        return el
    c2s = params["c2s"]
    bare = c2s.bare_str
    enabled = _table.lookup(bare)  # type: ignore[union-attr]
    if not enabled:  # the per-message cost for users without carbons ends here
        return el
    to = params["to_jid"]
    if (not to or to.partition("/")[0] == bare or el.get("type", "") not in _CANDIDATE_TYPES
            or not _eligible(el)):
        return el
    me = c2s.jid_str
    targets = [r for r in enabled if r[2] != c2s.pid]
    if targets:
        original = packet_mod.from_element(el, me, to)
        _copy(original, "sent", bare, targets, c2s.host)
    return el


def _received(packet: Packet, params: dict[str, Any]) -> Any:
    if packet[2] != "message" or packet[3] not in _CANDIDATE_TYPES:
        return packet
    c2s = params["c2s"]
    bare = c2s.bare_str
    enabled = _table.lookup(bare)  # type: ignore[union-attr]
    if not enabled:
        return packet
    if packet[0].partition("/")[0] == bare:
        return packet  # from one of the user's own resources, or a carbon itself
    if packet[1] == c2s.jid_str:
        got_it = {c2s.pid}
    else:
        recipients = router.message_recipients(sm.sessions(bare), packet[3])
        resources = {r[1] for r in recipients} | {c2s.jid.resource}
        if c2s.jid.resource != min(resources):
            return packet  # another recipient of the original sends the copies
        got_it = {r[2] for r in recipients} | {c2s.pid}
    targets = [r for r in enabled if r[2] not in got_it]
    if targets and _eligible(packet_mod.element(packet)):
        _copy(packet, "received", bare, targets, c2s.host)
    return packet


def _eligible(el: etree._Element) -> bool:
    """XEP-0280 §6 (and §7 private, XEP-0334 no-copy): see the module docstring."""
    has_body = False
    for child in el:
        tag = child.tag
        if tag in _NOT_COPIED:
            return False
        if tag == _BODY:
            has_body = True
    return has_body or el.get("type") == "chat"


def _copy(original: Packet, direction: str, bare: str, targets: list[Any], host: str) -> None:
    """Send ``original`` wrapped in ``<sent/>`` or ``<received/>`` to each target."""
    inner = original[5]
    if inner.startswith(b"<message "):  # give it back the namespace the stream implied
        inner = b'<message xmlns="jabber:client"' + inner[8:]
    kind = original[3]
    type_attr = f' type="{kind}"' if kind else ""
    head = (f'<{direction} xmlns="{ns.CARBONS}"><forwarded xmlns="{ns.FORWARD}">').encode()
    tail = f"</forwarded></{direction}></message>".encode()
    quoted_bare = _quote(bare)
    for record in targets:
        to = f"{record[0]}/{record[1]}"
        data = (f'<message from="{quoted_bare}" to="{_quote(to)}"{type_attr}>'.encode()
                + head + inner + tail)
        otp.send(record[2], ("route", Packet(bare, to, "message", kind, "", data)))
    sink = _sinks.get(host)
    if sink is not None:
        sink[1].emit({f"{direction}_count": len(targets)})


def _quote(value: str) -> str:
    return escape(value, {'"': "&quot;"})
