"""mod_last: XEP-0012 Last Activity.

Three questions, told apart by the address (XEP-0012 §§3-5):

* **To the server** (``to='localhost'``): how long it has been up, in seconds. "Up" is
  this worker process's serving time (every worker of a node starts with it).
* **To a user's bare JID**: how long ago the user was last seen, and the status text of
  its last unavailable presence: ``<query xmlns='jabber:iq:last' seconds='903'>Heading
  Home</query>``. A user with an available resource answers ``seconds='0'``. A user
  with no record yet (never logged out since the module runs) gets ``item-not-found``;
  an unknown account ``service-unavailable`` (RFC 6121 §8.5.1, as for any iq to it).
* To a full JID: not ours, the client answers (idle time); the router delivers it.

Who may ask (XEP-0012 §3, security considerations): only entities allowed to see the
user's presence. Rosters belong to mod_roster, so the rule here is: the user themself
always; when mod_roster is configured, a contact whose subscription to the user's
presence is ``from`` or ``both`` in the user's roster (read from mod_roster's storage);
anyone else gets ``forbidden``. Without mod_roster only the user may ask. Privacy lists
and blocking (XEP-0016/0191) do not restrict it yet.

Recording: the time and status are written when one of the user's sessions sends
unavailable presence (``unset_presence``) and again when a session ends
(``sm_remove_connection``, with the status the session last sent), or when it is lost
with its worker or node (``sm_sessions_lost``, at the moment the loss is noticed), so the
record reflects the last logout of the user's last session. The writes of one user go to the
database in the order they happened (:class:`mongoose.modules.offloop.Serializer`): a
logout recorded later never ends up older than one recorded before it.

Storage: :class:`mongoose.storage.backends.last.LastStore`; the record goes with the
account (``remove_user`` hook).
"""

from __future__ import annotations

import functools
import time
from typing import Any

from lxml import etree

from mongoose import iq, sm
from mongoose.hooks import hooks
from mongoose.modules import offloop
from mongoose.modules.events import HostCounters
from mongoose.xmpp import ns

XEPS = ("0012",)
FEATURES = (ns.LAST,)

_store: Any = None
_roster: Any = None  # mod_roster's storage, when mod_roster is configured
_accounts: Any = None
_serializer = offloop.Serializer("mod_last")
_started = time.monotonic()
# Status text of each session's last unavailable presence (full JID -> text), kept
# until the session ends.
_status: dict[str, str] = {}


def _query(seconds: int, text: str = "") -> etree._Element:
    query = etree.Element(f"{{{ns.LAST}}}query", nsmap={None: ns.LAST}, seconds=str(seconds))
    if text:
        query.text = text
    return query


def _server_uptime(stanza: Any, from_jid: str, to_jid: str) -> Any:
    if stanza.get("type") != "get":
        return offloop.error_reply(stanza, "not-allowed")
    return iq.result(stanza, _query(int(time.monotonic() - _started)))


# Instrumentation: one count per query about a user (mongoose.modules.events).
EVENTS = HostCounters("mod_last_get")


def _user_last(stanza: Any, from_jid: str, to_jid: str) -> Any:
    if stanza.get("type") != "get":
        return offloop.error_reply(stanza, "not-allowed")
    bare = to_jid.partition("/")[0]
    requester = from_jid.partition("/")[0]
    user, _, host = bare.rpartition("@")
    if requester != bare and _roster is None:
        return offloop.error_reply(stanza, "forbidden")
    EVENTS.count("mod_last_get", host)
    online = any(record[3] is not None for record in sm.sessions(bare))
    offloop.answer_iq(_serializer, bare, stanza, from_jid, to_jid, _answer,
                      stanza, user, host, requester, bare, online)
    return None


def _answer(stanza: Any, user: str, host: str, requester: str, bare: str,
            online: bool) -> Any:
    """The answer to a last activity query about ``user`` (runs on the pool)."""
    if requester != bare:
        item = _roster.get_item(user, host, requester)
        if item is None or item.subscription not in ("from", "both"):
            if not _accounts.exists(user, host):
                return offloop.error_reply(stanza, "service-unavailable")
            return offloop.error_reply(stanza, "forbidden")
    if online:
        return iq.result(stanza, _query(0))
    last = _store.get(user, host)
    if last is None:
        if not _accounts.exists(user, host):
            return offloop.error_reply(stanza, "service-unavailable")
        return offloop.error_reply(stanza, "item-not-found", "no last activity recorded")
    return iq.result(stanza, _query(max(0, int(time.time()) - last.seconds), last.status))


def _record(jid: str, status: str) -> None:
    bare = jid.partition("/")[0]
    user, _, host = bare.rpartition("@")
    _serializer.submit(bare, _store.set, user, host, int(time.time()), status)


def _unset_presence(acc: Any, params: dict[str, Any]) -> Any:
    jid = params["jid"]
    status = params.get("status") or ""
    _status[jid] = status
    _record(jid, status)
    return acc


def _session_closed(acc: Any, params: dict[str, Any]) -> Any:
    jid = params["jid"]
    _record(jid, _status.pop(jid, ""))
    return acc


def _sessions_lost(acc: Any, params: dict[str, Any]) -> Any:
    """Sessions that died with their worker or node: their logout is now (this runs in
    one designated process, see mongoose.sm)."""
    for record in params["records"]:
        jid = f"{record[0]}/{record[1]}"
        _record(jid, _status.pop(jid, ""))
    return acc


def _remove_user(acc: list[Any], params: dict[str, Any]) -> list[Any]:
    return [*acc, functools.partial(_store.remove_user, params["user"], params["server"])]


def start(config: Any, module_config: Any) -> None:
    global _store, _roster, _accounts
    from mongoose.server import current
    from mongoose.storage.backends.last import LastStore
    from otp import scheduler

    server = current()
    call_soon = scheduler.current().call_soon
    _store = LastStore(server.db)
    _store.emit_via = call_soon
    _accounts = server.store
    EVENTS.start(config.general.hosts)
    _roster = None
    if config.modules.mod_roster is not None:
        from mongoose.storage.backends.roster import RosterStore

        _roster = RosterStore(server.db)
        _roster.emit_via = call_soon
    iq.register("server", ns.LAST, _server_uptime)
    iq.register("account", ns.LAST, _user_last)
    hooks.add("unset_presence", _unset_presence, module="mod_last")
    hooks.add("sm_remove_connection", _session_closed, module="mod_last")
    hooks.add("sm_sessions_lost", _sessions_lost, module="mod_last")
    hooks.add("remove_user", _remove_user, module="mod_last")


def stop() -> None:
    iq.unregister("server", ns.LAST)
    iq.unregister("account", ns.LAST)
    hooks.remove_module("mod_last")
    _status.clear()
