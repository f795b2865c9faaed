"""mod_offline: XEP-0160 offline messages, delivered with XEP-0203 delay stamps.

What is kept
    The router runs the ``offline_message`` hook for a message to a user with no
    available resource of non-negative priority (:mod:`mongoose.router`). By type
    (XEP-0160 §3, RFC 6121 §8.5.2):

    * ``normal`` and ``chat`` with content are stored. Content is any child but a
      ``<thread/>``, XEP-0085 chat states and XEP-0334 hints: a message that carries
      only a chat state (or nothing) is dropped silently (XEP-0160: SHOULD NOT be
      stored; an error for a typing notification would only be noise).
    * ``headline``, ``groupchat`` and ``error`` are not stored: the router's default
      applies (they are dropped).
    * XEP-0334 hints: ``<no-store/>`` is never stored (a normal or chat message then
      gets the router's ``service-unavailable``); ``<store/>`` is stored whatever its
      type, except ``error``.

    Storing answers the router at once ("stored"); the write happens off the loop. The
    sender learns afterwards when it failed: ``service-unavailable`` when the recipient
    has no account (as without this module), ``resource-constraint`` when the user has
    ``max_user_offline_messages`` already (what MongooseIM answers; XEP-0160 suggests
    ``service-unavailable``), ``internal-server-error`` (type wait) when the database
    cannot be reached.

Delivery
    When a session sends its initial available presence with a non-negative priority
    (``user_available``), the user's messages are taken out of storage atomically
    (:meth:`~mongoose.storage.backends.offline.OfflineStore.pop_all`: two sessions
    logging in at once never both get one) and sent to that session, oldest first, each
    with ``<delay xmlns='urn:xmpp:delay' from='HOST' stamp='...'>Offline
    Storage</delay>`` (the time the server accepted it). A session that comes online
    with a negative priority gets none (XEP-0160 §2) until it raises its priority to zero
    or more (``user_presence_update``).

Not losing messages
    Messages are removed from storage before they are handed over, so the hand-over is
    checked: after sending them, the queue asks the session for its state, behind them
    in its mailbox. An answer means the session has dealt with every one of them:
    written to its socket, or, if its stream had closed meanwhile, routed again (a
    closed session reroutes the messages it can no longer deliver, see
    :mod:`mongoose.c2s`), which brings them back here. No answer (the session died
    with them unread in its mailbox) puts them all back into storage, with their
    original stamps, to come at the next login: at least once, never lost, possibly
    twice if the session wrote some before it died. A session already gone when the
    messages come out of storage gets them put back the same way.

    A message stored just as the user logs in (the write still in flight when the
    session took the messages out) is not left waiting for the next login: after each
    write, if the user now has an available session, the user's messages are taken out
    again and routed to the bare JID.

The queue
    One :class:`OfflineQueue` actor per worker (registered ``mod_offline``) runs the
    storage work of the users whose messages pass through this worker: per user one
    operation at a time, in arrival order (writes, deliveries), so a delivery never
    overtakes a write queued before it. Messages that arrive for a user while a write
    is in flight are stored together in the next write (one transaction per batch). The
    database calls run on the blocking pool; the answers come back to the actor as
    messages, so it never blocks. If the actor is gone (a bug crashed it), the next
    message starts a new one (``what=mod_offline_queue_restarted``).

Instrumentation (per host, ``host_type`` label; ``count``, spiral; logged at info)
    ``mod_offline_stored``: messages written; ``mod_offline_delivered``: messages handed
    to a session (or rerouted to an available one); ``mod_offline_dropped`` {reason}:
    ``limit``, ``unknown_user``, ``storage_error`` (each bounced to the sender) and
    ``not_storable`` (dropped silently). The database calls are counted and timed by
    ``storage_query`` {backend="offline"}.

The user's stored messages go with the account (``remove_user`` hook).
"""

from __future__ import annotations

import collections
import datetime
import functools
import logging
from typing import Any

from lxml import etree

import otp
from mongoose import instrument, router, sm
from mongoose import packet as packet_mod
from mongoose.hooks import Stop, hooks
from mongoose.packet import Packet
from mongoose.storage.backends.offline import OfflineMessage, now_us
from mongoose.xmpp import ns
from otp import blocking

XEPS = ("0160", "0203")
FEATURES = ("msgoffline",)
NAME = "mod_offline"
HINTS = "urn:xmpp:hints"
DROP_REASONS = ("limit", "unknown_user", "storage_error", "not_storable")

log = logging.getLogger(__name__)

