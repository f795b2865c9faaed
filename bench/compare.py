"""Our server against Prosody 0.12 and ejabberd 23.01, on this machine, with one load generator.

Run from the repository root, as root on a fresh machine (the peers come from Debian)::

    python bench/compare.py check                     # install, start, log in, stop; no load
    python bench/compare.py one_to_one --users 1000 --rate 2000 --duration 10
    python bench/compare.py connect --users 2000 --tls starttls
    python bench/compare.py presence --users 1000 --roster-size 20 --duration 30
    python bench/compare.py max-rate --users 1000 --duration 10 --start 500

Each scenario of ``bench/xmppload.py`` (connect, one_to_one, presence, idle) runs against
each server in turn with the same generator options; ``max-rate`` searches each server's
highest sustainable one_to_one rate and adds memory per idle session and login rate. The
results are a table and, as the last line of stdout, one JSON object; progress goes to
stderr. Options this script does not know are passed to the generator unchanged (for
example ``--force`` for presence).

Design
------
* **Peers from Debian, configs from bench/peers/.** ``prosody`` and ``ejabberd`` (with
  ``erlang-p1-sqlite3``) are installed with apt-get when missing; the packages' own
  services are stopped and disabled right away (or, without systemd, the processes the
  install started are killed by pid), so nothing of theirs holds a port. Each server runs
  from a run directory of its own under the results directory: its config (the file from
  bench/peers/ with ``@RUN_DIR@`` and the password storage filled in), certificate, data,
  accounts and logs. Nothing goes to /etc or /var/lib.
* **Ports.** Each server has a plain port (the ``--tls none`` runs) and a STARTTLS port
  (``--tls starttls``): ours 5522/5523, Prosody 5322/5323, ejabberd 5422/5423, all on
  127.0.0.1. ejabberd's Erlang distribution listens on 127.0.0.1:5429, without epmd.
* **One fresh process per measurement.** A server is started before every generator run
  and stopped after it, so no run inherits another's garbage, sessions or caches. Started
  in the foreground as our child, in a session of its own (a Ctrl-C reaches only us, and we
  stop the servers in order), with a parent-death signal so it dies if we are killed.
  Ready means: the port accepts, and a login (PLAIN, stream restart, resource bind) with
  the run's TLS setting succeeds. We then record the process tree; stopping is SIGTERM to
  the pid we started, SIGKILL to its group after ``STOP_TIMEOUT``, then SIGKILL to any
  recorded descendant still alive (psutil checks a pid has not been reused). This runs on
  errors, Ctrl-C and SIGTERM too.
* **Accounts are written, not registered.** u1..uN with password ``pw``, made before the
  first start: ours with ``mongoose account bulk-register`` (SCRAM secrets, 4096
  iterations); Prosody as one ``accounts/<user>.dat`` file per user in its internal file
  store; ejabberd as rows of its SQLite ``users`` table (the schema is the package's own
  ``lite.sql``), in one transaction. In-band registration is off everywhere.
* **So are the rosters** (``presence --roster-size R``): each user's R ring neighbours
  with subscription both, written after the accounts by ``bench/roster_setup.py``: ours
  as rows of our SQLite store's roster tables, Prosody as ``roster/<user>.dat`` files of
  its file store, ejabberd as ``rosterusers`` rows in its SQLite file (``mod_roster``
  with ``db_type: sql``). Each was checked against what the server writes itself.
  ``[modules.mod_roster]`` and ``[modules.mod_presence]`` are in our config; a table
  whose module is not in the tree is left out (with a note), so the other scenarios run
  while those modules are being written.
* **Password storage follows the mechanism** (``--peer-passwords auto``): PLAIN runs give
  the peers plaintext passwords (Prosody ``internal_plain``, ejabberd ``plain``), the
  cheapest thing for them to check; SCRAM-SHA-256 runs give them SCRAM-SHA-256 secrets
  with 4096 iterations, like ours. Ours only ever stores SCRAM secrets, so in a PLAIN run
  it pays one PBKDF2 of 4096 iterations per login that the peers skip; ``--peer-passwords
  hashed`` puts all three on that footing. The hashed accounts of one run share one salt
  (one PBKDF2 for the whole run instead of one per account); no server caches by salt.
* **Generator.** ``bench/xmppload.py`` as a subprocess, with ``--server-pid`` the pid we
  started (it counts that process's children too: our workers, ejabberd's port helpers).
  Its last stdout line is the summary; its stderr passes through.
* **max-rate.** From ``--start`` the one_to_one rate doubles until a run fails, then
  ``--bisect`` steps halve the interval between the last pass and the first failure. A run
  passes when latency_p99_ms < 100, lost == 0, duplicated == 0, and also no login failed
  and delivered_per_s reached 95 % of the rate (otherwise the generator or the server
  fell behind and the rate was not what was asked). Every rate tried is reported. Then the
  idle scenario gives memory per session and the connect scenario (``--login-rate 0``:
  as fast as the generator's concurrency allows) the login rate.

The numbers are of one 2-core machine where the generator shares the cores with the
server: compare ratios, not absolute figures (see bench/README.md).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import hashlib
import hmac
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PEERS = BENCH / "peers"
GENERATOR = BENCH / "xmppload.py"

DOMAIN = "localhost"
USER_PREFIX = "u"
PASSWORD = "pw"
ITERATIONS = 4096
SERVERS = ("mongoose", "prosody", "ejabberd")
PEER_NAMES = {"prosody": "Prosody", "ejabberd": "ejabberd"}
SCENARIOS = ("connect", "one_to_one", "presence", "idle")
PACKAGES = ("prosody", "ejabberd", "erlang-p1-sqlite3")
EJABBERD_DIST_PORT = 5429
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
P99_LIMIT_MS = 100.0
ACHIEVED_FRACTION = 0.95


def say(text: str) -> None:
    print(f"compare: {text}", file=sys.stderr, flush=True)


class CompareError(Exception):
    """Something the operator must fix; the message says what."""


# -- installing the peers ----------------------------------------------------------------


def _ejabberd_lib() -> Path | None:
    """Debian's ejabberd application directory, e.g. /usr/lib/x86_64-linux-gnu/ejabberd-23.01."""
    found = sorted(Path("/usr/lib").glob("*/ejabberd-[0-9]*/ebin"))
    return found[-1].parent if found else None


