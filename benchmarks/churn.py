"""Call churn and reconnect storm: what opening and closing calls costs the streamer, next to a bare handshake.

    .venv/bin/python -m benchmarks.churn            # ~4 min; writes benchmarks/results/churn.json
    .venv/bin/python -m benchmarks.churn --quick    # seconds; the test suite runs this to keep it alive
    .venv/bin/python -m benchmarks.churn --profile  # also py-spy the streamer through one churn round

Churn: 200 calls, 20 at a time; each is an upgrade with a real RS256 ACS token, AudioMetadata, 10 AudioData
frames and a clean close. The streamer records each (call state registered beforehand, as the control plane
does); the bare Starlette receive loop only counts frames. Server CPU is counted from before the first upgrade
until every call's chunks and final manifest have landed, less the server's idle CPU over the same time; rounds
alternate between the two servers in one run. Storage requests per call come from the streamer's own counter.

Storm: a streamer holding `--live` real-time calls (ramped over 10 s) receives `--storm` upgrades within 5 s, as
after a failover: calls whose manifest another replica wrote, now reconnecting here. Reported: upgrade latency
(connect to 101) p50/p99, upgrades refused, the server's CPU while the storm lasts, chunk latency of everything
that landed from the storm's start until 15 s later (every live call seals a chunk in that time), frames lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.capacity import RESULTS, machine
from benchmarks.harness import (
    Cadence,
    Call,
    Server,
    Stack,
    call_headers,
    close_all,
    cpu_seconds,
    latency_p99,
    make_tracks,
)
from benchmarks.rawws import HandshakeError, RawWebSocket
from devstack.simulator.frames import audio_data, audio_metadata, format_timestamp, now_ms

FRAMES_PER_CALL = 10
UPGRADE_TIMEOUT = 60.0  # storm: an upgrade unanswered this long counts as refused with status 0
RATE = 16000


def _storage_requests(metrics: dict[str, float]) -> dict[str, float]:
    prefix = "acs_streamer_storage_requests_total{"
    return {k[len(prefix):-1]: v for k, v in metrics.items() if k.startswith(prefix)}


def _settled(server: Server, calls_before: float, calls: int) -> dict[str, float] | None:
    """The streamer's counters once every call of the round is closed, landed and finished; None while not."""
    m = server.metrics()
    done = (m["acs_streamer_active_calls"] == 0 and m["acs_streamer_pending_chunks"] == 0
            and m["acs_streamer_finishing_sessions"] == 0
            and m["acs_streamer_sessions_total"] - calls_before >= calls)
    return m if done else None


async def _one_call(port: int, call_id: str, headers: dict[str, str], frames: list[str]) -> float:
    t0 = time.perf_counter()
    ws = await RawWebSocket.connect("127.0.0.1", port, "/ws/mixed", headers)
    latency = time.perf_counter() - t0
    ws.send_text(audio_metadata(call_id, RATE))
    for f in frames:
        ws.send_text(f)
    await ws.drain()
    await ws.close()
    return latency


async def _churn_load(port: int, calls: list[tuple[str, dict[str, str]]], concurrency: int) -> list[float]:
    track = make_tracks(1, RATE)[0]
    gate = asyncio.Semaphore(concurrency)

    async def one(call_id: str, headers: dict[str, str]) -> float:
        async with gate:
            start = now_ms()
            frames = [audio_data(format_timestamp(start + 20 * k), track.b64[k], track.silent[k])
                      for k in range(FRAMES_PER_CALL)]
            return await _one_call(port, call_id, headers, frames)

    return await asyncio.gather(*(one(c, h) for c, h in calls))


def idle_rate(server: Server, seconds: float = 1.0) -> float:
    c0, t0 = cpu_seconds(server.pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(server.pid) - c0) / (time.monotonic() - t0)


