"""The account store (mongoose/auth/accounts.py): SQLite, shared by processes."""

from __future__ import annotations

import re
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from backend_helpers import recording, unreachable_pool_toml

from mongoose import config
from mongoose.auth import accounts, scram
from mongoose.auth.accounts import (
    AccountExists,
    InvalidUser,
    NoSuchAccount,
    SqliteAccountStore,
    normalize_user,
)
from mongoose.storage.pools import DatabaseUnreachable

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path):
    """A store with a cheap iteration count (derivation cost is not under test)."""
    with SqliteAccountStore(tmp_path / "data" / "mongoose.db", iterations=1) as s:
        yield s


def test_register_and_exists(store):
    """A registered account exists on its host only, with secrets that check."""
    store.register("juliet", "localhost", "pencil")
    assert store.exists("juliet", "localhost")
    assert not store.exists("juliet", "example.com")
    assert not store.exists("romeo", "localhost")
    secrets = store.get_secrets("juliet", "localhost")
    assert sorted(secrets) == ["sha", "sha256", "sha512"]
    assert scram.check_password(secrets, "pencil")
    assert store.get_secrets("romeo", "localhost") is None


def test_password_never_stored(store):
    """The password column stays empty and the password appears nowhere in the row."""
    store.register("juliet", "localhost", "pencil-secret")
    row = sqlite3.connect(store.path).execute(
        "SELECT username, server, password, pass_details, created_at FROM users").fetchone()
    assert row[:3] == ("juliet", "localhost", "")
    assert "pencil-secret" not in row[3]
    assert row[4]  # created_at is filled in


def test_duplicate_register_raises(store):
    """Registering an existing account raises AccountExists and keeps the old secrets."""
    store.register("juliet", "localhost", "pencil")
    with pytest.raises(AccountExists) as raised:
        store.register("juliet", "localhost", "other")
    assert raised.value.jid == "juliet@localhost"
    assert scram.check_password(store.get_secrets("juliet", "localhost"), "pencil")
    store.register("juliet", "example.com", "other")  # another host is another account


def test_unregister(store):
    """unregister removes the account and says whether there was one."""
    store.register("juliet", "localhost", "pencil")
    assert store.unregister("juliet", "localhost") is True
    assert not store.exists("juliet", "localhost")
    assert store.unregister("juliet", "localhost") is False


def test_set_password(store):
    """set_password replaces the secrets; an unknown account raises NoSuchAccount."""
    store.register("juliet", "localhost", "pencil")
    store.set_password("juliet", "localhost", "quill")
    secrets = store.get_secrets("juliet", "localhost")
    assert scram.check_password(secrets, "quill")
    assert not scram.check_password(secrets, "pencil")
    with pytest.raises(NoSuchAccount):
        store.set_password("romeo", "localhost", "x")


def test_list_and_count_per_host(store):
    """list_users is sorted and per host; count agrees."""
    for user in ("romeo", "juliet", "nurse"):
        store.register(user, "localhost", "x")
    store.register("tybalt", "example.com", "x")
    assert store.list_users("localhost") == ["juliet", "nurse", "romeo"]
    assert store.count("localhost") == 3
    assert store.count("example.com") == 1
    assert store.list_users("nowhere") == []
    assert store.count("nowhere") == 0


def test_register_many(store):
    """register_many creates every account with the given iteration count."""
    created = store.register_many("localhost", [(f"u{i}", "pw") for i in range(500)],
                                  iterations=2)
    assert created == 500
    assert store.count("localhost") == 500
    secrets = store.get_secrets("u499", "localhost")
    assert secrets["sha256"].iterations == 2
    assert scram.check_password(secrets, "pw")


def test_register_many_is_all_or_nothing(store):
    """A bulk insert that meets an existing account creates nothing and names it."""
    store.register("u3", "localhost", "pw")
    with pytest.raises(AccountExists) as raised:
        store.register_many("localhost", [(f"u{i}", "pw") for i in range(10)])
    assert raised.value.jid == "u3@localhost"
    assert store.list_users("localhost") == ["u3"]


@pytest.mark.parametrize("user", ["", "a@b", "a/b"])
def test_store_rejects_impossible_users(store, user):
    """Empty user names and ones with '@' or '/' are refused."""
    with pytest.raises(InvalidUser):
        store.register(user, "localhost", "pw")


def test_hashes_and_iterations_of_the_store(tmp_path):
    """The store derives only its configured hashes, with its iteration count."""
    with SqliteAccountStore(tmp_path / "s.db", hashes=("sha256",), iterations=4096) as s:
        s.register("juliet", "localhost", "pencil")
        secrets = s.get_secrets("juliet", "localhost")
    assert list(secrets) == ["sha256"]
    assert secrets["sha256"].iterations == 4096


def test_file_modes_and_wal(tmp_path):
    """The directory is made 0700, the file 0600, and the database runs in WAL mode."""
    path = tmp_path / "new" / "dir" / "mongoose.db"
    with SqliteAccountStore(path, iterations=1) as s:
        s.register("juliet", "localhost", "pencil")
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


