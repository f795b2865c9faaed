"""Hooks: the only way modules extend the core (after MongooseIM's ``gen_hook``).

A hook is a name (``user_send_packet``, ``offline_message``, ...) with a list of handlers
sorted by priority (lower runs first; ties in registration order). Running a hook is a
fold: each handler gets the accumulator and the hook's parameters and returns

* a new accumulator (or the same one): the next handler runs with it;
* ``Stop(acc)``: no further handler runs and ``acc`` is the result.

A handler that raises is logged (``what=hook_handler_crashed``) and skipped: the fold
goes on with the accumulator it had, so one broken module cannot take a session or a
router shard down with it.

Handlers are registered per host (an XMPP domain) or for every host (``host=None``).
Registries are per process: each worker starts the same modules from the same config,
so every worker has the same handlers. Running a hook with no handler costs a dict
lookup; callers on the per-message path check :meth:`Hooks.has` first when building the
parameters costs something.

The hooks the core runs, with their accumulator and parameters, are listed in
:data:`CORE_HOOKS`; modules may define more.
"""

from __future__ import annotations

import logging
from bisect import insort
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CORE_HOOKS", "Hooks", "Stop", "hooks"]

log = logging.getLogger(__name__)

Handler = Callable[[Any, dict[str, Any]], Any]

CORE_HOOKS = {
    "user_send_packet": "acc: the stanza element from the client (Stop drops it); "
    "params: c2s (the session), from_jid, to_jid",
    "user_receive_packet": "acc: the routed packet about to be written to the client (Stop "
    "drops it); params: c2s, packet",
    "filter_local_packet": "acc: the packet about to be delivered on this server (Stop drops "
    "it); params: none",
    "offline_message": "acc: 'bounce' (the default: the sender gets service-unavailable) or "
    "'stored'/'dropped'; params: packet (nobody online could take it)",
    "user_available": "acc: None; params: jid (full), c2s: a session sent initial presence",
    "unset_presence": "acc: None; params: jid, status: a session went unavailable",
    "sm_register_connection": "acc: None; params: jid, pid: a session is bound",
    "sm_remove_connection": "acc: None; params: jid, pid, reason: a session ended",
    "c2s_stream_features": "acc: list of feature elements after login; params: host",
    "c2s_unauthenticated_features": "acc: list of feature elements offered before login "
    "(where SASL is offered); params: c2s",
    "c2s_unauthenticated_iq": "acc: None; an iq before login: Stop(reply element, or an "
    "awaitable of one) answers it, no handler ends the stream; params: c2s, iq, domain, ip",
    "remove_user": "acc: list of blocking callables deleting the account's data, run off "
    "the loop after the account is deleted (mod_register); params: user, server",
    "disco_local_features": "acc: list of namespaces for the server's disco#info; params: host",
    "disco_local_items": "acc: list of (jid, name) for the server's disco#items; params: host",
    "roster_get": "acc: list of RosterItems; params: jid (bare). Blocking: run it on the "
    "blocking pool (mod_roster; mod_presence reads rosters with it)",
    "roster_out_subscription": "acc: None; the user sent a subscription stanza: the roster "
    "item's new state (a roster Change, or a RosterFull error); params: user, contact (bare "
    "JIDs), type, status. Blocking, as roster_get",
    "roster_in_subscription": "acc: None; as roster_out_subscription, for a subscription "
    "stanza from the contact to the user",
    "user_presence_update": "acc: set of bare JIDs the presence went to; params: c2s, "
    "element, initial, available (and, when available, priority and previous: the "
    "session's priority before, None if it had none): a session's own presence (no "
    "'to'), after its resources got it (mod_presence broadcasts to subscribers)",
    "presence_probe": "acc: False; params: c2s, from_jid: may the prober see this available "
    "session's presence (True: the session answers the probe)",
    "foreign_event": "acc: None; params: c2s, event: a module's message to a session, sent "
    "as ('foreign', event) (mod_roster's roster pushes)",
    "inbound_subscription": "acc: None; params: packet: a subscription stanza for a local "
    "user, in the router; a blocking job (whose result, a function, the router runs after) "
    "or None for the default delivery",
    "sm_sessions_lost": "acc: None; params: records: session records of a lost process, "
    "in one designated process (mongoose.sm)",
}


@dataclass(frozen=True, slots=True)
class Stop:
    """Returned by a handler to end the fold with ``acc``."""

    acc: Any


@dataclass(order=True)
class _Entry:
    priority: int
    seq: int
    handler: Handler = field(compare=False)
    module: str = field(compare=False, default="")


class Hooks:
    """A per-process hook registry (see the module docstring)."""

    def __init__(self) -> None:
        self._handlers: dict[tuple[str, str | None], list[_Entry]] = {}
        self._seq = 0

    def add(self, name: str, handler: Handler, *, priority: int = 50,
            host: str | None = None, module: str = "") -> None:
        """Register ``handler`` for hook ``name`` on ``host`` (None: every host)."""
        self._seq += 1
        insort(self._handlers.setdefault((name, host), []),
               _Entry(priority, self._seq, handler, module))

    def remove(self, name: str, handler: Handler, *, host: str | None = None) -> None:
        entries = self._handlers.get((name, host), [])
        entries[:] = [e for e in entries if e.handler is not handler]

    def remove_module(self, module: str) -> None:
        """Unregister every handler a module registered (a module being stopped)."""
        for entries in self._handlers.values():
            entries[:] = [e for e in entries if e.module != module]

    def has(self, name: str, host: str | None = None) -> bool:
        return bool(self._handlers.get((name, None)) or
                    (host is not None and self._handlers.get((name, host))))

    def run(self, name: str, acc: Any, host: str | None = None, **params: Any) -> Any:
        """Fold the handlers of ``name`` (global ones and ``host``'s, by priority)."""
        entries = self._handlers.get((name, None), [])
        if host is not None:
            specific = self._handlers.get((name, host))
            if specific:
                entries = sorted([*entries, *specific])
        for entry in entries:
            try:
                result = entry.handler(acc, params)
            except Exception:
                log.exception(
                    "hook handler crashed",
                    # "module" is a field of every LogRecord already, hence "hook_module".
                    extra={"what": "hook_handler_crashed", "hook": name,
                           "hook_module": entry.module, "handler": _name(entry.handler)},
                )
                continue
            if type(result) is Stop:
                return result.acc
            acc = result
        return acc


def _name(handler: Handler) -> str:
    return getattr(handler, "__qualname__", repr(handler))


hooks = Hooks()
"""This process's registry."""
