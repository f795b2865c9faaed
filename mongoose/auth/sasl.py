"""The server side of SASL for XMPP client streams (RFC 6120 §6).

Mechanisms: PLAIN (RFC 4616), SCRAM-SHA-1, SCRAM-SHA-256, SCRAM-SHA-512 (RFC 5802,
RFC 7677) and their -PLUS variants with channel binding `tls-exporter` (RFC 9266) or
`tls-server-end-point` (RFC 5929).

How the session uses it:

1. `offered(...)` gives the `<mechanism/>` names for the stream features.
2. On `<auth mechanism=M>`: `SaslServer(M, ...)` then `await start(initial_response)`;
   on each `<response>`: `await step(data)`; on `<abort/>`: `abort()`.
3. Each call returns a `Step`: `Challenge` (send `<challenge>`), `Success` (send
   `<success>`, the user is `Success.username` on the server's host) or `Failure` (send
   `<failure>` with `Failure.condition`, one of RFC 6120 §6.5). After a Success or a
   Failure the exchange is over; a new `<auth>` needs a new SaslServer.

Base64 is the caller's (`decode_payload`, `encode_payload`): an `<auth>` with no text
has no initial response (pass None), "=" is an empty one; bad base64 is
`incorrect-encoding`.

Security properties the session can rely on:

- Wrong password and unknown user give the same `not-authorized`. For SCRAM, an unknown
  user still gets a challenge, with a salt derived from the user name and a per-server
  key (`fake_salt_key`: pass a key that is the same on every worker and across restarts,
  else asking twice tells a fake salt from a real one), and the configured iteration
  count. For PLAIN, an unknown user costs the same key derivation as a known one.
- Channel binding: when a -PLUS mechanism was offered, a client that says it supports
  channel binding but thinks the server does not (gs2 flag 'y') is refused: someone
  removed -PLUS from the features on the way (RFC 5802 §6). -PLUS mechanisms require the
  'p' flag and the binding data of this very TLS connection.
- The authorization identity may only be the user's own bare JID: this server has no
  proxy authorization (`invalid-authzid` otherwise).
- Storage errors are `temporary-auth-failure` (RFC 6120 §6.5.12: try again later), never
  `not-authorized`, and are logged (`sasl_store_error`; a traceback only for errors other
  than `StorageUnavailable`, which a database outage makes common). The session does
  not throttle them as a client's failed guess.

PLAIN derives a key from the password (milliseconds of CPU, see `mongoose.auth.scram`);
`run_blocking` (such as `otp.blocking.run`) moves that off the event loop. SCRAM's
server side is a few HMACs: the client does the derivation.

Scramp is not used for the exchange itself, only for SASLprep and in tests as the
independent client: its server refuses an authzid, refuses the channel binding type
`tls-exporter`, and looks up users with a synchronous callback.

`FailureThrottle` slows down repeated failures from one address (`[auth.failure_delay]`).

Instrumentation: an exchange that gets as far as checking credentials emits
`auth_authorize` {host_type} with `count` and `time`, the µs the server spent on the check
(account lookup and key derivation for PLAIN; account lookup plus proof verification for
SCRAM, without the client's round trip in between), whatever the outcome. See
`mongoose.auth.events`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from secrets import token_bytes, token_urlsafe
from typing import Any

from scramp.utils import ScramException, saslprep

from mongoose.auth import events, scram
from mongoose.auth.accounts import InvalidUser, normalize_user
from mongoose.auth.scram import ScramSecret
from mongoose.storage.database import StorageUnavailable

log = logging.getLogger(__name__)

# Config names (`auth.sasl_mechanisms`) -> SASL names.
MECHANISMS: Mapping[str, str] = {
    "scram_sha512_plus": "SCRAM-SHA-512-PLUS",
    "scram_sha256_plus": "SCRAM-SHA-256-PLUS",
    "scram_sha1_plus": "SCRAM-SHA-1-PLUS",
    "scram_sha512": "SCRAM-SHA-512",
    "scram_sha256": "SCRAM-SHA-256",
    "scram_sha1": "SCRAM-SHA-1",
    "plain": "PLAIN",
}
# SASL name of a SCRAM family -> the stored hash it needs.
SCRAM_HASHES: Mapping[str, str] = {
    "SCRAM-SHA-1": "sha",
    "SCRAM-SHA-256": "sha256",
    "SCRAM-SHA-512": "sha512",
}
CHANNEL_BINDING_TYPES = ("tls-exporter", "tls-server-end-point")

GetSecrets = Callable[[str], Awaitable["dict[str, ScramSecret] | None"]]
RunBlocking = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Challenge:
    data: bytes


@dataclass(frozen=True)
class Success:
    data: bytes | None  # additional data with success (SCRAM's server signature)
    username: str  # the authenticated localpart, normalised


@dataclass(frozen=True)
class Failure:
    condition: str  # an RFC 6120 §6.5 condition element name
    text: str | None = None


Step = Challenge | Success | Failure


class _Fail(Exception):
    """Ends the exchange with a Failure; raised anywhere in a mechanism."""

    def __init__(self, condition: str, text: str | None = None):
        super().__init__(condition, text)
        self.failure = Failure(condition, text)


class PayloadError(ValueError):
    """Not base64: answer `Failure(PayloadError.condition)`."""

    condition = "incorrect-encoding"


def decode_payload(text: str) -> bytes:
    """The bytes of a SASL element's base64 text; "=" and "" are empty (RFC 6120 §6.4.2)."""
    text = text.strip()
    if text in ("", "="):
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError("the SASL data is not base64") from None


