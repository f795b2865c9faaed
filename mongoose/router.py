"""Routing: sharded router actors that deliver packets by the rules of RFC 6120/6121.

Each worker runs ``shards`` router actors (registered ``router_0`` ...). A session hands a
packet to :func:`route`, which tells the shard ``hash(bare destination) % shards`` of the
same worker: packets to one destination from one worker keep their order, and a busy
destination holds up only its shard.

Delivery rules (:meth:`RouterShard.deliver`), for a destination on one of our hosts:

* **The server itself** (no local part): iq goes to the handler registered for the
  namespace of its payload (:mod:`mongoose.iq`), others to ``feature-not-implemented`` /
  ``service-unavailable``; messages and presence to the server are dropped.
* **A full JID** with a matching session: delivered to it. Without one (RFC 6121
  §8.5.3.2): a ``chat`` message is handled as if sent to the bare JID; a ``normal``
  or ``groupchat`` message and an iq get ``service-unavailable``; a ``headline`` or
  ``error`` message and presence are dropped.
* **A bare JID** (§8.5.2): a ``normal`` or ``chat`` message goes to the sessions with
  the highest non-negative priority (all of them if several share it; ``headline`` to
  all non-negative ones), and when there is none to the ``offline_message`` hook, whose
  default is to bounce ``service-unavailable`` for normal and chat messages and drop
  the rest; a ``groupchat`` message is never delivered to a bare JID but bounced
  (``service-unavailable``), an ``error`` message is dropped; presence goes to every
  session that sent available presence (as the session itself knows it); an iq is
  answered by the server on the account's behalf (``service-unavailable`` until modules
  such as vCard register there).
* **Presence subscriptions and probes** (§3, §4.3, §8.5.2.1.2): the resource of a full
  JID does not matter. A subscription stanza (``subscribe``, ``subscribed``,
  ``unsubscribe``, ``unsubscribed``) goes to the ``inbound_subscription`` hook, where
  mod_presence updates the user's roster and decides what to deliver (a subscription
  request for a user with no available resource waits in the roster until the next
  initial presence); without that module it goes to the available sessions. A probe
  goes to the available sessions, which answer it themselves if the prober is a
  subscriber (:meth:`mongoose.c2s.C2S._answer_probe`) and never show it to the client;
  with no available session it gets no answer (§4.3.2 allows that).

Blocking work in order: a handler of ``inbound_subscription`` returns a *job* (a
function to run on the blocking pool, :mod:`otp.blocking`) whose result is a function
the shard then runs (the delivery). Until it is done, later packets to the same bare JID
wait in the shard, in order, so a subscription and the presence that follows it arrive
in the order they were sent; other destinations are not held up.

A destination on another domain gets ``remote-server-not-found`` (no server-to-server yet).
An error is never answered with an error (RFC 6120 §8.3.1).

The ``filter_local_packet`` hook runs before local delivery; ``Stop`` drops the packet.

Instrumentation (:mod:`mongoose.c2s_events`): ``router_no_route_found`` for a destination
on another domain (labelled with the sender's host), ``router_stanza_dropped`` for a
stanza to one of our hosts that goes nowhere and gets no answer (the filter's ``Stop``,
and the rules above that say "dropped": messages and presence to the server, presence to
an unavailable resource, a message for an offline user that the ``offline_message`` hook
neither bounces nor takes), ``sm_message_bounced`` for a message bounced for want of a
session. All are off the per-message path of a delivered stanza.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import otp
from mongoose import c2s_events, sm
from mongoose import iq as iq_handlers
from mongoose import packet as packet_mod
from mongoose.hooks import hooks
from mongoose.packet import Packet
from otp import blocking

__all__ = ["SUBSCRIPTION_TYPES", "RouterShard", "bounce", "message_recipients",
           "presence_to_available", "route", "shard_name"]

log = logging.getLogger(__name__)

SUBSCRIPTION_TYPES = frozenset(("subscribe", "subscribed", "unsubscribe", "unsubscribed"))

_shards: list[Any] = []  # ActorRefs of this worker's shards, index = shard number
_hosts: frozenset[str] = frozenset()


def shard_name(n: int) -> str:
    return f"router_{n}"


def route(packet: Packet) -> None:
    """Hand ``packet`` to this worker's shard for its destination (never blocks)."""
    to = packet[1]
    bare = to.partition("/")[0]
    _shards[hash(bare) % len(_shards)].tell(("route", packet))


