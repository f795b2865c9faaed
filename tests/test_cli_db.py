"""`mongoose db init|status` (mongoose/cli.py): the schema from the command line, on the
embedded SQLite file and on PostgreSQL (with the pgsql and the cockroachdb driver)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pg_harness import free_port

from mongoose import cli
from mongoose.storage import migrate
from mongoose.storage.pg import PgDatabase
from mongoose.storage.sqlite import SqliteDatabase

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent
LATEST = migrate.LATEST
ALL = ", ".join(str(m.version) for m in migrate.MIGRATIONS)
CURRENT = f"schema version {LATEST} (latest {LATEST}): up to date"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def sqlite_config(tmp_path) -> Path:
    path = tmp_path / "mongoose.toml"
    path.write_text(f'[general]\ndata_dir = "{tmp_path / "data"}"\n')
    return path


def test_init_and_status_on_sqlite(capsys, sqlite_config, tmp_path):
    """db init creates the schema in data_dir/mongoose.db; again, it has nothing to do;
    db status says it is up to date (exit 0)."""
    store = tmp_path / "data" / "mongoose.db"
    code, out, _ = run(capsys, "db", "init", "-c", str(sqlite_config))
    assert code == 0
    assert out == (f"sqlite at {store}: applied schema version {ALL}; schema version "
                   f"{LATEST} (latest {LATEST}): up to date\n")
    code, out, _ = run(capsys, "db", "init", "-c", str(sqlite_config))
    assert (code, out) == (0, f"sqlite at {store}: {CURRENT}\n")
    code, out, _ = run(capsys, "db", "status", "-c", str(sqlite_config))
    assert (code, out) == (0, f"sqlite at {store}: {CURRENT}\n")
    db = SqliteDatabase(store)
    assert migrate.status(db).up_to_date
    db.close()


def test_status_without_a_store_creates_nothing(capsys, sqlite_config, tmp_path):
    """db status on a node that never ran: version 0, exit 1, and no file made."""
    code, out, _ = run(capsys, "db", "status", "-c", str(sqlite_config))
    assert code == 1
    assert f"no database yet; schema version 0 (latest {LATEST}): {LATEST} migration(s) " \
        "pending; run `mongoose db init`" in out
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("driver", ["pgsql", "cockroachdb"])
def test_init_and_status_on_postgresql(capsys, tmp_path, pg_server, driver):
    """db init creates the schema of an empty PostgreSQL database (with either driver's
    schema); status then says it is current."""
    name = pg_server.create_database()
    config_file = tmp_path / "mongoose.toml"
    config_file.write_text(pg_server.config_toml(name, driver=driver))
    where = f"{driver} at 127.0.0.1:{pg_server.port}/{name} as mongoose"
    try:
        code, out, _ = run(capsys, "db", "status", "-c", str(config_file))
        assert (code, out) == (1, f"{where}: schema version 0 (latest {LATEST}): {LATEST} "
                                  "migration(s) pending; run `mongoose db init`\n")
        code, out, err = run(capsys, "db", "init", "-c", str(config_file))
        assert (code, err) == (0, "")
        assert out == f"{where}: applied schema version {ALL}; {CURRENT}\n"
        code, out, _ = run(capsys, "db", "status", "-c", str(config_file))
        assert (code, out) == (0, f"{where}: {CURRENT}\n")
        db = PgDatabase(pg_server.params(name), pool_size=1)
        try:
            assert db.query("SELECT count(*) FROM users") == [(0,)]
        finally:
            db.close()
    finally:
        pg_server.drop_database(name)


def test_init_with_an_unreachable_database(capsys, tmp_path):
    """An unreachable database: exit 1 and one line naming the pool, the address and the
    reason."""
    port = free_port()
    config_file = tmp_path / "mongoose.toml"
    config_file.write_text(f"""
[outgoing_pools.rdbms.default.connection]
driver = "pgsql"
host = "127.0.0.1"
port = {port}
database = "mongooseim"
username = "mongoose"
""")
    code, out, err = run(capsys, "db", "init", "-c", str(config_file))
    assert (code, out) == (1, "")
    assert err.startswith(
        f"mongoose: outgoing_pools.rdbms.default: cannot connect to pgsql at 127.0.0.1:{port}"
        "/mongooseim as mongoose: ")
    assert err.endswith("(1 attempt)\n") and err.count("\n") == 1


def test_init_with_a_bad_config(capsys, tmp_path):
    """A config that does not validate: exit 1 with the config error."""
    config_file = tmp_path / "mongoose.toml"
    config_file.write_text('[outgoing_pools.rdbms.default.connection]\ndriver = "mysql"\n')
    code, _, err = run(capsys, "db", "init", "-c", str(config_file))
    assert code == 1
    assert "outgoing_pools.rdbms.default.connection.driver: expected one of pgsql, " \
        "cockroachdb" in err


@pytest.mark.parametrize("args", [["db"], ["db", "init", "--wait", "-1"], ["db", "drop"]])
def test_usage_errors(capsys, args):
    """A missing or unknown subcommand, or a negative --wait, is a usage error (exit 2)."""
    assert run(capsys, *args)[0] == 2


def test_db_init_as_a_command(sqlite_config):
    """`python -m mongoose db init` works as a process (exit code, output)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "mongoose", "db", "init", "-c", str(sqlite_config)],
        capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stderr
    assert "applied schema version 1" in result.stdout
