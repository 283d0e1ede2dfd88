"""Gets every sealed chunk into Blob Storage, whatever storage does meanwhile.

Chunks queue in memory up to `memory_limit` bytes; beyond it they are written to the spool directory and only a
reference stays queued. Workers upload in order and retry failures with capped exponential backoff, forever —
audio is never dropped on a storage error. On shutdown, whatever has not landed by the deadline goes to the spool
(with the owning session's manifest part), and the next start uploads it and merges the parts
(`recover_spool`). If the spool itself fails, the chunk stays in memory and the failure is logged loudly and
counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from common import manifest as mf
from streamer.metrics import Metrics
from streamer.store import LandedChunk, RecordingStore

log = logging.getLogger(__name__)


class ChunkOwner(Protocol):
    def chunk_landed(self, job: ChunkJob, landed: LandedChunk) -> None: ...


@dataclass
class ChunkJob:
    call_id: str
    blob: str
    stream: str
    participant: str | None
    seq: int
    start_iso: str
    frame_bytes: int
    mask: bytes
    session_id: str
    last_arrival: float = 0.0  # monotonic; 0 for chunks recovered from the spool of an earlier process
    wav: bytes | None = None
    spool_path: str | None = None
    owner: ChunkOwner | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return len(self.wav) if self.wav is not None else 0

    def sidecar(self) -> dict[str, Any]:
        """What the spool keeps beside the WAV, enough to land it and list it after a restart."""
        return {"call_id": self.call_id, "blob": self.blob, "stream": self.stream, "participant": self.participant,
                "seq": self.seq, "start_iso": self.start_iso, "frame_bytes": self.frame_bytes,
                "mask": self.mask.hex(), "session_id": self.session_id}


class Spool:
    """Chunk WAVs + JSON sidecars, and session manifest parts, under one directory per call."""

    def __init__(self, root: Path):
        self.root = root

    def _write_atomic(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def put_chunk(self, job: ChunkJob) -> None:
        assert job.wav is not None
        base = str(self.root / job.call_id / f"{job.stream}.{job.seq:06d}.{uuid.uuid4().hex[:8]}")
        self._write_atomic(Path(base + ".wav"), job.wav)
        self._write_atomic(Path(base + ".json"), orjson.dumps(job.sidecar()))
        job.spool_path = base
        job.wav = None

    @staticmethod
    def read_chunk(job: ChunkJob) -> bytes:
        assert job.spool_path
        return Path(job.spool_path + ".wav").read_bytes()

    @staticmethod
    def remove_chunk(job: ChunkJob) -> None:
        assert job.spool_path
        for suffix in (".json", ".wav"):
            Path(job.spool_path + suffix).unlink(missing_ok=True)

    def put_part(self, call_id: str, session_id: str, part: dict[str, Any]) -> None:
        self._write_atomic(self.root / call_id / f"part.{session_id}.json", orjson.dumps(part))

    def scan(self) -> dict[str, tuple[list[ChunkJob], list[Path]]]:
        """Everything spooled, per call: (chunk jobs referencing their files, part files)."""
        out: dict[str, tuple[list[ChunkJob], list[Path]]] = {}
        if not self.root.is_dir():
            return out
        for call_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            jobs, parts = [], []
            for side in sorted(call_dir.glob("*.json")):
                if side.name.startswith("part."):
                    parts.append(side)
                    continue
                base = str(side)[: -len(".json")]
                if not Path(base + ".wav").exists():
                    side.unlink(missing_ok=True)  # wav never completed: nothing to upload
                    continue
                d = orjson.loads(side.read_bytes())
                d["mask"] = bytes.fromhex(d["mask"])
                jobs.append(ChunkJob(**d, spool_path=base))
            out[call_dir.name] = (jobs, parts)
        return out


class UploadSink:
    def __init__(self, store: RecordingStore, spool: Spool, metrics: Metrics, *, memory_limit: int,
                 workers: int = 32, max_backoff: float = 5.0):
        self.store = store
        self.spool = spool
        self.metrics = metrics
        self.memory_limit = memory_limit
        self._queue: asyncio.Queue[ChunkJob] = asyncio.Queue()
        self._workers_n = workers
        self._workers: list[asyncio.Task[None]] = []
        self._inflight: set[int] = set()
        self._jobs_inflight: dict[int, ChunkJob] = {}
        self._max_backoff = max_backoff
        self._idle = asyncio.Event()
        self._idle.set()
        self.healthy = True

    # -- intake ---------------------------------------------------------------------------------------------
    def submit(self, job: ChunkJob) -> None:
        """Never blocks and never raises: memory if it fits, else the spool, else memory anyway (loudly)."""
        self.metrics.pending_chunks += 1
        if self.metrics.pending_upload_bytes + job.size > self.memory_limit:
            self._spool(job)
        self.metrics.pending_upload_bytes += job.size
        self._idle.clear()
        self._queue.put_nowait(job)

    def _spool(self, job: ChunkJob) -> bool:
        if job.wav is None:
            return True
        try:
            self.spool.put_chunk(job)
        except Exception as exc:
            self.metrics.spool_failures += 1
            log.critical("cannot spool chunk; keeping it in memory — audio at risk if the process dies",
                         extra={"callConnectionId": job.call_id, "blob": job.blob, "error": str(exc)})
            return False
        self.metrics.chunks_spooled += 1
        return True

    # -- workers --------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._workers = [asyncio.create_task(self._work(), name=f"upload-{i}") for i in range(self._workers_n)]

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            self._jobs_inflight[id(job)] = job
            await self._upload(job)  # on cancellation the job stays in _jobs_inflight, to be spooled
            del self._jobs_inflight[id(job)]
            self._queue.task_done()
            if self._queue.empty() and not self._jobs_inflight:
                self._idle.set()

    async def _upload(self, job: ChunkJob) -> None:
        delay = 0.2
        while True:
            try:
                data = job.wav if job.wav is not None else self.spool.read_chunk(job)
                landed = await self.store.put_chunk(job.blob, data, job.mask, job.frame_bytes)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # storage down, auth, timeouts: all retried — audio is never dropped
                self.healthy = False
                self.metrics.upload_retries += 1
                log.warning("chunk upload failed; will retry", extra={
                    "callConnectionId": job.call_id, "blob": job.blob, "error": str(exc)[:300],
                    "retryInSeconds": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff)
        self.healthy = True
        if job.last_arrival:
            self.metrics.chunk_latency.observe(time.monotonic() - job.last_arrival)
        self.metrics.chunks_uploaded += 1
        if landed.revision > 1:
            self.metrics.chunks_merged += 1
        self.metrics.pending_upload_bytes -= job.size
        self.metrics.pending_chunks -= 1
        if job.spool_path:
            self.spool.remove_chunk(job)
        if job.owner is not None:
            job.owner.chunk_landed(job, landed)

    # -- shutdown -------------------------------------------------------------------------------------------
    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def stop_and_spool(self) -> list[ChunkJob]:
        """Cancel the workers and move every chunk that has not landed to the spool. Returns those jobs."""
        for t in self._workers:
            t.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        left = list(self._jobs_inflight.values())
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        for job in left:
            self._spool(job)
        return left


async def recover_spool(spool: Spool, store: RecordingStore, metrics: Metrics, *, retry_seconds: float = 5.0,
                        stop: asyncio.Event | None = None) -> int:
    """Upload what a previous process spooled and merge its manifest parts. Retries until done or `stop`."""
    recovered = 0
    pending = spool.scan()
    while pending:
        for call_id, (jobs, parts) in list(pending.items()):
            try:
                landed_entries: dict[str, list[dict[str, Any]]] = {}
                participants: dict[str, str | None] = {}
                for job in jobs:
                    landed = await store.put_chunk(job.blob, spool.read_chunk(job), job.mask, job.frame_bytes)
                    entry = chunk_entry(job, landed)
                    landed_entries.setdefault(job.stream, []).append(entry)
                    participants[job.stream] = job.participant
                part: dict[str, Any] = {"callConnectionId": call_id, "streams": [
                    {"stream": s, "participantRawId": participants[s], "chunks": e}
                    for s, e in landed_entries.items()]}
                merged = mf.merge(None, part)
                for p in parts:
                    saved = orjson.loads(p.read_bytes())
                    for sess in saved.get("sessions", []):
                        # Every chunk of the session has now landed: it is complete if it closed cleanly.
                        sess["complete"] = bool(sess.get("cleanClose"))
                    merged = mf.merge(merged, saved)
                await store.merge_manifest(call_id, merged)
                metrics.manifest_writes += 1
                for job in jobs:
                    spool.remove_chunk(job)
                for p in parts:
                    p.unlink(missing_ok=True)
                recovered += len(jobs)
                del pending[call_id]
                with contextlib.suppress(OSError):
                    (spool.root / call_id).rmdir()
                log.info("spool recovered", extra={"callConnectionId": call_id, "chunks": len(jobs)})
            except Exception as exc:
                log.warning("spool recovery failed; will retry",
                            extra={"callConnectionId": call_id, "error": str(exc)[:300]})
        if pending:
            if stop is not None and stop.is_set():
                break
            await asyncio.sleep(retry_seconds)
    return recovered


def chunk_entry(job: ChunkJob, landed: LandedChunk) -> dict[str, Any]:
    return {"blob": job.blob, "seq": job.seq, "startTime": job.start_iso, "durationMs": landed.duration_ms,
            "sha256": landed.sha256, "bytes": landed.bytes, "revision": landed.revision,
            "sessionId": job.session_id}
