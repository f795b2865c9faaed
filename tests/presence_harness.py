"""Helpers for the roster, presence and delivery-rule tests: raw sessions that collect
every stanza the server sends, parsed, and wait for the ones a test expects.

:class:`RawSession` logs in with :func:`xmpp_harness.raw_login` (STARTTLS, SASL PLAIN,
bind) and then reads its socket into an incremental parser: ``wait(predicate)`` returns
the first stanza received (and not yet taken) that matches, reading more until a
deadline; ``quiet()`` says nothing matching arrived within a short wait (used only to
check that something is *not* delivered, after a later stanza proved the path is
clear). Nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Any

from lxml import etree
from xmpp_harness import DOMAIN, raw_login, register, xmpp_node

CLIENT = "jabber:client"
ROSTER = "jabber:iq:roster"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
_STREAM_OPEN = (b"<stream:stream xmlns='jabber:client' "
                b"xmlns:stream='http://etherx.jabber.org/streams'>")
_ids = itertools.count(1)

Predicate = Callable[[Any], bool]


class RawSession:
    """One logged-in raw client; every stanza it gets is parsed into ``received``."""

    def __init__(self, port: int, user: str, resource: str) -> None:
        self.raw, self.jid = raw_login(port, user, resource)
        self.bare = self.jid.partition("/")[0]
        self.parser = etree.XMLPullParser(events=("end",))
        self.parser.feed(_STREAM_OPEN)
        self.received: list[Any] = []  # not yet taken by wait()
        self.closed = False
        if self.raw.buffer:  # bytes that came with the bind result
            self._feed(self.raw.buffer)
            self.raw.buffer = b""

    # -- sending

    def send(self, xml: str) -> None:
        self.raw.send(xml)

    def presence(self, xml: str = "<presence/>") -> None:
        self.send(xml)

    def iq(self, kind: str, payload: str, *, to: str | None = None,
           timeout: float = 10.0) -> Any:
        """Send an iq and return its answer (result or error)."""
        iq_id = f"iq{next(_ids)}"
        address = f" to='{to}'" if to else ""
        self.send(f"<iq type='{kind}' id='{iq_id}'{address}>{payload}</iq>")
        return self.wait(lambda s: local(s) == "iq" and s.get("id") == iq_id and s.get(
            "type") in ("result", "error"), timeout, f"the answer to iq {iq_id}")

    # -- receiving

    def _feed(self, data: bytes) -> None:
        self.parser.feed(data)
        for _, el in self.parser.read_events():
            parent = el.getparent()
            if parent is not None and parent.getparent() is None:  # a top-level stanza
                self.received.append(el)
                parent.remove(el)

    def _pump(self, timeout: float) -> None:
        if self.closed:
            time.sleep(min(timeout, 0.01))  # closed: nothing more will come
            return
        sock = self.raw.sock
        sock.settimeout(max(timeout, 0.001))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return
        except OSError:  # reset, TLS error: the connection is gone
            data = b""
        if not data:
            self.closed = True
            return
        self._feed(data)

    def wait(self, predicate: Predicate, timeout: float = 10.0, what: str = "") -> Any:
        """The first received stanza matching ``predicate`` (taken out of ``received``);
        AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for i, stanza in enumerate(self.received):
                if predicate(stanza):
                    return self.received.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                shown = [etree.tostring(s)[:300] for s in self.received[-10:]]
                raise AssertionError(f"{self.jid}: no {what or predicate} within {timeout} s; "
                                     f"last received: {shown}")
            self._pump(min(left, 0.2))

    def wait_all(self, predicate: Predicate, n: int, timeout: float = 10.0,
                 what: str = "") -> list[Any]:
        return [self.wait(predicate, timeout, what) for _ in range(n)]

    def quiet(self, predicate: Predicate, timeout: float = 0.5) -> bool:
        """True if no stanza matching ``predicate`` arrives within ``timeout`` s."""
        with contextlib.suppress(AssertionError):
            self.wait(predicate, timeout)
            return False
        return True

    def drain(self) -> None:
        """Forget what arrived so far (after reading for a moment)."""
        self._pump(0.05)
        self.received.clear()

    def close(self, *, cut: bool = False) -> None:
        """End the stream (or, ``cut``, drop the connection without a word)."""
        if not cut and not self.closed:
            with contextlib.suppress(OSError):
                self.raw.send("</stream:stream>")
        self.raw.close()
        self.closed = True


