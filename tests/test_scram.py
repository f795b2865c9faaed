"""SCRAM secrets (mongoose/auth/scram.py): derivation, storage form, PLAIN checks."""

from __future__ import annotations

import pytest
import scramp

from mongoose.auth import scram

ITERATIONS = 4096


def test_secrets_for_each_hash_with_own_salt():
    """make_secrets gives one secret per requested hash, each with a fresh salt."""
    secrets = scram.make_secrets("pencil", ITERATIONS)
    assert sorted(secrets) == ["sha", "sha256", "sha512"]
    assert len({s.salt for s in secrets.values()}) == 3
    assert all(s.iterations == ITERATIONS for s in secrets.values())
    assert [len(secrets[h].stored_key) for h in ("sha", "sha256", "sha512")] == [20, 32, 64]
    only = scram.make_secrets("pencil", ITERATIONS, hashes=("sha256",))
    assert list(only) == ["sha256"]


def test_keys_match_scramp_derivation():
    """StoredKey and ServerKey equal what scramp derives for the same salt and count."""
    secret = scram.make_secrets("pencil", ITERATIONS, hashes=("sha256",))["sha256"]
    salt, stored, server, _ = scramp.ScramMechanism("SCRAM-SHA-256").make_auth_info(
        "pencil", ITERATIONS, secret.salt)
    assert (salt, stored, server) == (secret.salt, secret.stored_key, secret.server_key)


def test_round_trip_through_stored_form():
    """encode_secrets then decode_secrets gives back equal secrets, as compact JSON."""
    secrets = scram.make_secrets("pencil", ITERATIONS)
    text = scram.encode_secrets(secrets)
    assert " " not in text and "pencil" not in text
    assert scram.decode_secrets(text) == secrets


@pytest.mark.parametrize(
    "text",
    ["", "not json", "[]", "{}", '{"md5": {}}', '{"sha": {"salt": "AA=="}}',
     '{"sha": {"salt": "!!", "i": 4096, "stored": "", "server": ""}}',
     '{"sha": {"salt": "AA==", "i": 0, "stored": "", "server": ""}}'],
)
def test_decode_rejects_malformed(text):
    """Anything but the stored form raises ValueError."""
    with pytest.raises(ValueError):
        scram.decode_secrets(text)


def test_check_password():
    """check_password accepts the password and nothing else."""
    secrets = scram.make_secrets("pencil", ITERATIONS)
    assert scram.check_password(secrets, "pencil")
    assert not scram.check_password(secrets, "Pencil")
    assert not scram.check_password(secrets, "")
    assert not scram.check_password({}, "pencil")


def test_check_password_uses_strongest_hash():
    """Only the strongest stored hash is consulted (a damaged weaker one is ignored)."""
    secrets = scram.make_secrets("pencil", ITERATIONS)
    secrets["sha"] = scram.make_secrets("other", ITERATIONS, hashes=("sha",))["sha"]
    assert scram.check_password(secrets, "pencil")


def test_passwords_are_saslprepped():
    """A password matches its SASLprep form (non-ASCII space maps to space)."""
    secrets = scram.make_secrets("a\u00a0b", ITERATIONS, hashes=("sha256",))
    assert scram.check_password(secrets, "a b")


def test_saslprep_rejects_control_characters():
    """A password SASLprep refuses cannot be set, and never matches."""
    with pytest.raises(ValueError):
        scram.make_secrets("bad\u0007", ITERATIONS)
    assert not scram.check_password(scram.make_secrets("x", ITERATIONS), "bad\u0007")
