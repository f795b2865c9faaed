"""mod_register: XEP-0077 In-Band Registration: new accounts, password change, removal.

Off unless ``[modules.mod_register]`` is configured. Three uses of ``jabber:iq:register``:

Registration, before login
    The session offers ``<register xmlns='http://jabber.org/features/iq-register'/>``
    among its stream features before authentication (where it offers SASL: after
    STARTTLS on a listener that requires it), and passes an iq it receives then to the
    ``c2s_unauthenticated_iq`` hook; every other iq before login still ends the stream
    (:mod:`mongoose.c2s`). A ``get`` returns the form (instructions, ``<username/>``,
    ``<password/>``); a ``set`` with both creates the account, and the client goes on to
    authenticate on the same stream. Refusals:

    * ``not-allowed``: the client's address matches no ``ip_access`` rule with
      ``policy = "allow"`` (the first matching rule decides; none matching is a
      refusal: see :class:`mongoose.config.ModRegister`). The form is refused too.
    * ``not-acceptable``: a missing or empty username or password (XEP-0077 §3.1), a
      password weaker than ``password_strength`` bits, or a second registration on the
      same connection (§3.1.1 allows refusing it; one connection, one account).
    * ``jid-malformed``: a user name that cannot be the local part of a JID.
    * ``conflict``: the account exists.

    Each answered iq restarts the session's negotiation deadline, so a person typing
    into a registration form is not cut off by ``state_timeout``.

Password change, after login
    A ``set`` with ``<username/>`` (optional; when present it must be the user's own,
    else ``not-allowed``) and a non-empty ``<password/>`` (else ``bad-request``: the
    XEP forbids changing to an empty password), addressed to the server or to the
    user's own bare JID. Weak passwords get ``not-acceptable``. A ``get`` after login
    answers ``<registered/>`` with the user name. Error replies to these never echo the
    request (it carries a password; XEP-0077 §3.3).

Removal (``<remove/>``, alone in the query, else ``bad-request``)
    Deletes the account, then runs the ``remove_user`` hook's clean-ups (each module's
    data: offline messages, vCard, private XML, last activity, ...), answers the
    request, and ends every session of the account with a ``not-authorized`` stream
    error (XEP-0077 §3.2). The answer and the stream error go to the asking session in
    that order (both from here, so the session gets them in order).

``remove_user`` hook (run here; also what an operator's account removal should run)
    acc: a list of blocking callables, params: ``user``, ``server``. Each handler
    appends what deletes its data (``functools.partial(store.remove_user, user,
    server)``); the
    callables run on the blocking pool after the account row is gone, one after another;
    one that fails is logged (``what=remove_user_cleanup_failed``) and the rest still run.

Password strength: the entropy of a password is its length times log2 of the size of
the alphabet it draws on: the sum of 26 for lower-case letters, 26 upper-case, 10
digits, 33 ASCII punctuation and space, 128 for anything else (the classes present).

Instrumentation: ``mod_register_registered`` and ``mod_register_removed``
{host_type}: ``count`` (spiral), one per account created or removed in-band.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import weakref
from typing import Any

from lxml import etree

import otp
from mongoose import instrument, iq, sm
from mongoose import packet as packet_mod
from mongoose.hooks import Stop, hooks
from mongoose.modules import offloop
from mongoose.xmpp import ns
from otp import blocking

XEPS = ("0077",)
FEATURES = (ns.REGISTER,)
FEATURE_NS = "http://jabber.org/features/iq-register"

log = logging.getLogger(__name__)

_accounts: Any = None
_rules: tuple[tuple[Any, bool], ...] = ()  # (network, allowed)
_strength = 0
_serializer = offloop.Serializer("mod_register")
# Connections that registered an account already (one each).
_registered_on: weakref.WeakSet[Any] = weakref.WeakSet()
_sinks: dict[str, tuple[Any, Any]] = {}
_ONE = {"count": 1}


def _q(name: str) -> str:
    return f"{{{ns.REGISTER}}}{name}"


# -- policy --------------------------------------------------------------------------------


def allowed_address(ip: str) -> bool:
    """Whether a client at ``ip`` may register (the first matching rule decides)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    for network, allow in _rules:
        if address.version == network.version and address in network:
            return allow
    return False


def entropy(password: str) -> float:
    """Bits of entropy of ``password`` (see the module docstring)."""
    lower = upper = digit = punct = other = False
    for char in password:
        if "a" <= char <= "z":
            lower = True
        elif "A" <= char <= "Z":
            upper = True
        elif "0" <= char <= "9":
            digit = True
        elif " " <= char <= "~":
            punct = True
        else:
            other = True
    alphabet = 26 * lower + 26 * upper + 10 * digit + 33 * punct + 128 * other
    return len(password) * math.log2(alphabet) if alphabet else 0.0


