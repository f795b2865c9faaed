"""``mongoose shell``: an interactive Python prompt attached to a live node.

Like an Erlang remote shell with observer's views, on :class:`mongoose.control.Control`
(a hidden node of the cluster, authenticated with its keys). The prompt is
prompt_toolkit's: history kept in ``~/.mongoose_shell_history``, Tab completion of names
and attributes, multi-line input (a line that opens a block continues with ``...``
until an empty line). Code runs in this process, never in the node's: a helper is a few
messages to the node's actors, each answered from memory on the node's loop, and waits
at most the control timeout, after which it says which process did not answer.

Helpers (:class:`Helpers`; ``help(name)`` shows each docstring): ``nodes()``,
``workers()``, ``actors(filter)``, ``tree()``, ``top()``, ``state(pid)``, ``send(pid,
msg)``, ``ask(pid, msg, timeout)``, ``kill(pid, reason)``, ``tables()``, ``lookup(table,
key)``, ``sessions(user)``, ``metrics(prefix)``, ``trace(jid, seconds)``. Lists come
back as :class:`Rows` (a list that shows itself as a table), dicts as :class:`Record`
and trees as :class:`Tree`: printed readably at the prompt, plain data in a script.

Without a terminal (``-e CODE``, or a script piped to stdin) the code runs with the same
helpers and the shell exits: 0, or 1 if the code raised.
"""

from __future__ import annotations

import code
import contextlib
import datetime
import os
import pydoc
import select
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mongoose import tabular
from mongoose.control import Control

__all__ = ["Helpers", "Record", "Rows", "Tree", "run"]

HISTORY_FILE = Path.home() / ".mongoose_shell_history"


class Rows(list):
    """A list of dicts that shows itself as a table (``columns``: which keys)."""

    def __init__(self, rows: Any = (), columns: list[str] | None = None) -> None:
        super().__init__(rows)
        self.columns = columns

    def __repr__(self) -> str:
        return tabular.table(self, self.columns)


class Record(dict):
    """A dict that shows itself one ``key: value`` per line."""

    def __repr__(self) -> str:
        width = max((len(str(k)) for k in self), default=0)
        return "\n".join(f"{str(k).ljust(width)}  {_show(v)}" for k, v in self.items())


class Tree(list):
    """Supervision trees (the processes' answers) that show themselves indented."""

    def __repr__(self) -> str:
        lines: list[str] = []
        for process in self:
            lines.append(f"{process['node']} worker {process['worker']}"
                         + (f"  ({process['error']})" if process.get("error") else ""))
            for root in process["trees"]:
                _tree_lines(root, 1, lines)
        return "\n".join(lines)


def _tree_lines(node: dict[str, Any], depth: int, lines: list[str]) -> None:
    label = node.get("id") or ""
    extra = f" {node['restart']}" if node.get("restart") else ""
    lines.append(f"{'  ' * depth}{label}  {node['pid']}  {node['kind']}{extra}")
    for child in node.get("children", ()):
        _tree_lines(child, depth + 1, lines)
    if node.get("more"):
        lines.append(f"{'  ' * (depth + 1)}... {node['more']} more")


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text.replace("\n", "\n    ")


