"""The upload sink in-process: its shutdown, driven tick by tick on one event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from common import manifest as mf
from common import wav
from streamer.metrics import Metrics
from streamer.sink import ChunkJob, Spool, UploadSink
from streamer.store import LandedChunk, MemoryBackend, RecordingStore


class _GatedStore(RecordingStore):
    """put_chunk waits for a gate the test opens, so the test decides the tick at which an upload completes."""

    def __init__(self) -> None:
        super().__init__(MemoryBackend())
        self.gate: asyncio.Future[None] | None = None
        self.started = asyncio.Event()

    async def put_chunk(self, name: str, wav_bytes: bytes, mask: bytes, frame_bytes: int) -> LandedChunk:
        self.gate = asyncio.get_running_loop().create_future()
        self.started.set()
        await self.gate
        return await super().put_chunk(name, wav_bytes, mask, frame_bytes)


def _job(seq: int) -> ChunkJob:
    pcm = bytes(640)
    ref = mf.ChunkRef(stream="mixed", seq=seq, start_time="2026-01-01T00:00:00.000Z", session_id="s1")
    return ChunkJob(call_id="c1", blob=f"c1/mixed/{seq:06d}.wav", frame_bytes=640, mask=b"\x01", ref=ref,
                    wav=wav.encode(pcm, 16000))


def test_a_stop_that_arrives_as_an_upload_completes_still_stops_every_worker(tmp_path: Path) -> None:
    """Regression: on Python 3.11 `asyncio.wait_for` returns the result, swallowing the cancel, when the
    cancellation lands in the tick between the upload finishing and the worker resuming; the worker then took
    the next chunk and waited on the queue forever, so a SIGTERM'd streamer never exited."""

    async def run() -> tuple[int, bool]:
        store = _GatedStore()
        sink = UploadSink(store, Spool(tmp_path), Metrics(), memory_limit=1 << 20, workers=1)
        sink.start()
        sink.submit(_job(0))
        sink.submit(_job(1))
        await store.started.wait()
        assert store.gate is not None
        store.gate.set_result(None)
        await asyncio.sleep(0)  # the upload's coroutine runs to its end; the worker has not resumed yet
        stopping = asyncio.ensure_future(sink.stop_and_spool())
        done, _ = await asyncio.wait({stopping}, timeout=3)
        if not done:  # the bug: the worker outlives the stop
            for t in sink._workers:
                t.cancel()
            if store.gate is not None and not store.gate.done():
                store.gate.cancel()
            await asyncio.wait({stopping}, timeout=3)
            return -1, False
        left = stopping.result()
        return len(left), all(t.done() for t in sink._workers)

    left, workers_done = asyncio.run(run())
    assert workers_done and left >= 1  # the chunk not yet uploaded is spooled, not lost
    assert list(tmp_path.glob("c1/*.wav"))


class _SlowOnceStore(RecordingStore):
    """The first upload takes longer than the sink's per-attempt timeout (storage that hangs once, or a loop too
    busy to read the reply); the next ones answer at once."""

    def __init__(self) -> None:
        super().__init__(MemoryBackend())
        self.calls = 0

    async def put_chunk(self, name: str, wav_bytes: bytes, mask: bytes, frame_bytes: int) -> LandedChunk:
        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(10)
        return await super().put_chunk(name, wav_bytes, mask, frame_bytes)


def test_an_upload_that_times_out_is_retried_not_quarantined(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the attempt's timeout raises TimeoutError, which is an OSError, and was taken for "the spooled
    chunk cannot be read back": the chunk was quarantined (kept for an operator, missing from the recording)."""
    import streamer.sink as sink_module

    monkeypatch.setattr(sink_module, "UPLOAD_TIMEOUT", 0.2)

    async def run() -> tuple[LandedChunk, Metrics]:
        store, metrics = _SlowOnceStore(), Metrics()
        sink = UploadSink(store, Spool(tmp_path), metrics, memory_limit=1 << 20, workers=1)
        sink.start()
        async with asyncio.timeout(10):
            landed = await sink.submit(_job(0))
        await sink.stop_and_spool()
        return landed, metrics

    landed, metrics = asyncio.run(run())
    assert landed.revision == 1 and landed.filled == 1
    assert (metrics.chunks_quarantined, metrics.chunks_uploaded) == (0, 1)
    assert not list(tmp_path.rglob("_quarantine/**/*.wav"))
