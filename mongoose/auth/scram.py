"""SCRAM secrets: what the server stores instead of a password (RFC 5802, RFC 7677).

For each hash function the server keeps, per account, a random salt, an iteration count
and two keys derived from the password:

    SaltedPassword = PBKDF2-HMAC(hash, SASLprep(password), salt, iterations)
    StoredKey      = H(HMAC(SaltedPassword, "Client Key"))
    ServerKey      = HMAC(SaltedPassword, "Server Key")

That is enough to run every SCRAM mechanism of that hash and, by deriving again from a
password a client sends in the clear (SASL PLAIN), to check it. The password itself is
never stored. Hash names are MongooseIM's: "sha" (SHA-1), "sha256", "sha512".

Contracts:

- `make_secrets` normalises the password with SASLprep (RFC 4013) first, as SCRAM
  requires; a password SASLprep rejects (control or unassigned characters) raises
  `ValueError`.
- Each hash gets its own salt: secrets of one hash tell nothing about another's.
- `check_password` derives with the strongest stored hash only (one PBKDF2 run, the
  costly part) and compares in constant time.
- `encode_secrets`/`decode_secrets` give the stored text form: compact JSON, keys sorted,
  binary values in base64. `decode_secrets` raises `ValueError` on anything else.

Derivation costs one PBKDF2 run per hash (about 4, 5 and 10 ms of CPU for SHA-1, SHA-256
and SHA-512 at 10,000 iterations); callers on an event loop run it on a thread (hashlib
releases the GIL while it derives).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from secrets import token_bytes
from typing import Any

from scramp.utils import ScramException, saslprep

# Our hash names (MongooseIM's) -> hashlib names, weakest first.
HASHES: Mapping[str, str] = {"sha": "sha1", "sha256": "sha256", "sha512": "sha512"}
SALT_BYTES = 16
# RFC 7677 asks for at least 4096; lower counts are only for benchmark accounts.
MIN_ITERATIONS = 1


@dataclass(frozen=True)
class ScramSecret:
    """The SCRAM credentials of one account for one hash function."""

    hash: str  # "sha", "sha256" or "sha512"
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @property
    def hashlib_name(self) -> str:
        return HASHES[self.hash]

    def to_json(self) -> dict[str, Any]:
        return {
            "salt": _b64(self.salt),
            "i": self.iterations,
            "stored": _b64(self.stored_key),
            "server": _b64(self.server_key),
        }

    @classmethod
    def from_json(cls, hash_name: str, data: Any) -> ScramSecret:
        if hash_name not in HASHES or not isinstance(data, dict):
            raise ValueError(f"not SCRAM secrets for a known hash: {hash_name!r}")
        try:
            iterations = data["i"]
            if not isinstance(iterations, int) or iterations < MIN_ITERATIONS:
                raise ValueError(f"bad iteration count {iterations!r}")
            return cls(
                hash=hash_name,
                salt=_unb64(data["salt"]),
                iterations=iterations,
                stored_key=_unb64(data["stored"]),
                server_key=_unb64(data["server"]),
            )
        except (KeyError, TypeError, binascii.Error) as error:
            raise ValueError(f"malformed SCRAM secrets for {hash_name}: {error}") from None


def prepare(password: str) -> bytes:
    """SASLprep(password) as UTF-8: the bytes SCRAM derives keys from."""
    try:
        return saslprep(password).encode("utf-8")
    except ScramException as error:
        raise ValueError(f"password rejected by SASLprep: {error}") from None


def derive(hash_name: str, prepared: bytes, salt: bytes, iterations: int) -> ScramSecret:
    """The secret of one hash for a SASLprepped password, salt and iteration count."""
    digest = HASHES[hash_name]
    salted = hashlib.pbkdf2_hmac(digest, prepared, salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", digest)
    return ScramSecret(
        hash=hash_name,
        salt=salt,
        iterations=iterations,
        stored_key=hashlib.new(digest, client_key).digest(),
        server_key=hmac.digest(salted, b"Server Key", digest),
    )


def make_secrets(
    password: str, iterations: int, hashes: Iterable[str] = ("sha", "sha256", "sha512")
) -> dict[str, ScramSecret]:
    """Fresh secrets (a new salt each) for `password`, keyed by hash name."""
    if iterations < MIN_ITERATIONS:
        raise ValueError(f"iterations must be >= {MIN_ITERATIONS}, got {iterations}")
    prepared = prepare(password)
    return {
        name: derive(name, prepared, token_bytes(SALT_BYTES), iterations)
        for name in dict.fromkeys(hashes)
    }


def strongest(secrets: Mapping[str, ScramSecret]) -> ScramSecret | None:
    """The secret of the strongest hash present, None for no secrets."""
    for name in reversed(HASHES):
        if name in secrets:
            return secrets[name]
    return None


def check_password(secrets: Mapping[str, ScramSecret], password: str) -> bool:
    """True if `password` is the one `secrets` were made from (SASL PLAIN).

    Derives once, with the salt and iteration count of the strongest stored hash, and
    compares the StoredKey in constant time. A password SASLprep rejects never matches.
    """
    secret = strongest(secrets)
    if secret is None:
        return False
    try:
        prepared = prepare(password)
    except ValueError:
        return False
    candidate = derive(secret.hash, prepared, secret.salt, secret.iterations)
    return hmac.compare_digest(candidate.stored_key, secret.stored_key)


def encode_secrets(secrets: Mapping[str, ScramSecret]) -> str:
    """The stored text form of `secrets`: compact JSON keyed by hash name."""
    data = {name: secret.to_json() for name, secret in secrets.items()}
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def decode_secrets(text: str) -> dict[str, ScramSecret]:
    """The inverse of `encode_secrets`; ValueError if `text` is not such a form."""
    try:
        data = json.loads(text)
    except (TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"stored SCRAM secrets are not JSON: {error}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError("stored SCRAM secrets are not a non-empty JSON object")
    return {name: ScramSecret.from_json(name, value) for name, value in data.items()}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise TypeError("expected a base64 string")
    return base64.b64decode(text, validate=True)
