"""Smoke test of the actor benchmark (bench/actors.py --quick)."""

from __future__ import annotations

import sys

import pytest
from helpers import run_quick_bench

FIGURES = [
    "actors",
    "spawn_rate_per_s",
    "rss_per_actor_bytes",
    "stop_rate_per_s",
    "spawn_rate_small_per_s",
    "spawn_rate_registered_per_s",
    "spawn_rate_from_thread_per_s",
    "tell_1to1_thread_per_s",
    "tell_1to1_actor_per_s",
    "tell_many_per_s",
    "ask_p50_us",
    "ask_p99_us",
    "threading_tell_1to1_thread_per_s",
    "threading_tell_many_per_s",
    "threading_ask_p50_us",
    "threading_ask_p99_us",
    "tell_1to1_ratio_vs_threading",
    "tell_many_ratio_vs_threading",
    "cpu_count",
]


@pytest.mark.timeout(120)
def test_quick_run_prints_one_json_line_with_positive_figures():
    """--quick prints exactly one JSON line on stdout with every figure present and > 0."""
    data = run_quick_bench("actors.py", timeout=100)
    for key in FIGURES:
        assert key in data, key
        assert data[key] > 0, (key, data[key])
    assert data["python"] == ".".join(map(str, sys.version_info[:3]))
    assert data["pykka"]
    assert isinstance(data["uvloop"], bool)
    assert data["params"]["quick"] is True
    assert set(data["targets"]) == {
        "actors_100k",
        "rss_per_actor_le_4KiB",
        "tell_1to1_ge_3x_threading",
        "tell_many_ge_3x_threading",
    }
    assert all(len(values) == data["params"]["repeat"] for values in data["runs"].values())
