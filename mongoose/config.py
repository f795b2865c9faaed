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
Arrays of tables (`[[listen.c2s]]`) and named tables (`[modules.*]`) will need one more kind
of field each when they arrive.
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
from typing import Any

from mongoose.logs import LEVELS


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


def str_value(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid("a string")
    return value


# Schema


@dataclass(frozen=True)
class General:
    """`[general]`: the node itself."""

    # XMPP domains this node serves.
    hosts: tuple[str, ...] = setting(("localhost",), domain_list)
    loglevel: str = setting("info", one_of(*LEVELS))
    # Erlang-style name@host; identifies the node in a cluster.
    node_name: str = setting("mongoose@localhost", erlang_node_name)
    # Worker processes (schedulers); 0 means one per CPU core.
    workers: int = setting(0, int_at_least(0))
    # Embedded storage; relative paths are relative to the working directory.
    data_dir: str = setting("data", non_empty_string("a directory path"))


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

    With `backend = "file"` and a `node_list_file`, the node re-reads that file (one
    "host:port" per line) every `discovery_interval` seconds when it changes and joins
    the addresses in it, in addition to `cluster.seeds` (a relative path is under
    `general.data_dir`). The "rdbms" backend arrives with the persistence layer.
    """

    backend: str = setting("file", one_of("file"))
    node_list_file: str = setting("", str_value)
    discovery_interval: float = setting(5.0, number_in(0.05, 3600))


@dataclass(frozen=True)
class InternalDatabases:
    """`[internal_databases]`."""

    cets: CetsDiscovery = field(default_factory=CetsDiscovery)


@dataclass(frozen=True)
class Config:
    """The whole validated configuration. `source` is the file it came from."""

    general: General = field(default_factory=General)
    cluster: Cluster = field(default_factory=Cluster)
    internal_databases: InternalDatabases = field(default_factory=InternalDatabases)
    source: str = "<defaults>"


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
    return dataclasses.replace(config, source=source)


def _schema(cls: type) -> dict[str, Check | type]:
    """Key name -> its check, or the dataclass of its table; other fields are not keys."""
    hints = typing.get_type_hints(cls)
    schema: dict[str, Check | type] = {}
    for f in dataclasses.fields(cls):
        if "check" in f.metadata:
            schema[f.name] = f.metadata["check"]
        elif dataclasses.is_dataclass(hints[f.name]):
            schema[f.name] = hints[f.name]
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