def encode_payload(data: bytes | None) -> str:
    """The text of a SASL element: "" for no data, "=" for empty data."""
    if data is None:
        return ""
    return base64.b64encode(data).decode("ascii") if data else "="


def offered(
    config_mechanisms: Sequence[str],
    *,
    tls_active: bool,
    channel_binding: bool,
    allow_plain_without_tls: bool = False,
    hashes: Sequence[str] | None = None,
) -> list[str]:
    """The SASL names to advertise, in config order.

    -PLUS needs channel binding data of the connection (`channel_binding`, which implies
    TLS); PLAIN needs TLS unless `allow_plain_without_tls`; with `hashes` (the configured
    `auth.password.hash`), SCRAM families whose secrets are not stored are left out.
    """
    names = []
    for config_name in config_mechanisms:
        name = MECHANISMS[config_name]
        if name.endswith("-PLUS") and not (tls_active and channel_binding):
            continue
        if name == "PLAIN" and not (tls_active or allow_plain_without_tls):
            continue
        family = name.removesuffix("-PLUS")
        if hashes is not None and family in SCRAM_HASHES and SCRAM_HASHES[family] not in hashes:
            continue
        names.append(name)
    return names


async def _run_inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


# Fake salts of one process when the caller gives no key (see the module docstring).
_PROCESS_SALT_KEY = token_bytes(32)


