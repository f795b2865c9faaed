"""Helpers for the IM module tests (carbons, blocking, privacy lists): clients that record
every stanza, a two-node cluster, probes that wait for the session tables to catch up,
and a check that no node logged a crashed handler.

The XEP plugins are imported here, on the main thread (see ast_lock.py), before any
client registers them on the loop thread.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree

import slixmpp.plugins.xep_0016
import slixmpp.plugins.xep_0191
import slixmpp.plugins.xep_0280  # noqa: F401
from dist_harness import MongooseNode
from helpers import wait_until
from lxml import etree
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath
from xmpp_client import Client, ClientLoop
from xmpp_harness import DOMAIN, PASSWORD, register, xmpp_node

CLIENT = "jabber:client"
CARBONS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"
BLOCKING = "urn:xmpp:blocking"
PRIVACY = "jabber:iq:privacy"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


class ImClient(Client):
    """A :class:`Client` that also keeps every message, iq set and presence it gets as
    XML (``stanzas``), with the XEP plugins the test asks for."""

    def __init__(self, loop: ClientLoop, jid: str, *, port: int,
                 plugins: tuple[str, ...] = ()) -> None:
        super().__init__(loop, jid, PASSWORD, port=port)
        self.stanzas: list[etree._Element] = []

        async def setup() -> None:
            for plugin in plugins:
                self.xmpp.register_plugin(plugin)
            for name, path in (("all messages", f"{{{CLIENT}}}message"),
                               ("all iq sets", f"{{{CLIENT}}}iq"),
                               ("all presence", f"{{{CLIENT}}}presence")):
                self.xmpp.register_handler(Callback(name, MatchXPath(path), self._keep))

        loop.run(setup())

    def _keep(self, stanza: Any) -> None:
        if stanza.xml.tag != f"{{{CLIENT}}}iq" or stanza.xml.get("type") == "set":
            self.stanzas.append(etree.fromstring(ElementTree.tostring(stanza.xml)))

    def presence(self, priority: int | None = None, to: str | None = None,
                 kind: str | None = None) -> None:
        self.loop.call(lambda: self.xmpp.send_presence(
            ppriority=priority, pto=to, ptype=kind))

    def messages_where(self, predicate: Callable[[etree._Element], bool]) -> list[Any]:
        return [s for s in list(self.stanzas)
                if s.tag == f"{{{CLIENT}}}message" and predicate(s)]

    def bodies_from(self, sender_bare: str) -> list[str]:
        """Bodies of plain messages (not carbons, errors or :func:`wait_reachable`'s
        probes) from ``sender_bare``."""
        return [body for s in self.messages_where(
            lambda s: s.get("from", "").partition("/")[0] == sender_bare
            and s.get("type") != "error")
            if (body := s.findtext(f"{{{CLIENT}}}body")) is not None
            and not body.startswith("probe")]

    def errors_for(self, body: str) -> list[etree._Element]:
        """Error messages that echo a message with ``body``."""
        return self.messages_where(lambda s: s.get("type") == "error"
                                   and s.findtext(f"{{{CLIENT}}}body") == body)

    def carbons(self, direction: str) -> list[etree._Element]:
        """The messages forwarded in ``<sent/>`` or ``<received/>`` carbons."""
        found = []
        for s in self.messages_where(lambda s: s.find(f"{{{CARBONS}}}{direction}") is not None):
            forwarded = s.find(f"{{{CARBONS}}}{direction}/{{{FORWARD}}}forwarded")
            found.append(forwarded.find(f"{{{CLIENT}}}message"))
        return found

    def carbon_bodies(self, direction: str) -> list[str]:
        return [m.findtext(f"{{{CLIENT}}}body") for m in self.carbons(direction)]

    def presences_from(self, jid: str) -> list[etree._Element]:
        return [s for s in list(self.stanzas) if s.tag == f"{{{CLIENT}}}presence"
                and s.get("from") == jid]

    def iq_sets(self, child: str) -> list[etree._Element]:
        return [s for s in list(self.stanzas) if s.tag == f"{{{CLIENT}}}iq"
                and s.find(child) is not None]

    def query(self, xml: str, timeout: float = 10.0) -> etree._Element:
        """Send an iq (XML text, no id) and return the answer as XML."""
        def build(xmpp: Any) -> Any:
            stanza = xmpp.Iq(xml=etree_to_stanza(xml))
            stanza["id"] = xmpp.new_id()
            return stanza
        answer = self.iq(build, timeout=timeout)
        return etree.fromstring(ElementTree.tostring(answer.xml))


def etree_to_stanza(xml: str) -> Any:
    """XML text as the ElementTree element slixmpp stanzas are built on."""
    element = ElementTree.fromstring(xml)
    if not element.tag.startswith("{"):
        element.tag = f"{{{CLIENT}}}{element.tag}"
    return element


def login(loop: ClientLoop, clients: list[Client], jid: str, port: int, *,
          plugins: tuple[str, ...] = (), presence: bool = True) -> ImClient:
    client = ImClient(loop, jid, port=port, plugins=plugins)
    clients.append(client)
    client.connect(presence=presence)
    return client


def error_condition(stanza: etree._Element) -> str | None:
    """The defined condition of an error stanza, None for a result."""
    error = stanza.find(f"{{{CLIENT}}}error")
    if error is None:
        return None
    return next((etree.QName(c).localname for c in error
                 if etree.QName(c).namespace == STANZAS and etree.QName(c).localname != "text"),
                None)


def wait_reachable(sender: Client, target: ImClient, to: str | None = None,
                   timeout: float = 20.0) -> None:
    """Headline probes from ``sender`` until one reaches ``target`` (at ``to``, its own
    JID by default): the session tables replicate between workers and nodes, and the
    sender's worker may see a new session or presence a moment late. Headlines never
    bounce; the probes stay in ``target.stanzas`` (their bodies start with 'probe')."""
    probes = iter(range(1_000_000))

    def arrived() -> bool:
        return any((s.findtext(f"{{{CLIENT}}}body") or "").startswith("probe")
                   and s.get("from") == sender.jid for s in list(target.stanzas))

    def reachable() -> bool:
        sender.send_message(to or target.jid, f"probe{next(probes)}", mtype="headline")
        try:
            wait_until(arrived, timeout=0.2)
        except AssertionError:
            return False
        return True

    wait_until(reachable, timeout=timeout, what=lambda: f"{target.jid} reachable")


def two_nodes(directory: Any, keys_file: str, users: tuple[str, ...],
              modules_toml: str) -> tuple[MongooseNode, MongooseNode]:
    """Two clustered nodes serving ``localhost`` with ``modules_toml``; ``users``
    registered on both (each node has its own embedded store)."""
    a = xmpp_node(directory, "ima@localhost", keys_file, users=users, extra_toml=modules_toml)
    try:
        b = xmpp_node(directory, "imb@localhost", keys_file, users=users,
                      extra_toml=modules_toml, seeds=[a.address.removeprefix("tcp://")])
    except BaseException:
        a.kill()
        raise
    return a, b


def assert_no_crashes(*nodes: MongooseNode) -> None:
    """No node logged a crashed hook or iq handler, or a failed blocking job."""
    bad = ("hook_handler_crashed", "iq_handler_crashed", "offloop_job_failed",
           "privacy_request_failed", "privacy_list_read_failed")
    for node in nodes:
        while True:
            try:
                node.seen.append(node.events.get_nowait())
            except queue.Empty:
                break
        crashes = [e for e in node.seen if e.get("what") in bad]
        assert not crashes, crashes


__all__ = ["BLOCKING", "CARBONS", "CLIENT", "DOMAIN", "PRIVACY", "ImClient",
           "assert_no_crashes", "error_condition", "login", "register", "two_nodes",
           "wait_reachable"]
