"""Node configuration: load and validate `mongooseim.toml`.

The file has MongooseIM's TOML shape and key names (`[general]`, later `[[listen.c2s]]`,
`[auth]`, `[modules.mod_*]`, ...). Principles:

- Validated once, at start. `load()` returns a frozen `Config` tree or raises `ConfigError`
  whose message names the file, the key path (`general.loglevel`) and what was expected.
  Nothing else in the server reads raw TOML.
- Every key has a default, so an empty file is a valid config: one node serving `localhost`.
- Unknown keys and sections are errors, not ignored: a misspelt key would otherwise silently
  run the node on a default.

The schema is the dataclasses below. A key is a field declared with `setting(default, check)`,
where `check` takes the TOML value and returns the value to store or raises `Invalid(expected)`;
a table is a field whose type is itself such a dataclass. To add a section, write a frozen
dataclass of settings and add it to `Config` as `name: Class = field(default_factory=Class)`.
Two more kinds of field: an array of tables (`[[listen.c2s]]`) is a field typed
`tuple[Class, ...]` whose default is the tuple used when the array is absent; an optional
table (`[modules.mod_ping]`: present means enabled) is a field typed `Class | None` whose
default is None (write the table, even empty, to enable it with its defaults); tables
whose names the operator chooses (`[outgoing_pools.rdbms.default]`) are a field typed
`dict[str, Class]`. A setting whose default is None is unset until given. Checks that
span several keys (`general.default_server_domain` must be one of `general.hosts`) run in
`_check_whole` after the tree is read.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mongoose.logs import FORMATS, LEVELS


class ConfigError(Exception):
    """The config file cannot be used; the message is meant for the operator as is."""

    def __init__(self, file: str | os.PathLike[str], message: str, key: str | None = None):
        self.file = os.fspath(file)
        self.key = key
        super().__init__(f"{self.file}: {message}")


class Invalid(Exception):
    """Raised by a check; `expected` completes the sentence 'expected ...'."""

    def __init__(self, expected: str):
        super().__init__(expected)
        self.expected = expected


Check = Callable[[Any], Any]


def setting(default: Any, check: Check) -> Any:
    """A key: its default, and the check that validates and converts a value from the file."""
    return field(default=default, metadata={"check": check})


# Checks


def one_of(*choices: str) -> Check:
    expected = "one of " + ", ".join(choices)

    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise Invalid(expected)
        return value

    return check


def int_at_least(minimum: int) -> Check:
    def check(value: Any) -> int:
        # bool is an int in Python but not in TOML.
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise Invalid(f"an integer >= {minimum}")
        return value

    return check


def non_empty_string(what: str) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise Invalid(f"{what} (a non-empty string)")
        return value

    return check


# One DNS label: letters or digits (any script), hyphens inside, at most 63 characters.
_LABEL = re.compile(r"[^\W_](?:(?:[^\W_]|-){0,61}[^\W_])?")


def _is_domain(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= 253
        and all(_LABEL.fullmatch(label) for label in value.split("."))
    )


def domain_list(value: Any) -> tuple[str, ...]:
    """A non-empty list of distinct domain names, lower-cased as XMPP compares them."""
    expected = "a list of domain names"
    if not isinstance(value, list) or not value or not all(map(_is_domain, value)):
        raise Invalid(f"{expected}, such as [\"localhost\", \"example.com\"]")
    domains = tuple(d.lower() for d in value)
    if len(set(domains)) != len(domains):
        raise Invalid(f"{expected} without duplicates")
    return domains


_NODE_NAME = re.compile(r"[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+")


def erlang_node_name(value: Any) -> str:
    if not isinstance(value, str) or not _NODE_NAME.fullmatch(value):
        raise Invalid("a node name like name@host")
    return value


def number_in(low: float, high: float) -> Check:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
            low <= value <= high
        ):
            raise Invalid(f"a number from {low} to {high}")
        return float(value)

    return check


def port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise Invalid("a TCP port number from 0 to 65535 (0: any free port)")
    return value


def seed_list(value: Any) -> tuple[str, ...]:
    """Other nodes' distribution addresses, "host:port"."""
    expected = 'a list of "host:port" addresses of other nodes'
    if not isinstance(value, list):
        raise Invalid(expected)
    seeds = []
    for item in value:
        host, _, number = item.rpartition(":") if isinstance(item, str) else ("", "", "")
        if not host or not number.isdigit() or not 0 < int(number) <= 65535:
            raise Invalid(f"{expected}, such as [\"127.0.0.1:7101\"]")
        seeds.append(item)
    return tuple(seeds)