# -- reading stanzas ------------------------------------------------------------------------


def local(stanza: Any) -> str:
    return etree.QName(stanza).localname


def presence_from(jid: str, kind: str = "") -> Predicate:
    """A presence from ``jid`` (full, or bare: any resource) of ``kind`` ('' available)."""
    def match(s: Any) -> bool:
        if local(s) != "presence" or s.get("type", "") != kind:
            return False
        sender = s.get("from", "")
        return sender == jid or ("/" not in jid and sender.partition("/")[0] == jid)
    return match


def message_with(body: str) -> Predicate:
    def match(s: Any) -> bool:
        return local(s) == "message" and s.findtext(f"{{{CLIENT}}}body") == body
    return match


def error_condition(stanza: Any) -> str:
    assert stanza.get("type") == "error", etree.tostring(stanza)
    error = stanza.find(f"{{{CLIENT}}}error")
    assert error is not None, etree.tostring(stanza)
    return next(etree.QName(c).localname for c in error
                if isinstance(c.tag, str) and etree.QName(c).localname != "text")


def roster_push(jid: str | None = None) -> Predicate:
    """A roster push (of ``jid``'s item, if given)."""
    def match(s: Any) -> bool:
        if local(s) != "iq" or s.get("type") != "set":
            return False
        item = s.find(f"{{{ROSTER}}}query/{{{ROSTER}}}item")
        return item is not None and (jid is None or item.get("jid") == jid)
    return match


def push_item(push: Any) -> Any:
    return push.find(f"{{{ROSTER}}}query/{{{ROSTER}}}item")


def items_of(result: Any) -> dict[str, Any]:
    """The items of a roster result, by JID."""
    return {item.get("jid"): item for item in result.iterfind(
        f"{{{ROSTER}}}query/{{{ROSTER}}}item")}


def headline(to: str, body: str) -> str:
    return f"<message type='headline' to='{to}'><body>{body}</body></message>"


def reach(sender: RawSession, target: RawSession, to: str | None = None,
          timeout: float = 15.0) -> None:
    """Wait until headlines from ``sender`` to ``to`` (default: target's full JID) reach
    ``target``: the session table reaches other workers' replicas a moment late.
    Headlines are never bounced; one probe every 0.2 s."""
    deadline = time.monotonic() + timeout
    for n in itertools.count():
        body = f"reach-{next(_ids)}-{n}"
        sender.send(headline(to or target.jid, body))
        try:
            target.wait(message_with(body), 0.2)
        except AssertionError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{target.jid} not reachable from {sender.jid}") from None
            continue
        target.received[:] = [s for s in target.received
                              if not (local(s) == "message" and s.findtext(
                                  f"{{{CLIENT}}}body", "").startswith("reach-"))]
        return


@contextlib.contextmanager
def pg_cluster(directory: Any, keys_file: str, pg_server: Any, users: tuple[str, ...],
               modules: str, prefix: str) -> Any:
    """Two nodes ``<prefix>a`` and ``<prefix>b`` in one cluster, their storage (rosters)
    in one fresh PostgreSQL database, as a real cluster keeps it; the accounts are each
    node's own (embedded store), so ``users`` are registered on both."""
    database = pg_server.create_database(template=pg_server.template("pgsql"))
    toml = modules + pg_server.config_toml(database)
    a = xmpp_node(directory, f"{prefix}a@localhost", keys_file, users=users, extra_toml=toml)
    b = None
    try:
        b = xmpp_node(directory, f"{prefix}b@localhost", keys_file, users=(), extra_toml=toml,
                      seeds=[a.address.removeprefix("tcp://")])
        register(b, users)
        yield a, b
    finally:
        a.kill()
        if b is not None:
            b.kill()
        pg_server.drop_database(database)


__all__ = ["CLIENT", "DOMAIN", "ROSTER", "STANZAS", "RawSession", "error_condition",
           "headline", "items_of", "local", "message_with", "pg_cluster", "presence_from",
           "push_item", "reach", "roster_push"]
