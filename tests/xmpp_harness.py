"""XMPP nodes for tests: a real ``mongoose foreground`` with c2s ports and accounts.

:func:`xmpp_node` writes a config with a STARTTLS-required listener and a direct-TLS
listener on free ports (and any extra TOML), starts the node and registers accounts
straight into its SQLite store (the same file ``mongoose account register`` writes).
:class:`RawClient` speaks bytes over a plain socket, for the cases where the exact bytes
matter (hostile input, stream errors).
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from dist_harness import MongooseNode, free_port

DOMAIN = "localhost"
PASSWORD = "secret-password"


def xmpp_node(directory: Path, name: str, keys_file: str, *, workers: int = 2,
              users: tuple[str, ...] = ("alice", "bob", "carol"), extra_toml: str = "",
              listen_toml: str | None = None, seeds: list[str] = (),  # type: ignore[assignment]
              state_timeout: int = 10_000) -> MongooseNode:
    """Start a node serving ``localhost`` and register ``users`` with PASSWORD.

    ``state_timeout`` (ms, per negotiation step) is generous by default so that a loaded
    machine does not time out a TLS handshake; the timeout tests pass a short one."""
    c2s, tls = free_port(), free_port()
    if listen_toml is None:
        listen_toml = (
            f'[[listen.c2s]]\nport = {c2s}\nip_address = "127.0.0.1"\n'
            f'state_timeout = {state_timeout}\n'
            f'max_stanza_size = 65536\ntls.mode = "starttls_required"\n'
            f'[[listen.c2s]]\nport = {tls}\nip_address = "127.0.0.1"\ntls.mode = "tls"\n'
            f'state_timeout = {state_timeout}\n'
        )
    toml = (
        listen_toml
        + "[auth.password]\nscram_iterations = 4096\n"
        + "[auth.failure_delay]\nbase_ms = 0\n"
        + "[modules.mod_disco]\n[modules.mod_ping]\n[modules.mod_version]\n[modules.mod_time]\n"
        + extra_toml
    )
    node = MongooseNode(directory, name, port=free_port(), keys_file=keys_file,
                        workers=workers, extra_toml=toml, seeds=list(seeds))
    node.c2s_port = c2s  # type: ignore[attr-defined]
    node.tls_port = tls  # type: ignore[attr-defined]
    node.start()
    register(node, users)
    return node


def metrics_toml(port: int | None = None) -> str:
    """Config lines that turn metrics on, served at 127.0.0.1:``port`` (default: a free
    port): what `mongoose metric get`, the shell's metrics() and /metrics read."""
    port = free_port() if port is None else port
    return ("[instrumentation.prometheus]\n"
            f'[[listen.http]]\nport = {port}\nip_address = "127.0.0.1"\n'
            '[[listen.http.handlers.mongoose_prometheus_handler]]\nhost = "_"\n'
            'path = "/metrics"\n')


def store(node: MongooseNode) -> Any:
    from mongoose import config as config_mod
    from mongoose.auth import accounts

    cfg = config_mod.load(node.config)
    return accounts.SqliteAccountStore(
        node.dir / cfg.general.data_dir / "mongoose.db",
        hashes=cfg.auth.password.hash, iterations=cfg.auth.password.scram_iterations)


def register(node: MongooseNode, users: tuple[str, ...], password: str = PASSWORD) -> None:
    accounts = store(node)
    for user in users:
        accounts.register(user, DOMAIN, password)


