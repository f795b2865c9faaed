"""TLS for client connections: the certificate, the server context, channel binding data.

- `ensure_certificate(directory, hosts)`: the self-signed certificate a node uses when
  the config names none. Made on first start (EC P-256, a SAN dNSName per host, valid 10
  years), written atomically (key mode 0600) under an exclusive lock, so workers starting
  together agree on one pair. Reused afterwards, unless it no longer covers every host
  (a host was added to the config) or has expired: then a new one replaces it.
- `server_context(certfile, keyfile)`: TLS 1.2 or 1.3 only, forward-secret AEAD ciphers
  for TLS 1.2, no compression, no renegotiation, ALPN "xmpp-client" (XEP-0368 direct
  TLS; a STARTTLS client sends no ALPN and is unaffected).
- `tls_exporter(ssl_object)`: the `tls-exporter` channel binding of RFC 9266, the 32
  bytes TLS exports under the label "EXPORTER-Channel-Binding" with no context; the same
  on both ends of a connection (`client_tls_exporter` is the same function). None when
  it cannot be had; the session then simply does not offer SCRAM-*-PLUS with it.
- `certificate_end_point(certfile)`: the `tls-server-end-point` binding (RFC 5929) of
  our certificate, for clients that do not know tls-exporter.

The exporter hack. Python's ssl module exposes tls-unique (useless with TLS 1.3) but not
OpenSSL's `SSL_export_keying_material`. We call that function through ctypes:

1. The symbol is looked up through the `_ssl` extension's own handle (`dlsym` on it
   searches the libraries it was linked against), so it comes from the very libssl that
   made the connection.
2. The `SSL *` comes out of CPython's `PySSLSocket` (the `_sslobj` behind an
   `ssl.SSLSocket` or `ssl.SSLObject`), where it is the field after `PyObject_HEAD` and
   one `PyObject *` in CPython 3.11 to 3.13. That layout is private, so it is trusted
   only after checks: the interpreter is CPython 3.11-3.13; once per process, a throwaway
   client `SSLObject` made with a server name must show that name through
   `SSL_get_servername` on the pointer we read; and on every call, `SSL_get_version` on
   the pointer must agree with `ssl_object.version()`. Any failure logs once and makes
   `tls_exporter` return None.
3. TLS 1.2 connections without the extended master secret (RFC 7627) get None: RFC 9266
   forbids tls-exporter on them, as their exported keys can be shared by two
   connections.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import fcntl
import functools
import hashlib
import logging
import os
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CERT_FILE = "selfsigned_cert.pem"
KEY_FILE = "selfsigned_key.pem"
VALIDITY = datetime.timedelta(days=3650)
ALPN = "xmpp-client"
# TLS 1.2 suites: ephemeral key exchange and AEAD only. TLS 1.3's are OpenSSL's defaults.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL"
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
EXPORTER_LENGTH = 32

# Certificate


def ensure_certificate(directory: Path, hosts: list[str]) -> tuple[Path, Path]:
    """(certificate file, key file) of a self-signed certificate for `hosts` in
    `directory`, made now unless a usable one is there."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    with _locked(directory / ".selfsigned.lock"):
        if not _covers(cert_path, key_path, hosts):
            cert_pem, key_pem = _self_signed(hosts)
            _write_atomic(key_path, key_pem, 0o600)
            _write_atomic(cert_path, cert_pem, 0o644)
            log.info(
                "self-signed certificate made",
                extra={"what": "tls_certificate_made", "file": str(cert_path), "hosts": hosts},
            )
    return cert_path, key_path


def _covers(cert_path: Path, key_path: Path, hosts: list[str]) -> bool:
    """True if both files exist and the certificate is valid now for every host."""
    if not key_path.exists():
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    dns_names = set(names.value.get_values_for_type(x509.DNSName))
    now = datetime.datetime.now(datetime.UTC)
    return {_a_label(h) for h in hosts} <= dns_names and now < cert.not_valid_after_utc


