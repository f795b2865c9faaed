"""Smoke test of the replicated tables benchmark (bench/cets.py --quick)."""

from __future__ import annotations

import pytest
from helpers import run_quick_bench

WORKERS = ["1", "2", "4"]
PROCESSES = {"1": ["a0", "a1"], "2": ["a0", "a1", "a2"], "4": ["a0", "a1", "a2", "b0", "b1", "b2"]}
NOWAIT = ["per_s", "issue_per_s", "cpu_us_total"]
ACKED = ["per_s", "p50_us", "p99_us", "mean_us", "cpu_us_a1", "cpu_us_total"]
PER_RUN = [
    *(f"insert_nowait_{w}w_{figure}" for w in WORKERS for figure in NOWAIT),
    *(f"insert_nowait_{w}w_cpu_us_{p}" for w in WORKERS for p in PROCESSES[w]),
    *(f"insert_acked_{w}w_{stat}" for w in WORKERS for stat in ACKED),
    *(f"ask_{w}w_{stat}" for w in WORKERS for stat in ("p50_us", "p99_us")),
    "lookup_ns",
    "dict_get_ns",
    "empty_loop_ns",
    "lookup_vs_dict_get",
]
FIGURES = [*PER_RUN, "lookup_per_s", "dict_get_per_s", "cpu_count", "elapsed_s"]


@pytest.mark.timeout(180)
def test_quick_run_prints_one_json_line_with_positive_figures():
    """--quick prints exactly one JSON line on stdout with every figure present and > 0."""
    data = run_quick_bench("cets.py", timeout=160)
    assert data["bench"] == "cets"
    for key in FIGURES:
        assert key in data, key
        assert data[key] > 0, (key, data[key])
    assert data["params"]["quick"] is True
    assert set(data["targets"]) == {"lookup_within_2x_dict_get", "acked_insert_4w_p99_under_1ms"}
    assert all(isinstance(v, bool) for v in data["targets"].values())
    assert {w: data["workers"][w]["writer_sends_to"] for w in WORKERS} == {"1": 1, "2": 2, "4": 5}
    assert len(data["workers"]["4"]["replicas"]) == 4
    optional = {"table_get_ns", "table_get_vs_dict_get"}  # where otp.cets has Table.get
    assert set(PER_RUN) <= set(data["runs"]) <= set(PER_RUN) | optional
    assert all(len(values) == data["params"]["repeat"] for values in data["runs"].values())