def cluster_name_value(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 250:
        raise Invalid("a cluster name (a non-empty string of at most 250 characters)")
    return value


def str_value(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid("a string")
    return value


def file_or_console(value: Any) -> str:
    if not isinstance(value, str) or "\0" in value:
        raise Invalid('a file path, or "" for the console (stderr)')
    return value


def domain_or_empty(value: Any) -> str:
    if value == "":
        return ""
    if not _is_domain(value):
        raise Invalid("a domain name")
    return value.lower()


def ip_address(value: Any) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(value)) if isinstance(value, str) else _bad_ip()
    except ValueError:
        return _bad_ip()


def _bad_ip() -> str:
    raise Invalid('an IP address such as "0.0.0.0", "127.0.0.1" or "::"')


SASL_MECHANISMS = (
    "scram_sha512_plus", "scram_sha256_plus", "scram_sha1_plus",
    "scram_sha512", "scram_sha256", "scram_sha1", "plain",
)


def mechanism_list(value: Any) -> tuple[str, ...]:
    expected = "a non-empty list of SASL mechanisms from " + ", ".join(SASL_MECHANISMS)
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(m, str) and m in SASL_MECHANISMS for m in value)
        or len(set(value)) != len(value)
    ):
        raise Invalid(expected)
    return tuple(value)


def hash_list(value: Any) -> tuple[str, ...]:
    choices = ("sha", "sha256", "sha512")
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(h, str) and h in choices for h in value)
    ):
        raise Invalid("a non-empty list from sha, sha256, sha512")
    return tuple(dict.fromkeys(value))


def auth_methods(value: Any) -> tuple[str, ...]:
    # One method: "internal" (the embedded SQLite file) or "rdbms" (the users table of
    # the node's database: [outgoing_pools.rdbms.default], or that same file without a
    # pool, as for CETS discovery); MongooseIM's list form is kept for later methods.
    if not isinstance(value, list) or value not in (["internal"], ["rdbms"]):
        raise Invalid('["internal"] (the embedded SQLite store) or ["rdbms"] (the '
                      "[outgoing_pools.rdbms.default] database)")
    return tuple(value)


# Schema


@dataclass(frozen=True)
class General:
    """`[general]`: the node itself."""

    # XMPP domains this node serves.
    hosts: tuple[str, ...] = setting(("localhost",), domain_list)
    loglevel: str = setting("info", one_of(*LEVELS))
    # Log lines: "json" (one object per line) or "text"; `--log-format` overrides it.
    log_format: str = setting("json", one_of(*FORMATS))
    # The file the node and its workers append their log to; "" means the console
    # (stderr). Relative paths are under `data_dir`.
    log_file: str = setting("", file_or_console)
    # Erlang-style name@host; identifies the node in a cluster.
    node_name: str = setting("mongoose@localhost", erlang_node_name)
    # Worker processes (schedulers); 0 means one per CPU core.
    workers: int = setting(0, int_at_least(0))
    # Embedded storage; relative paths are relative to the working directory.
    data_dir: str = setting("data", non_empty_string("a directory path"))
    # The domain used where a host must be chosen (CLI commands without one); "" means
    # the first of `hosts`.
    default_server_domain: str = setting("", domain_or_empty)
    # Sessions one user may have at once; a login beyond it is refused.
    max_user_sessions: int = setting(10, int_at_least(1))


@dataclass(frozen=True)
class Cluster:
    """`[cluster]`: how this node's processes reach other nodes (see otp/dist.py).

    Traffic between nodes is CURVE-encrypted and authenticated with the keypair in
    `keys_file` (relative paths are under `general.data_dir`); a node generates one on
    first start if the file is missing. Every node of a cluster needs the same file:
    copy it (mode 0600) before joining nodes together.
    """

    # Address other nodes use to reach this node's root process.
    host: str = setting("127.0.0.1", non_empty_string("a host name or IP address"))
    port: int = setting(7100, port)
    # Other nodes to join at start, "host:port".
    seeds: tuple[str, ...] = setting((), seed_list)
    keys_file: str = setting("cluster.keys", non_empty_string("a file path"))
    # Failure detection between nodes, seconds.
    heartbeat_interval: float = setting(1.0, number_in(0.05, 60))
    node_timeout: float = setting(4.0, number_in(0.2, 300))