def configure(hosts: tuple[str, ...] | frozenset[str]) -> None:
    global _hosts
    _hosts = frozenset(hosts)


def is_local(domain: str) -> bool:
    return domain in _hosts


def _parts(jid: str) -> tuple[str, str, str]:
    """(local, domain, resource) of a JID string already validated by its sender."""
    bare, _, resource = jid.partition("/")
    local, at, domain = bare.rpartition("@")
    if not at:
        return "", bare, resource
    return local, domain, resource


class RouterShard(otp.LoopActor):
    """One router shard of this worker; see the module docstring."""

    pykka_registry = False

    def __init__(self, n: int, shards: int) -> None:
        super().__init__()
        self.n = n
        self.shards = shards
        self.routed = 0
        # bare JID -> packets waiting behind a blocking job for it (module docstring)
        self.held: dict[str, collections.deque[Packet]] = {}

    def on_start(self) -> None:
        otp.register(shard_name(self.n), self.pid)
        while len(_shards) < self.shards:
            _shards.append(None)
        _shards[self.n] = self.actor_ref

    def on_stop(self) -> None:
        if self.n < len(_shards) and _shards[self.n] is self.actor_ref:
            _shards[self.n] = None

    def on_receive(self, message: Any) -> Any:
        if type(message) is tuple and message[0] == "route":
            self.routed += 1
            packet = message[1]
            if self.held:
                waiting = self.held.get(packet[1].partition("/")[0])
                if waiting is not None:
                    waiting.append(packet)
                    return None
            job = deliver(packet)
            if job is not None:
                self._hold(packet[1].partition("/")[0], job, collections.deque())
            return None
        if message.__class__ is otp.Reply and type(message.tag) is tuple and (
                message.tag[0] == "held"):
            self._resume(message.tag[1], message)
            return None
        if message == "statistics":
            return {"routed": self.routed, "held": sum(len(q) + 1 for q in self.held.values())}
        return super().on_receive(message)

    def _hold(self, bare: str, job: Any, waiting: collections.deque[Packet]) -> None:
        self.held[bare] = waiting
        blocking.cast(job, reply_to=self.pid, tag=("held", bare))

    def _resume(self, bare: str, reply: otp.Reply) -> None:
        """The job for ``bare`` is done: run what it returned, then the packets that
        waited, until one starts another job."""
        if reply.error is not None:
            log.error("a routing job failed", exc_info=reply.error, extra={
                "what": "router_job_failed", "to": bare})
        elif reply.value is not None:
            try:
                reply.value()
            except Exception:
                log.exception("a routing job's delivery failed", extra={
                    "what": "router_job_failed", "to": bare})
        waiting = self.held.pop(bare, None)
        while waiting:
            packet = waiting.popleft()
            job = deliver(packet)
            if job is not None:
                self._hold(bare, job, waiting)
                return