_ref: otp.ActorRef | None = None
_args: tuple[Any, ...] = ()
_sinks: dict[str, dict[str, Any]] = {}
_THREAD = f"{{{ns.CLIENT}}}thread"


# -- what is stored --------------------------------------------------------------------------


def classify(el: etree._Element) -> str:
    """What to do with a message for an offline user: "store", "drop" (silently) or
    "bounce" (the router's default for its type); see the module docstring."""
    kind = el.get("type") or "normal"
    if kind == "error":
        return "bounce"
    hints = set()
    content = False
    for child in el:
        if not isinstance(child.tag, str):
            continue
        namespace = etree.QName(child).namespace
        if namespace == HINTS:
            hints.add(etree.QName(child).localname)
        elif namespace != ns.CHAT_STATES and child.tag != _THREAD:
            content = True
    if "no-store" in hints:
        return "bounce"
    if "store" in hints:
        return "store"
    if kind not in ("normal", "chat"):
        return "bounce"
    return "store" if content else "drop"


def _offline_message(acc: Any, params: dict[str, Any]) -> Any:
    packet = params["packet"]
    if acc != "bounce" or packet[2] != "message":
        return acc
    verdict = classify(packet_mod.element(packet))
    if verdict == "bounce":
        return acc
    bare = packet[1].partition("/")[0]
    host = bare.rpartition("@")[2]
    if verdict == "drop":
        _host_sinks(host)["not_storable"].emit({"count": 1})
        return Stop("dropped")
    _queue().tell(("store", bare, packet, now_us()))
    return Stop("stored")


def _user_available(acc: Any, params: dict[str, Any]) -> Any:
    jid = params["jid"]
    _queue().tell(("deliver", jid.partition("/")[0], params["c2s"].pid))
    return acc


def _presence_update(acc: Any, params: dict[str, Any]) -> Any:
    """A session that was available with a negative priority raises it to zero or more:
    it takes the stored messages now (XEP-0160 §2: they wait for such a resource)."""
    previous = params.get("previous")
    if (params["available"] and not params["initial"] and previous is not None
            and previous < 0 <= params.get("priority", 0)):
        c2s = params["c2s"]
        _queue().tell(("deliver", c2s.bare_str, c2s.pid))
    return acc


def _remove_user(acc: list[Any], params: dict[str, Any]) -> list[Any]:
    store = _args[0]
    return [*acc, functools.partial(store.remove_user, params["user"], params["server"])]


# -- the queue -------------------------------------------------------------------------------


