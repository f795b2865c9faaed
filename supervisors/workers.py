"""``workers_sup``: the node's worker OS processes, supervised by the root process.

Each worker is a :class:`WorkerProcess` child (an :class:`otp.osproc.OsProcess` running
``python -m otp.worker``), permanent, started left to right: worker N+1 starts only
once worker N has printed its ready line, i.e. has bound its sockets, joined the mesh
and started its own supervision tree. When a worker process dies (crash, ``kill -9``),
the root's distribution layer is told at once -- so every process of the cluster sees
its pids go ``noconnection`` -- and the supervisor starts a new process in its place,
which joins with a new incarnation (its pids never collide with the old ones).

Restart intensity is per node: ``max(3, W)`` restarts in 10 seconds. A machine that
kills a worker more often than that has a problem a restart loop will not fix, and the
node stops (the root's supervisor escalates), as an Erlang node whose application
supervisor gives up.

The worker's own tree is ``supervisors.worker:children`` (see there).
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

from otp.node import READY_LINE, Runtime
from otp.osproc import SHUTDOWN_MARGIN, OsProcess
from otp.supervisor import ChildSpec, Supervisor

__all__ = ["WorkerProcess", "worker_count", "workers_sup_spec"]

TERM_TIMEOUT = 5.0
"""Seconds a worker gets between SIGTERM and SIGKILL when the node stops."""


def worker_count(configured: int) -> int:
    """Workers to run: the configured number, or one per CPU core when it is 0."""
    return configured or os.cpu_count() or 1


class WorkerProcess(OsProcess):
    """A worker OS process whose death the root's distribution layer learns at once."""

    def __init__(self, argv: list[str], *, worker: int, runtime: Runtime, **kwargs: Any) -> None:
        super().__init__(argv, **kwargs)
        self.worker = worker
        self.runtime = runtime

    def _terminate(self) -> None:
        super()._terminate()
        self.runtime.dist.worker_lost(self.worker)


def worker_argv(runtime: Runtime, worker: int, *, keys_file: str | None,
                log_format: str, log_level: str, config_file: str | None = None,
                log_file: str | None = None) -> list[str]:
    """The command line of worker ``worker`` of this node."""
    scheduler = runtime.scheduler
    argv = [
        sys.executable, "-m", "otp.worker",
        "--node", scheduler.node,
        "--worker", str(worker),
        "--ipc-dir", str(runtime.ipc_dir),
        "--root", runtime.ipc_address,
        "--tcp-host", runtime.tcp_host or "",
        "--app", "supervisors.worker:children",
        "--log-format", log_format,
        "--log-level", log_level,
    ]
    if log_file:
        argv += ["--log-file", log_file]
    if keys_file:
        argv += ["--keys", keys_file]
    if config_file:
        argv += ["--app-arg", config_file]
    return argv


def workers_sup_spec(runtime: Runtime, count: int, *, keys_file: str | None,
                     log_format: str, log_level: str, config_file: str | None = None,
                     log_file: str | None = None) -> ChildSpec:
    """The child spec of ``workers_sup`` with ``count`` worker processes."""
    children = []
    for n in range(1, count + 1):
        argv = worker_argv(runtime, n, keys_file=keys_file, log_format=log_format,
                           log_level=log_level, config_file=config_file, log_file=log_file)
        start = functools.partial(
            WorkerProcess.start, argv, worker=n, runtime=runtime, name=f"worker{n}",
            ready_line=READY_LINE, term_timeout=TERM_TIMEOUT,
        )
        shutdown = int((TERM_TIMEOUT + SHUTDOWN_MARGIN) * 1000)
        children.append(ChildSpec(f"worker{n}", start, shutdown=shutdown))
    start_sup = functools.partial(
        Supervisor.start, "one_for_one", max(3, count), 10, children
    )
    return ChildSpec("workers_sup", start_sup, type="supervisor")
