"""XMPP load generator: logins, one-to-one chat, presence to rosters and idle sessions against
any standard XMPP server (this one, Prosody, ejabberd), measured from the client side.

Run from the repository root::

    python bench/xmppload.py connect --port 5222 --users 10000
    python bench/xmppload.py one_to_one --users 1000 --rate 10000 --duration 30
    python bench/xmppload.py idle --users 10000 --server-pid 1234
    python bench/xmppload.py presence --users 1000 --roster-size 20 --duration 30
    python bench/xmppload.py presence --force         # no rosters: each user's own echo
    python bench/xmppload.py one_to_one --quick       # smoke test (tests/test_bench_xmppload.py)

Users are ``PREFIX{first}`` .. ``PREFIX{first+N-1}`` on ``--domain``, all with one password,
registered beforehand (``mongoose account bulk-register``, ``prosodyctl``, ``ejabberdctl``);
for presence with ``--roster-size`` their rosters too (``bench/roster_setup.py``).

Design
------
* **No XMPP library, raw asyncio protocols** (uvloop when installed), so the generator is
  not the bottleneck. The login is a short script of byte matches: stream header, features,
  optional STARTTLS, SASL PLAIN or SCRAM-SHA-256 (``scramp``), resource bind, the legacy
  session iq only when the features carry ``<session/>`` without ``<optional/>``, and
  initial presence. After that a session cuts its input into top-level stanzas by their
  start tag and the matching end tag (``</message>``, ``</presence>``, ``</iq>``) and looks
  at nothing but the opening tag (``type='error'``) and the body it generated itself
  (``xmppload RUN SENDER SEQ SENT_NS``). It answers server pings (XEP-0199) and ignores the
  rest. RUN is random per run: messages a server still delivers from an earlier run to the
  same accounts are counted apart (``stale``), not taken for duplicates.
* **Processes.** ``--processes P`` forked workers, each with its own loop and a contiguous
  slice of the users; the parent process only coordinates and aggregates. Phases are
  driven by the parent over one pipe per worker: ``login`` (with a common start time) ->
  every worker reports ``online`` -> ``go`` (one_to_one: the online user indices, a common
  start time and the worker's share of ``--rate``) -> ``stop`` -> each worker disconnects
  cleanly (``</stream:stream>``, waits up to 5 s for the server's) and sends its ``final``
  figures. Workers send cumulative counters and the latencies seen since the last report
  every 0.2 s; the parent turns them into one tick per second.
* **Pacing.** Logins start at timestamps ``k / (L / P)`` after the common start in each
  worker (so ``--login-rate L`` in total), with at most ``--concurrency C / P`` in flight.
  Messages are scheduled the same way: every 5 ms a worker sends however many messages
  its share of ``--rate`` says are due since the start (so it catches up after a stall
  rather than drifting), from random local senders to random online users of the whole
  run (any worker), one write per sender per tick.
* **Measuring messages.** The body carries the sender's index, its sequence number and
  ``time.time_ns()`` at sending; the generator's processes share the host's clock, so the
  receiver's ``time.time_ns()`` minus that is the end-to-end latency. A receiver keeps a
  bitmap of seen sequence numbers per sender: a second copy is a duplicate. After sending
  ends the run drains until every message is accounted for (delivered or bounced with
  ``type='error'``) or 5 s have passed; ``lost`` is ``sent - delivered``, bounces included
  (and also counted in ``errors``).
* **Presence with rosters** (``presence --roster-size R``). User i's contacts are its
  ring neighbours i ± 1 .. i ± R/2 modulo N (:func:`roster_contacts`; R even and less
  than N), a symmetric relation, so every contact has subscription both; the server must
  hold these rosters already. Each session sends a roster get and its initial presence
  in one write right after binding, and the server does the rest: it broadcasts the
  presence to the contacts online and probes them, whose answers come back. Each ordered
  (receiver, contact) pair should arrive once; whichever of broadcast and probe answer
  comes first counts. A session keeps a bitmap of its contacts seen (a bit per contact
  slot, :func:`contact_slot`) and reads only a presence's start tag: no ``type``
  attribute (available), and the user index in ``from``. Its own presence (``from``
  itself, or no ``from``) is the echo, timed as with ``--force``. The roster result's
  ``<item`` tags are counted, to tell that the server read the rosters. After the logins
  the run waits until every expected pair is seen or ``--duration`` s have passed.
* **Source addresses.** Against a loopback host, connection i binds its local address to
  127.0.0.(1 + i % K) (``--source-addresses K``, with ``IP_BIND_ADDRESS_NO_PORT``), so
  100k connections fit in the ephemeral port range. The soft RLIMIT_NOFILE is raised to
  the hard limit at start.

Output
------
stdout carries JSON lines only, each flushed as written; progress goes to stderr. The same
lines go to ``events.jsonl`` under ``--results``, next to ``plot.png`` (matplotlib, Agg;
skipped with a note on stderr when matplotlib is missing: ``pip install -e .[bench]``).

* ``{"kind": "tick", "t", "dt", "phase", "online", ...}``: one per second of the measured
  phase, cut from the workers' reports at whole seconds since its start (``t``). Counts
  are over the interval (``dt`` s, 1 except for the last, partial one). connect and
  presence (phase ``login``, then ``echo`` with ``--force`` or ``presence`` with
  ``--roster-size``): ``logins_ok``, ``logins_failed``, and for presence ``echoes``,
  ``presences`` (available presences from others received), ``pairs`` (contact pairs
  seen for the first time) and ``pairs_seen`` (all so far); one_to_one (``send``, then
  ``drain``): ``sent``, ``delivered``, ``errors``, ``latency_p50_ms``, ``latency_p99_ms``
  (of the messages received in the interval, null if none); idle (``hold``):
  ``rss_bytes`` (null without ``--server-pid``).
* ``{"kind": "summary", ...}``: exactly one, always the last line. Keys (null where a
  figure does not apply): scenario, label, users, logins_ok, logins_failed,
  login_rate_per_s, time_to_all_online_s, sent, delivered, lost, duplicated, errors,
  delivered_per_s, latency_p50_ms, latency_p95_ms, latency_p99_ms, latency_max_ms,
  rss_before_bytes, rss_after_bytes, rss_per_session_bytes, generator_cpu_s, elapsed_s,
  results_dir; then ``params`` (the options used), ``available`` (false only for presence
  with neither ``--roster-size`` nor ``--force``, with ``reason``) and the extras listed at
  :func:`summary`.

What the figures mean: ``time_to_all_online_s`` runs from the common login start to the
last successful login (so with failures it is the time until all that succeeded were
online), and ``login_rate_per_s`` is ``logins_ok`` over it. ``delivered_per_s`` is
``delivered`` over the time from the first send to the last delivery (a server that falls
behind shows its real rate, not the offered one). Latencies are nearest-rank percentiles
over every delivered message (presence --force: over the echoes, with ``sent`` the
presences, ``delivered`` the echoes). ``rss_per_session_bytes`` is (RSS after - RSS
before) / sessions online at the end, RSS summed over the ``--server-pid`` processes and
their children. ``generator_cpu_s`` is the CPU time of all the generator's processes.

Presence with rosters: ``presence_pairs_expected`` is the number of ordered pairs
(receiver i, contact j) with both logged in (N * R when every login succeeds);
``presence_pairs_seen`` those for which i received an available presence from j;
``presence_complete`` whether all were; ``time_to_full_presence_s`` runs from the common
login start to the first presence of the last pair (null when some pair is missing:
then read ``presence_pairs_missing``, the shortfall when ``--duration`` ran out);
``presence_pairs_per_s`` is pairs seen over that time (or the time to the last pair
seen). ``presence_stanzas_received`` counts every available presence from another user,
duplicates included: ``presence_duplicates`` (the copies beyond the first of a pair, a
probe answer and a broadcast that both arrived) and ``presence_from_non_contacts``
(should be 0). ``roster_items_received`` against ``roster_items_expected`` (logins_ok * R)
tells whether the server read the rosters provisioned. ``sent``/``delivered``/``lost``
and the latencies are those of the echoes, as with ``--force``; the echo follows the
roster result, so it includes the roster's read.

Measured here (2 vCPUs shared with the server, plain TCP, PLAIN, 1000 users, noisy VM):
against this server one generator process spends 35-45 µs of CPU per message (its send
and its receipt; most of it the two syscalls, as each message travels alone) at
5-10k msg/s, where the server spends 120-150 µs; against a trivial relay it sustained
30k msg/s in one process at 17 µs per message, reads and writes then carrying several
messages each. ``generator_cpu_us_per_msg`` in the summary gives the figure for a run.

Exit status: 0 when the summary line was printed; 3 when it was printed but no login
succeeded (server down, wrong password or TLS mode: see ``login_failure_reasons``);
1 on a crash (no summary); 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import collections
import contextlib
import gc
import ipaddress
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import random
import re
import resource
import socket
import ssl
import sys
import time
import traceback
from pathlib import Path
from typing import Any, ClassVar

SCENARIOS = ("connect", "one_to_one", "presence", "idle")
RESOURCE = "xmppload"
LOGIN_TIMEOUT = 30.0  # s for one whole login, connect to presence
DRAIN_S = 5.0  # a message not received this long after sending ended is lost
ECHO_WAIT_S = 5.0  # presence --force: how long to wait for the last echoes
REPORT_S = 0.2  # worker -> parent counter reports
SEND_TICK_S = 0.005
KEEPALIVE_S = 60.0
CLOSE_WAIT_S = 5.0
QUICK = {"users": 10, "duration": 2.0, "rate": 200.0, "processes": 1}

STREAM_HEADER = (
    "<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' xml:lang='en' "
    "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
)
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
ROSTER_GET = b"<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>"

_FEATURES = re.compile(rb"</stream:features>|<stream:features\s*/>")
_PROCEED = re.compile(rb"<proceed[^>]*>|<failure[^>]*>")
_SASL = re.compile(rb"<(success|failure|challenge)\b[^>]*?(?:/>|>(.*?)</\1>)", re.S)
_IQ = re.compile(rb"<iq\b[^>]*/>|</iq>")
_SASL_CONDITION = re.compile(rb"<failure[^>]*>\s*<([\w-]+)")
_STREAM_ERROR = re.compile(rb"<stream:error>\s*<([\w-]+)")
_SESSION = re.compile(
    rb"<session\s+xmlns=['\"]urn:ietf:params:xml:ns:xmpp-session['\"]\s*(/>|>(.*?)</session>)",
    re.S)
_STARTTLS_REQUIRED = re.compile(rb"<starttls[^>]*>\s*<required")
_MECHANISMS = re.compile(rb"<mechanism>([^<]+)</mechanism>")
_NAME = re.compile(rb"[^\s/>]+")
_TYPE_ERROR = re.compile(rb"""\stype\s*=\s*['"]error['"]""")
_TYPE_RESULT = re.compile(rb"""\stype\s*=\s*['"]result['"]""")
_TYPE_GET = re.compile(rb"""\stype\s*=\s*['"]get['"]""")
_TYPE = re.compile(rb"""\stype\s*=""")
_ID = re.compile(rb"""\sid\s*=\s*['"]([^'"]*)['"]""")
_FROM = re.compile(rb"""\sfrom\s*=\s*['"]([^'"]*)['"]""")