class OfflineQueue(otp.LoopActor):
    """The storage work of offline messages in this worker (see the module docstring)."""

    def __init__(self, store: Any, accounts: Any, limit: int) -> None:
        super().__init__()
        self.store = store
        self.accounts = accounts
        self.limit = limit
        # bare JID -> operations waiting behind the running one; present while busy.
        self.users: dict[str, collections.deque[list[Any]]] = {}

    def on_start(self) -> None:
        otp.register(NAME, self.pid)

    def on_stop(self) -> None:
        # Writes not started yet go to the pool unwatched: nobody is left to bounce a
        # refusal, but what can be stored is.
        for bare, waiting in self.users.items():
            for op in waiting:
                if op[0] == "store":
                    user, _, host = bare.rpartition("@")
                    blocking.run(_write, self.store, self.accounts, user, host,
                                 [m for _, m in op[1]], self.limit)
        self.users.clear()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, otp.Reply):
            self._answer(message)
            return None
        kind = message[0] if isinstance(message, tuple) else message
        if kind == "store":
            _, bare, packet, stamp = message
            stored = _offline(packet, stamp)
            self._add(bare, ["store", [(packet, stored)]])
            return None
        if kind == "deliver":
            self._add(message[1], ["deliver", message[2]])
            return None
        if kind == "statistics":
            return {"busy_users": len(self.users),
                    "waiting": sum(len(w) for w in self.users.values())}
        return super().on_receive(message)

    # -- per-user operations ---------------------------------------------------------------

    def _add(self, bare: str, op: list[Any]) -> None:
        waiting = self.users.get(bare)
        if waiting is None:
            self.users[bare] = collections.deque()
            self._start_op(bare, op)
        elif op[0] == "store" and waiting and waiting[-1][0] == "store":
            waiting[-1][1].extend(op[1])  # joins the next write
        else:
            waiting.append(op)

    def _next(self, bare: str) -> None:
        waiting = self.users.get(bare)
        if waiting:
            self._start_op(bare, waiting.popleft())
        else:
            self.users.pop(bare, None)

    def _start_op(self, bare: str, op: list[Any]) -> None:
        user, _, host = bare.rpartition("@")
        kind = op[0]
        if kind == "store":
            items = op[1]
            blocking.cast(_write, self.store, self.accounts, user, host,
                          [m for _, m in items], self.limit,
                          reply_to=self.pid, tag=("stored", bare, items))
        elif kind == "deliver":
            pid = op[1]
            if not any(r[2] == pid and r[3] is not None and r[3] >= 0
                       for r in sm.sessions(bare)):
                self._next(bare)  # gone, or negative priority: nothing for it now
                return
            blocking.cast(self.store.pop_all, user, host, reply_to=self.pid,
                          tag=("popped", bare, pid))
        elif kind == "flush":
            blocking.cast(self.store.pop_all, user, host, reply_to=self.pid,
                          tag=("flushed", bare))

    def _answer(self, reply: otp.Reply) -> None:
        tag = reply.tag
        kind, bare = tag[0], tag[1]
        try:
            if kind == "stored":
                self._stored(bare, tag[2], reply.value, reply.error)
            elif kind == "popped":
                if self._popped(bare, tag[2], reply.value, reply.error):
                    return  # waiting for the session's answer
            elif kind == "confirmed":
                self._confirmed(bare, tag[2], reply.error)
                if reply.error is not None:
                    return  # waiting for the messages to be put back
            elif kind == "flushed":
                self._flushed(bare, reply.value, reply.error)
            elif kind == "restored" and reply.error is not None:
                log.error("offline messages lost: they could not be put back", extra={
                    "what": "mod_offline_lost", "jid": bare, "messages": tag[2],
                    "reason": repr(reply.error)})
        except Exception:
            log.exception("mod_offline failed", extra={"what": "mod_offline_failed",
                                                       "jid": bare})
        self._next(bare)

    def _stored(self, bare: str, items: list[Any], value: Any, error: Any) -> None:
        host = bare.rpartition("@")[2]
        sinks = _host_sinks(host)
        if error is not None:
            log.warning("offline messages not stored", extra={
                "what": "mod_offline_store_failed", "jid": bare, "messages": len(items),
                "reason": repr(error)})
            sinks["storage_error"].emit({"count": len(items)})
            for packet, _ in items:
                _bounce(packet, "internal-server-error", "the message could not be stored",
                        "wait")
            return
        known, stored = value
        if not known:
            sinks["unknown_user"].emit({"count": len(items)})
            for packet, _ in items:
                _bounce(packet, "service-unavailable")
            return
        if stored:
            sinks["stored"].emit({"count": stored})
        if stored < len(items):
            sinks["limit"].emit({"count": len(items) - stored})
            for packet, _ in items[stored:]:
                _bounce(packet, "resource-constraint",
                        "the recipient's offline message queue is full")
        if stored and any(r[3] is not None and r[3] >= 0 for r in sm.sessions(bare)):
            # The user came online while we wrote: hand them over now.
            self.users[bare].appendleft(["flush"])

    def _popped(self, bare: str, pid: otp.Pid, messages: Any, error: Any) -> bool:
        """Hand the messages taken out of storage to session ``pid``; True while the
        hand-over waits for the session's answer."""
        if error is not None:
            log.warning("offline messages not read", extra={
                "what": "mod_offline_pop_failed", "jid": bare, "reason": repr(error)})
            return False
        if not messages:
            return False
        if not otp.is_alive(pid):
            self._put_back(bare, messages)
            return True
        host = bare.rpartition("@")[2]
        for message in messages:
            otp.send(pid, ("route", _with_delay(message, host, bare)))
        self.request(pid, ("info",), ("confirmed", bare, messages))
        return True

    def _confirmed(self, bare: str, messages: list[Any], error: Any) -> None:
        if error is None:
            _host_sinks(bare.rpartition("@")[2])["delivered"].emit({"count": len(messages)})
            return
        log.info("a session ended before taking its offline messages", extra={
            "what": "mod_offline_handover_failed", "jid": bare, "messages": len(messages)})
        self._put_back(bare, messages)

    def _put_back(self, bare: str, messages: list[Any]) -> None:
        user, _, host = bare.rpartition("@")
        kept = [OfflineMessage(m.timestamp, m.from_jid, m.packet, m.expire) for m in messages]
        blocking.cast(self.store.store, user, host, kept, reply_to=self.pid,
                      tag=("restored", bare, len(kept)))

    def _flushed(self, bare: str, messages: Any, error: Any) -> None:
        if error is not None or not messages:
            return
        host = bare.rpartition("@")[2]
        for message in messages:
            router.route(_with_delay(message, host, bare))
        _host_sinks(host)["delivered"].emit({"count": len(messages)})


