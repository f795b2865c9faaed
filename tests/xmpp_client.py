"""Real XMPP clients (slixmpp) for tests, driven from synchronous test code.

All clients of a test run on one asyncio loop in a background thread (:class:`ClientLoop`);
a :class:`Client` wraps one ``slixmpp.ClientXMPP`` and records what it receives in
thread-safe lists that tests wait on with a deadline (``wait_for``), never with sleeps.
The server's certificate is self-signed, so certificate checks are off here (the TLS
tests check the handshake itself).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import slixmpp

_loops: list[asyncio.AbstractEventLoop] = []


class ClientLoop:
    """An asyncio loop on a daemon thread; ``run(coro)`` runs a coroutine there.

    :meth:`close` stops the loop but never closes it, and the loop is kept referenced
    until the process ends: slixmpp's objects call ``loop.call_soon`` from ``__del__``,
    which on a closed loop raises inside the garbage collector -- and formatting that
    "exception ignored" report parses source with ``ast`` at an arbitrary point, which
    CPython 3.11 cannot always survive (see ast_lock.py).
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        _loops.append(self.loop)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 20.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Client:
    """One logged-in (or failing) slixmpp client."""

    def __init__(self, loop: ClientLoop, jid: str, password: str, *, port: int,
                 mechanism: str | None = None, direct_tls: bool = False) -> None:
        self.loop = loop
        self.port = port
        self.direct_tls = direct_tls
        self.messages: list[Any] = []
        self.presences: list[Any] = []
        self.events: list[str] = []
        self.failed_auth = threading.Event()
        self.session_started = threading.Event()
        self.disconnected = threading.Event()
        self.stream_errors: list[str] = []
        self.xmpp: slixmpp.ClientXMPP = loop.run(self._make(jid, password, mechanism))

    async def _make(self, jid: str, password: str, mechanism: str | None) -> Any:
        xmpp = slixmpp.ClientXMPP(jid, password, sasl_mech=mechanism)
        xmpp.ssl_context.check_hostname = False
        xmpp.ssl_context.verify_mode = ssl.CERT_NONE
        xmpp.enable_direct_tls = self.direct_tls
        xmpp.enable_starttls = not self.direct_tls
        xmpp.enable_plaintext = False
        xmpp.reconnect_max_attempts = 0
        xmpp.register_plugin("xep_0030")
        xmpp.register_plugin("xep_0199")
        xmpp.register_plugin("xep_0092")
        xmpp.add_event_handler("session_start", self._on_session_start)
        xmpp.add_event_handler("failed_auth", lambda _e: self.failed_auth.set())
        xmpp.add_event_handler("message", self.messages.append)
        xmpp.add_event_handler("presence", self.presences.append)
        xmpp.add_event_handler("disconnected", self._on_disconnected)
        xmpp.add_event_handler("connection_failed", lambda e: self.events.append(
            f"connection_failed: {e}"))
        xmpp.add_event_handler("stream_error", lambda e: self.stream_errors.append(
            e["condition"]))
        return xmpp

    def _on_disconnected(self, reason: Any) -> None:
        self.events.append(f"disconnected: {reason}")
        self.disconnected.set()

    async def _on_session_start(self, _event: Any) -> None:
        self.session_started.set()

    def connect(self, *, presence: bool = True, timeout: float = 15.0) -> Client:
        """Connect and wait for the session (raises if authentication fails)."""
        self.loop.call(self._connect)
        deadline = time.monotonic() + timeout
        while not self.session_started.is_set():
            if self.failed_auth.is_set():
                raise AssertionError("authentication failed")
            if self.disconnected.is_set():
                raise AssertionError(f"disconnected: {self.stream_errors} {self.events}")
            if time.monotonic() > deadline:
                raise AssertionError("no session within the deadline")
            self.session_started.wait(0.05)
        if presence:
            self.loop.call(self.xmpp.send_presence)
        return self

    def _connect(self) -> None:
        self.xmpp.connect("127.0.0.1", self.port)

    def try_connect(self, timeout: float = 15.0) -> str:
        """Connect and return "session", "failed_auth" or "disconnected"."""
        self.loop.call(self._connect)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.session_started.is_set():
                return "session"
            if self.failed_auth.is_set():
                return "failed_auth"
            if self.disconnected.is_set():
                return "disconnected"
            time.sleep(0.02)  # polling a condition with a deadline, not a sleep for sync
        raise AssertionError("neither a session nor a failure within the deadline")

    @property
    def jid(self) -> str:
        return str(self.xmpp.boundjid)

    def send_message(self, to: str, body: str, mtype: str = "chat") -> None:
        self.loop.call(lambda: self.xmpp.send_message(mto=to, mbody=body, mtype=mtype))

    def send_raw(self, xml: str) -> None:
        self.loop.call(self.xmpp.send_raw, xml)

    def iq(self, build: Callable[[slixmpp.ClientXMPP], Any], timeout: float = 10.0) -> Any:
        """Send the iq ``build(xmpp)`` returns; return the result or error stanza."""
        async def go() -> Any:
            iq = build(self.xmpp)
            try:
                return await iq.send(timeout=timeout)
            except slixmpp.exceptions.IqError as error:
                return error.iq
        return self.loop.run(go(), timeout=timeout + 5)

    def bodies(self) -> list[str]:
        return [m["body"] for m in list(self.messages)]

    def disconnect(self) -> None:
        async def go() -> None:
            self.xmpp.disconnect()
        if not self.disconnected.is_set():
            self.loop.run(go())
            self.disconnected.wait(10)
