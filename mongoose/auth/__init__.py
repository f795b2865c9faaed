"""Authentication: who may log in, and how they prove it.

- `mongoose.auth.scram`: SCRAM secrets, the only form in which passwords are stored.
- `mongoose.auth.accounts`: the account store (`AccountStore`, implemented over any
  database by `mongoose.storage.backends.accounts.SqlAccountStore`; `SqliteAccountStore`
  for a file of its own; `open_store(config)` for the configured one) and
  `normalize_user` for localparts.
- `mongoose.auth.sasl`: the server side of SASL (PLAIN, SCRAM-SHA-*, -PLUS) for c2s
  streams, and `FailureThrottle` for failed logins.

The names most callers need are re-exported here.
"""

from mongoose.auth.accounts import (
    AccountError,
    AccountExists,
    AccountStore,
    InvalidUser,
    NoSuchAccount,
    SqlAccountStore,
    SqliteAccountStore,
    normalize_user,
    open_store,
)
from mongoose.auth.sasl import (
    Challenge,
    Failure,
    FailureThrottle,
    SaslServer,
    Step,
    Success,
    decode_payload,
    encode_payload,
    offered,
)
from mongoose.auth.scram import ScramSecret, check_password, make_secrets

__all__ = [
    "AccountError",
    "AccountExists",
    "AccountStore",
    "Challenge",
    "Failure",
    "FailureThrottle",
    "InvalidUser",
    "NoSuchAccount",
    "SaslServer",
    "ScramSecret",
    "SqlAccountStore",
    "SqliteAccountStore",
    "Step",
    "Success",
    "check_password",
    "decode_payload",
    "encode_payload",
    "make_secrets",
    "normalize_user",
    "offered",
    "open_store",
]
