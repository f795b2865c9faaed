"""The SASL server (mongoose/auth/sasl.py), driven end to end by real clients.

SCRAM exchanges without binding or with tls-server-end-point use scramp's client, an
independent implementation. Scramp's client refuses the tls-exporter binding type and
authzids, so those cases use the small hand-made client below (RFC 5802 §3).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from secrets import token_bytes

import pytest
import scramp

from mongoose.auth import sasl, scram
from mongoose.auth.sasl import Challenge, Failure, FailureThrottle, SaslServer, Success

HOST = "localhost"
PASSWORD = "pencil"
SCRAM = ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512"]
ALL_OFFERED = [f"{m}-PLUS" for m in SCRAM] + SCRAM + ["PLAIN"]
EXPORTER = token_bytes(32)
END_POINT = token_bytes(32)
BINDINGS = {"tls-exporter": EXPORTER, "tls-server-end-point": END_POINT}


@pytest.fixture(scope="module")
def accounts():
    """juliet's secrets (made once: derivation is the slow part)."""
    return {"juliet": scram.make_secrets(PASSWORD, 4096)}


def server(accounts, mechanism, *, offered=ALL_OFFERED, bindings=BINDINGS, **kwargs):
    async def get_secrets(user):
        return accounts.get(user)

    return SaslServer(mechanism, host=HOST, get_secrets=get_secrets,
                      channel_binding=bindings, offered=offered, iterations=4096, **kwargs)


def run(coroutine):
    return asyncio.run(coroutine)


async def scramp_exchange(srv, client):
    """Run `client` (a scramp.ScramClient) against `srv`; the server's last step."""
    first = await srv.start(client.get_client_first().encode())
    if not isinstance(first, Challenge):
        return first
    client.set_server_first(first.data.decode())
    final = await srv.step(client.get_client_final().encode())
    if isinstance(final, Success):
        client.set_server_final(final.data.decode())  # checks the server's signature
    return final


