"""Pykka tests that cannot apply to otp.LoopActor by design, each with the reason.

Keys are test function names (without parameters); the values are shown by pytest as
the skip reason. Keep this list short: every entry is a place where our actor type
does not mean what Pykka's does.
"""

SKIPS: dict[str, str] = {
    "test_all_actors_are_stopped_on_base_exception": (
        "by design a BaseException in a handler stops only that actor (with the exception "
        "as its exit reason, propagated by links); Pykka stops every actor in the process"
    ),
    "test_base_exception_is_logged": (
        "asserts Pykka's 'Stopping all actors.' message; we log that we stop this actor "
        "(see test_all_actors_are_stopped_on_base_exception)"
    ),
}
