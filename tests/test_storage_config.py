"""[outgoing_pools.rdbms.*] (mongoose.config) and what the pg driver makes of it
(mongoose.storage.pg.PgParams, tls_options)."""

from __future__ import annotations

import pytest

from mongoose import config
from mongoose.storage.pg import PgParams, tls_options
from mongoose.storage.pools import describe, pool_config

pytestmark = pytest.mark.timeout(30)

CONNECTION = """\
[outgoing_pools.rdbms.default.connection]
driver = "{driver}"
host = "db.example.com"
database = "mongooseim"
username = "mongoose"
password = "secret"
"""


def load(text: str):
    return config.loads(text, "mongooseim.toml")


def error_of(text: str) -> str:
    with pytest.raises(config.ConfigError) as caught:
        load(text)
    return str(caught.value)


def test_no_pool_means_sqlite():
    """Without [outgoing_pools.rdbms.default] the store is data_dir/mongoose.db."""
    cfg = load('[general]\ndata_dir = "/var/lib/mongoose"\n')
    assert cfg.outgoing_pools.rdbms == {}
    assert pool_config(cfg) is None
    assert describe(cfg) == "sqlite at /var/lib/mongoose/mongoose.db"


def test_full_pool():
    """Every key of a pool, in MongooseIM's shape."""
    cfg = load("""
[outgoing_pools.rdbms.default]
scope = "host_type"
workers = 5
call_timeout = 3000
[outgoing_pools.rdbms.default.connection]
driver = "cockroachdb"
host = "10.0.0.5"
port = 26000
database = "mim"
username = "mim_user"
password = "p'w\\"d"
query_timeout = 2500
keepalive_interval = 30
max_start_interval = 10
[outgoing_pools.rdbms.default.connection.tls]
required = true
verify_mode = "peer"
cacertfile = "/etc/ssl/ca.pem"
certfile = "/etc/ssl/client.pem"
keyfile = "/etc/ssl/client.key"
password = "keypass"
versions = ["tlsv1.3", "tlsv1.2"]
server_name_indication.host = "db.example.com"
""")
    pool = cfg.outgoing_pools.rdbms["default"]
    assert (pool.scope, pool.workers, pool.call_timeout) == ("host_type", 5, 3000)
    c = pool.connection
    assert (c.driver, c.host, c.port_number, c.database, c.username, c.password) == (
        "cockroachdb", "10.0.0.5", 26000, "mim", "mim_user", "p'w\"d")
    assert (c.query_timeout, c.keepalive_interval, c.max_start_interval) == (2500, 30, 10)
    params = PgParams.from_config("default", pool)
    kwargs = params.connect_kwargs()
    assert kwargs == {
        "host": "db.example.com", "hostaddr": "10.0.0.5", "port": 26000, "dbname": "mim",
        "user": "mim_user", "password": "p'w\"d", "connect_timeout": 10,
        "application_name": "mongoose", "keepalives": 1, "keepalives_idle": 30,
        "keepalives_interval": 30, "keepalives_count": 3, "sslmode": "verify-full",
        "sslsni": "1", "sslrootcert": "/etc/ssl/ca.pem", "sslcert": "/etc/ssl/client.pem",
        "sslkey": "/etc/ssl/client.key", "sslpassword": "keypass",
        "ssl_min_protocol_version": "TLSv1.2", "ssl_max_protocol_version": "TLSv1.3",
    }
    assert params.address == "cockroachdb at 10.0.0.5:26000/mim as mim_user"
    assert "keypass" not in params.address and "p'w" not in params.address


@pytest.mark.parametrize(("driver", "port"), [("pgsql", 5432), ("cockroachdb", 26257)])
def test_default_port_by_driver(driver, port):
    """The port defaults to 5432 for pgsql and 26257 for cockroachdb; TLS is off without
    a tls table, and the pool has MongooseIM's defaults."""
    cfg = load(CONNECTION.format(driver=driver))
    pool = cfg.outgoing_pools.rdbms["default"]
    assert pool.connection.port_number == port
    assert (pool.scope, pool.workers, pool.call_timeout) == ("global", 10, 60_000)
    assert (pool.connection.query_timeout, pool.connection.max_start_interval) == (5000, 30)
    params = PgParams.from_config("default", pool)
    assert params.port == port and params.tls == {"sslmode": "disable"}
    assert describe(cfg) == f"{driver} at db.example.com:{port}/mongooseim as mongoose"


@pytest.mark.parametrize(("tls", "expected"), [
    ('verify_mode = "none"', {"sslmode": "prefer", "sslsni": "1"}),
    ('verify_mode = "none"\nrequired = true', {"sslmode": "require", "sslsni": "1"}),
    ('verify_mode = "selfsigned_peer"\ncacertfile = "ca.pem"',
     {"sslmode": "verify-ca", "sslsni": "1", "sslrootcert": "ca.pem"}),
    ('cacertfile = "ca.pem"',
     {"sslmode": "verify-full", "sslsni": "1", "sslrootcert": "ca.pem"}),
    ('cacertfile = "ca.pem"\nserver_name_indication.enabled = false',
     {"sslmode": "verify-ca", "sslsni": "0", "sslrootcert": "ca.pem"}),
])
def test_tls_maps_to_libpq(tls, expected):
    """tls.verify_mode and tls.required become libpq's sslmode, as MongooseIM means them."""
    cfg = load(CONNECTION.format(driver="pgsql")
               + "[outgoing_pools.rdbms.default.connection.tls]\n" + tls + "\n")
    assert tls_options(cfg.outgoing_pools.rdbms["default"].connection.tls) == expected


