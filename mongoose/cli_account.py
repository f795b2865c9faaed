"""``mongoose account register|unregister|passwd|check|list|count|bulk-register``.

While the node runs (its pidfile names a live node), every command but
``bulk-register`` goes through the node, over the same authenticated channel as the
shell (:mod:`mongoose.control`), to a worker's admin actor: so ``unregister`` also ends
the account's sessions at once, and a store reachable only from the node's machine
works. When no node runs, the command opens the account store itself (the SQLite file
under ``general.data_dir``, or the configured pool) and does the same operation with the
same checks (:func:`mongoose.admin.account_op`).

``bulk-register`` (benchmark accounts) always writes the store directly, all or none.

Output: one line (``--json``: the result as JSON). ``check`` exits 0 when the password
matches and 1 when it does not. Refusals are one line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import sys
from typing import Any

from mongoose import config, tabular
from mongoose.admin import AdminError, account_op, password, served_host
from mongoose.cli_node import connection_options

__all__ = ["add_account_commands"]

EXIT_OK, EXIT_FAILURE = 0, 1

# op -> (help, positional arguments, what to print with the result)
_COMMANDS: dict[str, tuple[str, list[tuple[str, str]], str]] = {
    "register": ("create an account", [("jid", "USER@HOST"), ("password", "PASSWORD")],
                 "registered {}"),
    "passwd": ("change the password of an account",
               [("jid", "USER@HOST"), ("password", "PASSWORD")],
               "changed the password of {}"),
    "unregister": ("remove an account (its sessions end)", [("jid", "USER@HOST")],
                   "unregistered {}"),
    "check": ("check a password: exit 0 if it is the account's, 1 if not",
              [("jid", "USER@HOST"), ("password", "PASSWORD")], ""),
    "list": ("list the users of HOST, one per line", [("host", "HOST?")], ""),
    "count": ("print the number of accounts of HOST", [("host", "HOST?")], ""),
}


def add_account_commands(commands: argparse._SubParsersAction,
                         config_option: argparse.ArgumentParser) -> None:
    account = commands.add_parser(
        "account", help="manage user accounts",
        description="Manage the accounts of the node's hosts: through the running node "
        "when there is one, else on its account store directly.")
    subcommands = account.add_subparsers(title="commands", metavar="COMMAND", required=True)
    parents = [config_option, connection_options()]
    for op, (help_text, positionals, _) in _COMMANDS.items():
        parser = subcommands.add_parser(op, parents=parents, help=help_text,
                                        description=help_text + ".")
        for dest, metavar in positionals:
            if metavar.endswith("?"):
                parser.add_argument(dest, metavar=metavar[:-1], nargs="?",
                                    help="default: the config's default domain")
            else:
                parser.add_argument(dest, metavar=metavar)
        parser.set_defaults(func=_run, op=op)
    bulk = subcommands.add_parser(
        "bulk-register", parents=[config_option],
        help="create accounts PREFIX1 to PREFIXN of HOST with one password, for "
        "benchmarks, all or none (on the store directly)",
        description="Create accounts PREFIX1 to PREFIXN of HOST with one password, all or "
        "none, writing the account store directly.")
    bulk.add_argument("host", metavar="HOST")
    bulk.add_argument("prefix", metavar="PREFIX")
    bulk.add_argument("n", metavar="N", type=_positive_int)
    bulk.add_argument("password", metavar="PASSWORD")
    bulk.add_argument(
        "--iterations", metavar="K", type=_positive_int,
        help="SCRAM iteration count (default: auth.password.scram_iterations); SCRAM "
        "clients refuse fewer than 4096, so accounts made with fewer log in with PLAIN")
    bulk.set_defaults(func=_run_bulk)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    return value


def _arguments(args: argparse.Namespace) -> list[Any]:
    return [getattr(args, dest) for dest, _ in _COMMANDS[args.op][1]]


def _run(args: argparse.Namespace) -> int:
    from mongoose.cli import _load_or_report, node_state, pidfile_path
    from mongoose.control import Control, ControlError

    cfg = _load_or_report(args.config)
    if cfg is None:
        return EXIT_FAILURE
    try:
        if args.node is not None or node_state(pidfile_path(cfg))[0] == "running":
            with Control.connect(cfg, args.node, keys_file=args.keys,
                                 timeout=args.timeout) as control:
                result = control.account(args.op, *_arguments(args))
        else:
            result = _on_store(cfg, lambda store: account_op(
                store, cfg.general.hosts, cfg.default_domain, args.op, _arguments(args)))
    except (AdminError, ControlError, _StoreFailed) as error:
        print(f"mongoose: {error}", file=sys.stderr)
        return EXIT_FAILURE
    _print(args, result)
    return EXIT_FAILURE if args.op == "check" and result is not True else EXIT_OK


def _print(args: argparse.Namespace, result: Any) -> None:
    if args.json:
        print(tabular.to_json({"ok": result} if args.op == "check" else result))
    elif args.op == "list":
        for user in result:
            print(user)
    elif args.op == "check":
        print("the password is correct" if result else "the password is wrong")
    elif args.op == "count":
        print(result)
    else:
        print(_COMMANDS[args.op][2].format(result))


class _StoreFailed(Exception):
    """The account store could not be opened or used (one line for the operator)."""


def _on_store(cfg: config.Config, work: Any) -> Any:
    """Run ``work(store)`` on the node's account store, opened here."""
    from mongoose.auth.accounts import AccountError, open_store
    from mongoose.storage import StorageError

    if "rdbms" in cfg.auth.methods:
        from mongoose.storage.pools import describe

        where = describe(cfg)
    else:
        where = str(cfg.data_path("mongoose.db"))
    try:
        with contextlib.closing(open_store(cfg, wait=0)) as store:
            return work(store)
    except AccountError as error:
        raise AdminError(str(error)) from None
    except (OSError, sqlite3.Error, StorageError) as error:
        raise _StoreFailed(f"cannot use the account store {where}: {error}") from None


def _run_bulk(args: argparse.Namespace) -> int:
    from mongoose.cli import _load_or_report

    cfg = _load_or_report(args.config)
    if cfg is None:
        return EXIT_FAILURE

    def register(store: Any) -> int:
        from mongoose.auth.accounts import InvalidUser, normalize_user

        host = served_host(cfg.general.hosts, cfg.default_domain, args.host)
        try:
            prefix = normalize_user(args.prefix)
        except InvalidUser as error:
            raise AdminError(f"bad prefix {args.prefix!r}: {error}") from None
        secret = password(args.password)
        accounts = ((f"{prefix}{i}", secret) for i in range(1, args.n + 1))
        return store.register_many(host, accounts, iterations=args.iterations)

    try:
        created = _on_store(cfg, register)
    except (AdminError, _StoreFailed) as error:
        print(f"mongoose: {error}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"registered {created} accounts on {args.host.lower()}")
    return EXIT_OK
