"""The server's delivery rules for a local destination (RFC 6121 §8.5), one test per row,
each run twice: with sender and recipient on the same node (two workers: they may be on
different workers), and across a 2-node cluster (sender on node A, recipient on node B,
rosters in one PostgreSQL database, as a cluster keeps them).

How "not delivered" is told without sleeping: after the stanza under test, the sender
sends a headline to each of the recipient's resources (through the same router shard,
so it arrives after anything the stanza caused there) and one to itself (through the
shard any error for it went through). Once these arrive, whatever the stanza was going
to cause has happened.

Modules: mod_roster and mod_presence; no mod_offline, so a message nobody can take is
bounced (``service-unavailable``), which §8.5.2.2.1 allows in place of storage.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dist_harness import MongooseNode, TestNode
from presence_harness import (
    CLIENT,
    RawSession,
    error_condition,
    headline,
    local,
    message_with,
    pg_cluster,
    presence_from,
)
from xmpp_harness import DOMAIN

pytestmark = pytest.mark.timeout(90)

USERS = tuple(f"d{i}" for i in range(160))
MODULES = "[modules.mod_roster]\n[modules.mod_presence]\n"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, test_node: TestNode,
            pg_server: Any) -> Iterator[tuple[MongooseNode, MongooseNode]]:
    with pg_cluster(tmp_path_factory.mktemp("delivery"), test_node.keys_file, pg_server,
                    USERS, MODULES, "d") as nodes:
        yield nodes


_free_users = iter(USERS)
_bodies = itertools.count(1)


class World:
    """Sender and recipients of one test, on the nodes of its topology."""

    def __init__(self, sender_port: int, recipient_port: int) -> None:
        self.sender_port = sender_port
        self.recipient_port = recipient_port
        self.sessions: list[RawSession] = []

    def _login(self, port: int, user: str, resource: str,
               presence: str | None) -> RawSession:
        session = RawSession(port, user, resource)
        self.sessions.append(session)
        if presence is not None:
            session.send(presence)
        return session

    def sender(self) -> RawSession:
        return self._login(self.sender_port, next(_free_users), "s", "<presence/>")

    def recipient(self, sender: RawSession, priorities: dict[str, int | None]) -> tuple[
            str, dict[str, RawSession]]:
        """A fresh user with one session per resource: available with that priority,
        or (None) bound without presence. Returns once the sender's worker sees them
        all: each resource by full JID, the non-negative ones by the bare JID."""
        user = next(_free_users)
        made = {}
        for resource, priority in priorities.items():
            presence = None if priority is None else (
                f"<presence><priority>{priority}</priority></presence>")
            made[resource] = self._login(self.recipient_port, user, resource, presence)
        bare = f"{user}@{DOMAIN}"
        for session in made.values():
            reach(sender, session.jid, [session])
        listening = [made[r] for r, p in priorities.items() if p is not None and p >= 0]
        if listening:
            reach(sender, bare, listening)
        negative = [made[r] for r, p in priorities.items() if p is not None and p < 0]
        for session in negative:  # visible as available: presence to the bare JID
            reach(sender, bare, [session], presence=True)
        for session in made.values():
            session.received.clear()
        return bare, made

    def close(self) -> None:
        for session in self.sessions:
            session.close()


def reach(sender: RawSession, to: str, targets: list[RawSession], *,
          presence: bool = False, timeout: float = 20.0) -> None:
    """Send headlines (or directed presence) to ``to`` until every target got one."""
    import time

    deadline = time.monotonic() + timeout
    waiting = list(targets)
    while waiting:
        body = f"reach-{next(_bodies)}"
        if presence:
            sender.send(f"<presence to='{to}'><status>{body}</status></presence>")
            match = presence_with_status(body)
        else:
            sender.send(headline(to, body))
            match = message_with(body)
        for session in list(waiting):
            if not session.quiet(match, 0.1):
                waiting.remove(session)
        if waiting and time.monotonic() > deadline:
            raise AssertionError(f"{[s.jid for s in waiting]} not reached at {to}")
    if presence:
        sender.send(f"<presence type='unavailable' to='{to}'/>")


def presence_with_status(text: str) -> Callable[[Any], bool]:
    def match(stanza: Any) -> bool:
        return local(stanza) == "presence" and stanza.findtext(f"{{{CLIENT}}}status") == text
    return match


def settle(sender: RawSession, recipients: list[RawSession]) -> None:
    """Wait until whatever the sender's last stanza caused has arrived (module doc)."""
    body = f"settle-{next(_bodies)}"
    for session in recipients:
        sender.send(headline(session.jid, body))
    sender.send(headline(sender.jid, body))
    for session in [*recipients, sender]:
        session.wait(message_with(body), what="the settle marker")


