"""The ``mongoose`` subcommands that talk to a running node (mongooseimctl's part).

``session list|count|kick``, ``stanza send``, ``metric get``, ``cets status``,
``cluster join|leave|members`` and ``shell`` attach to the node through
:class:`mongoose.control.Control`: as a hidden node of its cluster, authenticated with
the cluster's keys file (the config's ``cluster.keys_file``, or ``--keys``). Without the
keys, or with other keys, nothing answers and the command says so and exits 1.

Every command prints a readable table or line, or with ``--json`` the same data as
JSON for scripts. Exit codes: 0 done, 1 failed (the node is down, refused, or did not
answer within ``--timeout``), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from mongoose import tabular
from mongoose.control import Control, ControlError

__all__ = ["add_node_commands", "connection_options", "run_with_control"]

EXIT_OK, EXIT_FAILURE = 0, 1


def connection_options() -> argparse.ArgumentParser:
    """--node, --keys, --timeout, --json: the options of every command that attaches."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--node", metavar="NODE",
        help="the node to talk to: name@host (a member of the config's node's cluster), "
        "host:port or tcp://host:port of its cluster address (default: the config's "
        "cluster.host and cluster.port)")
    parser.add_argument(
        "--keys", metavar="FILE",
        help="the cluster's keys file (default: the config's cluster.keys_file)")
    parser.add_argument(
        "--timeout", metavar="SECONDS", type=float, default=5.0,
        help="how long to wait for the node's answers (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON, for scripts")
    return parser


