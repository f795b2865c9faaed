"""The transport: batched, ordered, bounded message frames between OS processes, over ZeroMQ.

One :class:`Transport` per OS process (the root process of a node and each of its
workers) runs on that process's scheduler loop. It moves opaque items -- anything
:mod:`otp.codec` can encode -- to named peer processes and hands received items to one
callback. Pids, links, monitors and heartbeats are the distribution layer's business, on
top of this module; here a peer is just a name, ``(node, worker)``, and an address.

Sockets
    Inbound, each process binds PULL sockets: ipc:// for peers on the same host, tcp://
    for other nodes. Without CURVE one PULL socket binds every address. With CURVE there
    are two, because ZeroMQ applies a security mechanism per socket, not per endpoint: a
    plain one for the ipc addresses and a CURVE server for the tcp ones (see Security).
    Outbound, the process keeps one PUSH socket per peer it talks to, connected to one
    address of that peer, opened by :meth:`Transport.connect` and kept open.

    The sockets are plain (not ``zmq.asyncio``) sockets watched with ``loop.add_reader``
    on their ``FD``, which works on uvloop and stock asyncio alike. ZeroMQ's FD is edge
    triggered: it signals that the socket's state may have changed, and it signals again
    only after the socket has been read until ``EAGAIN``. So a reader drains until
    ``zmq.Again``, reads once as soon as it is registered (frames or events that came
    before would never be signalled), and if it stops early (see Receiving) schedules
    itself to continue, because the FD will not fire again for frames already queued.

Batching
    :meth:`Transport.send` appends the item to the peer's batch; the first send of a
    loop turn schedules one flush with ``loop.call_soon``. The flush encodes each peer's
    batch with ``otp.codec.dumps(list_of_items)`` into one frame (split every
    :attr:`Transport.max_batch` items) and sends it without blocking. A frame costs a few
    microseconds of CPU to send and to receive, an item in a frame a fraction of one
    beyond its encoding, so under load, when batches grow, the cost per item falls
    towards that of msgpack. At low load a batch holds one item and the cost is the
    frame's, with no timer and no added wait: the flush runs in the loop's next round of
    callbacks, which does not sleep since it has work.

    An item that ``dumps`` refuses (a type the codec does not know) is found when its
    batch is encoded: the batch is then encoded item by item, the bad items are dropped,
    counted (``unencodable``) and logged (``what=transport_unencodable``), and the rest
    go out. The sender is not told; a distribution layer that wants the error at the
    call site can check values itself before sending.

Ordering
    Items from one sender process to one receiver process arrive in the order they were
    sent: the sender appends them to one batch list, sends the frames in order on the one
    PUSH socket it has for that peer, which has a single connected pipe; the receiver's
    PULL socket keeps each pipe's order (it fair-queues between pipes, i.e. between
    senders) and its reader decodes frames one after another. Items from different
    senders have no mutual order, as in Erlang.

    What breaks it: anything that replaces or interrupts that one path. Dropped frames
    (high-water mark, below) leave a gap in the sequence, without reordering. A lost
    connection that ZeroMQ re-establishes by itself (a TCP reset, a peer's restart at the
    same address) loses what was in the kernel's buffers and the peer's queue, and later
    frames follow: again a gap -- and after a restart at the same address, frames queued
    for the old process reach the new one. :meth:`Transport.connect` to a new address (a
    restarted worker) or :meth:`Transport.disconnect` discards what was queued for the
    old socket, so nothing meant for the old process reaches the new one from this
    queue; but moving a *live* peer to another of its addresses can let frames still in
    flight on the old path arrive after the first ones on the new path. The peer events
    (below) tell the distribution layer when a connection was lost, so it can report
    ``noconnection`` and reconnect; telling a restarted process from its predecessor
    (Erlang's creation number) is its job too.

High-water marks: sends never block, overload drops
    Erlang's send never blocks the sender, and one dead or slow peer must not stall the
    scheduler, which runs every actor of the process. So every send is ``NOBLOCK``. Each
    PUSH socket queues at most ``hwm`` frames (``SNDHWM``) and each PULL socket at most
    ``hwm`` frames per sender (``RCVHWM``); the kernel's socket buffers hold a little
    more. When a peer does not keep up, its queues fill, the send fails with
    ``zmq.Again``, and the frame is dropped: its items are added to the ``dropped``
    counters (total and per peer) and a warning (``what=transport_dropped``, with the
    number of items dropped since the previous warning) is logged at most once a second
    per peer. While a peer's queue stays full, its batches are dropped without being
    encoded, so a stuck peer costs the sender little CPU as well as little memory. Items
    for a peer that has no socket are dropped and counted the same way. Items lost this
    way are lost as if the peer were partitioned away, which is the failure the monitor
    and heartbeat layer exists to report. The sender's memory for a stuck peer is bounded
    by ``hwm`` frames of at most :attr:`max_batch` items, and so is the receiver's for
    each sender.

    ``ZMQ_LINGER`` is 0 on every socket: closing a socket or the transport discards what
    is still queued instead of waiting for a peer that may be gone, so a worker's
    shutdown, :meth:`disconnect` and ``close`` never hang. The one exception is asked
    for: ``close(linger=s)`` gives frames already sent (a root's ``leave``) up to ``s``
    seconds to go out, since ZeroMQ writes them from its own I/O thread, after
    ``send`` returned; a peer that is gone costs that bounded wait, no more.

    ``ZMQ_IMMEDIATE`` stays off (ZeroMQ's default): a PUSH socket queues frames for a
    peer it has not reached yet, up to the high-water mark, and delivers them once the
    connection is up. That is Erlang's behaviour (the first send to a node sets up the
    connection and goes out when it is up) and it lets the distribution layer send right
    after :meth:`connect` while the peer is still binding or the CURVE handshake is in
    progress. With ``IMMEDIATE`` on, those frames would be dropped and every first
    contact would need a handshake of its own. The cost is that frames sent to a dead
    peer wait in its queue (bounded by ``hwm``) until the distribution layer gives up on
    it and calls :meth:`disconnect`.

Receiving
    A readable PULL socket is drained frame by frame until ``zmq.Again`` or until
    :attr:`Transport.recv_budget` items have been delivered in this callback; then the
    reader yields to the loop (other sockets, timers, actors' run queue) and continues in
    a later turn. Each frame is decoded with ``otp.codec.loads`` and its items are given
    to ``on_items`` in order. A frame that does not decode to a list is dropped, counted
    (``bad_frames``) and logged (``what=transport_bad_frame``); an exception from
    ``on_items`` is logged (``what=transport_on_items_error``). Neither stops the loop or
    later frames.

Peer events
    With ``on_peer_event``, each PUSH socket gets a ZeroMQ socket monitor and the
    transport calls ``on_peer_event(peer, event)`` on the loop when the connection state
    changes: ``"up"`` (connected and handshake done), ``"down"`` (the connection was
    lost; ZeroMQ keeps reconnecting) and ``"auth_failed"`` (the peer refused our
    handshake: wrong cluster keys; logged once per episode as
    ``what=transport_handshake_failed``). These detect a closed connection at once; a
    peer that hangs with its connection open is the heartbeats' job.

Security
    With ``curve`` keys, every tcp connection is CURVE-encrypted and authenticated with
    the cluster's single keypair (:mod:`otp.curve`). The tcp PULL socket is a CURVE server
    with that keypair, and the PUSH sockets to tcp addresses are CURVE clients that
    present the same keypair as their own. A ZAP handler (pyzmq's
    ``AsyncioAuthenticator``, running on this loop; it works on uvloop) accepts a client
    only if its public key is the cluster's: the CURVE handshake proves that the client
    holds the matching secret key, so knowing the public key is not enough, and a client
    with no keys or another keypair cannot get one frame through. The handler is bound
    before the CURVE socket binds and stays until after it closes: without a handler,
    libzmq accepts any client that knows the server's public key.

    ipc addresses are not encrypted: they are unix sockets on the same host, protected by
    the file system. The distribution layer puts them in a directory of mode 0700, and
    the transport makes each socket file mode 0600 after binding it. Since CURVE is per
    socket, the ipc addresses are bound on a separate plain PULL socket (see Sockets);
    putting CURVE on ipc too would cost encryption on the hottest path for no gain.

    Without ``curve`` keys, tcp is plain and open to anyone who can reach the port: for
    tests and single-host setups only. Binding a non-loopback tcp address that way logs a
    warning (``what=transport_insecure_bind``).

Files
    :meth:`close` removes the ipc socket files this transport bound, unless another
    process has bound the same path since (a bind replaces the file; its inode tells).

Threads
    Every method runs on the loop's thread; :meth:`Transport.start` must be called from
    a callback or coroutine running on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any

import zmq
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils.monitor import parse_monitor_message

from otp.codec import dumps, loads
from otp.curve import CurveKeys

__all__ = ["Peer", "Transport"]

logger = logging.getLogger("otp.transport")

Peer = tuple[str, int]
"""A peer process: ``(node name, worker number)``."""

ZAP_DOMAIN = "mongoose-cluster"

_WARN_INTERVAL = 1.0  # seconds between two transport_dropped warnings for one peer

_MONITOR_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_AUTH_FAILED_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def _peer_str(peer: Peer) -> str:
    return f"{peer[0]}/{peer[1]}"


def _scheme(address: str) -> str:
    return address.split("://", 1)[0]


def _is_loopback(address: str) -> bool:
    host = address.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


class _ClusterKey:
    """ZAP credentials provider: accepts exactly the cluster's public key."""

    def __init__(self, public: bytes) -> None:
        self._public = public

    def callback(self, domain: str, key: bytes) -> bool:
        return domain == ZAP_DOMAIN and hmac.compare_digest(key, self._public)


