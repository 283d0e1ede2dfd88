"""Capacity benchmark: how many calls one streamer core holds, next to a bare receive loop on the same machine.

    .venv/bin/python -m benchmarks.capacity            # everything (~25 min), writes benchmarks/results/latest.json
    .venv/bin/python -m benchmarks.capacity --quick    # seconds; the test suite runs this to keep the harness alive

Modes:
* max-rate: 10 connections send pre-built frames as fast as the server takes them. Frames per second of *server
  CPU time* (from /proc), for the streamer (full pipeline: parse, place, chunk, upload to Azurite) and for a bare
  Starlette receive loop, measured in the same run; their ratio.
* real-time: calls at ACS's cadence (one frame per participant per 20 ms), raised step by step until the streamer
  falls behind, loses a frame, or its chunk latency p99 exceeds 2 s. Reported for 16 kHz mixed and for 24 kHz
  unmixed with 4 speakers, with server CPU µs per frame next to the bare loop's at the same load.
* memory: RSS per open stream at the end of a 10-s chunk, against one chunk of PCM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.harness import Server, Stack, cpu_seconds, latency_p99, maxrate_load, realtime_load, rss_bytes

RESULTS = Path(__file__).parent / "results"


class Window:
    """Server CPU seconds, frames received and counters between `start` and `end` (called by the load
    generator), so steady-state figures exclude the ramp and the burst of final chunks when every call ends."""

    def __init__(self, server: Server, azurite_pid: int | None = None):
        self.server = server
        self.azurite_pid = azurite_pid
        self.marks: dict[str, tuple[float, float, int, int]] = {}
        self.metrics: dict[str, dict[str, float]] = {}
        self.rig: dict[str, tuple[float, float, float, float]] = {}

    def __call__(self, which: str) -> None:
        self.metrics[which] = self.server.metrics()
        self.marks[which] = (time.monotonic(), cpu_seconds(self.server.pid), self.server.frames(),
                             rss_bytes(self.server.pid))
        self.rig[which] = (time.process_time(), cpu_seconds(self.azurite_pid) if self.azurite_pid else 0.0,
                           *machine_busy_idle())

    def rig_utilisation(self) -> dict[str, float]:
        """Who else used the machine's cores in the window: the load generator (this process) and Azurite share
        them with the server, so a step can fail because the rig ran out of CPU rather than the server."""
        (c0, a0, b0, i0), (c1, a1, b1, i1) = self.rig["start"], self.rig["end"]
        return {"load_generator_cpu_utilisation": round((c1 - c0) / self.wall, 2),
                "azurite_cpu_utilisation": round((a1 - a0) / self.wall, 2),
                "machine_busy_fraction": round((b1 - b0) / max(1e-9, (b1 - b0) + (i1 - i0)), 2)}

    @property
    def wall(self) -> float:
        return self.marks["end"][0] - self.marks["start"][0]

    @property
    def cpu(self) -> float:
        return self.marks["end"][1] - self.marks["start"][1]

    @property
    def frames(self) -> int:
        return self.marks["end"][2] - self.marks["start"][2]


def machine_busy_idle() -> tuple[float, float]:
    """(busy, idle) jiffies of all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return float(sum(values[:8]) - idle), float(idle)


