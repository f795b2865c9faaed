"""mongoose.instrument.http: the loop's small HTTP server for /metrics, over real sockets."""

from __future__ import annotations

import asyncio
import gzip

import pytest

from mongoose.instrument.http import PROMETHEUS_CONTENT_TYPE, HttpServer

pytestmark = pytest.mark.timeout(30)


async def _request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)  # the server closes after answering
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body


def _serve(page, check) -> None:
    async def main() -> None:
        server = HttpServer({"/metrics": page})
        port = await server.start("127.0.0.1", 0)
        try:
            await check(port)
        finally:
            server.close()

    asyncio.run(main())


def test_get_returns_the_page_with_the_prometheus_content_type():
    async def page() -> bytes:
        return b"up 1\n"

    async def check(port: int) -> None:
        status, headers, body = await _request(
            port, b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (status, body) == (200, b"up 1\n")
        assert headers["content-type"] == PROMETHEUS_CONTENT_TYPE
        assert headers["content-length"] == "5"
        status, headers, body = await _request(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        assert (status, body, headers["content-length"]) == (200, b"", "5")

    _serve(page, check)


def test_gzip_when_the_scraper_accepts_it():
    async def page() -> bytes:
        return b"metric 1\n" * 100

    async def check(port: int) -> None:
        status, headers, body = await _request(
            port, b"GET /metrics HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n")
        assert status == 200 and headers["content-encoding"] == "gzip"
        assert gzip.decompress(body) == b"metric 1\n" * 100

    _serve(page, check)


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /other HTTP/1.1\r\n\r\n", 404),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
    (b"hello\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 400),
])
def test_other_requests_get_a_proper_status(raw, status):
    async def page() -> bytes:
        return b"x\n"

    async def check(port: int) -> None:
        got, headers, _ = await _request(port, raw)
        assert got == status
        if status == 405:
            assert headers["allow"] == "GET, HEAD"

    _serve(page, check)


def test_a_failing_page_is_a_503_and_the_server_keeps_serving():
    calls = []

    async def page() -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("no workers")
        return b"ok\n"

    async def check(port: int) -> None:
        assert (await _request(port, b"GET /metrics HTTP/1.1\r\n\r\n"))[0] == 503
        assert (await _request(port, b"GET /metrics HTTP/1.1\r\n\r\n"))[:3:2] == (200, b"ok\n")

    _serve(page, check)
