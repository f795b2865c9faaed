"""``worker_sup``: the supervision tree inside each worker process.

``python -m otp.worker --app supervisors.worker:children`` starts these children, left
to right, under a ``one_for_one`` supervisor, after the worker has joined its node's
mesh. The tree fills up as the server's parts arrive (shared/DESIGN.md, "Supervision
trees"): CETS tables, the instrumentation handler, storage pools, router shards,
modules, the c2s session supervisor and the listener. Until then a worker runs only its
status actor.
"""

from __future__ import annotations

from mongoose.status import WorkerStatus
from otp.supervisor import ChildSpec

__all__ = ["children"]


def children() -> list[ChildSpec]:
    """The worker's child specs, in start order."""
    return [ChildSpec("worker_status", WorkerStatus.start)]
