"""One media-streaming WebSocket connection: frames in, chunks out, and this session's part of the manifest.

Frame path (`on_message`): parse once → dispatch on kind → base64 into the stream's preallocated buffer at the
slot its timestamp names. No awaits, no storage, no INFO logging per frame. Storage work happens in the sink
(chunks) and in one coalescing manifest-writer task per session.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

from common import manifest as mf
from common.layout import chunk_blob
from streamer import protocol as p
from streamer.sink import ChunkJob, chunk_entry
from streamer.store import CachedManifest, LandedChunk
from streamer.timeline import CallTimeline, SealedChunk

if TYPE_CHECKING:
    from streamer.app import Context

log = logging.getLogger(__name__)

REPLICA = socket.gethostname()
MAX_CONSECUTIVE_BAD = 100
MANIFEST_MIN_INTERVAL = 1.0  # seconds between manifest writes of one session while it streams
_LOG_FIRST = 5  # per session and reason; then every 1000th


class ProtocolClose(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Session:
    def __init__(self, ctx: Context, call_id: str | None, correlation_id: str | None, channel: str):
        self.ctx = ctx
        self.id = uuid.uuid4().hex[:16]
        self.call_id = call_id
        self.correlation_id = correlation_id
        self.channel = channel  # "mixed" | "unmixed" | "auto"
        self.fmt: p.AudioFormat | None = None
        self.timeline: CallTimeline | None = None
        self.started_at = mf.now_iso()
        self.ended_at: str | None = None
        self.close_code: int | None = None
        self.clean_close = False
        self.closed = False
        self.complete = False
        self._stored: dict[str, Any] | None = None  # manifest at connect (clock origin of earlier sessions)
        self._parse_ts = p.TimestampParser()
        self._last_ts: float | None = None  # newest AudioData timestamp: the call-clock time of DTMF tones
        self._bad: Counter[str] = Counter()
        self._consecutive_bad = 0
        self._chunks: dict[str, list[dict[str, Any]]] = {}
        self._participants: dict[str, str | None] = {}
        self._dtmf: list[dict[str, Any]] = []
        self._pending = 0
        self._ignored = 0
        self._manifest_dirty = asyncio.Event()
        self._all_landed = asyncio.Event()
        self._all_landed.set()
        self._writer: asyncio.Task[None] | None = None
        self._cached: CachedManifest | None = None

    @property
    def fields(self) -> dict[str, Any]:
        return {"callConnectionId": self.call_id, "correlationId": self.correlation_id, "sessionId": self.id}

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def load_clock(self, timeout: float = 3.0) -> None:
        """Read the call's manifest, so a restarted stream continues on the same call clock and seq numbers."""
        assert self.call_id
        try:
            self._cached = await asyncio.wait_for(self.ctx.store.load_manifest(self.call_id), timeout)
            self._stored = self._cached.manifest
        except Exception as exc:
            log.warning("cannot read the manifest at connect; starting a fresh call clock",
                        extra={**self.fields, "error": str(exc)[:200]})

    def start_writer(self) -> None:
        self._writer = asyncio.create_task(self._manifest_loop(), name=f"manifest-{self.id}")

    # -- frame path -----------------------------------------------------------------------------------------
    def on_message(self, raw: str | bytes) -> None:
        """Handle one WebSocket message. Raises ProtocolClose when the socket must close."""
        metrics = self.ctx.metrics
        metrics.messages += 1
        try:
            kind, msg = p.parse(raw)
            if kind == p.AUDIO_DATA:
                pcm, ts, participant, silent = p.audio_data(msg)
                tl = self.timeline
                if tl is None:
                    raise p.FrameError("audio_before_metadata", "AudioData before AudioMetadata")
                t = None
                if ts is not None:
                    try:
                        t = self._last_ts = self._parse_ts(ts)
                    except p.FrameError as exc:  # keep the audio: it is placed right after the previous frame
                        self._bad_frame(exc)
                if self.channel == "mixed":
                    participant = None
                tl.add(participant, pcm, t, silent)
                metrics.frames += 1
                metrics.audio_bytes += len(pcm)
            elif kind == p.AUDIO_METADATA:
                self._on_metadata(p.audio_metadata(msg, self.ctx.settings.max_frame_bytes))
            elif kind == p.DTMF_DATA:
                tone, ts, participant = p.dtmf_data(msg)
                if ts is None:  # ACS's DtmfData may carry only the tone: stamp it on the call clock
                    ts = mf.utc_iso(self._last_ts if self._last_ts is not None else time.time())
                self._dtmf.append({"tone": tone, "timestamp": ts, "participantRawId": participant,
                                   "receivedAt": mf.now_iso()})
                metrics.dtmf += 1
                self._manifest_dirty.set()
            else:
                self._ignored += 1
                metrics.ignored += 1
            self._consecutive_bad = 0
        except p.FrameError as exc:
            self._bad_frame(exc)
            if exc.fatal:
                raise ProtocolClose(exc.close_code, str(exc)) from None
            self._consecutive_bad += 1
            if self._consecutive_bad > MAX_CONSECUTIVE_BAD:
                raise ProtocolClose(1007, f"{self._consecutive_bad} invalid frames in a row") from None

    def _bad_frame(self, exc: p.FrameError) -> None:
        self.ctx.metrics.bad_frames[exc.kind] += 1
        n = self._bad[exc.kind] = self._bad[exc.kind] + 1
        if n <= _LOG_FIRST or n % 1000 == 0:
            log.warning("bad frame", extra={**self.fields, "reason": exc.kind, "detail": str(exc)[:200],
                                            "count": n})

    def _on_metadata(self, fmt: p.AudioFormat) -> None:
        if self.fmt is not None:
            if fmt.same_as(self.fmt):
                return
            raise p.FrameError("format_change", "AudioMetadata changed the format mid-stream", fatal=True,
                               close_code=1003)
        if self.call_id is None:
            if not fmt.subscription_id:
                raise p.FrameError("no_call_id", "no x-ms-call-connection-id header and no subscriptionId",
                                   fatal=True, close_code=1008)
            from common.layout import is_valid_call_id

            if not is_valid_call_id(fmt.subscription_id):
                raise p.FrameError("no_call_id", "subscriptionId is not a usable call id", fatal=True,
                                   close_code=1008)
            self.call_id = fmt.subscription_id
        self.fmt = fmt
        origin, chunk_seconds = self._clock_from_stored(fmt)
        self.timeline = CallTimeline(fmt, chunk_seconds, self._on_chunk, origin=origin)
        log.info("audio format", extra={**self.fields, "sampleRate": fmt.sample_rate,
                                        "frameBytes": fmt.frame_bytes, "channel": self.channel,
                                        "continuesClock": origin is not None})
        self._manifest_dirty.set()

    def _clock_from_stored(self, fmt: p.AudioFormat) -> tuple[float | None, float]:
        chunk_seconds = self.ctx.settings.chunk_seconds
        m = self._stored
        if not m or not m.get("clockOrigin") or not m.get("chunkSeconds"):
            return None, chunk_seconds
        if m.get("sampleRate") not in (None, fmt.sample_rate):
            log.warning("earlier session used another sample rate; starting a new clock",
                        extra={**self.fields, "storedRate": m.get("sampleRate")})
            return None, chunk_seconds
        return mf.parse_iso(m["clockOrigin"]), float(m["chunkSeconds"])

    # -- chunks ---------------------------------------------------------------------------------------------
    def _on_chunk(self, chunk: SealedChunk) -> None:
        assert self.call_id and self.fmt
        self.ctx.metrics.chunks_sealed += 1
        self._pending += 1
        self._all_landed.clear()
        self._participants[chunk.stream] = chunk.participant
        self.ctx.sink.submit(ChunkJob(
            call_id=self.call_id, blob=chunk_blob(self.call_id, chunk.stream, chunk.seq), stream=chunk.stream,
            participant=chunk.participant, seq=chunk.seq, start_iso=mf.utc_iso(chunk.start),
            frame_bytes=self.fmt.frame_bytes, mask=chunk.mask, session_id=self.id, last_arrival=chunk.last_arrival,
            wav=chunk.wav, owner=self,
        ))

    def chunk_landed(self, job: ChunkJob, landed: LandedChunk) -> None:
        self._chunks.setdefault(job.stream, []).append(chunk_entry(job, landed))
        self._pending -= 1
        if self._pending == 0:
            self._all_landed.set()
        self._manifest_dirty.set()

    # -- manifest -------------------------------------------------------------------------------------------
    def part(self) -> dict[str, Any]:
        """What this session contributes to the call's manifest (see common.manifest)."""
        tl = self.timeline
        st = tl.stats if tl else None
        session = {
            "id": self.id, "replica": REPLICA, "startedAt": self.started_at, "endedAt": self.ended_at,
            "complete": self.complete, "cleanClose": self.clean_close, "closeCode": self.close_code,
            "subscriptionId": self.fmt.subscription_id if self.fmt else None,
            "sampleRate": self.fmt.sample_rate if self.fmt else None,
            "frames": st.frames if st else 0, "badFrames": sum(self._bad.values()), "ignoredMessages": self._ignored,
            "lateFramesPlaced": st.late_placed if st else 0, "lateFramesDropped": st.late_dropped if st else 0,
            "duplicateFrames": st.duplicates if st else 0, "gapFrames": st.gap_slots if st else 0,
        }
        return {
            "callConnectionId": self.call_id,
            "correlationId": self.correlation_id,
            "sampleRate": self.fmt.sample_rate if self.fmt else None,
            "chunkSeconds": tl.chunk_seconds if tl else None,
            "clockOrigin": mf.utc_iso(tl.origin) if tl and tl.origin is not None else None,
            "audioChannel": self.channel,
            "sessions": [session],
            "streams": [{"stream": s, "participantRawId": self._participants.get(s), "chunks": list(c)}
                        for s, c in self._chunks.items()],
            "gaps": [{"stream": s, "startTime": mf.utc_iso(a), "durationMs": round(d * 1000)}
                     for s, a, d in (tl.gaps() if tl else [])],
            "dtmf": list(self._dtmf),
        }

    async def _manifest_loop(self) -> None:
        """One writer per session. Writes coalesce: at most one per MANIFEST_MIN_INTERVAL while streaming (the
        chunks of four participants sealed together cost one write), immediately once the socket closed."""
        delay = 0.2
        while True:
            await self._manifest_dirty.wait()
            self._manifest_dirty.clear()
            if self.call_id is None:
                continue
            final = self.complete  # read before building the part: finish() may flip it during the write
            try:
                self._cached = await self.ctx.store.merge_manifest(self.call_id, self.part(), cached=self._cached)
                self.ctx.metrics.manifest_writes += 1
                delay = 0.2
                if final:
                    return
                if not self.closed:
                    await asyncio.sleep(MANIFEST_MIN_INTERVAL)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.ctx.metrics.upload_retries += 1
                log.warning("manifest update failed; will retry", extra={**self.fields, "error": str(exc)[:300]})
                self._manifest_dirty.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- end ------------------------------------------------------------------------------------------------
    def close(self, code: int, clean: bool) -> None:
        """Socket is gone: seal every partial chunk now (nothing received is lost), then finish in background."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self.clean_close = clean
        self.ended_at = mf.now_iso()
        if self.timeline is not None:
            self.timeline.flush()
        self._manifest_dirty.set()

    async def finish(self) -> None:
        """Wait until every chunk landed, then write the final manifest (complete if the close was clean)."""
        await self._all_landed.wait()
        self.complete = self.clean_close
        if self.call_id is None:
            if self._writer:
                self._writer.cancel()
            return
        self._manifest_dirty.set()
        if self._writer is not None:
            await self._writer

    def spool_part(self) -> None:
        """Shutdown with chunks still pending: leave the manifest part beside them for the next start."""
        if self.call_id is None:
            return
        if self._writer is not None:
            self._writer.cancel()
        try:
            self.ctx.sink.spool.put_part(self.call_id, self.id, self.part())
        except OSError as exc:
            self.ctx.metrics.spool_failures += 1
            log.critical("cannot spool manifest part", extra={**self.fields, "error": str(exc)})

    def seal_idle(self, idle_seconds: float, now: float) -> None:
        if self.timeline is not None and not self.closed:
            self.timeline.seal_idle(idle_seconds, now)
