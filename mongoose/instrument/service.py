"""The instrument actors: one per process, and the node's metrics page and Graphite push.

:class:`InstrumentActor` (registered as ``instrument`` in every worker, the first child
of the worker's tree) owns its process's instrumentation: it installs the handlers
``[instrumentation.*]`` enables, makes itself the scheduler's lifecycle observer (so
every actor's start, end and restart becomes an event, :mod:`.runtime_events`), runs the
system, mailbox and CETS probes every ``probe_interval``, and answers ``"snapshot"`` with
its :class:`~mongoose.instrument.store.MetricStore`'s values.

Events reach the handlers by a function call on the emitting actor's turn, not as
messages to this actor: every actor of a process runs on the same loop thread, so the
handlers' state needs no lock either way, and a mailbox hop per event would cost more
than the event itself on the per-stanza path. What the actor owns is the handlers' life:
set up when it starts, removed (and the observer with them) when it stops.

:class:`NodeMetrics` is the same actor in the node's root process (registered as
``metrics``, a child of ``node_sup``), plus the outputs:

- **prometheus**: for each ``[[listen.http]]`` with a ``mongoose_prometheus_handler`` (or,
  with none, on ``[instrumentation.prometheus]``'s address, 127.0.0.1:9091), an HTTP
  server on the loop (:mod:`.http`). Each scrape asks every worker of the node for its
  snapshot (``otp.ask_named``; a worker that does not answer within
  :data:`WORKER_TIMEOUT` is left out of that page and logged), merges them with the
  root's own (:func:`~mongoose.instrument.exposition.merge`) and renders the text.
- **graphite**: every ``interval`` seconds the same merge, pushed to ``host:port`` in the
  plaintext protocol over one TCP connection; a failed push is logged
  (``what=graphite_push_failed``) and the next one sends the values of then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import otp
from mongoose import instrument
from mongoose.instrument import exposition, runtime_events
from mongoose.instrument.http import HttpServer

__all__ = ["NAME", "NODE_NAME", "WORKER_TIMEOUT", "InstrumentActor", "NodeMetrics"]

log = logging.getLogger("mongoose.instrument")

NAME = "instrument"
NODE_NAME = "metrics"
WORKER_TIMEOUT = 5.0


class InstrumentActor(otp.LoopActor):
    """A process's handlers, lifecycle observer and probes; answers ``"snapshot"``."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.store: instrument.MetricStore | None = None
        self.started_at = time.monotonic()

    def on_start(self) -> None:
        runtime_events.register()
        self.store = instrument.setup(self.config)
        otp.register(self.registered_name(), self.pid)
        if not instrument.handlers():
            return  # instrumentation off: no observer, no probes, nothing to pay
        scheduler = otp.current()
        scheduler.observer = runtime_events.LifecycleObserver()
        mailboxes = runtime_events.MailboxProbe(scheduler)
        instrument.probe("system_memory", {}, runtime_events.system_memory)
        instrument.probe("system_info", {}, lambda: runtime_events.system_info(scheduler))
        instrument.probe("system_up_time", {}, lambda: runtime_events.uptime(self.started_at))
        instrument.probe("cets_info", {}, lambda: runtime_events.cets_info(scheduler))
        instrument.process_registry.probe_callback(mailboxes.run)
        instrument.start_probes(scheduler.loop)

    def registered_name(self) -> str:
        return NAME

    def on_receive(self, message: Any) -> Any:
        if message == "snapshot":
            return self.snapshot()
        return super().on_receive(message)

    def snapshot(self) -> dict[str, Any]:
        return self.store.snapshot() if self.store is not None else {"events": {}}

    def on_stop(self) -> None:
        scheduler = otp.current()
        if isinstance(scheduler.observer, runtime_events.LifecycleObserver):
            scheduler.observer = None
        instrument.process_registry.remove_probes()
        instrument.set_handlers([])


