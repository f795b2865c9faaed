"""Blocking work off the loop: a thread pool whose answers come back to the loop.

A loop actor must never block (see :mod:`otp.actor`). Work that does -- a database
driver without asyncio, file I/O, CPU-heavy key derivation -- is handed to this pool,
and its result returns in one of two ways:

* ``await blocking.run(fn, *args)`` inside an ``async def`` handler: a
  :class:`otp.future.LoopFuture` that is set from the pool thread and wakes the
  awaiting coroutine on the loop;
* ``blocking.cast(fn, *args, reply_to=pid, tag=tag)``: the actor ``pid`` later gets
  ``Reply(tag, value, error)`` as an ordinary message, so it stays responsive while it
  waits.

We use ``concurrent.futures.ThreadPoolExecutor`` rather than a set of
``pykka.ThreadingActor`` workers: one shared queue feeds every thread, so a slow job
never holds up jobs queued behind it on a busy actor while other threads idle, and
threads are started only as load needs them. The pool is per process and sized by
``max_workers`` (default 8): enough to overlap I/O waits, few enough that the GIL is
not thrashed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pykka

from otp import scheduler as _scheduler_mod
from otp.future import LoopFuture
from otp.pid import Pid

__all__ = ["BlockingPool", "cast", "pool", "run"]

T = TypeVar("T")

DEFAULT_MAX_WORKERS = 8


class BlockingPool:
    """Threads for blocking calls, with results delivered to the scheduler's loop."""

    def __init__(self, max_workers: int = DEFAULT_MAX_WORKERS) -> None:
        self.max_workers = max_workers
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="otp-blocking")

    def run(self, fn: Callable[..., T], *args: Any) -> LoopFuture[T]:
        """Run ``fn(*args)`` on a pool thread; the returned future may be awaited."""
        future: LoopFuture[T] = LoopFuture(_scheduler_mod.current())

        def job() -> None:
            try:
                result = fn(*args)
            except BaseException:
                future.set_exception()
            else:
                future.set(result)

        self._executor.submit(job)
        return future

    def cast(self, fn: Callable[..., Any], *args: Any, reply_to: Pid, tag: Any = None) -> None:
        """Run ``fn(*args)`` on a pool thread and send ``Reply(tag, value, error)`` to
        ``reply_to`` when it is done."""
        from otp.actor import Reply
        from otp.process import send

        def job() -> None:
            try:
                result = fn(*args)
            except Exception as error:
                send(reply_to, Reply(tag, None, error))
            else:
                send(reply_to, Reply(tag, result, None))

        self._executor.submit(job)

    def call_soon_after(
        self, future: pykka.Future[T], callback: Callable[[pykka.Future[T]], None]
    ) -> None:
        """When a foreign (blocking) future is done, run ``callback(future)`` on the loop."""
        scheduler = _scheduler_mod.current()

        def job() -> None:
            # The callback reads the outcome itself; here we only wait for it.
            with contextlib.suppress(BaseException):
                future.get()
            scheduler.call_soon(callback, future)

        self._executor.submit(job)

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)


_pool: BlockingPool | None = None
_pool_lock = threading.Lock()


def pool() -> BlockingPool:
    """This process's blocking pool, made on first use."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = BlockingPool()
    return _pool


def run(fn: Callable[..., T], *args: Any) -> LoopFuture[T]:
    """Shorthand for ``pool().run(fn, *args)``."""
    return pool().run(fn, *args)


def cast(fn: Callable[..., Any], *args: Any, reply_to: Pid, tag: Any = None) -> None:
    """Shorthand for ``pool().cast(fn, *args, reply_to=..., tag=...)``."""
    pool().cast(fn, *args, reply_to=reply_to, tag=tag)
