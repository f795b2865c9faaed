"""Config loading and validation (mongoose/config.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mongoose import config
from mongoose.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
LEVELS = "debug, info, notice, warning, error, critical"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mongooseim.toml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value).startswith(f"{path}: ")
    return info.value


def test_shipped_default_loads():
    """config/mongooseim.toml validates and says what the README says it does."""
    cfg = config.load(ROOT / "config" / "mongooseim.toml")
    assert cfg.general == config.General(
        hosts=("localhost",),
        loglevel="info",
        node_name="mongoose@localhost",
        workers=0,
        data_dir="data",
    )
    assert cfg.source == str(ROOT / "config" / "mongooseim.toml")


def test_packaged_default_is_the_checkout_default():
    """The copy shipped in the package is identical to config/mongooseim.toml."""
    packaged = ROOT / "mongoose" / "default_config" / "mongooseim.toml"
    assert packaged.read_bytes() == (ROOT / "config" / "mongooseim.toml").read_bytes()


def test_empty_file_gets_defaults(tmp_path):
    """An empty file is valid and every key takes its default."""
    cfg = config.load(write(tmp_path, ""))
    assert dataclasses.replace(cfg, source="<defaults>") == config.Config()
    assert cfg.general.hosts == ("localhost",)
    assert cfg.general.workers == 0


def test_empty_section_gets_defaults(tmp_path):
    """A section present but empty takes the defaults of its keys."""
    assert config.load(write(tmp_path, "[general]\n")).general == config.General()


def test_keys_left_out_keep_their_defaults(tmp_path):
    """Setting one key leaves the others at their defaults."""
    cfg = config.load(write(tmp_path, '[general]\nloglevel = "debug"\n'))
    assert cfg.general.loglevel == "debug"
    assert cfg.general.node_name == "mongoose@localhost"


def test_config_is_frozen():
    """The loaded config cannot be changed after validation."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.Config().general.workers = 3  # type: ignore[misc]


def test_hosts_are_lowercased(tmp_path):
    """Domain names are stored lower-cased, as XMPP compares them."""
    cfg = config.load(write(tmp_path, '[general]\nhosts = ["Example.COM", "localhost"]\n'))
    assert cfg.general.hosts == ("example.com", "localhost")


@pytest.mark.parametrize(
    ("toml", "key", "expected"),
    [
        ('loglevel = "loud"', "general.loglevel", f"expected one of {LEVELS}"),
        ("loglevel = 3", "general.loglevel", f"expected one of {LEVELS}"),
        ('hosts = "localhost"', "general.hosts", "expected a list of domain names"),
        ("hosts = []", "general.hosts", "expected a list of domain names"),
        ('hosts = ["bad domain"]', "general.hosts", "expected a list of domain names"),
        ('hosts = ["-x.com"]', "general.hosts", "expected a list of domain names"),
        ("hosts = [1]", "general.hosts", "expected a list of domain names"),
        (
            'hosts = ["a.com", "A.com"]',
            "general.hosts",
            "expected a list of domain names without duplicates",
        ),
        ("workers = -1", "general.workers", "expected an integer >= 0"),
        ('workers = "2"', "general.workers", "expected an integer >= 0"),
        ("workers = true", "general.workers", "expected an integer >= 0"),
        ("workers = 1.5", "general.workers", "expected an integer >= 0"),
        ('node_name = "mongoose"', "general.node_name", "expected a node name like name@host"),
        ('data_dir = ""', "general.data_dir", "expected a directory path"),
        ('log_format = "xml"', "general.log_format", "expected one of json, text"),
        ("log_format = 1", "general.log_format", "expected one of json, text"),
        ("log_file = 1", "general.log_file",
         'expected a file path, or "" for the console (stderr)'),
        ("log_file = []", "general.log_file", "expected a file path"),
        ('log_file = "a\\u0000b"', "general.log_file", "expected a file path"),
    ],
)
def test_invalid_value_names_file_key_and_expectation(tmp_path, toml, key, expected):
    """A bad value is reported with the file, the key path and what was expected."""
    error = load_error(tmp_path, f"[general]\n{toml}\n")
    assert error.key == key
    assert f": {key}: {expected}" in str(error)


