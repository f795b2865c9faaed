"""Smoke test of the transport floor benchmark (bench/roundtrip.py --quick)."""

from __future__ import annotations

import pytest
from helpers import run_quick_bench


@pytest.mark.timeout(60)
def test_quick_run_prints_both_transports_figures():
    """--quick prints one JSON line with latency and CPU for both transports, all > 0."""
    data = run_quick_bench("roundtrip.py", timeout=50)
    for kind in ("zmq_ipc", "unix_socket"):
        for stat in ("p50_us", "p99_us", "cpu_us"):
            assert data[f"{kind}_{stat}"] > 0, (kind, stat)
        assert data[f"{kind}_p99_us"] >= data[f"{kind}_p50_us"]
    assert data["zmq_over_unix_p50_us"] > 0
