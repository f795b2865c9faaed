"""otp: an Erlang/OTP-style runtime on Pykka and asyncio.

The public surface is re-exported here; the modules behind it are:

* :mod:`otp.actor` -- :class:`LoopActor`, the loop-scheduled Pykka actor with links,
  monitors and exit signals; the contracts of handlers and signals are documented there.
* :mod:`otp.scheduler` -- one event loop per process that runs every loop actor.
* :mod:`otp.future` -- :class:`LoopFuture`, awaitable on the loop, blockable elsewhere.
* :mod:`otp.pid` and :mod:`otp.codec` -- pids, refs, and their msgpack wire form.
* :mod:`otp.process` -- send, ask, exit, monitor, register/whereis/unregister,
  send_named/ask_named (a registered name in any process of the cluster).
* :mod:`otp.timers` -- send_after and cancel_timer.
* :mod:`otp.blocking` -- a thread pool for blocking work, answering on the loop.
* :mod:`otp.supervisor` -- OTP supervisors.
* :mod:`otp.osproc` -- an OS process as a supervised actor (a node's workers).
* :mod:`otp.transport` and :mod:`otp.curve` -- batched ZeroMQ frames between OS
  processes, CURVE-authenticated between nodes.
* :mod:`otp.dist` -- pids of other processes and nodes behave like local ones; the
  cluster view, failure detection, remote spawn.
* :mod:`otp.node` -- the distributed runtime of one OS process; the worker's main.
* :mod:`otp.global_names` -- cluster-wide names, like Erlang's ``global``.
* :mod:`otp.attach` -- attach a process of its own (a shell) to a live cluster as a
  hidden node.
* :mod:`otp.introspect` -- the actor every process runs to answer a shell: its actors,
  supervision trees, actor state and tables (Erlang's ``observer``).
"""

from otp.actor import (
    ActorRef,
    Down,
    Exit,
    LoopActor,
    NoProcError,
    Reply,
    StartError,
    is_crash,
)
from otp.future import BlockingCallError, LoopFuture
from otp.pid import Pid, Ref
from otp.process import (
    AlreadyRegisteredError,
    ask,
    ask_named,
    exit,
    is_alive,
    lookup,
    monitor,
    register,
    registered,
    send,
    send_named,
    started,
    unregister,
    whereis,
)
from otp.scheduler import Scheduler, current
from otp.supervisor import ChildSpec, Supervisor, SupervisorError
from otp.timers import cancel_timer, send_after

__all__ = [
    "ActorRef",
    "AlreadyRegisteredError",
    "BlockingCallError",
    "ChildSpec",
    "Down",
    "Exit",
    "LoopActor",
    "LoopFuture",
    "NoProcError",
    "Pid",
    "Ref",
    "Reply",
    "Scheduler",
    "StartError",
    "Supervisor",
    "SupervisorError",
    "ask",
    "ask_named",
    "cancel_timer",
    "current",
    "exit",
    "is_alive",
    "is_crash",
    "lookup",
    "monitor",
    "register",
    "registered",
    "send",
    "send_after",
    "send_named",
    "started",
    "unregister",
    "whereis",
]
