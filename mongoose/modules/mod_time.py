"""mod_time: XEP-0202 Entity Time of the server (UTC offset and time, XEP-0082 format)."""

from __future__ import annotations

import datetime
from typing import Any

from lxml import etree

from mongoose import iq
from mongoose.xmpp import ns

XEPS = ("0202",)
FEATURES = (ns.TIME,)


def _time(stanza: Any, from_jid: str, to_jid: str) -> Any:
    from mongoose.xmpp.errors import make_error_reply

    if stanza.get("type") != "get":
        return make_error_reply(stanza, "not-allowed")
    now = datetime.datetime.now(datetime.UTC)
    local = now.astimezone()
    offset = local.utcoffset() or datetime.timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    tzo = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    element = etree.Element(f"{{{ns.TIME}}}time", nsmap={None: ns.TIME})
    etree.SubElement(element, f"{{{ns.TIME}}}tzo").text = tzo
    etree.SubElement(element, f"{{{ns.TIME}}}utc").text = now.strftime(
        "%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    return iq.result(stanza, element)


def start(config: Any, module_config: Any) -> None:
    iq.register("server", ns.TIME, _time)


def stop() -> None:
    iq.unregister("server", ns.TIME)
