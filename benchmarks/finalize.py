"""Finalization of a long unmixed call against real Azurite: time, peak Python memory, storage requests.

    python -m benchmarks.finalize [--minutes 60] [--speakers 4] [--rate 24000] [--chunk-seconds 10]

The call's chunks are written first through the streamer's own store (occupancy metadata, tags), each speaker
talking in turns with pauses, then `Finalizer.run` builds the per-speaker files and the multichannel file.
Memory is the process's resident-set growth during finalization (sampled every 10 ms from /proc); with
`--tracemalloc` also Python's own peak (numpy reports its buffers to it), which slows the run, so its time is not
comparable. Requests are counted at the function app store's methods.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
import tracemalloc
import uuid
from collections import Counter
from typing import Any

import numpy as np
from azure.storage.blob import BlobServiceClient

from common import manifest as mf
from common import wav
from common.layout import stream_id
from devstack.azurite import ACCOUNT, ACCOUNT_KEY, Azurite
from function_app.finalize import Finalizer
from function_app.sas import AccountKeySigner
from function_app.store import RecordingStore
from streamer.store import AzureBlobBackend
from streamer.store import RecordingStore as StreamerStore


class CountingStore(RecordingStore):
    """Counts each storage request the finalizer makes (one per method call here)."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.requests: Counter[str] = Counter()

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name in {"read_recording", "write_recording", "read_chunk", "stage_block", "commit_file",
                    "file_metadata", "read_blob", "mark_finished", "_read_json"}:
            counts = super().__getattribute__("requests")

            def counted(*a: Any, **k: Any) -> Any:
                counts[name] += 1
                return attr(*a, **k)

            return counted
        return attr


async def write_call(connection: str, container: str, call_id: str, minutes: float, speakers: int, rate: int,
                     chunk_seconds: float) -> None:
    be = AzureBlobBackend(container, connection_string=connection)
    store = StreamerStore(be)
    frame = rate // 50 * 2
    chunk_bytes = int(rate * chunk_seconds) * 2
    seqs = int(minutes * 60 / chunk_seconds)
    rng = np.random.default_rng(1)
    base = (rng.integers(-3000, 3000, chunk_bytes // 2)).astype("<i2").tobytes()
    entries: dict[str, list[mf.Chunk]] = {}
    participants = [f"8:acs:speaker-{k}" for k in range(speakers)]
    sem = asyncio.Semaphore(16)

    async def put(k: int, seq: int) -> None:
        p = participants[k]
        name = stream_id(p)
        blob = f"{call_id}/{name}/{seq:06d}.wav"
        async with sem:
            landed = await store.put_chunk(blob, wav.encode(base, rate), bytes(chunk_bytes // frame * [1]), frame)
        ref = mf.ChunkRef(stream=name, participant_raw_id=p, seq=seq,
                          start_time=mf.utc_iso(1.8e9 + seq * chunk_seconds), session_id="s1")
        entries.setdefault(name, []).append(landed.entry(blob, ref))

    # turns: speaker k holds the floor for seqs where seq % (speakers + 1) == k; one seq in each round is silence
    await asyncio.gather(*(put(k, seq) for seq in range(seqs) for k in range(speakers)
                           if seq % (speakers + 1) in (k, (k + 1) % (speakers + 1))))
    await store.merge_manifest(call_id, mf.Part(
        call_connection_id=call_id, sample_rate=rate, frame_bytes=frame, chunk_seconds=chunk_seconds,
        clock_origin=mf.utc_iso(1.8e9), audio_channel="unmixed",
        sessions=[mf.Session(id="s1", started_at=mf.utc_iso(1.8e9), ended_at=mf.utc_iso(1.8e9 + minutes * 60),
                             complete=True, settled=True, clean_close=True, end_reason=mf.EndReason.PEER_CLOSED,
                             frames=seqs)],
        streams=[mf.Stream(stream=s, participant_raw_id=c[0].blob and next(
            p for p in participants if stream_id(p) == s), chunks=sorted(c, key=lambda x: x.seq))
            for s, c in entries.items()]))
    await be.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--speakers", type=int, default=4)
    parser.add_argument("--rate", type=int, default=24000)
    parser.add_argument("--chunk-seconds", type=float, default=10.0)
    parser.add_argument("--tracemalloc", action="store_true", help="also Python's peak memory (slower)")
    parser.add_argument("--out", help="write the figures to this JSON file too")
    args = parser.parse_args()
    with Azurite() as az:
        svc = BlobServiceClient.from_connection_string(az.connection_string)
        container = svc.get_container_client("bench")
        container.create_container()
        call_id = f"bench-{uuid.uuid4().hex[:8]}"
        t0 = time.monotonic()
        asyncio.run(write_call(az.connection_string, "bench", call_id, args.minutes, args.speakers, args.rate,
                               args.chunk_seconds))
        written = time.monotonic() - t0
        store = CountingStore(container, AccountKeySigner(ACCOUNT, ACCOUNT_KEY))
        store.update_state(call_id, lambda d: bool(d.update(
            status="disconnected", audioChannel="unmixed", connectedAt=mf.utc_iso(1.8e9),
            disconnectedAt=mf.utc_iso(1.8e9 + args.minutes * 60))) or True)
        store.requests.clear()
        if args.tracemalloc:
            tracemalloc.start()
        rss = RssPeak().start()
        t1 = time.monotonic()
        cpu1 = time.process_time()
        outcome = Finalizer(store, None, settle_seconds=0).run(call_id)
        seconds, cpu = time.monotonic() - t1, time.process_time() - cpu1
        rss_growth = rss.stop()
        peak = tracemalloc.get_traced_memory()[1] if args.tracemalloc else None
        tracemalloc.stop()
        files = [b for b in container.list_blobs(name_starts_with=f"{call_id}/final/")]
        out = {"minutes": args.minutes, "speakers": args.speakers, "sampleRate": args.rate,
               "chunkSeconds": args.chunk_seconds, "outcome": str(outcome), "chunksWrittenSeconds": round(written, 1),
               "finalizeSeconds": round(seconds, 1), "finalizeCpuSeconds": round(cpu, 1),
               "peakRssGrowthMiB": round(rss_growth / 2**20, 1),
               "peakPythonMemoryMiB": None if peak is None else round(peak / 2**20, 1),
               "requests": dict(store.requests),
               "requestsTotal": sum(store.requests.values()),
               "files": {b.name.rsplit("/", 1)[-1][:24]: b.size for b in files},
               "finishedBytes": sum(b.size for b in files)}
        print(json.dumps(out, indent=2))
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(out, fh, indent=2)
                fh.write("\n")


class RssPeak:
    """The largest resident-set growth over a baseline, sampled in a thread."""

    def __init__(self) -> None:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssPeak:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _rss()) - self.base


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


if __name__ == "__main__":
    main()