def _write(store: Any, accounts: Any, user: str, host: str, messages: list[Any],
           limit: int) -> tuple[bool, int]:
    """Store as many of ``messages`` as the limit allows, in order (runs on the pool).
    Returns (the account exists, how many were stored)."""
    if not accounts.exists(user, host):
        return False, 0
    if store.store(user, host, messages, limit=limit):
        return True, len(messages)
    room = limit - store.count(user, host, at_most=limit)
    if room > 0 and store.store(user, host, messages[:room], limit=limit):
        return True, room
    return True, 0


# -- stanzas ---------------------------------------------------------------------------------


def _offline(packet: Packet, stamp: int) -> OfflineMessage:
    return OfflineMessage(stamp, packet[0], packet[5])


def _stamp(us: int) -> str:
    moment = datetime.datetime.fromtimestamp(us / 1_000_000, datetime.UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def _with_delay(message: Any, host: str, bare: str) -> Packet:
    """The stored message as a packet again, with our delay stamp (unless it has one
    from us already: a message that was delivered, rerouted and stored again)."""
    el = packet_mod.element(("", "", "", "", "", message.packet))
    delay_tag = f"{{{ns.DELAY}}}delay"
    if not any(d.get("from") == host for d in el.iter(delay_tag)):
        delay = etree.SubElement(el, delay_tag, nsmap={None: ns.DELAY})
        delay.set("from", host)
        delay.set("stamp", _stamp(message.timestamp))
        delay.text = "Offline Storage"
    return packet_mod.from_element(el, el.get("from") or message.from_jid,
                                   el.get("to") or bare)


def _bounce(packet: Packet, condition: str, text: str | None = None,
            type: str | None = None) -> None:
    from mongoose.xmpp.errors import is_error, make_error_reply

    el = packet_mod.element(packet)
    if is_error(el):
        return
    reply = make_error_reply(el, condition, text, type)
    router.route(packet_mod.from_element(reply, packet[1], packet[0]))


# -- module ----------------------------------------------------------------------------------


def _host_sinks(host: str) -> dict[str, Any]:
    sinks = _sinks.get(host)
    if sinks is None:
        labels = {"host_type": host}
        sinks = {"stored": instrument.prepared("mod_offline_stored", labels),
                 "delivered": instrument.prepared("mod_offline_delivered", labels)}
        for reason in DROP_REASONS:
            sinks[reason] = instrument.prepared("mod_offline_dropped",
                                                {"host_type": host, "reason": reason})
        _sinks[host] = sinks
    return sinks


def _queue() -> otp.ActorRef:
    global _ref
    ref = _ref
    if ref is None or not ref.is_alive():
        if ref is not None:
            log.error("the offline queue died; starting a new one", extra={
                "what": "mod_offline_queue_restarted", "reason": repr(ref.exit_reason)})
        ref = _ref = OfflineQueue.start(*_args)
    return ref


def start(config: Any, module_config: Any) -> None:
    global _args, _ref
    from mongoose.server import current
    from mongoose.storage.backends.offline import OfflineStore
    from otp import scheduler

    server = current()
    store = OfflineStore(server.db)
    store.emit_via = scheduler.current().call_soon
    _args = (store, server.store, module_config.max_user_offline_messages)
    counted = {"count": "spiral"}
    instrument.register("mod_offline_stored", ("host_type",), counted, log_level="info")
    instrument.register("mod_offline_delivered", ("host_type",), counted, log_level="info")
    instrument.register("mod_offline_dropped", ("host_type", "reason"), counted,
                        log_level="info")
    _sinks.clear()
    for host in config.general.hosts:
        _host_sinks(host)
    _ref = OfflineQueue.start(*_args)
    hooks.add("offline_message", _offline_message, module=NAME)
    hooks.add("user_available", _user_available, module=NAME)
    hooks.add("user_presence_update", _presence_update, module=NAME)
    hooks.add("remove_user", _remove_user, module=NAME)


def stop() -> None:
    global _ref
    hooks.remove_module(NAME)
    ref, _ref = _ref, None
    if ref is not None and ref.is_alive():
        # Free the name now: a restarted module's queue registers it before this one
        # has handled its stop.
        if otp.whereis(NAME) == ref.pid:
            otp.unregister(NAME)
        ref.stop(block=False)
