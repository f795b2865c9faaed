"""The node's supervision tree, and the node's main function.

``run(config)`` is what ``mongoose foreground`` calls. It installs this process's
scheduler (named after the node, worker 0: the root process), starts ``node_sup`` on the
loop in the main thread, logs ``node_up`` once every child has started, and waits for
SIGTERM or SIGINT (Ctrl-C). Then it stops the tree the OTP way -- children right to left,
each within its shutdown time -- logs ``node_stopped`` and returns exit code 0. A
second signal during the stop is ignored: the stop is bounded by the shutdown times.

Pidfile: given ``pidfile`` (the CLI passes ``<data_dir>/mongoose.pid``), the node creates
its directory (mode 0700) if missing before it starts, writes its OS pid there once it is
up (atomically: a reader sees no file or the whole pid), and removes the file when it
stops -- unless the file names another process by then. ``mongoose start`` waits for the
file, ``mongoose stop`` reads it; only a node killed outright leaves it behind (stale).

Cluster: before the tree starts, the root joins the node's mesh (:class:`otp.node.Runtime`):
it binds an ipc socket in a fresh private directory (mode 0700, removed at stop) for its
workers and a tcp socket on ``cluster.host:cluster.port`` for other nodes, CURVE-keyed
with ``cluster.keys_file`` (generated on first start when missing, mode 0600; every node
of a cluster needs the same file). Once the tree is up it joins ``cluster.seeds``. At
stop, the tree goes first (workers leave the mesh as they stop), then the root tells the
other nodes it leaves, so they see its pids go down at once.

The tree grows with the issues that add its parts (see shared/DESIGN.md): instrumentation,
cluster membership services and the admin endpoint become children of ``node_sup``.

    node_sup (one_for_one)
      metrics        the root's instrumentation; serves the node's merged /metrics page
                     and pushes to Graphite (mongoose.instrument.service)
      node_status    answers status queries and cluster join/leave (mongoose.status)
      introspect     answers the shell: actors, trees, actor state (otp.introspect)
      workers_sup    the worker OS processes 1..W (supervisors.workers)
      cets_discovery joins the nodes listed in a file or in the discovery_nodes table
                     (when configured; otp.discovery, mongoose.cets_discovery)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from functools import partial
from pathlib import Path

import otp
from mongoose.cets_discovery import NAME as DISCOVERY_NAME
from mongoose.cets_discovery import discovery_backend
from mongoose.config import Config
from mongoose.instrument.service import NodeMetrics
from mongoose.status import NodeStatus
from otp import curve
from otp import scheduler as scheduler_mod
from otp.discovery import Discovery
from otp.dist import new_creation
from otp.introspect import Introspect
from otp.node import Runtime
from otp.supervisor import ChildSpec, Supervisor
from supervisors.workers import worker_count, workers_sup_spec

__all__ = ["cluster_keys", "node_sup_children", "remove_pidfile", "run", "write_pidfile"]

log = logging.getLogger("mongoose.node")


def node_sup_children(
    config: Config,
    runtime: Runtime,
    *,
    keys_file: str | None,
    log_format: str = "json",
    log_file: str | None = None,
) -> list[ChildSpec]:
    """The child specs of ``node_sup``, left to right (start order)."""
    general = config.general
    discovery = config.internal_databases.cets
    children = [
        ChildSpec(id="metrics", start=partial(NodeMetrics.start, config)),
        ChildSpec(
            id="node_status",
            start=partial(NodeStatus.start, general.node_name, general.hosts),
        ),
        ChildSpec(id="introspect", start=Introspect.start),
        workers_sup_spec(
            runtime,
            worker_count(general.workers),
            keys_file=keys_file,
            log_format=log_format,
            log_file=log_file,
            log_level=general.loglevel,
            config_file=_config_file(config),
        ),
    ]
    tcp = runtime.tcp_address()
    own_address = tcp.removeprefix("tcp://") if tcp else None
    backend = discovery_backend(config, own_address)
    if backend is not None:
        children.append(
            ChildSpec(
                id="cets_discovery",
                start=partial(
                    Discovery.start,
                    backend,
                    own_address=own_address,
                    interval=discovery.discovery_interval,
                    name=DISCOVERY_NAME,
                ),
            )
        )
    return children


def _config_file(config: Config) -> str | None:
    """The file workers read the config from (the same file the node validated)."""
    if config.source.startswith("<"):
        return None
    return str(Path(config.source).resolve())


def prepare_certificates(config: Config) -> None:
    """Generate the self-signed certificate (once) before workers start, so that they do
    not race to create it; listeners with their own certificate files are left alone."""
    from mongoose import server

    for listener in config.listen.c2s:
        if listener.tls.mode != "none" and not listener.tls.certfile:
            server.certificate_paths(config, listener)
            return


def cluster_keys(config: Config) -> tuple[curve.CurveKeys, str]:
    """The cluster's CURVE keys and their file; generated on first start if missing."""
    path = Path(config.cluster.keys_file)
    if not path.is_absolute():
        path = Path(config.general.data_dir) / path
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        curve.save(curve.generate(), path)
        log.warning(
            "generated new cluster keys; copy this file to every node of the cluster",
            extra={"what": "cluster_keys_generated", "path": str(path)},
        )
    return curve.load(path), str(path.resolve())


