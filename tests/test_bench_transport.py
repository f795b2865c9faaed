"""Smoke test of the transport benchmark (bench/transport.py --quick)."""

from __future__ import annotations

import pytest
from helpers import run_quick_bench

PLACEMENTS = ["same_worker", "cross_worker", "cross_node"]
FIGURES = [
    *(f"tell_{p}_per_s" for p in PLACEMENTS),
    *(f"ask_{p}_{stat}" for p in PLACEMENTS for stat in ("p50_us", "p99_us", "mean_us")),
    "cpu_us_per_msg_same_worker_a1",
    "cpu_us_per_msg_cross_worker_a1",
    "cpu_us_per_msg_cross_worker_a2",
    "cpu_us_per_msg_cross_node_a1",
    "cpu_us_per_msg_cross_node_b1",
    "cross_worker_vs_same_worker",
    "cross_node_vs_same_worker",
    "cpu_count",
    "elapsed_s",
]


@pytest.mark.timeout(180)
def test_quick_run_prints_one_json_line_with_positive_figures():
    """--quick prints exactly one JSON line on stdout with every figure present and > 0."""
    data = run_quick_bench("transport.py", timeout=160)
    assert data["bench"] == "transport"
    for key in FIGURES:
        assert key in data, key
        assert data[key] > 0, (key, data[key])
    assert data["params"]["quick"] is True
    assert set(data["targets"]) == {
        "cross_worker_ge_100k_per_s",
        "cross_worker_ge_25pct_of_same_worker",
    }
    assert all(isinstance(v, bool) for v in data["targets"].values())
    assert data["worker_a1_transport"]["dropped"] == 0
    assert set(data["runs"]) == {k for k in FIGURES if k.startswith(("tell_", "ask_", "cpu_us_"))}
    assert all(len(values) == data["params"]["repeat"] for values in data["runs"].values())
