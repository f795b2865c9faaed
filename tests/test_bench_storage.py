"""Smoke test of the storage benchmark (bench/storage.py archive --quick on SQLite and on a
PostgreSQL the script starts itself, as tests/pg_harness.py starts the tests')."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STORES = ["sqlite", "pgsql"]
MODES = ["batched", "unbatched"]
FIGURES = ["inserts_per_s", "latency_p50_ms", "latency_p99_ms", "batch_mean", "batch_max",
           "client_cpu_us_per_insert"]


@pytest.mark.timeout(150)
def test_quick_archive_run_on_sqlite_and_pgsql():
    """The table, then one JSON line last with every store's figures, nothing lost."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "storage.py"), "archive", "--quick",
         "--stores", ",".join(STORES)],
        cwd=ROOT, capture_output=True, text=True, timeout=130,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| store | mode | inserts/s"), result.stdout
    data = json.loads(lines[-1])
    assert data["bench"] == "storage" and data["scenario"] == "archive"
    assert data["params"]["quick"] is True and data["params"]["pg"] == "throwaway"
    assert 250 <= data["params"]["packet_bytes_mean"] <= 400
    assert data["postgres"]
    assert set(data["archive"]) == set(STORES)
    for store in STORES:
        figures = data["archive"][store]
        for mode in MODES:
            for key in FIGURES:
                assert figures[mode][key] > 0, (store, mode, key, figures[mode][key])
            assert figures[mode]["failed"] == 0
            assert figures[mode]["stored"] > 0
            assert len(figures[mode]["runs"]) == data["params"]["repeat"] == 1
        assert figures["unbatched"]["batch_max"] == 1
        assert figures["batched"]["batch_max"] <= data["params"]["max_batch"]
        assert figures["batched_vs_unbatched"] > 0
    pg = data["archive"]["pgsql"]["unbatched"]
    assert pg["server_cpu_us_per_insert"] > 0 and pg["wal_syncs_per_1000"] is not None
