"""Soak: hold calls at a steady real-time load and check that the streamer's RSS and open files stay flat.

    scripts/soak.sh                       # 10 minutes at 300 calls (half the measured 16 kHz capacity)
    .venv/bin/python -m benchmarks.soak --minutes 2 --calls 50

Calls are not kept for the whole run: they come in rounds of `--call-seconds` and are replaced by new ones, so
sessions, chunks, manifests and sockets churn the way they do in production. RSS and open file descriptors are
sampled every `--every` seconds; the report gives their least-squares slope per minute over the samples taken
after the warm-up while a round's calls were all up (round changes and ramps would only add noise). Exits 1
if RSS grows more than `--max-rss-mb-per-min` or file descriptors more than `--max-fds-per-min`.

Each sample also records the CPU share of the streamer and of Azurite, the chunks still waiting to land and the
chunk latency p99 since the previous sample, so a slowdown can be pinned on the streamer or on the rig. Azurite's
cost per write grows with its blob count (see `Stack.prune`); `--prune` (the default) deletes each round's blobs
once they have landed, so the rig stays the same for the whole run; `--no-prune` keeps them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import Server, Stack, cpu_seconds, latency_p99, open_fds, realtime_load, rss_bytes

RESULTS = Path(__file__).parent / "results"


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return 60.0 * sum((t - mx) * (v - my) for t, v in points) / var if var else 0.0


LOADED = {"on": False}  # true while every call of the current round is up: only then are samples comparable


def _mark(which: str) -> None:
    LOADED["on"] = which == "start"


async def churn(stack: Stack, server: Server, *, calls: int, call_seconds: float, until: float,
                container: str | None) -> tuple[int, int]:
    """Rounds of `calls` calls (opened over 10 s, held `call_seconds`, closed) until `until` (monotonic).
    With `container`, each round's blobs are deleted once every chunk of it landed. -> (calls, blobs pruned)."""
    done = pruned = 0
    while time.monotonic() + call_seconds + 12 < until:
        await realtime_load(server, stack, calls=calls, participants=1, rate=16000, ramp=10.0, window=call_seconds,
                            on_window=_mark)
        done += calls
        if container and await asyncio.to_thread(server.wait_landed, 60.0):
            pruned += await asyncio.to_thread(stack.prune, container)
    return done, pruned


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--call-seconds", type=float, default=60.0)
    p.add_argument("--every", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=60.0)
    p.add_argument("--max-rss-mb-per-min", type=float, default=1.0)
    p.add_argument("--max-fds-per-min", type=float, default=1.0)
    p.add_argument("--prune", action=argparse.BooleanOptionalAction, default=True,
                   help="delete each round's blobs after they landed (keeps Azurite's cost constant)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for the streamer (e.g. allocator settings)")
    p.add_argument("--out", type=Path, default=RESULTS / "soak.json", help="JSON results path")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        stack = Stack(Path(tmp))
        # Production defaults: 10-s chunks and the container image's allocator setting.
        server = stack.streamer(**dict(e.split("=", 1) for e in args.env))
        container = server.proc.env["RECORDINGS_CONTAINER"] if args.prune else None
        assert stack.azurite.proc is not None
        azurite_pid = stack.azurite.proc.pid
        idle_start = rss_bytes(server.pid) / 2**20
        samples: list[dict[str, Any]] = []
        t0 = time.monotonic()
        until = t0 + args.minutes * 60

        async def sampler() -> None:
            last = (time.monotonic(), cpu_seconds(server.pid), cpu_seconds(azurite_pid), server.metrics())
            while time.monotonic() < until:
                await asyncio.sleep(args.every)
                now = (time.monotonic(), cpu_seconds(server.pid), cpu_seconds(azurite_pid),
                       await asyncio.to_thread(server.metrics))
                wall = now[0] - last[0]
                p99, _ = latency_p99(last[3], now[3])
                s = {"t": now[0] - t0, "rss_mb": rss_bytes(server.pid) / 2**20, "fds": float(open_fds(server.pid)),
                     "loaded": LOADED["on"], "streamer_cpu": round((now[1] - last[1]) / wall, 3),
                     "azurite_cpu": round((now[2] - last[2]) / wall, 3),
                     "pending_chunks": now[3].get("acs_streamer_pending_chunks", 0.0),
                     "chunk_latency_p99_le_seconds": p99}
                last = now
                samples.append(s)
                print(f"  t={s['t']:6.0f}s  rss={s['rss_mb']:7.1f} MB  fds={s['fds']:.0f}  "
                      f"cpu streamer {s['streamer_cpu']:.0%} azurite {s['azurite_cpu']:.0%}  "
                      f"pending {s['pending_chunks']:.0f}  p99<={p99}", flush=True)

        async def run() -> tuple[int, int]:
            sampling = asyncio.create_task(sampler())
            n = await churn(stack, server, calls=args.calls, call_seconds=args.call_seconds, until=until,
                            container=container)
            await sampling
            return n

        print(f"soak: {args.calls} concurrent calls of {args.call_seconds:.0f} s for {args.minutes:.0f} min",
              flush=True)
        completed, pruned = asyncio.run(run())
        landed = server.wait_landed()
        idle_end = rss_bytes(server.pid) / 2**20  # every call over and every chunk landed
        metrics = server.metrics()
        server.stop()
        stack.close()
    steady = [s for s in samples if s["t"] >= args.warmup and s["loaded"]]
    rss_slope = slope_per_minute([(s["t"], s["rss_mb"]) for s in steady])
    fd_slope = slope_per_minute([(s["t"], s["fds"]) for s in steady])
    result = {"calls": args.calls, "minutes": args.minutes, "calls_completed": completed, "all_landed": landed,
              "pruned_blobs": pruned if args.prune else None,
              "rss_mb_per_min": round(rss_slope, 3), "fds_per_min": round(fd_slope, 3),
              "rss_mb_first_last": [round(steady[0]["rss_mb"], 1), round(steady[-1]["rss_mb"], 1)] if steady else [],
              "idle_rss_mb_start_end": [round(idle_start, 1), round(idle_end, 1)],
              "spool_failures": metrics.get("acs_streamer_spool_failures_total"),
              "bad_frames": sum(v for k, v in metrics.items() if k.startswith("acs_streamer_bad_frames_total")),
              "samples": samples}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nsoak: {completed} calls completed; RSS slope {rss_slope:+.3f} MB/min, fds slope {fd_slope:+.3f}/min "
          f"(after {args.warmup:.0f}s warm-up); idle RSS {idle_start:.0f} MB before, {idle_end:.0f} MB after; "
          f"all chunks landed: {landed}")
    ok = landed and rss_slope <= args.max_rss_mb_per_min and fd_slope <= args.max_fds_per_min
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
