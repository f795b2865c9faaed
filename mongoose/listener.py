"""The c2s listener of a worker: every worker listens on the same ports (SO_REUSEPORT).

The kernel spreads new connections over the workers' sockets, so no process accepts on
behalf of another and a worker that dies takes only its own connections with it. Each
accepted connection gets a :class:`mongoose.c2s.C2SProtocol`, which starts its session
actor under ``c2s_sup``.

Direct TLS listeners (``tls.mode = "tls"``, XEP-0368) wrap the socket before the first
byte; the others start in plain TCP and may upgrade with STARTTLS.

Stopping the listener closes its sockets first (the worker's tree stops right to left and
the listener is last), so no connection arrives while sessions are being shut down.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import otp
from mongoose.c2s import C2SProtocol
from mongoose.server import current as current_server

__all__ = ["C2SListener"]

log = logging.getLogger(__name__)


class C2SListener(otp.LoopActor):
    """Opens every ``[[listen.c2s]]`` port of the config in this worker."""

    def __init__(self, c2s_sup: str = "c2s_sup") -> None:
        super().__init__()
        self.c2s_sup = c2s_sup
        self.servers: list[asyncio.base_events.Server] = []

    async def on_start(self) -> None:
        server = current_server()
        sup = otp.whereis(self.c2s_sup)
        loop = asyncio.get_running_loop()
        for index, listener in enumerate(server.config.listen.c2s):
            ssl_context = server.tls_context(index) if listener.tls.mode == "tls" else None
            host = None if listener.ip_address in ("0.0.0.0", "::") else listener.ip_address
            family = socket.AF_INET6 if listener.ip_address == "::" else socket.AF_INET

            def factory(index: int = index) -> C2SProtocol:
                return C2SProtocol(index, sup)

            try:
                srv = await loop.create_server(
                    factory, host=host, port=listener.port, family=family,
                    reuse_port=True, backlog=listener.backlog, ssl=ssl_context,
                    ssl_handshake_timeout=listener.state_timeout / 1000 if ssl_context else None,
                )
            except OSError as error:
                log.critical("cannot listen", extra={
                    "what": "listener_failed", "port": listener.port,
                    "ip_address": listener.ip_address, "reason": str(error)})
                raise
            self.servers.append(srv)
            log.info("listening", extra={
                "what": "listener_up", "port": listener.port, "ip_address": listener.ip_address,
                "tls": listener.tls.mode, "worker": otp.current().worker})

    def on_receive(self, message: Any) -> Any:
        if message == "ports":
            return [s.sockets[0].getsockname()[1] for s in self.servers if s.sockets]
        return super().on_receive(message)

    def on_stop(self) -> None:
        for srv in self.servers:
            srv.close()
        self.servers.clear()