def run(
    config: Config, pidfile: str | os.PathLike[str] | None = None, log_format: str = "json",
    log_file: str | None = None,
) -> int:
    """Run the node until SIGTERM/SIGINT; returns the process exit code.

    With ``pidfile``, the node's OS pid is written there once it is up and removed at
    the end (see the module docstring). ``log_format`` and ``log_file`` (None: stderr) are
    how the workers log, as the caller set up this process's logging.
    """
    path = Path(pidfile) if pidfile is not None else None
    if path is not None:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            log.critical(
                "cannot create the data directory",
                extra={"what": "node_start_failed", "reason": f"{path.parent}: {error}"},
            )
            return 1
    try:
        prepare_certificates(config)
    except (OSError, ValueError) as error:
        log.critical(
            "cannot create the TLS certificate",
            extra={"what": "node_start_failed", "reason": str(error)},
        )
        return 1
    try:
        keys, keys_file = cluster_keys(config)
    except (OSError, ValueError) as error:
        log.critical(
            "cannot read the cluster keys",
            extra={"what": "node_start_failed", "reason": str(error)},
        )
        return 1
    scheduler = scheduler_mod.Scheduler(
        node=config.general.node_name, worker=0, creation=new_creation()
    )
    scheduler_mod.install(scheduler)
    try:
        return scheduler.run(
            _main(config, scheduler, path, keys, keys_file, log_format, log_file))
    finally:
        if path is not None:
            remove_pidfile(path)
        scheduler_mod.uninstall(scheduler)
        scheduler.loop.close()


def write_pidfile(path: Path) -> None:
    """Write this process's pid to ``path``, replacing the file atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def remove_pidfile(path: Path) -> None:
    """Remove ``path`` if it holds this process's pid (a newer node's file stays)."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()


async def _main(
    config: Config,
    scheduler: scheduler_mod.Scheduler,
    pidfile: Path | None,
    keys: curve.CurveKeys,
    keys_file: str,
    log_format: str,
    log_file: str | None,
) -> int:
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, signum, stop_requested)
    started = time.monotonic()
    cluster = config.cluster
    ipc_dir = tempfile.mkdtemp(prefix="mongoose-")  # mode 0700
    runtime = Runtime(
        scheduler,
        ipc_dir=ipc_dir,
        tcp_host=cluster.host,
        tcp_port=cluster.port,
        keys=keys,
        heartbeat_interval=cluster.heartbeat_interval,
        node_timeout=cluster.node_timeout,
    )
    try:
        await runtime.start()
    except Exception as error:
        shutil.rmtree(ipc_dir, ignore_errors=True)
        log.critical(
            "cannot open the cluster sockets",
            extra={"what": "node_start_failed", "reason": f"{error!r}"},
        )
        return 1
    try:
        return await _serve(
            config, scheduler, runtime, pidfile, keys_file, log_format, log_file, started,
            stop_requested,
        )
    finally:
        runtime.close()
        shutil.rmtree(ipc_dir, ignore_errors=True)


async def _serve(
    config: Config,
    scheduler: scheduler_mod.Scheduler,
    runtime: Runtime,
    pidfile: Path | None,
    keys_file: str,
    log_format: str,
    log_file: str | None,
    started: float,
    stop_requested: asyncio.Event,
) -> int:
    children = node_sup_children(config, runtime, keys_file=keys_file, log_format=log_format,
                                 log_file=log_file)
    node_sup = Supervisor.start(strategy="one_for_one", children=children)
    try:
        await otp.started(node_sup)
    except otp.StartError as error:
        log.critical(
            "node failed to start",
            extra={"what": "node_start_failed", "reason": repr(error.reason)},
        )
        return 1
    otp.register("node_sup", node_sup.pid)
    if config.cluster.seeds:
        runtime.dist.join(f"tcp://{seed}" for seed in config.cluster.seeds)
    log.info(
        "node is up",
        extra={
            "what": "node_up",
            "node": config.general.node_name,
            "hosts": list(config.general.hosts),
            "pid": str(node_sup.pid),
            "start_ms": round((time.monotonic() - started) * 1000, 1),
            "os_pid": os.getpid(),
            "pidfile": str(pidfile) if pidfile is not None else None,
            "cluster_address": runtime.tcp_address(),
            "workers": worker_count(config.general.workers),
            "seeds": list(config.cluster.seeds),
        },
    )
    # Last: whoever sees the pidfile may rely on the node being up and logged so.
    if pidfile is not None:
        try:
            write_pidfile(pidfile)
        except OSError as error:
            log.critical(
                "cannot write the pidfile",
                extra={"what": "node_start_failed", "reason": f"{pidfile}: {error}"},
            )
            await node_sup.stop(block=False)
            return 1
    await stop_requested.wait()
    log.info("node is stopping", extra={"what": "node_stopping"})
    await node_sup.stop(block=False)
    log.info(
        "node stopped",
        extra={"what": "node_stopped", "actors_left": scheduler.statistics()["actors"]},
    )
    return 0


def _on_signal(signum: int, stop_requested: asyncio.Event) -> None:
    if stop_requested.is_set():
        log.info("already stopping", extra={"what": "node_signal_ignored", "signal": signum})
        return
    log.info(
        "stop requested",
        extra={"what": "node_stop_requested", "signal": signal.Signals(signum).name},
    )
    stop_requested.set()
