"""Gets every sealed chunk into Blob Storage, whatever storage does meanwhile.

Chunks queue in memory up to `memory_limit` bytes; beyond it they are written to the spool directory and only a
reference stays queued. Once storage has failed, every chunk goes to the spool before it is retried (and new ones
as they are sealed), so a hard kill loses at most the chunks still open in sessions.

Failures are classified. A transient one (storage down, timeouts, throttling, auth not yet granted) never holds an
upload worker: the chunk waits for its own full-jitter backoff and the worker moves on. When the failure looks like
storage itself, workers pause behind a probe (one ping at a time, with backoff) instead of hammering it, and resume
together when it answers. A permanent one (the stored chunk has another sample rate, storage refuses the request
itself) is *quarantined*: kept in the spool's `_quarantine/` folder, logged at ERROR with the call id, counted in
`acs_streamer_chunks_quarantined_total`, named in its session's manifest entry — never dropped, never retried
forever, never in the way of other calls.

`submit` returns a future of what landed (or `ChunkQuarantined`): the sink knows blobs, bytes and slots, and the
session, which owns the manifest entries, builds them from the outcome.

On shutdown, whatever has not landed by the deadline stays in the spool (with the owning session's manifest part),
and the next start uploads it and merges the parts (`streamer.recovery`). If the spool itself fails, the chunk stays in
memory and the failure is logged loudly and counted.

Spool layout (one folder per call; names hashed where a participant id would make them long):

    {root}/{callId}/c.{hash}.{seq}.{rand}.wav|.json   a chunk and its sidecar
    {root}/{callId}/part.{sessionId}.json             a session's manifest part, spooled at shutdown
    {root}/{callId}/open.{sessionId}.json             marker of a running session (left behind by a hard kill)
    {root}/{callId}/frames.{sessionId}.log            messages held before the call clock was known
    {root}/_quarantine/{callId}/…                     chunks that can never land as they are
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import orjson

from common import manifest as mf
from common.retry import Backoff
from streamer.metrics import Metrics
from streamer.store import LandedChunk, PermanentChunkError, RecordingStore, RequestRejected

log = logging.getLogger(__name__)

QUARANTINE = "_quarantine"  # not a call id: those start with a letter or digit
STUCK_SECONDS = 30.0  # a chunk waiting longer than this makes the replica not ready
UPLOAD_TIMEOUT = 15.0  # one attempt; storage that neither answers nor fails is as good as down
OVERDUE_SECONDS = 2.0  # a chunk still in memory this long after it was sealed: storage hangs or lags; spool it


class ChunkQuarantined(Exception):
    """The chunk can never land as it is; it is kept in the spool's quarantine folder. The message says why."""


@dataclass
class ChunkJob:
    """One sealed chunk on its way to storage. `ref` says where it goes in the manifest; the sink only keeps it
    (beside the WAV when spooled) so that the chunk can still be listed after a restart."""

    call_id: str
    blob: str
    frame_bytes: int
    mask: bytes
    ref: mf.ChunkRef
    clock: mf.Part | None = field(default=None, repr=False)  # the call clock's fields (shared by a session's jobs)
    last_arrival: float = 0.0  # wall time; 0 for chunks recovered from the spool of an earlier process
    wav: bytes | None = None
    spool_path: str | None = None
    attempts: int = 0
    submitted: float = field(default_factory=time.monotonic)
    quarantined: str | None = None  # why, once the chunk is in quarantine (spool recovery keeps going past it)
    outcome: asyncio.Future[LandedChunk] | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return len(self.wav) if self.wav is not None else 0

    def sidecar(self) -> bytes:
        """What the spool keeps beside the WAV, enough to land it and list it after a restart."""
        return _sidecar.encode(_Sidecar(call_id=self.call_id, blob=self.blob, frame_bytes=self.frame_bytes,
                                        mask=self.mask.hex(), ref=self.ref, clock=self.clock))

    @classmethod
    def from_sidecar(cls, data: bytes, spool_path: str) -> ChunkJob:
        raw = orjson.loads(data)
        if isinstance(raw, dict) and "ref" not in raw and "start_iso" in raw:
            raw = _legacy_sidecar(raw)  # spooled by a version before the typed contract: land it all the same
        d = msgspec.convert(raw, _Sidecar)
        return cls(call_id=d.call_id, blob=d.blob, frame_bytes=d.frame_bytes, mask=bytes.fromhex(d.mask), ref=d.ref,
                   clock=d.clock, spool_path=spool_path)


class _Sidecar(msgspec.Struct, kw_only=True):
    call_id: str
    blob: str
    frame_bytes: int
    mask: str
    ref: mf.ChunkRef
    clock: mf.Part | None = None


