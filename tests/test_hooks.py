"""mongoose.hooks.Hooks: the registry modules extend the core through.

Each test builds its own ``Hooks()``, so nothing here touches the process registry
(``mongoose.hooks.hooks``) that a running server would use.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from mongoose.hooks import Hooks, Stop

pytestmark = pytest.mark.timeout(10)


def appender(tag: str, calls: list[str] | None = None) -> Any:
    """A handler that appends ``tag`` to the accumulator (a list) and to ``calls``."""
    def handler(acc: list[str], params: dict[str, Any]) -> list[str]:
        if calls is not None:
            calls.append(tag)
        return [*acc, tag]

    handler.__qualname__ = f"appender_{tag}"
    return handler


def test_no_handler_returns_the_accumulator_unchanged():
    """Running a hook nobody registered is the identity on the accumulator."""
    hooks = Hooks()
    acc = object()
    assert hooks.run("user_send_packet", acc) is acc
    assert hooks.run("user_send_packet", acc, "localhost", c2s=None) is acc
    assert not hooks.has("user_send_packet")
    assert not hooks.has("user_send_packet", "localhost")


def test_handlers_run_by_priority_lower_first():
    """Handlers run in increasing priority, whatever the order they were added in."""
    hooks = Hooks()
    hooks.add("h", appender("p50"), priority=50)
    hooks.add("h", appender("p10"), priority=10)
    hooks.add("h", appender("p90"), priority=90)
    hooks.add("h", appender("p-5"), priority=-5)
    assert hooks.run("h", []) == ["p-5", "p10", "p50", "p90"]


def test_equal_priorities_run_in_registration_order():
    """Ties keep the order of registration (default priority 50 included)."""
    hooks = Hooks()
    hooks.add("h", appender("first"))
    hooks.add("h", appender("second"), priority=50)
    hooks.add("h", appender("early"), priority=1)
    hooks.add("h", appender("third"))
    assert hooks.run("h", []) == ["early", "first", "second", "third"]


def test_the_fold_passes_each_result_on_and_gives_the_params():
    """Each handler gets the previous handler's result and the run's keyword
    parameters as a dict; the last result is the hook's result."""
    hooks = Hooks()
    seen: list[tuple[Any, dict[str, Any]]] = []

    def double(acc: int, params: dict[str, Any]) -> int:
        seen.append((acc, params))
        return acc * 2

    def add(acc: int, params: dict[str, Any]) -> int:
        seen.append((acc, params))
        return acc + params["n"]

    hooks.add("h", double, priority=1)
    hooks.add("h", add, priority=2)
    assert hooks.run("h", 5, "localhost", n=3, jid="a@localhost") == 13
    assert seen == [(5, {"n": 3, "jid": "a@localhost"}), (10, {"n": 3, "jid": "a@localhost"})]


def test_stop_ends_the_fold_with_its_accumulator():
    """A handler returning Stop(acc) ends the run: later handlers do not run and the
    hook's result is that acc (None included: that is how a packet is dropped)."""
    hooks = Hooks()
    calls: list[str] = []
    hooks.add("h", appender("a", calls), priority=10)
    hooks.add("h", lambda acc, params: Stop([*acc, "stop"]), priority=20)
    hooks.add("h", appender("never", calls), priority=30)
    assert hooks.run("h", []) == ["a", "stop"]
    assert calls == ["a"]

    drop = Hooks()
    drop.add("filter", lambda acc, params: Stop(None), priority=10)
    drop.add("filter", appender("never", calls), priority=20)
    assert drop.run("filter", ["packet"]) is None
    assert calls == ["a"]


def test_stop_in_the_first_handler_skips_all_others():
    """Stop from the very first handler: nothing else runs."""
    hooks = Hooks()
    calls: list[str] = []
    hooks.add("h", lambda acc, params: Stop("stopped"), priority=0)
    hooks.add("h", appender("b", calls), priority=0)
    assert hooks.run("h", []) == "stopped"
    assert calls == []


def test_a_crashing_handler_is_logged_and_skipped(caplog):
    """A handler that raises is logged with what=hook_handler_crashed (with the hook,
    the module and the handler named, and the traceback) and skipped: the next handler
    gets the accumulator the crashed one was given, and the run returns normally."""
    hooks = Hooks()

    def broken(acc: list[str], params: dict[str, Any]) -> list[str]:
        raise RuntimeError("module bug")

    hooks.add("h", appender("before"), priority=10)
    hooks.add("h", broken, priority=20, module="mod_broken")
    hooks.add("h", appender("after"), priority=30)
    with caplog.at_level(logging.ERROR, logger="mongoose.hooks"):
        assert hooks.run("h", [], "localhost") == ["before", "after"]
    crashes = [r for r in caplog.records if getattr(r, "what", None) == "hook_handler_crashed"]
    assert len(crashes) == 1
    record = crashes[0]
    assert record.levelno >= logging.ERROR
    assert record.hook == "h"  # type: ignore[attr-defined]
    assert "broken" in getattr(record, "handler", "")
    # The module is named in the record (under whatever key does not clash with
    # LogRecord's own attributes).
    assert "mod_broken" in vars(record).values()
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


def test_a_crash_does_not_unregister_the_handler(caplog):
    """A handler that crashed once is still called on the next run."""
    hooks = Hooks()
    calls: list[int] = []

    def flaky(acc: int, params: dict[str, Any]) -> int:
        calls.append(acc)
        if acc == 0:
            raise ValueError("first time")
        return acc + 1

    hooks.add("h", flaky)
    with caplog.at_level(logging.ERROR, logger="mongoose.hooks"):
        assert hooks.run("h", 0) == 0
        assert hooks.run("h", 1) == 2
    assert calls == [0, 1]
    assert hooks.has("h")


