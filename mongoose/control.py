"""The operator's channel to a live node: what the shell and the ``mongoose`` command use.

:meth:`Control.connect` attaches this process to the node's cluster as a *hidden node*
(:mod:`otp.attach`): a root process with no workers, authenticated by the same CURVE
keys as the cluster's own traffic, so a process without the keys file cannot attach and
nothing new is opened on the node. Erlang's remote shell is a hidden node for the same
reason. Once attached, every actor of every node is a pid away, and each method here is
a few asks:

* ``introspect`` (in every process, :mod:`otp.introspect`): processes, actors, trees,
  actor state, CETS tables;
* ``node_status`` (the node's root, :mod:`mongoose.status`): status and cluster
  membership, join and leave;
* ``metrics`` (the node's root): the merged metrics, as on its Prometheus page;
* ``admin`` (every worker, :mod:`mongoose.admin`): sessions, kick, stanza injection,
  accounts, traces.

Every method returns plain data (dicts and lists, pids as :class:`otp.Pid`) and waits at
most ``timeout`` seconds per ask; a node or process that does not answer in time raises
:class:`ControlError` saying which one, it never hangs. The node's loops are never
blocked by these calls: each ask is one message handled like any other.

The node addressed: the one whose cluster address (``[cluster] host:port``) is in the
config, or ``node`` given as ``tcp://host:port``, ``host:port`` or a node name of the
cluster (``name@host``, reached through the config's node).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka

import otp
from mongoose.config import Config
from otp import curve
from otp.codec import RemoteError

__all__ = ["Control", "ControlError", "parse_pid"]

DEFAULT_TIMEOUT = 5.0


class ControlError(Exception):
    """What the operator needs to know about a request that failed (one line)."""


def parse_pid(value: Any) -> otp.Pid:
    """A pid from a :class:`otp.Pid`, its printed form ``<node.worker.id>`` or a
    ``[node, worker, id]`` list (as ``--json`` output and msgpack give it)."""
    if isinstance(value, otp.Pid):
        return value
    if isinstance(value, list | tuple) and len(value) == 3:
        return otp.Pid(str(value[0]), int(value[1]), int(value[2]))
    text = str(value).strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    node, _, rest = text.rpartition(".")
    node, _, worker = node.rpartition(".")
    try:
        return otp.Pid(node, int(worker), int(rest))
    except ValueError:
        raise ControlError(f"not a pid: {value!r} (expected <node.worker.id>)") from None


def node_address(config: Config) -> str:
    host = config.cluster.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"tcp://{host}:{config.cluster.port}"


def _quiet_runtime_logs() -> None:
    """Keep this process's runtime chatter (a peer gone silent, items dropped for a
    hidden node that left) off the operator's terminal, unless logging is configured:
    without a handler, Python would print every warning on stderr."""
    if not logging.getLogger().handlers:
        for name in ("otp", "pykka"):
            logging.getLogger(name).addHandler(logging.NullHandler())


def local_address_towards(address: str) -> str:
    """This host's address on the route to ``address`` (tcp://host:port): where that
    node can reach the shell back (no packet is sent to find it)."""
    import socket

    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))
            return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"


class Control:
    """An attachment to a live cluster, aimed at one of its nodes (see module docstring)."""

    def __init__(self, attached: Any, node: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.attached = attached
        self.node = node
        self.timeout = timeout

    @classmethod
    def connect(
        cls,
        config: Config,
        node: str | None = None,
        *,
        keys_file: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Control:
        """Attach to the node of ``config`` (or ``node``); :class:`ControlError` if the
        keys are missing or nobody answers."""
        from otp.attach import AttachError, attach

        _quiet_runtime_logs()
        path = Path(keys_file) if keys_file else config.data_path(config.cluster.keys_file)
        try:
            keys = curve.load(path)
        except FileNotFoundError:
            raise ControlError(
                f"no cluster keys at {path}: the node has not run with this config, or its "
                "keys file is elsewhere (--keys FILE)") from None
        except (OSError, ValueError) as error:
            raise ControlError(f"cannot read the cluster keys {path}: {error}") from None
        name = None
        if node is None:
            address = node_address(config)
        elif "://" in node:
            address = node
        elif "@" in node:
            address, name = node_address(config), node
        else:
            address = f"tcp://{node}"
        try:
            attached = attach(address, keys, timeout=timeout,
                              tcp_host=local_address_towards(address))
        except AttachError as error:
            raise ControlError(str(error)) from None
        target = name or attached.target
        if target not in attached.nodes():
            attached.close()
            members = ", ".join(attached.nodes())
            raise ControlError(f"no node {target} in the cluster (members: {members})")
        return cls(attached, target, timeout)

    def close(self) -> None:
        self.attached.close()

    def __enter__(self) -> Control:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- asking ------------------------------------------------------------------------------

    def _wait(self, future: Any, what: str, timeout: float | None = None,
              deadline: float | None = None) -> Any:
        """The answer of ``future`` within ``timeout`` seconds (or by the monotonic
        ``deadline`` of a batch of asks made with that timeout)."""
        timeout = self.timeout if timeout is None else timeout
        wait = timeout if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return future.get(timeout=wait)
        except pykka.Timeout:
            raise ControlError(f"{what} did not answer within {timeout:g} s") from None
        except pykka.ActorDeadError as error:
            raise ControlError(f"{what}: {error}") from None
        except RemoteError as error:
            if error.type_name.endswith(".AdminError"):  # a refusal worded for the operator
                raise ControlError(error.message) from None
            raise ControlError(f"{what}: {error.message}") from None
        except otp.NoProcError as error:
            raise ControlError(f"{what}: no such actor ({error})") from None

    def call(self, node: str, worker: int, name: str, message: Any,
             timeout: float | None = None) -> Any:
        """Ask the actor registered as ``name`` in process ``(node, worker)``."""
        future = otp.ask_named(node, worker, name, message)
        return self._wait(future, f"{name} at {node}.{worker}", timeout)

    def call_all(self, processes: list[tuple[str, int]], name: str, message: Any,
                 ) -> list[tuple[tuple[str, int], Any]]:
        """Ask ``name`` in every process at once; (process, answer or ControlError)."""
        futures = [(p, otp.ask_named(p[0], p[1], name, message)) for p in processes]
        deadline = time.monotonic() + self.timeout
        results = []
        for process, future in futures:
            try:
                what = f"{name} at {process[0]}.{process[1]}"
                results.append((process, self._wait(future, what, deadline=deadline)))
            except ControlError as error:
                results.append((process, error))
        return results

    def processes(self, node: str | None = None) -> list[tuple[str, int]]:
        """The (node, worker) processes of ``node``, or of every member if ``node`` is
        "*"; default: the addressed node."""
        node = node or self.node
        return [p for p in self.attached.processes() if node == "*" or p[0] == node]

    def worker(self, node: str | None = None) -> tuple[str, int]:
        """The first worker process of ``node`` (the addressed node by default)."""
        node = node or self.node
        workers = [p for p in self.processes(node) if p[1] != 0]
        if not workers:
            raise ControlError(f"{node} has no worker process running")
        return workers[0]

    # -- the runtime -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return self.call(self.node, 0, "node_status", "status")

    def nodes(self) -> list[dict[str, Any]]:
        """Every member node: name, workers, uptime, actors (what its root says)."""
        rows = []
        for (node, _), answer in self.call_all(
                [p for p in self.processes("*") if p[1] == 0], "node_status", "status"):
            if isinstance(answer, ControlError):
                rows.append({"node": node, "status": f"no answer: {answer}"})
                continue
            workers = len([p for p in self.processes(node) if p[1] != 0])
            rows.append({"node": node, "status": answer.get("status"), "workers": workers,
                         "uptime_s": answer.get("uptime_s"), "actors": answer.get("actors"),
                         "hosts": answer.get("hosts")})
        return rows

    def workers(self, node: str | None = None) -> list[dict[str, Any]]:
        """Every process of ``node`` ("*": all nodes): OS pid, actors, mailboxes, memory."""
        rows = []
        for (n, w), answer in self.call_all(self.processes(node), "introspect", ("process",)):
            if isinstance(answer, ControlError):
                rows.append({"node": n, "worker": w, "error": str(answer)})
            else:
                rows.append(answer)
        return rows

    def actors(self, kind: str | None = None, node: str | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
        """Live actors of every process of ``node``, optionally of one kind (class name
        substring) or registered name."""
        rows: list[dict[str, Any]] = []
        for _, answer in self.call_all(self.processes(node), "introspect",
                                       ("actors", kind, limit)):
            if isinstance(answer, ControlError):
                raise answer
            rows.extend(answer)
        return rows

    def tree(self, node: str | None = None) -> list[dict[str, Any]]:
        """The supervision trees of each process of ``node``."""
        return [{"node": n, "worker": w, "trees": answer if not isinstance(answer, ControlError)
                 else [], "error": str(answer) if isinstance(answer, ControlError) else None}
                for (n, w), answer in self.call_all(self.processes(node), "introspect",
                                                    ("tree",))]

    def state(self, pid: Any) -> dict[str, Any]:
        pid = parse_pid(pid)
        return self.call(pid.node, pid.worker, "introspect", ("state", pid))

    def send(self, pid: Any, message: Any) -> None:
        otp.send(parse_pid(pid), message)

    def ask(self, pid: Any, message: Any, timeout: float | None = None) -> Any:
        pid = parse_pid(pid)
        return self._wait(otp.ask(pid, message), f"{pid}", timeout)

    def kill(self, pid: Any, reason: Any = "kill") -> None:
        """Send ``pid`` an exit signal (``"kill"``: untrappable, as Erlang's exit/2)."""
        otp.exit(parse_pid(pid), reason)

    def tables(self, node: str | None = None) -> list[dict[str, Any]]:
        """CETS tables as the first worker of ``node`` holds them."""
        return self.call(*self.worker(node), "introspect", ("tables",))

    def lookup(self, table: str, key: Any, node: str | None = None) -> list[Any]:
        return self.call(*self.worker(node), "introspect", ("lookup", table, key))

    def cets_status(self) -> list[dict[str, Any]]:
        """Every process's view of every table: size, members, conflicts."""
        rows = []
        for (n, w), answer in self.call_all(self.processes("*"), "introspect", ("tables",)):
            if isinstance(answer, ControlError):
                rows.append({"process": f"{n}.{w}", "name": None, "error": str(answer)})
                continue
            for status in answer:
                rows.append({"process": f"{n}.{w}", **status})
        return rows

    # -- the cluster -------------------------------------------------------------------------

    def members(self) -> dict[str, Any]:
        return self.call(self.node, 0, "node_status", ("cluster",))

    def join(self, address: str, wait: float = 10.0) -> dict[str, Any]:
        """Make the node join the cluster of the node at ``address`` (host:port or
        tcp://...); waits until that node is a member, or ``wait`` seconds."""
        if "://" not in address:
            address = f"tcp://{address}"
        before = set(self.members()["nodes"])
        self.call(self.node, 0, "node_status", ("join", address))
        deadline = time.monotonic() + wait
        while True:
            members = self.members()
            if set(members["nodes"]) - before:
                return members
            if time.monotonic() > deadline:
                raise ControlError(f"{self.node} asked {address} to join but no new node "
                                   f"appeared within {wait:g} s (is it running, with the "
                                   "same cluster keys?)")
            time.sleep(0.1)

    def leave(self) -> dict[str, Any]:
        """Make the node leave its cluster (it keeps running, alone)."""
        return self.call(self.node, 0, "node_status", ("leave",))

    # -- XMPP --------------------------------------------------------------------------------

    def admin(self, *request: Any, timeout: float | None = None) -> Any:
        return self.call(*self.worker(), "admin", tuple(request), timeout)

    def sessions(self, user: str | None = None, host: str | None = None,
                 details: bool = True) -> list[dict[str, Any]]:
        """Sessions of ``user`` (JID, or name with ``host``), of ``host``, or all; with
        ``details``, each session's state, peer address and TLS as it says itself."""
        found = self.admin("sessions", user, host)
        if details and len(found) <= 1000:
            futures = [otp.ask(s["pid"], ("info",)) for s in found]
            for session, future in zip(found, futures, strict=True):
                try:
                    info = future.get(timeout=self.timeout)
                except Exception:
                    info = {}
                session.update({k: info.get(k) for k in ("peer", "tls", "available")})
        return found

    def kick(self, jid: str, reason: str = "kicked by the administrator") -> int:
        return self.admin("kick", jid, reason)

    def send_stanza(self, from_jid: str, to_jid: str, xml: str) -> str:
        return self.admin("route", from_jid, to_jid, xml)

    def account(self, op: str, *args: Any) -> Any:
        return self.admin("account", op, list(args), timeout=max(self.timeout, 30.0))

    def metrics(self, prefix: str | None = None) -> list[dict[str, Any]]:
        """The node's metrics, merged over its processes, whose name starts with
        ``prefix``: ``{"name", "labels", "value"}`` (histograms as _count and _sum)."""
        return self.call(self.node, 0, "metrics", ("metrics", prefix or ""))

    @contextlib.contextmanager
    def tracing(self, jid: str, seconds: float) -> Iterator[queue.Queue[dict[str, Any]]]:
        """Start tracing ``jid`` on every worker of every node; yields a queue of trace
        events (see :mod:`mongoose.trace`), and stops the trace on exit."""
        events: queue.Queue[dict[str, Any]] = queue.Queue()
        collector = self.attached.run_sync(_Collector.start, events)
        workers = [p for p in self.processes("*") if p[1] != 0]
        try:
            for _, answer in self.call_all(workers, "admin", ("trace", jid, collector.pid,
                                                               seconds)):
                if isinstance(answer, ControlError):
                    raise answer
            yield events
        finally:
            for node, worker in workers:
                otp.send_named(node, worker, "admin", ("untrace", collector.pid))
            collector.stop(block=False)

    def trace(self, jid: str, seconds: float,
              on_event: Callable[[dict[str, Any]], None] | None = None,
              stop: Callable[[], bool] | None = None) -> list[dict[str, Any]]:
        """Collect ``jid``'s stanzas for ``seconds`` (or until ``stop()`` is true),
        calling ``on_event`` with each as it arrives; returns them all, in arrival order."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        with self.tracing(jid, seconds) as events:
            while (left := deadline - time.monotonic()) > 0:
                if stop is not None and stop():
                    break
                try:
                    event = events.get(timeout=min(left, 0.2))
                except queue.Empty:
                    continue
                seen.append(event)
                if on_event is not None:
                    on_event(event)
        return seen


class _Collector(otp.LoopActor):
    """The shell's end of a trace: puts each event on a thread-safe queue."""

    def __init__(self, events: queue.Queue[dict[str, Any]]) -> None:
        super().__init__()
        self.events = events

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, tuple) and message and message[0] == "trace":
            self.events.put(message[1])
            return None
        return super().on_receive(message)
