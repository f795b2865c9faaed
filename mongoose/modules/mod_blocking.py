"""mod_blocking: XEP-0191 Blocking Command (``urn:xmpp:blocking``), on mod_privacy's lists.

The block list is the privacy list ``"blocking"`` (:mod:`mongoose.storage.backends.
privacy`), whose items block a JID for every kind of stanza both ways; a block makes it
the user's default list, as MongooseIM does. Filtering, the per-session cache, pushes
across the cluster and the presence sent on block and unblock are the privacy engine's
(:mod:`mongoose.modules.mod_privacy`, started by this module too), so that the two
protocols always agree:

* iq get ``<blocklist/>``: the blocked JIDs; the session is marked as one that asked, and
  from then on gets the pushes.
* iq set ``<block/>`` (at least one ``<item jid/>``: ``bad-request`` otherwise,
  ``jid-malformed`` for an invalid JID), ``<unblock/>`` with items or none (every JID):
  written in one transaction, the writing session's list re-read before the result, then
  a push with the items (an empty ``<unblock/>`` after unblocking all) to every session of
  the user that asked for the list, wherever it lives.
* A blocked contact's message gets ``service-unavailable``, its iq get/set too, the rest
  from it is dropped; stanzas to it get ``not-acceptable`` with ``<blocked
  xmlns='urn:xmpp:blocking:errors'/>``; a contact that had our presence gets unavailable
  presence when blocked and our presence again when unblocked (mod_privacy's docstring).

An active privacy list (XEP-0016), where a session set one, replaces the default list for
that session, block list included (XEP-0191 §5).

Instrumentation: ``mod_blocking_get`` {host_type} (count) and ``mod_blocking_set``
{host_type} (block_count, unblock_count), spirals.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from mongoose import instrument, iq
from mongoose.modules import mod_privacy
from mongoose.xmpp import errors, ns
from mongoose.xmpp.jid import JID, InvalidJID

__all__ = ["FEATURES", "XEPS", "start", "stop"]

XEPS = ("0191",)
FEATURES = (ns.BLOCKING,)

_B = f"{{{ns.BLOCKING}}}"

_sinks: dict[str, tuple[Any, Any]] = {}  # host -> (get, set)


def register_events() -> None:
    instrument.register("mod_blocking_get", ("host_type",), {"count": "spiral"})
    instrument.register("mod_blocking_set", ("host_type",),
                        {"block_count": "spiral", "unblock_count": "spiral"})


def start(config: Any, module_config: Any) -> None:
    register_events()
    for host in config.general.hosts:
        labels = {"host_type": host}
        _sinks[host] = (instrument.prepared("mod_blocking_get", labels),
                        instrument.prepared("mod_blocking_set", labels))
    mod_privacy.engine_start(config)
    iq.register("account", ns.BLOCKING, _iq)


def stop() -> None:
    iq.unregister("account", ns.BLOCKING)
    mod_privacy.engine_stop()


def _iq(stanza: etree._Element, from_jid: str, to_jid: str) -> etree._Element | None:
    state = mod_privacy.own_session(stanza, from_jid, to_jid)
    if not isinstance(state, mod_privacy.Session):
        return state
    command = stanza[0]
    user, host = state.user, state.host
    store = mod_privacy.store()
    get_sink, set_sink = _sinks[host]
    kind = stanza.get("type")
    if kind == "get" and command.tag == _B + "blocklist":
        get_sink.emit({"count": 1})
        state.blocklist_requested = True
        mod_privacy.run(state, stanza, from_jid, to_jid,
                        lambda: store.get_blocklist(user, host),
                        lambda jids: iq.result(stanza, _command("blocklist", jids)))
        return None
    if kind != "set" or command.tag not in (_B + "block", _B + "unblock"):
        return errors.make_error_reply(stanza, "bad-request")
    try:
        jids = [str(JID.parse(item.get("jid", ""))) for item in command.iter(_B + "item")]
    except InvalidJID as error:
        return errors.make_error_reply(stanza, "jid-malformed", str(error))
    if command.tag == _B + "block":
        if not jids:
            return errors.make_error_reply(stanza, "bad-request", "nothing to block")
        set_sink.emit({"block_count": 1})
        mod_privacy.run(state, stanza, from_jid, to_jid,
                        lambda: store.block(user, host, jids),
                        lambda _: mod_privacy.changed(state, stanza, from_jid, to_jid, [
                            ("blocklist", _payload("block", jids))]))
        return None
    set_sink.emit({"unblock_count": 1})
    mod_privacy.run(state, stanza, from_jid, to_jid,
                    lambda: store.unblock(user, host, jids or None),
                    lambda removed: mod_privacy.changed(state, stanza, from_jid, to_jid,
                                                        _unblock_pushes(jids, removed)))
    return None


def _unblock_pushes(asked: list[str], removed: list[str]) -> list[tuple[str, bytes]]:
    """The push after an unblock: the JIDs it removed, or none for "all"; nothing when
    it removed nothing (an empty <unblock/> would mean "all")."""
    if asked and not removed:
        return []
    return [("blocklist", _payload("unblock", removed if asked else []))]


def _command(name: str, jids: list[str]) -> etree._Element:
    el = etree.Element(_B + name, nsmap={None: ns.BLOCKING})
    for jid in jids:
        etree.SubElement(el, _B + "item", jid=jid)
    return el


def _payload(name: str, jids: list[str]) -> bytes:
    return etree.tostring(_command(name, jids))