@dataclass(frozen=True)
class CetsDiscovery:
    """`[internal_databases.cets]`: how this node discovers the cluster's other nodes.

    `backend = "file"` with a `node_list_file`: the node re-reads that file (one
    "host:port" per line) every `discovery_interval` seconds when it changes and joins
    the addresses in it, in addition to `cluster.seeds` (a relative path is under
    `general.data_dir`). Without a `node_list_file`, no discovery.

    `backend = "rdbms"`: every `discovery_interval` seconds the node writes its row in
    the `discovery_nodes` table of the node's database (the `[outgoing_pools.rdbms]`
    database, or the embedded SQLite file), and joins the addresses of every row of
    `cluster_name`. Rows not updated for `node_expiry` seconds are deleted. Each node
    gets a `node_num` unique in the cluster (see mongoose.cets_discovery_rdbms).
    """

    backend: str = setting("file", one_of("file", "rdbms"))
    node_list_file: str = setting("", str_value)
    discovery_interval: float = setting(5.0, number_in(0.05, 3600))
    # The nodes that share this name in the table form one cluster (rdbms only).
    cluster_name: str = setting("mongooseim", cluster_name_value)
    # Seconds without an update after which a node's row is deleted (rdbms only);
    # MongooseIM's expire_time, 1 hour.
    node_expiry: int = setting(3600, int_at_least(1))


@dataclass(frozen=True)
class InternalDatabases:
    """`[internal_databases]`."""

    cets: CetsDiscovery = field(default_factory=CetsDiscovery)


@dataclass(frozen=True)
class Tls:
    """`tls` of a c2s listener.

    mode: "starttls_required" (the default: no authentication before TLS, as Prosody and
    the shipped config do), "starttls" (TLS offered, not required), "tls" (direct TLS on
    the listener's port, XEP-0368, usually 5223) or "none" (plain TCP only: for
    benchmarks on loopback). MongooseIM runs a listener without a `tls` table in plain
    TCP; we keep secure by default and make "none" explicit. Without `certfile` the node
    generates a self-signed certificate for its hosts under `general.data_dir` on first
    start. TLS 1.2 is the minimum version.
    """

    mode: str = setting("starttls_required", one_of("starttls_required", "starttls", "tls", "none"))
    certfile: str = setting("", str_value)
    keyfile: str = setting("", str_value)


@dataclass(frozen=True)
class C2sListener:
    """One `[[listen.c2s]]`: a port for XMPP clients, served by every worker."""

    port: int = setting(5222, port)
    ip_address: str = setting("0.0.0.0", ip_address)
    backlog: int = setting(1024, int_at_least(1))
    # Bytes; a bigger stanza ends the stream with policy-violation.
    max_stanza_size: int = setting(262_144, int_at_least(1024))
    # Milliseconds allowed for each negotiation step before login (and for a client
    # that connects and says nothing): connection-timeout after that.
    state_timeout: int = setting(5_000, int_at_least(100))
    tls: Tls = field(default_factory=Tls)


def http_path(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"/[A-Za-z0-9._~/-]*", value):
        raise Invalid('an absolute URL path such as "/metrics"')
    return value


@dataclass(frozen=True)
class PrometheusEndpoint:
    """`[[listen.http.handlers.mongoose_prometheus_handler]]`: where the node's merged
    metrics page is served on that listener. `host = "_"` (any Host header) is the only
    value MongooseIM's configs use and the only one accepted."""

    host: str = setting("_", one_of("_"))
    path: str = setting("/metrics", http_path)


@dataclass(frozen=True)
class HttpHandlers:
    """`[listen.http.handlers]`: the HTTP handlers of a listener."""

    mongoose_prometheus_handler: tuple[PrometheusEndpoint, ...] = ()


@dataclass(frozen=True)
class HttpListener:
    """One `[[listen.http]]`: an HTTP port of the node's root process (not of the workers),
    serving the handlers listed under it."""

    port: int = setting(9091, port)
    ip_address: str = setting("127.0.0.1", ip_address)
    handlers: HttpHandlers = field(default_factory=HttpHandlers)


@dataclass(frozen=True)
class Listen:
    """`[listen]`: the ports the node serves. Without any `[[listen.c2s]]`, one on 5222."""

    c2s: tuple[C2sListener, ...] = (C2sListener(),)
    http: tuple[HttpListener, ...] = ()


@dataclass(frozen=True)
class Password:
    """`[auth.password]`: passwords are only ever stored as SCRAM secrets."""

    format: str = setting("scram", one_of("scram"))
    # SHA families whose SCRAM secrets are stored ("sha" is SHA-1).
    hash: tuple[str, ...] = setting(("sha", "sha256", "sha512"), hash_list)
    scram_iterations: int = setting(10_000, int_at_least(4096))