class HandClient:
    """A minimal SCRAM client that can send any gs2 header and binding data."""

    def __init__(self, mechanism, user, password, *, gs2="n,,", cb_data=b""):
        self.digest = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256",
                       "SCRAM-SHA-512": "sha512"}[mechanism.removesuffix("-PLUS")]
        self.password = password.encode()
        self.gs2, self.cb_data = gs2, cb_data
        self.bare = f"n={user},r=clientnonce123"

    def first(self) -> bytes:
        return (self.gs2 + self.bare).encode()

    def final(self, server_first: bytes) -> bytes:
        fields = dict(part.split("=", 1) for part in server_first.decode().split(","))
        salted = hashlib.pbkdf2_hmac(self.digest, self.password,
                                     base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.digest(salted, b"Client Key", self.digest)
        stored = hashlib.new(self.digest, client_key).digest()
        binding = base64.b64encode(self.gs2.encode() + self.cb_data).decode()
        without_proof = f"c={binding},r={fields['r']}"
        auth = f"{self.bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(stored, auth, self.digest)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


async def hand_exchange(srv, client):
    first = await srv.start(client.first())
    if not isinstance(first, Challenge):
        return first
    return await srv.step(client.final(first.data))


# offered()


def test_offered_keeps_config_order_and_maps_names():
    """Config names map to SASL names in config order when everything is possible."""
    names = sasl.offered(("plain", "scram_sha256_plus", "scram_sha1"),
                         tls_active=True, channel_binding=True)
    assert names == ["PLAIN", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1"]


def test_offered_plus_needs_channel_binding():
    """-PLUS mechanisms are left out without channel binding data."""
    names = sasl.offered(("scram_sha256_plus", "scram_sha256", "plain"),
                         tls_active=True, channel_binding=False)
    assert names == ["SCRAM-SHA-256", "PLAIN"]


def test_offered_plain_needs_tls_unless_allowed():
    """PLAIN is offered without TLS only with allow_plain_without_tls."""
    mechanisms = ("scram_sha1_plus", "scram_sha1", "plain")
    assert sasl.offered(mechanisms, tls_active=False, channel_binding=True) == ["SCRAM-SHA-1"]
    assert sasl.offered(mechanisms, tls_active=False, channel_binding=False,
                        allow_plain_without_tls=True) == ["SCRAM-SHA-1", "PLAIN"]


def test_offered_filters_scram_by_stored_hashes():
    """With `hashes`, SCRAM families whose secrets are not stored are not offered."""
    names = sasl.offered(("scram_sha512_plus", "scram_sha1", "scram_sha256", "plain"),
                         tls_active=True, channel_binding=True, hashes=("sha256",))
    assert names == ["SCRAM-SHA-256", "PLAIN"]


# Payload helpers


def test_payload_encoding():
    """"=" and "" decode to empty data; None encodes to "", empty data to "="."""
    assert sasl.decode_payload("=") == b""
    assert sasl.decode_payload("") == b""
    assert sasl.decode_payload(" AGp1bGlldABwZW5jaWw= ") == b"\0juliet\0pencil"
    assert sasl.encode_payload(None) == ""
    assert sasl.encode_payload(b"") == "="
    assert sasl.encode_payload(b"\0a") == "AGE="


@pytest.mark.parametrize("text", ["!!!", "AGp1bGlldABwZW5jaWw", "A=B="])
def test_bad_base64_is_incorrect_encoding(text):
    """Text that is not base64 raises PayloadError, condition incorrect-encoding."""
    with pytest.raises(sasl.PayloadError) as raised:
        sasl.decode_payload(text)
    assert raised.value.condition == "incorrect-encoding"


# PLAIN


def test_plain_success(accounts):
    """PLAIN with the right password succeeds for the normalised user, no extra data."""
    result = run(server(accounts, "PLAIN").start(b"\0Juliet\0pencil"))
    assert result == Success(None, "juliet")


def test_plain_without_initial_response(accounts):
    """Without an initial response PLAIN sends an empty challenge, then takes the
    response."""
    async def exchange():
        srv = server(accounts, "PLAIN")
        assert await srv.start(None) == Challenge(b"")
        return await srv.step(b"\0juliet\0pencil")

    assert run(exchange()) == Success(None, "juliet")


def test_plain_wrong_password_and_unknown_user_look_alike(accounts):
    """A wrong password and an unknown user both give a bare not-authorized."""
    wrong = run(server(accounts, "PLAIN").start(b"\0juliet\0wrong"))
    unknown = run(server(accounts, "PLAIN").start(b"\0romeo\0pencil"))
    assert wrong == unknown == Failure("not-authorized")


def test_plain_unknown_user_costs_a_derivation(accounts):
    """An unknown user's password is checked (against fake secrets) all the same."""
    calls = []

    async def run_blocking(fn, *args):
        calls.append(fn)
        return fn(*args)

    result = run(server(accounts, "PLAIN", run_blocking=run_blocking).start(b"\0romeo\0x"))
    assert result == Failure("not-authorized")
    assert calls == [scram.check_password]


def test_plain_accepts_bare_jid_as_authcid(accounts):
    """An authcid that is the user's bare JID on this host is accepted."""
    assert run(server(accounts, "PLAIN").start(b"\0juliet@localhost\0pencil")) == \
        Success(None, "juliet")
    assert run(server(accounts, "PLAIN").start(b"\0juliet@elsewhere\0pencil")) == \
        Failure("not-authorized")


def test_plain_authzid_rules(accounts):
    """The authzid may be the user's own bare JID; any other is invalid-authzid."""
    own = run(server(accounts, "PLAIN").start(b"juliet@localhost\0juliet\0pencil"))
    assert own == Success(None, "juliet")
    for authzid in (b"romeo@localhost", b"juliet@localhost/balcony", b"juliet",
                    b"juliet@example.com"):
        other = run(server(accounts, "PLAIN").start(authzid + b"\0juliet\0pencil"))
        assert isinstance(other, Failure) and other.condition == "invalid-authzid", authzid


def test_plain_bad_utf8_is_incorrect_encoding(accounts):
    """A PLAIN message that is not UTF-8 fails with incorrect-encoding."""
    result = run(server(accounts, "PLAIN").start(b"\0juliet\0\xff\xfe"))
    assert result.condition == "incorrect-encoding"


@pytest.mark.parametrize("message", [b"", b"juliet", b"\0juliet", b"\0\0pencil",
                                     b"\0juliet\0", b"a\0b\0c\0d"])
def test_plain_malformed(accounts, message):
    """PLAIN messages without exactly authzid, authcid and password are malformed."""
    result = run(server(accounts, "PLAIN").start(message))
    assert result.condition == "malformed-request"


def test_storage_error_is_temporary_auth_failure():
    """An exception from get_secrets is temporary-auth-failure, not not-authorized."""
    async def broken(user):
        raise OSError("disk on fire")

    for mechanism, message in (("PLAIN", b"\0juliet\0pencil"),
                               ("SCRAM-SHA-256", b"n,,n=juliet,r=abc")):
        srv = SaslServer(mechanism, host=HOST, get_secrets=broken, channel_binding=None,
                         offered=["SCRAM-SHA-256", "PLAIN"])
        assert run(srv.start(message)).condition == "temporary-auth-failure"


# Mechanism choice and exchange state


def test_mechanism_not_offered_is_invalid_mechanism(accounts):
    """A mechanism the features did not list fails with invalid-mechanism."""
    srv = server(accounts, "SCRAM-SHA-256-PLUS", offered=["SCRAM-SHA-256", "PLAIN"])
    assert run(srv.start(b"p=tls-exporter,,n=juliet,r=abc")) == Failure("invalid-mechanism")
    assert run(server(accounts, "DIGEST-MD5").start(None)) == Failure("invalid-mechanism")


def test_abort_and_steps_after_the_end(accounts):
    """abort() is the aborted failure; any step after the end is malformed-request."""
    async def exchange():
        srv = server(accounts, "SCRAM-SHA-256")
        await srv.start(None)
        assert srv.abort() == Failure("aborted")
        assert (await srv.step(b"n,,n=juliet,r=abc")).condition == "malformed-request"
        done = server(accounts, "PLAIN")
        await done.start(b"\0juliet\0pencil")
        assert (await done.step(b"\0juliet\0pencil")).condition == "malformed-request"
        assert (await done.start(b"\0juliet\0pencil")).condition == "malformed-request"

    run(exchange())


# SCRAM against scramp's client


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_success(accounts, mechanism):
    """Each SCRAM mechanism authenticates, and the client verifies the server signature."""
    client = scramp.ScramClient([mechanism], "juliet", PASSWORD)
    result = run(scramp_exchange(server(accounts, mechanism), client))
    assert isinstance(result, Success) and result.username == "juliet"


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_without_initial_response(accounts, mechanism):
    """SCRAM started without initial response asks for client-first with an empty
    challenge."""
    async def exchange():
        srv = server(accounts, mechanism)
        assert await srv.start(None) == Challenge(b"")
        client = scramp.ScramClient([mechanism], "juliet", PASSWORD)
        first = await srv.step(client.get_client_first().encode())
        client.set_server_first(first.data.decode())
        return await srv.step(client.get_client_final().encode())

    assert isinstance(run(exchange()), Success)


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_wrong_password(accounts, mechanism):
    """A wrong password fails with not-authorized after the challenge."""
    client = scramp.ScramClient([mechanism], "juliet", "wrong")
    assert run(scramp_exchange(server(accounts, mechanism), client)) == \
        Failure("not-authorized")


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_unknown_user_is_challenged_like_a_known_one(accounts, mechanism):
    """An unknown user gets a challenge with a stable fake salt and the configured
    iteration count, then the same not-authorized as a wrong password."""
    key = token_bytes(32)

    async def salt_of(user):
        srv = server(accounts, mechanism, fake_salt_key=key)
        first = await srv.start(f"n,,n={user},r=abc".encode())
        fields = dict(part.split("=", 1) for part in first.data.decode().split(","))
        assert fields["i"] == "4096"
        return fields["s"]

    assert run(salt_of("romeo")) == run(salt_of("romeo")) != run(salt_of("tybalt"))
    assert len(base64.b64decode(run(salt_of("romeo")))) == scram.SALT_BYTES
    client = scramp.ScramClient([mechanism], "romeo", PASSWORD)
    assert run(scramp_exchange(server(accounts, mechanism), client)) == \
        Failure("not-authorized")


def test_scram_rfc7677_example(accounts, monkeypatch):
    """The exchange of RFC 7677 §3 (user "user", password "pencil") runs as printed."""
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    prepared = scram.prepare("pencil")
    secrets = {"user": {"sha256": scram.derive("sha256", prepared, salt, 4096)}}
    monkeypatch.setattr(sasl, "token_urlsafe", lambda n: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"

    async def exchange():
        srv = server(secrets, "SCRAM-SHA-256")
        first = await srv.start(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
        assert first.data == f"r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".encode()
        proof = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        return await srv.step(f"c=biws,r={nonce},p={proof}".encode())

    assert run(exchange()) == Success(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", "user")


def test_scram_username_escapes_and_case(accounts):
    """SCRAM user names are unescaped (=2C, =3D) and normalised like any localpart."""
    client = scramp.ScramClient(["SCRAM-SHA-256"], "JULIET", PASSWORD)
    assert run(scramp_exchange(server(accounts, "SCRAM-SHA-256"), client)).username == "juliet"
    bad = run(server(accounts, "SCRAM-SHA-256").start(b"n,,n=jul=41iet,r=abc"))
    assert bad.condition == "malformed-request"


def test_scram_bad_utf8_is_incorrect_encoding(accounts):
    """A SCRAM message that is not UTF-8 fails with incorrect-encoding."""
    result = run(server(accounts, "SCRAM-SHA-1").start(b"n,,n=\xff,r=abc"))
    assert result.condition == "incorrect-encoding"


@pytest.mark.parametrize("message", [b"", b"n,,", b"n,,r=abc,n=juliet", b"x,,n=juliet,r=abc",
                                     b"n,,m=ext,n=juliet,r=abc", b"n,,n=juliet,r=a,bc",
                                     b"n,b=1,n=juliet,r=abc"])
def test_scram_malformed_client_first(accounts, message):
    """Client-first messages that break RFC 5802's grammar are malformed-request."""
    result = run(server(accounts, "SCRAM-SHA-256").start(message))
    assert result.condition == "malformed-request", result


def test_scram_malformed_client_final(accounts):
    """A client-final without proof, or with another nonce, fails."""
    async def final(message):
        srv = server(accounts, "SCRAM-SHA-256")
        await srv.start(b"n,,n=juliet,r=abc")
        return await srv.step(message)

    assert run(final(b"c=biws,r=abc")).condition == "malformed-request"
    assert run(final(b"c=biws,r=abcdef,p=AAAA")) == Failure("not-authorized", "nonce mismatch")


def test_scram_authzid_rules(accounts):
    """In SCRAM too the authzid may be the user's own bare JID and nothing else."""
    own = HandClient("SCRAM-SHA-256", "juliet", PASSWORD, gs2="n,a=juliet@localhost,")
    result = run(hand_exchange(server(accounts, "SCRAM-SHA-256"), own))
    assert isinstance(result, Success) and result.username == "juliet"
    other = HandClient("SCRAM-SHA-256", "juliet", PASSWORD, gs2="n,a=romeo@localhost,")
    assert run(hand_exchange(server(accounts, "SCRAM-SHA-256"), other)).condition == \
        "invalid-authzid"


# Channel binding


@pytest.mark.parametrize("mechanism", SCRAM)
def test_plus_with_tls_exporter(accounts, mechanism):
    """-PLUS with p=tls-exporter and this connection's exporter data succeeds."""
    client = HandClient(f"{mechanism}-PLUS", "juliet", PASSWORD, gs2="p=tls-exporter,,",
                        cb_data=EXPORTER)
    result = run(hand_exchange(server(accounts, f"{mechanism}-PLUS"), client))
    assert isinstance(result, Success) and result.username == "juliet"


@pytest.mark.parametrize("mechanism", SCRAM)
def test_plus_with_tls_server_end_point(accounts, mechanism):
    """-PLUS with tls-server-end-point succeeds against scramp's client."""
    client = scramp.ScramClient([f"{mechanism}-PLUS"], "juliet", PASSWORD,
                                channel_binding=("tls-server-end-point", END_POINT))
    result = run(scramp_exchange(server(accounts, f"{mechanism}-PLUS"), client))
    assert isinstance(result, Success)


def test_plus_with_wrong_binding_data(accounts):
    """Binding data of another connection fails with not-authorized."""
    client = HandClient("SCRAM-SHA-256-PLUS", "juliet", PASSWORD, gs2="p=tls-exporter,,",
                        cb_data=token_bytes(32))
    result = run(hand_exchange(server(accounts, "SCRAM-SHA-256-PLUS"), client))
    assert result == Failure("not-authorized", "channel binding mismatch")
    scramp_client = scramp.ScramClient(["SCRAM-SHA-256-PLUS"], "juliet", PASSWORD,
                                       channel_binding=("tls-server-end-point", b"other"))
    assert run(scramp_exchange(server(accounts, "SCRAM-SHA-256-PLUS"), scramp_client)) == \
        Failure("not-authorized", "channel binding mismatch")


def test_plus_with_unsupported_binding_type(accounts):
    """A binding type the connection has no data for is malformed-request."""
    client = HandClient("SCRAM-SHA-256-PLUS", "juliet", PASSWORD, gs2="p=tls-unique,,")
    result = run(hand_exchange(server(accounts, "SCRAM-SHA-256-PLUS"), client))
    assert result.condition == "malformed-request"


def test_y_flag_is_a_downgrade_when_plus_was_offered(accounts):
    """A client that supports binding but saw no -PLUS (flag 'y') is refused when -PLUS
    was offered, and accepted when it was not."""
    def client():
        return scramp.ScramClient(["SCRAM-SHA-256"], "juliet", PASSWORD,
                                  channel_binding=("tls-server-end-point", END_POINT))

    refused = run(scramp_exchange(server(accounts, "SCRAM-SHA-256"), client()))
    assert refused.condition == "not-authorized"
    allowed = run(scramp_exchange(
        server(accounts, "SCRAM-SHA-256", offered=["SCRAM-SHA-256"]), client()))
    assert isinstance(allowed, Success)


def test_n_flag_with_plus_is_malformed(accounts):
    """A -PLUS mechanism with gs2 flag 'n' is malformed-request."""
    result = run(server(accounts, "SCRAM-SHA-1-PLUS").start(b"n,,n=juliet,r=abc"))
    assert result.condition == "malformed-request"


def test_p_flag_without_plus_is_malformed(accounts):
    """Binding (flag 'p') with a mechanism that is not -PLUS is malformed-request."""
    result = run(server(accounts, "SCRAM-SHA-1").start(b"p=tls-exporter,,n=juliet,r=abc"))
    assert result.condition == "malformed-request"


# FailureThrottle


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_throttle_doubles_up_to_the_maximum():
    """Each failure from an address doubles the next delay, capped at max_ms."""
    throttle = FailureThrottle(200, 1000, 300, clock=Clock())
    delays = []
    for _ in range(5):
        delays.append(throttle.delay_for("192.0.2.1"))
        throttle.record_failure("192.0.2.1")
    assert delays == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert throttle.delay_for("192.0.2.2") == 0.2
    assert throttle.delay_after(2) == 0.8


def test_throttle_forgets_after_a_quiet_window():
    """An address without failures for window_s starts again from base_ms."""
    clock = Clock()
    throttle = FailureThrottle(100, 5000, 60, clock=clock)
    for _ in range(3):
        throttle.record_failure("a")
    clock.now += 59
    assert throttle.delay_for("a") == 0.8
    clock.now += 61
    assert throttle.delay_for("a") == 0.1


def test_throttle_memory_is_bounded():
    """Beyond max_addresses the least recently failing address is forgotten."""
    throttle = FailureThrottle(100, 5000, 60, max_addresses=3, clock=Clock())
    for address in "abcd":
        throttle.record_failure(address)
    throttle.record_failure("b")
    throttle.record_failure("e")
    assert len(throttle) == 3
    assert throttle.delay_for("a") == throttle.delay_for("c") == 0.1
    assert throttle.delay_for("b") == 0.4
