# ---- appended by tests/pykka_suite/prepare.py: run this suite against otp.LoopActor ----
import runpy as _runpy

import pytest as _pytest

import otp as _otp

_SKIPS = _runpy.run_path("@SKIPS_FILE@")["SKIPS"]

RUNTIMES = {
    "loop": _pytest.param(
        Runtime(
            name="loop",
            actor_class=_otp.LoopActor,
            event_class=threading.Event,
            future_class=_otp.LoopFuture,
            sleep_func=time.sleep,
        ),
        id="loop",
    )
}


@_pytest.fixture(scope="session", params=RUNTIMES.values())
def runtime(request):  # noqa: F811 - replaces the suite's threading runtime
    return request.param


def pytest_collection_modifyitems(config, items):
    for item in items:
        base = item.name.split("[", 1)[0]
        reason = _SKIPS.get(base)
        if reason is not None and "pykka_tests" in item.nodeid:
            item.add_marker(_pytest.mark.skip(reason=reason))
