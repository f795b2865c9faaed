"""The `mongoose` command, this project's mongooseimctl.

Exit codes: 0 success, 1 failure (including a config file that does not validate), 2 usage
error (argparse's convention).

Default config: `config/mongooseim.toml` in the working directory when it exists (running from
a checkout), else the copy shipped inside the package at `mongoose/default_config/`, read
through importlib.resources so it is found from an installed wheel as well as from source. The
two copies are kept identical by a test; the package copy exists so an installed `mongoose`
starts with no files around it.

Running in the background: `start` spawns `foreground` detached from the terminal (a new
session, stdin /dev/null, stdout and stderr appended to `<data_dir>/mongoose.log`), waits
until the node has written its pid to `<data_dir>/mongoose.pid` -- which it does once it
is up -- and prints that pid. The node's log goes where `general.log_file` says (stderr,
hence `mongoose.log`, when it is ""), in `general.log_format` unless `--log-format` is
given. `stop` sends the pid in the pidfile SIGTERM and waits until the process is gone;
the node removes the pidfile itself as it stops. `status` tells whether the pidfile names
a live node. A pidfile whose process is gone (a node killed outright), or is no longer a
mongoose node (its pid reused), is stale: reported, and removed by `stop`. The node keeps
the working directory it was started from, so a relative `data_dir` means the same
directory to every command run from there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from mongoose import config, logs

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

CHECKOUT_CONFIG = Path("config/mongooseim.toml")
PIDFILE_NAME = "mongoose.pid"
LOGFILE_NAME = "mongoose.log"
DEFAULT_START_TIMEOUT = 30.0
DEFAULT_STOP_TIMEOUT = 30.0
LOG_TAIL_LINES = 20
_POLL = 0.05  # seconds between looks at the pidfile or the process

log = logging.getLogger(__name__)


@contextlib.contextmanager
def default_config_path() -> Iterator[Path]:
    """The config used when --config is not given (see the module docstring)."""
    if CHECKOUT_CONFIG.is_file():
        yield CHECKOUT_CONFIG
        return
    packaged = resources.files("mongoose") / "default_config" / "mongooseim.toml"
    with resources.as_file(packaged) as path:
        yield path


def load_config(path: str | None) -> config.Config:
    if path is not None:
        return config.load(path)
    with default_config_path() as default:
        return config.load(default)


def _load_or_report(path: str | None) -> config.Config | None:
    try:
        return load_config(path)
    except config.ConfigError as e:
        print(f"mongoose: {e}", file=sys.stderr)
        return None


def pidfile_path(cfg: config.Config) -> Path:
    """Where the node of this config writes its pid: `<data_dir>/mongoose.pid`."""
    return Path(cfg.general.data_dir) / PIDFILE_NAME


def read_pidfile(path: Path) -> int | None:
    """The pid in the pidfile, None if there is none; ValueError if it is garbage."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    pid = int(text.strip())
    if pid <= 0:
        raise ValueError(f"not a pid: {pid}")
    return pid


