"""Timers: send a message later, and cancel it before it goes (Erlang's send_after).

Timers live on the scheduler's loop (``loop.call_later``): no thread, no actor. Each
timer gets a :class:`otp.pid.Ref`; :func:`cancel_timer` returns True if it stopped a
timer that had not fired. A timer whose target has died by the time it fires sends
into the void, as in Erlang.
"""

from __future__ import annotations

from typing import Any

from otp import scheduler as _scheduler_mod
from otp.pid import Pid, Ref

__all__ = ["cancel_timer", "pending_timers", "send_after"]


def send_after(seconds: float, pid: Pid, message: Any) -> Ref:
    """Send ``message`` to ``pid`` after ``seconds``; returns the timer's ref."""
    from otp.actor import _send

    scheduler = _scheduler_mod.current()
    tref = scheduler.make_ref()

    def fire() -> None:
        scheduler.timers.pop(tref, None)
        _send(scheduler, pid, message)

    def arm() -> None:
        scheduler.timers[tref] = scheduler.loop.call_later(max(0.0, seconds), fire)

    if scheduler.on_loop_thread():
        arm()
    else:
        scheduler.run_sync(arm)
    return tref


def cancel_timer(tref: Ref) -> bool:
    """Cancel the timer ``tref``; True if it had not fired yet."""
    scheduler = _scheduler_mod.current()

    def cancel() -> bool:
        handle = scheduler.timers.pop(tref, None)
        if handle is None:
            return False
        handle.cancel()
        return True

    if scheduler.on_loop_thread():
        return cancel()
    return scheduler.run_sync(cancel)


def pending_timers() -> int:
    """How many timers are armed in this process."""
    return len(_scheduler_mod.current().timers)
