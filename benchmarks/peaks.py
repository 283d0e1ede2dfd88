"""What the recordings page's waveforms cost: computing peaks when a chunk is stored (streamer CPU), and answering
`GET /api/recordings/{id}/peaks` for a long call (storage requests, time, answer size) against real Azurite.

    python -m benchmarks.peaks [--minutes 60] [--speakers 4] [--rate 24000] [--chunk-seconds 10] [--out F]

Part 1 times `common.peaks.levels` on one chunk of speech-like audio at 16, 24 and 48 kHz, beside the SHA-256 the
store already computes for every chunk, and gives the cost per 20-ms frame. Part 2 seeds a call of `--minutes` with
`--speakers` participants as the streamer leaves it: one chunk blob per stream and seq carrying the metadata the
streamer writes (occupancy and peaks computed from real PCM; the blob body is only a WAV header, since a listing
returns metadata, not audio) and a manifest listing them all. It then answers the peaks request as the function app
does — live (one manifest read and one listing; or, as a page following the call asks every 2 s, only the newest
chunk of each stream) and ready (from the finalizer's peaks.json) — counting every HTTP request the storage SDK
sends.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from azure.storage.blob import BlobServiceClient

from common import manifest as mf
from common import peaks, wav
from common.layout import chunk_blob, manifest_blob, stream_id
from common.slots import occupancy
from devstack.azurite import ACCOUNT, ACCOUNT_KEY, Azurite
from function_app import recordings
from function_app.peaks import write_finished
from function_app.sas import AccountKeySigner
from function_app.store import RecordingStore


def speech(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Bursts of a few hundred ms at speech-like levels with pauses of exact zeros (as the simulator's turns)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    out = np.zeros(n, dtype="<i2")
    pos = 0
    while pos < n:
        burst = int(rng.uniform(0.2, 0.8) * rate)
        t = np.arange(min(burst, n - pos)) / rate
        out[pos:pos + len(t)] = (np.sin(2 * np.pi * rng.uniform(100, 300) * t) * rng.uniform(3000, 20000)).astype("<i2")
        pos += len(t) + int(rng.uniform(0.1, 0.6) * rate)
    return out


def cpu_part(chunk_seconds: float, repeat: int = 200) -> list[dict[str, Any]]:
    rows = []
    for rate in (16000, 24000, 48000):
        pcm = speech(chunk_seconds, rate, 1).tobytes()
        frame_bytes = rate // 50 * 2
        occupied = np.ones(-(-len(pcm) // frame_bytes), dtype=bool)
        data = wav.encode(pcm, rate)
        t0 = time.perf_counter()
        for _ in range(repeat):
            peaks.encode(peaks.levels(pcm, occupied, frame_bytes, rate))
        levels_us = (time.perf_counter() - t0) / repeat * 1e6
        t0 = time.perf_counter()
        for _ in range(repeat):
            hashlib.sha256(data).hexdigest()
        sha_us = (time.perf_counter() - t0) / repeat * 1e6
        frames = round(chunk_seconds * 50)
        rows.append({"sampleRate": rate, "chunkSeconds": chunk_seconds, "peaksUsPerChunk": round(levels_us, 1),
                     "sha256UsPerChunk": round(sha_us, 1), "peaksUsPerFrame": round(levels_us / frames, 3)})
    return rows


def seed_call(container: Any, call_id: str, minutes: float, speakers: int, rate: int, chunk_seconds: float
              ) -> mf.Manifest:
    frame_bytes = rate // 50 * 2
    per_chunk = round(chunk_seconds * rate)
    seqs = int(minutes * 60 / chunk_seconds)
    header_only = wav.encode(b"", rate)
    streams = []
    origin = 1_800_000_000.0
    for k in range(speakers):
        who = f"8:acs:speaker-{k}"
        name = stream_id(who)
        chunks = []
        for seq in range(seqs):
            pcm = speech(chunk_seconds, rate, seq * speakers + k)[:per_chunk].tobytes()
            occupied = np.ones(-(-len(pcm) // frame_bytes), dtype=bool)
            blob = chunk_blob(call_id, name, seq)
            container.upload_blob(blob, header_only, overwrite=True, metadata={
                "revision": "1", "sha256": hashlib.sha256(pcm).hexdigest(), "slots": occupancy(occupied),
                "slotbytes": str(frame_bytes), peaks.META_KEY: peaks.encode(peaks.levels(pcm, occupied, frame_bytes,
                                                                                         rate))})
            chunks.append(mf.Chunk(blob=blob, seq=seq, start_time=mf.utc_iso(origin + seq * chunk_seconds),
                                   duration_ms=round(chunk_seconds * 1000), sha256=hashlib.sha256(pcm).hexdigest(),
                                   size=len(pcm) + 44, session_id="s1"))
        streams.append(mf.Stream(stream=name, participant_raw_id=who, chunks=chunks))
    manifest = mf.Manifest(call_connection_id=call_id, sample_rate=rate, frame_bytes=frame_bytes,
                           chunk_seconds=chunk_seconds, clock_origin=mf.utc_iso(origin), audio_channel="unmixed",
                           sessions=[mf.Session(id="s1", frames=1, settled=True, complete=True)], streams=streams)
    container.upload_blob(manifest_blob(call_id), mf.dumps(manifest), overwrite=True)
    return manifest


def timed(requests: Counter[str], fn: Any) -> dict[str, Any]:
    requests.clear()
    t0, c0 = time.perf_counter(), time.process_time()
    doc = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    body = json.dumps(doc).encode()
    return {"ms": round(wall * 1000, 1), "cpuMs": round(cpu * 1000, 1), "storageRequests": dict(requests),
            "answerBytes": len(body), "points": sum(len(s["levels"]) for s in doc["streams"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--speakers", type=int, default=4)
    parser.add_argument("--rate", type=int, default=24000)
    parser.add_argument("--chunk-seconds", type=float, default=10.0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    out: dict[str, Any] = {"cpu": cpu_part(args.chunk_seconds)}
    requests: Counter[str] = Counter()

    def count(request: Any) -> None:
        url = request.http_request.url
        path = url.split("?")[0]
        what = "list" if "comp=list" in url else path.rsplit("/", 1)[-1] if path.endswith(".json") else "other"
        requests[f"{request.http_request.method} {what}"] += 1

    with Azurite() as az:
        service = BlobServiceClient.from_connection_string(az.connection_string, raw_request_hook=count)
        container = service.get_container_client(f"peaks{uuid.uuid4().hex[:8]}")
        container.create_container()
        store = RecordingStore(container, AccountKeySigner(ACCOUNT, ACCOUNT_KEY))
        call_id = f"bench-{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        manifest = seed_call(container, call_id, args.minutes, args.speakers, args.rate, args.chunk_seconds)
        out["call"] = {"minutes": args.minutes, "speakers": args.speakers, "sampleRate": args.rate,
                       "chunks": sum(len(s.chunks) for s in manifest.streams),
                       "manifestBytes": len(mf.dumps(manifest)), "seedSeconds": round(time.perf_counter() - t0, 1)}
        out["live"] = {f"{pps:g}pps": timed(requests, lambda pps=pps: recordings.get_peaks(store, call_id, pps, None))
                       for pps in (10, 1)}
        last = max(c.seq for s in manifest.streams for c in s.chunks)
        # what the page asks every 2 s while it follows the call: the last chunk again and anything after it
        out["live"]["10pps-fromSeq-last"] = timed(
            requests, lambda: recordings.get_peaks(store, call_id, 10, None, from_seq=last))
        requests.clear()
        t0 = time.perf_counter()
        name = write_finished(store, manifest, 1)
        out["finalizerWrite"] = {"ms": round((time.perf_counter() - t0) * 1000, 1), "storageRequests": dict(requests),
                                 "blobBytes": len(container.download_blob(name).readall())}
        # the ready path: what recording.json points at (written by the finalizer)
        from common.recording import Recording, RecordingStatus

        ready = Recording(call_connection_id=call_id, status=RecordingStatus.READY, peaks_blob=name)
        container.upload_blob(f"{call_id}/recording.json", msgspec.json.encode(ready), overwrite=True)
        out["ready"] = {f"{pps:g}pps": timed(requests, lambda pps=pps: recordings.get_peaks(store, call_id, pps, None))
                        for pps in (10, 1)}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