class NodeMetrics(InstrumentActor):
    """The root process's instrument actor, serving the node's merged metrics."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.servers: list[HttpServer] = []
        self.graphite: exposition.GraphiteReporter | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def registered_name(self) -> str:
        return NODE_NAME

    async def on_start(self) -> None:  # type: ignore[override]
        super().on_start()
        section = self.config.instrumentation
        if section.prometheus is not None:
            for host, port, paths in self.endpoints():
                server = HttpServer(dict.fromkeys(paths, self.page))
                try:
                    bound = await server.start(host, port)
                except OSError as error:
                    raise RuntimeError(f"cannot serve metrics on {host}:{port}: "
                                       f"{error.strerror or error}") from None
                self.servers.append(server)
                log.info("metrics served", extra={
                    "what": "metrics_listener_started", "ip_address": host, "port": bound,
                    "paths": paths})
        if section.graphite is not None:
            self.graphite = exposition.GraphiteReporter(section.graphite.prefix)
            self.send_after(section.graphite.interval, "push")

    def endpoints(self) -> list[tuple[str, int, list[str]]]:
        """(ip address, port, paths) of every place the page is served."""
        listeners = [(h.ip_address, h.port,
                      [e.path for e in h.handlers.mongoose_prometheus_handler])
                     for h in self.config.listen.http]
        if listeners:
            return listeners
        prometheus = self.config.instrumentation.prometheus
        return [(prometheus.ip_address, prometheus.port, ["/metrics"])]

    def on_receive(self, message: Any) -> Any:
        if message == "push":
            self.send_after(self.config.instrumentation.graphite.interval, "push")
            self._spawn(self.push())
            return None
        if isinstance(message, tuple) and message and message[0] == "metrics":
            return self.samples(message[1])
        return super().on_receive(message)

    async def samples(self, prefix: str) -> list[dict[str, Any]]:
        """The merged metrics whose name starts with ``prefix``, as flat samples
        (``mongoose metric get``, the shell's ``metrics()``)."""
        return exposition.flat_samples(await self.families(), prefix)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def families(self) -> dict[str, exposition.Family]:
        """Every process's metrics of this node, merged."""
        scheduler = otp.current()
        parts: list[tuple[str, Any]] = [("0", self.snapshot())]
        dist = scheduler.dist
        workers = sorted(w for w in dist.view[scheduler.node]["procs"] if w != 0) \
            if dist is not None else []
        asks = [otp.ask_named(scheduler.node, w, NAME, "snapshot") for w in workers]
        # All at once: a page waits at most WORKER_TIMEOUT, however many workers hang.
        answers = await asyncio.gather(
            *(asyncio.wait_for(_awaited(ask), WORKER_TIMEOUT) for ask in asks),
            return_exceptions=True)
        for worker, answer in zip(workers, answers, strict=True):
            if isinstance(answer, BaseException):
                log.warning("worker metrics unavailable", extra={
                    "what": "metrics_worker_unavailable", "worker": worker,
                    "reason": repr(answer)})
            else:
                parts.append((str(worker), answer))
        return exposition.merge(parts)

    async def page(self) -> bytes:
        return exposition.prometheus_text(await self.families())

    async def push(self) -> None:
        graphite = self.config.instrumentation.graphite
        assert self.graphite is not None
        lines = self.graphite.lines(await self.families(), int(time.time()))
        if not lines:
            return
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(graphite.host, graphite.port), 5)
            writer.write(("\n".join(lines) + "\n").encode())
            await asyncio.wait_for(writer.drain(), 5)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        except (TimeoutError, OSError) as error:
            log.warning("graphite push failed", extra={
                "what": "graphite_push_failed", "host": graphite.host, "port": graphite.port,
                "reason": repr(error)})

    def on_stop(self) -> None:
        for server in self.servers:
            server.close()
        self.servers.clear()
        for task in list(self._tasks):
            task.cancel()
        super().on_stop()


async def _awaited(future: Any) -> Any:
    return await future