def got(session: RawSession, predicate: Callable[[Any], bool]) -> bool:
    return any(predicate(s) for s in session.received)


def message(to: str, kind: str | None, body: str, msg_id: str = "m1") -> str:
    typed = f" type='{kind}'" if kind else ""
    return f"<message id='{msg_id}' to='{to}'{typed}><body>{body}</body></message>"


def error_for(stanza_id: str) -> Callable[[Any], bool]:
    return lambda s: s.get("type") == "error" and s.get("id") == stanza_id


# -- the rows -------------------------------------------------------------------------------

ROWS: dict[str, Callable[[World], None]] = {}


def row(name: str) -> Callable[[Callable[[World], None]], Callable[[World], None]]:
    def add(fn: Callable[[World], None]) -> Callable[[World], None]:
        ROWS[name] = fn
        return fn
    return add


@row("8.5.1-iq-no-such-user")
def _(w: World) -> None:
    """An iq to an account that does not exist: service-unavailable."""
    s = w.sender()
    answer = s.iq("get", "<query xmlns='urn:example:nothing'/>", to=f"nobody@{DOMAIN}")
    assert error_condition(answer) == "service-unavailable"


@row("8.5.1-message-no-such-user")
def _(w: World) -> None:
    """A chat message to an account that does not exist: service-unavailable."""
    s = w.sender()
    s.send(message(f"nobody@{DOMAIN}", "chat", "hello?"))
    assert error_condition(s.wait(error_for("m1"))) == "service-unavailable"


@row("8.5.1-subscribe-no-such-user")
def _(w: World) -> None:
    """A subscription request to an account that does not exist: unsubscribed."""
    s = w.sender()
    s.send(f"<presence type='subscribe' to='nobody@{DOMAIN}'/>")
    s.wait(presence_from(f"nobody@{DOMAIN}", "unsubscribed"))


@row("8.5.2.1.1-normal-to-highest-priority")
def _(w: World) -> None:
    """A normal message to the bare JID: to the resource of highest priority only."""
    s = w.sender()
    bare, r = w.recipient(s, {"hi": 5, "lo": 1})
    s.send(message(bare, None, "normal"))
    settle(s, list(r.values()))
    assert got(r["hi"], message_with("normal")) and not got(r["lo"], message_with("normal"))


@row("8.5.2.1.1-chat-to-every-highest-priority")
def _(w: World) -> None:
    """A chat message to the bare JID: to every resource sharing the highest priority,
    not to lower ones."""
    s = w.sender()
    bare, r = w.recipient(s, {"a": 3, "b": 3, "lo": 0})
    s.send(message(bare, "chat", "chat"))
    settle(s, list(r.values()))
    assert got(r["a"], message_with("chat")) and got(r["b"], message_with("chat"))
    assert not got(r["lo"], message_with("chat"))


@row("8.5.2.1.1-groupchat-bounced")
def _(w: World) -> None:
    """A groupchat message to the bare JID is never delivered: service-unavailable."""
    s = w.sender()
    bare, r = w.recipient(s, {"hi": 5})
    s.send(message(bare, "groupchat", "room talk"))
    assert error_condition(s.wait(error_for("m1"))) == "service-unavailable"
    settle(s, list(r.values()))
    assert not got(r["hi"], message_with("room talk"))


@row("8.5.2.1.1-headline-to-every-non-negative")
def _(w: World) -> None:
    """A headline to the bare JID: to every resource of non-negative priority."""
    s = w.sender()
    bare, r = w.recipient(s, {"hi": 5, "zero": 0, "neg": -1})
    s.send(message(bare, "headline", "news"))
    settle(s, list(r.values()))
    assert got(r["hi"], message_with("news")) and got(r["zero"], message_with("news"))
    assert not got(r["neg"], message_with("news"))


@row("8.5.2.1.1-error-message-dropped")
def _(w: World) -> None:
    """A message of type error to the bare JID is silently dropped."""
    s = w.sender()
    bare, r = w.recipient(s, {"hi": 5})
    s.send(message(bare, "error", "an error"))
    settle(s, list(r.values()))
    assert not got(r["hi"], message_with("an error"))
    assert not got(s, error_for("m1"))


@row("8.5.2.1.2-presence-to-every-available")
def _(w: World) -> None:
    """Presence to the bare JID: to every available resource, negative priority
    included; not to a resource that sent no presence."""
    s = w.sender()
    bare, r = w.recipient(s, {"hi": 5, "neg": -1, "bound": None})
    s.send(f"<presence to='{bare}'><status>directed</status></presence>")
    settle(s, list(r.values()))
    directed = presence_with_status("directed")
    assert got(r["hi"], directed) and got(r["neg"], directed)
    assert not got(r["bound"], directed)