def test_invalid_value_shows_what_was_given(tmp_path):
    """The message quotes the offending value."""
    error = load_error(tmp_path, '[general]\nloglevel = "loud"\n')
    assert str(error).endswith(", got 'loud'")


def test_unknown_key(tmp_path):
    """A misspelt key is an error naming its path and suggesting the known one."""
    error = load_error(tmp_path, '[general]\nhsots = ["localhost"]\n')
    assert error.key == "general.hsots"
    assert "unknown key general.hsots" in str(error)
    assert "did you mean hosts?" in str(error)
    assert ("expected one of data_dir, default_server_domain, hosts, log_file, log_format, "
            "loglevel, max_user_sessions, node_name, workers") in str(error)


def test_unknown_section(tmp_path):
    """A top-level section the server does not know is an error naming it."""
    error = load_error(tmp_path, "[[s2s.outgoing]]\nport = 5269\n")
    assert error.key == "s2s"
    assert "unknown section s2s" in str(error)
    assert "expected one of auth, cluster, general" in str(error)


def test_unknown_top_level_key(tmp_path):
    """A bare key at top level is reported like an unknown section."""
    error = load_error(tmp_path, "loglevel = 'info'\n")
    assert "unknown section loglevel" in str(error)


def test_section_that_is_not_a_table(tmp_path):
    """A known section given as a plain value is an error naming it."""
    error = load_error(tmp_path, "general = 1\n")
    assert error.key == "general"
    assert "general: expected a table" in str(error)


def test_toml_syntax_error_has_line_and_column(tmp_path):
    """A TOML syntax error names the file and where in it the error is."""
    error = load_error(tmp_path, '[general]\nloglevel "info"\n')
    assert "invalid TOML" in str(error)
    assert "line 2, column" in str(error)


def test_file_not_utf8(tmp_path):
    """A file that is not UTF-8 is a ConfigError, not a crash."""
    path = tmp_path / "mongooseim.toml"
    path.write_bytes(b'[general]\nloglevel = "\xff"\n')
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        config.load(path)


def test_missing_file(tmp_path):
    """A config path that does not exist is a clear error naming it."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value) == f"{path}: config file not found"


def test_unreadable_path(tmp_path):
    """A directory given as the config file is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=f"^{tmp_path}: cannot read config file"):
        config.load(tmp_path)


def test_loads_names_its_source():
    """loads() validates text and names the given source in errors."""
    assert config.loads('[general]\nworkers = 4\n').general.workers == 4
    with pytest.raises(ConfigError, match=r"^inline: general\.workers: "):
        config.loads("[general]\nworkers = -4\n", source="inline")


def test_cluster_section_defaults_and_errors(tmp_path):
    """[cluster] has working defaults; a bad seed or port names its key and expectation."""
    loaded = config.load(write(tmp_path, ""))
    assert loaded.cluster.port == 7100 and loaded.cluster.seeds == ()
    assert loaded.cluster.node_timeout <= 5
    error = load_error(tmp_path, '[cluster]\nseeds = ["nohost"]\n')
    assert error.key == "cluster.seeds" and "host:port" in str(error)
    error = load_error(tmp_path, "[cluster]\nport = 70000\n")
    assert error.key == "cluster.port" and "0 to 65535" in str(error)


def test_c2s_listeners_array_and_errors(tmp_path):
    """[[listen.c2s]] is an array of tables; each entry's keys are checked with its index."""
    path = tmp_path / "mongooseim.toml"
    path.write_text('[[listen.c2s]]\nport = 5222\n[[listen.c2s]]\nport = 5223\n'
                    'tls.mode = "tls"\n')
    listeners = config.load(path).listen.c2s
    assert [(c.port, c.tls.mode) for c in listeners] == [(5222, "starttls_required"),
                                                         (5223, "tls")]
    error = load_error(tmp_path, '[[listen.c2s]]\nport = 5222\n[[listen.c2s]]\n'
                       'tls.mode = "ssl"\n')
    assert error.key == "listen.c2s[1].tls.mode"
    assert "expected one of starttls_required, starttls, tls, none" in str(error)
    error = load_error(tmp_path, "[[listen.c2s]]\nport = 5222\n[[listen.c2s]]\nport = 5222\n")
    assert error.key == "listen.c2s[1].port"
    error = load_error(tmp_path, '[listen]\nc2s = 5\n')
    assert "listen.c2s: expected an array of tables" in str(error)
    error = load_error(tmp_path, '[[listen.c2s]]\ntls.certfile = "a.pem"\n')
    assert "both certfile and keyfile" in str(error)