def log(text: str) -> None:
    print(f"xmppload: {text}", file=sys.stderr, flush=True)


# -- the rosters of the presence scenario ------------------------------------------------


def roster_contacts(index: int, first: int, users: int, roster_size: int) -> list[int]:
    """User ``index``'s contacts: its ring neighbours ``index ± 1 .. index ± R/2``, modulo
    the ``users`` users numbered from ``first`` (R even, R < users). The relation is
    symmetric, so every contact is one with subscription both."""
    position, half = index - first, roster_size // 2
    return [first + (position + step) % users for d in range(1, half + 1)
            for step in (d, -d)]


def contact_slot(receiver: int, sender: int, first: int, users: int,
                 roster_size: int) -> int | None:
    """Where ``sender`` sits among ``receiver``'s contacts (0 .. R-1), None if it is not
    one of them."""
    if not first <= sender < first + users:
        return None
    half = roster_size // 2
    d = (sender - receiver) % users
    if 0 < d <= half:
        return 2 * (d - 1)
    if users - half <= d < users:
        return 2 * (users - d) - 1
    return None


def expected_pairs(online: list[int], first: int, users: int, roster_size: int) -> int:
    """Ordered (receiver, contact) pairs with both ends among ``online``."""
    there = set(online)
    return sum(1 for i in online for j in roster_contacts(i, first, users, roster_size)
               if j in there)


# -- one client connection ---------------------------------------------------------------


class LoginError(Exception):
    """A login step failed; the message is the short reason counted in the summary."""