def _self_signed(hosts: list[str]) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    # A common name is at most 64 characters; clients match the SAN names anyway.
    common_name = hosts[0] if len(hosts[0]) <= 64 else "mongoose self-signed"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))  # tolerate clock skew
        .not_valid_after(now + VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(_a_label(h)) for h in hosts]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _a_label(host: str) -> str:
    """The ASCII form of a domain name, as certificates carry it."""
    return host.encode("idna").decode("ascii")


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data`: readers see the old file or the whole new one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, mode)  # O_CREAT's mode is filtered by the umask
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def certificate_end_point(certfile: str | os.PathLike[str]) -> bytes | None:
    """RFC 5929 tls-server-end-point data of the first certificate in `certfile`: its DER
    hashed with its signature's hash (SHA-256 in place of MD5 and SHA-1). None for a
    signature without a separate hash (Ed25519), for which RFC 5929 defines nothing."""
    cert = x509.load_pem_x509_certificate(Path(certfile).read_bytes())
    algorithm = cert.signature_hash_algorithm
    if algorithm is None:
        return None
    name = "sha256" if algorithm.name in ("md5", "sha1") else algorithm.name
    return hashlib.new(name, cert.public_bytes(serialization.Encoding.DER)).digest()


# Context


def server_context(certfile: str | os.PathLike[str], keyfile: str | os.PathLike[str]
                   ) -> ssl.SSLContext:
    """The server side TLS context of a c2s listener (see the module docstring)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    )
    context.set_ciphers(TLS12_CIPHERS)
    context.set_alpn_protocols([ALPN])
    context.load_cert_chain(certfile, keyfile)
    return context


def channel_bindings(
    ssl_object: ssl.SSLObject | ssl.SSLSocket, end_point: bytes | None = None
) -> dict[str, bytes]:
    """The channel binding data of an established connection, by type, for SASL -PLUS
    (`end_point`: `certificate_end_point` of the server's certificate)."""
    bindings = {}
    exporter = tls_exporter(ssl_object)
    if exporter is not None:
        bindings["tls-exporter"] = exporter
    if end_point is not None:
        bindings["tls-server-end-point"] = end_point
    return bindings


# tls-exporter through ctypes (see the module docstring)

_SSL_CTRL_GET_EXTMS_SUPPORT = 122  # OpenSSL's ssl.h, behind SSL_get_extms_support()
_LAYOUT_CHECK_NAME = b"layout-check.invalid"
# PyObject_HEAD, then `PyObject *Socket`, then `SSL *ssl`.
_SSL_FIELD_OFFSET = object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)


def tls_exporter(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> bytes | None:
    """RFC 9266 tls-exporter data of the established connection `ssl_object`, or None
    if it cannot be obtained safely (then do not offer -PLUS with tls-exporter)."""
    openssl = _openssl()
    if openssl is None:
        return None
    pointer = _ssl_pointer(ssl_object)
    if pointer is None:
        return None  # not a TLS connection, or a closed one
    version = ssl_object.version()
    if version is None:
        return None  # no handshake yet
    if openssl.SSL_get_version(pointer) != version.encode("ascii"):
        _unavailable("SSL_get_version disagrees with the ssl module")
        return None
    extended_master_secret = openssl.SSL_ctrl(pointer, _SSL_CTRL_GET_EXTMS_SUPPORT, 0, None)
    if version == "TLSv1.2" and extended_master_secret != 1:
        return None
    out = ctypes.create_string_buffer(EXPORTER_LENGTH)
    ok = openssl.SSL_export_keying_material(
        pointer, out, EXPORTER_LENGTH, EXPORTER_LABEL, len(EXPORTER_LABEL), None, 0, 0
    )
    return out.raw if ok == 1 else None


client_tls_exporter = tls_exporter


def _ssl_pointer(ssl_object: Any) -> int | None:
    """The `SSL *` inside the `_ssl._SSLSocket` behind `ssl_object`, None if none."""
    import _ssl

    inner = getattr(ssl_object, "_sslobj", None)
    if type(inner) is not _ssl._SSLSocket:
        return None
    return ctypes.c_void_p.from_address(id(inner) + _SSL_FIELD_OFFSET).value



@functools.cache
def _openssl() -> ctypes.CDLL | None:
    """libssl's functions we need, once the layout checks passed; None otherwise."""
    import _ssl

    if sys.implementation.name != "cpython" or not (3, 11) <= sys.version_info[:2] <= (3, 13):
        return _unavailable(f"untested interpreter {sys.implementation.name} {sys.version}")
    if _ssl._SSLSocket.__basicsize__ < _SSL_FIELD_OFFSET + ctypes.sizeof(ctypes.c_void_p):
        return _unavailable("_ssl._SSLSocket is smaller than expected")
    try:
        openssl = ctypes.CDLL(_ssl.__file__)
        _declare(openssl)
    except (OSError, AttributeError) as error:
        return _unavailable(f"libssl functions not found: {error}")
    if not _layout_ok(openssl):
        return _unavailable("the SSL pointer read from _ssl._SSLSocket is not the connection's")
    return openssl


def _declare(openssl: ctypes.CDLL) -> None:
    c_void_p, c_size_t, c_char_p = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
    openssl.SSL_export_keying_material.argtypes = [
        c_void_p, c_char_p, c_size_t, c_char_p, c_size_t, c_void_p, c_size_t, ctypes.c_int
    ]
    openssl.SSL_export_keying_material.restype = ctypes.c_int
    openssl.SSL_get_version.argtypes = [c_void_p]
    openssl.SSL_get_version.restype = c_char_p
    openssl.SSL_get_servername.argtypes = [c_void_p, ctypes.c_int]
    openssl.SSL_get_servername.restype = c_char_p
    openssl.SSL_ctrl.argtypes = [c_void_p, ctypes.c_int, ctypes.c_long, c_void_p]
    openssl.SSL_ctrl.restype = ctypes.c_long


def _layout_ok(openssl: ctypes.CDLL) -> bool:
    """A client SSLObject made with a server name must show it through the pointer."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe = context.wrap_bio(
        ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=_LAYOUT_CHECK_NAME.decode()
    )
    pointer = _ssl_pointer(probe)
    return bool(pointer) and openssl.SSL_get_servername(pointer, 0) == _LAYOUT_CHECK_NAME


@functools.cache  # once per reason: a broken layout would otherwise log per connection
def _unavailable(reason: str) -> None:
    log.warning(
        "tls-exporter channel binding unavailable",
        extra={"what": "tls_exporter_unavailable", "reason": reason},
    )
