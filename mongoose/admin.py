"""The admin actor of a worker: what ``mongoose`` commands and the shell ask of the XMPP side.

One per worker process, registered as ``admin`` (child of ``worker_sup`` after
``xmpp_services``, whose server context it uses). It answers asks with plain data, or
raises :class:`AdminError` with a message for the operator (the asker gets it as the
exception of its future). Requests::

    ("sessions", user_or_jid | None, host | None)   -> [session]   from this worker's
                                                       replica of the session table,
                                                       so every worker sees all of them
    ("kick", jid, reason)            -> n            sessions of a bare or full JID told
                                                       to end their stream
                                                       (policy-violation, the reason as
                                                       its text), wherever they are
    ("route", from, to, xml)         -> packet name   a stanza injected as if ``from``
                                                       had sent it (``mongoose stanza send``)
    ("account", op, args)            -> result        register / unregister / passwd /
                                                       check / list / count, on this
                                                       worker's account store (off the loop)
    ("trace", jid, collector, s)     -> n             copy ``jid``'s stanzas to the
                                                       collector actor for ``s`` seconds
                                                       (:mod:`mongoose.trace`); n: sessions
                                                       traced here now
    ("untrace", collector)           -> None

A session is ``{"jid", "pid", "node", "worker", "priority"}``. Unregistering an account
also kicks its sessions (the account is gone; its streams must not live on).

Blocking work (the account store) runs on :mod:`otp.blocking` and the actor awaits it:
the loop never blocks, and other requests to this actor queue meanwhile (they are rare,
operator-driven calls).
"""

from __future__ import annotations

import logging
from typing import Any

import otp
from mongoose import packet as packet_mod
from mongoose import router, sm, trace
from mongoose.hooks import hooks
from mongoose.server import current as current_server
from mongoose.xmpp import ns
from mongoose.xmpp.jid import JID, InvalidJID
from otp import blocking

__all__ = ["NAME", "AdminActor", "AdminError", "account_op", "kick", "route", "sessions"]

NAME = "admin"

MAX_TRACE_SECONDS = 3600.0

log = logging.getLogger(__name__)


class AdminError(Exception):
    """A request that cannot be done; the message says why, for the operator."""


class AdminActor(otp.LoopActor):
    """Answers the admin requests of the module docstring."""

    def on_start(self) -> None:
        otp.register(NAME, self.pid)
        self.trace_monitors: dict[otp.Pid, otp.Ref] = {}

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, otp.Down):
            if self.trace_monitors.pop(message.pid, None) is not None:
                trace.unwatch(message.pid)
            return None
        if not isinstance(message, tuple | list) or not message:
            return super().on_receive(message)
        kind, args = message[0], tuple(message[1:])
        if kind == "sessions":
            return sessions(*args)
        if kind == "kick":
            return kick(*args)
        if kind == "route":
            return route(*args)
        if kind == "account":
            return self._account(*args)
        if kind == "trace":
            return self._trace(*args)
        if kind in ("untrace", "trace_end"):
            self._untrace(args[0])
            return None
        return super().on_receive(message)

    # -- tracing ---------------------------------------------------------------------------

    def _trace(self, jid_text: str, collector: otp.Pid, seconds: float) -> int:
        jid = _jid(jid_text)
        if not jid.local:
            raise AdminError(f"{jid_text}: trace a user's JID (user@host[/resource])")
        seconds = min(float(seconds), MAX_TRACE_SECONDS)
        if collector not in self.trace_monitors:
            self.trace_monitors[collector] = self.monitor(collector)
        self.send_after(seconds, ("trace_end", collector))
        return trace.watch(jid, collector)

    def _untrace(self, collector: otp.Pid) -> None:
        mref = self.trace_monitors.pop(collector, None)
        if mref is not None:
            self.demonitor(mref)
        trace.unwatch(collector)

    # -- accounts --------------------------------------------------------------------------

    async def _account(self, op: str, args: list[Any]) -> Any:
        server = current_server()
        hosts, default = server.config.general.hosts, server.config.default_domain
        cleanups: list[Any] = []
        if op == "unregister":
            # The modules' data of the account (roster, offline messages, vCard...) goes
            # with it, as with an in-band removal (mod_register).
            user, host = account_name(hosts, default, args[0])
            cleanups = hooks.run("remove_user", [], host, user=user, server=host)
        result = await blocking.run(account_op, server.store, hosts, default, op, list(args),
                                    cleanups)
        if op == "unregister":
            kick(result, "account removed")
        return result


def account_name(hosts: Any, default_host: str, text: str) -> tuple[str, str]:
    """(user, host) of an account's JID as typed, normalised; AdminError if it is not
    USER@HOST of a host this node serves."""
    from mongoose.auth.accounts import InvalidUser, normalize_user

    name, at, domain = str(text).partition("@")
    if not at or not domain or "/" in domain:
        raise AdminError(f"bad JID {text!r}: expected USER@HOST")
    host = served_host(hosts, default_host, domain)
    try:
        return normalize_user(name), host
    except InvalidUser as error:
        raise AdminError(f"bad JID {text!r}: {error}") from None


