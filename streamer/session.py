"""One media-streaming WebSocket connection: frames in, chunks out, and this session's part of the manifest.

A session never places audio on a clock it could not load. Until the call's clock is known, every message is kept
as it arrived (with its arrival time) — in memory up to `PENDING_MEMORY_BYTES`, then in a frames log in the spool —
while a loader reads the call's manifest, retrying as long as storage refuses. A call without a stored clock gets
one by *claiming* it: the first session to create the manifest (a create-if-absent write) sets `clockOrigin`, and a
session that loses that race adopts the stored one. Then the kept messages are replayed through the frame path
and the session goes live. This holds whether the call id came from the upgrade header (the loader starts at
accept, no storage round trip before it) or from AudioMetadata's `subscriptionId` (it starts with that message).

Frame path (`on_message`, once live): parse once → dispatch on kind → base64 into the stream's preallocated buffer
at the slot its timestamp names. No awaits, no storage, no INFO logging per frame. Storage work happens in the
sink (chunks) and in one coalescing manifest-writer task per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from websockets.frames import CloseCode

from common import call_state as cs
from common import manifest as mf
from common.layout import chunk_blob, is_valid_call_id
from common.manifest import EndReason
from common.retry import Backoff
from streamer import protocol as p
from streamer.metrics import Metrics
from streamer.sink import ChunkJob, ChunkQuarantined, FramesLog, Spool, UploadSink
from streamer.store import CachedManifest, LandedChunk, RecordingStore, UnrecoverableClock
from streamer.timeline import FUTURE_TOLERANCE, MAX_CLOCK_SKEW, CallTimeline, SealedChunk

log = logging.getLogger(__name__)

REPLICA = socket.gethostname()
MAX_CONSECUTIVE_BAD = 100
MANIFEST_MIN_INTERVAL = 1.0  # seconds between manifest writes of one session while it streams
PENDING_MEMORY_BYTES = 1 << 20  # messages kept in memory while the clock is unknown; beyond, the frames log
HELD_IN_MEMORY_SECONDS = 2.0  # held longer than this, messages go to the frames log (a hard kill keeps them)
MAX_HELD_BYTES = 64 << 20  # frames log bound per session (minutes of audio); beyond, 1013 "try again later"
MAX_DTMF_PER_SESSION = 1000  # tones kept per session; the rest are counted in `dtmfDropped`
MAX_GAPS_PER_SESSION = 2000  # gap entries written per session (all are in gapFrames); the rest: `gapsOmitted`
_LOG_FIRST = 5  # per session and reason; then every 1000th
KNOWN_CALL_WAIT_SECONDS = 10.0  # how long a session waits for the control plane to record a new call
ENDED_GRACE_SECONDS = 2.0  # a session that began this long after the call ended is not part of the call
_ORIGIN_SETTLE_FRAMES = 5  # a new call's clock starts at the earliest of its first frames (they may be reordered)
_ORIGIN_SETTLE_SECONDS = 0.1  # ... or of those held by then
_ORIGIN_LOOKAHEAD = 25  # AudioData frames (0.5 s) a new call waits for a plausible timestamp before its clock starts
_wall = time.time

PENDING, LIVE, FAILED = 0, 1, 2


class ProtocolClose(Exception):
    """The socket must close with `code` (a websockets CloseCode) and `reason`."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class SessionConfig:
    """The settings a session reads (from streamer.settings, once per process)."""

    chunk_seconds: float = 10.0
    max_frame_bytes: int = 65536
    call_check: bool = True