def max_rate(stack: Stack, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("bare", "bare_uvicorn_defaults", "streamer"):
        server = stack.streamer() if kind == "streamer" else stack.bare(uvicorn_defaults=kind != "bare")
        w = Window(server)
        asyncio.run(maxrate_load(server, stack, connections=10, seconds=seconds, on_window=w))
        out[kind] = {"frames_per_cpu_second": round(w.frames / w.cpu), "frames": w.frames,
                     "cpu_seconds": round(w.cpu, 2), "cpu_utilisation": round(w.cpu / w.wall, 2)}
        server.stop()
    out["ratio"] = round(out["streamer"]["frames_per_cpu_second"] / out["bare"]["frames_per_cpu_second"], 2)
    out["ratio_to_uvicorn_defaults"] = round(
        out["streamer"]["frames_per_cpu_second"] / out["bare_uvicorn_defaults"]["frames_per_cpu_second"], 2)
    return out


def realtime_step(stack: Stack, server: Server, calls: int, participants: int, rate: int, window: float,
                  ramp: float) -> dict[str, Any]:
    w = Window(server, stack.azurite.proc.pid if stack.azurite.proc else None)
    before = server.metrics()
    res = asyncio.run(realtime_load(server, stack, calls=calls, participants=participants, rate=rate, ramp=ramp,
                                    window=window, on_window=w))
    landed = server.wait_landed()
    after = server.metrics()
    received = int(after.get("acs_streamer_frames_total", 0) - before.get("acs_streamer_frames_total", 0)) \
        if server.kind == "streamer" else None
    p99, chunks = latency_p99(w.metrics["start"], w.metrics["end"]) if server.kind == "streamer" else (None, 0)
    p99_close, _ = latency_p99(w.metrics["end"], after) if server.kind == "streamer" else (None, 0)
    step = {
        "calls": calls, "streams": calls * participants, "refused": res.refused,
        "frames_sent": res.frames_sent, "frames_received": received,
        "window_frames_sent": res.window_frames_sent, "window_frames_received": w.frames,
        "server_cpu_utilisation": round(w.cpu / w.wall, 3),
        "server_cpu_us_per_frame": round(w.cpu / max(1, w.frames) * 1e6, 1),
        "chunk_latency_p99_le_seconds": p99, "chunks_landed_in_window": chunks,
        "close_burst_latency_p99_le_seconds": p99_close,
        "chunk_latency_max_seconds": after.get("acs_streamer_chunk_latency_max_seconds"),
        "all_chunks_landed": landed,
        "rss_mb": round(w.marks["end"][3] / 2**20, 1),
        **w.rig_utilisation(),
    }
    if server.kind == "streamer":
        lost = res.frames_sent - (received or 0)
        bad = sum(v - before.get(k, 0) for k, v in after.items()
                  if k.startswith(("acs_streamer_bad_frames_total", "acs_streamer_late_frames_total",
                                   "acs_streamer_duplicate_frames_total", "acs_streamer_spool_failures_total")))
        kept_up = w.frames >= 0.98 * res.window_frames_sent
        step["frames_lost"] = lost
        step["held"] = bool(res.refused == 0 and lost == 0 and bad == 0 and landed and kept_up
                            and p99 is not None and p99 <= 2.0 and w.cpu / w.wall < 0.97)
    return step


def realtime(stack: Stack, *, participants: int, rate: int, ladder: list[int], window: float, ramp: float,
             chunk_seconds: str) -> dict[str, Any]:
    server = stack.streamer(CHUNK_SECONDS=chunk_seconds)
    steps, best = [], 0
    for calls in ladder:
        step = realtime_step(stack, server, calls, participants, rate, window, ramp)
        if step["all_chunks_landed"]:
            step["blobs_pruned_after"] = stack.prune(server.proc.env["RECORDINGS_CONTAINER"])
        steps.append(step)
        print(f"  {calls:5d} calls x {participants}: cpu {step['server_cpu_utilisation']:.0%}, "
              f"{step['server_cpu_us_per_frame']} us/frame, p99 <= {step['chunk_latency_p99_le_seconds']} s, "
              f"lost {step['frames_lost']}, held={step['held']}  (rig: load generator "
              f"{step['load_generator_cpu_utilisation']:.0%}, azurite {step['azurite_cpu_utilisation']:.0%}, "
              f"machine {step['machine_busy_fraction']:.0%} busy)", flush=True)
        if not step["held"]:
            break
        best = calls
    server.stop()
    return {"participants": participants, "sample_rate": rate, "chunk_seconds": float(chunk_seconds),
            "max_calls_held": best, "steps": steps}


def bare_realtime(stack: Stack, calls: int, window: float, ramp: float, *,
                  uvicorn_defaults: bool = False) -> dict[str, Any]:
    server = stack.bare(uvicorn_defaults=uvicorn_defaults)
    step = realtime_step(stack, server, calls, 1, 16000, window, ramp)
    server.stop()
    return {"calls": calls, "server_cpu_us_per_frame": step["server_cpu_us_per_frame"],
            "server_cpu_utilisation": step["server_cpu_utilisation"]}


def memory(stack: Stack, calls: int) -> dict[str, Any]:
    """RSS per stream just before the first 10-s chunk is sealed (buffers full), over an idle baseline."""
    server = stack.streamer(CHUNK_SECONDS="10")
    idle = rss_bytes(server.pid)
    samples: dict[str, int] = {}

    def mark(which: str) -> None:
        if which == "end":
            samples["full"] = rss_bytes(server.pid)

    asyncio.run(realtime_load(server, stack, calls=calls, participants=1, rate=16000, ramp=0.5, window=8.0,
                              on_window=mark))
    server.wait_landed()
    chunk_pcm = 10 * 16000 * 2
    per_stream = (samples["full"] - idle) / calls
    server.stop()
    return {"calls": calls, "idle_rss_mb": round(idle / 2**20, 1), "rss_mb": round(samples["full"] / 2**20, 1),
            "bytes_per_stream": round(per_stream), "chunk_pcm_bytes": chunk_pcm,
            "ratio_to_chunk": round(per_stream / chunk_pcm, 2)}


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    import os

    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny loads, for the test suite")
    parser.add_argument("--out", type=Path, default=None, help="JSON results path")
    args = parser.parse_args()
    quick = args.quick
    results: dict[str, Any] = {"machine": machine(), "quick": quick}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        stack = Stack(Path(tmp))
        try:
            print("max-rate (10 connections):", flush=True)
            results["max_rate"] = max_rate(stack, seconds=2.0 if quick else 5.0)
            print(f"  {results['max_rate']}", flush=True)
            # Production chunk length; calls start spread over one chunk (as independent calls would), and the
            # window covers more than one chunk boundary of every call.
            window, ramp, chunk = (2.0, 0.5, "1") if quick else (14.0, 10.0, "10")
            print("real-time, 16 kHz mixed:", flush=True)
            results["realtime_16k_mixed"] = realtime(
                stack, participants=1, rate=16000,
                ladder=[5, 10] if quick else [200, 300, 400, 500, 550, 600, 650, 700, 800],
                window=window, ramp=ramp, chunk_seconds=chunk)
            print("real-time, 24 kHz unmixed, 4 speakers:", flush=True)
            results["realtime_24k_unmixed_4"] = realtime(
                stack, participants=4, rate=24000, ladder=[2, 4] if quick else [50, 75, 100, 125, 150, 175],
                window=window, ramp=ramp, chunk_seconds=chunk)
            ref = max(results["realtime_16k_mixed"]["steps"],
                      key=lambda s: s["calls"] if s["held"] else 0)
            results["bare_realtime"] = bare_realtime(stack, ref["calls"], window, ramp)
            results["bare_realtime_uvicorn_defaults"] = bare_realtime(stack, ref["calls"], window, ramp,
                                                                      uvicorn_defaults=True)
            results["realtime_cost_ratio_at_calls"] = ref["calls"]
            results["realtime_cost_ratio"] = round(
                results["bare_realtime"]["server_cpu_us_per_frame"] / ref["server_cpu_us_per_frame"], 2)
            print("memory:", flush=True)
            results["memory"] = memory(stack, 10 if quick else 200)
        finally:
            stack.close()
    out = args.out or RESULTS / ("quick.json" if quick else "latest.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nresults: {out}")


def print_table(r: dict[str, Any]) -> None:
    m, mr = r["machine"], r["max_rate"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['date']}")
    print(f"max-rate frames per server CPU-second: streamer {mr['streamer']['frames_per_cpu_second']:,}"
          f"  bare loop {mr['bare']['frames_per_cpu_second']:,}  ratio {mr['ratio']}")
    print(f"  (bare loop on uvicorn's defaults: {mr['bare_uvicorn_defaults']['frames_per_cpu_second']:,}; "
          f"streamer/that {mr['ratio_to_uvicorn_defaults']})")
    for key, label in (("realtime_16k_mixed", "16 kHz mixed"), ("realtime_24k_unmixed_4", "24 kHz unmixed x4")):
        rt = r[key]
        last = next((s for s in rt["steps"] if s["calls"] == rt["max_calls_held"]), rt["steps"][0])
        print(f"real-time {label}: {rt['max_calls_held']} calls held (chunk p99 <= "
              f"{last['chunk_latency_p99_le_seconds']} s, {last['server_cpu_us_per_frame']} us CPU/frame)")
    br = r["bare_realtime"]
    print(f"bare loop at real cadence ({br['calls']} calls): {br['server_cpu_us_per_frame']} us CPU/frame; "
          f"streamer/bare cost ratio {r['realtime_cost_ratio']} (1.0 = as cheap as the bare loop)")
    bd = r["bare_realtime_uvicorn_defaults"]
    print(f"  (bare loop on uvicorn's defaults: {bd['server_cpu_us_per_frame']} us CPU/frame at "
          f"{bd['server_cpu_utilisation']:.0%} of a core)")
    mem = r["memory"]
    print(f"memory: {mem['bytes_per_stream']:,} B per stream = {mem['ratio_to_chunk']} x one 10-s chunk of PCM "
          f"({mem['calls']} streams)")


if __name__ == "__main__":
    main()
