"""`mongoose account ...` (mongoose/cli.py): accounts from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from backend_helpers import unreachable_pool_toml

from mongoose.auth import scram
from mongoose.auth.accounts import SqliteAccountStore

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """\
[general]
hosts = ["localhost", "example.com"]
default_server_domain = "example.com"
[auth.password]
scram_iterations = 4096
"""


@pytest.fixture
def workdir(tmp_path):
    """A working directory with mongoose.toml; data goes to ./data."""
    (tmp_path / "mongoose.toml").write_text(CONFIG)
    return tmp_path


def account(workdir, *args):
    """Run `mongoose account ARGS -c mongoose.toml` in `workdir`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "mongoose", "account", *args, "-c", "mongoose.toml"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=30,
    )


def secrets_of(workdir, user, host):
    with SqliteAccountStore(workdir / "data" / "mongoose.db") as store:
        return store.get_secrets(user, host)


def test_register_then_list_and_count(workdir):
    """register creates a normalised account that list and count then show."""
    result = account(workdir, "register", "Juliet@LocalHost", "pencil")
    assert (result.returncode, result.stdout) == (0, "registered juliet@localhost\n")
    assert account(workdir, "register", "romeo@localhost", "x").returncode == 0
    assert account(workdir, "list", "localhost").stdout == "juliet\nromeo\n"
    assert account(workdir, "count", "localhost").stdout == "2\n"
    secrets = secrets_of(workdir, "juliet", "localhost")
    assert secrets["sha256"].iterations == 4096
    assert scram.check_password(secrets, "pencil")


def test_list_and_count_default_to_default_domain(workdir):
    """Without HOST, list and count use general.default_server_domain."""
    account(workdir, "register", "nurse@example.com", "x")
    account(workdir, "register", "juliet@localhost", "x")
    assert account(workdir, "list").stdout == "nurse\n"
    assert account(workdir, "count").stdout == "1\n"


def test_passwd_and_unregister(workdir):
    """passwd changes the password; unregister removes the account."""
    account(workdir, "register", "juliet@localhost", "pencil")
    assert account(workdir, "passwd", "juliet@localhost", "quill").returncode == 0
    assert scram.check_password(secrets_of(workdir, "juliet", "localhost"), "quill")
    result = account(workdir, "unregister", "juliet@localhost")
    assert (result.returncode, result.stdout) == (0, "unregistered juliet@localhost\n")
    assert account(workdir, "count", "localhost").stdout == "0\n"


def test_bulk_register(workdir):
    """bulk-register creates PREFIX1..PREFIXN with the given iteration count."""
    result = account(workdir, "bulk-register", "localhost", "bench", "50", "pw",
                     "--iterations", "1")
    assert (result.returncode, result.stdout) == (0, "registered 50 accounts on localhost\n")
    assert account(workdir, "count", "localhost").stdout == "50\n"
    secrets = secrets_of(workdir, "bench50", "localhost")
    assert secrets["sha"].iterations == 1
    assert scram.check_password(secrets, "pw")
    assert secrets_of(workdir, "bench51", "localhost") is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("register", "juliet@elsewhere.org", "x"),
         "mongoose: elsewhere.org is not a host of this node (general.hosts: localhost, "
         "example.com)\n"),
        (("register", "juliet", "x"), "mongoose: bad JID 'juliet': expected USER@HOST\n"),
        (("register", "ju liet@localhost", "x"),
         "mongoose: bad JID 'ju liet@localhost': the user name may not contain ' '\n"),
        (("register", "a<b@localhost", "x"),
         "mongoose: bad JID 'a<b@localhost': the user name may not contain '<'\n"),
        (("register", "juliet@localhost", ""), "mongoose: the password is empty\n"),
        (("unregister", "romeo@localhost"), "mongoose: the account romeo@localhost does not "
         "exist\n"),
        (("passwd", "romeo@localhost", "x"), "mongoose: the account romeo@localhost does not "
         "exist\n"),
        (("list", "elsewhere.org"), "mongoose: elsewhere.org is not a host of this node "
         "(general.hosts: localhost, example.com)\n"),
    ],
)
def test_errors_are_one_line_and_exit_1(workdir, args, message):
    """Refusals print one line on stderr, nothing on stdout, and exit 1."""
    result = account(workdir, *args)
    assert (result.returncode, result.stderr, result.stdout) == (1, message, "")


def test_duplicate_register_and_bulk_exit_1(workdir):
    """Registering an existing account, singly or in bulk, is refused and changes nothing."""
    account(workdir, "register", "juliet@localhost", "pencil")
    result = account(workdir, "register", "JULIET@localhost", "other")
    assert (result.returncode, result.stderr) == (
        1, "mongoose: the account juliet@localhost exists already\n")
    account(workdir, "register", "u2@localhost", "x")
    bulk = account(workdir, "bulk-register", "localhost", "u", "3", "pw", "--iterations", "1")
    assert (bulk.returncode, bulk.stderr) == (1, "mongoose: the account u2@localhost exists "
                                                 "already\n")
    assert account(workdir, "count", "localhost").stdout == "2\n"


def test_usage_errors_exit_2(workdir):
    """A missing argument or a bad N is a usage error."""
    assert account(workdir, "register", "juliet@localhost").returncode == 2
    assert account(workdir, "bulk-register", "localhost", "u", "0", "pw").returncode == 2


def test_long_config_option_too(workdir):
    """--config works as well as -c."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "mongoose", "account", "count", "--config", "mongoose.toml"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=30,
    )
    assert (result.returncode, result.stdout) == (0, "0\n")


def test_accounts_in_the_rdbms_pool(workdir, pg_config_toml, pg_dsn):
    """With methods = ["rdbms"], the commands use the pool's users table."""
    (workdir / "mongoose.toml").write_text(
        CONFIG + '[auth]\nmethods = ["rdbms"]\n' + pg_config_toml)
    assert account(workdir, "register", "juliet@localhost", "pencil").returncode == 0
    assert account(workdir, "list", "localhost").stdout == "juliet\n"
    with psycopg.connect(pg_dsn) as conn:
        [(user,)] = conn.execute("SELECT username FROM users").fetchall()
    assert user == "juliet"
    assert not (workdir / "data" / "mongoose.db").exists()


def test_an_unreachable_pool_is_one_line_and_exit_1(workdir):
    """An unreachable rdbms pool: one attempt, one line naming the pool, exit 1."""
    (workdir / "mongoose.toml").write_text(
        CONFIG + '[auth]\nmethods = ["rdbms"]\n' + unreachable_pool_toml())
    result = account(workdir, "count", "localhost")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("mongoose: cannot use the account store pgsql at 127.0.0.1")
    assert "outgoing_pools.rdbms.default: cannot connect" in result.stderr
    assert result.stderr.count("\n") == 1