def test_host_and_global_handlers_merge_by_priority():
    """Running for a host runs the global handlers and that host's, interleaved by
    priority; another host (or no host) runs only the global ones."""
    hooks = Hooks()
    hooks.add("h", appender("global-10"), priority=10)
    hooks.add("h", appender("a-20"), priority=20, host="a.example")
    hooks.add("h", appender("global-30"), priority=30)
    hooks.add("h", appender("a-5"), priority=5, host="a.example")
    hooks.add("h", appender("b-15"), priority=15, host="b.example")
    assert hooks.run("h", [], "a.example") == ["a-5", "global-10", "a-20", "global-30"]
    assert hooks.run("h", [], "b.example") == ["global-10", "b-15", "global-30"]
    assert hooks.run("h", [], "c.example") == ["global-10", "global-30"]
    assert hooks.run("h", []) == ["global-10", "global-30"]


def test_host_and_global_ties_run_in_registration_order():
    """At equal priority a host handler and a global one run in the order they were
    registered, whichever kind came first."""
    hooks = Hooks()
    hooks.add("h", appender("host-1"), host="a.example")
    hooks.add("h", appender("global-2"))
    hooks.add("h", appender("host-3"), host="a.example")
    hooks.add("h", appender("global-4"))
    assert hooks.run("h", [], "a.example") == ["host-1", "global-2", "host-3", "global-4"]


def test_only_host_handlers_run_for_that_host():
    """A hook with only host handlers runs them for that host and nothing elsewhere."""
    hooks = Hooks()
    hooks.add("h", appender("a-2"), priority=2, host="a.example")
    hooks.add("h", appender("a-1"), priority=1, host="a.example")
    assert hooks.run("h", [], "a.example") == ["a-1", "a-2"]
    assert hooks.run("h", [], "b.example") == []
    assert hooks.run("h", []) == []


def test_hooks_are_independent_by_name():
    """Handlers of one hook never run for another."""
    hooks = Hooks()
    hooks.add("one", appender("one"))
    hooks.add("two", appender("two"))
    assert hooks.run("one", []) == ["one"]
    assert hooks.run("two", []) == ["two"]
    assert hooks.run("three", []) == []


def test_remove_takes_out_one_handler_of_one_host():
    """remove() unregisters that handler for that hook and host only: the same function
    registered globally, for another host or for another hook stays."""
    hooks = Hooks()
    shared = appender("shared")
    hooks.add("h", shared, priority=10, host="a.example")
    hooks.add("h", shared, priority=10)
    hooks.add("h", shared, priority=10, host="b.example")
    hooks.add("other", shared, host="a.example")
    hooks.add("h", appender("kept"), priority=20, host="a.example")
    hooks.remove("h", shared, host="a.example")
    assert hooks.run("h", [], "a.example") == ["shared", "kept"]  # the global one
    assert hooks.run("h", [], "b.example") == ["shared", "shared"]
    assert hooks.run("other", [], "a.example") == ["shared"]
    hooks.remove("h", shared)
    assert hooks.run("h", [], "a.example") == ["kept"]
    assert hooks.run("h", [], "b.example") == ["shared"]


def test_remove_of_something_never_added_is_harmless():
    """Removing a handler, hook or host nobody registered changes nothing."""
    hooks = Hooks()
    hooks.add("h", appender("x"))
    hooks.remove("h", appender("y"))
    hooks.remove("nothing", appender("x"))
    hooks.remove("h", appender("x"), host="nowhere.example")
    assert hooks.run("h", []) == ["x"]


def test_remove_module_unregisters_everything_of_that_module():
    """remove_module() takes out the module's handlers from every hook and host, and
    leaves other modules' handlers (and handlers without a module) in place."""
    hooks = Hooks()
    hooks.add("h", appender("ping-global"), module="mod_ping")
    hooks.add("h", appender("ping-a"), host="a.example", module="mod_ping")
    hooks.add("other", appender("ping-other"), module="mod_ping")
    hooks.add("h", appender("disco"), module="mod_disco")
    hooks.add("h", appender("core"))
    hooks.remove_module("mod_ping")
    assert hooks.run("h", [], "a.example") == ["disco", "core"]
    assert hooks.run("other", []) == []
    assert not hooks.has("other")
    assert hooks.has("h", "a.example")


def test_has_reflects_registrations_and_removals():
    """has(name) is true with a global handler; has(name, host) also with a handler of
    that host; both turn false once the handlers are removed."""
    hooks = Hooks()
    host_only = appender("a")
    hooks.add("h", host_only, host="a.example", module="mod_a")
    assert hooks.has("h", "a.example")
    assert not hooks.has("h", "b.example")
    assert not hooks.has("h")
    assert not hooks.has("other", "a.example")
    everywhere = appender("g")
    hooks.add("h", everywhere)
    assert hooks.has("h") and hooks.has("h", "b.example") and hooks.has("h", "a.example")
    hooks.remove("h", everywhere)
    assert not hooks.has("h") and not hooks.has("h", "b.example")
    assert hooks.has("h", "a.example")
    hooks.remove_module("mod_a")
    assert not hooks.has("h", "a.example")


def test_a_handler_added_after_runs_joins_in_priority_order():
    """Registering between runs inserts the handler in its place for later runs."""
    hooks = Hooks()
    hooks.add("h", appender("50"), priority=50)
    assert hooks.run("h", []) == ["50"]
    hooks.add("h", appender("40"), priority=40)
    hooks.add("h", appender("60"), priority=60)
    assert hooks.run("h", []) == ["40", "50", "60"]