def test_default_listener_requires_tls(tmp_path):
    """Without [[listen.c2s]] the node listens on 5222 and requires STARTTLS."""
    (listener,) = config.loads("").listen.c2s
    assert (listener.port, listener.tls.mode) == (5222, "starttls_required")


def test_auth_section(tmp_path):
    """[auth]: mechanisms, SCRAM-only password format, iteration floor."""
    cfg = config.loads('[auth]\nsasl_mechanisms = ["scram_sha256", "plain"]\n'
                       '[auth.password]\nscram_iterations = 4096\n')
    assert cfg.auth.sasl_mechanisms == ("scram_sha256", "plain")
    assert cfg.auth.password.scram_iterations == 4096
    for toml, key, expected in [
        ('[auth]\nsasl_mechanisms = ["digest_md5"]\n', "auth.sasl_mechanisms", "SASL"),
        ('[auth.password]\nformat = "plain"\n', "auth.password.format", "one of scram"),
        ("[auth.password]\nscram_iterations = 10\n", "auth.password.scram_iterations",
         ">= 4096"),
    ]:
        error = load_error(tmp_path, toml)
        assert error.key == key and expected in str(error), str(error)


def test_auth_methods_internal_or_rdbms(tmp_path):
    """[auth] methods: "internal" (the default, SQLite) or "rdbms" (the pool), one of them."""
    assert config.loads("").auth.methods == ("internal",)
    assert config.loads('[auth]\nmethods = ["rdbms"]\n').auth.methods == ("rdbms",)
    for methods in ('["ldap"]', '["internal", "rdbms"]', "[]", '"rdbms"'):
        error = load_error(tmp_path, f"[auth]\nmethods = {methods}\n")
        assert error.key == "auth.methods" and '["rdbms"]' in str(error), str(error)


def test_modules_are_enabled_by_their_table(tmp_path):
    """A [modules.mod_*] table enables the module; unknown modules are errors."""
    cfg = config.loads("[modules.mod_ping]\nsend_pings = true\n[modules.mod_disco]\n")
    assert cfg.modules.mod_ping is not None and cfg.modules.mod_ping.send_pings
    assert cfg.modules.mod_disco is not None and cfg.modules.mod_version is None
    error = load_error(tmp_path, "[modules.mod_pong]\n")
    assert "unknown key modules.mod_pong (did you mean mod_ping?)" in str(error)


def test_default_server_domain_must_be_served(tmp_path):
    """general.default_server_domain names one of general.hosts."""
    error = load_error(tmp_path, '[general]\nhosts = ["a.org"]\ndefault_server_domain = "b.org"\n')
    assert error.key == "general.default_server_domain"


@pytest.mark.timeout(10)
def test_log_settings_default_to_json_on_the_console():
    """Without log_format and log_file the node logs JSON lines to stderr."""
    general = config.loads("").general
    assert (general.log_format, general.log_file) == ("json", "")
    assert config.loads("").log_path is None


@pytest.mark.timeout(10)
def test_log_file_relative_to_data_dir():
    """A relative log_file is under general.data_dir; an absolute one is kept as is."""
    cfg = config.loads('[general]\ndata_dir = "/var/lib/m"\nlog_file = "logs/node.log"\n'
                       'log_format = "text"\n')
    assert cfg.general.log_format == "text"
    assert cfg.log_path == Path("/var/lib/m/logs/node.log")
    cfg = config.loads('[general]\nlog_file = "/var/log/mongoose.log"\n')
    assert cfg.log_path == Path("/var/log/mongoose.log")
