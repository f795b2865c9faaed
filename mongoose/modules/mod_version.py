"""mod_version: XEP-0092 Software Version of the server."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from lxml import etree

from mongoose import iq
from mongoose.xmpp import ns

XEPS = ("0092",)
FEATURES = (ns.VERSION,)

_os_info = False


def _version(stanza: Any, from_jid: str, to_jid: str) -> Any:
    from mongoose.xmpp.errors import make_error_reply

    if stanza.get("type") != "get":
        return make_error_reply(stanza, "not-allowed")
    query = etree.Element(f"{{{ns.VERSION}}}query", nsmap={None: ns.VERSION})
    etree.SubElement(query, f"{{{ns.VERSION}}}name").text = "mongoose"
    try:
        version = metadata.version("mongoose")
    except metadata.PackageNotFoundError:
        version = "unknown"
    etree.SubElement(query, f"{{{ns.VERSION}}}version").text = version
    if _os_info:
        etree.SubElement(query, f"{{{ns.VERSION}}}os").text = (
            f"{platform.system()} {platform.release()}; Python {platform.python_version()}")
    return iq.result(stanza, query)


def start(config: Any, module_config: Any) -> None:
    global _os_info
    _os_info = module_config.os_info
    iq.register("server", ns.VERSION, _version)


def stop() -> None:
    iq.unregister("server", ns.VERSION)
