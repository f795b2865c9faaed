"""``worker_sup``: the supervision tree inside each worker process.

``python -m otp.worker --app supervisors.worker:children --app-arg CONFIG`` starts these
children, left to right, under a ``rest_for_one`` supervisor once the worker has joined
its node's mesh (a child that dies takes down those started after it, which depend on
it, and they restart together)::

    instrument       the process's instrumentation: handlers, actor lifecycle events,
                     probes; answers the node's metrics actor (mongoose.instrument.service)
    worker_status    answers the shell and ``mongoose status``
    xmpp_services    the server context: config, the process's database, account
                     store, TLS contexts; the session table; the configured modules
                     (hooks, iq handlers). A configured pool's database opens in the
                     background (mongoose.storage.pools, "In a worker"): the start waits
                     at most FIRST_WAIT seconds for the first attempt, off the loop,
                     then the worker serves, and logins fail with
                     temporary-auth-failure until the database is open: a node
                     started before its database does not crash-loop
    router_sup       router shard actors router_0 .. router_{R-1} (one_for_one)
    c2s_sup          simple_one_for_one: one temporary session actor per connection
    listener         the [[listen.c2s]] ports, SO_REUSEPORT, opened after the rest of the
                     XMPP side, closed before it
    admin            answers the shell and the mongoose command: sessions, kick, stanza
                     injection, accounts, traces (mongoose.admin)
    introspect       answers the shell: actors, supervision trees, actor state, tables
                     (otp.introspect)

Stopping runs right to left: the listener stops accepting, every session ends its stream
with ``system-shutdown``, then routers, modules and tables go.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import otp
from mongoose import config as config_mod
from mongoose.status import WorkerStatus
from otp.introspect import Introspect
from otp.supervisor import ChildSpec, Supervisor

__all__ = ["ROUTER_SHARDS", "STRATEGY", "children"]

ROUTER_SHARDS = 4
STRATEGY = "rest_for_one"  # read by otp.node for the worker's root supervisor


class XmppServices(otp.LoopActor):
    """Sets up what every session of this worker shares; undoes it when stopped."""

    def __init__(self, config: config_mod.Config) -> None:
        super().__init__()
        self.config = config

    async def on_start(self) -> None:
        from mongoose import modules, server, sm
        from mongoose.storage.pools import FIRST_WAIT, BackgroundDatabase
        from otp import blocking

        db = server.setup(self.config).db
        sm.create_table()
        modules.start_all(self.config)
        if isinstance(db, BackgroundDatabase):
            # A reachable database is open before the listener starts; an unreachable
            # one keeps being tried in the background (its failures are logged).
            await blocking.run(db.wait_settled, FIRST_WAIT)

    def on_stop(self) -> None:
        from mongoose import modules, server

        modules.stop_all()
        server.close()


class RouterSup(Supervisor):
    def init(self) -> tuple[dict[str, Any], list[ChildSpec]]:
        from mongoose.router import RouterShard

        return {"strategy": "one_for_one", "intensity": 10, "period": 10}, [
            ChildSpec(f"router_{n}", partial(RouterShard.start, n, ROUTER_SHARDS))
            for n in range(ROUTER_SHARDS)
        ]


class C2SSup(Supervisor):
    def init(self) -> tuple[dict[str, Any], list[ChildSpec]]:
        from mongoose.c2s import C2S

        otp.register("c2s_sup", self.pid)
        # Sessions are temporary: a crashed session is not restarted (its client
        # reconnects); many crashes must not take the worker's other sessions down.
        return {"strategy": "simple_one_for_one", "intensity": 1_000_000, "period": 1}, [
            ChildSpec("c2s", C2S.start, restart="temporary", shutdown=2000)
        ]


def children(config_path: str | None = None) -> list[ChildSpec]:
    """The worker's child specs, in start order. Without a config file the worker runs
    only its status and introspection actors (the runtime's own tests start workers
    that way)."""
    status = ChildSpec("worker_status", WorkerStatus.start)
    introspect = ChildSpec("introspect", Introspect.start)
    if config_path is None:
        return [status, introspect]
    from mongoose.admin import AdminActor
    from mongoose.instrument.service import InstrumentActor
    from mongoose.listener import C2SListener

    config = config_mod.load(config_path)
    return [
        ChildSpec("instrument", partial(InstrumentActor.start, config)),
        status,
        ChildSpec("xmpp_services", partial(XmppServices.start, config)),
        ChildSpec("router_sup", RouterSup.start, type="supervisor"),
        ChildSpec("c2s_sup", C2SSup.start, type="supervisor"),
        ChildSpec("listener", C2SListener.start),
        # Last: under rest_for_one a restart of either (a kill from the shell) touches
        # nothing else, and they stop first.
        ChildSpec("admin", AdminActor.start),
        introspect,
    ]
