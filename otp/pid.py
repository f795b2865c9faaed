"""Process identifiers and unique references.

A :class:`Pid` names one actor anywhere in the cluster: the node it lives on, the worker
process on that node, and a number unique within that worker. Like an Erlang pid it is a
plain value: hashable, totally ordered (node, then worker, then id), printable as
``<node.worker.id>``, and it crosses process boundaries through :mod:`otp.codec`.

Pids are never reused within the life of a worker process, so a pid held after its actor
died can never reach a newer actor by accident; sends to it are dropped.

A :class:`Ref` is a unique token (Erlang's ``make_ref()``): monitors and timers return
one, and request/reply protocols use one to match answers to questions.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

__all__ = ["Pid", "Ref", "make_ref"]


class Pid(NamedTuple):
    """Address of an actor: ``Pid(node, worker, id)``.

    ``node`` is the node name (``mongoose@host``), ``worker`` the worker number on that
    node (0 for the node's root process), ``id`` the actor's number in its worker.
    """

    node: str
    worker: int
    id: int

    def __repr__(self) -> str:
        return f"<{self.node}.{self.worker}.{self.id}>"

    __str__ = __repr__


_ref_counter = itertools.count(1)


class Ref(NamedTuple):
    """A unique reference, made by :func:`make_ref`; ordered and hashable."""

    node: str
    worker: int
    id: int

    def __repr__(self) -> str:
        return f"#Ref<{self.node}.{self.worker}.{self.id}>"

    __str__ = __repr__


def make_ref(node: str = "nonode@nohost", worker: int = 0) -> Ref:
    """Return a reference never returned before by this process."""
    return Ref(node, worker, next(_ref_counter))
