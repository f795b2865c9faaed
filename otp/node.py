"""Processes of a node: the distributed runtime of one OS process, and the worker's main.

A node is a root process (worker 0) and W worker processes. Each of them runs one
:class:`otp.scheduler.Scheduler` and joins the cluster's mesh through
:class:`Runtime`, which binds the process's transport (ipc:// in the node's private
directory, tcp:// for other nodes), builds its :class:`otp.dist.Dist` and tears both
down again. The root supervises the workers as OS processes (``supervisors/node.py``);
a worker runs :func:`worker_main`.

The same :class:`Runtime` lets a process that is not a server node join a cluster as a
root with no workers: tests and tools do that to talk to a live cluster's actors. With
``hidden=True`` it joins as a hidden node, Erlang's term: it reaches every process but
is not a member (no CETS replica, no leader, not counted; see :mod:`otp.dist`).
:func:`otp.attach.attach` does all of that for an operator's shell.

Worker protocol
    The root starts a worker as ``python -m otp.worker --node NAME --worker N
    --ipc-dir DIR --root ADDRESS [--tcp-host HOST] [--keys FILE] [--app MODULE:FUNC]
    [--creation C]``. The worker binds its sockets, says hello to its root, starts the
    supervision tree that ``--app`` returns (a list of child specs under a
    ``one_for_one`` worker supervisor), then prints :data:`READY_LINE` on stdout so the
    root's supervisor starts the next worker only then. SIGTERM (or SIGINT) stops the
    tree right to left, leaves the mesh and exits 0. If its root dies, the kernel kills
    it (the root starts workers with a parent-death signal; see :mod:`otp.osproc`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from otp import curve
from otp import scheduler as scheduler_mod
from otp.cets import Cets
from otp.dist import Dist, new_creation
from otp.global_names import GlobalNames
from otp.transport import Transport

__all__ = ["READY_LINE", "Runtime", "worker_main"]

log = logging.getLogger("otp.node")

LEAVE_LINGER_S = 0.5
"""How long a root that closes waits, at most, for its ``leave`` notices to go out."""

READY_LINE = "otp-worker-ready"


class Runtime:
    """The distributed runtime of this OS process: scheduler, transport and dist.

    Create it, then ``await start()`` on the scheduler's loop; ``close()`` on the loop
    when done. ``ipc_dir`` is the node's private socket directory (made 0700 if new);
    ``tcp_host``/``tcp_port`` where other nodes reach this process (port 0: any free).
    ``hidden``: join as a hidden node (a root with no workers; see :mod:`otp.dist`).
    """

    def __init__(
        self,
        scheduler: scheduler_mod.Scheduler,
        *,
        ipc_dir: str | Path,
        tcp_host: str | None = "127.0.0.1",
        tcp_port: int = 0,
        keys: curve.CurveKeys | None = None,
        root_address: str | None = None,
        heartbeat_interval: float = 1.0,
        node_timeout: float = 4.0,
        hwm: int = 10_000,
        hidden: bool = False,
    ) -> None:
        self.scheduler = scheduler
        self.ipc_dir = Path(ipc_dir)
        self.tcp_host = tcp_host
        self.tcp_port = tcp_port
        self.keys = keys
        self.dist = Dist(
            scheduler,
            creation=scheduler.creation,
            root_address=root_address,
            heartbeat_interval=heartbeat_interval,
            node_timeout=node_timeout,
            hidden=hidden,
        )
        self.hidden = hidden
        self.hwm = hwm
        self.transport: Transport | None = None

    @property
    def ipc_address(self) -> str:
        return f"ipc://{self.ipc_dir / f'w{self.scheduler.worker}'}"

    async def start(self) -> None:
        """Bind this process's sockets and take its place in the mesh."""
        self.ipc_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        bind = [self.ipc_address]
        if self.tcp_host is not None:
            bind.append(f"tcp://{self.tcp_host}:{self.tcp_port}")
        self.transport = Transport(
            self.scheduler.loop,
            name=(self.scheduler.node, self.scheduler.worker),
            bind=bind,
            curve=self.keys,
            hwm=self.hwm,
            on_items=self.dist.on_items,
            on_peer_event=self.dist.on_peer_event,
        )
        self.transport.start()
        self.dist.attach(self.transport)
        self.global_names = GlobalNames(self.dist)
        self.cets = Cets(self.dist)

    def tcp_address(self) -> str | None:
        """Where other nodes reach this process (the real port once started)."""
        assert self.transport is not None
        for address in self.transport.addresses:
            if address.startswith("tcp://"):
                return address
        return None

    def close(self) -> None:
        """Leave the mesh and close the sockets (removing our ipc socket file)."""
        self.dist.close()
        if self.transport is not None:
            # Let the leave notices go out before the sockets close: flushed to ZeroMQ
            # now, and written by its I/O thread while close lingers (a root only).
            with contextlib.suppress(Exception):
                self.transport.flush()
            self.transport.close(linger=LEAVE_LINGER_S if self.dist.is_root else 0.0)
        if self.scheduler.dist is self.dist:
            self.scheduler.dist = None