class _Inbound:
    __slots__ = ("resume_scheduled", "sock")

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.resume_scheduled = False


class _Outbound:
    __slots__ = ("address", "congested", "monitor", "sock", "state")

    def __init__(self, sock: zmq.Socket, address: str) -> None:
        self.sock = sock
        self.address = address
        self.congested = False  # the last send found the queue full
        self.monitor: zmq.Socket | None = None
        self.state = "connecting"


class Transport:
    """This process's end of the cluster's ZeroMQ mesh; see the module docstring.

    Args:
        loop: the scheduler's event loop; every method runs on its thread.
        name: this process's own peer name, ``(node name, worker number)``.
        bind: addresses to receive on, e.g. ``["ipc:///run/x/w1", "tcp://10.0.0.5:0"]``;
            tcp port 0 picks a free port (see :attr:`addresses`).
        curve: the cluster's keypair; when given, tcp is CURVE-encrypted and only
            holders of the secret key may connect.
        hwm: high-water mark per peer, in frames, for each outbound and inbound queue.
        on_items: called on the loop with the list of items of each received frame.
        on_peer_event: called on the loop as ``on_peer_event(peer, event)`` with
            ``"up"``, ``"down"`` or ``"auth_failed"`` for outbound connections.
    """

    max_batch = 1000
    """Items per frame at most: a larger batch goes out as several frames."""

    recv_budget = 4096
    """Items a reader delivers before it yields to the rest of the loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        name: Peer,
        bind: list[str],
        curve: CurveKeys | None = None,
        hwm: int = 10_000,
        on_items: Callable[[list[Any]], None],
        on_peer_event: Callable[[Peer, str], None] | None = None,
    ) -> None:
        if hwm < 1:
            raise ValueError("hwm must be at least 1")
        for address in bind:
            if _scheme(address) not in ("ipc", "tcp"):
                raise ValueError(f"unsupported address {address!r}")
        self._loop = loop
        self.name = name
        self._bind = list(bind)
        self._curve = curve
        self._hwm = hwm
        self._on_items = on_items
        self._on_peer_event = on_peer_event
        self._ctx: zmq.Context | None = None
        self._auth: AsyncioAuthenticator | None = None
        self._inbound: list[_Inbound] = []
        self._addresses: list[str] = []
        self._ipc_files: list[tuple[str, int, int]] = []
        self._out: dict[Peer, _Outbound] = {}
        self._batches: dict[Peer, list[Any]] = {}
        self._flush_scheduled = False
        self._closed = False
        self._started = False
        # counters
        self._frames_sent = 0
        self._items_sent = 0
        self._frames_received = 0
        self._items_received = 0
        self._dropped_hwm = 0
        self._dropped_unconnected = 0
        self._dropped_by_peer: dict[Peer, int] = {}
        self._unencodable = 0
        self._bad_frames = 0
        self._warned: dict[Peer, list[float]] = {}  # peer -> [time of last warning, unreported]

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Create the ZeroMQ context, bind the inbound sockets and start reading them."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop:
            raise RuntimeError("Transport.start() must be called on the transport's loop")
        if self._started:
            raise RuntimeError("Transport already started")
        self._started = True
        self._ctx = ctx = zmq.Context()
        plain = self._bind
        secure: list[str] = []
        if self._curve is not None:
            plain = [a for a in self._bind if _scheme(a) != "tcp"]
            secure = [a for a in self._bind if _scheme(a) == "tcp"]
        if secure:
            assert self._curve is not None
            # The ZAP handler must be in place before the CURVE socket accepts anyone.
            self._auth = AsyncioAuthenticator(ctx, log=logging.getLogger("otp.transport.zap"))
            self._auth.configure_curve_callback(ZAP_DOMAIN, _ClusterKey(self._curve.public))
            self._auth.start()
        bound: dict[str, str] = {}
        try:
            if plain:
                sock = self._pull_socket()
                for address in plain:
                    if _scheme(address) == "tcp" and not _is_loopback(address):
                        logger.warning(
                            "binding %s without CURVE: anyone who reaches it can send",
                            address,
                            extra={"what": "transport_insecure_bind", "address": address},
                        )
                    bound[address] = self._bind_one(sock, address)
            if secure:
                sock = self._pull_socket()
                sock.curve_server = True
                sock.curve_publickey = self._curve.public
                sock.curve_secretkey = self._curve.secret
                sock.zap_domain = ZAP_DOMAIN.encode()
                for address in secure:
                    bound[address] = self._bind_one(sock, address)
        except BaseException:
            self.close()
            raise
        self._addresses = [bound[a] for a in self._bind]
        for inbound in self._inbound:
            self._loop.add_reader(inbound.sock.FD, self._on_readable, inbound)
            # A ZeroMQ FD signals only after a read has found the socket empty: read once.
            self._loop.call_soon(self._on_readable, inbound)

    def _pull_socket(self) -> zmq.Socket:
        assert self._ctx is not None
        sock = self._ctx.socket(zmq.PULL)
        sock.linger = 0
        sock.rcvhwm = self._hwm
        self._inbound.append(_Inbound(sock))
        return sock

    def _bind_one(self, sock: zmq.Socket, address: str) -> str:
        if "[" in address:
            sock.ipv6 = True
        sock.bind(address)
        real = sock.last_endpoint.decode()
        if _scheme(real) == "ipc":
            path = real[len("ipc://"):]
            if not path.startswith("@"):  # not a Linux abstract socket
                os.chmod(path, 0o600)
                st = os.stat(path)
                self._ipc_files.append((path, st.st_dev, st.st_ino))
        return real

    @property
    def addresses(self) -> list[str]:
        """The bound addresses, in the order given, with the real tcp ports."""
        return list(self._addresses)

    def close(self, linger: float = 0.0) -> None:
        """Close every socket and remove our ipc socket files. Queued frames are
        discarded, or with ``linger`` (seconds) given that long to go out: the call may
        block for as long (see High-water marks)."""
        if self._closed:
            return
        self._closed = True
        self._batches.clear()
        for inbound in self._inbound:
            if self._started:
                self._loop.remove_reader(inbound.sock.FD)
            inbound.sock.close(linger=0)
        self._inbound.clear()
        linger_ms = max(0, int(linger * 1000))
        for conn in self._out.values():
            self._close_outbound(conn, linger_ms)
        self._out.clear()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.destroy(linger=0)  # waits for the outbound sockets' own linger
            self._ctx = None
        for path, dev, ino in self._ipc_files:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == (dev, ino) and stat.S_ISSOCK(st.st_mode):
                    os.unlink(path)
        self._ipc_files.clear()

    # -- peers ---------------------------------------------------------------------------------

    def connect(self, peer: Peer, address: str) -> None:
        """Open (and keep) a PUSH socket to ``peer`` at ``address``.

        Connecting a connected peer to the same address does nothing; to another address
        (a restarted worker) it replaces the socket, discarding what was queued for the
        old one, including items sent to the peer earlier in this loop turn.
        """
        if self._ctx is None or self._closed:
            raise RuntimeError("Transport is not running")
        old = self._out.get(peer)
        if old is not None:
            if old.address == address:
                return
            self.disconnect(peer)
        sock = self._ctx.socket(zmq.PUSH)
        sock.linger = 0
        sock.sndhwm = self._hwm
        if "[" in address:
            sock.ipv6 = True
        if self._curve is not None and _scheme(address) == "tcp":
            sock.curve_publickey = self._curve.public
            sock.curve_secretkey = self._curve.secret
            sock.curve_serverkey = self._curve.public
        conn = _Outbound(sock, address)
        if self._on_peer_event is not None:
            conn.monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
            self._loop.add_reader(conn.monitor.FD, self._on_monitor, peer, conn)
        sock.connect(address)
        self._out[peer] = conn
        if conn.monitor is not None:
            # A ZeroMQ FD signals only after a read found the socket empty: read once.
            self._loop.call_soon(self._on_monitor, peer, conn)

    def disconnect(self, peer: Peer) -> None:
        """Close the socket to ``peer``, discarding what is queued for it."""
        pending = self._batches.pop(peer, None)
        if pending:
            self._drop(peer, len(pending), "disconnected")
        conn = self._out.pop(peer, None)
        if conn is not None:
            self._close_outbound(conn)

    def _close_outbound(self, conn: _Outbound, linger_ms: int = 0) -> None:
        if conn.monitor is not None:
            self._loop.remove_reader(conn.monitor.FD)
            with contextlib.suppress(zmq.ZMQError):
                conn.sock.disable_monitor()
            conn.monitor.close(linger=0)
            conn.monitor = None
        conn.sock.close(linger=linger_ms)

    # -- sending -------------------------------------------------------------------------------

    def send(self, peer: Peer, item: Any) -> None:
        """Queue ``item`` for ``peer``; it goes out with the batch at the end of this turn."""
        batch = self._batches.get(peer)
        if batch is not None:
            batch.append(item)
            return
        self._batches[peer] = [item]
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def flush(self) -> None:
        """Send what is batched now instead of at the end of this loop turn."""
        self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        batches = self._batches
        if self._closed:
            batches.clear()
            return
        self._batches = {}
        out = self._out
        max_batch = self.max_batch
        for peer, items in batches.items():
            conn = out.get(peer)
            if conn is None:
                self._drop(peer, len(items), "no_connection")
                continue
            n = len(items)
            if n <= max_batch:
                self._send_frame(peer, conn, items)
                continue
            for start in range(0, n, max_batch):
                if not self._send_frame(peer, conn, items[start:start + max_batch]):
                    rest = n - start - max_batch
                    if rest > 0:  # the queue is full: do not encode what would be dropped
                        self._drop(peer, rest, "hwm")
                    break

    def _send_frame(self, peer: Peer, conn: _Outbound, items: list[Any]) -> bool:
        """Send one frame; False if the peer's queue is full (the items are then dropped)."""
        if conn.congested and not conn.sock.get(zmq.EVENTS) & zmq.POLLOUT:
            # Still full: spare the encoding, which under overload is CPU we lack.
            self._drop(peer, len(items), "hwm")
            return False
        try:
            frame = dumps(items)
        except Exception:
            items = self._encodable(peer, items)
            if not items:
                return True
            frame = dumps(items)
        try:
            conn.sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            conn.congested = True
            self._drop(peer, len(items), "hwm")
            return False
        conn.congested = False
        self._frames_sent += 1
        self._items_sent += len(items)
        return True

    def _encodable(self, peer: Peer, items: list[Any]) -> list[Any]:
        good = []
        first_error: Exception | None = None
        for item in items:
            try:
                dumps(item)
            except Exception as e:
                first_error = first_error or e
                continue
            good.append(item)
        bad = len(items) - len(good)
        self._unencodable += bad
        logger.error(
            "dropped %d items for %s that cannot be encoded: %s",
            bad,
            _peer_str(peer),
            first_error,
            extra={"what": "transport_unencodable", "peer": _peer_str(peer), "dropped": bad,
                   "reason": repr(first_error)},
        )
        return good

    def _drop(self, peer: Peer, n: int, reason: str) -> None:
        if reason == "hwm":
            self._dropped_hwm += n
        else:
            self._dropped_unconnected += n
        total = self._dropped_by_peer.get(peer, 0) + n
        self._dropped_by_peer[peer] = total
        warned = self._warned.get(peer)
        if warned is None:
            warned = self._warned[peer] = [-_WARN_INTERVAL, 0]
        warned[1] += n
        now = time.monotonic()
        if now - warned[0] >= _WARN_INTERVAL:
            logger.warning(
                "dropped %d items for %s (%s)",
                warned[1],
                _peer_str(peer),
                reason,
                extra={"what": "transport_dropped", "peer": _peer_str(peer),
                       "dropped": int(warned[1]), "reason": reason, "total": total},
            )
            warned[0] = now
            warned[1] = 0

    # -- receiving -----------------------------------------------------------------------------

    def _on_readable(self, inbound: _Inbound, resumed: bool = False) -> None:
        if resumed:
            inbound.resume_scheduled = False
        elif inbound.resume_scheduled:
            return  # a continuation is already queued and will read
        if self._closed:
            return
        recv = inbound.sock.recv
        on_items = self._on_items
        budget = self.recv_budget
        while budget > 0:
            try:
                frame = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                items = loads(frame)
            except Exception as e:
                self._bad_frame(frame, repr(e))
                continue
            if type(items) is not list:
                self._bad_frame(frame, f"decoded to {type(items).__name__}, not a list")
                continue
            n = len(items)
            self._frames_received += 1
            self._items_received += n
            budget -= n or 1
            if not n:
                continue
            try:
                on_items(items)
            except Exception:
                logger.exception(
                    "on_items failed",
                    extra={"what": "transport_on_items_error", "items": n},
                )
            if self._closed:  # on_items closed the transport
                return
        # Budget spent: frames may be left, and the edge-triggered FD will not say so.
        inbound.resume_scheduled = True
        self._loop.call_soon(self._on_readable, inbound, True)

    def _bad_frame(self, frame: bytes, reason: str) -> None:
        self._bad_frames += 1
        logger.warning(
            "dropped a frame that does not decode: %s",
            reason,
            extra={"what": "transport_bad_frame", "size": len(frame), "reason": reason,
                   "head": frame[:32].hex()},
        )

    # -- peer events ---------------------------------------------------------------------------

    def _on_monitor(self, peer: Peer, conn: _Outbound) -> None:
        monitor = conn.monitor
        while monitor is not None and self._out.get(peer) is conn:
            try:
                message = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event = parse_monitor_message(message)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                state = "up"
            elif event & _AUTH_FAILED_EVENTS:
                state = "auth_failed"
            elif conn.state == "auth_failed":
                continue  # the disconnection that follows a refused handshake
            else:
                state = "down"
            if state == conn.state:
                continue
            conn.state = state
            if state == "auth_failed":
                logger.warning(
                    "handshake with %s at %s failed: %s (cluster keys differ?)",
                    _peer_str(peer),
                    conn.address,
                    zmq.Event(event).name,
                    extra={"what": "transport_handshake_failed", "peer": _peer_str(peer),
                           "address": conn.address, "event": zmq.Event(event).name},
                )
            assert self._on_peer_event is not None
            try:
                self._on_peer_event(peer, state)
            except Exception:
                logger.exception(
                    "on_peer_event failed",
                    extra={"what": "transport_on_peer_event_error", "peer": _peer_str(peer)},
                )

    # -- statistics ----------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """Counters since start, and the connected peers with their addresses."""
        return {
            "frames_sent": self._frames_sent,
            "items_sent": self._items_sent,
            "frames_received": self._frames_received,
            "items_received": self._items_received,
            "dropped": self._dropped_hwm + self._dropped_unconnected,
            "dropped_hwm": self._dropped_hwm,
            "dropped_unconnected": self._dropped_unconnected,
            "dropped_by_peer": dict(self._dropped_by_peer),
            "unencodable": self._unencodable,
            "bad_frames": self._bad_frames,
            "pending": sum(len(b) for b in self._batches.values()),
            "peers": {peer: conn.address for peer, conn in self._out.items()},
        }