def account_op(store: Any, hosts: Any, default_host: str, op: str, args: list[Any],
               cleanups: list[Any] = ()) -> Any:  # type: ignore[assignment]
    """One account operation on ``store`` (blocking; the admin actor runs it off the
    loop, ``mongoose account`` directly when no node runs). ``args``: a JID, then a
    password for register, passwd and check; a host or None for list and count.
    ``cleanups``: for unregister, the ``remove_user`` hook's callables deleting the
    account's data, run once the account is gone (one that fails is logged).
    Returns the account's JID, whether the password matched (check), the users (list)
    or their number (count); :class:`AdminError` for anything refused."""
    from mongoose.auth import scram
    from mongoose.auth.accounts import AccountError, InvalidUser, NoSuchAccount
    from mongoose.storage import StorageError

    try:
        if op in ("list", "count"):
            host = served_host(hosts, default_host, args[0] if args else None)
            return store.list_users(host) if op == "list" else store.count(host)
        user, host = account_name(hosts, default_host, args[0])
        account = f"{user}@{host}"
        if op == "register":
            store.register(user, host, password(args[1]))
        elif op == "passwd":
            store.set_password(user, host, password(args[1]))
        elif op == "unregister":
            if not store.unregister(user, host):
                raise NoSuchAccount(account)
            for cleanup in cleanups:
                try:
                    cleanup()
                except Exception:
                    log.exception("cleaning up after a removed account failed", extra={
                        "what": "remove_user_cleanup_failed", "jid": account})
        elif op == "check":
            secrets = store.get_secrets(user, host)
            return secrets is not None and scram.check_password(secrets, args[1])
        else:
            raise AdminError(f"unknown account operation {op!r}")
        return account
    except (AccountError, InvalidUser) as error:
        raise AdminError(str(error)) from None
    except StorageError as error:
        raise AdminError(f"the account store failed: {error}") from None


def sessions(user: str | None = None, host: str | None = None) -> list[dict[str, Any]]:
    """Sessions from the local replica: of one account (``user`` a bare or full JID, or a
    user name of ``host``), of one host, or all; sorted by JID."""
    table = sm.table()
    if user is not None:
        jid = _jid(user if "@" in user or host is None else f"{user}@{host}")
        records = [r for r in table.lookup(jid.bare_str)
                   if jid.resource is None or r[1] == jid.resource]
    else:
        records = table.all()
        if host is not None:
            suffix = "@" + host.lower()
            records = [r for r in records if r[0].endswith(suffix)]
    found = [{"jid": f"{r[0]}/{r[1]}", "pid": r[2], "node": r[2][0], "worker": r[2][1],
              "priority": r[3]} for r in records]
    return sorted(found, key=lambda s: s["jid"])


def kick(jid_text: str, reason: str = "kicked by the administrator") -> int:
    """Tell every session of a bare or full JID to end its stream; returns how many."""
    found = sessions(jid_text)
    for session in found:
        otp.send(session["pid"], ("kick", reason))
    if found:
        log.info("sessions kicked", extra={"what": "admin_kick", "jid": jid_text,
                                           "sessions": len(found), "reason": reason})
    return len(found)


def route(from_text: str, to_text: str, xml: str) -> str:
    """Route ``xml`` (a message, presence or iq) from ``from_text`` to ``to_text``."""
    from lxml import etree

    from_jid, to_jid = _jid(from_text), _jid(to_text)
    if not router.is_local(from_jid.domain):
        raise AdminError(f"{from_jid.domain} is not a host of this node")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    # Parsed inside a jabber:client element, as on a client stream: a stanza without
    # its own xmlns is jabber:client's.
    try:
        wrapper = etree.fromstring(f"<s xmlns='{ns.CLIENT}'>{xml}</s>".encode(), parser)
    except etree.XMLSyntaxError as error:
        raise AdminError(f"the stanza is not well-formed XML: {error}") from None
    if len(wrapper) != 1:
        raise AdminError("give exactly one stanza")
    el = wrapper[0]
    if not isinstance(el.tag, str):
        raise AdminError("not a stanza: expected message, presence or iq")
    qname = etree.QName(el)
    namespace, name = qname.namespace or "", qname.localname
    if namespace != ns.CLIENT or name not in ("message", "presence", "iq"):
        raise AdminError(f"not a stanza: <{name}> in {namespace!r} (expected message, "
                         "presence or iq)")
    packet = packet_mod.from_element(el, str(from_jid), str(to_jid))
    router.route(packet)
    return name


def _jid(text: str) -> JID:
    try:
        return JID.parse(text)
    except InvalidJID as error:
        raise AdminError(f"bad JID {text!r}: {error}") from None


def served_host(hosts: Any, default_host: str, host: str | None) -> str:
    """``host`` if this node serves it (lower-cased), the default one if None; ``hosts``
    in the config's order (the refusal lists them)."""
    if host is None:
        return default_host
    if host.lower() not in hosts:
        served = ", ".join(hosts)
        raise AdminError(f"{host} is not a host of this node (general.hosts: {served})")
    return host.lower()


def password(text: str) -> str:
    from mongoose.auth.scram import prepare

    try:
        if not prepare(text):
            raise AdminError("the password is empty")
    except ValueError as error:
        raise AdminError(str(error)) from None
    return text