def test_other_pool_tags_may_exist():
    """Pools other than default are accepted; the storage uses default."""
    cfg = load(CONNECTION.format(driver="pgsql") + """
[outgoing_pools.rdbms.reports.connection]
driver = "pgsql"
host = "replica"
database = "mongooseim"
username = "reader"
""")
    assert set(cfg.outgoing_pools.rdbms) == {"default", "reports"}
    assert pool_config(cfg).connection.host == "db.example.com"


@pytest.mark.parametrize(("text", "message"), [
    ("[outgoing_pools.rdbms.default.connection]\ndriver = \"mysql\"\n",
     "mongooseim.toml: outgoing_pools.rdbms.default.connection.driver: expected one of "
     "pgsql, cockroachdb, got 'mysql'"),
    ("[outgoing_pools.rdbms.default]\nworkers = 2\n",
     "outgoing_pools.rdbms.default.connection.driver: expected one of pgsql, cockroachdb, "
     "got nothing (the key is required)"),
    (CONNECTION.format(driver="pgsql").replace('username = "mongoose"\n', ""),
     "outgoing_pools.rdbms.default.connection.username: expected a user name, got nothing"),
    (CONNECTION.format(driver="pgsql").replace('host = "db.example.com"\n', ""),
     "outgoing_pools.rdbms.default.connection.host: expected a host name"),
    (CONNECTION.format(driver="pgsql") + "port = 70000\n",
     "outgoing_pools.rdbms.default.connection.port: expected a TCP port number from 1 to "
     "65535, got 70000"),
    ("[outgoing_pools.rdbms.default]\nworkers = 0\n",
     "outgoing_pools.rdbms.default.workers: expected an integer >= 1, got 0"),
    ("[outgoing_pools.rdbms.default]\nscope = \"host\"\n",
     "outgoing_pools.rdbms.default.scope: expected one of global, host_type, got 'host'"),
    ("[outgoing_pools.rdbms.default]\nworker = 2\n",
     "unknown key outgoing_pools.rdbms.default.worker (did you mean workers?)"),
    ("[outgoing_pools.rdbms.default.connection]\ndriver = \"pgsql\"\nquery_timout = 1\n",
     "unknown key outgoing_pools.rdbms.default.connection.query_timout (did you mean "
     "query_timeout?)"),
    ("[outgoing_pools.redis.default]\n",
     "unknown key outgoing_pools.redis (did you mean rdbms?); expected one of rdbms"),
    ("[outgoing_pools]\nrdbms = 1\n",
     "outgoing_pools.rdbms: expected tables named by their tag ([outgoing_pools.rdbms.NAME]),"
     " got 1"),
    ("[outgoing_pools.rdbms]\ndefault = \"pg\"\n",
     "outgoing_pools.rdbms.default: expected a table"),
    (CONNECTION.format(driver="pgsql").replace("default", "main"),
     "outgoing_pools.rdbms: expected a pool named default (the one the storage uses), got "
     "only main"),
    (CONNECTION.format(driver="pgsql") + "[outgoing_pools.rdbms.default.connection.tls]\n",
     "outgoing_pools.rdbms.default.connection.tls.cacertfile: expected the CA certificates "
     "to verify the server with (verify_mode = \"peer\"), or verify_mode = \"none\""),
    (CONNECTION.format(driver="pgsql") + "tls.verify_mode = \"none\"\n"
     "tls.certfile = \"c.pem\"\n",
     "outgoing_pools.rdbms.default.connection.tls: expected both certfile and keyfile"),
    (CONNECTION.format(driver="pgsql") + "tls.verify_mode = \"none\"\n"
     "tls.server_name_indication.host = \"db\"\n",
     "outgoing_pools.rdbms.default.connection.host: expected an IP address when "
     "tls.server_name_indication.host names the server, got 'db.example.com'"),
    (CONNECTION.format(driver="pgsql") + "tls.verify_mode = \"none\"\n"
     "tls.versions = [\"sslv3\"]\n",
     "outgoing_pools.rdbms.default.connection.tls.versions: expected a non-empty list from "
     "\"tlsv1.2\", \"tlsv1.3\""),
    (CONNECTION.format(driver="pgsql") + "keepalive_interval = 0\n",
     "outgoing_pools.rdbms.default.connection.keepalive_interval: expected an integer >= 1"),
])
def test_bad_pool_config(text, message):
    """Mistakes are refused with the file, the key path and what was expected."""
    assert message in error_of(text)