class SaslServer:
    """One SASL exchange on one stream, for one mechanism (see the module docstring).

    `get_secrets(user)` is awaited once with the normalised localpart; it returns the
    user's secrets or None. `channel_binding` maps binding types ("tls-exporter",
    "tls-server-end-point") to this connection's data; None without TLS. `offered` is
    what the stream features listed. `iterations` is the count fake secrets of unknown
    users claim: pass `auth.password.scram_iterations`.
    """

    def __init__(
        self,
        mechanism: str,
        *,
        host: str,
        get_secrets: GetSecrets,
        channel_binding: Mapping[str, bytes] | None,
        offered: Sequence[str],
        run_blocking: RunBlocking | None = None,
        fake_salt_key: bytes | None = None,
        iterations: int = 10_000,
    ) -> None:
        self.mechanism = mechanism
        self.host = host.lower()
        self.offered = list(offered)
        self._get_secrets = get_secrets
        self._channel_binding = dict(channel_binding or {})
        self._run_blocking = run_blocking or _run_inline
        self._fake_salt_key = fake_salt_key or _PROCESS_SALT_KEY
        self._iterations = iterations
        self._next: Callable[[bytes], Awaitable[Step]] | None = None
        self._done = False
        # SCRAM state between the two client messages.
        self._gs2_header = ""
        self._cb_data = b""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._user: str | None = None
        self._secret: ScramSecret | None = None
        # ns spent on the credential check so far (SCRAM: the lookup in client-first).
        self._check_ns = 0

    async def start(self, initial_response: bytes | None) -> Step:
        """Begin with the `<auth>` element's data (None: it had none)."""
        if self._done or self._next is not None:
            return self._finish(Failure("malformed-request", "the exchange has started"))
        if self.mechanism not in self.offered or self.mechanism not in MECHANISMS.values():
            return self._finish(Failure("invalid-mechanism"))
        first = self._plain if self.mechanism == "PLAIN" else self._scram_client_first
        if initial_response is None:
            self._next = first
            return Challenge(b"")
        return await self._run(first, initial_response)

    async def step(self, response: bytes) -> Step:
        """Continue with a `<response>` element's data."""
        if self._done or self._next is None:
            return self._finish(Failure("malformed-request", "no challenge is pending"))
        return await self._run(self._next, response)

    def abort(self) -> Failure:
        """The client sent `<abort/>`."""
        return self._finish(Failure("aborted"))

    async def _run(self, handler: Callable[[bytes], Awaitable[Step]], data: bytes) -> Step:
        self._next = None
        try:
            result = await handler(data)
        except _Fail as fail:
            return self._finish(fail.failure)
        return result if isinstance(result, Challenge) else self._finish(result)

    def _finish(self, result: Success | Failure) -> Success | Failure:
        self._done = True
        self._secret = None
        return result

    # Shared by the mechanisms

    def _user_of(self, authcid: str) -> str | None:
        """The normalised localpart named by an authentication identity, None if it
        cannot be an account of this host. A bare JID of this host is accepted, as some
        clients send one."""
        local, at, domain = authcid.partition("@")
        if at and domain.lower() != self.host:
            return None
        try:
            return normalize_user(local)
        except InvalidUser:
            return None

    def _check_authzid(self, authzid: str, user: str | None) -> None:
        """An authzid may only name the user's own bare JID."""
        if not authzid:
            return
        if user is None or "@" not in authzid or self._user_of(authzid) != user:
            raise _Fail("invalid-authzid", "only your own bare JID may be the authzid")

    async def _secrets_of(self, user: str | None) -> dict[str, ScramSecret] | None:
        if user is None:
            return None
        try:
            return await self._get_secrets(user)
        except StorageUnavailable as error:  # the database is down: expected, no traceback
            log.warning("account store unavailable during SASL", extra={
                "what": "sasl_store_error", "host": self.host, "reason": str(error)})
            raise _Fail("temporary-auth-failure") from None
        except Exception as error:
            log.error("account store failed during SASL", exc_info=True, extra={
                "what": "sasl_store_error", "host": self.host, "reason": str(error)})
            raise _Fail("temporary-auth-failure") from None

    def _authorized(self, start_ns: int) -> None:
        """The credential check that began at ``start_ns`` is over: auth_authorize."""
        elapsed = self._check_ns + time.perf_counter_ns() - start_ns
        events.authorize_sink(self.host).emit({"count": 1, "time": elapsed // 1000})

    def _fake_secret(self, hash_name: str, user: str | None) -> ScramSecret:
        """Secrets no password matches, with a salt that is stable for the user name."""
        seed = f"{self.host}\0{user}\0{hash_name}".encode()
        salt = hmac.digest(self._fake_salt_key, seed, "sha256")[: scram.SALT_BYTES]
        size = hashlib.new(scram.HASHES[hash_name]).digest_size
        return ScramSecret(hash_name, salt, self._iterations, token_bytes(size), b"")

    # PLAIN (RFC 4616): [authzid] NUL authcid NUL passwd, UTF-8.

    async def _plain(self, message: bytes) -> Step:
        authzid, authcid, password = _split_plain(message)
        user = self._user_of(authcid)
        self._check_authzid(authzid, user)
        start = time.perf_counter_ns()
        secrets = await self._secrets_of(user)
        if not secrets:
            secrets = {"sha256": self._fake_secret("sha256", user)}
        matches = await self._run_blocking(scram.check_password, secrets, password)
        self._authorized(start)
        if user is None or not matches:
            return Failure("not-authorized")
        return Success(None, user)

    # SCRAM (RFC 5802): client-first, server-first, client-final, server-final.

    async def _scram_client_first(self, message: bytes) -> Step:
        text = _utf8(message)
        flag, authzid_field, bare = _split_gs2(text)
        self._gs2_header = text[: len(text) - len(bare)]
        self._cb_data = self._check_binding_flag(flag)
        username, client_nonce = _parse_client_first_bare(bare)
        user = self._user_of(_prepared(username))
        self._check_authzid(_authzid_of(authzid_field), user)
        hash_name = SCRAM_HASHES[self.mechanism.removesuffix("-PLUS")]
        start = time.perf_counter_ns()
        secret = ((await self._secrets_of(user)) or {}).get(hash_name)
        self._check_ns = time.perf_counter_ns() - start
        self._user = user if secret is not None else None
        self._secret = secret or self._fake_secret(hash_name, user)
        self._client_first_bare = bare
        self._nonce = client_nonce + token_urlsafe(18)
        salt = base64.b64encode(self._secret.salt).decode("ascii")
        self._server_first = f"r={self._nonce},s={salt},i={self._secret.iterations}"
        self._next = self._scram_client_final
        return Challenge(self._server_first.encode("ascii"))

    def _check_binding_flag(self, flag: str) -> bytes:
        """Apply RFC 5802's channel binding rules to the gs2 flag; the binding data the
        client must prove (b"" without binding)."""
        plus = self.mechanism.endswith("-PLUS")
        if flag.startswith("p="):
            if not plus:
                raise _Fail("malformed-request", "channel binding needs a -PLUS mechanism")
            data = self._channel_binding.get(flag[2:])
            if data is None:
                raise _Fail("malformed-request", "unsupported channel binding type")
            return data
        if flag not in ("n", "y"):
            raise _Fail("malformed-request", "bad gs2 channel binding flag")
        if plus:
            raise _Fail("malformed-request", "a -PLUS mechanism needs channel binding")
        if flag == "y" and any(name.endswith("-PLUS") for name in self.offered):
            raise _Fail("not-authorized", "channel binding was offered: downgrade refused")
        return b""

    async def _scram_client_final(self, message: bytes) -> Step:
        without_proof, binding, nonce, proof = _parse_client_final(_utf8(message))
        start = time.perf_counter_ns()
        try:
            return self._scram_verify(without_proof, binding, nonce, proof)
        finally:
            self._authorized(start)

    def _scram_verify(self, without_proof: str, binding: bytes, nonce: str,
                      proof: bytes) -> Step:
        expected = self._gs2_header.encode("utf-8") + self._cb_data
        if not hmac.compare_digest(binding, expected):
            return Failure("not-authorized", "channel binding mismatch")
        if nonce != self._nonce:
            return Failure("not-authorized", "nonce mismatch")
        assert self._secret is not None
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}"
        if not _proof_valid(self._secret, auth_message.encode("utf-8"), proof):
            return Failure("not-authorized")
        if self._user is None:  # fake secrets: no proof matches their random key anyway
            return Failure("not-authorized")
        signature = hmac.digest(
            self._secret.server_key, auth_message.encode("utf-8"), self._secret.hashlib_name
        )
        return Success(b"v=" + base64.b64encode(signature), self._user)


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Fail("incorrect-encoding", "not UTF-8") from None


def _split_plain(message: bytes) -> tuple[str, str, str]:
    parts = _utf8(message).split("\0")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise _Fail("malformed-request", "expected authzid NUL authcid NUL password")
    authzid, authcid, password = parts
    return authzid, authcid, password


def _split_gs2(text: str) -> tuple[str, str, str]:
    """gs2-header = flag "," [authzid] "," ; returns (flag, authzid field, the rest)."""
    parts = text.split(",", 2)
    if len(parts) != 3:
        raise _Fail("malformed-request", "no gs2 header")
    flag, authzid_field, bare = parts
    return flag, authzid_field, bare


def _authzid_of(field: str) -> str:
    if not field:
        return ""
    if not field.startswith("a="):
        raise _Fail("malformed-request", "bad authzid in the gs2 header")
    return _unescape_saslname(field[2:])


def _parse_client_first_bare(bare: str) -> tuple[str, str]:
    """(username, client nonce) of client-first-message-bare."""
    attributes = bare.split(",")
    if attributes[0].startswith("m="):
        raise _Fail("malformed-request", "mandatory SCRAM extensions are not supported")
    if len(attributes) < 2 or not attributes[0].startswith("n="):
        raise _Fail("malformed-request", "expected n=username,r=nonce")
    if not attributes[1].startswith("r=") or not _valid_nonce(attributes[1][2:]):
        raise _Fail("malformed-request", "expected a printable client nonce")
    _check_extensions(attributes[2:])
    return _unescape_saslname(attributes[0][2:]), attributes[1][2:]


def _parse_client_final(text: str) -> tuple[str, bytes, str, bytes]:
    """(client-final-without-proof, channel binding, nonce, proof)."""
    without_proof, separator, proof = text.rpartition(",p=")
    attributes = without_proof.split(",")
    if (
        not separator
        or len(attributes) < 2
        or not attributes[0].startswith("c=")
        or not attributes[1].startswith("r=")
    ):
        raise _Fail("malformed-request", "expected c=binding,r=nonce,...,p=proof")
    _check_extensions(attributes[2:])
    try:
        binding = base64.b64decode(attributes[0][2:], validate=True)
        proof_bytes = base64.b64decode(proof, validate=True)
    except (binascii.Error, ValueError):
        raise _Fail("incorrect-encoding", "bad base64 in the SCRAM message") from None
    return without_proof, binding, attributes[1][2:], proof_bytes


def _check_extensions(attributes: list[str]) -> None:
    """Optional extensions are ignored, but must be attr=value."""
    for attribute in attributes:
        if len(attribute) < 2 or not attribute[0].isalpha() or attribute[1] != "=":
            raise _Fail("malformed-request", "bad attribute in the SCRAM message")


def _unescape_saslname(name: str) -> str:
    """RFC 5802 saslname: "=2C" is ',' and "=3D" is '='; any other '=' is an error."""
    if name.replace("=2C", "").replace("=3D", "").count("=") or not name:
        raise _Fail("malformed-request", "bad user name in the SCRAM message")
    return name.replace("=2C", ",").replace("=3D", "=")


def _prepared(username: str) -> str:
    """SASLprep of a SCRAM user name; one SASLprep refuses becomes an empty name, which
    matches no account."""
    try:
        return saslprep(username)
    except ScramException:
        return ""


def _valid_nonce(nonce: str) -> bool:
    return bool(nonce) and all("\x21" <= c <= "\x7e" and c != "," for c in nonce)


def _proof_valid(secret: ScramSecret, auth_message: bytes, proof: bytes) -> bool:
    """RFC 5802 §3: H(ClientProof XOR HMAC(StoredKey, AuthMessage)) == StoredKey."""
    signature = hmac.digest(secret.stored_key, auth_message, secret.hashlib_name)
    if len(proof) != len(signature):
        return False
    client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
    digest = hashlib.new(secret.hashlib_name, client_key).digest()
    return hmac.compare_digest(digest, secret.stored_key)


class FailureThrottle:
    """Delays for failed logins, per client address (`[auth.failure_delay]`).

    A failure waits `base_ms` doubled for each failure already recorded from the same
    address, up to `max_ms`. An address's count starts again once it has had no failure
    for `window_s` seconds. At most `max_addresses` addresses are remembered, the least
    recently failing forgotten first, so a flood of addresses costs bounded memory.
    The per-connection count is the session's: `delay_after(count)` gives its delay with
    the same rule, and the session waits the longer of the two.
    """

    def __init__(
        self,
        base_ms: int,
        max_ms: int,
        window_s: float,
        *,
        max_addresses: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_ms = base_ms
        self.max_ms = max_ms
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._clock = clock
        # address -> (failures, time of the last one), least recent first
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def delay_after(self, failures: int) -> float:
        """Seconds to wait for a failure that follows `failures` earlier ones."""
        return min(self.base_ms * 2 ** min(failures, 32), self.max_ms) / 1000

    def delay_for(self, address: str) -> float:
        """Seconds to wait before answering a failure from `address` now."""
        return self.delay_after(self._recent(address))

    def record_failure(self, address: str) -> None:
        failures = self._recent(address) + 1
        self._failures[address] = (failures, self._clock())
        self._failures.move_to_end(address)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failures)

    def _recent(self, address: str) -> int:
        failures, last = self._failures.get(address, (0, 0.0))
        if failures and self._clock() - last > self.window_s:
            del self._failures[address]
            return 0
        return failures