@row("8.5.2.1.2-subscribe-to-every-available")
def _(w: World) -> None:
    """A subscription request to the bare JID: to every available resource."""
    s = w.sender()
    bare, r = w.recipient(s, {"hi": 5, "neg": -1})
    s.send(f"<presence type='subscribe' to='{bare}'/>")
    r["hi"].wait(presence_from(s.bare, "subscribe"))
    r["neg"].wait(presence_from(s.bare, "subscribe"))


@row("8.5.2.1.2-probe-answered-by-the-server")
def _(w: World) -> None:
    """A probe is never shown to the contact's client; from someone not subscribed it
    gets no answer."""
    s = w.sender()
    bare, r = w.recipient(s, {"hi": 5})
    s.send(f"<presence type='probe' to='{bare}'/>")
    settle(s, list(r.values()))
    assert not got(r["hi"], lambda x: local(x) == "presence" and x.get("type") == "probe")
    assert s.quiet(presence_from(r["hi"].jid), 0.3)


@row("8.5.2.1.3-iq-answered-for-the-account")
def _(w: World) -> None:
    """An iq to the bare JID is answered by the server on the account's behalf (ping),
    not delivered to a resource."""
    s = w.sender()
    bare, r = w.recipient(s, {"hi": 5})
    answer = s.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=bare)
    assert answer.get("type") == "result" and answer.get("from") == bare
    settle(s, list(r.values()))
    assert not got(r["hi"], lambda x: local(x) == "iq")


@row("8.5.2.2.1-chat-no-available-resource")
def _(w: World) -> None:
    """A chat message to a user with no available resource (one bound without
    presence): not delivered to it; without offline storage, service-unavailable."""
    s = w.sender()
    bare, r = w.recipient(s, {"bound": None})
    s.send(message(bare, "chat", "anyone?"))
    assert error_condition(s.wait(error_for("m1"))) == "service-unavailable"
    settle(s, list(r.values()))
    assert not got(r["bound"], message_with("anyone?"))


@row("8.5.2.2.1-groupchat-no-available-resource")
def _(w: World) -> None:
    """A groupchat message to a user with no available resource: service-unavailable."""
    s = w.sender()
    bare, _ = w.recipient(s, {})
    s.send(message(bare, "groupchat", "room talk"))
    assert error_condition(s.wait(error_for("m1"))) == "service-unavailable"


@row("8.5.2.2.1-headline-no-available-resource")
def _(w: World) -> None:
    """A headline to a user with no available resource is dropped, no error."""
    s = w.sender()
    bare, r = w.recipient(s, {"bound": None})
    s.send(message(bare, "headline", "news"))
    settle(s, list(r.values()))
    assert not got(r["bound"], message_with("news")) and not got(s, error_for("m1"))


@row("8.5.2.2.2-presence-no-available-resource")
def _(w: World) -> None:
    """Presence to a user with no available resource is dropped."""
    s = w.sender()
    bare, r = w.recipient(s, {"bound": None})
    s.send(f"<presence to='{bare}'/>")
    settle(s, list(r.values()))
    assert not got(r["bound"], presence_from(s.jid))


@row("8.5.2.2.2-subscribe-stored-until-available")
def _(w: World) -> None:
    """A subscription request to a user with no available resource waits, and reaches
    the user's resource when it sends initial presence."""
    s = w.sender()
    bare, r = w.recipient(s, {"bound": None})
    s.send(f"<presence type='subscribe' to='{bare}'/>")
    settle(s, list(r.values()))
    assert not got(r["bound"], presence_from(s.bare, "subscribe"))
    r["bound"].send("<presence/>")
    r["bound"].wait(presence_from(s.bare, "subscribe"), what="the stored request")


@row("8.5.2.2.3-iq-no-available-resource")
def _(w: World) -> None:
    """An iq to the bare JID of a user with no session is answered for the account."""
    s = w.sender()
    bare, _ = w.recipient(s, {})
    answer = s.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=bare)
    assert answer.get("type") == "result"


@row("8.5.3.1-message-to-the-resource")
def _(w: World) -> None:
    """A message to a full JID with a session: to that resource only, whatever the
    priorities."""
    s = w.sender()
    _, r = w.recipient(s, {"hi": 5, "lo": -1})
    s.send(message(r["lo"].jid, None, "just you"))
    settle(s, list(r.values()))
    assert got(r["lo"], message_with("just you")) and not got(r["hi"], message_with("just you"))