def churn_round(stack: Stack, server: Server, calls: int, concurrency: int) -> dict[str, Any]:
    call_ids = [f"churn-{uuid.uuid4().hex[:12]}" for _ in range(calls)]
    stack.register_calls(server, call_ids)
    prepared = [(c, call_headers(stack, c)) for c in call_ids]  # tokens signed before the clock starts
    idle = idle_rate(server)
    before = server.metrics() if server.kind == "streamer" else {}
    frames_before = server.frames()
    c0, t0 = cpu_seconds(server.pid), time.monotonic()
    latencies = asyncio.run(_churn_load(server.port, prepared, concurrency))
    after: dict[str, float] | None = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.kind == "bare":
            if server.frames() - frames_before >= calls * FRAMES_PER_CALL:
                break
        elif (after := _settled(server, before["acs_streamer_sessions_total"], calls)) is not None:
            break
        time.sleep(0.1)
    c1, t1 = cpu_seconds(server.pid), time.monotonic()
    cpu = max(0.0, (c1 - c0) - idle * (t1 - t0))
    out: dict[str, Any] = {
        "calls": calls, "concurrency": concurrency, "wall_seconds": round(t1 - t0, 2),
        "cpu_ms_per_call": round(cpu / calls * 1000, 3), "idle_cpu_utilisation": round(idle, 4),
        "upgrade_latency_p50_ms": round(statistics.median(latencies) * 1000, 2),
    }
    if server.kind == "streamer":
        if after is None:
            raise RuntimeError("the streamer did not settle the round's calls within 60 s")
        req_before, req_after = _storage_requests(before), _storage_requests(after)
        per_kind = {k: round((v - req_before.get(k, 0)) / calls, 2) for k, v in sorted(req_after.items())
                    if v - req_before.get(k, 0)}
        out["storage_requests_per_call"] = round(sum(per_kind.values()), 2)
        out["storage_requests_by_kind"] = per_kind
        out["frames_lost"] = int(calls * FRAMES_PER_CALL - (after["acs_streamer_frames_total"]
                                                            - before["acs_streamer_frames_total"]))
        out["chunks_landed"] = int(after["acs_streamer_chunks_uploaded_total"]
                                   - before["acs_streamer_chunks_uploaded_total"])
    return out


def churn(stack: Stack, *, calls: int, concurrency: int, rounds: int, profile: Path | None) -> dict[str, Any]:
    bare, streamer = stack.bare(), stack.streamer(MAX_LOOP_LAG_SECONDS="0")  # the cost of a call, not admission
    try:
        for server in (bare, streamer):  # warm-up: first connections, lazy imports, the JWKS fetch
            churn_round(stack, server, max(10, concurrency), concurrency)
        runs: dict[str, list[dict[str, Any]]] = {"bare": [], "streamer": []}
        for _ in range(rounds):
            for server in (bare, streamer):
                runs[server.kind].append(churn_round(stack, server, calls, concurrency))
                print(f"  {server.kind:8s} {runs[server.kind][-1]}", flush=True)
        out: dict[str, Any] = {"calls": calls, "concurrency": concurrency, "frames_per_call": FRAMES_PER_CALL,
                               "rounds": runs}
        for kind in runs:
            out[f"{kind}_cpu_ms_per_call"] = statistics.median(r["cpu_ms_per_call"] for r in runs[kind])
        out["ratio"] = round(out["streamer_cpu_ms_per_call"] / out["bare_cpu_ms_per_call"], 2)
        out["storage_requests_per_call"] = statistics.median(
            r["storage_requests_per_call"] for r in runs["streamer"])
        out["frames_lost"] = sum(r["frames_lost"] for r in runs["streamer"])
        if profile is not None:
            out["profile"] = profile_round(stack, streamer, calls, concurrency, profile)
        return out
    finally:
        bare.stop()
        streamer.stop()