def _password_problem(password: str) -> str | None:
    """Why ``password`` cannot be used, or None."""
    from mongoose.auth.scram import prepare

    try:
        prepare(password)
    except ValueError as error:
        return str(error)
    if _strength and entropy(password) < _strength:
        return "the password is too weak"
    return None


# -- before login --------------------------------------------------------------------------


def _stream_features(acc: list[Any], params: dict[str, Any]) -> list[Any]:
    return [*acc, etree.Element(f"{{{FEATURE_NS}}}register", nsmap={None: FEATURE_NS})]


def _unauthenticated_iq(acc: Any, params: dict[str, Any]) -> Any:
    stanza = params["iq"]
    children = [c for c in stanza if isinstance(c.tag, str)]
    if len(children) != 1 or children[0].tag != _q("query"):
        return acc
    host = params["domain"]
    if stanza.get("type") not in ("get", "set"):
        return acc  # a result or an error before login: nothing we asked for
    if not allowed_address(params["ip"]):
        log.info("registration refused", extra={
            "what": "mod_register_refused", "ip": params["ip"], "reason": "ip_access"})
        return Stop(_error(stanza, "not-allowed", "registration is not allowed from "
                           "your address"))
    if stanza.get("type") == "get":
        return Stop(iq.result(stanza, _form()))
    query = children[0]
    if query.find(_q("remove")) is not None:
        return Stop(_error(stanza, "not-authorized", "log in to remove your account"))
    name = (query.findtext(_q("username")) or "").strip()
    password = query.findtext(_q("password")) or ""
    if not name or not password:
        return Stop(_error(stanza, "not-acceptable", "a username and a password are needed"))
    user = _user_name(name, host)
    if user is None:
        return Stop(_error(stanza, "jid-malformed", "not a valid user name"))
    problem = _password_problem(password)
    if problem is not None:
        return Stop(_error(stanza, "not-acceptable", problem))
    c2s = params["c2s"]
    if c2s in _registered_on:
        return Stop(_error(stanza, "not-acceptable", "one registration per connection"))
    return Stop(_register(stanza, c2s, user, host, password, params["ip"]))


def _user_name(name: str, host: str) -> str | None:
    from mongoose.auth.accounts import InvalidUser, normalize_user
    from mongoose.xmpp.jid import JID, InvalidJID

    try:
        user = normalize_user(name)
        jid = JID.parse(f"{user}@{host}")
    except (InvalidUser, InvalidJID):
        return None
    return jid.local


def _form() -> etree._Element:
    query = etree.Element(_q("query"), nsmap={None: ns.REGISTER})
    etree.SubElement(query, _q("instructions")).text = (
        "Choose a user name and password to register with this server.")
    etree.SubElement(query, _q("username"))
    etree.SubElement(query, _q("password"))
    return query


async def _register(stanza: Any, c2s: Any, user: str, host: str, password: str,
                    ip: str) -> etree._Element:
    from mongoose.auth.accounts import AccountExists
    from mongoose.storage import StorageUnavailable

    try:
        await blocking.run(_accounts.register, user, host, password)
    except AccountExists:
        return _error(stanza, "conflict", "the user name is taken")
    except StorageUnavailable:
        return _error(stanza, "internal-server-error", "storage is unavailable", "wait")
    except Exception:
        log.exception("in-band registration failed", extra={
            "what": "mod_register_failed", "jid": f"{user}@{host}"})
        return _error(stanza, "internal-server-error")
    _registered_on.add(c2s)
    _sink(host)[0].emit(_ONE)
    log.info("account registered in-band", extra={
        "what": "mod_register_registered", "jid": f"{user}@{host}", "ip": ip})
    return iq.result(stanza)


def _error(stanza: Any, condition: str, text: str | None = None,
           type: str | None = None) -> etree._Element:
    return offloop.error_reply(stanza, condition, text, type, echo=False)


# -- after login ---------------------------------------------------------------------------