@dataclass(frozen=True)
class FailureDelay:
    """`[auth.failure_delay]`: failed logins slow down further attempts.

    After each failed authentication the answer waits `base_ms` doubled for every failure
    already seen from the same connection or address in the last `window_s` seconds, up
    to `max_ms`; after `max_per_connection` failures the stream is closed.
    """

    base_ms: int = setting(200, int_at_least(0))
    max_ms: int = setting(5_000, int_at_least(0))
    window_s: int = setting(300, int_at_least(1))
    max_per_connection: int = setting(5, int_at_least(1))


@dataclass(frozen=True)
class Auth:
    """`[auth]`: who may log in, how."""

    methods: tuple[str, ...] = setting(("internal",), auth_methods)
    sasl_mechanisms: tuple[str, ...] = setting(SASL_MECHANISMS, mechanism_list)
    password: Password = field(default_factory=Password)
    failure_delay: FailureDelay = field(default_factory=FailureDelay)


@dataclass(frozen=True)
class ModDisco:
    """`[modules.mod_disco]`: XEP-0030 service discovery for the server."""

    # Other services to list in disco#items of each host, e.g. ["conference.localhost"].
    extra_items: tuple[str, ...] = setting((), lambda v: _string_list(v, "JIDs"))


@dataclass(frozen=True)
class ModPing:
    """`[modules.mod_ping]`: XEP-0199. Always answers pings; with `send_pings` the server
    pings each idle client every `ping_interval` s and applies `timeout_action` when no
    answer comes within `ping_req_timeout` s."""

    send_pings: bool = setting(False, lambda v: _bool(v))
    ping_interval: int = setting(60, int_at_least(1))
    ping_req_timeout: int = setting(32, int_at_least(1))
    timeout_action: str = setting("none", one_of("none", "kill"))


@dataclass(frozen=True)
class ModVersion:
    """`[modules.mod_version]`: XEP-0092 software version."""

    os_info: bool = setting(False, lambda v: _bool(v))


@dataclass(frozen=True)
class ModTime:
    """`[modules.mod_time]`: XEP-0202 entity time."""


@dataclass(frozen=True)
class ModRoster:
    """`[modules.mod_roster]`: RFC 6121 rosters; XEP-0237 versioning when `versioning`."""

    versioning: bool = setting(False, lambda v: _bool(v))
    # Contacts one user may have; a roster set or subscription beyond it gets not-allowed
    # (RFC 6121 §2.3.3's condition for a roster over the server's limit).
    max_roster_size: int = setting(1000, int_at_least(1))


@dataclass(frozen=True)
class ModPresence:
    """`[modules.mod_presence]`: RFC 6121 presence subscriptions and broadcast (needs
    mod_roster)."""


@dataclass(frozen=True)
class ModOffline:
    """`[modules.mod_offline]`: XEP-0160 offline messages, delivered at the next login."""

    # Messages kept per user; one more is refused with resource-constraint.
    max_user_offline_messages: int = setting(100, int_at_least(1))


@dataclass(frozen=True)
class ModCarboncopy:
    """`[modules.mod_carboncopy]`: XEP-0280 message carbons."""


@dataclass(frozen=True)
class ModBlocking:
    """`[modules.mod_blocking]`: XEP-0191 blocking command (on mod_privacy's storage)."""


@dataclass(frozen=True)
class ModPrivacy:
    """`[modules.mod_privacy]`: XEP-0016 privacy lists."""


@dataclass(frozen=True)
class ModPrivate:
    """`[modules.mod_private]`: XEP-0049 private XML storage."""


@dataclass(frozen=True)
class ModVcard:
    """`[modules.mod_vcard]`: XEP-0054 vcard-temp; XEP-0055 search when `search`."""

    search: bool = setting(False, lambda v: _bool(v))
    matches: int = setting(30, int_at_least(1))
    # Bytes a vCard may take serialized (its photo, mostly); a bigger one is refused.
    max_vcard_size: int = setting(65536, int_at_least(1024))


@dataclass(frozen=True)
class ModLast:
    """`[modules.mod_last]`: XEP-0012 last activity."""


@dataclass(frozen=True)
class IpAccessRule:
    """One rule of `modules.mod_register.ip_access`: an address or network, and whether
    clients connecting from it may register."""

    address: str
    policy: str