def test_open_store_follows_config(tmp_path):
    """open_store puts mongoose.db under data_dir with the configured hashes and count."""
    cfg = config.loads(textwrap.dedent(f"""
        [general]
        data_dir = "{tmp_path / 'd'}"
        [auth.password]
        hash = ["sha512"]
        scram_iterations = 5000
    """))
    with accounts.open_store(cfg) as s:
        assert s.path == tmp_path / "d" / "mongoose.db"
        s.register("juliet", "localhost", "pencil")
        assert s.get_secrets("juliet", "localhost")["sha512"].iterations == 5000
        assert list(s.get_secrets("juliet", "localhost")) == ["sha512"]


# The users table as the account store created it before the shipped schema existed.
OLD_USERS_TABLE = """
CREATE TABLE users (
    username TEXT NOT NULL,
    server TEXT NOT NULL,
    password TEXT NOT NULL DEFAULT '',
    pass_details TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (server, username)
) WITHOUT ROWID;
"""


def test_a_file_of_the_old_store_keeps_its_accounts(tmp_path):
    """A mongoose.db made before the shipped schema (only users) keeps its accounts and
    gains the other tables when a store opens it."""
    path = tmp_path / "mongoose.db"
    details = scram.encode_secrets(scram.make_secrets("pencil", 1, ("sha256",)))
    with sqlite3.connect(path) as old:
        old.executescript(OLD_USERS_TABLE)
        old.execute("INSERT INTO users (username, server, pass_details) VALUES (?, ?, ?)",
                    ("juliet", "localhost", details))
    old.close()
    with SqliteAccountStore(path, iterations=1) as s:
        assert scram.check_password(s.get_secrets("juliet", "localhost"), "pencil")
        s.register("romeo", "localhost", "x")
        assert s.list_users("localhost") == ["juliet", "romeo"]
        tables = {row[0] for row in s.db.query("SELECT name FROM sqlite_master")}
    assert {"rosterusers", "mam_message", "offline_message", "schema_version"} <= tables


def test_open_store_rdbms_uses_the_pool(tmp_path, pg_config_toml):
    """methods = ["rdbms"] keeps accounts in the pool's database (users table), with
    the same storage_query events; nothing goes to the SQLite file."""
    cfg = config.loads(textwrap.dedent(f"""
        [general]
        data_dir = "{tmp_path / 'd'}"
        [auth]
        methods = ["rdbms"]
        [auth.password]
        hash = ["sha256"]
        scram_iterations = 4096
    """) + pg_config_toml)
    with accounts.open_store(cfg) as s, recording() as memory:
        assert s.db.driver == "pgsql"
        s.register("juliet", "localhost", "pencil")
        assert s.get_secrets("juliet", "localhost")["sha256"].iterations == 4096
        assert s.list_users("localhost") == ["juliet"]
        [[count]] = s.db.query("SELECT COUNT(*) FROM users WHERE server = ?", ("localhost",))
        assert memory.find("storage_query", {"backend": "accounts", "function": "register"})
    assert count == 1
    assert not (tmp_path / "d" / "mongoose.db").exists()


def test_open_store_rdbms_unreachable_fails_clearly(tmp_path):
    """An unreachable pool with wait=0: one attempt, then an error naming the pool."""
    cfg = config.loads(f'[general]\ndata_dir = "{tmp_path}"\n[auth]\nmethods = ["rdbms"]\n'
                       + unreachable_pool_toml())
    with pytest.raises(DatabaseUnreachable, match=re.escape("outgoing_pools.rdbms.default")):
        accounts.open_store(cfg, wait=0)


def test_threads_share_a_store(store):
    """Several threads can register and read through one store at once."""
    errors = []

    def work(n):
        try:
            for i in range(50):
                store.register(f"t{n}-{i}", "localhost", "pw")
                assert store.exists(f"t{n}-{i}", "localhost")
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.count("localhost") == 200


CHILD = """
import sys
from mongoose.auth.accounts import SqliteAccountStore
store = SqliteAccountStore(sys.argv[1], iterations=1)
print("ready", flush=True)
sys.stdin.readline()
for i in range(300):
    store.register(f"child{i}", "localhost", "pw")
    store.count("localhost")
print("done", flush=True)
"""


def test_two_processes_use_one_file(tmp_path):
    """Another process writing the same file at the same time loses nothing (WAL and
    busy timeout)."""
    path = tmp_path / "mongoose.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], cwd=ROOT, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout.readline() == "ready\n"
        with SqliteAccountStore(path, iterations=1) as s:
            child.stdin.write("go\n")
            child.stdin.flush()
            for i in range(300):
                s.register(f"parent{i}", "localhost", "pw")
                s.list_users("localhost")
            assert child.stdout.readline() == "done\n"
            assert child.wait(timeout=30) == 0
            assert s.count("localhost") == 600
    finally:
        child.kill()
        child.wait()


# normalize_user


def test_normalize_user_case_folds_and_composes():
    """Localparts are case-folded and NFC-composed."""
    assert normalize_user("Juliet") == "juliet"
    assert normalize_user("STRASSE") == normalize_user("straße") == "strasse"
    assert normalize_user("e\u0301") == "\u00e9"


@pytest.mark.parametrize("text", ["", "a b", "a\tb", 'a"b', "a&b", "a'b", "a/b", "a:b",
                                  "a<b", "a>b", "a@b", "a\x00b", "x" * 1024])
def test_normalize_user_rejects(text):
    """Empty, too long, and RFC 7622's forbidden characters are refused."""
    with pytest.raises(InvalidUser):
        normalize_user(text)
