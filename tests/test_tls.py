"""TLS for c2s (mongoose/tls.py): certificate, server context, tls-exporter."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import stat
import threading
import warnings

import pytest
from cryptography import x509

from mongoose import tls


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for localhost, made once for the module."""
    return tls.ensure_certificate(tmp_path_factory.mktemp("tls"), ["localhost"])


def handshake(server_context, client_context):
    """Connect a client and a server over a socket pair; each side's SSLSocket or the
    exception its handshake raised."""
    server_sock, client_sock = socket.socketpair()
    result = {}

    def serve():
        try:
            result["server"] = server_context.wrap_socket(server_sock, server_side=True)
        except (ssl.SSLError, OSError) as error:
            result["server"] = error
            server_sock.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        client = client_context.wrap_socket(client_sock, server_hostname="localhost")
    except (ssl.SSLError, OSError) as error:
        client = error
        client_sock.close()
    thread.join(timeout=30)
    return result["server"], client


def client_context(cafile):
    return ssl.create_default_context(cafile=str(cafile))


def old_client_context():
    """A client that speaks TLS 1.0 and 1.1 only, and would accept any certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let OpenSSL's client offer old versions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


def close(*sockets):
    for sock in sockets:
        if isinstance(sock, socket.socket):
            sock.close()


def test_certificate_made_once_and_reused(tmp_path):
    """The first call writes the pair; later calls return the same files untouched."""
    cert, key = tls.ensure_certificate(tmp_path, ["localhost", "example.com"])
    first = (cert.read_bytes(), key.read_bytes())
    again = tls.ensure_certificate(tmp_path, ["example.com"])
    assert again == (cert, key)
    assert (cert.read_bytes(), key.read_bytes()) == first


def test_key_file_mode_is_0600(tmp_path):
    """The private key is readable by its owner only."""
    _, key = tls.ensure_certificate(tmp_path / "sub", ["localhost"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700


def test_certificate_names_every_host(tmp_path):
    """The certificate has a SAN dNSName per host and is valid for about 10 years."""
    cert_path, _ = tls.ensure_certificate(tmp_path, ["localhost", "example.com"])
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "example.com"]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 3650 <= lifetime.days <= 3652


def test_new_host_makes_a_new_certificate(tmp_path):
    """A host the certificate does not name yet makes a new one that names it."""
    cert, _ = tls.ensure_certificate(tmp_path, ["localhost"])
    before = cert.read_bytes()
    tls.ensure_certificate(tmp_path, ["localhost", "example.net"])
    assert cert.read_bytes() != before
    names = x509.load_pem_x509_certificate(cert.read_bytes()).extensions \
        .get_extension_for_class(x509.SubjectAlternativeName).value
    assert "example.net" in names.get_values_for_type(x509.DNSName)


def test_context_serves_a_verifying_client(certificate):
    """A client that trusts the certificate completes a handshake, with ALPN xmpp-client."""
    cert, key = certificate
    context = client_context(cert)
    context.set_alpn_protocols(["xmpp-client"])
    server, client = handshake(tls.server_context(cert, key), context)
    try:
        assert server.version() in ("TLSv1.2", "TLSv1.3")
        assert client.selected_alpn_protocol() == "xmpp-client"
    finally:
        close(server, client)


def test_context_refuses_tls_1_1(certificate):
    """A client limited to TLS 1.1 fails the handshake; a permissive server would have
    accepted it, so the refusal is our server's."""
    cert, key = certificate
    server, client = handshake(tls.server_context(cert, key), old_client_context())
    assert isinstance(server, ssl.SSLError) and isinstance(client, ssl.SSLError)

    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.load_cert_chain(cert, key)
    server, client = handshake(permissive, old_client_context())
    try:
        assert client.version() == "TLSv1.1"
    finally:
        close(server, client)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_exporter_same_on_both_ends(certificate, version):
    """tls_exporter gives the same 32 bytes on the server and the client end."""
    cert, key = certificate
    context = client_context(cert)
    context.maximum_version = version
    server, client = handshake(tls.server_context(cert, key), context)
    try:
        assert server.version() == client.version()
        on_server = tls.tls_exporter(server)
        assert on_server is not None and len(on_server) == 32
        assert tls.client_tls_exporter(client) == on_server
        assert tls.channel_bindings(server) == {"tls-exporter": on_server}
    finally:
        close(server, client)


def test_exporter_differs_between_connections(certificate):
    """Two connections have different exporter data."""
    cert, key = certificate
    values = []
    for _ in range(2):
        server, client = handshake(tls.server_context(cert, key), client_context(cert))
        try:
            values.append(tls.tls_exporter(server))
        finally:
            close(server, client)
    assert None not in values and values[0] != values[1]


def test_exporter_works_on_memory_bio_objects(certificate):
    """SSLObject (what asyncio transports hold) gives the same data as its peer."""
    cert, key = certificate
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = tls.server_context(cert, key).wrap_bio(server_in, server_out, server_side=True)
    client = client_context(cert).wrap_bio(client_in, client_out, server_hostname="localhost")
    assert tls.tls_exporter(client) is None  # no handshake yet
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if server.version() and client.version():
            break
    client.do_handshake()
    assert tls.tls_exporter(server) == tls.tls_exporter(client) is not None


def test_exporter_none_for_other_objects():
    """Objects without a connection give None rather than a guess."""
    assert tls.tls_exporter(object()) is None
    plain, other = socket.socketpair()
    with plain, other:
        assert tls.tls_exporter(plain) is None


def test_end_point_of_our_certificate(certificate):
    """tls-server-end-point data is the SHA-256 of the certificate's DER."""
    cert, _ = certificate
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    assert tls.certificate_end_point(cert) == hashlib.sha256(der).digest()