def process_running(pid: int) -> bool:
    """True if process `pid` exists and has not exited (a zombie has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux), or gone this instant: kill(0) said it was there
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def is_mongoose_node(pid: int) -> bool:
    """True if `pid` runs and, where /proc tells, runs mongoose (not a reused pid)."""
    if not process_running(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"mongoose" in cmdline


def node_state(path: Path) -> tuple[str, int | None]:
    """("running", pid), ("stopped", None) when there is no pidfile, or ("stale", pid):
    a pidfile whose process is gone or is not a node (pid None: unreadable pidfile)."""
    try:
        pid = read_pidfile(path)
    except (OSError, ValueError):
        return "stale", None
    if pid is None:
        return "stopped", None
    return ("running", pid) if is_mongoose_node(pid) else ("stale", pid)


def _stale_message(path: Path, pid: int | None) -> str:
    if pid is None:
        return f"the pidfile {path} does not hold a pid"
    return f"the pidfile {path} names pid {pid}, which is not a running node"


def cmd_foreground(args: argparse.Namespace) -> int:
    cfg = _load_or_report(args.config)
    if cfg is None:
        return EXIT_FAILURE
    pidfile = pidfile_path(cfg)
    state, pid = node_state(pidfile)
    if state == "running" and pid != os.getpid():
        print(f"mongoose: a node is already running with pid {pid} (pidfile {pidfile})",
              file=sys.stderr)
        return EXIT_FAILURE
    log_format = args.log_format or cfg.general.log_format
    log_path = cfg.log_path
    try:
        logs.setup(cfg.general.loglevel, log_format, path=log_path)  # type: ignore[arg-type]
    except logs.LogFileError as e:
        print(f"mongoose: {e}", file=sys.stderr)
        return EXIT_FAILURE
    log.info(
        "config loaded",
        extra={"what": "config_loaded", "config": cfg.source, "hosts": list(cfg.general.hosts)},
    )
    # Imported here so that config errors and --help never pay for (or depend on) the runtime.
    from supervisors import node

    try:
        return node.run(
            cfg, pidfile, log_format=log_format,
            # Absolute: the workers get it on their command line.
            log_file=str(log_path.absolute()) if log_path is not None else None,
        )
    except Exception:
        log.critical("node crashed", exc_info=True, extra={"what": "node_crashed"})
        return EXIT_FAILURE


def cmd_start(args: argparse.Namespace) -> int:
    """Start `foreground` detached; exit 0 once its pidfile names it, printing its pid."""
    cfg = _load_or_report(args.config)
    if cfg is None:
        return EXIT_FAILURE
    pidfile = pidfile_path(cfg)
    data_dir = pidfile.parent
    state, pid = node_state(pidfile)
    if state == "running":
        print(f"mongoose: a node is already running with pid {pid} (pidfile {pidfile})",
              file=sys.stderr)
        return EXIT_FAILURE
    logfile = data_dir / LOGFILE_NAME
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        print(f"mongoose: cannot create the data directory {data_dir}: {e.strerror or e}",
              file=sys.stderr)
        return EXIT_FAILURE
    try:
        log_fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    except OSError as e:
        print(f"mongoose: cannot open the log file {logfile}: {e.strerror or e}",
              file=sys.stderr)
        return EXIT_FAILURE
    # Where to look if the node fails to come up: its stderr, and its log file if it has one.
    tails = [(logfile, os.fstat(log_fd).st_size)]
    configured = cfg.log_path
    if configured is not None and configured.absolute() != logfile.absolute():
        try:
            tails.append((configured, configured.stat().st_size))
        except OSError:
            tails.append((configured, 0))
    command = [sys.executable, "-m", "mongoose", "foreground"]
    if args.log_format is not None:
        command += ["--log-format", args.log_format]
    if args.config is not None:
        command += ["--config", args.config]
    # The node must import this very package, whatever sys.path the caller had.
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    # posix_spawn rather than subprocess.Popen: the node outlives this command, and a
    # Popen object that is never waited for warns when it is collected.
    try:
        child = os.posix_spawn(
            sys.executable,
            command,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ],
            setsid=True,
        )
    except OSError as e:
        print(f"mongoose: cannot start the node: {e}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        os.close(log_fd)
    deadline = time.monotonic() + args.timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            if read_pidfile(pidfile) == child:
                print(json.dumps({"pid": child, "pidfile": str(pidfile)}) if args.json
                      else child)
                return EXIT_OK
        done, wait_status = os.waitpid(child, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(wait_status)
            print(f"mongoose: the node exited with status {status} while starting; "
                  f"{_log_tails(tails)}", file=sys.stderr)
            return EXIT_FAILURE
        if time.monotonic() > deadline:
            _stop_child(child)
            print(f"mongoose: the node was not up within {args.timeout:g} s; stopped it; "
                  f"{_log_tails(tails)}", file=sys.stderr)
            return EXIT_FAILURE
        time.sleep(_POLL)


def _stop_child(pid: int) -> None:
    """SIGTERM our child `pid`, SIGKILL it if it is still there after the stop timeout,
    and reap it."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + DEFAULT_STOP_TIMEOUT
    while os.waitpid(pid, os.WNOHANG)[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return
        time.sleep(_POLL)


def _log_tails(files: list[tuple[Path, int]]) -> str:
    """What the node wrote since each offset, as a message part: the first file (its
    stderr) always, the others (its configured log file) when they have new lines."""
    (first, offset), *others = files
    parts = [_log_tail(first, offset)]
    for path, start in others:
        with contextlib.suppress(OSError):
            if _new_lines(path, start):
                parts.append(_log_tail(path, start))
    return "; ".join(parts)


def _new_lines(logfile: Path, offset: int) -> list[str]:
    """The last lines written to `logfile` since `offset`; OSError if it cannot be read."""
    with open(logfile, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    return text.splitlines()[-LOG_TAIL_LINES:]


def _log_tail(logfile: Path, offset: int) -> str:
    """The last lines the node wrote to `logfile` since `offset`, as a message part."""
    try:
        lines = _new_lines(logfile, offset)
    except FileNotFoundError:
        return f"nothing in {logfile}"
    except OSError as e:
        return f"cannot read {logfile}: {e.strerror or e}"
    if not lines:
        return f"nothing in {logfile}"
    return f"last lines of {logfile}:\n" + "\n".join(lines)


def cmd_stop(args: argparse.Namespace) -> int:
    """SIGTERM the node of the pidfile and wait until it is gone."""
    cfg = _load_or_report(args.config)
    if cfg is None:
        return EXIT_FAILURE
    pidfile = pidfile_path(cfg)
    state, pid = node_state(pidfile)
    if state == "stopped":
        print(f"mongoose: no node is running (no pidfile {pidfile})", file=sys.stderr)
        return EXIT_FAILURE
    if state == "stale" or pid is None:
        try:
            pidfile.unlink()
            done = "removed it"
        except OSError as e:
            done = f"cannot remove it: {e.strerror or e}"
        print(f"mongoose: no node is running: {_stale_message(pidfile, pid)}; {done}",
              file=sys.stderr)
        return EXIT_FAILURE
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # it went away on its own just now
    except PermissionError as e:
        print(f"mongoose: cannot signal the node (pid {pid}): {e.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    deadline = time.monotonic() + args.timeout
    while process_running(pid):
        if time.monotonic() > deadline:
            print(f"mongoose: the node (pid {pid}) did not stop within {args.timeout:g} s",
                  file=sys.stderr)
            return EXIT_FAILURE
        time.sleep(_POLL)
    with contextlib.suppress(OSError, ValueError):
        if read_pidfile(pidfile) == pid:  # it died without cleaning up
            pidfile.unlink()
    print(json.dumps({"stopped": pid}) if args.json else f"mongoose: node stopped (pid {pid})")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Exit 0 and say so if the node of the pidfile runs, else exit 1. With --json, also
    what the node itself says (uptime, actors, workers), when it answers."""
    cfg = _load_or_report(args.config)
    if cfg is None:
        return EXIT_FAILURE
    pidfile = pidfile_path(cfg)
    state, pid = node_state(pidfile)
    if args.json:
        report: dict[str, Any] = {"running": state == "running", "pid": pid,
                                  "pidfile": str(pidfile), "state": state}
        if state == "running":
            report.update(_node_report(cfg, args.timeout))
        print(json.dumps(report, indent=2))
        return EXIT_OK if state == "running" else EXIT_FAILURE
    if state == "running":
        print(f"mongoose: node running (pid {pid})")
        return EXIT_OK
    if state == "stale":
        print(f"mongoose: no node is running: {_stale_message(pidfile, pid)}")
    else:
        print("mongoose: no node is running")
    return EXIT_FAILURE


def _node_report(cfg: config.Config, timeout: float) -> dict[str, Any]:
    """The node's own status over the control channel, or why it is missing."""
    from mongoose.control import Control, ControlError

    try:
        with Control.connect(cfg, timeout=timeout) as control:
            status = control.status()
            status["workers"] = len([p for p in control.processes() if p[1] != 0])
            return status
    except ControlError as error:
        return {"error": str(error)}


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mongoose",
        description="Run and manage a mongoose XMPP node.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="config file (default: config/mongooseim.toml in the working directory if it "
        "exists, else the default shipped with the package)",
    )
    node_options = argparse.ArgumentParser(add_help=False, parents=[config_option])
    node_options.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=None,
        help="json: one JSON object per line; text: for reading in a terminal (default: "
        "general.log_format of the config, json unless set there)",
    )

    foreground = commands.add_parser(
        "foreground",
        parents=[node_options],
        help="run the node in the foreground until Ctrl-C or SIGTERM",
        description="Run the node in the foreground, logging to stderr (or to "
        "general.log_file), until Ctrl-C or SIGTERM.",
    )
    foreground.set_defaults(func=cmd_foreground)

    start = commands.add_parser(
        "start",
        parents=[node_options],
        help="start the node in the background and print its pid",
        description="Start the node in the background, detached from the terminal, logging "
        "to general.log_file, or to <data_dir>/mongoose.log if that is \"\". Returns once "
        "the node is up (it has written <data_dir>/mongoose.pid) and prints its pid; exits 1 "
        "with the log's last lines if it fails to come up.",
    )
    start.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_seconds,
        default=DEFAULT_START_TIMEOUT,
        help=f"how long to wait for the node to be up (default {DEFAULT_START_TIMEOUT:g})",
    )
    start.add_argument("--json", action="store_true", help='print {"pid": ...} as JSON')
    start.set_defaults(func=cmd_start)

    stop = commands.add_parser(
        "stop",
        parents=[config_option],
        help="stop the running node",
        description="Stop the node named by <data_dir>/mongoose.pid: send it SIGTERM and "
        "wait until it has stopped. Exits 1 if no node is running or it does not stop in "
        "time.",
    )
    stop.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_seconds,
        default=DEFAULT_STOP_TIMEOUT,
        help=f"how long to wait for the node to stop (default {DEFAULT_STOP_TIMEOUT:g})",
    )
    stop.add_argument("--json", action="store_true", help='print {"stopped": pid} as JSON')
    stop.set_defaults(func=cmd_stop)

    status = commands.add_parser(
        "status",
        parents=[config_option],
        help="tell whether the node is running",
        description="Tell whether the node named by <data_dir>/mongoose.pid is running: "
        "exit 0 if it is, 1 if not (also for a stale pidfile).",
    )
    status.add_argument("--json", action="store_true",
                        help="print JSON, with the node's own status when it runs")
    status.add_argument("--timeout", metavar="SECONDS", type=_seconds, default=5.0,
                        help="how long to wait for the node's answer with --json (default 5)")
    status.set_defaults(func=cmd_status)

    keys = commands.add_parser(
        "keys",
        help="manage the cluster's CURVE keys",
        description="Manage the CURVE keypair that authenticates and encrypts traffic "
        "between the nodes of a cluster. Every node needs the same key file.",
    )
    keys_commands = keys.add_subparsers(title="commands", metavar="COMMAND", required=True)
    generate = keys_commands.add_parser(
        "generate",
        parents=[config_option],
        help="write a new keypair to cluster.keys_file (or --output)",
        description="Write a new cluster keypair, mode 0600, to --output or to the config's "
        "cluster.keys_file (relative to general.data_dir). Refuses to replace an existing "
        "file unless --force is given: nodes with the old keys could no longer join.",
    )
    generate.add_argument("--output", metavar="PATH", help="where to write the key file")
    generate.add_argument("--force", action="store_true", help="replace an existing file")
    generate.set_defaults(func=cmd_keys_generate)
    from mongoose.cli_account import add_account_commands
    from mongoose.cli_node import add_node_commands

    add_account_commands(commands, config_option)
    _add_db_commands(commands, config_option)
    add_node_commands(commands, config_option)
    return parser


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from otp import curve

    if args.output:
        path = Path(args.output)
    else:
        cfg = _load_or_report(args.config)
        if cfg is None:
            return EXIT_FAILURE
        path = Path(cfg.cluster.keys_file)
        if not path.is_absolute():
            path = Path(cfg.general.data_dir) / path
    if path.exists() and not args.force:
        print(f"mongoose: {path} exists; use --force to replace it", file=sys.stderr)
        return EXIT_FAILURE
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        curve.save(curve.generate(), path)
    except OSError as error:
        print(f"mongoose: cannot write {path}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    print(path)
    return EXIT_OK


# The database: `mongoose db init|status` (mongoose.storage.migrate, .pools).


def _wait_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _add_db_commands(
    commands: argparse._SubParsersAction, config_option: argparse.ArgumentParser
) -> None:
    db = commands.add_parser(
        "db",
        help="create or check the database schema",
        description="The node's database: [outgoing_pools.rdbms.default] of the config "
        "(pgsql or cockroachdb), or the embedded SQLite file <data_dir>/mongoose.db "
        "without one.",
    )
    db_commands = db.add_subparsers(title="commands", metavar="COMMAND", required=True)
    wait_option = argparse.ArgumentParser(add_help=False, parents=[config_option])
    wait_option.add_argument(
        "--wait", metavar="SECONDS", type=_wait_seconds, default=0.0,
        help="keep trying to reach the database for this long (default 0: one attempt)")
    init = db_commands.add_parser(
        "init",
        parents=[wait_option],
        help="create the schema, or bring it up to date",
        description="Create the tables of the configured database, or apply the "
        "migrations it lacks; does nothing to a database that is up to date. Exits 1 if "
        "the database cannot be reached or a migration fails.",
    )
    init.set_defaults(func=cmd_db_init)
    status = db_commands.add_parser(
        "status",
        parents=[wait_option],
        help="print the schema version of the database",
        description="Print the schema version of the configured database and the latest "
        "this server knows. Exits 0 if it is up to date, 1 if not (or if the database "
        "cannot be reached).",
    )
    status.set_defaults(func=cmd_db_status)


@contextlib.contextmanager
def _storage_messages() -> Iterator[None]:
    """Warnings of the storage layer (each failed connection attempt) on stderr, as
    "mongoose: ..." lines, while a db command runs."""
    logger = logging.getLogger("mongoose.storage")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mongoose: %(message)s"))
    handler.setLevel(logging.WARNING)
    saved = logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    if logger.level == logging.NOTSET or logger.level > logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate, level = saved
        logger.setLevel(level)


def _run_db_command(args: argparse.Namespace, command: Callable[..., int]) -> int:
    cfg = _load_or_report(args.config)
    if cfg is None:
        return EXIT_FAILURE
    from mongoose.storage import StorageError
    from mongoose.storage.pools import describe, open_database

    where = describe(cfg)
    with _storage_messages():
        try:
            db = open_database(cfg, wait=args.wait)
        except StorageError as error:
            print(f"mongoose: {error}", file=sys.stderr)
            return EXIT_FAILURE
        try:
            return command(db, where)
        except StorageError as error:
            print(f"mongoose: {where}: {error}", file=sys.stderr)
            return EXIT_FAILURE
        finally:
            db.close()


def cmd_db_init(args: argparse.Namespace) -> int:
    """Apply the pending migrations; print what was done."""
    from mongoose.storage import migrate

    def init(db: Any, where: str) -> int:
        applied = migrate.init(db)
        state = migrate.status(db)
        if applied:
            versions = ", ".join(str(v) for v in applied)
            print(f"{where}: applied schema version {versions}; {state.describe()}")
        else:
            print(f"{where}: {state.describe()}")
        return EXIT_OK if state.up_to_date else EXIT_FAILURE

    return _run_db_command(args, init)


def cmd_db_status(args: argparse.Namespace) -> int:
    """Print the schema version; exit 0 if it is the latest."""
    from mongoose.storage import migrate

    def status(db: Any, where: str) -> int:
        state = migrate.status(db)
        print(f"{where}: {state.describe()}")
        return EXIT_OK if state.up_to_date else EXIT_FAILURE

    cfg = _load_or_report(args.config)
    if cfg is None:
        return EXIT_FAILURE
    from mongoose.storage.pools import SQLITE_FILE, describe, pool_config

    if pool_config(cfg) is None and not cfg.data_path(SQLITE_FILE).exists():
        # Not created just to say it is empty.
        none = migrate.SchemaStatus(0, migrate.LATEST, migrate.MIGRATIONS)
        print(f"{describe(cfg)}: no database yet; {none.describe()}")
        return EXIT_FAILURE
    return _run_db_command(args, status)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
