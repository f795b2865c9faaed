"""Modules: one per feature, started from ``[modules.mod_*]`` in every worker.

A module is a Python module here with:

* ``XEPS``: the XEP numbers it implements (for the docs and disco);
* ``FEATURES``: the namespaces it adds to the server's disco#info;
* ``start(config, module_config)``: registers its hooks and iq handlers in this process;
* ``stop()``: unregisters them.

Modules talk to the core only through :mod:`mongoose.hooks` and :mod:`mongoose.iq`.
:func:`start_all` starts those whose table is present in the config (the config's
``Modules`` dataclass lists the known ones), in a fixed order, and returns their names.
"""

from __future__ import annotations

import importlib
from typing import Any

from mongoose.config import Config

__all__ = ["start_all", "stop_all"]

_started: list[Any] = []

# Start order: storage-backed modules first, mod_presence after mod_roster (it reads
# rosters), mod_blocking after mod_privacy (they share storage).
ORDER = ("mod_disco", "mod_ping", "mod_version", "mod_time", "mod_roster", "mod_presence",
         "mod_offline", "mod_privacy", "mod_blocking", "mod_carboncopy", "mod_private",
         "mod_vcard", "mod_last", "mod_register", "mod_sic")


def start_all(config: Config) -> list[str]:
    names = []
    for name in ORDER:
        module_config = getattr(config.modules, name)
        if module_config is None:
            continue
        module = importlib.import_module(f"mongoose.modules.{name}")
        module.start(config, module_config)
        _started.append(module)
        names.append(name)
    return names


def stop_all() -> None:
    while _started:
        _started.pop().stop()


def features() -> list[str]:
    """Namespaces the started modules announce in the server's disco#info."""
    return sorted({f for module in _started for f in getattr(module, "FEATURES", ())})