def ip_access_rules(value: Any) -> tuple[IpAccessRule, ...]:
    """`ip_access = [{address = "127.0.0.0/8", policy = "allow"}, ...]`: networks as
    Python's ipaddress writes them (a bare address is a /32 or /128)."""
    import ipaddress

    expected = ('a list of {address = "10.0.0.0/8", policy = "allow"} tables (policy '
                '"allow" or "deny"; address an IP address or network)')
    if not isinstance(value, list):
        raise Invalid(expected)
    rules = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"address", "policy"} or item[
                "policy"] not in ("allow", "deny") or not isinstance(item["address"], str):
            raise Invalid(expected)
        try:
            network = ipaddress.ip_network(item["address"], strict=False)
        except ValueError:
            raise Invalid(expected) from None
        rules.append(IpAccessRule(str(network), item["policy"]))
    return tuple(rules)


@dataclass(frozen=True)
class ModRegister:
    """`[modules.mod_register]`: XEP-0077 in-band registration, password change and
    account removal.

    Registration (before login) is allowed only to clients whose address matches an
    `ip_access` rule with `policy = "allow"`: the first rule that matches decides, and
    an address no rule matches may not register (MongooseIM allows everyone when
    `ip_access` is empty; here an empty list allows no one). `password_strength`: the
    least entropy, in bits, of a new password (0: any non-empty password).
    """

    ip_access: tuple[IpAccessRule, ...] = setting((), ip_access_rules)
    password_strength: int = setting(0, int_at_least(0))


@dataclass(frozen=True)
class ModSic:
    """`[modules.mod_sic]`: XEP-0279 server IP check."""


@dataclass(frozen=True)
class Modules:
    """`[modules]`: a module runs when its table is present."""

    mod_disco: ModDisco | None = None
    mod_ping: ModPing | None = None
    mod_version: ModVersion | None = None
    mod_time: ModTime | None = None
    mod_roster: ModRoster | None = None
    mod_presence: ModPresence | None = None
    mod_offline: ModOffline | None = None
    mod_carboncopy: ModCarboncopy | None = None
    mod_blocking: ModBlocking | None = None
    mod_privacy: ModPrivacy | None = None
    mod_private: ModPrivate | None = None
    mod_vcard: ModVcard | None = None
    mod_last: ModLast | None = None
    mod_register: ModRegister | None = None
    mod_sic: ModSic | None = None


def graphite_prefix(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", value):
        raise Invalid('a Graphite path prefix such as "mongooseim" or "prod.xmpp"')
    return value


def tcp_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 65535:
        raise Invalid("a TCP port number from 1 to 65535")
    return value


@dataclass(frozen=True)
class PrometheusHandlerConfig:
    """`[instrumentation.prometheus]`: the node serves its workers' metrics, merged, on one
    page: at every `[[listen.http]]` with a `mongoose_prometheus_handler`, or, when no
    listener has one, at http://ip_address:port/metrics."""

    port: int = setting(9091, port)
    ip_address: str = setting("127.0.0.1", ip_address)


@dataclass(frozen=True)
class LogHandlerConfig:
    """`[instrumentation.log]`: one structured log event per instrumentation event."""

    level: str = setting("info", one_of(*LEVELS))


@dataclass(frozen=True)
class GraphiteHandlerConfig:
    """`[instrumentation.graphite]`: current values pushed every `interval` seconds in the
    Graphite plaintext protocol (what MongooseIM's Exometer reporter did)."""

    host: str = setting("127.0.0.1", non_empty_string("a host name or IP address"))
    port: int = setting(2003, tcp_port)
    interval: int = setting(60, int_at_least(1))
    prefix: str = setting("mongooseim", graphite_prefix)


@dataclass(frozen=True)
class Instrumentation:
    """`[instrumentation]`: metrics (mongoose.instrument). A handler runs when its table is
    present; with none, emitting an event costs next to nothing."""

    # Seconds between two runs of each probe (sampled gauges: session counts, ...).
    probe_interval: int = setting(15, int_at_least(1))
    prometheus: PrometheusHandlerConfig | None = None
    log: LogHandlerConfig | None = None
    graphite: GraphiteHandlerConfig | None = None


# Outgoing pools: [outgoing_pools.rdbms.<tag>] (mongoose.storage.pools)


RDBMS_DRIVERS = ("pgsql", "cockroachdb")
RDBMS_DEFAULT_PORTS = {"pgsql": 5432, "cockroachdb": 26257}


def tls_versions(value: Any) -> tuple[str, ...]:
    choices = ("tlsv1.2", "tlsv1.3")
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, str) and v in choices for v in value)):
        raise Invalid('a non-empty list from "tlsv1.2", "tlsv1.3"')
    return tuple(dict.fromkeys(value))


def optional_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 65535:
        raise Invalid("a TCP port number from 1 to 65535")
    return value


