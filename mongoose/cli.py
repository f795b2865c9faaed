"""The `mongoose` command, this project's mongooseimctl.

Exit codes: 0 success, 1 failure (including a config file that does not validate), 2 usage
error (argparse's convention).

Default config: `config/mongooseim.toml` in the working directory when it exists (running from
a checkout), else the copy shipped inside the package at `mongoose/default_config/`, read
through importlib.resources so it is found from an installed wheel as well as from source. The
two copies are kept identical by a test; the package copy exists so an installed `mongoose`
starts with no files around it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

from mongoose import config, logs

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

CHECKOUT_CONFIG = Path("config/mongooseim.toml")

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


def cmd_foreground(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except config.ConfigError as e:
        print(f"mongoose: {e}", file=sys.stderr)
        return EXIT_FAILURE
    logs.setup(cfg.general.loglevel, args.log_format)
    log.info(
        "config loaded",
        extra={"what": "config_loaded", "config": cfg.source, "hosts": list(cfg.general.hosts)},
    )
    # Imported here so that config errors and --help never pay for (or depend on) the runtime.
    from supervisors import node

    try:
        return node.run(cfg)
    except Exception:
        log.critical("node crashed", exc_info=True, extra={"what": "node_crashed"})
        return EXIT_FAILURE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mongoose",
        description="Run and manage a mongoose XMPP node.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    node_options = argparse.ArgumentParser(add_help=False)
    node_options.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: config/mongooseim.toml in the working directory if it "
        "exists, else the default shipped with the package)",
    )
    node_options.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default="json",
        help="json: one JSON object per line (default); text: for reading in a terminal",
    )

    foreground = commands.add_parser(
        "foreground",
        parents=[node_options],
        help="run the node in the foreground until Ctrl-C or SIGTERM",
        description="Run the node in the foreground, logging to stderr, until Ctrl-C or "
        "SIGTERM.",
    )
    foreground.set_defaults(func=cmd_foreground)

    start = commands.add_parser(
        "start",
        parents=[node_options],
        help="start the node (for now the same as foreground)",
        description="Start the node. For now this is the same as foreground: the node runs "
        "attached to the terminal until Ctrl-C or SIGTERM.",
    )
    start.set_defaults(func=cmd_foreground)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