class Helpers:
    """The shell's helpers, bound to one attachment; each is also a plain method."""

    def __init__(self, control: Control, out: Any = None) -> None:
        self.control = control
        self.out = out or sys.stdout

    def namespace(self) -> dict[str, Any]:
        names = ["nodes", "workers", "actors", "tree", "top", "state", "send", "ask", "kill",
                 "tables", "lookup", "sessions", "metrics", "trace"]
        namespace: dict[str, Any] = {name: getattr(self, name) for name in names}
        namespace.update(control=self.control, Pid=_pid_type(), help=self.help)
        return namespace

    def help(self, what: Any = None) -> None:
        """help(): the helpers; help(helper): its documentation."""
        if what is None:
            print(banner(self.control.node), file=self.out)
            return
        print(pydoc.plain(pydoc.render_doc(what, title="%s")), file=self.out)

    def nodes(self) -> Rows:
        """The cluster's member nodes: status, worker processes, uptime, actors, hosts."""
        return Rows(self.control.nodes(), ["node", "status", "workers", "uptime_s", "actors",
                                           "hosts"])

    def workers(self, node: str | None = None) -> Rows:
        """The OS processes of a node (default: the attached one; "*": every node):
        worker number, OS pid, actors, queued messages, resident memory, uptime."""
        rows = self.control.workers(node)
        columns = ["node", "worker", "os_pid", "actors", "mailbox_total", "rss_bytes",
                   "uptime_s"]
        return Rows(rows, [*columns, "error"] if any("error" in r for r in rows) else columns)

    def actors(self, filter: str | None = None, node: str | None = None,
               limit: int | None = None) -> Rows:
        """Live actors of a node's processes ("*": every node), optionally those whose
        class name contains ``filter`` (case-insensitive) or registered as ``filter``:
        pid, kind, supervisor, mailbox length, messages handled, memory estimate."""
        return Rows(self.control.actors(filter, node, limit),
                    ["pid", "kind", "names", "parent", "mailbox", "handled", "memory"])

    def tree(self, node: str | None = None) -> Tree:
        """The supervision trees of a node's root process and workers: child id, pid,
        kind and restart type of every supervisor and child."""
        return Tree(self.control.tree(node))

    def top(self, interval: float = 1.0, rounds: int | None = None, n: int = 15,
            node: str | None = "*") -> Rows:
        """A live view of the busiest actors (longest mailboxes, then most messages
        handled since the last refresh), refreshed every ``interval`` seconds until a key
        is pressed (or ``rounds`` refreshes; one without a terminal). Returns the last
        view."""
        if rounds is None and not sys.stdin.isatty():
            rounds = 1  # a script has no key to press
        last: dict[Any, int] = {}
        view = Rows([], ["pid", "kind", "mailbox", "rate", "handled", "memory"])
        with _keypress() as pressed:
            done = 0
            while True:
                started = time.monotonic()
                rows = []
                for actor in self.control.actors(None, node):
                    handled = actor.get("handled", 0)
                    previous = last.get(actor["pid"])
                    rate = (handled - previous) / interval if previous is not None else 0.0
                    last[actor["pid"]] = handled
                    rows.append({**actor, "rate": round(rate, 1)})
                rows.sort(key=lambda a: (a["mailbox"], a["rate"], a["handled"]), reverse=True)
                view = Rows(rows[:n], view.columns)
                self._screen(f"top: {len(rows)} actors, every {interval:g} s; press a key "
                             "to stop\n" + repr(view))
                done += 1
                if rounds is not None and done >= rounds:
                    break
                if pressed(max(0.0, interval - (time.monotonic() - started))):
                    break
        return view

    def _screen(self, text: str) -> None:
        if self.out.isatty():
            self.out.write("\x1b[H\x1b[2J")
        self.out.write(text + "\n")
        self.out.flush()

    def state(self, pid: Any) -> Record:
        """An actor's state: its fields (bounded reprs) and runtime info (links, mailbox,
        names). ``pid`` as a Pid or its printed form "<node.worker.id>"."""
        answer = self.control.state(pid)
        fields = answer.get("fields", {})
        return Record({"pid": answer.get("pid"), "kind": answer.get("kind"), **fields,
                       "(info)": answer.get("info")})

    def send(self, pid: Any, message: Any) -> None:
        """Send ``message`` to ``pid`` (anywhere in the cluster); returns at once."""
        self.control.send(pid, message)

    def ask(self, pid: Any, message: Any, timeout: float = 5.0) -> Any:
        """Ask ``pid`` and wait at most ``timeout`` seconds for its answer."""
        return self.control.ask(pid, message, timeout)

    def kill(self, pid: Any, reason: Any = "kill") -> None:
        """Send ``pid`` an exit signal; ``"kill"`` (the default) cannot be trapped. Its
        supervisor restarts it as its restart type says: see tree() afterwards."""
        self.control.kill(pid, reason)

    def tables(self, node: str | None = None) -> Rows:
        """The CETS tables of a node (as its first worker holds them): type, size,
        members, conflicts."""
        return Rows(self.control.tables(node), ["name", "type", "size", "conflicts",
                                                "members"])

    def lookup(self, table: str, key: Any, node: str | None = None) -> list[Any]:
        """The records of ``table`` under ``key``, from a worker's local replica."""
        return self.control.lookup(table, key, node)

    def sessions(self, user: str | None = None, host: str | None = None) -> Rows:
        """The sessions of a user (bare or full JID, or a name of ``host``), or all:
        JID, node, worker, priority, peer address, TLS, pid."""
        return Rows(self.control.sessions(user, host),
                    ["jid", "node", "worker", "priority", "peer", "tls", "pid"])

    def metrics(self, prefix: str = "") -> Rows:
        """The node's metrics (merged over its processes) whose name starts with
        ``prefix``, as on its Prometheus page."""
        return Rows([{**r, "labels": ",".join(f"{k}={v}" for k, v in r["labels"].items())}
                     for r in self.control.metrics(prefix)], ["name", "labels", "value"])

    def trace(self, jid: str, seconds: float = 10.0) -> Rows:
        """Print the stanzas that ``jid`` (bare: every resource) sends and receives, live,
        on every worker of every node, for ``seconds`` or until a key is pressed."""
        def show(event: dict[str, Any]) -> None:
            stamp = datetime.datetime.fromtimestamp(event["t"]).strftime("%H:%M:%S.%f")[:-3]
            arrow = "<-" if event["dir"] == "sent" else "->"
            self.out.write(f"{stamp} {event['jid']} {arrow} {event['xml']}\n")
            self.out.flush()

        self.out.write(f"tracing {jid} for {seconds:g} s\n")
        self.out.flush()
        with _keypress() as pressed:
            events = self.control.trace(jid, seconds, show, stop=lambda: pressed(0))
        return Rows(events, ["dir", "jid", "node", "worker", "xml"])