_sidecar = msgspec.json.Encoder()


def _legacy_sidecar(d: dict[str, Any]) -> dict[str, Any]:
    """The flat sidecar of earlier versions (stream, participant, seq, start_iso, session_id; clock as manifest
    fields without the call id) in today's shape."""
    clock = d.get("clock")
    return {"call_id": d["call_id"], "blob": d["blob"], "frame_bytes": d["frame_bytes"], "mask": d["mask"],
            "ref": {"stream": d["stream"], "participantRawId": d.get("participant"), "seq": d["seq"],
                    "startTime": d["start_iso"], "sessionId": d["session_id"]},
            "clock": {**clock, "callConnectionId": d["call_id"]} if isinstance(clock, dict) else None}


def _write_atomic(path: Path, data: bytes, *, sync: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if sync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


class FramesLog:
    """Append-only log of WebSocket messages with their arrival times, for a session whose clock is not known yet.

    Records: 1-byte type (`t` text, `b` bytes, `e` end), float64 arrival, uint32 length, payload. The first record
    is a JSON header (`h`). A log without an `e` record belongs to a process that died while the session ran."""

    _REC = struct.Struct("<cdI")

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path = path
        self.header = header
        self._fh: Any = None

    @classmethod
    def create(cls, path: Path, header: dict[str, Any]) -> FramesLog:
        path.parent.mkdir(parents=True, exist_ok=True)
        log_ = cls(path, header)
        log_._fh = open(path, "wb", buffering=0)  # unbuffered: what was appended survives the process  # noqa: SIM115
        log_._write(b"h", 0.0, orjson.dumps(header))
        return log_

    def _write(self, kind: bytes, arrival: float, payload: bytes) -> None:
        if self._fh is None:
            self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115
        self._fh.write(self._REC.pack(kind, arrival, len(payload)) + payload)  # one write: no torn record

    def append(self, raw: str | bytes, arrival: float) -> None:
        if isinstance(raw, str):
            self._write(b"t", arrival, raw.encode("utf-8", "surrogatepass"))
        else:
            self._write(b"b", arrival, raw)

    def end(self, info: dict[str, Any]) -> None:
        """The session ended: record how, and release the file (a replay reopens it)."""
        self._write(b"e", 0.0, orjson.dumps(info))
        os.fsync(self._fh.fileno())
        self.close()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _records(self) -> Iterator[tuple[bytes, float, bytes]]:
        data = self.path.read_bytes()
        pos, n = 0, self._REC.size
        while pos + n <= len(data):
            kind, arrival, size = self._REC.unpack_from(data, pos)
            payload = data[pos + n:pos + n + size]
            if len(payload) < size:  # torn tail of a killed process
                return
            yield kind, arrival, payload
            pos += n + size

    def replay(self) -> Iterator[tuple[str | bytes, float]]:
        for kind, arrival, payload in self._records():
            if kind == b"t":
                yield payload.decode("utf-8", "surrogatepass"), arrival
            elif kind == b"b":
                yield payload, arrival

    def end_record(self) -> dict[str, Any] | None:
        for kind, _, payload in self._records():
            if kind == b"e":
                return orjson.loads(payload)  # type: ignore[no-any-return]
        return None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    @classmethod
    def open(cls, path: Path) -> FramesLog:
        log_ = cls(path, {})
        for kind, _, payload in log_._records():
            if kind == b"h":
                log_.header = orjson.loads(payload)
            break
        if not log_.header.get("callConnectionId") or not log_.header.get("sessionId"):
            raise ValueError(f"{path}: not a frames log")
        return log_


class Spool:
    """Chunk WAVs + JSON sidecars, session manifest parts, open-session markers and frames logs, one directory per
    call; quarantined chunks apart."""

    def __init__(self, root: Path):
        self.root = root

    def _call_dir(self, call_id: str) -> Path:
        return self.root / call_id

    def put_chunk(self, job: ChunkJob) -> None:
        assert job.wav is not None
        # The stream id can be ~350 characters (base64 of a participant id): hashed, so names stay short.
        base = str(self._call_dir(job.call_id) / self._chunk_name(job))
        # No fsync, as for the open-session marker: a spooled chunk has to survive the process (a kill, an OOM, a
        # container restart), which the page cache gives; the spool is an EmptyDir, lost with the node anyway. An
        # fsync here runs on the event loop, and when chunks go overdue because the loop is behind, spooling every
        # one of them with an fsync held the loop seconds more (the reconnect storm benchmark).
        _write_atomic(Path(base + ".wav"), job.wav, sync=False)
        _write_atomic(Path(base + ".json"), job.sidecar(), sync=False)
        job.spool_path = base
        job.wav = None

    @staticmethod
    def _chunk_name(job: ChunkJob) -> str:
        tag = hashlib.sha256(job.ref.stream.encode()).hexdigest()[:16]
        return f"c.{tag}.{job.ref.seq:06d}.{uuid.uuid4().hex[:8]}"

    @staticmethod
    def read_chunk(job: ChunkJob) -> bytes:
        assert job.spool_path
        return Path(job.spool_path + ".wav").read_bytes()

    @staticmethod
    def remove_chunk(job: ChunkJob) -> None:
        assert job.spool_path
        for suffix in (".json", ".wav"):
            Path(job.spool_path + suffix).unlink(missing_ok=True)

    def quarantine(self, job: ChunkJob, reason: str) -> Path:
        """Keep a chunk that can never land as it is, with why, for an operator to inspect or re-home. A spooled
        chunk's audio is moved as it is, so one whose file cannot be read is kept too."""
        folder = self.root / QUARANTINE / job.call_id
        name = self._chunk_name(job)
        if job.wav is not None:
            _write_atomic(folder / f"{name}.wav", job.wav)
        elif job.spool_path:
            folder.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.replace(job.spool_path + ".wav", folder / f"{name}.wav")
        _write_atomic(folder / f"{name}.json", orjson.dumps({**orjson.loads(job.sidecar()), "reason": reason,
                                                             "quarantinedAt": mf.now_iso()}))
        if job.spool_path:
            self.remove_chunk(job)
        job.wav = None
        return folder / f"{name}.wav"

    def put_part(self, call_id: str, session_id: str, part: mf.Part) -> None:
        _write_atomic(self._call_dir(call_id) / f"part.{session_id}.json", mf.dumps(part))

    def mark_open(self, call_id: str, session: mf.Session) -> None:
        # No fsync: the marker has to survive the process, not the node (a node loss takes the spool with it).
        _write_atomic(self._call_dir(call_id) / f"open.{session.id}.json", mf.dumps(session), sync=False)

    def unmark_open(self, call_id: str, session_id: str) -> None:
        (self._call_dir(call_id) / f"open.{session_id}.json").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._call_dir(call_id).rmdir()

    def frames_log(self, call_id: str, session_id: str, header: dict[str, Any]) -> FramesLog:
        return FramesLog.create(self._call_dir(call_id) / f"frames.{session_id}.log", header)

    def frames_logs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("*/frames.*.log") if p.parent.name != QUARANTINE)

    def set_aside(self, call_id: str, paths: list[Path]) -> Path:
        """Move spool files that cannot be read into the quarantine (kept for an operator, never retried)."""
        folder = self.root / QUARANTINE / call_id
        folder.mkdir(parents=True, exist_ok=True)
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, folder / path.name)
        return folder

    def scan(self, unreadable: dict[str, int] | None = None
             ) -> dict[str, tuple[list[ChunkJob], list[Path], list[Path]]]:
        """Everything spooled, per call: (chunk jobs referencing their files, part files, open markers). A chunk
        whose sidecar cannot be read is quarantined and counted in `unreadable[call id]`."""
        out: dict[str, tuple[list[ChunkJob], list[Path], list[Path]]] = {}
        unreadable = {} if unreadable is None else unreadable
        if not self.root.is_dir():
            return out
        for call_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name != QUARANTINE):
            jobs, parts, markers = [], [], []
            for side in sorted(call_dir.glob("*.json")):
                if side.name.startswith("part."):
                    parts.append(side)
                    continue
                if side.name.startswith("open."):
                    markers.append(side)
                    continue
                base = str(side)[: -len(".json")]
                if not Path(base + ".wav").exists():
                    side.unlink(missing_ok=True)  # wav never completed: nothing to upload
                    continue
                try:
                    jobs.append(ChunkJob.from_sidecar(side.read_bytes(), base))
                except (ValueError, KeyError, TypeError) as exc:
                    # Kept for an operator (never retried, never dropped); the call's sessions cannot be complete.
                    unreadable[call_dir.name] = unreadable.get(call_dir.name, 0) + 1
                    folder = self.set_aside(call_dir.name, [side, Path(base + ".wav")])
                    log.error("chunk quarantined: its spool sidecar is unreadable; kept for an operator", extra={
                        "callConnectionId": call_dir.name, "path": str(folder / side.name), "error": str(exc)[:200]})
            if jobs or parts or markers:
                out[call_dir.name] = (jobs, parts, markers)
        return out


