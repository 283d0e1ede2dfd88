"""What every benchmark needs: Azurite, a JWKS, the streamer (or the bare baseline) as a measured child process,
its CPU time and RSS from /proc, its Prometheus counters, and a load generator of ACS-shaped calls.

The load generator ticks every 5 ms and sends, for a quarter of the calls each tick, one 20 ms frame per
participant, so N calls cost N x 50 writes per second and only 200 wake-ups, with the frames staggered the way
independent calls would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from benchmarks.rawws import HandshakeError, RawWebSocket
from devstack.acs_tokens import TokenIssuer
from devstack.azurite import Azurite
from devstack.ports import free_port
from devstack.processes import ChildProcess
from devstack.serve import ServerThread
from devstack.simulator.frames import EncodedTrack, audio_data, audio_metadata, format_timestamp, now_ms

ISSUER = "https://acscallautomation.communication.azure.com"
AUDIENCE = "5b8f5ac1-0000-4000-8000-benchmark000"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds(pid: int) -> float:
    fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields_[11]) + int(fields_[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name' or 'name{k="v",...}': value}, read with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def latency_p99(before: dict[str, float], after: dict[str, float], quantile: float = 0.99
                ) -> tuple[float | None, int]:
    """Upper bound of the histogram bucket holding the `quantile` (by default the 99th percentile; 1.0: the
    slowest) of chunks landed between two scrapes, and how many landed."""
    prefix = 'acs_streamer_chunk_latency_seconds_bucket{le="'
    buckets = sorted(
        ((float("inf") if k[len(prefix):-2] == "+Inf" else float(k[len(prefix):-2]), v - before.get(k, 0.0))
         for k, v in after.items() if k.startswith(prefix)))
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None, 0
    for le, cum in buckets:
        if cum >= quantile * total:
            return le, int(total)
    return float("inf"), int(total)


class Stack:
    """Azurite + JWKS + token issuer, shared by the runs of one benchmark invocation."""

    def __init__(self, workdir: Path):
        raise_fd_limit()
        self.workdir = workdir
        self.azurite = Azurite(location=workdir / "azurite").start()
        self.issuer = TokenIssuer(ISSUER, AUDIENCE)

        async def keys(_request: Any) -> JSONResponse:
            return JSONResponse(self.issuer.jwks())

        self.jwks = ServerThread(Starlette(routes=[Route("/calling/keys", keys)])).start()

    def streamer(self, **env: str) -> Server:
        """A streamer as the container image runs it (including its allocator setting, see streamer/Dockerfile)."""
        port = free_port()
        base = {"MALLOC_MMAP_THRESHOLD_": "131072",
                "PORT": str(port), "AZURE_STORAGE_CONNECTION_STRING": self.azurite.connection_string,
                "ACS_RESOURCE_ID": AUDIENCE, "ACS_JWT_ISSUER": ISSUER,
                "ACS_JWKS_URL": f"{self.jwks.url}/calling/keys", "RECORDINGS_CONTAINER": f"bench{uuid.uuid4().hex[:8]}",
                "SPOOL_DIR": str(self.workdir / f"spool-{port}"), "LOG_LEVEL": "WARNING",
                "MAX_ACTIVE_CALLS": "100000"}
        proc = ChildProcess("streamer", {**base, **env}, log_path=self.workdir / f"streamer-{port}.log")
        proc.start(f"http://127.0.0.1:{port}/healthz")
        return Server("streamer", port, proc, base["RECORDINGS_CONTAINER"])

    def register_calls(self, server: Server, call_ids: list[str]) -> None:
        """Write each call's call state as the control plane does when it places or answers a call: the streamer
        records only calls it finds there (STREAMER_CALL_CHECK). Written before the load, by the rig."""
        if server.container is None:
            return
        from concurrent.futures import ThreadPoolExecutor

        import orjson
        from azure.storage.blob import ContainerClient

        from common.layout import call_state_blob
        from function_app.state import new_state

        with ContainerClient.from_connection_string(self.azurite.connection_string, server.container) as cc:
            with contextlib.suppress(Exception):
                cc.create_container()

            def put(call_id: str) -> None:
                doc = {**new_state(call_id), "status": "connected", "direction": "outbound"}
                cc.upload_blob(call_state_blob(call_id), orjson.dumps(doc), overwrite=True)

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(put, call_ids))

    def bare(self, *, uvicorn_defaults: bool = False) -> Server:
        port = free_port()
        args = ["--port", str(port)] + (["--uvicorn-defaults"] if uvicorn_defaults else [])
        proc = ChildProcess("benchmarks.bare_server", {}, args=args, log_path=self.workdir / f"bare-{port}.log")
        proc.start(f"http://127.0.0.1:{port}/stats")
        return Server("bare", port, proc)

    def prune(self, container: str, *, settle: float = 2.0) -> int:
        """Delete every blob in `container` once the calls that wrote them have landed; returns how many.
        Azurite keeps all blob metadata in one in-memory database that it rewrites as a whole, so its CPU per
        write grows with the blob count: pruning between steps keeps the rig the same for every step (Blob
        Storage itself does not slow down that way). `settle`: the calls' final manifest writes follow their
        last chunk."""
        from azure.storage.blob import ContainerClient

        time.sleep(settle)

        with ContainerClient.from_connection_string(self.azurite.connection_string, container) as cc:
            names = [b.name for b in cc.list_blobs()]
            for name in names:
                cc.delete_blob(name)
        return len(names)

    def close(self) -> None:
        self.jwks.stop()
        self.azurite.close()


@dataclass
class Server:
    kind: str
    port: int
    proc: ChildProcess
    container: str | None = None  # the streamer's recordings container

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    def frames(self) -> int:
        if self.kind == "bare":
            return int(httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=10).json()["frames"])
        return int(self.metrics()["acs_streamer_frames_total"])

    def metrics(self) -> dict[str, float]:
        if self.kind == "bare":
            return {}
        return parse_metrics(httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=30).text)

    def wait_landed(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.kind == "bare" or self.metrics()["acs_streamer_pending_chunks"] == 0:
                return True
            time.sleep(0.2)
        return False

    def stop(self) -> int:
        return self.proc.terminate(60)


def make_tracks(participants: int, rate: int, seconds: float = 2.0, seed: int = 0) -> list[EncodedTrack]:
    rng = np.random.default_rng(seed)
    return [EncodedTrack.from_samples(rng.integers(-6000, 6000, int(rate * seconds), dtype=np.int16), rate,
                                      f"8:acs:bench-speaker-{p}") for p in range(participants)]


@dataclass
class Call:
    call_id: str
    ws: RawWebSocket
    tracks: list[EncodedTrack]
    start_ms: int
    mixed: bool
    k: int = 0


@dataclass
class LoadResult:
    calls: int
    refused: int = 0
    frames_sent: int = 0
    window_frames_sent: int = 0
    close_codes: dict[int, int] = field(default_factory=dict)


class Cadence:
    """ACS's cadence for every call added: one frame per participant per 20 ms, dated on each call's own clock,
    sent from one ticker that wakes every 5 ms and serves a quarter of the calls each time (so N calls cost
    N x 50 writes per second and only 200 wake-ups, staggered the way independent calls would be)."""

    def __init__(self) -> None:
        self.groups: list[list[Call]] = [[], [], [], []]
        self.frames_sent = 0
        self.window_frames_sent = 0
        self.measuring = False
        self._added = 0
        self._stop = asyncio.Event()

    def add(self, call: Call) -> None:
        self.groups[self._added % 4].append(call)
        self._added += 1

    @property
    def calls(self) -> list[Call]:
        return [c for g in self.groups for c in g]

    @staticmethod
    def _send(c: Call) -> int:
        ts = format_timestamp(c.start_ms + 20 * c.k)
        for t in c.tracks:
            i = c.k % len(t)
            c.ws.send_text(audio_data(ts, t.b64[i], t.silent[i], "" if c.mixed else t.participant_json))
        c.k += 1
        return len(c.tracks)

    async def run(self) -> None:
        t0 = time.monotonic()
        tick = 0
        while not self._stop.is_set():
            group = self.groups[tick % 4]
            now = now_ms()
            for c in group:
                while c.start_ms + 20 * c.k <= now:  # catch up if a tick was late; never run ahead
                    n = self._send(c)
                    self.frames_sent += n
                    if self.measuring:
                        self.window_frames_sent += n
            tick += 1
            await asyncio.sleep(max(0.0, t0 + tick * 0.005 - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()


async def close_all(calls: list[Call]) -> dict[int, int]:
    """Close every call cleanly (after what was queued has been written); -> close codes seen."""
    await asyncio.gather(*(c.ws.drain() for c in calls), return_exceptions=True)
    await asyncio.gather(*(c.ws.close() for c in calls), return_exceptions=True)
    codes: dict[int, int] = {}
    for c in calls:
        codes[c.ws.close_code or 0] = codes.get(c.ws.close_code or 0, 0) + 1
    return codes


def call_headers(stack: Stack, call_id: str) -> dict[str, str]:
    return {"x-ms-call-connection-id": call_id, "x-ms-call-correlation-id": call_id,
            "Authorization": f"Bearer {stack.issuer.token(lifetime=3600)}"}


async def realtime_load(server: Server, stack: Stack, *, calls: int, participants: int, rate: int, ramp: float,
                        window: float, on_window: Any = None) -> LoadResult:
    """Open `calls` calls spread over `ramp` seconds, stream in real time, call `on_window("start"|"end")`
    around a `window`-second measuring period after the ramp, then close every call cleanly."""
    mixed = participants == 1
    path = "/ws/mixed" if mixed else "/ws/unmixed"
    tracks = make_tracks(participants, rate)
    res = LoadResult(calls)
    cadence = Cadence()

    call_ids = [f"bench-{uuid.uuid4().hex[:12]}" for _ in range(calls)]
    await asyncio.to_thread(stack.register_calls, server, call_ids)

    async def opener() -> None:
        for call_id in call_ids:
            try:
                ws = await RawWebSocket.connect("127.0.0.1", server.port, path, call_headers(stack, call_id))
            except HandshakeError:
                res.refused += 1
                continue
            ws.send_text(audio_metadata(call_id, rate))
            cadence.add(Call(call_id, ws, tracks, now_ms(), mixed))
            await asyncio.sleep(ramp / calls)

    tick_task = asyncio.create_task(cadence.run())
    await opener()
    await asyncio.sleep(1.0)
    if on_window:
        await asyncio.to_thread(on_window, "start")
    cadence.measuring = True
    await asyncio.sleep(window)
    cadence.measuring = False
    if on_window:
        await asyncio.to_thread(on_window, "end")
    cadence.stop()
    await tick_task
    res.frames_sent, res.window_frames_sent = cadence.frames_sent, cadence.window_frames_sent
    res.close_codes = await close_all(cadence.calls)
    return res


async def maxrate_load(server: Server, stack: Stack, *, connections: int, seconds: float, rate: int = 16000,
                       on_window: Any = None) -> int:
    """Send pre-built frames as fast as the server takes them; returns frames sent."""
    from benchmarks.rawws import _client_frame

    track = make_tracks(1, rate)[0]
    per_conn = 40000
    blobs = []
    start = now_ms()
    for _ in range(connections):
        frames = [_client_frame(0x1, audio_data(format_timestamp(start + 20 * k), track.b64[k % len(track)],
                                                False).encode()) for k in range(per_conn)]
        blobs.append(frames)
    sent = 0
    stop = asyncio.Event()
    call_ids = [f"max-{idx}-{uuid.uuid4().hex[:8]}" for idx in range(connections)]
    await asyncio.to_thread(stack.register_calls, server, call_ids)

    async def blast(frames: list[bytes], idx: int) -> None:
        nonlocal sent
        call_id = call_ids[idx]
        ws = await RawWebSocket.connect("127.0.0.1", server.port, "/ws/mixed", {
            "x-ms-call-connection-id": call_id, "Authorization": f"Bearer {stack.issuer.token()}"})
        ws.send_text(audio_metadata(call_id, rate))
        for i in range(0, len(frames), 64):
            if stop.is_set():
                break
            ws.writer.write(b"".join(frames[i:i + 64]))
            sent += min(64, len(frames) - i)
            await ws.drain()
        stop.set()  # the first connection to run out ends the run for all
        ws.abort()

    tasks = [asyncio.create_task(blast(b, i)) for i, b in enumerate(blobs)]
    await asyncio.sleep(1.0)
    if on_window:
        await asyncio.to_thread(on_window, "start")
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    if on_window:
        await asyncio.to_thread(on_window, "end")
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return sent