@dataclass(frozen=True)
class RdbmsServerNameIndication:
    """`connection.tls.server_name_indication`: SNI, and the name the server's
    certificate must carry. `host` (default: `connection.host`) is for connecting to an
    IP address whose certificate names a host."""

    enabled: bool = setting(True, lambda v: _bool(v))
    host: str = setting("", str_value)


@dataclass(frozen=True)
class RdbmsTls:
    """`[outgoing_pools.rdbms.<tag>.connection.tls]`: present means TLS (MongooseIM's
    client TLS options, mapped to libpq's in mongoose.storage.pg.tls_options).

    `verify_mode`: "peer" (the server's certificate must chain to `cacertfile` and name
    the host), "selfsigned_peer" (chain only: `cacertfile` may be the server's own
    self-signed certificate) or "none" (no check; then `required` decides whether a
    server without TLS is refused). `certfile` and `keyfile`: a client certificate.
    """

    required: bool = setting(False, lambda v: _bool(v))
    verify_mode: str = setting("peer", one_of("peer", "selfsigned_peer", "none"))
    cacertfile: str = setting("", str_value)
    certfile: str = setting("", str_value)
    keyfile: str = setting("", str_value)
    # Password of the key file.
    password: str = setting("", str_value)
    versions: tuple[str, ...] = setting((), tls_versions)
    server_name_indication: RdbmsServerNameIndication = field(
        default_factory=RdbmsServerNameIndication)


@dataclass(frozen=True)
class RdbmsConnection:
    """`[outgoing_pools.rdbms.<tag>.connection]`: the database server.

    `driver`, `host`, `database` and `username` are required; `port` defaults to 5432
    for pgsql and 26257 for cockroachdb (`port_number`). A `host` starting with "/" is
    the directory of a Unix socket. `query_timeout`: ms a statement may run
    (statement_timeout). `keepalive_interval`: seconds between TCP keepalive probes of
    idle connections (unset: the system's). `max_start_interval`: the most seconds
    between two connection attempts while the database is unreachable, at start and
    after losing it.
    """

    driver: str = setting("", one_of(*RDBMS_DRIVERS))
    host: str = setting("", non_empty_string("a host name, an IP address or a socket directory"))
    port: int | None = setting(None, optional_port)
    database: str = setting("", non_empty_string("a database name"))
    username: str = setting("", non_empty_string("a user name"))
    password: str = setting("", str_value)
    query_timeout: int = setting(5000, int_at_least(1))
    keepalive_interval: int | None = setting(None, int_at_least(1))
    max_start_interval: int = setting(30, int_at_least(1))
    tls: RdbmsTls | None = None

    @property
    def port_number(self) -> int:
        return self.port or RDBMS_DEFAULT_PORTS.get(self.driver, 5432)


@dataclass(frozen=True)
class RdbmsPool:
    """`[outgoing_pools.rdbms.<tag>]`: a pool of database connections. The storage uses
    the pool tagged `default`.

    `workers`: the most connections each process of the node opens. `call_timeout`: ms
    a request waits for a free connection. `scope`: "global" or "host_type"; every host
    type shares the one database either way.
    """

    scope: str = setting("global", one_of("global", "host_type"))
    workers: int = setting(10, int_at_least(1))
    call_timeout: int = setting(60_000, int_at_least(1))
    connection: RdbmsConnection = field(default_factory=RdbmsConnection)


@dataclass(frozen=True)
class OutgoingPools:
    """`[outgoing_pools]`: connections to other services, by type and tag. Without
    `[outgoing_pools.rdbms.default]` the node keeps its data in SQLite (`mongoose.db`
    under `general.data_dir`)."""

    rdbms: dict[str, RdbmsPool] = field(default_factory=dict)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid("true or false")
    return value