@row("8.5.3.1-presence-to-the-resource")
def _(w: World) -> None:
    """Presence to a full JID with a session: to that resource (even one that sent no
    presence)."""
    s = w.sender()
    _, r = w.recipient(s, {"hi": 5, "bound": None})
    s.send(f"<presence to='{r['bound'].jid}'/>")
    r["bound"].wait(presence_from(s.jid))
    settle(s, list(r.values()))
    assert not got(r["hi"], presence_from(s.jid))


@row("8.5.3.1-iq-to-the-resource")
def _(w: World) -> None:
    """An iq to a full JID with a session goes to that resource, which answers."""
    s = w.sender()
    _, r = w.recipient(s, {"hi": 5})
    s.send(f"<iq type='get' id='q1' to='{r['hi'].jid}'><query xmlns='urn:example:q'/></iq>")
    asked = r["hi"].wait(lambda x: local(x) == "iq" and x.get("id") == "q1")
    assert asked.get("from") == s.jid
    r["hi"].send(f"<iq type='result' id='q1' to='{s.jid}'/>")
    s.wait(lambda x: local(x) == "iq" and x.get("id") == "q1" and x.get("type") == "result")


@row("8.5.3.2.1-chat-to-a-gone-resource")
def _(w: World) -> None:
    """A chat message to a full JID without a session goes as if to the bare JID."""
    s = w.sender()
    bare, r = w.recipient(s, {"hi": 5})
    s.send(message(f"{bare}/gone", "chat", "redirected"))
    r["hi"].wait(message_with("redirected"))


@row("8.5.3.2.1-normal-to-a-gone-resource")
def _(w: World) -> None:
    """A normal message to a full JID without a session: service-unavailable, not
    redirected."""
    s = w.sender()
    bare, r = w.recipient(s, {"hi": 5})
    s.send(message(f"{bare}/gone", None, "not redirected"))
    assert error_condition(s.wait(error_for("m1"))) == "service-unavailable"
    settle(s, list(r.values()))
    assert not got(r["hi"], message_with("not redirected"))


@row("8.5.3.2.1-groupchat-to-a-gone-resource")
def _(w: World) -> None:
    """A groupchat message to a full JID without a session: service-unavailable."""
    s = w.sender()
    bare, r = w.recipient(s, {"hi": 5})
    s.send(message(f"{bare}/gone", "groupchat", "room"))
    assert error_condition(s.wait(error_for("m1"))) == "service-unavailable"
    settle(s, list(r.values()))
    assert not got(r["hi"], message_with("room"))


@row("8.5.3.2.1-headline-to-a-gone-resource")
def _(w: World) -> None:
    """A headline to a full JID without a session is dropped: no error, not
    redirected."""
    s = w.sender()
    bare, r = w.recipient(s, {"hi": 5})
    s.send(message(f"{bare}/gone", "headline", "lost news"))
    settle(s, list(r.values()))
    assert not got(r["hi"], message_with("lost news")) and not got(s, error_for("m1"))


@row("8.5.3.2.2-presence-to-a-gone-resource")
def _(w: World) -> None:
    """Presence to a full JID without a session is dropped."""
    s = w.sender()
    bare, r = w.recipient(s, {"hi": 5})
    s.send(f"<presence to='{bare}/gone'/>")
    settle(s, list(r.values()))
    assert not got(r["hi"], presence_from(s.jid))


@row("8.5.3.2.2-subscribe-to-a-full-jid")
def _(w: World) -> None:
    """A subscription request to a full JID is handled as one to the bare JID (RFC 6121
    §3.1.3): every available resource gets it."""
    s = w.sender()
    bare, r = w.recipient(s, {"a": 5, "b": 1})
    s.send(f"<presence type='subscribe' to='{bare}/gone'/>")
    for session in r.values():
        session.wait(presence_from(s.bare, "subscribe"))


@row("8.5.3.2.3-iq-to-a-gone-resource")
def _(w: World) -> None:
    """An iq to a full JID without a session: service-unavailable."""
    s = w.sender()
    bare, _ = w.recipient(s, {"hi": 5})
    answer = s.iq("get", "<query xmlns='urn:example:q'/>", to=f"{bare}/gone")
    assert error_condition(answer) == "service-unavailable"


@pytest.mark.parametrize("topology", ["same-node", "cross-node"])
@pytest.mark.parametrize("rule", list(ROWS))
def test_delivery_rule(cluster, topology, rule):
    """One row of RFC 6121 §8.5 (the row's docstring says which behaviour)."""
    a, b = cluster
    world = World(a.c2s_port, a.c2s_port if topology == "same-node" else b.c2s_port)
    try:
        ROWS[rule](world)
    finally:
        world.close()