def _parse_worker_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m otp.worker")
    parser.add_argument("--node", required=True)
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--ipc-dir", required=True)
    parser.add_argument("--root", required=True, help="the root process's ipc address")
    parser.add_argument("--tcp-host", default="127.0.0.1")
    parser.add_argument("--keys", default=None, help="the cluster's CURVE key file")
    parser.add_argument("--app", default=None, help="module:function returning child specs")
    parser.add_argument("--app-arg", action="append", default=[],
                        help="an argument for the --app function (repeatable)")
    parser.add_argument("--creation", type=int, default=None)
    parser.add_argument("--log-format", default="json", choices=["json", "text"])
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-file", default=None,
                        help="append the log to this file (default: stderr)")
    return parser.parse_args(argv)


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a worker process; returns its exit code."""
    args = _parse_worker_args(sys.argv[1:] if argv is None else argv)
    with contextlib.suppress(ImportError):
        from mongoose import logs

        logs.setup(args.log_level, args.log_format, path=args.log_file)
    creation = args.creation if args.creation is not None else new_creation()
    scheduler = scheduler_mod.Scheduler(node=args.node, worker=args.worker, creation=creation)
    scheduler_mod.install(scheduler)
    keys = curve.load(args.keys) if args.keys else None
    runtime = Runtime(
        scheduler,
        ipc_dir=args.ipc_dir,
        tcp_host=args.tcp_host or None,
        keys=keys,
        root_address=args.root,
    )
    try:
        return scheduler.run(_worker(runtime, args.app, args.app_arg))
    finally:
        scheduler_mod.uninstall(scheduler)


async def _worker(runtime: Runtime, app: str | None, app_args: list[str]) -> int:
    from otp.supervisor import Supervisor

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await runtime.start()
    # Ready means "reachable": wait until our root lists us in the view it publishes, so
    # the root's supervisor starts the next worker (and the node joins its seeds) only
    # once the node's entry names this worker.
    await runtime.dist.listed()
    children: list[Any] = []
    strategy = "one_for_one"
    if app:
        function = _load_app(app)
        children = function(*app_args)
        # The app's module may name its root strategy (OTP: the application's top sup).
        strategy = getattr(importlib.import_module(function.__module__), "STRATEGY", strategy)
    import otp

    worker_sup = Supervisor.start(strategy=strategy, children=children)
    await otp.started(worker_sup)
    otp.register("worker_sup", worker_sup.pid)
    scheduler = runtime.scheduler
    log.info(
        "worker is up",
        extra={"what": "worker_up", "node": scheduler.node, "worker": scheduler.worker,
               "os_pid": os.getpid()},
    )
    print(READY_LINE, flush=True)
    await stop.wait()
    await worker_sup.stop(block=False)
    runtime.close()
    log.info("worker stopped", extra={"what": "worker_stopped", "worker": scheduler.worker})
    return 0


def _load_app(path: str) -> Callable[..., list[Any]]:
    module_name, _, func = path.partition(":")
    return getattr(importlib.import_module(module_name), func)