class UploadSink:
    def __init__(self, store: RecordingStore, spool: Spool, metrics: Metrics, *, memory_limit: int,
                 workers: int = 32, max_backoff: float = 5.0):
        self.retry = Backoff(cap=max_backoff, on_retry=metrics.retried)
        self.store = store
        self.spool = spool
        self.metrics = metrics
        self.memory_limit = memory_limit
        self._queue: asyncio.Queue[ChunkJob] = asyncio.Queue()
        self._workers_n = workers
        self._workers: list[asyncio.Task[None]] = []
        self._outstanding: dict[int, ChunkJob] = {}  # every job not yet landed or quarantined
        self._delayed: dict[int, asyncio.TimerHandle] = {}  # jobs waiting out their backoff
        self._idle = asyncio.Event()
        self._idle.set()
        self._storage_up = asyncio.Event()
        self._storage_up.set()
        self._probe: asyncio.Task[None] | None = None
        self._stopping = False
        self.healthy = True  # storage answers (its probe succeeded, or nothing has failed)
        self.lagging = False  # a chunk waited too long: new chunks go to disk until storage answers again

    # -- intake ---------------------------------------------------------------------------------------------
    def submit(self, job: ChunkJob) -> asyncio.Future[LandedChunk]:
        """Never blocks and never raises: memory if it fits and storage is up, else the spool, else memory anyway
        (loudly). -> a future of what landed, failed with `ChunkQuarantined` if the chunk can never land."""
        job.outcome = asyncio.get_running_loop().create_future()
        self.metrics.pending_chunks += 1
        self.metrics.pending_upload_bytes += job.size
        if not self.healthy or self.lagging or self.metrics.pending_upload_bytes > self.memory_limit:
            self._spool(job)
        self._outstanding[id(job)] = job
        self._idle.clear()
        self._queue.put_nowait(job)
        return job.outcome

    def _spool(self, job: ChunkJob) -> bool:
        if job.wav is None:
            return True
        size = job.size
        try:
            self.spool.put_chunk(job)
        except Exception as exc:
            self.metrics.spool_failures += 1
            log.critical("cannot spool chunk; keeping it in memory — audio at risk if the process dies",
                         extra={"callConnectionId": job.call_id, "blob": job.blob, "error": str(exc)})
            return False
        self.metrics.pending_upload_bytes -= size
        self.metrics.chunks_spooled += 1
        return True

    # -- readiness ------------------------------------------------------------------------------------------
    def oldest_wait(self) -> float:
        """Seconds the longest-waiting chunk has been waiting to land (0 when none is)."""
        if not self._outstanding:
            return 0.0
        return time.monotonic() - min(j.submitted for j in self._outstanding.values())

    def stuck(self) -> bool:
        return self.oldest_wait() > STUCK_SECONDS

    # -- workers --------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._workers = [asyncio.create_task(self._work(), name=f"upload-{i}") for i in range(self._workers_n)]

    async def _work(self) -> None:
        while not self._stopping:  # as well as the cancel: a worker must never outlive stop_and_spool
            job = await self._queue.get()
            if not self._storage_up.is_set():
                await self._storage_up.wait()  # cancelled here, the job is still outstanding: spooled at stop
            await self._attempt(job)

    async def _attempt(self, job: ChunkJob) -> None:
        try:
            data = job.wav if job.wav is not None else self.spool.read_chunk(job)
        except OSError as exc:  # the spooled file cannot be read back: nothing left to upload
            self._quarantine(job, f"spooled chunk unreadable: {exc}")
            return
        try:
            async with asyncio.timeout(UPLOAD_TIMEOUT):  # not wait_for: see common.retry.run
                landed = await self.store.put_chunk(job.blob, data, job.mask, job.frame_bytes)
        except asyncio.CancelledError:
            raise
        except (PermanentChunkError, RequestRejected) as exc:
            self._quarantine(job, str(exc))
            return
        except Exception as exc:  # storage down, auth, timeouts (a TimeoutError is an OSError, and no reason to
            self._retry_later(job, exc)  # give up on a chunk), throttling: retried — audio is never dropped
            return
        self._landed(job, landed)

    def _retry_later(self, job: ChunkJob, exc: Exception) -> None:
        job.attempts += 1
        self.metrics.upload_retries += 1
        self.retry.note("chunk upload", job.attempts, exc)
        delay = self.retry.delay(job.attempts)
        if job.attempts <= 3 or job.attempts % 20 == 0:
            log.warning("chunk upload failed; will retry", extra={
                "callConnectionId": job.call_id, "blob": job.blob, "error": str(exc)[:300],
                "attempt": job.attempts, "retryInSeconds": round(delay, 2)})
        self._spool(job)  # before the next retry: a hard kill from here on loses nothing of it
        self._delayed[id(job)] = asyncio.get_running_loop().call_later(delay, self._requeue, job)
        self.suspect_storage()

    def _requeue(self, job: ChunkJob) -> None:
        self._delayed.pop(id(job), None)
        if id(job) in self._outstanding:
            self._queue.put_nowait(job)

    def suspect_storage(self) -> None:
        """A storage call failed: pause uploads behind one probe until storage answers (immediately, when the
        failure was not storage being down)."""
        if self._probe is None or self._probe.done():
            self._storage_up.clear()
            self._probe = asyncio.create_task(self._probe_storage(), name="storage-probe")

    async def _probe_storage(self) -> None:
        """One ping at a time until storage answers; then every waiting chunk is retried at once."""
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(5.0):
                    await self.store.backend.ping()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.healthy:  # storage is down: whatever waits in memory goes to disk now
                    self.healthy = False
                    self._spool_outstanding("storage is down")
                attempt += 1
                self.retry.note("storage probe", attempt, exc)
                await asyncio.sleep(self.retry.delay(attempt))
        if not self.healthy:
            log.info("storage answers again; retrying waiting chunks", extra={"chunks": len(self._delayed)})
        self.healthy = True
        self.lagging = False
        if attempt:  # storage was down: do not make chunks that waited it out wait their backoff too
            for key, handle in list(self._delayed.items()):
                handle.cancel()
                self._delayed.pop(key, None)
                job = self._outstanding.get(key)
                if job is not None:
                    self._queue.put_nowait(job)
        self._storage_up.set()

    def spool_overdue(self, now: float) -> None:
        """Storage that hangs instead of failing: once a chunk is overdue, every chunk waiting in memory (and every
        new one, until storage answers a probe) goes to disk, so a hard kill cannot take them. Called by the
        streamer's sweeper."""
        if not any(job.wav is not None and now - job.submitted > OVERDUE_SECONDS
                   for job in self._outstanding.values()):
            return
        if not self.lagging:
            self.lagging = True
            log.warning("chunks are not landing in time; spooling what waits in memory",
                        extra={"chunks": len(self._outstanding)})
        self._spool_outstanding("chunks are overdue")
        self.suspect_storage()

    def _spool_outstanding(self, why: str) -> None:
        spooled = sum(1 for job in list(self._outstanding.values()) if job.wav is not None and self._spool(job))
        if spooled:
            log.warning("%s; chunks waiting in memory were spooled", why, extra={"chunks": spooled})

    def _done(self, job: ChunkJob) -> None:
        self._outstanding.pop(id(job), None)
        self.metrics.pending_upload_bytes -= job.size
        self.metrics.pending_chunks -= 1
        if not self._outstanding:
            self._idle.set()

    def _landed(self, job: ChunkJob, landed: LandedChunk) -> None:
        if job.last_arrival:
            self.metrics.chunk_latency.observe(max(0.0, time.time() - job.last_arrival))
        self.metrics.chunks_uploaded += 1
        if landed.revision > 1 and landed.filled:
            self.metrics.chunks_merged += 1
        self.metrics.slot_conflicts += landed.conflicts
        self._done(job)
        if job.spool_path:
            self.spool.remove_chunk(job)
        if job.outcome is not None and not job.outcome.done():
            job.outcome.set_result(landed)

    def _quarantine(self, job: ChunkJob, reason: str) -> None:
        self._done(job)
        self.metrics.chunks_quarantined += 1
        try:
            where: Path | str = self.spool.quarantine(job, reason)
        except OSError as exc:
            self.metrics.spool_failures += 1
            where = f"not kept: {exc}"
        log.error("chunk quarantined: it can never land as it is; kept for an operator", extra={
            "callConnectionId": job.call_id, "blob": job.blob, "reason": reason[:300], "kept": str(where)})
        if job.outcome is not None and not job.outcome.done():
            job.outcome.set_exception(ChunkQuarantined(reason[:300]))

    # -- shutdown -------------------------------------------------------------------------------------------
    async def wait_idle(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False

    async def stop_and_spool(self) -> list[ChunkJob]:
        """Cancel the workers and move every chunk that has not landed to the spool. Returns those jobs."""
        self._stopping = True
        for t in self._workers:
            t.cancel()
        if self._probe is not None:
            self._probe.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for handle in self._delayed.values():
            handle.cancel()
        self._delayed.clear()
        while not self._queue.empty():
            self._queue.get_nowait()
        left = list(self._outstanding.values())
        for job in left:
            self._spool(job)
        return left
