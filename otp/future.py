"""Futures that work both on the scheduler's loop and from ordinary threads.

:class:`LoopFuture` is the future of :class:`otp.actor.LoopActor`: every ``ask`` to a loop
actor returns one. It keeps the contract of ``pykka.Future`` (``get``, ``set``,
``set_exception``, get-hooks, ``map``/``filter``/``join``/``reduce``) and adds what an
event loop needs:

* ``await future`` inside a coroutine on the scheduler's loop suspends that coroutine, not
  the loop (``pykka.Future.__await__`` blocks the thread).
* ``add_done_callback(fn)`` runs ``fn(future)`` on the scheduler's loop once the result is
  in, whichever thread set it. Reply-as-message is built on this.
* ``get()`` on the scheduler's own thread, while no result is in yet, raises
  :class:`BlockingCallError` at once. Waiting there would stop the very loop that has to
  produce the answer: the deadlock is certain, so we make it an error with a message
  that says what to do instead.

Cost matters: one future is made per ask. A future holds only its result slot; the
``threading.Event`` that foreign threads block on and the callback list are made on
first use. A single process-wide lock guards the hand-over between ``set`` and a waiter
registering itself; it is held for a few attribute writes only.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, TypeVar

import pykka

if TYPE_CHECKING:
    from otp.scheduler import Scheduler

__all__ = ["BlockingCallError", "LoopFuture"]

T = TypeVar("T")

_lock = threading.Lock()


class BlockingCallError(RuntimeError):
    """A blocking wait was attempted on the scheduler's own thread."""


class LoopFuture(pykka.Future[T]):
    """A future whose result may be awaited on the loop or waited for from a thread."""

    __slots__ = ("_callbacks", "_event", "_result", "_scheduler")

    def __init__(self, scheduler: Scheduler | None = None) -> None:
        super().__init__()
        # (value, exc_info); exc_info is None for a value.
        self._result: tuple[Any, Any] | None = None
        self._event: threading.Event | None = None
        self._callbacks: list[Callable[[LoopFuture[T]], None]] | None = None
        self._scheduler = scheduler

    def __repr__(self) -> str:
        state = "pending" if self._result is None else "done"
        return f"<LoopFuture {state}>"

    # -- inspection ------------------------------------------------------------------------

    def done(self) -> bool:
        """True once a value or an exception has been set."""
        return self._result is not None

    # -- pykka.Future contract ---------------------------------------------------------------

    def get(self, *, timeout: float | None = None) -> T:
        """Return the value (or raise the exception), waiting up to ``timeout`` seconds.

        Raises :class:`pykka.Timeout` when the time runs out, and
        :class:`BlockingCallError` when called on the scheduler's thread before the
        result is in.
        """
        try:
            return super().get(timeout=timeout)
        except NotImplementedError:
            pass
        result = self._result
        if result is None:
            result = self._wait(timeout)
        value, exc_info = result
        if exc_info is not None:
            exc_type, exc_value, exc_tb = exc_info
            if exc_value is None:
                exc_value = exc_type()
            if exc_value.__traceback__ is not exc_tb:
                raise exc_value.with_traceback(exc_tb)
            raise exc_value
        return value

    def _wait(self, timeout: float | None) -> tuple[Any, Any]:
        scheduler = self._scheduler or _current_scheduler()
        if scheduler is not None and scheduler.on_loop_thread():
            raise BlockingCallError(
                "blocking get() on the scheduler's thread would deadlock its event loop; "
                "inside a LoopActor handler, 'await' the future (async def handler) or "
                "ask for the reply as a message (LoopActor.request)"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        with _lock:
            if self._result is None and self._event is None:
                self._event = threading.Event()
            event = self._event
        while self._result is None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise pykka.Timeout(f"{timeout} seconds")
            assert event is not None
            event.wait(remaining)
        return self._result

    def set(self, value: Any | None = None) -> None:
        """Set the value; raises ``queue.Full`` if the future already has a result."""
        self._complete((value, None))

    def set_exception(self, exc_info: Any | None = None) -> None:
        """Set an exception from ``exc_info`` (default: the one being handled)."""
        assert exc_info is None or len(exc_info) == 3
        if exc_info is None:
            exc_info = sys.exc_info()
        self._complete((None, exc_info))

    def set_get_hook(self, func: Callable[[float | None], T]) -> None:
        with _lock:
            if self._result is not None:
                raise queue.Full
            super().set_get_hook(func)
        # Waiters re-check; a get-hook future is answered by the hook.
        if self._event is not None:
            self._event.set()

    def _complete(self, result: tuple[Any, Any]) -> None:
        with _lock:
            if self._result is not None or self._get_hook is not None:
                raise queue.Full
            self._result = result
            event = self._event
            callbacks = self._callbacks
            self._callbacks = None
        if event is not None:
            event.set()
        if callbacks:
            scheduler = self._scheduler or _current_scheduler()
            for callback in callbacks:
                scheduler.call_soon(callback, self)

    # -- loop integration --------------------------------------------------------------------

    def add_done_callback(self, fn: Callable[[LoopFuture[T]], None]) -> None:
        """Run ``fn(self)`` on the scheduler's loop once the future is done.

        If it is done already, ``fn`` is scheduled at once (never called inline, so the
        caller's invariants hold while it runs).
        """
        scheduler = self._scheduler or _current_scheduler()
        with _lock:
            if self._result is None:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        scheduler.call_soon(fn, self)

    def __await__(self) -> Generator[Any, None, T]:
        if self._result is None and self._get_hook is None:
            import asyncio

            loop = asyncio.get_running_loop()
            waiter = loop.create_future()

            def wake(_: LoopFuture[T]) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            self.add_done_callback(wake)
            yield from waiter.__await__()
        return self.get()

    __iter__ = __await__


def _current_scheduler() -> Scheduler:
    from otp.scheduler import current

    return current()