def profile_round(stack: Stack, server: Server, calls: int, concurrency: int, out: Path) -> dict[str, Any]:
    """py-spy the streamer through one more churn round; -> the functions holding most samples (inclusive)."""
    spy = shutil.which("py-spy") or str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "py-spy")
    raw = out.with_suffix(".txt")
    proc = subprocess.Popen([spy, "record", "--pid", str(server.pid), "--rate", "250", "--format", "raw",
                             "--output", str(raw), "--nonblocking"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    try:
        churn_round(stack, server, calls, concurrency)
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
        proc.wait(60)
    return summarise_profile(raw)


def summarise_profile(raw: Path, top: int = 20) -> dict[str, Any]:
    """Collapsed stacks (py-spy samples busy threads only) -> the share of samples each function is on the stack
    for, leaving out the trunk every sample shares (the event loop, uvicorn's server); and the share by the
    package of the innermost frame."""
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack_.split(";")
        total += n
        for f in set(frames):
            inclusive[f] += n
        where = frames[-1].rpartition("(")[2]
        leaf[where.split("/", 1)[0] if "/" in where else where.split(":", 1)[0]] += n
    total = max(1, total)
    branches = [(f, round(n / total, 3)) for f, n in inclusive.most_common() if n / total < 0.75][:top]
    return {"samples": total, "raw": raw.name, "top_inclusive": branches,
            "innermost_by_package": [(p, round(n / total, 3)) for p, n in leaf.most_common(8)]}


def _seed_manifests(stack: Stack, server: Server, call_ids: list[str], origin_ms: int) -> None:
    """Manifests as the replica that died wrote them: a clock and one open session each."""
    from azure.storage.blob import ContainerClient

    from common import manifest as mf
    from common.layout import manifest_blob

    with ContainerClient.from_connection_string(stack.azurite.connection_string, server.container) as cc:
        for call_id in call_ids:
            doc = mf.merge(None, mf.Part(
                call_connection_id=call_id, correlation_id=call_id, sample_rate=RATE, frame_bytes=640,
                chunk_seconds=10.0, clock_origin=mf.utc_iso(origin_ms / 1000), audio_channel="mixed",
                sessions=[mf.Session(id=uuid.uuid4().hex[:16], replica="replica-lost",
                                     started_at=mf.utc_iso(origin_ms / 1000))]))
            cc.upload_blob(manifest_blob(call_id), mf.dumps(doc), overwrite=True)


def storm(stack: Stack, *, live: int, storm_calls: int, within: float, after: float, ramp: float) -> dict[str, Any]:
    server = stack.streamer(CHUNK_SECONDS="10")
    live_ids = [f"live-{uuid.uuid4().hex[:12]}" for _ in range(live)]
    storm_ids = [f"moved-{uuid.uuid4().hex[:12]}" for _ in range(storm_calls)]
    stack.register_calls(server, live_ids + storm_ids)
    _seed_manifests(stack, server, storm_ids, now_ms() - 60_000)
    tracks = make_tracks(1, RATE)
    headers = {c: call_headers(stack, c) for c in live_ids + storm_ids}

    async def run() -> dict[str, Any]:
        cadence = Cadence()
        ticker = asyncio.create_task(cadence.run())
        refused: Counter[int] = Counter()
        refused_latency: list[float] = []

        trace: list[tuple[float, float, int]] = []  # storm upgrades: (start after the storm began, latency, status)

        async def open_call(call_id: str) -> float | None:
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(UPGRADE_TIMEOUT):
                    ws = await RawWebSocket.connect("127.0.0.1", server.port, "/ws/mixed", headers[call_id])
            except HandshakeError as exc:
                refused[exc.status] += 1
                refused_latency.append(time.perf_counter() - t0)
                return None
            except (TimeoutError, OSError):  # no answer in time (a client would give up), or the socket failed
                refused[0] += 1
                return None
            latency = time.perf_counter() - t0
            ws.send_text(audio_metadata(call_id, RATE))
            cadence.add(Call(call_id, ws, tracks, now_ms(), True))
            return latency

        for call_id in live_ids:
            await open_call(call_id)
            await asyncio.sleep(ramp / live)
        await asyncio.sleep(2.0)
        m0 = await asyncio.to_thread(server.metrics)
        c0, t0 = cpu_seconds(server.pid), time.monotonic()
        rig0 = _rig(stack)
        cadence.measuring = True

        async def staggered(i: int, call_id: str) -> float | None:
            await asyncio.sleep(i * within / storm_calls)
            start = time.monotonic() - t0
            latency = await open_call(call_id)
            trace.append((round(start, 3), round(time.monotonic() - t0 - start, 3), 0 if latency is None else 101))
            return latency

        latencies = [x for x in await asyncio.gather(*(staggered(i, c) for i, c in enumerate(storm_ids)))
                     if x is not None]
        c_storm, t_storm = cpu_seconds(server.pid), time.monotonic()
        await asyncio.sleep(max(0.0, after - (t_storm - t0)))
        m1 = await asyncio.to_thread(server.metrics)
        c1, t1 = cpu_seconds(server.pid), time.monotonic()
        rig1 = _rig(stack)
        cadence.measuring = False
        cadence.stop()
        await ticker
        codes = await close_all(cadence.calls)
        return {"latencies": latencies, "refused": dict(refused), "refused_latency": sorted(refused_latency),
                "m0": m0, "m1": m1, "codes": codes, "trace": trace,
                "storm_cpu": (c_storm - c0) / (t_storm - t0), "storm_seconds": t_storm - t0,
                "window_cpu": (c1 - c0) / (t1 - t0), "window_seconds": t1 - t0,
                "frames_sent": cadence.frames_sent,
                "rig": {k: round((rig1[k] - rig0[k]) / (t1 - t0), 2) for k in rig0}}

    try:
        r = asyncio.run(run())
        landed = server.wait_landed(120)
        final = server.metrics()
    finally:
        server.stop()
    lat = sorted(r["latencies"])
    p99, chunks = latency_p99(r["m0"], r["m1"])
    bucket_max, _ = latency_p99(r["m0"], r["m1"], quantile=1.0)
    received = int(final["acs_streamer_frames_total"])
    return {
        "live_calls": live, "storm_upgrades": storm_calls, "storm_within_seconds": within,
        "accepted": len(lat), "refused_by_status": r["refused"],
        "refusal_latency_p50_ms": round(r["refused_latency"][len(r["refused_latency"]) // 2] * 1000, 1)
        if r["refused_latency"] else None,
        "upgrade_latency_p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
        "upgrade_latency_p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, 1) if lat else None,
        "upgrade_latency_max_ms": round(lat[-1] * 1000, 1) if lat else None,
        "storm_seconds": round(r["storm_seconds"], 2),
        "server_cpu_utilisation_storm": round(r["storm_cpu"], 2),
        "server_cpu_utilisation_window": round(r["window_cpu"], 2), "window_seconds": round(r["window_seconds"], 1),
        "chunks_landed_in_window": chunks, "chunk_latency_p99_le_seconds": p99,
        "chunk_latency_max_le_seconds": bucket_max,
        "chunks_within_2s": bucket_max is not None and bucket_max <= 2.0,
        "frames_sent": r["frames_sent"], "frames_received": received, "frames_lost": r["frames_sent"] - received,
        "late_or_duplicate_frames": int(final.get("acs_streamer_late_frames_total", 0)
                                        + final.get("acs_streamer_duplicate_frames_total", 0)),
        "all_chunks_landed": landed, "close_codes": r["codes"],
        "chunks_spooled": int(final["acs_streamer_chunks_spooled_total"]),
        "loop_lag_max_seconds": final.get("acs_streamer_loop_lag_max_seconds"),
        "refusals": {k.split('"')[1]: int(v) for k, v in final.items() if k.startswith("acs_streamer_refusals_total{")},
        "rig_cpu_utilisation_window": r["rig"],
    }


def steady(stack: Stack, *, calls: int, rounds: int, window: float, ramp: float) -> dict[str, Any]:
    """The steady-state guard: server CPU per frame at ACS's cadence, streamer and bare loop side by side
    (interleaved rounds, counted only while every socket streams), so a cheaper call open is not bought with a
    dearer frame."""
    from benchmarks.capacity import realtime_step

    per_frame: dict[str, list[float]] = {"bare": [], "streamer": []}
    bare, streamer = stack.bare(), stack.streamer(CHUNK_SECONDS="10", MAX_LOOP_LAG_SECONDS="0")
    try:
        for _ in range(rounds):
            for server in (bare, streamer):
                step = realtime_step(stack, server, calls, 1, RATE, window, ramp)
                per_frame[server.kind].append(step["server_cpu_us_per_frame"])
                print(f"  {server.kind:8s} {calls} calls: {step['server_cpu_us_per_frame']} us CPU per frame "
                      f"({step['server_cpu_utilisation']:.0%} of a core, {step['refused']} refused)", flush=True)
                if step["refused"]:
                    raise RuntimeError(f"{server.kind} refused {step['refused']} of {calls} calls: not a steady state")
                if server.kind == "streamer" and step["all_chunks_landed"]:
                    stack.prune(server.container or "")
    finally:
        bare.stop()
        streamer.stop()
    b, st = statistics.median(per_frame["bare"]), statistics.median(per_frame["streamer"])
    return {"calls": calls, "rounds": per_frame, "bare_us_per_frame": b, "streamer_us_per_frame": st,
            "ratio": round(b / st, 2)}


def _rig(stack: Stack) -> dict[str, float]:
    """CPU seconds so far of the rig's other processes: the load generator (this one) and Azurite."""
    az = stack.azurite.proc.pid if stack.azurite.proc else None
    return {"load_generator": time.process_time(), "azurite": cpu_seconds(az) if az else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny loads, for the test suite")
    parser.add_argument("--profile", action="store_true", help="py-spy the streamer through one churn round")
    parser.add_argument("--skip-storm", action="store_true")
    parser.add_argument("--skip-churn", action="store_true")
    parser.add_argument("--skip-steady", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None, help="keep Azurite's data and the servers' logs here")
    parser.add_argument("--live", type=int, default=300)
    parser.add_argument("--storm", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None, help="JSON results path")
    args = parser.parse_args()
    quick = args.quick
    results: dict[str, Any] = {"machine": machine(), "quick": quick}
    out = args.out or RESULTS / ("churn-quick.json" if quick else "churn.json")
    with tempfile.TemporaryDirectory(prefix="churn-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        stack = Stack(workdir)
        try:
            if not args.skip_churn:
                print("churn:", flush=True)
                results["churn"] = churn(stack, calls=40 if quick else 200, concurrency=10 if quick else 20,
                                         rounds=1 if quick else 3,
                                         profile=out.with_name(out.stem + "-profile") if args.profile else None)
            if not args.skip_steady:
                print("steady state:", flush=True)
                results["steady"] = steady(stack, calls=10 if quick else 200, rounds=1 if quick else 2,
                                           window=2.0 if quick else 10.0, ramp=0.5 if quick else 5.0)
            if not args.skip_storm:
                print("storm:", flush=True)
                results["storm"] = storm(stack, live=10 if quick else args.live,
                                         storm_calls=10 if quick else args.storm, within=1.0 if quick else 5.0,
                                         after=3.0 if quick else 15.0, ramp=1.0 if quick else 10.0)
                print(f"  {results['storm']}", flush=True)
        finally:
            stack.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nresults: {out}")


def print_table(r: dict[str, Any]) -> None:
    c = r.get("churn")
    if c:
        print(f"\nchurn ({c['calls']} calls, {c['concurrency']} at a time, {c['frames_per_call']} frames each): "
              f"server CPU per call streamer {c['streamer_cpu_ms_per_call']} ms, bare {c['bare_cpu_ms_per_call']} "
              f"ms, ratio {c['ratio']}; storage requests per call {c['storage_requests_per_call']}; "
              f"frames lost {c['frames_lost']}")
        for f, share in c.get("profile", {}).get("top_inclusive", []):
            print(f"  {share:6.1%}  {f}")
    sd = r.get("steady")
    if sd:
        print(f"steady state ({sd['calls']} calls at ACS's cadence): CPU per frame streamer "
              f"{sd['streamer_us_per_frame']} us, bare {sd['bare_us_per_frame']} us; bare/streamer {sd['ratio']}")
    s = r.get("storm")
    if s:
        print(f"storm ({s['live_calls']} live + {s['storm_upgrades']} upgrades in {s['storm_within_seconds']} s): "
              f"upgrade p50 {s['upgrade_latency_p50_ms']} ms, p99 {s['upgrade_latency_p99_ms']} ms; refused "
              f"{s['refused_by_status']}; CPU {s['server_cpu_utilisation_storm']:.0%} during the storm; chunk "
              f"p99 <= {s['chunk_latency_p99_le_seconds']} s, max <= {s['chunk_latency_max_le_seconds']} s; "
              f"frames lost {s['frames_lost']}")


if __name__ == "__main__":
    main()