def _pid_type() -> Any:
    from otp import Pid

    return Pid


@contextlib.contextmanager
def _keypress() -> Iterator[Any]:
    """A function ``pressed(timeout)``: True once a key is pressed on the terminal
    (cbreak mode meanwhile, restored on exit); never True without a terminal."""
    if not sys.stdin.isatty():
        yield lambda timeout: time.sleep(timeout) or False
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        def pressed(timeout: float) -> bool:
            ready, _, _ = select.select([fd], [], [], timeout)
            if ready:
                os.read(fd, 1024)
                return True
            return False

        yield pressed
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def banner(node: str) -> str:
    return BANNER.format(node=node)


BANNER = """\
Attached to {node}. Helpers (help(name) for more):
  nodes()  workers(node)  actors(filter, node)  tree(node)  top(interval)
  state(pid)  send(pid, msg)  ask(pid, msg, timeout)  kill(pid, reason)
  tables()  lookup(table, key)  sessions(user)  metrics(prefix)  trace(jid, seconds)
Results are plain lists and dicts. Ctrl-D leaves (the node keeps running)."""


def run(control: Control, source: str | None = None) -> int:
    """Run the shell on ``control``: interactive on a terminal, else ``source`` (or
    stdin's script) once. Returns the exit code."""
    namespace = Helpers(control).namespace()
    if source is None and not sys.stdin.isatty():
        source = sys.stdin.read()
    if source is not None:
        return _run_code(source, namespace)
    print(banner(control.node))
    _interact(namespace)
    return 0


def _run_code(source: str, namespace: dict[str, Any]) -> int:
    """Run a script; an expression alone prints its value, as at the prompt."""
    try:
        try:
            compiled = compile(source, "<shell>", "eval")
        except SyntaxError:
            exec(compile(source, "<shell>", "exec"), namespace)
        else:
            value = eval(compiled, namespace)
            if value is not None:
                print(repr(value))
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 0
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1
    return 0


def _interact(namespace: dict[str, Any]) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    from mongoose.shell_completion import NamespaceCompleter

    try:
        history: Any = FileHistory(str(HISTORY_FILE))
    except OSError:
        history = InMemoryHistory()
    session: PromptSession[str] = PromptSession(
        history=history, completer=NamespaceCompleter(namespace), complete_while_typing=False)
    interpreter = code.InteractiveInterpreter(namespace)
    lines: list[str] = []
    while True:
        try:
            line = session.prompt("... " if lines else ">>> ")
        except KeyboardInterrupt:
            lines.clear()
            print("KeyboardInterrupt")
            continue
        except EOFError:
            print()
            return
        lines.append(line)
        try:
            more = interpreter.runsource("\n".join(lines), "<shell>", "single")
        except KeyboardInterrupt:
            print("KeyboardInterrupt")
            more = False
        except SystemExit:
            return
        if not more:
            lines.clear()
