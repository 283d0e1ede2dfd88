"""The capacity benchmark's harness still runs and measures (tiny loads; figures are not asserted as targets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def _run(module: str, out: Path, *args: str) -> tuple[dict[str, Any], str]:
    """Run a benchmark module as the README says; -> (its results JSON, what it printed)."""
    proc = subprocess.run([sys.executable, "-m", module, *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_quick_benchmark_runs_end_to_end_and_loses_nothing(tmp_path):
    r, stdout = _run("benchmarks.capacity", tmp_path / "quick.json", "--quick")
    assert r["max_rate"]["streamer"]["frames_per_cpu_second"] > 0 and r["max_rate"]["ratio"] > 0
    assert r["max_rate"]["bare_uvicorn_defaults"]["frames"] > 0 and r["max_rate"]["ratio_to_uvicorn_defaults"] > 0
    assert r["bare_realtime_uvicorn_defaults"]["server_cpu_us_per_frame"] > 0
    for key in ("realtime_16k_mixed", "realtime_24k_unmixed_4"):
        for step in r[key]["steps"]:
            assert step["held"] and step["frames_lost"] == 0 and step["refused"] == 0, step
            assert step["frames_received"] == step["frames_sent"]
            # Each step's chunks and manifests (>= 2 blobs per call) are deleted before the next step.
            assert step["blobs_pruned_after"] >= 2 * step["calls"], step
    assert r["memory"]["bytes_per_stream"] > 0
    assert "frames per server CPU-second" in stdout


def test_short_soak_samples_streamer_and_rig_and_prunes_each_round(tmp_path):
    r, _ = _run("benchmarks.soak", tmp_path / "soak.json", "--minutes", "0.8", "--calls", "10", "--call-seconds",
                "8", "--every", "3", "--warmup", "3", "--max-rss-mb-per-min", "1000", "--max-fds-per-min", "1000")
    assert r["all_landed"] and r["spool_failures"] == 0 and r["bad_frames"] == 0
    assert r["calls_completed"] >= 20  # at least two rounds, so pruning ran between them
    # Every round's chunks (>= 1 per call) and manifests (1 per call) were deleted after they landed.
    assert r["pruned_blobs"] >= 2 * r["calls_completed"]
    loaded = [s for s in r["samples"] if s["loaded"]]
    assert loaded and all(s["streamer_cpu"] > 0 for s in loaded)
    assert any(s["azurite_cpu"] > 0 for s in loaded)


def test_quick_churn_benchmark_counts_cost_requests_and_sheds_cleanly(tmp_path):
    r, stdout = _run("benchmarks.churn", tmp_path / "churn.json", "--quick")
    c = r["churn"]
    assert c["streamer_cpu_ms_per_call"] > 0 and c["bare_cpu_ms_per_call"] > 0 and c["ratio"] > 0
    # a new call: call state read, manifest created, chunk, final manifest, call state read
    assert c["storage_requests_per_call"] == 5.0, c["rounds"]
    assert c["frames_lost"] == 0 and all(run["chunks_landed"] == run["calls"] for run in c["rounds"]["streamer"])
    assert r["steady"]["streamer_us_per_frame"] > 0 and r["steady"]["ratio"] > 0
    s = r["storm"]
    assert s["accepted"] + sum(s["refused_by_status"].values()) == s["storm_upgrades"]
    assert set(s["refused_by_status"]) <= {"503"}  # shed, never refused otherwise
    assert s["frames_lost"] == 0 and s["all_chunks_landed"] and s["frames_received"] == s["frames_sent"]
    assert "storage requests per call" in stdout