def _registered(stanza: Any, from_jid: str, to_jid: str) -> Any:
    bare = from_jid.partition("/")[0]
    if "@" in to_jid and to_jid.partition("/")[0] != bare:
        return _error(stanza, "forbidden", "not your account")
    user, _, host = bare.rpartition("@")
    query = stanza[0]
    if stanza.get("type") == "get":
        reply = etree.Element(_q("query"), nsmap={None: ns.REGISTER})
        etree.SubElement(reply, _q("registered"))
        etree.SubElement(reply, _q("username")).text = user
        etree.SubElement(reply, _q("password"))
        return iq.result(stanza, reply)
    children = [c for c in query if isinstance(c.tag, str)]
    if query.find(_q("remove")) is not None:
        if len(children) != 1:
            return _error(stanza, "bad-request", "<remove/> comes alone")
        _remove(stanza, from_jid, to_jid, user, host)
        return None
    name = query.findtext(_q("username"))
    password = query.findtext(_q("password")) or ""
    if not password:
        return _error(stanza, "bad-request", "a new password is needed")
    if name is not None and _user_name(name.strip(), host) != user:
        return _error(stanza, "not-allowed", "a user changes only its own password")
    problem = _password_problem(password)
    if problem is not None:
        return _error(stanza, "not-acceptable", problem)
    offloop.answer_iq(_serializer, bare, stanza, from_jid, to_jid, _change_password,
                      stanza, user, host, password)
    return None


def _change_password(stanza: Any, user: str, host: str, password: str) -> Any:
    from mongoose.auth.accounts import NoSuchAccount

    try:
        _accounts.set_password(user, host, password)
    except NoSuchAccount:
        return _error(stanza, "registration-required")
    log.info("password changed in-band", extra={
        "what": "mod_register_password_changed", "jid": f"{user}@{host}"})
    return iq.result(stanza)


def _remove(stanza: Any, from_jid: str, to_jid: str, user: str, host: str) -> None:
    bare = f"{user}@{host}"
    cleanups = hooks.run("remove_user", [], host, user=user, server=host)

    def done(future: otp.LoopFuture[Any]) -> None:
        try:
            removed = future.get(timeout=0)
        except Exception as error:
            reply = offloop.failure_reply(stanza, error, "mod_register")
            _route(reply, to_jid, from_jid)
            return
        if not removed:
            _route(_error(stanza, "registration-required"), to_jid, from_jid)
            return
        _sink(host)[1].emit(_ONE)
        log.info("account removed in-band", extra={"what": "mod_register_removed",
                                                   "jid": bare})
        reply = packet_mod.from_element(iq.result(stanza), to_jid, from_jid)
        resource = from_jid.partition("/")[2]
        for record in sm.sessions(bare):
            if record[1] == resource:
                otp.send(record[2], ("route", reply))
            otp.send(record[2], ("kick", "the account was removed", "not-authorized"))

    _serializer.submit(bare, _delete_account, user, host, cleanups, done=done)


def _delete_account(user: str, host: str, cleanups: list[Any]) -> bool:
    """Delete the account, then its data (runs on the pool); False if it was gone."""
    if not _accounts.unregister(user, host):
        return False
    for cleanup in cleanups:
        try:
            cleanup()
        except Exception:
            log.exception("cleaning up after a removed account failed", extra={
                "what": "remove_user_cleanup_failed", "jid": f"{user}@{host}"})
    return True


def _route(reply: etree._Element, from_jid: str, to_jid: str) -> None:
    from mongoose import router

    router.route(packet_mod.from_element(reply, from_jid, to_jid))


# -- module --------------------------------------------------------------------------------


def _sink(host: str) -> tuple[Any, Any]:
    sinks = _sinks.get(host)
    if sinks is None:
        labels = {"host_type": host}
        sinks = _sinks[host] = (instrument.prepared("mod_register_registered", labels),
                                instrument.prepared("mod_register_removed", labels))
    return sinks


def start(config: Any, module_config: Any) -> None:
    global _accounts, _rules, _strength
    from mongoose.server import current

    _accounts = current().store
    _rules = tuple((ipaddress.ip_network(rule.address), rule.policy == "allow")
                   for rule in module_config.ip_access)
    _strength = module_config.password_strength
    for name in ("mod_register_registered", "mod_register_removed"):
        instrument.register(name, ("host_type",), {"count": "spiral"}, log_level="info")
    _sinks.clear()
    for host in config.general.hosts:
        _sink(host)
    hooks.add("c2s_unauthenticated_features", _stream_features, module="mod_register")
    hooks.add("c2s_unauthenticated_iq", _unauthenticated_iq, module="mod_register")
    iq.register("server", ns.REGISTER, _registered)
    iq.register("account", ns.REGISTER, _registered)


def stop() -> None:
    iq.unregister("server", ns.REGISTER)
    iq.unregister("account", ns.REGISTER)
    hooks.remove_module("mod_register")
