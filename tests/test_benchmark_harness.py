"""The capacity benchmark's harness still runs and measures (tiny loads; figures are not asserted as targets)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_quick_benchmark_runs_end_to_end_and_loses_nothing(tmp_path):
    out = tmp_path / "quick.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.capacity", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["max_rate"]["streamer"]["frames_per_cpu_second"] > 0 and r["max_rate"]["ratio"] > 0
    for key in ("realtime_16k_mixed", "realtime_24k_unmixed_4"):
        for step in r[key]["steps"]:
            assert step["held"] and step["frames_lost"] == 0 and step["refused"] == 0, step
            assert step["frames_received"] == step["frames_sent"]
    assert r["memory"]["bytes_per_stream"] > 0
    assert "frames per server CPU-second" in proc.stdout
