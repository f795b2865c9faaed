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
    "disco_local_features": "acc: list of namespaces for the server's disco#info; params: host",
    "disco_local_items": "acc: list of (jid, name) for the server's disco#items; params: host",
    "roster_get": "acc: list of contacts; params: jid (for presence broadcast, later issues)",
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
