"""One client connection: a session actor and the asyncio protocol under it.

After MongooseIM's ``mongoose_c2s``: a state machine per connection, here a
:class:`C2S` loop actor, one per TCP connection, started by :class:`C2SProtocol` under
the worker's ``c2s_sup`` (a ``simple_one_for_one`` supervisor of temporary children).

States (``C2S.state``)::

    wait_for_stream ──> wait_for_feature_before_auth ──STARTTLS──> wait_for_stream
                                 │ <auth>
                                 v
                         wait_for_sasl_response ──success──> wait_for_stream (restart)
                                                                   │
    wait_for_feature_after_auth <──────────────────────────────────┘
            │ <bind>
            v
    session_established

Every state before ``session_established`` has a deadline (``state_timeout`` of the
listener, per step): a client that connects and never speaks, or dribbles one byte a
second, gets ``connection-timeout``. Bad XML, DTDs, entities, oversized stanzas and the
like are refused by :mod:`mongoose.xmpp.xmlstream` with the RFC 6120 stream error named
there; the session then writes the error, closes the stream and stops (a stream error is
the end of a connection, not of anything else).

Flow control
    The protocol hands received bytes to the actor as messages and pauses reading when
    more than ``_READ_HIGH`` bytes wait unprocessed, so a client that floods cannot fill
    the worker's memory. A client that does not read what we send (write buffer above
    ``_WRITE_LIMIT``) is disconnected (``what=c2s_slow_consumer``) rather than buffered
    without end.

Crashes and shutdown
    A bug that crashes the actor ends its stream with ``internal-server-error``
    (:meth:`C2S.on_failure`); no other session is touched. The actor traps exits so that a
    supervisor's shutdown runs :meth:`C2S.on_stop`, which ends the stream with
    ``system-shutdown``: ``mongoose stop`` tells every client why it was disconnected.
    Either way -- and after an untrappable kill too (:meth:`C2S.release`) -- the
    session leaves the session table and its available presence is followed by
    unavailable presence to the user's other resources, to its subscribers
    (mod_presence, from the state it holds in memory: nothing to wait for) and to
    directed presence recipients. A session lost with its whole worker is told about by
    another process (:mod:`mongoose.sm`, "Sessions of a lost process").

Modules in the session
    A module keeps per-session state in ``mod_state[name]``, reacts through hooks
    (``user_send_packet``, ``user_presence_update``, ``presence_probe``...), gets its
    own messages to a session as ``("foreign", event)`` (hook ``foreign_event``), and
    may :meth:`C2S.defer` a coroutine -- a storage call on :mod:`otp.blocking` -- that
    the session awaits before it takes the next stanza or message, so order is kept
    without blocking the loop. Presence probes for the user are answered here
    (:meth:`C2S._answer_probe`), never written to the client.

Stanzas from the client (``session_established``) are checked (``from`` must be the
session's JID or absent, ``to`` a valid JID), stamped with the full JID, passed through
the ``user_send_packet`` hook and handed to the router (:mod:`mongoose.router`) as a
:class:`~mongoose.packet.Packet`. Packets for the client arrive as ``("route", packet)``
and are written out as they came, after the ``user_receive_packet`` hook if any module
registered one.

Instrumentation (events in :mod:`mongoose.c2s_events`)
    Per socket read and write, ``tcp_data_in``/``tcp_data_out`` or, once TLS is on,
    ``tls_data_*`` (the protocol counts reads, the session writes). After login, per
    element: ``xmpp_element_in`` (its size is that of the packet serialized for the
    router, so a routed stanza is not serialized twice), ``xmpp_element_out`` (from
    what the packet carries: name, type, bytes) and, for a message,
    ``c2s_message_processed``: the time from the start of the read that brought it (or
    the end of the previous stanza of that read) to its hand-over to the router.
    ``sm_session`` at login and logout, ``c2s_auth_failed`` per failed SASL exchange.
    The session holds its host's prepared sinks (:class:`~mongoose.c2s_events.HostSinks`)
    and the data batches in use, so no labels are built per stanza. The per-stanza and
    per-read events are batches (:class:`mongoose.instrument.Batch`): their sums go out
    every second, as one event each.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import secrets
import time
from typing import Any
from xml.sax.saxutils import quoteattr

import pykka
from lxml import etree

import otp
from mongoose import c2s_events as events
from mongoose import iq, router, sm, trace
from mongoose import packet as packet_mod
from mongoose.hooks import hooks
from mongoose.packet import Packet
from mongoose.server import current as current_server
from mongoose.xmpp import errors, ns, xmlstream
from mongoose.xmpp.jid import JID, InvalidJID
from otp import blocking

__all__ = ["C2S", "C2SProtocol"]

log = logging.getLogger(__name__)

# Tests (OTP_FAULT_INJECTION=1, as for otp.dist) may crash a session on purpose with an
# iq carrying this element, to check that a crash ends only that session's stream.
_CRASH_TAG = "{urn:mongoose:test}crash"
_FAULTS = os.environ.get("OTP_FAULT_INJECTION") == "1"

_READ_HIGH = 1 << 20  # unprocessed bytes before reading pauses
_READ_LOW = 1 << 18
_WRITE_LIMIT = 8 << 20  # bytes queued for a client that does not read

_NS_CLIENT_TAGS = {
    f"{{{ns.CLIENT}}}message": "message",
    f"{{{ns.CLIENT}}}presence": "presence",
    f"{{{ns.CLIENT}}}iq": "iq",
}
_SASL_MECH_NAMES = {
    "scram_sha512_plus": "SCRAM-SHA-512-PLUS", "scram_sha256_plus": "SCRAM-SHA-256-PLUS",
    "scram_sha1_plus": "SCRAM-SHA-1-PLUS", "scram_sha512": "SCRAM-SHA-512",
    "scram_sha256": "SCRAM-SHA-256", "scram_sha1": "SCRAM-SHA-1", "plain": "PLAIN",
}


class C2SProtocol(asyncio.Protocol):
    """The socket side of one connection; everything else is in the :class:`C2S` actor.

    Bytes received before the actor exists are kept and handed over in order.
    """

    def __init__(self, listener_index: int, sup: Any) -> None:
        self.listener_index = listener_index
        self.sup = sup
        self.transport: asyncio.Transport | None = None
        self.actor: otp.ActorRef | None = None
        self.early: list[Any] = []
        self.unprocessed = 0
        self.paused = False
        # tcp_data_in, or tls_data_in on a direct TLS listener (the session switches it
        # at STARTTLS): asyncio hands us decrypted bytes either way.
        data = events.data_sinks()
        listener = current_server().config.listen.c2s[listener_index]
        self.data_in = data.tls_in if listener.tls.mode == "tls" else data.tcp_in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        from otp import supervisor

        self.transport = transport  # type: ignore[assignment]
        started = supervisor.start_child(self.sup, [self])
        started.add_done_callback(self._started)

    def _started(self, future: otp.LoopFuture[Any]) -> None:
        try:
            pid = future.get(timeout=0)
        except Exception:
            log.exception("cannot start a session", extra={"what": "c2s_start_failed"})
            if self.transport is not None:
                self.transport.abort()
            return
        self.actor = otp.lookup(pid)
        if self.actor is None:  # died at once (its on_start closed the connection)
            return
        for message in self.early:
            self.actor.tell(message)
        self.early.clear()

    def _tell(self, message: Any) -> None:
        if self.actor is None:
            self.early.append(message)
            return
        # The session may have ended already (it closed the stream itself): as with
        # otp.send, a message to a dead actor is dropped.
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor.tell(message)

    def data_received(self, data: bytes) -> None:
        size = len(data)
        self.data_in.sums["byte_size"] += size  # a Batch: summed, emitted every second
        self.unprocessed += size
        if self.unprocessed > _READ_HIGH and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._tell(("tcp", data))

    def consumed(self, n: int) -> None:
        """The actor has handled ``n`` more bytes (flow control, see the module docs)."""
        self.unprocessed -= n
        if self.paused and self.unprocessed < _READ_LOW and self.transport is not None:
            self.paused = False
            with contextlib.suppress(Exception):
                self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._tell(("tcp_closed", repr(exc) if exc else "closed"))


class C2S(otp.LoopActor):
    """The session actor of one client connection (see the module docstring)."""

    pykka_registry = False

    def __init__(self, protocol: C2SProtocol) -> None:
        super().__init__()
        self.trap_exit = True
        self.protocol = protocol
        self.transport: asyncio.Transport | None = protocol.transport
        server = current_server()
        self.server = server
        self.listener_index = protocol.listener_index
        self.listener = server.config.listen.c2s[protocol.listener_index]
        self.tls_mode = self.listener.tls.mode
        self.tls_active = self.tls_mode == "tls"
        data = events.data_sinks()
        self.data_out = data.tls_out if self.tls_active else data.tcp_out
        self.sinks: events.HostSinks | None = None  # the host's, from login on
        self.mark_ns = 0  # c2s_message_processed: when the current stanza's time began
        self.parser = xmlstream.XMLStreamParser(max_stanza_size=self.listener.max_stanza_size)
        self.pending: collections.deque[Any] = collections.deque()
        self.state = "wait_for_stream"
        self.state_seq = 0
        self.header_sent = False
        self.closed = False
        self.host = server.config.default_domain
        self.lang = "en"
        self.stream_id = ""
        self.authenticated = False
        self.username: str | None = None
        self.jid: JID | None = None
        self.jid_str = ""
        self.bare_str = ""
        self.record: sm.SessionRecord | None = None
        self.sasl: Any = None
        self.auth_failures = 0
        self.available = False
        self.last_presence: etree._Element | None = None
        self.directed: set[str] = set()
        # Modules' per-session state, by module name (MongooseIM's mod state): a module
        # keeps its own here; the session never reads it.
        self.mod_state: dict[str, Any] = {}
        self._deferred: list[tuple[Any, tuple[Any, ...]]] | None = None  # see defer()
        self.peer = _peer_address(self.transport)
        self._bindings: dict[str, bytes] | None = None
        self.ping_id: str | None = None
        self.ping_timer: otp.Ref | None = None
        self.last_heard = time.monotonic()
        self.tracers: list[otp.Pid] | None = None  # shell trace collectors (mongoose.trace)

    # -- lifecycle -------------------------------------------------------------------------

    def on_start(self) -> None:
        self._arm_state_timer()

    def on_failure(self, *exc_info: Any) -> None:
        self._close_with_error("internal-server-error", None)
        self._end_session("crash")

    def on_stop(self) -> None:
        if not self.closed:
            self._close_with_error("system-shutdown", None)
        self._end_session("stopped")

    def release(self) -> None:
        # Also after an untrappable kill (no on_stop): the client must not be left
        # connected to a dead actor, nor the session table name it.
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
        self._end_session("killed")

    def handle_exit(self, pid: Any, reason: Any) -> Any:
        return None  # linked only to our supervisor, whose exit is handled by LoopActor

    def on_receive(self, message: Any) -> Any:
        kind = message[0] if type(message) is tuple else message
        if kind == "route":
            self._deliver(message[1])
            return self._run_deferred() if self._deferred else None
        if kind == "tcp":
            return self._on_bytes(message[1])
        if kind == "tcp_closed":
            self._on_closed(message[1])
            return None
        if kind == "state_timeout":
            if message[1] == self.state_seq and self.state != "session_established":
                self._close_with_error("connection-timeout", f"no progress in {self.state}")
            return None
        if kind == "replaced":
            self._close_with_error("conflict", "Replaced by new connection")
            return None
        if kind == "kick":  # mongoose session kick, or the account was removed
            # ("kick", text[, stream error condition]): policy-violation by default.
            self._close_with_error(message[2] if len(message) > 2 else "policy-violation",
                                   message[1])
            return None
        if kind == "tracers":
            self.tracers = message[1]
            return None
        if kind == "own_presence":
            if self.available or message[1][0] == self.jid_str:
                self._deliver(message[1])
            return None
        if kind == "own_probe":  # another resource of our user just came online
            self._answer_own_probe(message[1], message[2])
            return None
        if kind == "ping_tick":
            self._ping_tick()
            return None
        if kind == "ping_timeout":
            self._ping_timeout(message[1])
            return None
        if kind == "foreign":  # a module's message to this session (foreign_event hook)
            if not self.closed and hooks.has("foreign_event", self.host):
                hooks.run("foreign_event", None, self.host, c2s=self, event=message[1])
            return self._take_deferred()
        if kind == "info":
            return {"state": self.state, "jid": self.jid_str, "peer": self.peer,
                    "tls": self.tls_active, "available": self.available}
        return super().on_receive(message)

    # -- bytes and events ------------------------------------------------------------------

    def _on_bytes(self, data: bytes) -> Any:
        self.protocol.consumed(len(data))
        if self.closed:
            return None
        self.last_heard = time.monotonic()
        self.mark_ns = time.perf_counter_ns()
        try:
            self.pending.extend(self.parser.feed(data))
        except xmlstream.StreamError as error:
            self._close_with_error(error.condition, error.text)
            return None
        return self._process()

    def _process(self) -> Any:
        pending = self.pending
        while pending and not self.closed:
            result = self._event(pending.popleft())
            if result is not None and asyncio.iscoroutine(result):
                return self._finish(result)
        return None

    async def _finish(self, coroutine: Any) -> None:
        """Await one async step, then go on with the events that came meanwhile."""
        await coroutine
        pending = self.pending
        while pending and not self.closed:
            result = self._event(pending.popleft())
            if result is not None and asyncio.iscoroutine(result):
                await result

    def _event(self, event: Any) -> Any:
        if isinstance(event, xmlstream.Stanza):
            return self._stanza(event.element)
        if isinstance(event, xmlstream.StreamStart):
            return self._stream_start(event)
        if isinstance(event, xmlstream.StreamEnd):
            self._close(send_end=True)
            return None
        return None

    # -- stream ----------------------------------------------------------------------------

    def _stream_start(self, start: Any) -> None:
        attrs = start.attrs
        if self.state != "wait_for_stream":
            self._close_with_error("invalid-xml", "a second stream header")
            return
        to = (attrs.get("to") or self.host).lower()
        self.lang = start.lang or "en"
        self.stream_id = secrets.token_hex(8)
        self._send_header(to if to in self.server.hosts else self.host)
        if to not in self.server.hosts:
            self._close_with_error("host-unknown", f"this server does not serve {to}")
            return
        version = attrs.get("version", "")
        if not version.startswith("1."):
            self._close_with_error("unsupported-version", "version='1.0' is required")
            return
        self.host = to
        self._send_features()

    def _send_header(self, host: str) -> None:
        self._write(xmlstream.stream_header(from_=host, id_=self.stream_id, to=None,
                                            lang=self.lang))
        self.header_sent = True

    def _send_features(self) -> None:
        if self.authenticated:
            extra = hooks.run("c2s_stream_features", [], self.host) \
                if hooks.has("c2s_stream_features", self.host) else []
            body = (
                f"<bind xmlns='{ns.BIND}'/>"
                f"<session xmlns='{ns.SESSION}'><optional/></session>"
            ).encode() + b"".join(etree.tostring(f) for f in extra)
            self._enter("wait_for_feature_after_auth")
        else:
            body = b""
            if not self.tls_active and self.tls_mode in ("starttls", "starttls_required"):
                required = "<required/>" if self.tls_mode == "starttls_required" else ""
                body += f"<starttls xmlns='{ns.TLS}'>{required}</starttls>".encode()
            if self.tls_active or self.tls_mode != "starttls_required":
                mechanisms = self._offered_mechanisms()
                if mechanisms:
                    body += (f"<mechanisms xmlns='{ns.SASL}'>" + "".join(
                        f"<mechanism>{m}</mechanism>" for m in mechanisms
                    ) + "</mechanisms>").encode()
                if hooks.has("c2s_unauthenticated_features", self.host):
                    body += b"".join(etree.tostring(f) for f in hooks.run(
                        "c2s_unauthenticated_features", [], self.host, c2s=self))
            self._enter("wait_for_feature_before_auth")
        self._write(b"<stream:features>" + body + b"</stream:features>")

    def _offered_mechanisms(self) -> list[str]:
        from mongoose.auth import sasl

        auth = self.server.config.auth
        return sasl.offered(
            auth.sasl_mechanisms,
            tls_active=self.tls_active,
            channel_binding=self._channel_binding() is not None,
            allow_plain_without_tls=self.tls_mode == "none",
            hashes=auth.password.hash,
        )

    def _channel_binding(self) -> dict[str, bytes] | None:
        """Channel binding data of this TLS connection by type, None without TLS."""
        if not self.tls_active or self.transport is None:
            return None
        if self._bindings is None:
            from mongoose import tls

            ssl_object = self.transport.get_extra_info("ssl_object")
            self._bindings = tls.channel_bindings(
                ssl_object, self.server.end_points.get(self.listener_index)
            ) if ssl_object is not None else {}
        return self._bindings or None

    def _enter(self, state: str) -> None:
        self.state = state
        self.state_seq += 1
        if state != "session_established":
            self._arm_state_timer()

    def _arm_state_timer(self) -> None:
        otp.send_after(self.listener.state_timeout / 1000, self.pid,
                       ("state_timeout", self.state_seq))

    # -- stanzas by state ------------------------------------------------------------------

    def _stanza(self, el: etree._Element) -> Any:
        state = self.state
        if state == "session_established":
            return self._established(el)
        tag = el.tag
        if state == "wait_for_feature_before_auth":
            if tag == f"{{{ns.TLS}}}starttls":
                return self._starttls()
            if tag == f"{{{ns.SASL}}}auth":
                return self._auth(el)
            if tag == f"{{{ns.CLIENT}}}iq" and self._may_ask_before_auth():
                return self._unauthenticated_iq(el)
        elif state == "wait_for_sasl_response":
            if tag == f"{{{ns.SASL}}}response":
                return self._sasl_response(el)
            if tag == f"{{{ns.SASL}}}abort":
                self.sasl = None
                self._write(errors.sasl_failure("aborted"))
                self._enter("wait_for_feature_before_auth")
                return None
        elif state == "wait_for_feature_after_auth" and tag == f"{{{ns.CLIENT}}}iq":
            return self._iq_before_session(el)
        if tag in _NS_CLIENT_TAGS and not self.authenticated:
            self._close_with_error("not-authorized", "authenticate first")
        else:
            self._close_with_error("policy-violation" if tag in _NS_CLIENT_TAGS else
                                   "unsupported-stanza-type", f"unexpected {tag} in {state}")
        return None

    # -- iq before authentication (in-band registration) -----------------------------------

    def _may_ask_before_auth(self) -> bool:
        """Whether an iq before login goes to ``c2s_unauthenticated_iq`` handlers: only
        where SASL is offered too (after STARTTLS when the listener requires it)."""
        return (self.tls_active or self.tls_mode != "starttls_required") and hooks.has(
            "c2s_unauthenticated_iq", self.host)

    def _unauthenticated_iq(self, el: etree._Element) -> Any:
        """An iq before login (XEP-0077 registration): a ``c2s_unauthenticated_iq``
        handler answers it with ``Stop(reply)``, the reply an element or an awaitable
        of one (whose None means no answer); an iq no handler takes ends the stream as
        any other stanza before login does. Each answer restarts the step's deadline."""
        reply = hooks.run("c2s_unauthenticated_iq", None, self.host, c2s=self, iq=el,
                          domain=self.host, ip=self.peer.rpartition(":")[0])
        if reply is None:
            self._close_with_error("not-authorized", "authenticate first")
            return None
        if isinstance(reply, etree._Element):
            self._answer_before_auth(reply)
            return None
        return self._await_answer_before_auth(reply)

    async def _await_answer_before_auth(self, pending: Any) -> None:
        self._answer_before_auth(await pending)

    def _answer_before_auth(self, reply: etree._Element | None) -> None:
        if self.closed or self.state != "wait_for_feature_before_auth":
            return
        if reply is not None:
            self._write(xmlstream.to_bytes(reply))
        self._enter(self.state)

    # -- STARTTLS --------------------------------------------------------------------------

    def _starttls(self) -> Any:
        context = self.server.tls_context(self.listener_index)
        if self.tls_active or context is None:
            self._write(f"<failure xmlns='{ns.TLS}'/>".encode())
            self._close(send_end=True)
            return None
        self._write(f"<proceed xmlns='{ns.TLS}'/>".encode())
        # Whatever the socket carries from now on is TLS: the protocol gets (and we
        # write) plaintext through the TLS layer.
        data = events.data_sinks()
        self.data_out = data.tls_out
        self.protocol.data_in = data.tls_in
        # Stop reading now, in this very handler: the client's TLS ClientHello follows
        # <proceed/> at once, and bytes read before start_tls takes over the transport
        # would go to the XML parser instead of the TLS layer (start_tls resumes reading).
        if self.transport is not None:
            self.transport.pause_reading()
        return self._upgrade(context)

    async def _upgrade(self, context: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self.transport, self.protocol, context, server_side=True,
                ssl_handshake_timeout=self.listener.state_timeout / 1000,
            )
        except Exception as error:
            log.info("TLS handshake failed", extra={
                "what": "c2s_tls_failed", "peer": self.peer, "reason": repr(error)})
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self.stop()
            return
        if transport is None:  # the connection went away during the handshake
            self.closed = True
            self.stop()
            return
        self.transport = transport
        self.protocol.transport = transport
        self.tls_active = True
        self.parser.reset()
        self.header_sent = False
        self._enter("wait_for_stream")

    # -- SASL ------------------------------------------------------------------------------

    def _auth(self, el: etree._Element) -> Any:
        if self.tls_mode == "starttls_required" and not self.tls_active:
            self._write(errors.sasl_failure("encryption-required"))
            return None
        mechanism = el.get("mechanism", "")
        offered = self._offered_mechanisms()
        if mechanism not in offered:
            self._write(errors.sasl_failure("invalid-mechanism"))
            return None
        return self._sasl_start(mechanism, offered, el.text)

    async def _sasl_start(self, mechanism: str, offered: list[str], text: str | None) -> None:
        from mongoose.auth import sasl

        try:
            initial = sasl.decode_payload(text) if text is not None else None
        except ValueError:
            await self._sasl_failed("incorrect-encoding", None)
            return
        store = self.server.store
        host = self.host

        async def get_secrets(username: str) -> Any:
            return await blocking.run(store.get_secrets, username, host)

        self.sasl = sasl.SaslServer(
            mechanism, host=host, get_secrets=get_secrets,
            channel_binding=self._channel_binding(), offered=offered,
            run_blocking=blocking.run, fake_salt_key=self.server.fake_salt_key,
            iterations=self.server.config.auth.password.scram_iterations,
        )
        self._enter("wait_for_sasl_response")
        await self._sasl_step(await self.sasl.start(initial))

    def _sasl_response(self, el: etree._Element) -> Any:
        return self._sasl_continue(el.text)

    async def _sasl_continue(self, text: str | None) -> None:
        from mongoose.auth import sasl

        try:
            data = sasl.decode_payload(text or "")
        except ValueError:
            await self._sasl_failed("incorrect-encoding", None)
            return
        await self._sasl_step(await self.sasl.step(data))

    async def _sasl_step(self, step: Any) -> None:
        from mongoose.auth import sasl

        if isinstance(step, sasl.Challenge):
            self._write(f"<challenge xmlns='{ns.SASL}'>{sasl.encode_payload(step.data)}"
                        "</challenge>".encode())
            return
        if isinstance(step, sasl.Success):
            self.sasl = None
            self.authenticated = True
            self.username = step.username
            payload = sasl.encode_payload(step.data) if step.data else ""
            self._write(f"<success xmlns='{ns.SASL}'>{payload}</success>".encode())
            log.debug("authenticated", extra={"what": "c2s_auth_success",
                                              "user": f"{step.username}@{self.host}"})
            self.parser.reset()
            self.header_sent = False
            self._enter("wait_for_stream")
            return
        await self._sasl_failed(step.condition, step.text)

    async def _sasl_failed(self, condition: str, text: str | None) -> None:
        self.sasl = None
        self.auth_failures += 1
        if condition == "temporary-auth-failure":
            # The server's fault (its database is down), not a guess: no delay, and
            # the address is not marked; it still counts toward max_per_connection.
            delay = 0.0
        else:
            # Slow down: the longer of this connection's and this address's delay.
            throttle = self.server.throttle
            address = self.peer.rpartition(":")[0]
            delay = max(throttle.delay_for(address),
                        throttle.delay_after(self.auth_failures - 1))
            throttle.record_failure(address)
        limits = self.server.config.auth.failure_delay
        events.host(self.host).auth_failed.emit(events.ONE)
        log.info("authentication failed", extra={
            "what": "c2s_auth_failed", "peer": self.peer, "condition": condition,
            "failures": self.auth_failures})
        if delay > 0:
            self.state_seq += 1  # the wait is ours: no connection-timeout meanwhile
            await asyncio.sleep(delay)
        if self.closed:
            return
        self._write(errors.sasl_failure(condition, text))
        if self.auth_failures >= limits.max_per_connection:
            self._close_with_error("policy-violation", "too many failed authentication attempts")
            return
        self._enter("wait_for_feature_before_auth")

    # -- resource binding ------------------------------------------------------------------

    def _iq_before_session(self, el: etree._Element) -> None:
        bind = el.find(f"{{{ns.BIND}}}bind")
        if el.get("type") == "set" and bind is not None:
            self._bind(el, bind)
            return
        if el.find(f"{{{ns.SESSION}}}session") is not None:
            self._write(xmlstream.to_bytes(iq.result(el)))
            return
        self._write(xmlstream.to_bytes(errors.make_error_reply(
            el, "not-authorized", "bind a resource first")))

    def _bind(self, el: etree._Element, bind: etree._Element) -> None:
        requested = (bind.findtext(f"{{{ns.BIND}}}resource") or "").strip()
        resource = requested or secrets.token_hex(6)
        try:
            jid = JID.parse(f"{self.username}@{self.host}/{resource}")
        except InvalidJID as error:
            self._write(xmlstream.to_bytes(errors.make_error_reply(el, "bad-request", str(error))))
            return
        record, replaced = sm.open_session(
            jid.bare_str, jid.resource, self.pid,
            max_sessions=self.server.config.general.max_user_sessions)
        if record is None:
            self._write(xmlstream.to_bytes(errors.make_error_reply(
                el, "resource-constraint", "too many sessions", type="wait")))
            return
        for pid in replaced:
            otp.send(pid, ("replaced",))
        self.record = record
        self.jid = jid
        self.jid_str = str(jid)
        self.bare_str = jid.bare_str
        reply = iq.result(el)
        bound = etree.SubElement(reply, f"{{{ns.BIND}}}bind", nsmap={None: ns.BIND})
        etree.SubElement(bound, f"{{{ns.BIND}}}jid").text = self.jid_str
        self._write(xmlstream.to_bytes(reply))
        self._enter("session_established")
        self.tracers = trace.collectors_for(self.jid_str, self.bare_str)
        self.sinks = events.host(self.host)
        self.sinks.sm_session.emit(events.LOGIN)
        if hooks.has("sm_register_connection", self.host):
            hooks.run("sm_register_connection", None, self.host, jid=self.jid_str, pid=self.pid)
        log.info("session open", extra={"what": "c2s_session_open", "jid": self.jid_str,
                                         "worker": otp.current().worker, "peer": self.peer})
        self._schedule_ping()

    # -- session established: from the client ----------------------------------------------

    def _established(self, el: etree._Element) -> Any:
        """A stanza from the client: handled by :meth:`_from_client`, counted here; the
        work modules deferred meanwhile (:meth:`defer`), to await, if any.

        Per-stanza instrumentation is on the hot path: the counts go into batches
        (:class:`mongoose.instrument.Batch`, emitted every second), a few dict additions
        instead of an event per stanza.
        """
        name = _NS_CLIENT_TAGS.get(el.tag)
        sinks = self.sinks
        if name is None:
            _count(sinks.element_in, events.OTHER_ELEMENT, _size(el))
            self._close_with_error("unsupported-stanza-type", f"{el.tag} is not a stanza")
            return
        packet = self._from_client(el, name)
        if packet is not None:  # routed: its size and type are known at no cost
            _count(sinks.element_in, events.ELEMENT[name, packet[3] == "error"],
                   len(packet[5]))
        else:
            _count(sinks.element_in, events.ELEMENT[name, el.get("type") == "error"],
                   _size(el))
        if self.tracers is not None:
            trace.emit(self.tracers, "sent", self.jid_str,
                       packet[5] if packet is not None else etree.tostring(el))
        processed = sinks.message_processed
        if processed.sink.calls:
            now = time.perf_counter_ns()
            if name == "message":
                processed.observe("time", (now - self.mark_ns) // 1000)
            self.mark_ns = now
        return self._take_deferred()

    def _from_client(self, el: etree._Element, name: str) -> Packet | None:
        """Check, stamp and route a stanza from the client; the packet routed, if any."""
        if _FAULTS and el.find(_CRASH_TAG) is not None:
            raise RuntimeError("crash requested by a test (OTP_FAULT_INJECTION=1)")
        sender = el.get("from")
        if sender is not None and sender != self.jid_str and not self._is_own_jid(sender):
            self._close_with_error("invalid-from", "from does not match the session's JID")
            return None
        to_attr = el.get("to")
        if to_attr is not None:
            try:
                to = str(JID.parse(to_attr))
            except InvalidJID as error:
                if el.get("type") != "error":
                    self._reply_error(el, "jid-malformed", str(error))
                return None
        else:
            to = ""
        if name == "iq" and self.ping_id is not None and el.get("id") == self.ping_id and (
                to in ("", self.host)):
            self._ping_answered()
            return None
        if hooks.has("user_send_packet", self.host):
            result = hooks.run("user_send_packet", el, self.host, c2s=self,
                               from_jid=self.jid_str, to_jid=to)
            if result is None:
                return None
            el = result
        if name == "presence" and not to:
            self._own_presence(el)
            return None
        if not to:  # RFC 6120 §10.3: no 'to' means the user's own account
            to = self.bare_str
        if name == "presence":
            self._directed_presence(el, to)
        packet = packet_mod.from_element(el, self.jid_str, to)
        router.route(packet)
        return packet

    def _is_own_jid(self, text: str) -> bool:
        """``text`` names this session (full JID) or its account (bare JID), compared
        after preparation (RFC 7622: local part and domain are case-insensitive)."""
        try:
            jid = JID.parse(text)
        except InvalidJID:
            return False
        return str(jid) == self.jid_str or (jid.resource is None and jid.bare_str == self.bare_str)

    def _reply_error(self, el: etree._Element, condition: str, text: str | None = None) -> None:
        reply = errors.make_error_reply(el, condition, text)
        reply.set("to", self.jid_str)
        reply.attrib.pop("from", None)
        data = xmlstream.to_bytes(reply)
        self._write(data)
        self._counted_out(_NS_CLIENT_TAGS.get(reply.tag, ""), "error", data)

    # Presence (RFC 6121 §4). The session keeps what concerns the user's own resources and
    # directed presence; subscribers and contacts are mod_presence's (hooks
    # user_presence_update, presence_probe, and the roster pushes it gets as foreign
    # events), kept in mod_state and loaded when the session becomes available.

    def defer(self, fn: Any, *args: Any) -> None:
        """Have the session run ``await fn(*args)`` after the stanza or message it is
        handling, before any other: a module's storage call (on :mod:`otp.blocking`)
        that later stanzas must wait for. The session takes no stanza and no message
        meanwhile (see :mod:`otp.actor`); the loop and other sessions go on."""
        if self._deferred is None:
            self._deferred = []
        self._deferred.append((fn, args))

    def _take_deferred(self) -> Any:
        return self._run_deferred() if self._deferred else None

    async def _run_deferred(self) -> None:
        while self._deferred:
            batch, self._deferred = self._deferred, None
            for fn, args in batch:
                if self.closed:
                    return
                await fn(*args)

    def send_to_client(self, el: etree._Element) -> None:
        """Write a stanza the server itself addresses to this client (an iq result, a
        roster push): no routing, no hooks."""
        data = xmlstream.to_bytes(el)
        self._write(data)
        if self.tracers is not None:
            trace.emit(self.tracers, "received", self.jid_str, data)
        self._counted_out(_NS_CLIENT_TAGS.get(el.tag, ""), el.get("type", ""), data)

    def _own_presence(self, el: etree._Element) -> None:
        """Presence without ``to``: this session's availability (RFC 6121 §4.2, §4.4)."""
        kind = el.get("type", "")
        if kind == "unavailable":
            self._go_unavailable(el)
            return
        if kind not in ("",):
            return  # probes and subscription requests to ourselves mean nothing
        try:
            priority = int(el.findtext(f"{{{ns.CLIENT}}}priority") or 0)
        except ValueError:
            priority = 0
        priority = max(-128, min(127, priority))
        first = not self.available
        previous = self.record[3] if self.record is not None else None
        self.available = True
        self.last_presence = el
        if self.record is not None:
            self.record = sm.set_priority(self.record, priority)
        self._broadcast_to_own(el)
        if first:
            # RFC 6121 §4.2.2: a newly available resource learns the presence of the
            # user's other available resources.
            for record in sm.sessions(self.bare_str):
                if record[2] != self.pid:
                    otp.send(record[2], ("own_probe", self.jid_str, self.pid))
        if hooks.has("user_presence_update", self.host):
            # Subscribers (mod_presence); the initial presence also loads the roster,
            # probes contacts and delivers waiting subscription requests (deferred).
            hooks.run("user_presence_update", set(), self.host, c2s=self, element=el,
                      initial=first, available=True, priority=priority, previous=previous)
        if first and hooks.has("user_available", self.host):
            hooks.run("user_available", None, self.host, jid=self.jid_str, c2s=self)

    def _broadcast_to_own(self, el: etree._Element) -> None:
        """Send our presence to each of the user's sessions (ourselves included).

        Every session gets it, and each decides by its own state whether it is available
        to take it (``own_presence``): the replicas of the session table may lag behind
        two resources coming online at once, a session's own state does not.
        """
        for record in sm.sessions(self.bare_str):
            target = f"{record[0]}/{record[1]}"
            otp.send(record[2], ("own_presence", packet_mod.from_element(
                el, self.jid_str, target)))

    def _answer_own_probe(self, jid: str, pid: otp.Pid) -> None:
        if self.available and self.last_presence is not None and not self.closed:
            otp.send(pid, ("own_presence", packet_mod.from_element(
                self.last_presence, self.jid_str, jid)))

    def _answer_probe(self, packet: Packet) -> None:
        """A presence probe for our user (RFC 6121 §4.3.2): never shown to the client;
        answered with our last presence if we are available and the prober may see it
        (the ``presence_probe`` hook: mod_presence says whether it is a subscriber)."""
        if not self.available or self.last_presence is None or self.closed:
            return
        prober = packet[0]
        if prober.partition("/")[0] != self.bare_str and not (
                hooks.has("presence_probe", self.host) and hooks.run(
                    "presence_probe", False, self.host, c2s=self, from_jid=prober)):
            return
        router.route(packet_mod.from_element(self.last_presence, self.jid_str, prober))

    def _go_unavailable(self, el: etree._Element | None) -> None:
        """Unavailable presence to our other resources and to everyone we sent directed
        presence to (RFC 6121 §4.6.3: also when we never sent initial presence)."""
        if not self.available and not self.directed:
            return
        was_available = self.available
        self.available = False
        self.last_presence = None
        if el is None:
            el = etree.Element(f"{{{ns.CLIENT}}}presence", type="unavailable",
                               nsmap={None: ns.CLIENT})
        else:
            el.set("type", "unavailable")
        for record in sm.sessions(self.bare_str) if was_available else ():
            if record[2] != self.pid:
                otp.send(record[2], ("own_presence", packet_mod.from_element(
                    el, self.jid_str, f"{record[0]}/{record[1]}")))
        sent: set[str] = set()  # bare JIDs that got it as subscribers (mod_presence)
        if was_available and hooks.has("user_presence_update", self.host):
            sent = hooks.run("user_presence_update", sent, self.host, c2s=self, element=el,
                             initial=False, available=False)
        for target in sorted(self.directed):
            if target.partition("/")[0] not in sent:
                router.route(packet_mod.from_element(el, self.jid_str, target))
        self.directed.clear()
        if self.record is not None:
            self.record = sm.set_priority(self.record, None)
        if hooks.has("unset_presence", self.host):
            hooks.run("unset_presence", None, self.host, jid=self.jid_str,
                      status=el.findtext(f"{{{ns.CLIENT}}}status") or "")

    def _directed_presence(self, el: etree._Element, to: str) -> None:
        kind = el.get("type", "")
        if kind == "":
            self.directed.add(to)
        elif kind == "unavailable":
            self.directed.discard(to)

    # -- session established: to the client ------------------------------------------------

    def _deliver(self, packet: Packet) -> None:
        if self.closed or self.state != "session_established":
            if self.closed and self.record is None and packet[2] == "message" and (
                    packet[3] != "error"):
                # Our stream is gone and we have left the session table: route the
                # message again, as for any full JID without a session (RFC 6121
                # §8.5.3.2.1): another resource or offline storage takes it.
                router.route(packet)
            elif packet[2] != "presence":
                router.bounce(packet, "service-unavailable")
            return
        if packet[2] == "presence":
            if packet[3] == "probe":
                self._answer_probe(packet)  # the server answers probes; clients never see
                return
            if not self.available and "/" not in packet[1]:
                return  # presence for the bare JID reaches available resources only
        if hooks.has("user_receive_packet", self.host):
            result = hooks.run("user_receive_packet", packet, self.host, c2s=self, packet=packet)
            if result is None:
                return
            packet = result
        data = packet[5]
        self._write(data)
        if self.tracers is not None:
            trace.emit(self.tracers, "received", self.jid_str, data)
        _count(self.sinks.element_out,
               events.ELEMENT.get((packet[2], packet[3] == "error"), events.OTHER_ELEMENT),
               len(data))

    def _counted_out(self, name: str, kind: str, data: bytes) -> None:
        """xmpp_element_out for a stanza the session wrote itself (after login)."""
        if self.sinks is not None:
            _count(self.sinks.element_out,
                   events.ELEMENT.get((name, kind == "error"), events.OTHER_ELEMENT),
                   len(data))

    # -- server pings (mod_ping's send_pings) ----------------------------------------------

    def _ping_config(self) -> Any:
        module = self.server.config.modules.mod_ping
        return module if module is not None and module.send_pings else None

    def _schedule_ping(self) -> None:
        config = self._ping_config()
        if config is not None:
            self.ping_timer = otp.send_after(config.ping_interval, self.pid, ("ping_tick",))

    def _ping_tick(self) -> None:
        config = self._ping_config()
        if config is None or self.closed:
            return
        idle = time.monotonic() - self.last_heard
        if idle < config.ping_interval:
            self.ping_timer = otp.send_after(config.ping_interval - idle, self.pid, ("ping_tick",))
            return
        self.ping_id = f"ping-{secrets.token_hex(4)}"
        data = (f"<iq type='get' id='{self.ping_id}' from='{self.host}' "
                f"to={quoteattr(self.jid_str)}><ping xmlns='{ns.PING}'/></iq>").encode()
        self._write(data)
        self._counted_out("iq", "get", data)
        otp.send_after(config.ping_req_timeout, self.pid, ("ping_timeout", self.ping_id))

    def _ping_answered(self) -> None:
        self.ping_id = None
        self._schedule_ping()

    def _ping_timeout(self, ping_id: str) -> None:
        config = self._ping_config()
        if ping_id != self.ping_id or config is None:
            return
        log.info("client did not answer a ping", extra={
            "what": "c2s_ping_timeout", "jid": self.jid_str, "action": config.timeout_action})
        if config.timeout_action == "kill":
            self._close_with_error("connection-timeout", "no answer to ping")
        else:
            self.ping_id = None
            self._schedule_ping()

    # -- writing and closing ---------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        transport.write(data)
        self.data_out.sums["byte_size"] += len(data)
        if transport.get_write_buffer_size() > _WRITE_LIMIT:
            log.warning("client does not read; disconnecting", extra={
                "what": "c2s_slow_consumer", "jid": self.jid_str, "peer": self.peer})
            self.closed = True
            transport.abort()
            self.stop()

    def _close_with_error(self, condition: str, text: str | None) -> None:
        if self.closed:
            return
        if not self.header_sent:
            self._send_header(self.host)
        log.info("stream error", extra={
            "what": "c2s_stream_error", "condition": condition, "text": text,
            "peer": self.peer, "jid": self.jid_str, "state": self.state})
        data = errors.stream_error(condition, text)
        self._write(data)
        if self.sinks is not None and self.record is not None:
            _count(self.sinks.element_out, events.STREAM_ERROR, len(data))
        self._close(send_end=True)

    def _close(self, *, send_end: bool) -> None:
        if self.closed:
            return
        if send_end:
            self._write(xmlstream.STREAM_END)
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self._end_session("closed")
        self.stop()

    def _on_closed(self, reason: str) -> None:
        self.closed = True
        self._end_session(reason)
        self.stop()

    def _end_session(self, reason: str) -> None:
        """Leave the session table and tell others we are gone (runs once)."""
        self._deferred = None  # work modules deferred dies with the session
        if self.record is None:
            return
        with contextlib.suppress(Exception):
            self._go_unavailable(None)
        sm.close_session(self.record)
        self.record = None
        self.sinks.sm_session.emit(events.LOGOUT)
        if hooks.has("sm_remove_connection", self.host):
            hooks.run("sm_remove_connection", None, self.host, jid=self.jid_str, pid=self.pid,
                      reason=reason)
        log.debug("session closed", extra={"what": "c2s_session_closed", "jid": self.jid_str,
                                           "reason": reason})


def _count(batch: Any, counts: dict[str, int], size: int) -> None:
    """One element in an xmpp_element_in/out batch: its counts and its byte_size (nothing
    when no handler wants the event: instrumentation off costs a truth test)."""
    if batch.sink.calls:
        sums = batch.sums
        for metric in counts:
            sums[metric] += 1
        batch.observe("byte_size", size)


def _size(el: etree._Element) -> int:
    """The serialized size of an element that was not routed (rare: see _established)."""
    return len(etree.tostring(el))


def _peer_address(transport: Any) -> str:
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