def deliver(packet: Packet) -> Any:
    """Apply the delivery rules to ``packet`` (runs in a router shard); a blocking job
    to run before the next packet to the same bare JID, if a hook returned one."""
    local, domain, resource = _parts(packet[1])
    if domain not in _hosts:
        sender = _parts(packet[0])[1]
        if sender in _hosts:
            c2s_events.host(sender).no_route_found.emit(c2s_events.ONE)
        bounce(packet, "remote-server-not-found")
        return
    if hooks.has("filter_local_packet", domain):
        result = hooks.run("filter_local_packet", packet, domain)
        if result is None:
            _dropped(domain)
            return
        packet = result
    name = packet[2]
    if not local:
        _to_server(packet, domain)
        return None
    kind = packet[3]
    bare = f"{local}@{domain}"
    if name == "presence" and (kind in SUBSCRIPTION_TYPES or kind == "probe"):
        if kind != "probe" and hooks.has("inbound_subscription", domain):
            job = hooks.run("inbound_subscription", None, domain, packet=packet)
            if job is not None:
                return job
        presence_to_available(packet, sm.sessions(bare))
        return None
    sessions = sm.sessions(bare)
    if resource:
        for record in sessions:
            if record[1] == resource:
                otp.send(record[2], ("route", packet))
                return None
        if name == "message":
            if kind == "chat":
                _message_to_bare(packet, sessions, domain)
            elif kind in ("", "normal", "groupchat"):
                bounce(packet, "service-unavailable")
            else:  # headline, error: dropped (RFC 6121 §8.5.3.2.1)
                _dropped(domain)
        elif name == "iq":
            bounce(packet, "service-unavailable")
        else:  # presence to an unavailable resource: dropped (RFC 6121 §8.5.3.2.2)
            _dropped(domain)
        return None
    if name == "message":
        if kind == "groupchat":  # never to a bare JID (RFC 6121 §8.5.2.1.1, §8.5.2.2.1)
            bounce(packet, "service-unavailable")
        elif kind == "error":
            _dropped(domain)
        else:
            _message_to_bare(packet, sessions, domain)
    elif name == "presence":
        presence_to_available(packet, sessions)
    else:
        _iq_to_account(packet, domain)
    return None


def presence_to_available(packet: Packet, sessions: list[sm.SessionRecord]) -> None:
    """Presence for a bare JID: to every session that sent available presence.

    Each session decides that by its own state (:meth:`mongoose.c2s.C2S._deliver`), not
    by this replica's priority: the replica of a session that has just become available
    on another worker may still say it is not, and two contacts logging in at once on
    two workers would then miss each other's presence for good."""
    for record in sessions:
        otp.send(record[2], ("route", packet))


def message_recipients(sessions: list[sm.SessionRecord], kind: str) -> list[sm.SessionRecord]:
    """The sessions that get a message of type ``kind`` sent to the bare JID: those with
    the highest non-negative priority, every non-negative one for a ``headline`` (RFC
    6121 §8.5.2.1.1). Modules that must know who got the original (carbons) ask here."""
    available = [r for r in sessions if r[3] is not None and r[3] >= 0]
    if not available or kind == "headline":
        return available
    top = max(r[3] for r in available)  # type: ignore[type-var]
    return [r for r in available if r[3] == top]


def _message_to_bare(packet: Packet, sessions: list[sm.SessionRecord], domain: str) -> None:
    targets = message_recipients(sessions, packet[3])
    if targets:
        for record in targets:
            otp.send(record[2], ("route", packet))
        return
    outcome = hooks.run("offline_message", "bounce", domain, packet=packet)
    if outcome == "bounce":
        if packet[3] in ("", "normal", "chat"):
            c2s_events.host(domain).message_bounced.emit(c2s_events.ONE)
            bounce(packet, "service-unavailable")
        else:  # headline, groupchat, error: nobody to tell
            _dropped(domain)


def _dropped(domain: str) -> None:
    c2s_events.host(domain).stanza_dropped.emit(c2s_events.ONE)


def _to_server(packet: Packet, domain: str) -> None:
    if packet[2] != "iq":
        _dropped(domain)  # messages and presence to the server itself: nothing to do yet
        return
    if packet[3] not in ("get", "set"):
        return  # results and errors addressed to the server (answers to its pings)
    reply = iq_handlers.handle(packet, domain, scope="server")
    if reply is not None:
        route(reply)


def _iq_to_account(packet: Packet, domain: str) -> None:
    if packet[3] not in ("get", "set"):
        return
    reply = iq_handlers.handle(packet, domain, scope="account")
    if reply is not None:
        route(reply)


def bounce(packet: Packet, condition: str, text: str | None = None) -> None:
    """Send the error reply for ``packet`` back to its sender (never for an error)."""
    from mongoose.xmpp.errors import is_error, make_error_reply

    if packet[3] == "error":
        return
    el = packet_mod.element(packet)
    if is_error(el):
        return
    reply = make_error_reply(el, condition, text)
    route(packet_mod.from_element(reply, packet[1], packet[0]))