class RawClient:
    """A client socket for exact bytes: send, and read until a pattern or the close."""

    def __init__(self, port: int, *, timeout: float = 10.0) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.closed = False

    def send(self, data: bytes | str) -> None:
        """Send ``data``. The server may close the connection before reading all of it
        (it answers bad input at once): that is not an error here, the reads that follow
        find the close and what came before it."""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def open_stream(self, to: str = DOMAIN) -> bytes:
        """Send a stream header; return everything up to the end of the features."""
        self.send(f"<?xml version='1.0'?><stream:stream to='{to}' version='1.0' "
                  "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
        return self.read_until(rb"</stream:features>")

    def starttls(self) -> None:
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.read_until(rb"<proceed")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock = context.wrap_socket(self.sock, server_hostname=DOMAIN)
        self.buffer = b""

    def read_until(self, pattern: bytes, timeout: float = 10.0) -> bytes:
        """Read until ``pattern`` (a regex) matches the data so far; return that data.
        Raises AssertionError if the connection closes first or the deadline passes."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while not regex.search(self.buffer):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {pattern!r} within {timeout}s in {self.buffer[-500:]!r}")
            if not self._recv(remaining):
                raise AssertionError(f"closed before {pattern!r}: {self.buffer[-500:]!r}")
        data, self.buffer = self.buffer, b""
        return data

    def read_to_close(self, timeout: float = 10.0) -> bytes:
        """Everything until the server closes the connection (AssertionError if it does
        not within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"still open after {timeout}s: {self.buffer[-500:]!r}")
            self._recv(remaining)
        data, self.buffer = self.buffer, b""
        return data

    def _recv(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return True
        except (ConnectionResetError, ssl.SSLError, OSError):
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.buffer += chunk
        return True

    def close(self) -> None:
        self.sock.close()


def c2s_listeners_toml(*modes: str, state_timeout: int = 2000,
                       max_stanza_size: int = 65536) -> tuple[str, list[int]]:
    """TOML for one ``[[listen.c2s]]`` on 127.0.0.1 per TLS mode in ``modes``, each on a
    fresh port; returns the TOML and the ports in the same order."""
    ports = [free_port() for _ in modes]
    toml = "".join(
        f'[[listen.c2s]]\nport = {port}\nip_address = "127.0.0.1"\n'
        f"state_timeout = {state_timeout}\nmax_stanza_size = {max_stanza_size}\n"
        f'tls.mode = "{mode}"\n'
        for port, mode in zip(ports, modes, strict=True))
    return toml, ports


def xmpp_node_with(directory: Path, name: str, keys_file: str, *, workers: int = 2,
                   users: tuple[str, ...] = ("alice", "bob", "carol"),
                   modes: tuple[str, ...] = ("starttls_required", "tls"),
                   state_timeout: int = 2000, general_toml: str = "",
                   auth_toml: str = "[auth.failure_delay]\nbase_ms = 0\n",
                   modules_toml: str = ("[modules.mod_disco]\n[modules.mod_ping]\n"
                                        "[modules.mod_version]\n[modules.mod_time]\n"),
                   ) -> MongooseNode:
    """Like :func:`xmpp_node`, for configs it cannot express: keys of ``[general]``
    (``general_toml``, e.g. ``max_user_sessions = 2``), ``[auth.*]`` tables other than
    ``[auth.password]`` (``auth_toml``) and the ``[modules.*]`` tables (``modules_toml``).

    One listener per TLS mode in ``modes``. The node gets ``listener_ports`` (in the
    order of ``modes``) and, for the first listener of each mode, ``c2s_port``
    (starttls_required), ``starttls_port`` (starttls), ``tls_port`` (tls) and
    ``plain_port`` (none).
    """
    listen, ports = c2s_listeners_toml(*modes, state_timeout=state_timeout)
    toml = (listen + "[auth.password]\nscram_iterations = 4096\n" + auth_toml
            + modules_toml)
    node = MongooseNode(directory, name, port=free_port(), keys_file=keys_file,
                        workers=workers, extra_toml=toml)
    if general_toml:
        text = node.config.read_text()
        node.config.write_text(text.replace("[general]\n", "[general]\n" + general_toml
                                            .rstrip("\n") + "\n", 1))
    node.listener_ports = ports  # type: ignore[attr-defined]
    by_mode = {"starttls_required": "c2s_port", "starttls": "starttls_port",
               "tls": "tls_port", "none": "plain_port"}
    for mode, port in reversed(list(zip(modes, ports, strict=True))):
        setattr(node, by_mode[mode], port)
    node.start()
    register(node, users)
    return node


def raw_authenticate(port: int, user: str, *, password: str = PASSWORD,
                     starttls: bool = True, timeout: float = 10.0) -> tuple[RawClient, bytes]:
    """A RawClient that has authenticated as ``user`` with SASL PLAIN (after STARTTLS
    unless told not to) and restarted the stream; returns it and the stream features
    it got then (bind). Raises AssertionError if a step fails."""
    import base64

    raw = RawClient(port, timeout=timeout)
    try:
        raw.open_stream()
        if starttls:
            raw.starttls()
            raw.open_stream()
        credentials = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        raw.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                 f"{credentials}</auth>")
        reply = raw.read_until(rb"</success>|<success[^>]*/>|</failure>|<failure[^>]*/>",
                               timeout)
        assert b"<success" in reply, reply
        return raw, raw.open_stream()
    except BaseException:
        raw.close()
        raise


def raw_login(port: int, user: str, resource: str, *, password: str = PASSWORD,
              starttls: bool = True, timeout: float = 10.0) -> tuple[RawClient, str]:
    """A RawClient logged in as ``user`` (see :func:`raw_authenticate`) and bound to
    ``resource``; returns it and the JID the server bound. It has sent no presence.
    Raises AssertionError if any step fails."""
    raw, features = raw_authenticate(port, user, password=password, starttls=starttls,
                                     timeout=timeout)
    try:
        assert b"urn:ietf:params:xml:ns:xmpp-bind" in features, features
        raw.send("<iq type='set' id='raw-bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                 f"<resource>{resource}</resource></bind></iq>")
        bound = raw.read_until(rb"</iq>|<iq[^>]*/>", timeout)
        match = re.search(rb"<jid>([^<]+)</jid>", bound)
        assert match is not None, bound
        return raw, match.group(1).decode()
    except BaseException:
        raw.close()
        raise