def run_with_control(args: argparse.Namespace,
                     action: Callable[[Control, argparse.Namespace], Any],
                     show: Callable[[Any], str] | None = None) -> int:
    """Load the config, attach, run ``action``, print its result; the exit code."""
    from mongoose.cli import _load_or_report

    cfg = _load_or_report(args.config)
    if cfg is None:
        return EXIT_FAILURE
    try:
        with Control.connect(cfg, args.node, keys_file=args.keys,
                             timeout=args.timeout) as control:
            result = action(control, args)
    except ControlError as error:
        print(f"mongoose: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(tabular.to_json(result))
    elif show is not None:
        text = show(result)
        if text:
            print(text)
    return EXIT_OK


def add_node_commands(commands: argparse._SubParsersAction,
                      config_option: argparse.ArgumentParser) -> None:
    parents = [config_option, connection_options()]

    def group(name: str, help_text: str) -> argparse._SubParsersAction:
        parser = commands.add_parser(name, help=help_text, description=help_text + ".")
        return parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(where: argparse._SubParsersAction, name: str, help_text: str,
                action: Callable[[Control, argparse.Namespace], Any],
                show: Callable[[Any], str] | None) -> argparse.ArgumentParser:
        parser = where.add_parser(name, parents=parents, help=help_text,
                                  description=help_text + ".")
        parser.set_defaults(func=lambda args: run_with_control(args, action, show))
        return parser

    session = group("session", "list, count and kick the sessions of the running node's "
                    "cluster")
    command(session, "list", "list the sessions of HOST (default: every host): JID, node, "
            "worker, priority, peer address, TLS",
            lambda c, a: c.sessions(host=a.host),
            lambda rows: tabular.table(rows, ["jid", "node", "worker", "priority", "peer",
                                              "tls", "pid"]),
            ).add_argument("host", metavar="HOST", nargs="?")
    command(session, "count", "print the number of sessions of HOST (default: all)",
            lambda c, a: len(c.sessions(host=a.host, details=False)), str,
            ).add_argument("host", metavar="HOST", nargs="?")
    kick = command(session, "kick", "end the sessions of a JID (bare: all its resources) "
                   "with a policy-violation stream error",
                   lambda c, a: {"kicked": c.kick(a.jid, a.reason)},
                   lambda r: f"kicked {r['kicked']} session(s)")
    kick.add_argument("jid", metavar="JID")
    kick.add_argument("--reason", default="kicked by the administrator",
                      help="the text of the stream error the client gets")

    stanza = group("stanza", "send stanzas as a user")
    send = command(stanza, "send", "route a stanza from one JID to another, as if the "
                   "sender's session had sent it: a message with --body, or any stanza "
                   "with --stanza XML",
                   _send_stanza, lambda r: f"routed a {r['stanza']} to {r['to']}")
    send.add_argument("--from", dest="from_jid", required=True, metavar="JID")
    send.add_argument("--to", dest="to_jid", required=True, metavar="JID")
    body = send.add_mutually_exclusive_group(required=True)
    body.add_argument("--body", metavar="TEXT", help="a message with this body")
    body.add_argument("--stanza", metavar="XML", help="a whole <message/>, <presence/> or "
                      "<iq/> (from and to are set from --from and --to)")
    send.add_argument("--type", default="chat", help="the message type with --body "
                      "(default chat)")

    metric = group("metric", "read the node's metrics")
    command(metric, "get", "print the node's metrics (merged over its worker processes) "
            "whose name starts with PREFIX",
            lambda c, a: c.metrics(a.prefix), _show_metrics,
            ).add_argument("prefix", metavar="PREFIX", nargs="?", default="")

    cets = group("cets", "the replicated in-memory tables")
    command(cets, "status", "print every table's size, members and conflicts in every "
            "process of the cluster", lambda c, a: c.cets_status(),
            lambda rows: tabular.table(rows, ["process", "name", "type", "size",
                                              "conflicts", "nodes", "error"]))

    cluster = group("cluster", "the node's cluster membership")
    command(cluster, "members", "print the member nodes, those gone silent, and the "
            "addresses the node was told to join", lambda c, a: c.members(), _show_cluster)
    join = command(cluster, "join", "make the node join the cluster of the node at ADDRESS "
                   "(host:port of its cluster listener); waits until it is a member",
                   lambda c, a: c.join(a.address, a.wait), _show_cluster)
    join.add_argument("address", metavar="ADDRESS")
    join.add_argument("--wait", type=float, default=15.0, metavar="SECONDS",
                      help="how long to wait for the join (default 15)")
    command(cluster, "leave", "make the node leave its cluster; it keeps running alone",
            lambda c, a: c.leave(), _show_cluster)

    shell = commands.add_parser(
        "shell", parents=parents, help="an interactive Python shell attached to the node",
        description="Open an interactive Python prompt attached to the running node, with "
        "helpers to inspect and steer it (help() lists them). With -c CODE, or with a "
        "script on a stdin that is not a terminal, run that instead and exit.")
    shell.add_argument("-e", "--eval", dest="code", metavar="CODE",
                       help="run CODE with the helpers and exit")
    shell.set_defaults(func=_cmd_shell)


def _send_stanza(control: Control, args: argparse.Namespace) -> dict[str, Any]:
    from xml.sax.saxutils import escape, quoteattr

    if args.stanza is not None:
        xml = args.stanza
    else:
        xml = (f"<message type={quoteattr(args.type)}><body>{escape(args.body)}</body>"
               "</message>")
    name = control.send_stanza(args.from_jid, args.to_jid, xml)
    return {"stanza": name, "from": args.from_jid, "to": args.to_jid}


def _show_metrics(rows: list[dict[str, Any]]) -> str:
    return tabular.table(
        [{"name": r["name"], "labels": ",".join(f"{k}={v}" for k, v in r["labels"].items()),
          "value": r["value"]} for r in rows], ["name", "labels", "value"])


def _show_cluster(members: dict[str, Any]) -> str:
    lines = [f"node: {members['node']}", "members: " + " ".join(members["nodes"])]
    if members.get("unavailable"):
        lines.append("unavailable: " + " ".join(members["unavailable"]))
    if members.get("discovered"):
        lines.append("discovered: " + " ".join(members["discovered"]))
    return "\n".join(lines)


def _cmd_shell(args: argparse.Namespace) -> int:
    from mongoose import shell
    from mongoose.cli import _load_or_report

    cfg = _load_or_report(args.config)
    if cfg is None:
        return EXIT_FAILURE
    try:
        control = Control.connect(cfg, args.node, keys_file=args.keys, timeout=args.timeout)
    except ControlError as error:
        print(f"mongoose: {error}", file=sys.stderr)
        return EXIT_FAILURE
    with control:
        return shell.run(control, args.code)