class Client(asyncio.Protocol):
    """One XMPP session: a scripted login, then a stanza splitter that counts for its worker."""

    def __init__(self, worker: Worker, index: int) -> None:
        self.w = worker
        self.index = index
        self.transport: Any = None
        self.buf = b""
        self.waiter: asyncio.Future[None] | None = None
        self.lost = False
        self.running = False
        self.stopping = False
        self.step = "connect"
        self.seq = 0
        self.out: list[bytes] = []
        self.presence_ns = 0
        self.echoed = False
        self.contacts_seen = 0  # presence --roster-size: a bit per contact slot

    # -- asyncio protocol

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.running:
            self._stanzas(data)
            return
        self.buf += data
        self._wake()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()
        if self.running:
            self.running = False
            self.w.client_lost(self)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- login

    async def _expect(self, regex: re.Pattern[bytes]) -> re.Match[bytes]:
        while True:
            match = regex.search(self.buf)
            if match is not None:
                return match
            if b"<stream:error" in self.buf:
                error = _STREAM_ERROR.search(self.buf)
                condition = error.group(1).decode() if error else "unknown"
                raise LoginError(f"{self.step}: stream error {condition}")
            if self.lost or b"</stream:stream>" in self.buf:
                raise LoginError(f"{self.step}: closed by the server")
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter

    def _take(self, match: re.Match[bytes]) -> bytes:
        data, self.buf = self.buf[:match.end()], self.buf[match.end():]
        return data

    def _write(self, text: str) -> None:
        self.transport.write(text.encode())

    async def _open_stream(self) -> bytes:
        self.step = "stream"
        self._write(STREAM_HEADER.format(domain=self.w.domain))
        return self._take(await self._expect(_FEATURES))

    async def login(self) -> None:
        w = self.w
        loop = asyncio.get_running_loop()
        self.step = "connect"
        sock = socket.socket(w.family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if w.source_addresses:
                sock.setsockopt(socket.SOL_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
                sock.bind((w.source_addresses[self.index % len(w.source_addresses)], 0))
            await loop.sock_connect(sock, w.address)
        except BaseException:
            sock.close()
            raise
        direct = w.tls == "direct"
        if direct:
            self.step = "tls"
        await loop.create_connection(lambda: self, sock=sock, ssl=w.ssl if direct else None,
                                     server_hostname=w.domain if direct else None)
        features = await self._open_stream()
        if w.tls == "starttls":
            if b"<starttls" not in features:
                raise LoginError("starttls: not offered")
            self.step = "starttls"
            self._write("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            if b"<proceed" not in self._take(await self._expect(_PROCEED)):
                raise LoginError("starttls: refused")
            self.step = "tls"
            self.transport = await loop.start_tls(self.transport, self, w.ssl,
                                                  server_hostname=w.domain)
            features = await self._open_stream()
        elif w.tls == "none" and _STARTTLS_REQUIRED.search(features):
            raise LoginError("sasl: the server requires STARTTLS (use --tls starttls)")
        self.step = "sasl"
        offered = _MECHANISMS.findall(features)
        if w.mechanism.encode() not in offered:
            names = ", ".join(m.decode() for m in offered) or "none"
            raise LoginError(f"sasl: {w.mechanism} not offered (offered: {names})")
        user = f"{w.prefix}{self.index}"
        if w.mechanism == "PLAIN":
            await self._sasl_plain(user)
        else:
            await self._sasl_scram(user)
        features = await self._open_stream()
        self.step = "bind"
        if b"urn:ietf:params:xml:ns:xmpp-bind" not in features:
            raise LoginError("bind: not offered")
        self._write(f"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                    f"<resource>{RESOURCE}</resource></bind></iq>")
        await self._iq_result()
        session = _SESSION.search(features)
        if session is not None and (session.group(1) == b"/>"
                                    or b"optional" not in session.group(2)):
            self.step = "session"
            self._write("<iq type='set' id='session'>"
                        "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
            await self._iq_result()
        self.step = "presence"
        if w.opts.scenario == "presence":
            self.presence_ns = time.time_ns()
        # With rosters, ask for the roster first, as a client does (RFC 6121 §2.1.3), in
        # the same write: the session does not wait for the answer.
        self.transport.write(ROSTER_GET + b"<presence/>" if w.roster_size else b"<presence/>")
        # No await between the presence and this: its echo is handled by _stanzas.
        self.running = True
        self._stanzas(b"")

    async def _iq_result(self) -> None:
        reply = self._take(await self._expect(_IQ))
        start = reply.rfind(b"<iq")
        if not _TYPE_RESULT.search(reply[start:reply.find(b">", start)]):
            condition = re.search(rb"<error[^>]*>\s*<([\w-]+)", reply)
            name = condition.group(1).decode() if condition else "error"
            raise LoginError(f"{self.step}: {name}")

    async def _sasl(self, payload: bytes | None, first: bool = False) -> tuple[str, bytes]:
        """Send an auth (``first``) or a response; return the answer's name and data."""
        text = "" if payload is None else base64.b64encode(payload).decode()
        if first:
            self._write(f"<auth xmlns='{NS_SASL}' mechanism='{self.w.mechanism}'>{text}</auth>")
        else:
            self._write(f"<response xmlns='{NS_SASL}'>{text}</response>")
        match = await self._expect(_SASL)
        self._take(match)
        name = match.group(1).decode()
        if name == "failure":
            condition = _SASL_CONDITION.search(match.group(0))
            raise LoginError(f"sasl: {condition.group(1).decode() if condition else 'failure'}")
        inner = (match.group(2) or b"").strip()
        return name, base64.b64decode(inner) if inner and inner != b"=" else b""

    async def _sasl_plain(self, user: str) -> None:
        name, _ = await self._sasl(f"\0{user}\0{self.w.password}".encode(), first=True)
        if name != "success":
            raise LoginError("sasl: unexpected challenge to PLAIN")

    async def _sasl_scram(self, user: str) -> None:
        import scramp

        scram = scramp.ScramClient([self.w.mechanism], user, self.w.password)
        name, data = await self._sasl(scram.get_client_first().encode(), first=True)
        if name != "challenge":
            raise LoginError("sasl: no SCRAM challenge")
        scram.set_server_first(data.decode())
        name, data = await self._sasl(scram.get_client_final().encode())
        if name == "challenge":  # server-final as a challenge, success to follow
            scram.set_server_final(data.decode())
            name, _ = await self._sasl(None)
            if name != "success":
                raise LoginError("sasl: no success after SCRAM")
            return
        try:
            scram.set_server_final(data.decode())
        except Exception as error:
            raise LoginError(f"sasl: bad server signature ({error})") from None

    # -- established session: the stanza splitter

    def _stanzas(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        w = self.w
        find, startswith = buf.find, buf.startswith
        now_ns = delivered = 0
        pos = 0
        while True:
            lt = find(b"<", pos)
            if lt < 0:
                pos = len(buf)
                break
            gt = find(b">", lt)
            if gt < 0:
                pos = lt
                break
            if startswith(b"<message", lt) and buf[gt - 1] != 47:  # the hot path
                close = find(b"</message>", gt)
                if close < 0:
                    pos = lt
                    break
                pos = close + 10
                if find(b"error", lt, gt) >= 0 and _TYPE_ERROR.search(buf, lt, gt):
                    w.errors += 1
                    continue
                k = find(b"xmppload ", gt, close)
                if k < 0:
                    continue
                if not now_ns:
                    now_ns = time.time_ns()
                run, sender, seq, sent_ns = buf[k + 9:find(b"<", k)].split()
                if run != w.run_id:
                    w.stale += 1
                    continue
                # first copy of (sender, seq)? A bitmap of sequence numbers per sender.
                sender, seq = int(sender), int(seq)
                bits = w.seen.get(sender)
                if bits is None:
                    bits = w.seen[sender] = bytearray(16)
                i = seq >> 3
                if i >= len(bits):
                    bits.extend(bytes(max(i + 1 - len(bits), len(bits))))
                bit = 1 << (seq & 7)
                if bits[i] & bit:
                    w.duplicated += 1
                    continue
                bits[i] |= bit
                delivered += 1
                w.latencies.append((now_ns - int(sent_ns)) // 1000)
                continue
            if buf[lt + 1] == 47:  # an end tag at the top: </stream:stream>
                if startswith(b"</stream:stream", lt):
                    self.transport.close()
                pos = gt + 1
                continue
            name_match = _NAME.match(buf, lt + 1)
            if name_match is None:
                pos = gt + 1
                continue
            name = name_match.group(0)
            if buf[gt - 1] == 47:  # "/>": an empty element
                end = gt + 1
            else:
                end = find(b"</" + name + b">", gt)
                if end < 0:
                    pos = lt
                    break
                end += len(name) + 3
            if name == b"presence":
                if not now_ns:
                    now_ns = time.time_ns()
                self._presence(buf, lt, gt, now_ns)
            elif name == b"iq":
                if _TYPE_GET.search(buf, lt, gt) and find(b"urn:xmpp:ping", gt, end) >= 0:
                    self._pong(buf[lt:gt])
                elif find(b"roster", lt, gt) >= 0 and _TYPE_RESULT.search(buf, lt, gt) \
                        and _is_roster_id(buf, lt, gt):
                    w.rosters += 1
                    w.roster_items += buf.count(b"<item", gt, end)
            elif name == b"stream:error":
                error = _STREAM_ERROR.search(buf, lt)
                w.stream_errors[error.group(1).decode() if error else "unknown"] += 1
            pos = end
        self.buf = buf[pos:] if pos < len(buf) else b""
        if delivered:
            w.delivered += delivered
            w.last_delivery = now_ns / 1e9

    def _presence(self, buf: bytes, lt: int, gt: int, now_ns: int) -> None:
        """An available presence (no type) from someone else counts for its sender's
        contact slot; one from ourselves (or without ``from``) is the echo."""
        w = self.w
        if buf.find(b"type", lt, gt) >= 0 and _TYPE.search(buf, lt, gt):
            return  # unavailable, error, or a subscription request: not availability
        sender = _FROM.search(buf, lt, gt)
        index = -1
        if sender is not None:
            jid = sender.group(1)
            at = jid.find(b"@")
            local = jid[:at] if at > 0 else b""
            if local.startswith(w.prefix_bytes) and local[len(w.prefix_bytes):].isdigit():
                index = int(local[len(w.prefix_bytes):])
            else:
                index = -2  # not one of the run's users
        if sender is None or index == self.index:
            if not self.echoed and self.presence_ns:
                self.echoed = True
                w.echo(now_ns - self.presence_ns)
            return
        w.presences += 1
        slot = w.contact_slot(self.index, index) if w.roster_size else None
        if slot is None:
            w.strangers += 1
            return
        bit = 1 << slot
        if not self.contacts_seen & bit:
            self.contacts_seen |= bit
            w.pairs += 1
            w.last_pair = now_ns / 1e9

    def _pong(self, head: bytes) -> None:
        ident = _ID.search(head)
        sender = _FROM.search(head)
        to = b" to='" + sender.group(1) + b"'" if sender else b""
        self.transport.write(b"<iq type='result' id='" + (ident.group(1) if ident else b"")
                             + b"'" + to + b"/>")

    async def close(self) -> None:
        """End the stream and wait (up to CLOSE_WAIT_S) for the server to close it."""
        self.stopping = True
        if self.lost or self.transport is None:
            return
        self.transport.write(b"</stream:stream>")
        self.running = False  # from here data only wakes the waiter
        self.buf = b""
        deadline = time.monotonic() + CLOSE_WAIT_S
        while not self.lost and b"</stream:stream>" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.waiter = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.waiter, remaining)
        self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


# -- one worker process ------------------------------------------------------------------


class Worker:
    """The users of one process: logs them in, runs the scenario, reports to the parent."""

    def __init__(self, opts: argparse.Namespace, indices: range, conn: Any) -> None:
        self.opts = opts
        self.indices = indices
        self.conn = conn
        self.domain = opts.domain
        self.prefix = opts.user_prefix
        self.prefix_bytes = opts.user_prefix.encode()
        self.roster_size = opts.roster_size if opts.scenario == "presence" else 0
        self.password = opts.password
        self.tls = opts.tls
        self.mechanism = opts.mechanism
        infos = socket.getaddrinfo(opts.host, opts.port, type=socket.SOCK_STREAM)
        info = next((i for i in infos if i[0] == socket.AF_INET), infos[0])  # IPv4 first
        self.family, self.address = info[0], info[4]
        self.source_addresses: list[str] = []
        if self.family == socket.AF_INET and ipaddress.ip_address(self.address[0]).is_loopback \
                and opts.source_addresses > 1:
            self.source_addresses = [f"127.0.0.{1 + i}" for i in range(opts.source_addresses)]
        self.ssl: ssl.SSLContext | None = None
        if opts.tls != "none":
            self.ssl = ssl.create_default_context()
            self.ssl.check_hostname = False
            self.ssl.verify_mode = ssl.CERT_NONE
        self.clients: list[Client] = []
        self.commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        # counters, cumulative; reported every REPORT_S
        self.ok = self.failed = self.online = self.disconnects = 0
        self.reasons: collections.Counter[str] = collections.Counter()
        self.stream_errors: collections.Counter[str] = collections.Counter()
        self.last_ok = 0.0
        self.sent = self.delivered = self.duplicated = self.errors = self.echoes = 0
        self.stale = 0
        # presence: available presences from others (duplicates included), distinct
        # (receiver, contact) pairs seen, presences from non-contacts, roster results
        # and the items in them; last_pair: when the latest new pair was seen.
        self.presences = self.pairs = self.strangers = self.rosters = self.roster_items = 0
        self.last_pair = 0.0
        self.run_id = opts.run_id.encode()
        self.last_delivery = 0.0
        self.latencies = array.array("q")  # µs, since the last report
        self.seen: dict[int, bytearray] = {}
        self.cpu_login = self.cpu_run = 0.0
        self.base = 0.0  # the reporting grid's origin, wall clock

    def send(self, message: tuple[Any, ...]) -> None:
        self.conn.send(message)

    # -- counters fed by the clients

    def echo(self, latency_ns: int) -> None:
        self.echoes += 1
        self.latencies.append(latency_ns // 1000)

    def contact_slot(self, receiver: int, sender: int) -> int | None:
        """The sender's bit in the receiver's contact bitmap, None if not a contact."""
        return contact_slot(receiver, sender, self.opts.first_user, self.opts.users,
                            self.roster_size)

    def client_lost(self, client: Client) -> None:
        self.online -= 1
        if not client.stopping:
            self.disconnects += 1

    # -- reporting

    def counters(self) -> dict[str, Any]:
        latencies, self.latencies = self.latencies, array.array("q")
        return {"ok": self.ok, "failed": self.failed, "online": self.online,
                "disconnects": self.disconnects, "sent": self.sent, "delivered": self.delivered,
                "duplicated": self.duplicated, "errors": self.errors, "echoes": self.echoes,
                "stale": self.stale, "presences": self.presences, "pairs": self.pairs,
                "strangers": self.strangers, "rosters": self.rosters,
                "roster_items": self.roster_items, "last_pair": self.last_pair,
                "last_delivery": self.last_delivery, "latencies": latencies.tobytes()}

    async def _reporter(self, base: float) -> None:
        """Counters at ``base + k * REPORT_S`` (wall clock), for k = 1, 2, ...: every worker
        reports on the same grid, so the parent can cut exact one-second ticks."""
        k = 0
        while True:
            k += 1
            delay = base + k * REPORT_S - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.send(("stats", self.counters(), base, k, True))

    def report(self) -> None:
        """Counters now, off the grid (before a phase change or the end)."""
        base = self.base
        self.send(("stats", self.counters(), base, (time.time() - base) / REPORT_S, False))

    def _on_command(self) -> None:
        while self.conn.poll():
            try:
                self.commands.put_nowait(self.conn.recv())
            except EOFError:  # the parent is gone
                self.commands.put_nowait(("stop",))
                asyncio.get_running_loop().remove_reader(self.conn.fileno())
                return

    # -- the run

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.conn.fileno(), self._on_command)
        self.send(("ready",))
        command = await self.commands.get()
        if command[0] != "login":
            return
        self.base = command[1]
        reporter = loop.create_task(self._reporter(self.base))
        cpu = time.process_time()
        await self._login_all(command[1])
        self.cpu_login = time.process_time() - cpu
        # The sessions live to the end: keep the collector from walking them again and again.
        gc.collect()
        gc.freeze()
        self.report()
        self.send(("online", {"indices": [c.index for c in self.clients if c.running],
                              "reasons": dict(self.reasons), "last_ok": self.last_ok}))
        task: asyncio.Task[None] | None = None
        cpu = 0.0
        while True:
            command = await self.commands.get()
            if command[0] == "go":
                cpu = time.process_time()
                reporter.cancel()
                self.report()
                self.base = command[1]
                reporter = loop.create_task(self._reporter(self.base))
                if self.opts.scenario == "one_to_one":
                    task = loop.create_task(self._send_messages(*command[1:]))
                elif self.opts.scenario == "idle":
                    task = loop.create_task(self._keepalive())
            elif command[0] == "stop":
                break
        if cpu:
            self.cpu_run = time.process_time() - cpu
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        reporter.cancel()
        self.report()
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.send(("final", {"cpu_s": usage.ru_utime + usage.ru_stime,
                             "cpu_login_s": self.cpu_login, "cpu_run_s": self.cpu_run,
                             "reasons": dict(self.reasons),
                             "stream_errors": dict(self.stream_errors)}))

    async def _login_all(self, start_wall: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time() + max(0.0, start_wall - time.time())
        rate = self.opts.login_rate / self.opts.processes
        slots = asyncio.Semaphore(max(1, self.opts.concurrency // self.opts.processes))
        tasks: set[asyncio.Task[None]] = set()
        delay = start - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for k, index in enumerate(self.indices):
            if rate > 0:
                delay = start + k / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await slots.acquire()
            task = loop.create_task(self._login_one(index, slots))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    async def _login_one(self, index: int, slots: asyncio.Semaphore) -> None:
        client = Client(self, index)
        try:
            async with asyncio.timeout(LOGIN_TIMEOUT):
                await client.login()
        except Exception as error:
            client.abort()
            self.failed += 1
            self.reasons[_reason(client, error)] += 1
        else:
            self.ok += 1
            self.online += 1
            self.last_ok = time.time()
            self.clients.append(client)
        finally:
            slots.release()

    async def _send_messages(self, start_wall: float, online: list[int], rate: float,
                             duration: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time() + (start_wall - time.time())
        total = int(rate * duration)
        head = f"<message to='{self.prefix}".encode()
        tail = f"@{self.domain}/{RESOURCE}' type='chat'><body>xmppload {self.opts.run_id} "\
            .encode()
        pick, choices = random.randrange, random.choices
        senders = [c for c in self.clients if c.running]
        peers = len(online)
        next_tick = start
        while senders and peers:
            now = loop.time()
            due = total if now >= start + duration else min(total, int(rate * (now - start)))
            n = due - self.sent
            if n > 0:
                sent_ns = time.time_ns()
                touched = []
                for client, to in zip(choices(senders, k=n), choices(online, k=n), strict=True):
                    if not client.running:
                        continue  # lost since: this message is not sent
                    if to == client.index and peers > 1:
                        while to == client.index:
                            to = online[pick(peers)]
                    out = client.out
                    if not out:
                        touched.append(client)
                    out.append(b"%s%d%s%d %d %d</body></message>" % (
                        head, to, tail, client.index, client.seq, sent_ns))
                    client.seq += 1
                for client in touched:
                    out = client.out
                    client.transport.write(out[0] if len(out) == 1 else b"".join(out))
                    self.sent += len(out)
                    out.clear()
            if due >= total:
                break
            next_tick += SEND_TICK_S
            delay = next_tick - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_tick = loop.time()
                await asyncio.sleep(0)
        self.report()
        self.send(("sent_done", self.sent))

    async def _keepalive(self) -> None:
        """A space every KEEPALIVE_S on each connection, spread over the interval."""
        second = 0
        slots = int(KEEPALIVE_S)
        while True:
            await asyncio.sleep(1.0)
            second += 1
            for client in self.clients:
                if client.running and client.index % slots == second % slots:
                    client.transport.write(b" ")


def _is_roster_id(buf: bytes, lt: int, gt: int) -> bool:
    ident = _ID.search(buf, lt, gt)
    return ident is not None and ident.group(1) == b"roster"


def _reason(client: Client, error: BaseException) -> str:
    if isinstance(error, LoginError):
        return str(error)
    if isinstance(error, TimeoutError):
        return f"{client.step}: timeout after {LOGIN_TIMEOUT:g} s"
    if isinstance(error, OSError) and error.strerror:
        return f"{client.step}: {error.strerror}"
    return f"{client.step}: {type(error).__name__}: {error}"[:200]


def _worker_main(opts: argparse.Namespace, indices: range, conn: Any) -> None:
    _die_with_parent()
    try:
        with _runner() as runner:
            runner.run(Worker(opts, indices, conn).main())
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(("crash", traceback.format_exc()))
        raise


def _runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: a SIGKILLed parent takes its workers with it (Linux only)."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


# -- the parent: phases, ticks, summary ----------------------------------------------------


class WorkerCrashed(Exception):
    pass


class Output:
    """JSON lines to stdout and to ``events.jsonl``."""

    def __init__(self, results: Path) -> None:
        self.events = (results / "events.jsonl").open("w")

    def emit(self, record: dict[str, Any]) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        self.events.write(line + "\n")
        self.events.flush()

    def close(self) -> None:
        self.events.close()


class Run:
    """The parent's side of one run: starts the workers and walks them through the phases."""

    # the phases with ticks, per scenario
    MEASURED: ClassVar[dict[str, tuple[str, ...]]] = {
        "connect": ("login",), "presence": ("login", "echo", "presence"),
        "one_to_one": ("send", "drain"), "idle": ("hold",)}

    def __init__(self, opts: argparse.Namespace, out: Output) -> None:
        self.opts = opts
        self.out = out
        self.started = time.time()
        self.phase = "start"
        self.conns: dict[Any, int] = {}
        self.procs: list[Any] = []
        self.ready = 0
        self.latest: dict[int, dict[str, Any]] = {}
        self.online_info: dict[int, dict[str, Any]] = {}
        self.sent_done: dict[int, int] = {}
        self.finals: dict[int, dict[str, Any]] = {}
        self.latencies = array.array("q")  # µs, everything so far
        self.ticks: list[dict[str, Any]] = []
        self.prev: dict[str, int] = {}
        self.measure_start = self.last_tick = self.deadline = 0.0
        self.tick_sec = 1  # the next tick, in whole seconds of the measured phase
        self.snaps: dict[int, dict[int, dict[str, Any]]] = {}  # second -> worker -> counters
        self.buckets: dict[int, array.array[int]] = {}  # second -> latencies in it, µs
        self.next_progress = 0.0
        self.login_start = self.send_start = 0.0
        self.rss_before: int | None = None
        self.rss_after: int | None = None
        self.server_cpu_start: float | None = None
        self.server_cpu: float | None = None
        self.pairs_expected: int | None = None  # presence --roster-size

    # -- processes and messages

    def run(self) -> dict[str, Any]:
        opts = self.opts
        context = multiprocessing.get_context("fork")
        for shard in _split(range(opts.first_user, opts.first_user + opts.users), opts.processes):
            parent_end, child_end = context.Pipe()
            proc = context.Process(target=_worker_main, args=(opts, shard, child_end),
                                   daemon=True)
            proc.start()
            child_end.close()
            self.conns[parent_end] = len(self.procs)
            self.procs.append(proc)
        try:
            self._loop()
        except BaseException:
            for proc in self.procs:
                proc.kill()
            raise
        finally:
            for proc in self.procs:
                proc.join(timeout=CLOSE_WAIT_S + 5)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        return self._summary()

    def _loop(self) -> None:
        while len(self.finals) < len(self.procs):
            timeout = max(0.0, min(self._next_event(), time.time() + 0.1) - time.time())
            for conn in multiprocessing.connection.wait(list(self.conns), timeout):
                try:
                    message = conn.recv()
                except EOFError:
                    i = self.conns.pop(conn)
                    if i not in self.finals:
                        raise WorkerCrashed(f"worker {i} exited without its figures") from None
                    continue
                self._handle(self.conns[conn], message)
            self._step(time.time())

    def _broadcast(self, message: tuple[Any, ...]) -> None:
        for conn in self.conns:
            conn.send(message)

    def _handle(self, i: int, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "stats":
            self._stats(i, *message[1:])
        elif kind == "ready":
            self.ready += 1
            if self.ready == len(self.procs):
                self._begin_login()
        elif kind == "online":
            self.online_info[i] = message[1]
            if len(self.online_info) == len(self.procs):
                self._all_online()
        elif kind == "sent_done":
            self.sent_done[i] = message[1]
        elif kind == "final":
            self.finals[i] = message[1]
        elif kind == "crash":
            raise WorkerCrashed(f"worker {i} crashed:\n{message[1]}")

    def _stats(self, i: int, counters: dict[str, Any], base: float, k: float,
               on_grid: bool) -> None:
        """A worker's counters at ``base + k * REPORT_S``; whole seconds make the ticks."""
        samples = array.array("q")
        samples.frombytes(counters.pop("latencies"))
        self.latencies.extend(samples)
        self.latest[i] = counters
        if base != self.measure_start or self.phase not in self.MEASURED[self.opts.scenario]:
            return
        per_s = round(1 / REPORT_S)
        sec = max(self.tick_sec, math.ceil(k / per_s - 1e-9))
        self.buckets.setdefault(sec, array.array("q")).extend(samples)
        if on_grid and k % per_s == 0:
            self.snaps.setdefault(int(k) // per_s, {})[i] = counters
            while len(self.snaps.get(self.tick_sec, ())) == len(self.procs):
                snap = self.snaps.pop(self.tick_sec)
                self._tick(self.measure_start + self.tick_sec, self.totals(snap.values()),
                           self.buckets.pop(self.tick_sec, array.array("q")))
                self.tick_sec += 1

    def totals(self, reports: Any = None) -> dict[str, Any]:
        """Counters summed over the workers' latest reports (or over ``reports``)."""
        reports = list(self.latest.values() if reports is None else reports)
        keys = ("ok", "failed", "online", "disconnects", "sent", "delivered", "duplicated",
                "errors", "echoes", "stale", "presences", "pairs", "strangers", "rosters",
                "roster_items")
        total = {k: sum(c[k] for c in reports) for k in keys}
        total["last_delivery"] = max((c["last_delivery"] for c in reports), default=0.0)
        total["last_pair"] = max((c["last_pair"] for c in reports), default=0.0)
        return total

    # -- phases

    def _begin_login(self) -> None:
        if self.opts.scenario == "idle" and self.opts.server_pid:
            self.rss_before = server_rss(self.opts.server_pid)
        self.login_start = time.time() + 0.05
        self.next_progress = self.login_start + 1.0
        self._broadcast(("login", self.login_start))
        self.phase = "login"
        log(f"{self.opts.scenario}: logging in {self.opts.users} users with "
            f"{len(self.procs)} process(es)")
        if self.opts.scenario in ("connect", "presence"):
            self._measure(self.login_start)

    def _measure(self, start: float) -> None:
        self.measure_start = self.last_tick = start
        self.prev = self.totals() if self.latest else {}
        if self.opts.server_pid:
            self.server_cpu_start = server_cpu(self.opts.server_pid)

    def _all_online(self) -> None:
        total = self.totals()
        last_ok = max((o["last_ok"] for o in self.online_info.values()), default=0.0)
        log(f"logins: {total['ok']} ok, {total['failed']} failed"
            + (f" in {last_ok - self.login_start:.2f} s" if total["ok"] else ""))
        reasons = self._reasons()
        if reasons:
            log(f"login failures: {reasons}")
        now = time.time()
        scenario = self.opts.scenario
        if scenario == "connect":
            self._stop(now)
        elif scenario == "one_to_one":
            online = sorted(i for o in self.online_info.values() for i in o["indices"])
            if not online:
                self._stop(now)
                return
            self.send_start = now + 0.2
            for conn, i in self.conns.items():
                share = self.opts.rate * len(self.online_info[i]["indices"]) / len(online)
                conn.send(("go", self.send_start, online, share, self.opts.duration))
            self.phase = "send"
            self.deadline = self.send_start + self.opts.duration
            self._measure(self.send_start)
            log(f"sending {self.opts.rate:g} msg/s for {self.opts.duration:g} s")
        elif scenario == "idle":
            start = now + 0.1
            self._broadcast(("go", start))
            self.phase = "hold"
            self.deadline = start + self.opts.duration
            self._measure(start)
            log(f"holding {total['online']} sessions for {self.opts.duration:g} s")
        elif self.opts.roster_size:
            online = [i for o in self.online_info.values() for i in o["indices"]]
            self.pairs_expected = expected_pairs(online, self.opts.first_user,
                                                 self.opts.users, self.opts.roster_size)
            self.phase = "presence"
            self.deadline = now + self.opts.duration
            log(f"waiting up to {self.opts.duration:g} s for {self.pairs_expected} "
                f"presence pairs ({total['pairs']} seen so far)")
        else:
            self.phase = "echo"
            self.deadline = now + ECHO_WAIT_S

    def _next_event(self) -> float:
        candidates = [self.next_progress or math.inf]
        if self.phase in ("send", "drain", "hold", "echo", "presence"):
            candidates.append(self.deadline)
        return min(candidates)

    def _step(self, now: float) -> None:
        phase = self.phase
        if self.next_progress and now >= self.next_progress:
            self.next_progress = now + 1.0
            if phase == "login" and self.opts.scenario not in ("connect", "presence"):
                total = self.totals()
                log(f"login: {total['ok']} ok, {total['failed']} failed of {self.opts.users}")
        if phase == "send" and now >= self.deadline:
            self.phase = "drain"
            self.deadline += DRAIN_S
            log("sending done; draining")
        elif phase == "drain":
            total = self.totals()
            if (len(self.sent_done) == len(self.procs)
                    and total["delivered"] + total["errors"] >= total["sent"]) \
                    or now >= self.deadline:
                self._stop(now)
        elif phase == "hold" and now >= self.deadline:
            if self.opts.server_pid:
                self.rss_after = server_rss(self.opts.server_pid)
            self._stop(now)
        elif phase == "echo":
            total = self.totals()
            if total["echoes"] >= total["ok"] or now >= self.deadline:
                self._stop(now)
        elif phase == "presence":
            seen, expected = self.totals()["pairs"], self.pairs_expected or 0
            if seen >= expected or now >= self.deadline:
                log(f"presence: {seen} of {expected} contact pairs seen"
                    + (f"; {expected - seen} missing after {self.opts.duration:g} s"
                       if seen < expected else ""))
                self._stop(now)

    def _tick(self, end: float, total: dict[str, Any], samples: array.array[int]) -> None:
        """One tick line: counts over the interval that ends at ``end`` (``dt`` long)."""
        prev = self.prev or dict.fromkeys(total, 0)
        scenario = self.opts.scenario
        phase = self.phase
        if scenario == "one_to_one":
            phase = "send" if end <= self.send_start + self.opts.duration + 1e-6 else "drain"
        tick: dict[str, Any] = {"kind": "tick", "t": round(end - self.measure_start, 3),
                                "dt": round(end - self.last_tick, 3), "phase": phase,
                                "online": total["online"]}
        self.last_tick = end
        if scenario in ("connect", "presence"):
            tick["logins_ok"] = total["ok"] - prev["ok"]
            tick["logins_failed"] = total["failed"] - prev["failed"]
            if scenario == "presence":
                tick["echoes"] = total["echoes"] - prev["echoes"]
                tick["presences"] = total["presences"] - prev["presences"]
                tick["pairs"] = total["pairs"] - prev["pairs"]
                tick["pairs_seen"] = total["pairs"]
        elif scenario == "one_to_one":
            samples = sorted(samples)
            tick.update(sent=total["sent"] - prev["sent"],
                        delivered=total["delivered"] - prev["delivered"],
                        errors=total["errors"] - prev["errors"],
                        latency_p50_ms=_ms(_percentile(samples, 50)),
                        latency_p99_ms=_ms(_percentile(samples, 99)))
        else:
            tick["rss_bytes"] = server_rss(self.opts.server_pid) if self.opts.server_pid \
                else None
        self.prev = total
        self.ticks.append(tick)
        self.out.emit(tick)
        log(" ".join(f"{k}={v}" for k, v in tick.items() if k != "kind"))

    def _stop(self, now: float) -> None:
        if self.phase in self.MEASURED[self.opts.scenario] and now - self.last_tick > 0.05:
            samples = array.array("q")  # the last, partial interval
            for sec in sorted(self.buckets):
                samples.extend(self.buckets[sec])
            self._tick(now, self.totals(), samples)
        if self.server_cpu_start is not None:
            end = server_cpu(self.opts.server_pid)
            self.server_cpu = round(end - self.server_cpu_start, 3)
        self._broadcast(("stop",))
        self.phase = "stopping"
        self.next_progress = 0.0
        log("disconnecting")

    # -- results

    def _reasons(self) -> dict[str, int]:
        reasons: collections.Counter[str] = collections.Counter()
        for info in self.online_info.values():
            reasons.update(info["reasons"])
        return dict(reasons.most_common(10))

    def _summary(self) -> dict[str, Any]:
        opts = self.opts
        scenario = opts.scenario
        total = self.totals()
        samples = sorted(self.latencies)
        ok = total["ok"]
        last_ok = max((o["last_ok"] for o in self.online_info.values()), default=0.0)
        to_online = round(last_ok - self.login_start, 3) if ok else None
        reasons: collections.Counter[str] = collections.Counter()
        stream_errors: collections.Counter[str] = collections.Counter()
        for final in self.finals.values():
            reasons.update(final["reasons"])
            stream_errors.update(final["stream_errors"])
        cpu_run = sum(f["cpu_run_s"] for f in self.finals.values())
        figures: dict[str, Any] = dict.fromkeys(
            ("sent", "delivered", "lost", "duplicated", "errors", "delivered_per_s",
             "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "latency_max_ms",
             "sent_per_s", "generator_cpu_us_per_msg"))
        presence: dict[str, Any] = {}
        if scenario == "one_to_one":
            sent, delivered = total["sent"], total["delivered"]
            span = total["last_delivery"] - self.send_start
            figures.update(
                sent=sent, delivered=delivered, lost=max(0, sent - delivered),
                duplicated=total["duplicated"], errors=total["errors"],
                delivered_per_s=round(delivered / span, 1) if delivered and span > 0 else None,
                sent_per_s=round(sent / opts.duration, 1) if opts.duration else None,
                generator_cpu_us_per_msg=round(cpu_run / sent * 1e6, 2) if sent else None)
        elif scenario == "presence":
            figures.update(sent=ok, delivered=total["echoes"], lost=ok - total["echoes"])
            presence = self._presence_figures(total)
        if samples:
            figures.update(latency_p50_ms=_ms(_percentile(samples, 50)),
                           latency_p95_ms=_ms(_percentile(samples, 95)),
                           latency_p99_ms=_ms(_percentile(samples, 99)),
                           latency_max_ms=_ms(samples[-1]))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        generator_cpu = sum(f["cpu_s"] for f in self.finals.values()) \
            + usage.ru_utime + usage.ru_stime
        rss_delta = None
        if self.rss_before is not None and self.rss_after is not None and total["online"]:
            rss_delta = round((self.rss_after - self.rss_before) / total["online"])
        return summary(
            opts,
            users=opts.users, logins_ok=ok, logins_failed=total["failed"],
            login_rate_per_s=round(ok / to_online, 1) if to_online else None,
            time_to_all_online_s=to_online,
            **{k: v for k, v in figures.items() if k not in ("sent_per_s",
                                                              "generator_cpu_us_per_msg")},
            rss_before_bytes=self.rss_before, rss_after_bytes=self.rss_after,
            rss_per_session_bytes=rss_delta,
            generator_cpu_s=round(generator_cpu, 3),
            elapsed_s=round(time.time() - self.started, 3),
            # extras
            sent_per_s=figures["sent_per_s"],
            generator_cpu_login_s=round(sum(f["cpu_login_s"] for f in self.finals.values()), 3),
            generator_cpu_run_s=round(cpu_run, 3),
            generator_cpu_us_per_msg=figures["generator_cpu_us_per_msg"],
            server_cpu_s=self.server_cpu,
            sessions_at_end=total["online"], disconnects=total["disconnects"],
            stale=total["stale"] if scenario == "one_to_one" else None,
            login_failure_reasons=dict(reasons.most_common(10)),
            stream_errors=dict(stream_errors),
            processes=len(self.procs),
            **presence,
        )

    def _presence_figures(self, total: dict[str, Any]) -> dict[str, Any]:
        """The presence scenario's extras (see :func:`summary`)."""
        figures: dict[str, Any] = {
            "roster_size": self.opts.roster_size,
            "presence_stanzas_received": total["presences"],
            "presence_from_non_contacts": total["strangers"]}
        if not self.opts.roster_size:
            return figures
        expected, seen = self.pairs_expected or 0, total["pairs"]
        complete = seen >= expected
        span = total["last_pair"] - self.login_start if seen else None
        figures.update(
            presence_pairs_expected=expected, presence_pairs_seen=seen,
            presence_pairs_missing=max(0, expected - seen), presence_complete=complete,
            time_to_full_presence_s=round(span, 3) if complete and span is not None else None,
            presence_pairs_per_s=round(seen / span, 1) if span else None,
            presence_duplicates=total["presences"] - total["strangers"] - seen,
            roster_results=total["rosters"], roster_items_received=total["roster_items"],
            roster_items_expected=total["ok"] * self.opts.roster_size)
        return figures


def summary(opts: argparse.Namespace, **figures: Any) -> dict[str, Any]:
    """The summary record: the contract's keys first (null unless given), then extras.

    Extras: ``available`` (and ``reason`` when false); ``sent_per_s`` (sent over
    ``--duration``); ``generator_cpu_login_s`` / ``generator_cpu_run_s`` (the workers' CPU
    while logging in / from ``go`` to ``stop``); ``generator_cpu_us_per_msg`` (run CPU per
    message sent, each also received by the generator); ``server_cpu_s`` (CPU of the
    ``--server-pid`` processes and their children during the measured phase);
    ``sessions_at_end``; ``disconnects`` (sessions the server closed before the end);
    ``stale`` (messages of an earlier run that the server delivered during this one);
    ``login_failure_reasons`` (the 10 commonest, with counts); ``stream_errors``;
    ``processes`` (workers actually used); presence: ``roster_size``,
    ``presence_stanzas_received``, ``presence_from_non_contacts`` and, with
    ``--roster-size``, ``presence_pairs_expected``, ``presence_pairs_seen``,
    ``presence_pairs_missing``, ``presence_complete``, ``time_to_full_presence_s``,
    ``presence_pairs_per_s``, ``presence_duplicates``, ``roster_results``,
    ``roster_items_received``, ``roster_items_expected`` (see the module docstring)."""
    record: dict[str, Any] = {"kind": "summary", "scenario": opts.scenario, "label": opts.label,
                              "params": params(opts)}
    for key in ("users", "logins_ok", "logins_failed", "login_rate_per_s",
                "time_to_all_online_s", "sent", "delivered", "lost", "duplicated", "errors",
                "delivered_per_s", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
                "latency_max_ms", "rss_before_bytes", "rss_after_bytes",
                "rss_per_session_bytes", "generator_cpu_s", "elapsed_s", "results_dir"):
        record[key] = figures.pop(key, None)
    record["results_dir"] = str(opts.results)
    record["available"] = figures.pop("available", True)
    record.update(figures)
    return record


def params(opts: argparse.Namespace) -> dict[str, Any]:
    names = ("host", "port", "domain", "users", "user_prefix", "first_user", "tls",
             "mechanism", "rate", "duration", "login_rate", "concurrency", "processes",
             "source_addresses", "server_pid", "roster_size", "force", "quick")
    return {name: getattr(opts, name) for name in names}


def _split(users: range, parts: int) -> list[range]:
    size, extra = divmod(len(users), parts)
    shards, start = [], users.start
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        shards.append(range(start, end))
        start = end
    return [s for s in shards if len(s)]


def _percentile(ordered: list[int], p: float) -> int | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not ordered:
        return None
    return ordered[max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))]


def _ms(us: int | None) -> float | None:
    return None if us is None else round(us / 1000, 3)


def _server_processes(pids: list[int]) -> list[Any]:
    import psutil

    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            procs.append(proc)
            procs.extend(proc.children(recursive=True))
    return procs


def server_rss(pids: list[int]) -> int:
    """RSS of the server's processes and all their children, summed."""
    import psutil

    total = 0
    for proc in _server_processes(pids):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def server_cpu(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for proc in _server_processes(pids):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


# -- plot ----------------------------------------------------------------------------------


def plot(path: Path, record: dict[str, Any], ticks: list[dict[str, Any]]) -> bool:
    """Write ``plot.png``; False (and a note on stderr) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install -e .[bench]): no plot.png")
        return False
    scenario = record["scenario"]
    title = f"{scenario}" + (f" — {record['label']}" if record["label"] else "")
    t = [tick["t"] for tick in ticks]

    def per_s(key: str) -> list[float]:
        return [x[key] / x["dt"] if x["dt"] > 0 else 0.0 for x in ticks]

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    fig.suptitle(title)
    if not record["available"]:
        top.axis("off")
        bottom.axis("off")
        top.text(0.5, 0.5, f"not available: {record.get('reason', '')}", ha="center",
                 va="center", wrap=True)
    elif scenario == "one_to_one":
        top.plot(t, per_s("sent"), label="sent/s")
        top.plot(t, per_s("delivered"), label="delivered/s")
        top.set_ylabel("messages/s")
        top.legend()
        for key, name in (("latency_p50_ms", "p50"), ("latency_p99_ms", "p99")):
            bottom.plot(t, [x[key] if x[key] is not None else math.nan for x in ticks],
                        label=name)
        bottom.set_ylabel("latency, ms")
        bottom.legend()
    elif scenario == "presence" and record.get("presence_pairs_expected") is not None:
        top.plot(t, per_s("presences"), label="presences received/s")
        top.plot(t, per_s("pairs"), label="new contact pairs/s")
        top.plot(t, per_s("logins_ok"), label="logins ok/s")
        top.set_ylabel("per second")
        top.legend()
        expected = record["presence_pairs_expected"] or 1
        bottom.plot([0.0, *t], [0.0, *(100 * x["pairs_seen"] / expected for x in ticks)],
                    label="contact pairs seen, %")
        bottom.plot([0.0, *t], [0.0, *(100 * x["online"] / record["users"] for x in ticks)],
                    label="users online, %")
        bottom.set_ylabel("% of expected")
        bottom.legend()
    elif scenario in ("connect", "presence"):
        ok = per_s("logins_ok")
        width = [-0.8 * x["dt"] for x in ticks]  # each bar left of its interval's end
        top.bar(t, ok, width=width, align="edge", label="logins ok/s")
        top.bar(t, per_s("logins_failed"), width=width, align="edge", bottom=ok,
                label="failed/s")
        top.set_ylabel("logins/s")
        top.legend()
        bottom.plot(t, [x["online"] for x in ticks], label="online")
        bottom.set_ylabel("sessions online")
    else:
        top.plot(t, [x["online"] for x in ticks])
        top.set_ylabel("sessions online")
        rss = [x["rss_bytes"] for x in ticks]
        if any(r is not None for r in rss):
            bottom.plot(t, [r / 2**20 if r is not None else math.nan for r in rss])
            bottom.set_ylabel("server RSS, MiB")
        else:
            bottom.text(0.5, 0.5, "no --server-pid: no RSS", ha="center", va="center")
    bottom.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# -- command line --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="xmppload.py", description=__doc__.split("\n\n")[0],
        epilog="Output, figures and exit status: see the module docstring.")
    add = parser.add_argument
    add("scenario", choices=SCENARIOS)
    add("--host", default="127.0.0.1", help="server address (default %(default)s)")
    add("--port", type=int, default=5222, help="c2s port (default %(default)s)")
    add("--domain", default="localhost", help="XMPP domain (default %(default)s)")
    add("--users", type=_positive(int), default=None,
        help="N users: PREFIX{first} .. PREFIX{first+N-1} (default 100)")
    add("--user-prefix", default="u", help="(default %(default)s)")
    add("--first-user", type=int, default=1, help="(default %(default)s)")
    add("--password", default="pw", help="every user's password (default %(default)s)")
    add("--tls", choices=("none", "starttls", "direct"), default="none",
        help="direct: TLS from the first byte, XEP-0368 (default %(default)s)")
    add("--mechanism", choices=("PLAIN", "SCRAM-SHA-256"), default="PLAIN",
        help="SASL mechanism (default %(default)s)")
    add("--rate", type=_positive(float), default=None,
        help="one_to_one: messages/s in total (default 1000)")
    add("--duration", type=_non_negative(float), default=None,
        help="seconds of sending (one_to_one) or holding (idle) (default 10)")
    add("--login-rate", type=_non_negative(float), default=500.0,
        help="logins/s in total; 0: as fast as --concurrency allows (default %(default)g)")
    add("--concurrency", type=_positive(int), default=100,
        help="logins in flight at most, in total (default %(default)s)")
    add("--processes", type=_positive(int), default=None,
        help="generator processes; the users are split between them (default: CPU count)")
    add("--source-addresses", type=_non_negative(int), default=16,
        help="loopback host: bind connection i to 127.0.0.(1+i%%K) (default %(default)s)")
    add("--results", type=Path, default=None,
        help="directory for events.jsonl and plot.png "
             "(default bench/results/SCENARIO-TIMESTAMP)")
    add("--server-pid", type=int, action="append", default=[],
        help="a server process (repeatable): its RSS and CPU, children included")
    add("--label", default=None, help="name of the server under test, echoed in the output")
    add("--roster-size", type=_non_negative(int), default=0,
        help="presence: R contacts per user, its ring neighbours i±1 .. i±R/2 (R even, "
             "less than --users; the rosters must be in the server already: "
             "bench/roster_setup.py) (default %(default)s)")
    add("--force", action="store_true",
        help="presence without rosters: time each user's own presence echo")
    add("--quick", action="store_true",
        help="smoke test: users 10, duration 2, rate 200, processes 1 "
             "(options given explicitly win)")
    opts = parser.parse_args(argv)
    opts.run_id = os.urandom(4).hex()
    defaults = {"users": 100, "duration": 10.0, "rate": 1000.0, "processes": os.cpu_count() or 1}
    for key, default in defaults.items():
        if getattr(opts, key) is None:
            setattr(opts, key, QUICK[key] if opts.quick else default)
    opts.processes = max(1, min(opts.processes, opts.users))
    if opts.roster_size and (opts.roster_size % 2 or opts.roster_size >= opts.users):
        parser.error(f"--roster-size {opts.roster_size}: must be even and less than --users "
                     f"({opts.users})")
    if opts.source_addresses > 254:
        parser.error("--source-addresses: at most 254")
    if opts.results is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        results = Path(__file__).resolve().parent / "results"
        opts.results = results / f"{opts.scenario}-{stamp}"
        n = 1
        while opts.results.exists():
            n += 1
            opts.results = results / f"{opts.scenario}-{stamp}-{n}"
        results.mkdir(parents=True, exist_ok=True)
        ignore = results / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# written by bench/xmppload.py: run output, not sources\n*\n")
    return opts


def _positive(kind: type) -> Any:
    def convert(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text}")
        return value
    return convert


def _non_negative(kind: type) -> Any:
    def convert(text: str) -> Any:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
        return value
    return convert


def raise_nofile_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit (capped at 2**20 if that is unlimited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    opts = parse_args(argv)
    raise_nofile_limit()
    opts.results.mkdir(parents=True, exist_ok=True)
    out = Output(opts.results)
    try:
        if opts.scenario == "presence" and not opts.force and not opts.roster_size:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            record = summary(
                opts, users=opts.users, available=False,
                generator_cpu_s=round(usage.ru_utime + usage.ru_stime, 3),
                elapsed_s=round(time.time() - started, 3),
                reason="presence needs --roster-size R (contacts per user, rosters "
                       "provisioned in the server beforehand: bench/roster_setup.py) or "
                       "--force (no rosters: each user's own presence echo)")
            ticks: list[dict[str, Any]] = []
        else:
            run = Run(opts, out)
            try:
                record = run.run()
            except WorkerCrashed as crash:
                log(str(crash))
                return 1
            ticks = run.ticks
        plot(opts.results / "plot.png", record, ticks)
        out.emit(record)
    finally:
        out.close()
    log(f"results in {opts.results}")
    return 3 if record["available"] and not record["logins_ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