class Session:
    """One media-streaming WebSocket connection. Its collaborators are explicit: the store (clock and manifest),
    the sink (chunks) and its spool (what must survive a kill), and the process-wide counters."""

    def __init__(self, call_id: str | None, correlation_id: str | None, channel: str, *, store: RecordingStore,
                 sink: UploadSink, spool: Spool, metrics: Metrics, config: SessionConfig,
                 session_id: str | None = None, started_at: str | None = None):
        self.store = store
        self.sink = sink
        self.spool = spool
        self.metrics = metrics
        self.config = config
        self._retry_policy = Backoff(on_retry=metrics.retried)
        self.id = session_id or uuid.uuid4().hex[:16]
        self.call_id = call_id
        self.correlation_id = correlation_id
        self.channel = channel  # "mixed" | "unmixed" | "auto"
        self.fmt: p.AudioFormat | None = None
        self.timeline: CallTimeline | None = None
        self.started_at = started_at or mf.now_iso()
        self.ended_at: str | None = None
        self.close_code: int | None = None
        self.clean_close = False
        self.end_reason: EndReason | None = None
        self.closed = False
        self.complete = False
        self.mode = PENDING
        self._fatal: ProtocolClose | None = None
        # origin, chunk seconds, and the call's sample rate and frame length (None: not recorded yet)
        self._clock: tuple[float, float, int | None, int | None] | None = None
        self._parse_ts = p.TimestampParser()
        self._last_ts: float | None = None  # newest AudioData timestamp: the call-clock time of DTMF tones
        self._bad: Counter[str] = Counter()
        self._consecutive_bad = 0
        self._chunks: dict[str, list[mf.Chunk]] = {}
        self._participants: dict[str, str | None] = {}
        self._dtmf: list[mf.Dtmf] = []
        self._dtmf_dropped = 0
        self._conflicts = 0
        self._quarantined: list[mf.QuarantinedChunk] = []
        self._pending = 0
        self._ignored = 0
        self._manifest_dirty = asyncio.Event()
        self._all_landed = asyncio.Event()
        self._all_landed.set()
        self._writer: asyncio.Task[None] | None = None
        self._loader: asyncio.Task[None] | None = None
        self._cached: CachedManifest | None = None
        # while PENDING: messages as received, and what the loader needs to know about them
        self._held: list[tuple[str | bytes, float]] = []
        self._held_bytes = 0
        self._log: FramesLog | None = None
        self._log_ended = False
        self._held_fmt: p.AudioFormat | None = None
        self._held_bad_run = 0
        self._held_dtmf = 0
        self._log_bytes = 0
        self._origin: float | None = None  # where a new call's clock would start (from the first audio held)
        self._origin_frames = 0
        self._origin_settled = asyncio.Event()
        self._claiming = False
        self._claimed_at = 0.0  # monotonic time the clock claim (the session's first manifest write) landed
        self._listed = False  # the stored manifest lists this session (its claim or one of its writes landed)
        self._first_arrival: float | None = None
        self._implausible = 0
        self._wake = asyncio.Event()  # call id known, first audio held, or socket closed
        self._marked = False
        self._finished = False
        self._clock_part: mf.Part | None = None
        self._replayed: FramesLog | None = None
        self._held_since = 0.0  # monotonic time the oldest message held in memory arrived
        self.on_fatal: Callable[[ProtocolClose], None] | None = None  # set by the endpoint
        self.on_message = self._hold_message  # type: ignore[method-assign]  # until the clock is known

    @property
    def fields(self) -> dict[str, Any]:
        return {"callConnectionId": self.call_id, "correlationId": self.correlation_id, "sessionId": self.id}

    @property
    def has_content(self) -> bool:
        return bool((self.timeline is not None and self.timeline.stats.frames) or self._dtmf)

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the clock loader and the manifest writer (after accept: no storage round trip before it)."""
        self._loader = asyncio.create_task(self._load(), name=f"clock-{self.id}")
        self._writer = asyncio.create_task(self._manifest_loop(), name=f"manifest-{self.id}")

    async def _retry(self, what: str, op: Callable[[], Any]) -> Any:
        """Run a storage operation until it succeeds; the session waits (messages held) rather than guess."""

        def failed(attempt: int, exc: BaseException) -> None:
            if attempt <= 3 or attempt % 20 == 0:
                log.warning("%s failed; holding this session's audio until it succeeds", what,
                            extra={**self.fields, "error": str(exc)[:200], "attempt": attempt})
            self.sink.suspect_storage()
            if self._log is None and self._held:
                self._spill()  # storage is down: what is held must survive a hard kill

        return await self._retry_policy.run(what, op, timeout=10.0, on_failure=failed,
                                            retry_if=lambda exc: not isinstance(exc, UnrecoverableClock))

    async def _load(self) -> None:
        try:
            await self._load_clock()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not storage being down (that is retried): keep what was held for the next start
            if isinstance(exc, UnrecoverableClock):
                log.critical("%s; this session's audio is kept in the spool for an operator", exc,
                             extra=self.fields)
            else:
                log.exception("clock loader failed; what the session held is kept in the spool", extra=self.fields)
            if self.call_id is not None and self.mode == PENDING:
                if self._log is None:
                    self._spill()
                if self._log is not None:
                    self._end_log()
                    self._log.close()
                    self._log = None  # left in the spool: the next start replays it
            self._held, self._held_bytes = [], 0
            self._fatal = ProtocolClose(CloseCode.INTERNAL_ERROR, "internal error")
            self.mode = FAILED
            self.on_message = self._hold_message  # type: ignore[method-assign]
            if self.on_fatal is not None and not self.closed:
                self.on_fatal(self._fatal)

    async def _load_clock(self) -> None:
        """Find the call's clock (stored, or claimed for a new call), then replay what was held and go live."""
        while self.call_id is None:
            if self.closed or self.mode == FAILED:
                return
            self._wake.clear()
            await self._wake.wait()
        call_id = self.call_id
        # Whether the control plane knows the call is asked at once, while the first audio is awaited: a refusal
        # ends the wait, and nothing is written for a call that is refused.
        check = asyncio.ensure_future(self._check_call(call_id)) if self.config.call_check else None
        if check is not None:
            check.add_done_callback(lambda _t: self._wake.set())

        def refused() -> bool:
            return check is not None and check.done() and (check.cancelled() or check.exception() is not None
                                                           or check.result() is not None)
        try:
            while self._origin is None and not refused():  # a new call's clock starts at its first audio
                if self.closed or self.mode == FAILED:
                    self._origin = self._first_arrival  # None: no audio at all, nothing to claim a clock with
                    break
                self._wake.clear()
                await self._wake.wait()
            if self._origin is not None and not self.closed and not refused():
                # frames reordered at the very start: the earliest of the first few sets the clock
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_ORIGIN_SETTLE_SECONDS):
                        await self._origin_settled.wait()
            refusal = await check if check is not None else None
        finally:
            if check is not None and not check.done():
                check.cancel()
        if refusal is not None:
            self._refuse(*refusal)
            return
        if self._origin is None:
            # What was held is still judged (bad input counted) on a clock of its own; there is no audio in it.
            self._replay_and_go_live()
            return
        self._claiming = True
        claim = mf.Part(call_connection_id=call_id, correlation_id=self.correlation_id,
                        sample_rate=self._held_fmt.sample_rate if self._held_fmt else None,
                        frame_bytes=self._held_fmt.frame_bytes if self._held_fmt else None,
                        chunk_seconds=self._chunk_seconds(), clock_origin=mf.utc_iso(self._origin),
                        audio_channel=self.channel,  # type: ignore[arg-type]  # a ChannelHint
                        # frames=1: the session has audio (its first frame set the clock), so the manifest cannot
                        # read complete while it is open; its own writes carry the real count
                        sessions=[mf.Session(id=self.id, replica=REPLICA, started_at=self.started_at, frames=1)])
        # Create-first: one request for a new call; a call that has a manifest (a reconnect, a restart of
        # streaming) reads it and takes its clock. Storage down: retried, messages held (and spilled) meanwhile.
        cached = await self._retry("claiming the call clock", lambda: self.store.claim_clock(call_id, claim))
        stored = cached.manifest
        if stored is not None and any(x.id == self.id for x in stored.sessions):
            self._listed = True  # the claim listed this session: its next write can wait
            self._claimed_at = time.monotonic()
        # else the call had a manifest without this session: its first write follows at once (even after a close),
        # so that the manifest never reads complete while a session of the call is open and unlisted
        assert stored is not None and stored.clock_origin is not None and stored.chunk_seconds is not None
        self._cached = cached
        self.adopt_clock(mf.parse_iso(stored.clock_origin), float(stored.chunk_seconds), stored.sample_rate,
                         stored.frame_bytes)

    async def _check_call(self, call_id: str) -> tuple[str, str] | None:
        """Is this a call the control plane placed or answered, and not one that ended before this session began?
        The control plane writes the call state right after ACS returns the call (and again at each callback),
        so a new call's media may arrive a moment before it: the state is looked for again for a while."""
        deadline = time.monotonic() + KNOWN_CALL_WAIT_SECONDS
        while True:
            state: cs.CallState | None = await self._retry("reading the call state",
                                                           lambda: self.store.read_call_state(call_id))
            if state is not None:
                break
            if time.monotonic() >= deadline:
                return "unknown_call", "no call with this id was placed or answered by this recorder"
            await asyncio.sleep(0.5)
        if state.ended:
            ended = state.disconnected_at
            try:
                after_end = ended is None or mf.parse_iso(self.started_at) > mf.parse_iso(ended) + ENDED_GRACE_SECONDS
            except (TypeError, ValueError):
                after_end = True
            if after_end:
                return "call_ended", "this call has ended"
        return None

    def _refuse(self, reason: str, message: str) -> None:
        """Not a call to record: whatever was held is let go (logged and counted) and the socket is closed."""
        held = len(self._held)
        self._held, self._held_bytes = [], 0
        if self._log is not None:
            self._log.remove()
            self._log = None
        self.metrics.refusals[reason] += 1
        log.warning("session refused: %s; %d held messages discarded", message, held,
                    extra={**self.fields, "reason": reason})
        self._fatal = ProtocolClose(CloseCode.POLICY_VIOLATION, message)
        self.mode = FAILED
        self.on_message = self._hold_message  # type: ignore[method-assign]
        if self.on_fatal is not None and not self.closed:
            self.on_fatal(self._fatal)
        self._manifest_dirty.set()

    def _chunk_seconds(self) -> float:
        """CHUNK_SECONDS rounded to whole frames, as the timeline cuts it: the span readers place chunk k at."""
        seconds = self.config.chunk_seconds
        if self._held_fmt is None:
            return seconds
        frame = self._held_fmt.frame_seconds
        return max(1, round(seconds / frame)) * frame

    def adopt_clock(self, origin: float, chunk_seconds: float, sample_rate: int | None = None,
                    frame_bytes: int | None = None) -> None:
        """The call clock is known: replay what was held on it and go live. (The loader's last step; in-process
        users of the frame path, like its benchmark, call it directly.)"""
        self._clock = (origin, chunk_seconds, sample_rate, frame_bytes)
        self._replay_and_go_live()

    def _replay_and_go_live(self) -> None:
        held, self._held, self._held_bytes = self._held, [], 0
        frames_log, self._log = self._log, None
        self.mode = LIVE
        self.__dict__.pop("on_message", None)  # the class's frame path from now on
        try:
            if frames_log is not None:
                for raw, arrival in frames_log.replay():
                    self.on_message(raw, arrival)
            for raw, arrival in held:
                self.on_message(raw, arrival)
        except ProtocolClose as exc:
            self._fatal = exc
            self.mode = FAILED
            self.on_message = self._hold_message  # type: ignore[method-assign]  # raises the close from now on
            if self.on_fatal is not None and not self.closed:  # the socket is idle here: close it from this side
                self.on_fatal(exc)
        finally:
            if frames_log is not None:
                frames_log.close()
                self._replayed = frames_log  # kept until what it held has landed (finish) or is spooled
        if self.closed and self.timeline is not None:
            self.timeline.flush()
        self._manifest_dirty.set()

    # -- frame path -----------------------------------------------------------------------------------------
    def on_message(self, raw: str | bytes, arrival: float | None = None) -> None:
        """Handle one WebSocket message (that arrived at `arrival`, wall time; now by default). Raises ProtocolClose
        when the socket must close. Until the session is live, an instance attribute of the same name shadows
        this method with `_hold_message`, so the live path carries no mode check."""
        if arrival is None:
            arrival = _wall()
        metrics = self.metrics
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
                tl.add(participant, pcm, t, silent, arrival)
                metrics.frames += 1
                metrics.audio_bytes += len(pcm)
            elif kind == p.AUDIO_METADATA:
                self._on_metadata(p.audio_metadata(msg, self.config.max_frame_bytes))
            elif kind == p.DTMF_DATA:
                self._on_dtmf(*p.dtmf_data(msg), arrival)
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
                raise ProtocolClose(CloseCode.INVALID_DATA, f"{self._consecutive_bad} invalid frames in a row"
                                    ) from None

    def _hold_message(self, raw: str | bytes, arrival: float | None = None) -> None:
        self._hold(raw, _wall() if arrival is None else arrival)

    def _hold(self, raw: str | bytes, arrival: float) -> None:
        """Keep a message until the clock is known. Learns the call id (from AudioMetadata) and the clock origin
        candidate, which the loader needs; the frame path proper runs when the messages are replayed."""
        if self.mode == FAILED:
            assert self._fatal is not None
            raise self._fatal
        if not self._peek(raw, arrival):
            return
        if self._log is None and self.call_id is not None and not self.sink.healthy:
            self._spill()  # storage is known to be down: what is held must survive a hard kill
        if self._log is not None:
            self._log_bytes += len(raw)
            if self._log_bytes > MAX_HELD_BYTES:
                raise ProtocolClose(CloseCode.TRY_AGAIN_LATER,
                                    "storage unavailable: cannot hold more of this stream; try again later")
            self._log.append(raw, arrival)
            return
        if not self._held:
            self._held_since = time.monotonic()
        self._held.append((raw, arrival))
        self._held_bytes += len(raw)
        if self.call_id is not None and time.monotonic() - self._held_since > HELD_IN_MEMORY_SECONDS:
            self._spill()  # the clock is slow to come (storage lagging, a new call not yet recorded): to disk
        elif self._held_bytes > PENDING_MEMORY_BYTES:
            if self.call_id is None:
                raise ProtocolClose(CloseCode.POLICY_VIOLATION,
                                    "no usable AudioMetadata (call id) in the first messages")
            self._spill()

    def _peek(self, raw: str | bytes, arrival: float) -> bool:
        """A first look at a message that arrived before the clock was known: what the loader needs, and the
        checks that must close the socket now (a fatal format, a flood of garbage) rather than later. Returns
        whether to keep it for the replay, which judges it fully; kinds we never record are counted and let go."""
        try:
            kind, msg = p.parse(raw)
            self._held_bad_run = 0
            if kind == p.AUDIO_DATA:
                if self._held_fmt is not None and not self._claiming:
                    p.audio_data(msg)  # a frame the replay will reject must not decide where the clock starts
                    self._note_audio(msg, arrival)
            elif kind == p.AUDIO_METADATA:
                if self._held_fmt is None:
                    fmt = p.audio_metadata(msg, self.config.max_frame_bytes)
                    self._held_fmt = fmt
                    if self.call_id is None:
                        self.call_id = self._call_id_from(fmt)
                        self._wake.set()
            elif kind == p.DTMF_DATA:
                p.dtmf_data(msg)  # a bad one is kept: the replay counts it
                self._held_dtmf += 1
                if self._held_dtmf > MAX_DTMF_PER_SESSION:
                    self._dtmf_dropped += 1
                    return False
            else:
                self._ignored += 1
                self.metrics.ignored += 1
                return False
        except p.FrameError as exc:
            if exc.fatal:  # the socket closes now rather than after the clock is known
                self._bad_frame(exc)
                raise ProtocolClose(exc.close_code, str(exc)) from None
            self._held_bad_run += 1
            if self._held_bad_run > MAX_CONSECUTIVE_BAD:  # the replay counts each of them
                raise ProtocolClose(CloseCode.INVALID_DATA, f"{self._held_bad_run} invalid frames in a row") from None
        return True

    def _note_audio(self, msg: dict[str, Any], arrival: float) -> None:
        """Find the origin a new call's clock would start at: the first timestamp the receive clock finds plausible
        (see streamer.timeline), moved back one frame per implausible frame before it; if none of the first
        `_ORIGIN_LOOKAHEAD` frames is plausible, the first one's arrival."""
        assert self._held_fmt is not None
        ad = msg.get("audioData")
        ts = ad.get("timestamp") if isinstance(ad, dict) else None
        t = None
        if isinstance(ts, str):
            try:
                t = p.TimestampParser()(ts)
            except p.FrameError:
                t = None
        if t is not None and -MAX_CLOCK_SKEW <= t - arrival <= FUTURE_TOLERANCE:
            candidate = t - self._implausible * self._held_fmt.frame_seconds
            self._origin = candidate if self._origin is None else min(self._origin, candidate)
            self._origin_frames += 1
            if self._origin_frames >= _ORIGIN_SETTLE_FRAMES:
                self._origin_settled.set()
            self._wake.set()
            return
        if self._origin is not None:
            return
        if self._first_arrival is None:
            self._first_arrival = arrival
        self._implausible += 1
        if self._implausible >= _ORIGIN_LOOKAHEAD:
            self._origin = self._first_arrival
            self._origin_settled.set()
            self._wake.set()

    def _spill(self) -> None:
        """Memory bound reached while the clock is still unknown: move what is held to the spool's frames log."""
        assert self.call_id is not None
        try:
            frames_log = self.spool.frames_log(self.call_id, self.id, self._log_header())
            for raw, arrival in self._held:
                frames_log.append(raw, arrival)
        except OSError as exc:
            self.metrics.spool_failures += 1
            self._held_since = time.monotonic()  # tried again in HELD_IN_MEMORY_SECONDS, not on every message
            log.critical("cannot spool held frames; keeping them in memory", extra={**self.fields,
                                                                                    "error": str(exc)})
            return
        self._log = frames_log
        self._held, self._held_bytes = [], 0
        if self.closed:  # spilled after the socket went (storage failed later): the log must say how it ended
            self._end_log()

    def _log_header(self) -> dict[str, Any]:
        return {"callConnectionId": self.call_id, "sessionId": self.id, "correlationId": self.correlation_id,
                "channel": self.channel, "startedAt": self.started_at, "replica": REPLICA}

    def _call_id_from(self, fmt: p.AudioFormat) -> str:
        if not fmt.subscription_id:
            raise p.FrameError("no_call_id", "no x-ms-call-connection-id header and no subscriptionId",
                               fatal=True, close_code=CloseCode.POLICY_VIOLATION)
        if not is_valid_call_id(fmt.subscription_id):
            raise p.FrameError("no_call_id", "subscriptionId is not a usable call id", fatal=True,
                               close_code=CloseCode.POLICY_VIOLATION)
        return fmt.subscription_id

    def _bad_frame(self, exc: p.FrameError) -> None:
        self.metrics.bad_frames[exc.kind] += 1
        n = self._bad[exc.kind] = self._bad[exc.kind] + 1
        if n <= _LOG_FIRST or n % 1000 == 0:
            log.warning("bad frame", extra={**self.fields, "reason": exc.kind, "detail": str(exc)[:200],
                                            "count": n})

    def _on_metadata(self, fmt: p.AudioFormat) -> None:
        if self.fmt is not None:
            if fmt.same_as(self.fmt):
                return
            raise p.FrameError("format_change", "AudioMetadata changed the format mid-stream", fatal=True,
                               close_code=CloseCode.UNSUPPORTED_DATA)
        if self.call_id is None:
            self.call_id = self._call_id_from(fmt)
        if self._clock is None:  # replaying a session that ended before any audio: nothing to place
            self.fmt = fmt
            return
        origin, chunk_seconds, stored_rate, stored_frame = self._clock
        if stored_rate not in (None, fmt.sample_rate) or stored_frame not in (None, fmt.frame_bytes):
            # One call, one format: a chunk of this session would have to be merged into a chunk of another rate
            # or slot grid. Refused here, where the peer can be told, rather than discovered at upload.
            raise p.FrameError("format_change", f"this call is recorded at {stored_rate} Hz in {stored_frame}-byte "
                               f"frames; this session sends {fmt.sample_rate} Hz in {fmt.frame_bytes}-byte frames",
                               fatal=True, close_code=CloseCode.UNSUPPORTED_DATA)
        self.fmt = fmt
        self.timeline = CallTimeline(fmt, chunk_seconds, self._on_chunk, origin=origin)
        self._clock_part = mf.Part(call_connection_id=self.call_id or "", sample_rate=fmt.sample_rate,
                                   frame_bytes=fmt.frame_bytes, chunk_seconds=self.timeline.chunk_seconds,
                                   clock_origin=mf.utc_iso(origin), correlation_id=self.correlation_id,
                                   audio_channel=self.channel)  # type: ignore[arg-type]
        self._mark_open()
        log.info("audio format", extra={**self.fields, "sampleRate": fmt.sample_rate,
                                        "frameBytes": fmt.frame_bytes, "channel": self.channel,
                                        "clockOrigin": mf.utc_iso(origin)})
        self._manifest_dirty.set()

    def _on_dtmf(self, tone: str, ts: str | None, participant: str | None, arrival: float) -> None:
        if len(self._dtmf) >= MAX_DTMF_PER_SESSION:
            self._dtmf_dropped += 1
            return
        t = None
        if ts is not None:
            try:
                t = self._parse_ts(ts)
            except p.FrameError:
                t = None
            if t is not None and not -MAX_CLOCK_SKEW <= t - arrival <= FUTURE_TOLERANCE:
                t = None  # as implausible as a wild audio timestamp (and it would sort ahead of real tones)
        if t is None:  # ACS's DtmfData may carry only the tone: stamp it on the call clock
            t = self._last_ts if self._last_ts is not None else arrival
        self._dtmf.append(mf.Dtmf(tone=tone, timestamp=mf.utc_iso(t), participant_raw_id=participant,
                                  received_at=mf.utc_iso(arrival)))
        self.metrics.dtmf += 1
        self._manifest_dirty.set()

    # -- chunks ---------------------------------------------------------------------------------------------
    def _on_chunk(self, chunk: SealedChunk) -> None:
        assert self.call_id and self.fmt
        self.metrics.chunks_sealed += 1
        self._pending += 1
        self._all_landed.clear()
        self._participants[chunk.stream] = chunk.participant
        ref = mf.ChunkRef(stream=chunk.stream, participant_raw_id=chunk.participant, seq=chunk.seq,
                          start_time=mf.utc_iso(chunk.start), session_id=self.id)
        blob = chunk_blob(self.call_id, chunk.stream, chunk.seq)
        outcome = self.sink.submit(ChunkJob(call_id=self.call_id, blob=blob, frame_bytes=self.fmt.frame_bytes,
                                            mask=chunk.mask, ref=ref, clock=self._clock_part,
                                            last_arrival=chunk.last_arrival, wav=chunk.wav))
        outcome.add_done_callback(partial(self._chunk_outcome, blob, ref))

    def _chunk_outcome(self, blob: str, ref: mf.ChunkRef, outcome: asyncio.Future[LandedChunk]) -> None:
        """The sink's answer for one chunk: what landed goes into this session's part, a quarantine is named."""
        if outcome.cancelled():
            return  # the process is stopping: the chunk is in the spool and the session's part beside it
        exc = outcome.exception()
        if isinstance(exc, ChunkQuarantined):
            self._quarantined.append(mf.QuarantinedChunk(stream=ref.stream, seq=ref.seq, reason=str(exc)[:300]))
        elif exc is not None:  # the sink resolves with a landing or a quarantine only; anything else is a bug
            log.error("chunk outcome failed: %r", exc, extra=self.fields)
        else:
            landed = outcome.result()
            self._chunks.setdefault(ref.stream, []).append(landed.entry(blob, ref))
            self._conflicts += landed.conflicts

        self._pending -= 1
        if self._pending == 0:
            self._all_landed.set()
        self._manifest_dirty.set()

    # -- manifest -------------------------------------------------------------------------------------------
    def part(self) -> mf.Part:
        """What this session contributes to the call's manifest (see common.manifest)."""
        assert self.call_id is not None
        tl = self.timeline
        st = tl.stats if tl else None
        fmt = self.fmt
        counts: dict[str, Any] = {} if st is None or tl is None else {
            "frames": st.frames, "late_frames_placed": st.late_placed, "late_frames_dropped": st.late_dropped,
            "duplicate_frames": st.duplicates, "gap_frames": st.gap_slots, "bad_timestamps": st.bad_timestamps,
            "gaps_omitted": max(0, tl.gap_count - MAX_GAPS_PER_SESSION), "capped_frames": st.capped_frames,
            "frames_before_origin": st.before_origin, "capped_participants": list(st.capped_ids)}
        session = mf.Session(
            id=self.id, replica=REPLICA, started_at=self.started_at, ended_at=self.ended_at,
            complete=self.complete, settled=self._finished, clean_close=self.clean_close,
            close_code=self.close_code,
            end_reason=self.end_reason,
            subscription_id=fmt.subscription_id[:128] if fmt and fmt.subscription_id else None,
            sample_rate=fmt.sample_rate if fmt else None,
            bad_frames=sum(self._bad.values()), ignored_messages=self._ignored, conflict_frames=self._conflicts,
            dtmf_tones=len(self._dtmf), dtmf_dropped=self._dtmf_dropped,
            quarantined_chunks=list(self._quarantined), **counts)
        return mf.Part(
            call_connection_id=self.call_id,
            correlation_id=self.correlation_id,
            sample_rate=fmt.sample_rate if fmt else None,
            frame_bytes=fmt.frame_bytes if fmt else None,
            chunk_seconds=tl.chunk_seconds if tl else None,
            clock_origin=mf.utc_iso(tl.origin) if tl and tl.origin is not None else None,
            audio_channel=self.channel,  # type: ignore[arg-type]
            sessions=[session],
            streams=[mf.Stream(stream=s, participant_raw_id=self._participants.get(s), chunks=list(c))
                     for s, c in self._chunks.items()],
            gaps=[mf.Gap(stream=s, start_time=mf.utc_iso(a), duration_ms=round(d * 1000), session_id=self.id)
                  for s, a, d in (tl.gaps(MAX_GAPS_PER_SESSION) if tl else [])],
            gaps_of=[self.id],
            dtmf=list(self._dtmf),
        )

    async def _manifest_loop(self) -> None:
        """One writer per session. Writes coalesce: at most one per MANIFEST_MIN_INTERVAL while streaming (the
        chunks of four participants sealed together cost one write; the clock claim counts as one), and once the
        socket closed only the final write, when every chunk has landed. A session that carried nothing writes
        nothing: an empty socket neither creates nor changes a manifest."""
        attempt = 0
        policy = self._retry_policy
        while True:
            await self._manifest_dirty.wait()
            self._manifest_dirty.clear()
            if self.mode == PENDING or self.call_id is None:
                continue
            final = self.complete or self._finished  # read before building the part: finish() may flip it
            if not self.has_content:
                if final:
                    return
                continue
            if not final:
                if self.closed and self._listed:
                    continue  # closed: the next write is the final one, once every chunk has landed
                since_claim = time.monotonic() - self._claimed_at
                if since_claim < MANIFEST_MIN_INTERVAL:  # the claim wrote the clock and the session just now
                    await asyncio.sleep(MANIFEST_MIN_INTERVAL - since_claim)
                    self._manifest_dirty.set()
                    continue
            try:
                self._cached = await self.store.merge_manifest(self.call_id, self.part(), cached=self._cached)
                self._listed = True
                self.metrics.manifest_writes += 1
                attempt = 0
                if final:
                    return
                if not self.closed:
                    await asyncio.sleep(MANIFEST_MIN_INTERVAL)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                self.metrics.upload_retries += 1
                policy.note("manifest update", attempt, exc)
                log.warning("manifest update failed; will retry", extra={**self.fields, "error": str(exc)[:300]})
                self._manifest_dirty.set()
                await asyncio.sleep(policy.delay(attempt))

    # -- end ------------------------------------------------------------------------------------------------
    def close(self, code: int, clean: bool, reason: EndReason | None = None) -> None:
        """Socket is gone: seal every partial chunk now (nothing received is lost), then finish in background.
        A session still waiting for its clock seals when the loader has replayed what it held."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self.clean_close = clean
        self.end_reason = reason or (EndReason.PEER_CLOSED if clean else EndReason.PEER_LOST)
        self.ended_at = mf.now_iso()
        if self.mode != PENDING and self.timeline is not None:
            self.timeline.flush()
        if self.mode == PENDING and self.call_id is not None:
            if self._log is None and self._held and not self.sink.healthy:
                self._spill()
            if self._log is not None:  # so that a restart replays the session as it ended, not as never closed
                self._end_log()
        self._wake.set()
        self._manifest_dirty.set()

    async def finish(self) -> None:
        """Wait for the clock and every chunk to land, then write the final manifest (complete if the session ended
        cleanly and nothing was quarantined)."""
        if self._loader is not None:
            await self._loader
        await self._all_landed.wait()
        before_origin = self.timeline.stats.before_origin if self.timeline else 0
        if before_origin:
            log.warning("frames dated before the call clock's origin could not be placed", extra={
                **self.fields, "frames": before_origin})
        self.complete = (self.end_reason in mf.COMPLETE_REASONS and not self._quarantined and self.has_content
                         and not before_origin)
        if not self.has_content:
            self.metrics.sessions_without_audio += 1
        self._finished = True
        self._manifest_dirty.set()
        if self._writer is not None:
            await self._writer
        self._unmark_open()
        if self.call_id is not None and self.has_content and self._cached is not None:
            try:
                await self.store.settled(self.call_id, self._cached.manifest)
            except Exception as exc:  # the control plane's sweep asks again; nothing recorded is at stake
                log.warning("could not ask for finalization", extra={**self.fields, "error": str(exc)[:300]})
        if self._replayed is not None:
            self._replayed.remove()
            self._replayed = None

    def spool_part(self) -> None:
        """Shutdown before the final manifest write landed: leave what the next start needs in the spool — the
        manifest part beside the spooled chunks, or, for a session still waiting for its clock, every message it
        held (the next start replays them)."""
        for task in (self._writer, self._loader):
            if task is not None:
                task.cancel()
        if self.call_id is None:
            return
        spool = self.spool
        try:
            if self.mode == PENDING:
                if self._log is None:
                    self._spill()
                if self._log is not None:
                    self._end_log()
            elif self.has_content:
                spool.put_part(self.call_id, self.id, self.part())
                spool.unmark_open(self.call_id, self.id)
            if self.mode != PENDING and self._replayed is not None:  # its audio is in the spooled chunks now
                self._replayed.remove()
                self._replayed = None
        except OSError as exc:
            self.metrics.spool_failures += 1
            log.critical("cannot spool the session's state", extra={**self.fields, "error": str(exc)})

    def _end_log(self) -> None:
        assert self._log is not None
        if not self._log_ended:
            self._log.end({"closeCode": self.close_code, "cleanClose": self.clean_close,
                           "endReason": self.end_reason, "endedAt": self.ended_at})
            self._log_ended = True

    def _mark_open(self) -> None:
        """A marker in the spool while the session runs: after a hard kill, the next start finds it and marks the
        session `never_closed` in the manifest, with the span its landed chunks cover."""
        assert self.call_id is not None
        try:
            self.spool.mark_open(self.call_id, mf.Session(id=self.id, replica=REPLICA, started_at=self.started_at))
            self._marked = True
        except OSError as exc:
            log.warning("cannot write the open-session marker", extra={**self.fields, "error": str(exc)})

    def _unmark_open(self) -> None:
        if self._marked and self.call_id is not None:
            self.spool.unmark_open(self.call_id, self.id)
            self._marked = False

    def seal_idle(self, idle_seconds: float, now: float) -> None:
        if self.timeline is not None and not self.closed and self.mode == LIVE:
            self.timeline.seal_idle(idle_seconds, now)

    def adopt_frames_log(self, frames_log: FramesLog) -> None:
        """Take over the frames log an earlier process left for this session: peek at its first messages for what
        the clock loader needs (call id, format, origin); the replay proper runs once the clock is known."""
        self._log = frames_log
        for raw, arrival in frames_log.replay():
            self._peek(raw, arrival)
            if self._origin_settled.is_set():
                break
