"""A small HTTP/1.1 server on the event loop, for the node's /metrics page.

Why not prometheus-client's ``start_http_server``: it serves from a thread, and a page
merged from the workers is gathered by asking actors, which is the loop's work; a server
on the loop awaits those answers without blocking anything or handing values between
threads. Only what a scraper needs is implemented: ``GET`` and ``HEAD`` of the configured
paths (a query string is ignored), gzip when the client accepts it, one request per
connection (``Connection: close``). Anything else gets a proper status: 400 for a request
that is not HTTP or whose head exceeds 16 KiB or 10 s, 404 for other paths, 405 for other
methods, 503 when the page could not be made.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["PROMETHEUS_CONTENT_TYPE", "HttpServer"]

log = logging.getLogger("mongoose.instrument")

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 10.0

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}

Page = Callable[[], Awaitable[bytes]]


class HttpServer:
    """Serves ``routes`` (path -> coroutine function returning the body) on one port."""

    def __init__(self, routes: dict[str, Page], content_type: str = PROMETHEUS_CONTENT_TYPE
                 ) -> None:
        self.routes = routes
        self.content_type = content_type
        self._server: asyncio.AbstractServer | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); return the port."""
        self._server = await asyncio.start_server(self._serve, host, port,
                                                  limit=MAX_HEAD, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (TimeoutError, asyncio.LimitOverrunError, ValueError):
            self._respond(writer, 400, b"request head too large or too slow\n")
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._respond(writer, 400, b"not an HTTP/1.x request\n")
            return
        method, target = parts[0], parts[1]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        page = self.routes.get(target.split("?", 1)[0])
        if page is None:
            self._respond(writer, 404, b"not found\n")
            return
        if method not in ("GET", "HEAD"):
            self._respond(writer, 405, b"method not allowed\n", {"Allow": "GET, HEAD"})
            return
        try:
            body = await page()
        except Exception:
            log.exception("metrics page failed", extra={"what": "metrics_page_failed",
                                                       "path": target})
            self._respond(writer, 503, b"metrics unavailable\n")
            return
        extra: dict[str, str] = {"Content-Type": self.content_type}
        if "gzip" in headers.get("accept-encoding", ""):
            body = gzip.compress(body, compresslevel=5)
            extra["Content-Encoding"] = "gzip"
        self._respond(writer, 200, body, extra, head_only=method == "HEAD")
        await writer.drain()

    @staticmethod
    def _respond(writer: asyncio.StreamWriter, status: int, body: bytes,
                 headers: dict[str, Any] | None = None, *, head_only: bool = False) -> None:
        fields = {"Content-Type": "text/plain; charset=utf-8", **(headers or {}),
                  "Content-Length": str(len(body)), "Connection": "close"}
        out = [f"HTTP/1.1 {status} {_REASONS[status]}"]
        out += [f"{k}: {v}" for k, v in fields.items()]
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(body)