def missing_packages() -> list[str]:
    missing = []
    if shutil.which("prosody") is None:
        missing.append("prosody")
    if _ejabberd_lib() is None or shutil.which("erl") is None:
        missing.append("ejabberd")
    if not list(Path("/usr/lib/erlang/lib").glob("p1_sqlite3-*")):
        missing.append("erlang-p1-sqlite3")
    return missing


def install_peers() -> None:
    """apt-get install the peers if missing, then make sure none of their services runs."""
    missing = missing_packages()
    if not missing:
        return
    command = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    if os.geteuid() != 0:
        say(f"missing: {', '.join(missing)}. As root, run:\n  {' '.join(command)}\n"
            "  systemctl disable --now prosody ejabberd\nthen run this again.")
        raise SystemExit(2)
    import psutil

    before = set(psutil.pids())
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    say(f"installing {', '.join(PACKAGES)} (missing: {', '.join(missing)})")
    # apt's output goes to stderr: stdout is for the table and the JSON line.
    if subprocess.run(command, env=env, stdout=sys.stderr).returncode != 0:
        say("apt-get install failed; updating the package lists and trying once more")
        subprocess.run(["apt-get", "update"], env=env, stdout=sys.stderr, check=True)
        subprocess.run(command, env=env, stdout=sys.stderr, check=True)
    stop_package_services(before)
    still = missing_packages()
    if still:
        raise CompareError(f"still missing after apt-get install: {', '.join(still)}")


