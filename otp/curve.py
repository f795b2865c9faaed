"""The cluster's CURVE keypair: what makes a process a member of the cluster.

One keypair per cluster
    Every process of every node of a cluster holds the same CURVE keypair. Its public key
    is the key of every tcp server socket (each worker's inbound socket) and the only
    client key those servers accept (see :mod:`otp.transport`). A CURVE handshake proves
    that the client holds the secret key matching the public key it presents, so knowing
    the public key is not enough to connect: a process must hold the secret key, which is
    what joining the cluster means. Rotating the key means restarting the cluster with a
    new file on every node.

Keys are z85-encoded
    Both keys are 40-byte z85 strings (ZeroMQ's printable form of a 32-byte key), as
    :func:`zmq.curve_keypair` returns them. Constructing :class:`CurveKeys` checks that the
    public key is the one the secret key implies, so a key file assembled from two
    different pairs fails at start, not at the first handshake.

Key file
    A small TOML file with two string keys, ``public`` and ``secret``, written with mode
    0600 (:func:`save`; the ``mongoose keys generate`` command calls it). :func:`load` reads
    it back and logs a warning (``what=curve_key_file_mode``) when the file is readable by
    group or others: refusing would break deployments that mount secrets read-only with
    wider modes, and the warning still names the problem.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

import zmq

__all__ = ["CurveKeys", "generate", "load", "save"]

logger = logging.getLogger("otp.curve")

_Z85_KEY_LEN = 40


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """The cluster's CURVE keypair, both keys z85-encoded (40 bytes each)."""

    public: bytes
    secret: bytes

    def __post_init__(self) -> None:
        for label, key in (("public", self.public), ("secret", self.secret)):
            if not isinstance(key, bytes) or len(key) != _Z85_KEY_LEN:
                raise ValueError(f"CURVE {label} key must be {_Z85_KEY_LEN} z85-encoded bytes")
        try:
            derived = zmq.curve_public(self.secret)
        except (zmq.ZMQError, ValueError) as e:
            raise ValueError(f"CURVE secret key is not valid z85: {e}") from None
        if derived != self.public:
            raise ValueError("CURVE public key does not belong to the secret key")

    def __repr__(self) -> str:
        # Never print the secret key (logs, tracebacks, the shell).
        return f"CurveKeys(public={self.public!r}, secret=<hidden>)"


def generate() -> CurveKeys:
    """A new random keypair."""
    public, secret = zmq.curve_keypair()
    return CurveKeys(public, secret)


def save(keys: CurveKeys, path: str | os.PathLike[str]) -> None:
    """Write ``keys`` to ``path`` (mode 0600), replacing it atomically if it exists."""
    path = Path(path)
    text = (
        "# The cluster's CURVE keypair (z85). Every node of the cluster needs this file;\n"
        "# anyone holding it can join the cluster. Keep it secret (mode 0600).\n"
        f'public = "{keys.public.decode("ascii")}"\n'
        f'secret = "{keys.secret.decode("ascii")}"\n'
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # O_EXCL with mode 0600: the secret is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load(path: str | os.PathLike[str]) -> CurveKeys:
    """Read a key file written by :func:`save`; raises ``ValueError`` if it is malformed."""
    path = Path(path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "CURVE key file %s is accessible by group or others (mode %o); use 0600",
            path,
            stat.S_IMODE(mode),
            extra={"what": "curve_key_file_mode", "path": str(path),
                   "mode": oct(stat.S_IMODE(mode))},
        )
    try:
        data = tomllib.loads(path.read_text(encoding="ascii"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a CURVE key file: {e}") from None
    try:
        public, secret = data["public"], data["secret"]
    except KeyError as e:
        raise ValueError(f"{path}: missing key {e.args[0]!r}") from None
    if not isinstance(public, str) or not isinstance(secret, str):
        raise ValueError(f"{path}: 'public' and 'secret' must be strings")
    try:
        return CurveKeys(public.encode("ascii"), secret.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as e:
        raise ValueError(f"{path}: {e}") from None
