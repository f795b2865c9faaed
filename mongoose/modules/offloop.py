"""Blocking work of modules, kept off the loop and in order.

Module code runs on the worker's event loop (in router shards and sessions), and storage
calls block (:mod:`mongoose.storage.backends`), so modules hand them to the blocking pool
(:mod:`otp.blocking`). Two things go wrong when that is done naively, and this module is
the cure for both:

* **Order.** The pool runs jobs on several threads: two writes of one user handed over in
  order (a client that sets its vCard twice without waiting for the first answer) may
  commit in the other order. :class:`Serializer` runs the jobs of one key (a user) one
  after another, in the order they were submitted; jobs of other keys run in parallel.
  A read queued behind a write of the same key sees that write.
* **Answers.** An iq handler (:mod:`mongoose.iq`) returns its reply at once or None; one
  that needs storage returns None and answers later. :func:`answer_iq` runs the work
  and routes the reply element it returns, or an error: ``internal-server-error`` of
  type ``wait`` when the database cannot be reached (the client may retry), of type
  ``cancel`` for anything else (logged, ``what=offloop_job_failed``).

Everything here is called on the loop's thread (handlers, and the done callbacks the
pool's futures run there); the state needs no lock.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Hashable
from typing import Any

from lxml import etree

from mongoose import packet as packet_mod
from mongoose import router
from otp import blocking
from otp.future import LoopFuture

__all__ = ["Serializer", "answer_iq", "error_reply", "failure_reply"]

log = logging.getLogger(__name__)

Done = Callable[[LoopFuture[Any]], None]


class Serializer:
    """Blocking jobs run one at a time per key, in submission order (module docstring)."""

    def __init__(self, name: str) -> None:
        self.name = name
        # key -> jobs waiting behind the one running; a key is present while it runs.
        self._waiting: dict[Hashable, collections.deque[tuple[Any, ...]]] = {}

    def submit(self, key: Hashable, fn: Callable[..., Any], *args: Any,
               done: Done | None = None) -> None:
        """Run ``fn(*args)`` on the pool after the earlier jobs of ``key``; then, on the
        loop, ``done(future)`` (the future is complete: ``future.get(timeout=0)``)."""
        job = (fn, args, done)
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append(job)
            return
        self._waiting[key] = collections.deque()
        self._start(key, job)

    def pending(self) -> int:
        """Jobs submitted and not finished (running or waiting), for the shell."""
        return sum(1 + len(w) for w in self._waiting.values())

    def _start(self, key: Hashable, job: tuple[Any, ...]) -> None:
        fn, args, done = job
        blocking.run(fn, *args).add_done_callback(
            lambda future: self._finished(key, future, done))

    def _finished(self, key: Hashable, future: LoopFuture[Any], done: Done | None) -> None:
        try:
            if done is not None:
                done(future)
            else:
                future.get(timeout=0)
        except Exception:
            log.exception("a blocking job failed", extra={
                "what": "offloop_job_failed", "serializer": self.name})
        waiting = self._waiting.get(key)
        if waiting:
            self._start(key, waiting.popleft())
        else:
            self._waiting.pop(key, None)


def answer_iq(serializer: Serializer, key: Hashable, stanza: etree._Element, from_jid: str,
              to_jid: str, work: Callable[..., etree._Element | None], *args: Any) -> None:
    """Answer the iq ``stanza`` (from ``from_jid`` to ``to_jid``) with what ``work(*args)``
    returns, run on the pool in ``serializer``'s order for ``key``: a reply element
    (built with :func:`mongoose.iq.result` or :func:`error_reply`), or None for no
    answer. The iq handler that calls this returns None."""

    def done(future: LoopFuture[Any]) -> None:
        try:
            reply = future.get(timeout=0)
        except Exception as error:
            reply = failure_reply(stanza, error, serializer.name)
        if reply is not None:
            router.route(packet_mod.from_element(reply, to_jid, from_jid))

    serializer.submit(key, work, *args, done=done)


def error_reply(stanza: etree._Element, condition: str, text: str | None = None,
                type: str | None = None, *, echo: bool = True) -> etree._Element:
    """:func:`mongoose.xmpp.errors.make_error_reply`, without the echoed payload when
    ``echo`` is False (replies that must not repeat a password)."""
    from mongoose.xmpp.errors import make_error_reply

    reply = make_error_reply(stanza, condition, text, type)
    if not echo:
        for child in list(reply):
            if etree.QName(child).localname != "error":
                reply.remove(child)
    return reply


def failure_reply(stanza: etree._Element, error: Exception, name: str) -> etree._Element:
    """The error reply to ``stanza`` whose blocking work (of ``name``) raised ``error``."""
    from mongoose.storage import StorageUnavailable

    if isinstance(error, StorageUnavailable):
        log.warning("storage unavailable", extra={
            "what": "offloop_storage_unavailable", "serializer": name, "reason": str(error)})
        return error_reply(stanza, "internal-server-error", "storage is unavailable; "
                           "try again later", "wait", echo=False)
    log.error("a blocking job failed", exc_info=error, extra={
        "what": "offloop_job_failed", "serializer": name})
    return error_reply(stanza, "internal-server-error", echo=False)