def stop_package_services(pids_before: set[int]) -> None:
    """Stop what the packages started: their systemd units, or else their processes.

    On a machine booted with systemd the postinst scripts start prosody.service and
    ejabberd.service; they would hold 5222 and 5269 and run a second Erlang node. In a
    container policy-rc.d usually forbids the start; whatever did start anyway is killed
    here by pid: new processes of the prosody and ejabberd users, or an epmd that was not
    there before.
    """
    import psutil

    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        for unit in ("prosody.service", "ejabberd.service"):
            subprocess.run(["systemctl", "disable", "--now", unit], check=False)
    strays = []
    for proc in psutil.process_iter(["pid", "username", "name"]):
        info = proc.info
        if info["pid"] in pids_before:
            continue
        if info["username"] in ("prosody", "ejabberd") or info["name"] == "epmd":
            strays.append(proc)
    for proc in strays:
        say(f"stopping pid {proc.pid} ({proc.info['name']}, user {proc.info['username']}), "
            "started by the package install")
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _gone, alive = psutil.wait_procs(strays, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


# -- versions and the machine -----------------------------------------------------------


def _output(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout or done.stderr).strip()


def package_version(name: str) -> str | None:
    return _output(["dpkg-query", "-W", "-f=${Version}", name]) or None


def otp_release() -> str | None:
    found = sorted(Path("/usr/lib/erlang/releases").glob("*/OTP_VERSION"))
    return found[-1].read_text().strip() if found else None


def machine_facts() -> dict[str, Any]:
    import psutil

    commit = _output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _output(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return {
        "cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mongoose": f"{commit}{'-dirty' if dirty else ''}" if commit else None,
        "prosody": package_version("prosody"),
        "lua": _output(["lua5.4", "-v"]) or None,
        "ejabberd": package_version("ejabberd"),
        "erlang_otp": otp_release(),
    }


# -- a minimal XMPP login, to tell that a server is ready --------------------------------


_FEATURES_END = re.compile(rb"</(?:stream:)?features>|<(?:stream:)?features\s*/>")
_PROCEED = re.compile(rb"<proceed\b[^>]*>")
_SASL_DONE = re.compile(rb"<success\b[^>]*(?:/>|>.*?</success>)", re.S)
_IQ_END = re.compile(rb"<iq\b[^>]*/>|</iq>")
_FAILED = re.compile(rb"<failure\b|<(?:stream:)?error\b|</stream:stream>")


class _Stream:
    """Blocking socket, a byte buffer and regex waits: enough for one scripted login."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock: Any = sock
        self.deadline = time.monotonic() + timeout
        self.buf = b""

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def expect(self, pattern: re.Pattern[bytes], step: str) -> bytes:
        while True:
            match = pattern.search(self.buf)
            if match is not None:
                seen, self.buf = self.buf[: match.end()], self.buf[match.end():]
                return seen
            if _FAILED.search(self.buf):
                raise CompareError(f"{step}: {self.buf[-300:].decode(errors='replace')}")
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise CompareError(f"{step}: no answer in time")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise CompareError(f"{step}: closed by the server")
            self.buf += data

    def open(self, step: str) -> bytes:
        self.send(f"<?xml version='1.0'?><stream:stream to='{DOMAIN}' version='1.0' "
                  "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
        return self.expect(_FEATURES_END, step)


def login_once(port: int, tls: str, user: str, password: str, timeout: float = 10.0) -> None:
    """Log in with SASL PLAIN and bind a resource, or raise CompareError saying where it
    stopped. ``tls`` is "none" or "starttls" (certificate not checked: ours is self-signed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        stream = _Stream(sock, timeout)
        features = stream.open("stream")
        if tls == "starttls":
            if b"urn:ietf:params:xml:ns:xmpp-tls" not in features:
                raise CompareError("STARTTLS not offered")
            stream.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            stream.expect(_PROCEED, "starttls")
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            stream.sock = context.wrap_socket(sock, server_hostname=DOMAIN)
            stream.buf = b""
            features = stream.open("stream after TLS")
        if b">PLAIN<" not in features:
            raise CompareError(f"PLAIN not offered: {features[-300:].decode(errors='replace')}")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        stream.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                    f"{token}</auth>")
        stream.expect(_SASL_DONE, "SASL PLAIN")
        stream.open("stream after SASL")
        stream.send("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                    "<resource>compare</resource></bind></iq>")
        answer = stream.expect(_IQ_END, "bind")
        if b"result" not in answer:
            raise CompareError(f"bind: {answer[-300:].decode(errors='replace')}")
        with contextlib.suppress(OSError):
            stream.send("</stream:stream>")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def port_holder(port: int) -> str:
    import psutil

    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if conn.pid is None:
                    return "another process"
                with contextlib.suppress(psutil.Error):
                    proc = psutil.Process(conn.pid)
                    return f"pid {conn.pid} ({' '.join(proc.cmdline())[:120]})"
    return "another process"


# -- one started server process ------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when compare.py dies, whatever killed it."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


class ServerProcess:
    """A server we started: the pid, the process tree recorded, and stopping by those pids."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict[str, str],
                 output: Path) -> None:
        self.name = name
        self.output = output
        with open(output, "ab") as out:
            self.popen = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.pid = self.popen.pid
        self.tree: dict[int, Any] = {}
        self.record_tree()

    def record_tree(self) -> list[int]:
        """Remember the pid and every descendant now alive (psutil objects, which know
        their start time); return all the pids."""
        import psutil

        with contextlib.suppress(psutil.Error):
            leader = psutil.Process(self.pid)
            self.tree.setdefault(self.pid, leader)
            for child in leader.children(recursive=True):
                self.tree.setdefault(child.pid, child)
        return sorted(self.tree)

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        import psutil

        if self.running():
            self.record_tree()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                say(f"{self.name}: pid {self.pid} still running {STOP_TIMEOUT:.0f} s after "
                    "SIGTERM; SIGKILL to its process group")
                # Not reaped yet, so the group id is still this process's own.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait()
        # Helpers (ejabberd's inet_gethost, our workers) notice their parent's end by
        # themselves; give them a moment, then kill what is left. is_running() compares
        # start times, so a reused pid is left alone.
        rest = [p for pid, p in self.tree.items() if pid != self.pid and p.is_running()]
        _gone, alive = psutil.wait_procs(rest, timeout=3)
        for proc in alive:
            say(f"{self.name}: descendant pid {proc.pid} outlived the server; SIGKILL")
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.output.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


# -- the three servers ----------------------------------------------------------------------


@dataclass
class Setup:
    """What every server of one invocation is set up with."""

    users: int
    mechanism: str  # PLAIN or SCRAM-SHA-256
    peer_passwords: str  # plain or hashed
    roster_size: int = 0  # contacts per user (presence); 0: no rosters


@dataclass
class Server:
    """One server under test: its run directory, accounts, command line and ports."""

    name: str
    run_dir: Path
    setup: Setup
    plain_port: int = 0
    tls_port: int = 0
    accounts: dict[str, Any] = field(default_factory=dict)
    rosters: dict[str, Any] = field(default_factory=dict)
    prepared: bool = False

    def port(self, tls: str) -> int:
        return self.tls_port if tls == "starttls" else self.plain_port

    def ports(self) -> list[int]:
        return [self.plain_port, self.tls_port]

    # Subclasses: write_config(), create_accounts(), create_rosters(), command().

    def prepare(self) -> None:
        """Run directory, config, accounts and rosters, once per invocation."""
        if self.prepared:
            return
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True)
        self.write_config()
        say(f"{self.name}: creating {self.setup.users} accounts")
        started = time.perf_counter()
        how = self.create_accounts()
        seconds = time.perf_counter() - started
        self.accounts = {"users": self.setup.users, "seconds": round(seconds, 2),
                         "per_s": round(self.setup.users / seconds), "how": how}
        say(f"{self.name}: {self.setup.users} accounts in {seconds:.1f} s "
            f"({self.setup.users / seconds:,.0f}/s), {how}")
        if self.setup.roster_size:
            size = self.setup.roster_size
            started = time.perf_counter()
            contacts = self.create_rosters(size)
            seconds = time.perf_counter() - started
            self.rosters = {"roster_size": size, "contacts": contacts,
                            "seconds": round(seconds, 2),
                            "per_s": round(contacts / seconds) if seconds else None}
            say(f"{self.name}: rosters of {size} contacts, {contacts} rows in "
                f"{seconds:.1f} s ({contacts / seconds:,.0f}/s)")
        self.prepared = True

    def render(self, template: str, out: str, **values: str) -> Path:
        text = (PEERS / template).read_text()
        for key, value in {"RUN_DIR": str(self.run_dir), **values}.items():
            text = text.replace(f"@{key}@", value)
        path = self.run_dir / out
        path.write_text(text)
        return path

    def certificate(self) -> None:
        from mongoose.tls import ensure_certificate

        ensure_certificate(self.run_dir / "certs", [DOMAIN])

    def write_config(self) -> None:
        raise NotImplementedError

    def create_accounts(self) -> str:
        raise NotImplementedError

    def create_rosters(self, roster_size: int) -> int:
        """Write every user's roster (bench/roster_setup.py); the contacts written."""
        raise NotImplementedError

    def _roster_args(self, roster_size: int) -> tuple[str, str, int, int, int]:
        return DOMAIN, USER_PREFIX, 1, self.setup.users, roster_size

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def log_files(self) -> list[Path]:
        return []

    @contextlib.contextmanager
    def running(self, tls: str) -> Iterator[ServerProcess]:
        """Start, wait until a login works, yield, stop (also on errors and Ctrl-C)."""
        self.prepare()
        for port in self.ports():
            if port_open(port):
                raise CompareError(f"{self.name}: port {port} is already in use by "
                                   f"{port_holder(port)}")
        argv, env = self.command()
        say(f"{self.name}: starting ({' '.join(argv[:3])} ...)")
        proc = ServerProcess(self.name, argv, self.run_dir, env, self.run_dir / "server.out")
        try:
            self._wait_ready(proc, tls)
            say(f"{self.name}: ready, pids {proc.record_tree()}")
            yield proc
        finally:
            proc.stop()
            say(f"{self.name}: stopped")

    def _wait_ready(self, proc: ServerProcess, tls: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        port = self.port(tls)
        error = "port not open"
        while time.monotonic() < deadline:
            if not proc.running():
                raise CompareError(f"{self.name} exited with status {proc.popen.returncode}:\n"
                                   f"{self._diagnostics(proc)}")
            if port_open(port):
                try:
                    login_once(port, tls, f"{USER_PREFIX}1", PASSWORD)
                    return
                except (CompareError, OSError) as e:
                    error = f"login: {e}"
            time.sleep(0.2)
        raise CompareError(f"{self.name}: not ready after {START_TIMEOUT:.0f} s ({error}):\n"
                           f"{self._diagnostics(proc)}")

    def _diagnostics(self, proc: ServerProcess) -> str:
        parts = [proc.tail()]
        for path in self.log_files():
            with contextlib.suppress(OSError):
                parts.append(f"--- {path}\n" + "\n".join(
                    path.read_text(errors="replace").splitlines()[-10:]))
        return "\n".join(p for p in parts if p)


def _scram_sha256(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey) of RFC 5802 with SHA-256."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return hashlib.sha256(client_key).digest(), server_key


class Mongoose(Server):
    """Ours: `python -m mongoose foreground`, two workers, run directory as the cwd."""

    def write_config(self) -> None:
        text = (PEERS / "mongoose.toml").read_text()
        # While mod_roster and mod_presence are being written, a tree may lack them: a
        # table naming a missing module would stop the node from starting.
        for name in re.findall(r"^\[modules\.(\w+)\]", text, re.M):
            if not (ROOT / "mongoose" / "modules" / f"{name}.py").is_file():
                say(f"{self.name}: mongoose/modules/{name}.py is missing: [modules.{name}] "
                    "left out of the config")
                text = re.sub(rf"^\[modules\.{name}\]\n(?:[^\[\n].*\n)*", "", text,
                              flags=re.M)
        (self.run_dir / "mongoose.toml").write_text(text)
        self.plain_port, self.tls_port = 5522, 5523

    def create_accounts(self) -> str:
        subprocess.run(
            [sys.executable, "-m", "mongoose", "account", "bulk-register", DOMAIN,
             USER_PREFIX, str(self.setup.users), PASSWORD, "--iterations", str(ITERATIONS),
             "-c", "mongoose.toml"],
            cwd=self.run_dir, check=True, stdout=subprocess.DEVNULL)
        return f"mongoose account bulk-register, SCRAM-SHA-256 secrets, {ITERATIONS} iterations"

    def create_rosters(self, roster_size: int) -> int:
        from roster_setup import mongoose_rosters

        return mongoose_rosters(self.run_dir / "data" / "mongoose.db",
                                *self._roster_args(roster_size))

    def command(self) -> tuple[list[str], dict[str, str]]:
        return ([sys.executable, "-m", "mongoose", "foreground", "-c", "mongoose.toml"],
                dict(os.environ))

    def log_files(self) -> list[Path]:
        return [self.run_dir / "data" / "mongoose.log"]


class Prosody(Server):
    """Prosody 0.12: `prosody --config FILE -F` (lua5.4), file storage under the run dir."""

    def write_config(self) -> None:
        self.certificate()
        auth = "internal_hashed" if self.setup.peer_passwords == "hashed" else "internal_plain"
        self.config = self.render("prosody.cfg.lua", "prosody.cfg.lua", AUTHENTICATION=auth)
        self.plain_port, self.tls_port = 5322, 5323

    def create_accounts(self) -> str:
        """One `data/localhost/accounts/<user>.dat` per user: a Lua chunk returning the
        account's table, as Prosody's internal file store reads it. User names and the
        host need no escaping (the store encodes only non-alphanumerics)."""
        directory = self.run_dir / "data" / DOMAIN / "accounts"
        directory.mkdir(parents=True)
        if self.setup.peer_passwords == "hashed":
            salt = secrets.token_hex(16)  # printable: a Lua string without escapes
            stored, server = _scram_sha256(PASSWORD, salt.encode(), ITERATIONS)
            body = (f'return {{\n\tstored_key = "{stored.hex()}";\n'
                    f'\tserver_key = "{server.hex()}";\n\tsalt = "{salt}";\n'
                    f"\titeration_count = {ITERATIONS};\n}};\n").encode()
            how = f"files, internal_hashed, SCRAM-SHA-256, {ITERATIONS} iterations"
        else:
            body = f'return {{\n\tpassword = "{PASSWORD}";\n}};\n'.encode()
            how = "files, internal_plain"
        for i in range(1, self.setup.users + 1):
            fd = os.open(directory / f"{USER_PREFIX}{i}.dat",
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                os.write(fd, body)
            finally:
                os.close(fd)
        return how

    def create_rosters(self, roster_size: int) -> int:
        from roster_setup import prosody_rosters

        return prosody_rosters(self.run_dir / "data", *self._roster_args(roster_size))

    def command(self) -> tuple[list[str], dict[str, str]]:
        binary = shutil.which("prosody") or "/usr/bin/prosody"
        return [binary, "--config", str(self.config), "-F"], dict(os.environ)

    def log_files(self) -> list[Path]:
        return [self.run_dir / "prosody.log"]


class Ejabberd(Server):
    """ejabberd 23.01: the `erl` command line Debian's ejabberdctl builds for `foreground`,
    with a node name, cookie, Mnesia spool and distribution port of its own."""

    node = "compare-ejabberd@localhost"

    def write_config(self) -> None:
        self.certificate()
        fmt = "scram" if self.setup.peer_passwords == "hashed" else "plain"
        self.config = self.render("ejabberd.yml", "ejabberd.yml", PASSWORD_FORMAT=fmt)
        (self.run_dir / "spool").mkdir()
        self.cookie = secrets.token_hex(16)
        cookie_file = self.run_dir / "cookie"
        cookie_file.write_text(self.cookie + "\n")
        cookie_file.chmod(0o600)
        self.plain_port, self.tls_port = 5422, 5423

    def create_accounts(self) -> str:
        """Rows of the `users` table in a SQLite file made with ejabberd's own schema
        (priv/sql/lite.sql of the installed package), in one transaction. ejabberd opens
        an existing file as is; it runs lite.sql itself only on an empty one."""
        lib = _ejabberd_lib()
        if lib is None:
            raise CompareError("ejabberd is not installed (no /usr/lib/*/ejabberd-*/)")
        db = sqlite3.connect(self.run_dir / "ejabberd.db")
        try:
            db.executescript((lib / "priv" / "sql" / "lite.sql").read_text())
            if self.setup.peer_passwords == "hashed":
                salt = secrets.token_bytes(16)
                stored, server = _scram_sha256(PASSWORD, salt, ITERATIONS)
                # As ejabberd writes them with auth_scram_hash sha256 (checked against a
                # user it registered itself): the hash name prefixes the StoredKey.
                row = ("sha256:" + base64.b64encode(stored).decode(),
                       base64.b64encode(server).decode(), base64.b64encode(salt).decode(),
                       ITERATIONS)
                how = f"SQLite rows, SCRAM-SHA-256, {ITERATIONS} iterations"
            else:
                row = (PASSWORD, "", "", 0)
                how = "SQLite rows, plain"
            with db:
                db.executemany(
                    "INSERT INTO users (username, password, serverkey, salt, iterationcount)"
                    " VALUES (?, ?, ?, ?, ?)",
                    ((f"{USER_PREFIX}{i}", *row) for i in range(1, self.setup.users + 1)))
        finally:
            db.close()
        return how

    def create_rosters(self, roster_size: int) -> int:
        from roster_setup import ejabberd_rosters

        return ejabberd_rosters(self.run_dir / "ejabberd.db", *self._roster_args(roster_size))

    def command(self) -> tuple[list[str], dict[str, str]]:
        lib = _ejabberd_lib()
        assert lib is not None
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        env = {
            **os.environ,
            "HOME": str(self.run_dir),  # no ~/.erlang.cookie of anyone else's
            "EJABBERD_CONFIG_PATH": str(self.config),
            "EJABBERD_LOG_PATH": str(self.run_dir / "ejabberd.log"),
            "ERL_LIBS": str(lib.parent),
            "ERL_CRASH_DUMP": str(self.run_dir / "erl_crash.dump"),
            # ejabberdctl's 32000 ports would cap the sessions at about 32,000.
            "ERL_MAX_PORTS": str(max(32000, soft)),
            "ERL_MAX_ETS_TABLES": "1400",
        }
        processes = max(250_000, 4 * self.setup.users)
        argv = [
            shutil.which("erl") or "/usr/bin/erl",
            "-sname", self.node, "-setcookie", self.cookie,
            "+K", "true", "+P", str(processes),
            "-env", "ERL_CRASH_DUMP_BYTES", "0",
            # Distribution on a port of its own on loopback, with no epmd to start (and
            # leave running) or to share with a system instance.
            "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
            "-erl_epmd_port", str(EJABBERD_DIST_PORT), "-start_epmd", "false",
            "-mnesia", "dir", f'"{self.run_dir / "spool"}"',
            "-s", "ejabberd", "-noinput",
        ]
        return argv, env

    def ports(self) -> list[int]:
        return [*super().ports(), EJABBERD_DIST_PORT]

    def log_files(self) -> list[Path]:
        return [self.run_dir / "ejabberd.log", self.run_dir / "error.log"]


SERVER_CLASSES: dict[str, type[Server]] = {
    "mongoose": Mongoose, "prosody": Prosody, "ejabberd": Ejabberd}


# -- running the generator ------------------------------------------------------------------


@dataclass
class Load:
    """The generator options shared by every server of a comparison."""

    users: int
    tls: str
    mechanism: str
    rate: float
    duration: float
    login_rate: float
    processes: int
    extra: list[str]
    roster_size: int = 0  # presence: contacts per user, passed on as --roster-size


class Generator:
    """bench/xmppload.py as a child process; at most one at a time."""

    def __init__(self, results: Path) -> None:
        self.results = results
        self.popen: subprocess.Popen[str] | None = None

    def run(self, scenario: str, server: Server, proc: ServerProcess, load: Load,
            label: str, login_rate: float | None = None,
            rate: float | None = None) -> dict[str, Any]:
        if not GENERATOR.is_file():
            raise CompareError(f"{GENERATOR} is missing")
        out_dir = self.results / label
        login_rate = load.login_rate if login_rate is None else login_rate
        rate = load.rate if rate is None else rate
        argv = [
            sys.executable, str(GENERATOR), scenario,
            "--host", "127.0.0.1", "--port", str(server.port(load.tls)), "--domain", DOMAIN,
            "--users", str(load.users), "--user-prefix", USER_PREFIX, "--first-user", "1",
            "--password", PASSWORD, "--tls", load.tls, "--mechanism", load.mechanism,
            "--rate", f"{rate:g}", "--duration", f"{load.duration:g}",
            "--login-rate", f"{login_rate:g}", "--processes", str(load.processes),
            "--results", str(out_dir), "--server-pid", str(proc.pid),
            "--label", label, *load.extra,
        ]
        if scenario == "presence" and load.roster_size:
            argv += ["--roster-size", str(load.roster_size)]
        logins_s = load.users / (login_rate if login_rate > 0 else 200)
        timeout = 120 + 3 * logins_s + 2 * load.duration
        say(f"{label}: xmppload {scenario} ({load.users} users, tls {load.tls}, "
            f"{load.mechanism}, rate {rate:g}/s, {load.duration:g} s)")
        self.popen = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            stdout, _ = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise CompareError(
                f"{label}: the generator did not finish in {timeout:.0f} s") from None
        except BaseException:  # Ctrl-C, SIGTERM: the generator first, then the server
            self.stop()
            raise
        status = self.popen.returncode
        self.popen = None
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "generator.jsonl").write_text(stdout)
        lines = [line for line in stdout.splitlines() if line.strip()]
        try:
            summary = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            summary = None
        if not isinstance(summary, dict) or summary.get("kind") != "summary":
            raise CompareError(f"{label}: the generator exited with status {status} "
                               "without a summary line")
        if not proc.running():
            raise CompareError(f"{label}: {server.name} died during the run:\n{proc.tail()}")
        return summary

    def stop(self) -> None:
        popen = self.popen
        if popen is not None and popen.poll() is None:
            popen.terminate()
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()


# -- output ------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _bytes(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value / 1024:,.1f} KiB"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _per_message(summary: dict[str, Any]) -> float | None:
    """The server's CPU (all its processes) per message sent, in µs: the generator's
    server_cpu_s covers sending and draining."""
    cpu, sent = summary.get("server_cpu_s"), summary.get("sent")
    if not isinstance(cpu, int | float) or not sent:
        return None
    return round(cpu / sent * 1e6, 1)


def _ratio(ours: Any, theirs: Any) -> float | None:
    if not isinstance(ours, int | float) or not isinstance(theirs, int | float) or not theirs:
        return None
    return round(ours / theirs, 2)


# -- commands ---------------------------------------------------------------------------------


def make_servers(names: list[str], results: Path, setup: Setup) -> list[Server]:
    return [SERVER_CLASSES[name](name, results / "run" / name, setup) for name in names]


def raise_fd_limit(users: int) -> None:
    """Enough descriptors for N sessions in one server process, and for the generator; the
    servers and the generator inherit the limit. Raising the hard limit needs root."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, 2 * users + 4096)
    if want > hard and os.geteuid() == 0:
        with contextlib.suppress(OSError, ValueError):
            higher = min(want, int(Path("/proc/sys/fs/nr_open").read_text()))
            resource.setrlimit(resource.RLIMIT_NOFILE, (higher, higher))
            return
    if want > hard:
        say(f"the open-file limit is {hard} and cannot be raised here: a server or the "
            f"generator holds at most about {hard - 100:,} sessions")
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def cmd_check(args: argparse.Namespace, results: Path) -> dict[str, Any]:
    """Start each server, log in on both ports (plain and STARTTLS), stop it."""
    setup = Setup(args.users, args.mechanism, peer_passwords(args))
    out: dict[str, Any] = {}
    for server in make_servers(args.servers, results, setup):
        checks = {}
        with server.running("none") as proc:
            for tls in ("none", "starttls"):
                started = time.perf_counter()
                login_once(server.port(tls), tls, f"{USER_PREFIX}{args.users}", PASSWORD)
                checks[tls] = round((time.perf_counter() - started) * 1000, 1)
            pids = proc.record_tree()
        say(f"{server.name}: logged in as {USER_PREFIX}{args.users} with tls none and "
            "starttls")
        out[server.name] = {"pids": pids, "login_ms": checks, "accounts": server.accounts}
    print(table(["server", "accounts/s", "login ms (none)", "login ms (starttls)", "pids"],
                [[name, _fmt(v["accounts"]["per_s"]), _fmt(v["login_ms"]["none"], 1),
                  _fmt(v["login_ms"]["starttls"], 1), " ".join(map(str, v["pids"]))]
                 for name, v in out.items()]))
    return {"kind": "check", "servers": out}


def cmd_scenario(args: argparse.Namespace, results: Path, generator: Generator
                 ) -> dict[str, Any]:
    setup = Setup(args.users, args.mechanism, peer_passwords(args),
                  roster_size=getattr(args, "roster_size", 0))
    load = make_load(args)
    summaries: dict[str, Any] = {}
    accounts: dict[str, Any] = {}
    rosters: dict[str, Any] = {}
    for server in make_servers(args.servers, results, setup):
        with server.running(load.tls) as proc:
            summaries[server.name] = generator.run(
                args.command, server, proc, load, label=f"{args.command}-{server.name}")
        accounts[server.name] = server.accounts
        rosters[server.name] = server.rosters
    if args.command == "presence" and setup.roster_size:
        print(presence_table(summaries))
        return {"kind": "compare", "scenario": args.command, "params": vars_of(load),
                "peer_passwords": setup.peer_passwords, "accounts": accounts,
                "rosters": rosters, "results": summaries}
    header = ["server", "logins ok", "failed", "logins/s", "all online s", "sent",
              "delivered", "lost", "dup", "errors", "delivered/s", "p50 ms", "p95 ms",
              "p99 ms", "max ms", "RSS/session", "server CPU s"]
    rows = []
    for name, s in summaries.items():
        rows.append([name, _fmt(s.get("logins_ok")), _fmt(s.get("logins_failed")),
                     _fmt(s.get("login_rate_per_s")), _fmt(s.get("time_to_all_online_s"), 2),
                     _fmt(s.get("sent")), _fmt(s.get("delivered")), _fmt(s.get("lost")),
                     _fmt(s.get("duplicated")), _fmt(s.get("errors")),
                     _fmt(s.get("delivered_per_s")), _fmt(s.get("latency_p50_ms"), 2),
                     _fmt(s.get("latency_p95_ms"), 2), _fmt(s.get("latency_p99_ms"), 2),
                     _fmt(s.get("latency_max_ms"), 2), _bytes(s.get("rss_per_session_bytes")),
                     _fmt(s.get("server_cpu_s"), 2)])
    print(table(header, rows))
    return {"kind": "compare", "scenario": args.command, "params": vars_of(load),
            "peer_passwords": setup.peer_passwords, "accounts": accounts,
            "results": summaries}


def presence_table(summaries: dict[str, dict[str, Any]]) -> str:
    """presence --roster-size: logins, then how fast and how completely presence spread."""
    header = ["server", "logins ok", "failed", "logins/s", "all online s",
              "pairs seen / expected", "time to full presence s", "pairs/s",
              "presences received", "duplicates", "roster items", "echo p50 ms",
              "server CPU s", "generator CPU s"]
    rows = []
    for name, s in summaries.items():
        seen, expected = s.get("presence_pairs_seen"), s.get("presence_pairs_expected")
        rows.append([name, _fmt(s.get("logins_ok")), _fmt(s.get("logins_failed")),
                     _fmt(s.get("login_rate_per_s")), _fmt(s.get("time_to_all_online_s"), 2),
                     f"{_fmt(seen)} / {_fmt(expected)}",
                     _fmt(s.get("time_to_full_presence_s"), 2),
                     _fmt(s.get("presence_pairs_per_s")),
                     _fmt(s.get("presence_stanzas_received")),
                     _fmt(s.get("presence_duplicates")),
                     f"{_fmt(s.get('roster_items_received'))} / "
                     f"{_fmt(s.get('roster_items_expected'))}",
                     _fmt(s.get("latency_p50_ms"), 2), _fmt(s.get("server_cpu_s"), 2),
                     _fmt(s.get("generator_cpu_s"), 2)])
    return table(header, rows)


def passes(summary: dict[str, Any], rate: float) -> tuple[bool, str]:
    """The max-rate criterion for one one_to_one run, and why it failed."""
    reasons = []
    p99 = summary.get("latency_p99_ms")
    if p99 is None or p99 >= P99_LIMIT_MS:
        reasons.append(f"p99 {p99} ms")
    if summary.get("lost") != 0:
        reasons.append(f"lost {summary.get('lost')}")
    if summary.get("duplicated") != 0:
        reasons.append(f"duplicated {summary.get('duplicated')}")
    if summary.get("logins_failed"):
        reasons.append(f"logins failed {summary.get('logins_failed')}")
    achieved = summary.get("delivered_per_s") or 0
    if achieved < ACHIEVED_FRACTION * rate:
        reasons.append(f"delivered {achieved:,.0f}/s of {rate:,.0f}/s")
    return not reasons, "; ".join(reasons)


def search_max_rate(args: argparse.Namespace, server: Server, load: Load,
                    generator: Generator) -> dict[str, Any]:
    tried: list[dict[str, Any]] = []

    def attempt(rate: float) -> bool:
        rate = float(round(rate))
        with server.running(load.tls) as proc:
            summary = generator.run("one_to_one", server, proc, load, rate=rate,
                                    label=f"max-rate-{server.name}-{rate:g}")
        ok, why = passes(summary, rate)
        tried.append({"rate": rate, "ok": ok, "why": why or None,
                      "delivered_per_s": summary.get("delivered_per_s"),
                      "latency_p50_ms": summary.get("latency_p50_ms"),
                      "latency_p99_ms": summary.get("latency_p99_ms"),
                      "lost": summary.get("lost"), "duplicated": summary.get("duplicated"),
                      "server_cpu_us_per_msg": _per_message(summary),
                      "summary": summary})
        say(f"{server.name}: {rate:,.0f} msg/s {'passes' if ok else 'fails: ' + why}")
        return ok

    good: float | None = None
    bad: float | None = None
    rate = args.start
    while rate <= args.cap:
        if attempt(rate):
            good = rate
            rate *= 2
        else:
            bad = rate
            break
    if good is None:
        # Even the start failed: halve a few times to find a rate that passes at all.
        rate = args.start / 2
        while rate >= 1 and good is None and len(tried) < 4:
            if attempt(rate):
                good = rate
            else:
                bad = rate
                rate /= 2
    if good is not None and bad is not None:
        for _ in range(args.bisect):
            mid = round((good + bad) / 2)
            if mid in (round(good), round(bad)):
                break
            if attempt(mid):
                good = mid
            else:
                bad = mid
    best = next((t for t in tried if t["ok"] and t["rate"] == good), None)
    return {"max_rate": good, "first_failure": bad,
            "reached_cap": good is not None and bad is None,
            "latency_p50_ms": best and best["latency_p50_ms"],
            "latency_p99_ms": best and best["latency_p99_ms"],
            "tried": tried}


def cmd_max_rate(args: argparse.Namespace, results: Path, generator: Generator
                 ) -> dict[str, Any]:
    setup = Setup(args.users, args.mechanism, peer_passwords(args))
    load = make_load(args)
    figures: dict[str, Any] = {}
    for server in make_servers(args.servers, results, setup):
        found = search_max_rate(args, server, load, generator)
        with server.running(load.tls) as proc:
            # A VM just started still frees or grows memory for a while (the BEAM after
            # boot gave back about 9 MB in its first seconds here), which would land in
            # the per-session figure.
            time.sleep(args.settle)
            idle = generator.run("idle", server, proc, load, label=f"idle-{server.name}")
        with server.running(load.tls) as proc:
            connect = generator.run("connect", server, proc, load, login_rate=0,
                                    label=f"connect-{server.name}")
        figures[server.name] = {
            **found,
            "rss_per_idle_session_bytes": idle.get("rss_per_session_bytes"),
            "login_rate_per_s": connect.get("login_rate_per_s"),
            "logins_failed": connect.get("logins_failed"),
            "accounts": server.accounts,
            "idle_summary": idle, "connect_summary": connect,
        }
    columns = ("max_rate", "latency_p50_ms", "latency_p99_ms", "rss_per_idle_session_bytes",
               "login_rate_per_s")
    ratios = {}
    if "mongoose" in figures:
        for peer in ("prosody", "ejabberd"):
            if peer in figures:
                ratios[f"mongoose/{peer}"] = {
                    c: _ratio(figures["mongoose"][c], figures[peer][c]) for c in columns}
    header = ["server", "max rate msg/s", "p50 ms", "p99 ms at that rate",
              "RSS per idle session", "login rate/s"]
    rows = [[name, _fmt(f["max_rate"]) + (" (the cap)" if f["reached_cap"] else ""),
             _fmt(f["latency_p50_ms"], 2),
             _fmt(f["latency_p99_ms"], 2), _bytes(f["rss_per_idle_session_bytes"]),
             _fmt(f["login_rate_per_s"])] for name, f in figures.items()]
    rows += [[f"ours/{PEER_NAMES[name.split('/')[1]]}",
              *(_fmt(r[c], 2) for c in columns)] for name, r in ratios.items()]
    print(table(header, rows))
    for name, f in figures.items():
        print(f"{name}: rates tried " + ", ".join(
            f"{t['rate']:,.0f} {'ok' if t['ok'] else 'FAIL (' + str(t['why']) + ')'}"
            for t in f["tried"]))
    return {"kind": "max_rate", "params": {**vars_of(load), "start": args.start,
                                           "cap": args.cap, "bisect": args.bisect,
                                           "settle_s": args.settle,
                                           "p99_limit_ms": P99_LIMIT_MS,
                                           "achieved_fraction": ACHIEVED_FRACTION},
            "peer_passwords": setup.peer_passwords, "servers": figures, "ratios": ratios}


def peer_passwords(args: argparse.Namespace) -> str:
    if args.peer_passwords != "auto":
        return str(args.peer_passwords)
    return "plain" if args.mechanism == "PLAIN" else "hashed"


def make_load(args: argparse.Namespace) -> Load:
    return Load(users=args.users, tls=args.tls, mechanism=args.mechanism,
                rate=getattr(args, "rate", 1000.0), duration=args.duration,
                login_rate=args.login_rate, processes=args.processes,
                extra=list(args.generator_args), roster_size=getattr(args, "roster_size", 0))


def vars_of(load: Load) -> dict[str, Any]:
    return dict(load.__dict__)


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run bench/xmppload.py against our server, Prosody and ejabberd.",
        epilog="Unknown options are passed to bench/xmppload.py.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser, duration: float = 10.0) -> None:
        sub.add_argument("--users", type=int, default=1000, help="accounts and sessions")
        sub.add_argument("--duration", type=float, default=duration,
                         help="seconds of sending or holding per run")
        sub.add_argument("--tls", choices=("none", "starttls"), default="none")
        sub.add_argument("--mechanism", choices=("PLAIN", "SCRAM-SHA-256"), default="PLAIN")
        sub.add_argument("--peer-passwords", choices=("auto", "plain", "hashed"),
                         default="auto", help="the peers' password storage (auto: plain "
                         "for PLAIN, SCRAM secrets for SCRAM-SHA-256)")
        sub.add_argument("--servers", type=lambda s: s.split(","), default=list(SERVERS),
                         help="comma-separated, from mongoose,prosody,ejabberd")
        sub.add_argument("--login-rate", type=float, default=500.0,
                         help="generator logins/s (0: as fast as it can)")
        sub.add_argument("--processes", type=int, default=1,
                         help="generator processes (default 1: leave a core to the server)")
        sub.add_argument("--results", type=Path, default=None,
                         help="results directory (default bench/results/compare-TIMESTAMP)")

    check = commands.add_parser("check", help="install, start, log in, stop; no load")
    common(check)
    for scenario in SCENARIOS:
        sub = commands.add_parser(scenario, help=f"the {scenario} scenario on each server")
        common(sub)
        sub.add_argument("--rate", type=float, default=1000.0, help="messages/s in total")
        if scenario == "presence":
            sub.add_argument("--roster-size", type=int, default=0,
                             help="R contacts per user (even, less than --users), written "
                             "into each server's storage before its first start; the run "
                             "waits up to --duration s after the logins for every "
                             "contact's presence")
    maxrate = commands.add_parser("max-rate", help="highest sustainable one_to_one rate, "
                                  "then RSS per idle session and login rate")
    common(maxrate)
    maxrate.add_argument("--start", type=float, default=500.0, help="first rate tried")
    maxrate.add_argument("--cap", type=float, default=200_000.0, help="highest rate tried")
    maxrate.add_argument("--bisect", type=int, default=3, help="bisection steps")
    maxrate.add_argument("--settle", type=float, default=5.0,
                         help="seconds between a server's start and the idle run")
    args, extra = parser.parse_known_args(argv)
    args.generator_args = extra
    unknown = set(args.servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    if args.users < 1:
        parser.error("--users must be at least 1")
    roster_size = getattr(args, "roster_size", 0)
    if roster_size and (roster_size < 0 or roster_size % 2 or roster_size >= args.users):
        parser.error("--roster-size must be even and less than --users")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = (args.results or BENCH / "results" / f"compare-{stamp}").resolve()
    results.mkdir(parents=True, exist_ok=True)

    def terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    generator = Generator(results)
    try:
        install_peers()
        raise_fd_limit(args.users)
        facts = machine_facts()
        say(f"results in {results}")
        print(f"machine: {facts['cores']} cores, {facts['memory_bytes'] / 2**30:.1f} GiB, "
              f"Python {facts['python']}; ours {facts['mongoose']}, Prosody "
              f"{facts['prosody']}, ejabberd {facts['ejabberd']} (OTP {facts['erlang_otp']})",
              flush=True)
        started = time.perf_counter()
        if args.command == "check":
            record = cmd_check(args, results)
        elif args.command == "max-rate":
            record = cmd_max_rate(args, results, generator)
        else:
            record = cmd_scenario(args, results, generator)
    except CompareError as e:
        say(f"error: {e}")
        return 1
    except (subprocess.CalledProcessError, OSError) as e:
        say(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        say("interrupted; servers stopped")
        return 130
    finally:
        generator.stop()
    record = {**record, "machine": facts, "results_dir": str(results),
              "elapsed_s": round(time.perf_counter() - started, 1)}
    (results / "compare.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