def _string_list(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise Invalid(f"a list of {what}")
    return tuple(value)


@dataclass(frozen=True)
class Config:
    """The whole validated configuration. `source` is the file it came from."""

    general: General = field(default_factory=General)
    cluster: Cluster = field(default_factory=Cluster)
    internal_databases: InternalDatabases = field(default_factory=InternalDatabases)
    listen: Listen = field(default_factory=Listen)
    auth: Auth = field(default_factory=Auth)
    modules: Modules = field(default_factory=Modules)
    instrumentation: Instrumentation = field(default_factory=Instrumentation)
    outgoing_pools: OutgoingPools = field(default_factory=OutgoingPools)
    source: str = "<defaults>"

    @property
    def default_domain(self) -> str:
        return self.general.default_server_domain or self.general.hosts[0]

    def data_path(self, path: str) -> Path:
        """``path`` as configured: relative paths are under `general.data_dir`."""
        p = Path(path)
        return p if p.is_absolute() else Path(self.general.data_dir) / p

    @property
    def log_path(self) -> Path | None:
        """The file `general.log_file` names (relative: under `data_dir`); None: stderr."""
        return self.data_path(self.general.log_file) if self.general.log_file else None


# Loading


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate the TOML file at `path`."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, "config file not found") from None
    except OSError as e:
        raise ConfigError(path, f"cannot read config file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, f"not valid UTF-8 text: {e.reason}") from None
    except tomllib.TOMLDecodeError as e:
        # The decoder's message ends with "(at line L, column C)".
        raise ConfigError(path, f"invalid TOML: {e}") from None
    return from_dict(data, source=os.fspath(path))


def loads(text: str, source: str = "<string>") -> Config:
    """Validate TOML `text`; `source` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, f"invalid TOML: {e}") from None
    return from_dict(data, source=source)


def from_dict(data: Mapping[str, Any], source: str) -> Config:
    """Validate already-parsed TOML `data`."""
    config = _read(Config, data, path="", source=source)
    _check_whole(config, source)
    return dataclasses.replace(config, source=source)


def _check_whole(config: Config, source: str) -> None:
    """Checks that involve more than one key."""
    domain = config.general.default_server_domain
    if domain and domain not in config.general.hosts:
        key = "general.default_server_domain"
        raise ConfigError(source, f"{key}: expected one of general.hosts, got {domain!r}", key=key)
    _check_cets(config.internal_databases.cets, source)
    seen: dict[tuple[str, int], int] = {}
    for i, listener in enumerate(config.listen.c2s):
        key = f"listen.c2s[{i}]"
        where = (listener.ip_address, listener.port)
        if where in seen and listener.port != 0:
            raise ConfigError(
                source, f"{key}.port: expected a port no other listener uses, got "
                f"{listener.port} (as listen.c2s[{seen[where]}])", key=f"{key}.port")
        seen[where] = i
        if bool(listener.tls.certfile) != bool(listener.tls.keyfile):
            raise ConfigError(
                source, f"{key}.tls: expected both certfile and keyfile, or neither",
                key=f"{key}.tls")
    http_ports: dict[tuple[str, int], int] = {}
    for i, http in enumerate(config.listen.http):
        key = f"listen.http[{i}]"
        where = (http.ip_address, http.port)
        if where in http_ports:
            raise ConfigError(
                source, f"{key}.port: expected a port no other listener uses, got "
                f"{http.port} (as listen.http[{http_ports[where]}])", key=f"{key}.port")
        http_ports[where] = i
        if not http.handlers.mongoose_prometheus_handler:
            raise ConfigError(
                source, f"{key}.handlers: expected at least one handler "
                "(mongoose_prometheus_handler)", key=f"{key}.handlers")
        paths = [h.path for h in http.handlers.mongoose_prometheus_handler]
        if len(set(paths)) != len(paths):
            raise ConfigError(
                source, f"{key}.handlers.mongoose_prometheus_handler: expected distinct "
                f"paths, got {paths}", key=f"{key}.handlers.mongoose_prometheus_handler")
        if config.instrumentation.prometheus is None:
            sub = f"{key}.handlers.mongoose_prometheus_handler"
            raise ConfigError(
                source, f"{sub}: expected [instrumentation.prometheus] to be enabled for "
                "the metrics this handler serves", key=sub)
    _check_rdbms_pools(config, source)


def _check_cets(cets: CetsDiscovery, source: str) -> None:
    key = "internal_databases.cets"
    if cets.backend == "rdbms" and cets.node_list_file:
        raise ConfigError(
            source, f'{key}.node_list_file: expected only with backend = "file", got it with '
            'backend = "rdbms"', key=f"{key}.node_list_file")
    if cets.backend == "rdbms" and cets.node_expiry <= cets.discovery_interval:
        raise ConfigError(
            source, f"{key}.node_expiry: expected more seconds than discovery_interval "
            f"({cets.discovery_interval:g}), got {cets.node_expiry}: live nodes would expire "
            "each other's rows", key=f"{key}.node_expiry")


def _check_rdbms_pools(config: Config, source: str) -> None:
    """[outgoing_pools.rdbms.*]: required keys, and TLS options that go together."""
    pools = config.outgoing_pools.rdbms
    if pools and "default" not in pools:
        key = "outgoing_pools.rdbms"
        raise ConfigError(
            source, f"{key}: expected a pool named default (the one the storage uses), "
            f"got only {', '.join(sorted(pools))}", key=key)
    for tag, pool in pools.items():
        key = f"outgoing_pools.rdbms.{tag}.connection"
        connection = pool.connection
        for name, expected in (
            ("driver", "one of " + ", ".join(RDBMS_DRIVERS)),
            ("host", "a host name, an IP address or a socket directory"),
            ("database", "a database name"),
            ("username", "a user name"),
        ):
            if not getattr(connection, name):
                raise ConfigError(source, f"{key}.{name}: expected {expected}, got nothing "
                                  "(the key is required)", key=f"{key}.{name}")
        tls = connection.tls
        if tls is None:
            continue
        if bool(tls.certfile) != bool(tls.keyfile):
            raise ConfigError(source, f"{key}.tls: expected both certfile and keyfile, or "
                              "neither", key=f"{key}.tls")
        if tls.verify_mode != "none" and not tls.cacertfile:
            raise ConfigError(
                source, f"{key}.tls.cacertfile: expected the CA certificates to verify the "
                f'server with (verify_mode = "{tls.verify_mode}"), or verify_mode = "none"',
                key=f"{key}.tls.cacertfile")
        sni_host = tls.server_name_indication.host
        if sni_host and not _is_ip(connection.host):
            raise ConfigError(
                source, f"{key}.host: expected an IP address when "
                "tls.server_name_indication.host names the server, got "
                f"{connection.host!r}", key=f"{key}.host")


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class _ArrayOf(typing.NamedTuple):
    cls: type


class _Optional(typing.NamedTuple):
    cls: type


class _MapOf(typing.NamedTuple):
    cls: type


def _schema(cls: type) -> dict[str, Any]:
    """Key name -> its check, the dataclass of its table, _ArrayOf(dataclass) for an
    array of tables, _Optional(dataclass) for a table that may be absent or
    _MapOf(dataclass) for tables of any names (`dict[str, Class]`); other fields are
    not keys."""
    hints = typing.get_type_hints(cls)
    schema: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint)
        if "check" in f.metadata:
            schema[f.name] = f.metadata["check"]
        elif dataclasses.is_dataclass(hint):
            schema[f.name] = hint
        elif typing.get_origin(hint) is tuple and args and dataclasses.is_dataclass(args[0]):
            schema[f.name] = _ArrayOf(args[0])
        elif typing.get_origin(hint) is dict and len(args) == 2 and dataclasses.is_dataclass(
                args[1]):
            schema[f.name] = _MapOf(args[1])
        elif len(args) == 2 and type(None) in args:
            inner = next(a for a in args if a is not type(None))
            if dataclasses.is_dataclass(inner):
                schema[f.name] = _Optional(inner)
    return schema


def _read(cls: type, table: Any, path: str, source: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(source, f"{path}: expected a table", key=path)
    schema = _schema(cls)
    values = {}
    for name, value in table.items():
        key = f"{path}.{name}" if path else name
        spec = schema.get(name)
        if spec is None:
            raise _unknown(source, path, name, schema)
        if isinstance(spec, type):
            values[name] = _read(spec, value, key, source)
            continue
        if isinstance(spec, _Optional):
            values[name] = _read(spec.cls, value, key, source)
            continue
        if isinstance(spec, _MapOf):
            if not isinstance(value, dict):
                raise ConfigError(
                    source, f"{key}: expected tables named by their tag ([{key}.NAME]), "
                    f"got {_show(value)}", key=key)
            values[name] = {
                tag: _read(spec.cls, item, f"{key}.{tag}", source) for tag, item in value.items()
            }
            continue
        if isinstance(spec, _ArrayOf):
            if not isinstance(value, list) or not value:
                raise ConfigError(
                    source, f"{key}: expected an array of tables ([[{key}]]), got {_show(value)}",
                    key=key)
            values[name] = tuple(
                _read(spec.cls, item, f"{key}[{i}]", source) for i, item in enumerate(value)
            )
            continue
        try:
            values[name] = spec(value)
        except Invalid as e:
            raise ConfigError(
                source, f"{key}: expected {e.expected}, got {_show(value)}", key=key
            ) from None
    return cls(**values)


def _unknown(source: str, path: str, name: str, schema: Mapping[str, Any]) -> ConfigError:
    kind = "key" if path else "section"
    key = f"{path}.{name}" if path else name
    message = f"unknown {kind} {key}"
    close = difflib.get_close_matches(name, schema, n=1)
    if close:
        message += f" (did you mean {close[0]}?)"
    known = ", ".join(sorted(schema)) or "none"
    message += f"; expected one of {known}"
    return ConfigError(source, message, key=key)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
