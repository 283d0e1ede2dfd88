"""Send one call's audio to a media-streaming WebSocket the way ACS does
(docs/acs-protocol.md#media-streaming-websocket).

`stream_connection` runs ONE WebSocket connection: connect as the client with the ACS upgrade headers, send
AudioMetadata, then AudioData for frame `start_frame` onwards on a monotonic schedule (frame k is due at
t0 + k·20 ms / pace, so sleeps never accumulate drift), until the tracks end, `stop` is set, a fault drops the
connection or the server closes it. Reconnecting and callbacks are the caller's business (the simulator's call
session does both); the benchmark calls this directly for hundreds of concurrent streams, so the per-frame work is
a string join, a send and — only when a recorder is given — a sha256 update.

Frame positions are on the call clock: frame k has timestamp `epoch_ms + 20·k` and carries audio frame
`k mod len(track)` (tracks loop when the call has no fixed length).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import random
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from devstack.simulator.frames import (
    FRAME_MS,
    FRAMES_PER_SECOND,
    EncodedTrack,
    audio_data,
    audio_metadata,
    dtmf_data,
    format_timestamp,
)

POLICY_VIOLATION = 1008


@dataclass(frozen=True)
class Faults:
    """Injected misbehaviour. Times are call-clock seconds (frame index / 50).

    jitter_ms: each AudioData timestamp is moved by a uniform integer in [-jitter_ms, +jitter_ms] (the frame's
        place in the schedule and its audio are unchanged).
    gaps: (start_s, length_s) spans whose frames are not sent at all (time still passes: the next frame's
        timestamp jumps).
    drop_at_s: abort the TCP connection (no close frame) when the call clock reaches this; once per call.
    reconnect / reconnect_delay_s: after a drop or an unexpected close, connect again (new AudioMetadata) after
        the delay, as ACS would; audio in between is lost. Off: the stream fails (MediaStreamingFailed).
    """

    jitter_ms: int = 0
    gaps: tuple[tuple[float, float], ...] = ()
    drop_at_s: float | None = None
    reconnect: bool = False
    reconnect_delay_s: float = 0.5
    seed: int = 0

    def gap_frames(self) -> frozenset[int]:
        out: set[int] = set()
        for start, length in self.gaps:
            first = round(start * 1000 / FRAME_MS)
            out.update(range(first, first + round(length * 1000 / FRAME_MS)))
        return frozenset(out)

    def drop_frame(self) -> int | None:
        return None if self.drop_at_s is None else round(self.drop_at_s * 1000 / FRAME_MS)


@dataclass
class MediaPlan:
    """What one call streams. Build once per call (or once for many identical benchmark calls).

    tracks: unmixed → one per participant (sent interleaved, one frame each per 20 ms tick, same timestamp);
        mixed → a single track (`mixed=True`; its participantRawID, if any, is still sent on every frame).
    total_frames: call length in frames; None = until stopped (tracks loop).
    pace: 1.0 = real time; 10 = ten times faster; 0 = as fast as the socket takes it.
    dtmf: (frame index, digit) — sent as DtmfData at that tick (only when the call enabled DTMF tones).
    """

    tracks: Sequence[EncodedTrack]
    subscription_id: str
    epoch_ms: int
    total_frames: int | None = None
    pace: float = 1.0
    dtmf: Sequence[tuple[int, str]] = ()
    dtmf_participant: str | None = None
    dtmf_full: bool = False
    faults: Faults = field(default_factory=Faults)
    mixed: bool | None = None  # None: a single track without participantRawID is the mixed stream

    def __post_init__(self) -> None:
        if not self.tracks:
            raise ValueError("a media plan needs at least one track")
        rates = {t.sample_rate for t in self.tracks}
        if len(rates) != 1:
            raise ValueError("all tracks of a call share one sample rate")
        self.sample_rate = rates.pop()
        if self.mixed is None:
            self.mixed = len(self.tracks) == 1 and self.tracks[0].participant_raw_id is None
        if self.mixed and len(self.tracks) != 1:
            raise ValueError("a mixed stream has exactly one track")
        self._gaps = self.faults.gap_frames()
        self._drop = self.faults.drop_frame()
        self._dtmf: dict[int, list[str]] = {}
        for k, digit in self.dtmf:
            self._dtmf.setdefault(k, []).append(digit)


class Outcome(enum.StrEnum):
    COMPLETED = "completed"            # sent every frame up to total_frames, closed normally
    STOPPED = "stopped"                # `stop` was set; closed normally
    DROPPED = "dropped"                # fault injection aborted the connection
    CLOSED = "closed"                  # the server closed (or the network broke) mid-stream
    POLICY_CLOSED = "policy_closed"    # the server closed with 1008 (e.g. it rejected our JWT after accept)
    CONNECT_FAILED = "connect_failed"  # refused, timed out, or the upgrade got a non-101 status (401/403/…)
    NOT_ALLOWED = "not_allowed"        # the URL is not loopback and the caller restricted us to loopback


@dataclass
class StreamStats:
    """What was sent on one stream (participantRawID, or "mixed"): the test-side truth to compare against."""

    key: str
    participant_raw_id: str | None
    frames: int = 0
    silent_frames: int = 0
    bytes: int = 0
    first_timestamp: str | None = None
    last_timestamp: str | None = None
    _sha: Any = field(default_factory=hashlib.sha256, repr=False)

    def add(self, pcm: bytes, timestamp: str, silent: bool) -> None:
        self._sha.update(pcm)
        self.frames += 1
        self.bytes += len(pcm)
        self.silent_frames += silent
        if self.first_timestamp is None:
            self.first_timestamp = timestamp
        self.last_timestamp = timestamp

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"participantRawID": self.participant_raw_id, "frames": self.frames,
                "silentFrames": self.silent_frames, "bytes": self.bytes, "sha256": self.sha256,
                "firstTimestamp": self.first_timestamp, "lastTimestamp": self.last_timestamp}


def stream_key(track: EncodedTrack, mixed: bool) -> str:
    return "mixed" if mixed or track.participant_raw_id is None else track.participant_raw_id


@dataclass
class ConnectionRecord:
    """One WebSocket connection's story. `on_frame` feeds the per-connection and (optionally) per-call stats."""

    index: int
    url: str
    started_frame: int
    metadata: str | None = None
    outcome: str | None = None
    http_status: int | None = None
    close_code: int | None = None
    close_reason: str | None = None
    error: str | None = None
    opened_at: float | None = None
    closed_at: float | None = None
    next_frame: int | None = None
    skipped_frames: int = 0
    dtmf_sent: list[str] = field(default_factory=list)
    inbound_messages: int = 0
    inbound_kinds: dict[str, int] = field(default_factory=dict)
    streams: dict[str, StreamStats] = field(default_factory=dict)
    call_streams: dict[str, StreamStats] | None = None

    def on_frame(self, key: str, participant: str | None, pcm: bytes, timestamp: str, silent: bool) -> None:
        for table in (self.streams, self.call_streams):
            if table is None:
                continue
            stats = table.get(key)
            if stats is None:
                stats = table[key] = StreamStats(key, participant)
            stats.add(pcm, timestamp, silent)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "url": self.url, "startedFrame": self.started_frame,
                "nextFrame": self.next_frame, "outcome": self.outcome, "httpStatus": self.http_status,
                "closeCode": self.close_code, "closeReason": self.close_reason, "error": self.error,
                "openedAt": self.opened_at, "closedAt": self.closed_at, "skippedFrames": self.skipped_frames,
                "dtmfSent": list(self.dtmf_sent), "inboundMessages": self.inbound_messages,
                "inboundKinds": dict(self.inbound_kinds),
                "streams": {k: s.to_dict() for k, s in self.streams.items()}}


@dataclass
class ConnectionResult:
    outcome: Outcome
    next_frame: int
    http_status: int | None = None
    close_code: int | None = None
    close_reason: str | None = None
    error: str | None = None


class Cursor:
    """A call's clock position (frame index) while it streams, and its once-per-call fault state."""

    __slots__ = ("dropped", "frame")

    def __init__(self, frame: int = 0):
        self.frame = frame
        self.dropped = False  # the injected drop happened (it happens once per call, not per connection)


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback_url(url: str) -> bool:
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    return host is not None and (host in LOOPBACK_HOSTS or host.startswith("127."))


def _inbound_kind(message: str | bytes) -> str:
    """Classify server→ACS messages (bidirectional): AudioData / StopAudio in PascalCase or camelCase."""
    try:
        obj = json.loads(message)
    except (ValueError, UnicodeDecodeError):
        return "unparseable"
    if not isinstance(obj, dict):
        return "unparseable"
    kind = obj.get("kind", obj.get("Kind"))
    return str(kind).lower() if kind else "unknown"


async def stream_connection(url: str, plan: MediaPlan, *, start_frame: int = 0,
                            headers: Mapping[str, str] | None = None,
                            stop: asyncio.Event | None = None,
                            record: ConnectionRecord | None = None,
                            cursor: Cursor | None = None,
                            on_open: Callable[[], None] | None = None,
                            open_timeout: float = 5.0,
                            loopback_only: bool = True) -> ConnectionResult:
    """Stream `plan` from `start_frame` over one new connection to `url`; see the module docstring."""
    cursor = cursor or Cursor(start_frame)
    cursor.frame = start_frame
    if record is not None:
        record.started_frame = start_frame

    def finish(result: ConnectionResult) -> ConnectionResult:
        if record is not None:
            record.outcome = result.outcome.value
            record.next_frame = result.next_frame
            record.http_status = result.http_status
            record.close_code = result.close_code
            record.close_reason = result.close_reason
            record.error = result.error
            record.closed_at = time.time()
        return result

    if loopback_only and not is_loopback_url(url):
        return finish(ConnectionResult(Outcome.NOT_ALLOWED, start_frame,
                                       error=f"transportUrl host is not loopback: {url}"))
    ssl_ctx: ssl.SSLContext | None = None
    if url.startswith("wss://"):
        # Loopback dev servers use self-signed certificates; never verify there (nothing else is reachable).
        ssl_ctx = ssl.create_default_context()
        ssl_ctx.check_hostname = False
        ssl_ctx.verify_mode = ssl.CERT_NONE
    try:
        ws = await connect(url, additional_headers=dict(headers or {}), open_timeout=open_timeout,
                           compression=None, proxy=None, user_agent_header=None, ssl=ssl_ctx,
                           max_size=1 << 20, close_timeout=2.0)
    except InvalidStatus as exc:
        return finish(ConnectionResult(Outcome.CONNECT_FAILED, start_frame,
                                       http_status=exc.response.status_code, error=f"upgrade rejected: {exc}"))
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        return finish(ConnectionResult(Outcome.CONNECT_FAILED, start_frame,
                                       error=f"{type(exc).__name__}: {exc}"))

    if record is not None:
        record.opened_at = time.time()
    reader = asyncio.create_task(_read_inbound(ws, record))
    try:
        return finish(await _send_frames(ws, plan, start_frame, stop, record, cursor, on_open))
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader


async def _read_inbound(ws: Any, record: ConnectionRecord | None) -> None:
    """Drain what the server sends (bidirectional audio, StopAudio), so its close frame is always seen."""
    try:
        async for message in ws:
            if record is not None:
                record.inbound_messages += 1
                kind = _inbound_kind(message)
                record.inbound_kinds[kind] = record.inbound_kinds.get(kind, 0) + 1
    except ConnectionClosed:
        pass


def _closed_result(exc: ConnectionClosed, frame: int) -> ConnectionResult:
    return _close_frame_result(exc.rcvd, frame, error=None if exc.rcvd is not None else f"connection lost: {exc}")


def _peer_closed_result(ws: Any, frame: int) -> ConnectionResult | None:
    """After our own close: did the server end the stream first? Frames are buffered, so a short or fast plan can
    be fully written before the server's close frame (e.g. 1008 for a token it rejected after accept) is read."""
    rcvd = ws.protocol.close_rcvd
    if rcvd is None or not (rcvd.code == POLICY_VIOLATION or ws.protocol.close_rcvd_then_sent):
        return None
    return _close_frame_result(rcvd, frame)


def _close_frame_result(rcvd: Any, frame: int, error: str | None = None) -> ConnectionResult:
    """The server's close frame (None: the connection was lost without one) as the stream's outcome."""
    code = rcvd.code if rcvd is not None else None
    outcome = Outcome.POLICY_CLOSED if code == POLICY_VIOLATION else Outcome.CLOSED
    return ConnectionResult(outcome, frame, close_code=code, close_reason=rcvd.reason if rcvd is not None else None,
                            error=error)


async def _send_frames(ws: Any, plan: MediaPlan, start_frame: int, stop: asyncio.Event | None,
                       record: ConnectionRecord | None, cursor: Cursor,
                       on_open: Callable[[], None] | None) -> ConnectionResult:
    tracks = plan.tracks
    keys = [stream_key(t, bool(plan.mixed)) for t in tracks]
    n_audio = len(tracks[0])
    total = plan.total_frames
    faults = plan.faults
    jitter = faults.jitter_ms
    rng = random.Random(faults.seed * 1_000_003 + start_frame)
    gaps = plan._gaps
    drop = None if cursor.dropped else plan._drop
    dtmf = plan._dtmf
    epoch = plan.epoch_ms
    step = FRAME_MS / 1000 / plan.pace if plan.pace > 0 else 0.0
    loop = asyncio.get_running_loop()
    k = start_frame
    try:
        if on_open is not None:  # the upgrade succeeded: that is "started" (a later 1008 is a failure after it)
            on_open()
        meta = audio_metadata(plan.subscription_id, plan.sample_rate)
        await ws.send(meta)
        if record is not None:
            record.metadata = meta
        t0 = loop.time()
        sent_since_yield = 0
        while total is None or k < total:
            if stop is not None and stop.is_set():
                await ws.close(1000)
                return _peer_closed_result(ws, k) or ConnectionResult(Outcome.STOPPED, k)
            if drop is not None and k >= drop:
                cursor.dropped = True
                ws.transport.abort()
                return ConnectionResult(Outcome.DROPPED, k, error="fault injection: connection dropped")
            if step:
                delay = t0 + (k - start_frame) * step - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                    sent_since_yield = 0
            if k in gaps:
                if record is not None:
                    record.skipped_frames += 1
                k += 1
                cursor.frame = k
                continue
            ts_ms = epoch + k * FRAME_MS
            if jitter:
                ts_ms += rng.randint(-jitter, jitter)
            ts = format_timestamp(ts_ms)
            idx = k % n_audio
            for track, key in zip(tracks, keys, strict=True):
                silent = track.silent[idx]
                await ws.send(audio_data(ts, track.b64[idx], silent, track.participant_json))
                if record is not None:
                    record.on_frame(key, track.participant_raw_id, track.frame_pcm(idx), ts, silent)
            digits = dtmf.get(k)
            if digits:
                for digit in digits:
                    frame = (dtmf_data(digit, ts, plan.dtmf_participant) if plan.dtmf_full else dtmf_data(digit))
                    await ws.send(frame)
                    if record is not None:
                        record.dtmf_sent.append(digit)
            k += 1
            cursor.frame = k
            sent_since_yield += 1
            if sent_since_yield >= 16:  # unthrottled or behind schedule: let other calls run
                sent_since_yield = 0
                await asyncio.sleep(0)
        await ws.close(1000)
        return _peer_closed_result(ws, k) or ConnectionResult(Outcome.COMPLETED, k)
    except ConnectionClosed as exc:
        return _closed_result(exc, k)
    except asyncio.CancelledError:
        ws.transport.abort()
        raise


def acs_headers(call_connection_id: str, correlation_id: str, token: str | None) -> dict[str, str]:
    """The upgrade headers ACS sends (docs/acs-protocol.md#websocket-upgrade): call connection id, correlation
    id, and a Bearer JWT."""
    headers = {"x-ms-call-connection-id": call_connection_id, "x-ms-call-correlation-id": correlation_id}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def stream_call(url: str, plan: MediaPlan, *, headers: Callable[[], Mapping[str, str]],
                      start_frame: int = 0, stop: asyncio.Event | None = None, cursor: Cursor | None = None,
                      records: list[ConnectionRecord] | None = None,
                      call_streams: dict[str, StreamStats] | None = None,
                      on_open: Callable[[bool], None] | None = None, open_timeout: float = 5.0,
                      loopback_only: bool = True) -> ConnectionResult:
    """Stream a call over as many connections as ACS would use: reconnect after a drop or an unexpected close
    when `plan.faults.reconnect` is set (audio during the outage is lost, the clock keeps running).

    `headers()` is called per connection (a fresh JWT each time); `on_open(reestablished)` fires on every
    successful upgrade. Returns the result that ended streaming: COMPLETED, STOPPED, or a failure outcome.
    """
    cursor = cursor or Cursor(start_frame)
    faults = plan.faults
    rate = FRAMES_PER_SECOND * (plan.pace if plan.pace > 0 else 1.0)
    pos = start_frame
    reestablished = False
    while True:
        rec = ConnectionRecord(index=len(records) if records is not None else 0, url=url, started_frame=pos,
                               call_streams=call_streams)
        if records is not None:
            records.append(rec)
        opened = (lambda again=reestablished: on_open(again)) if on_open is not None else None
        result = await stream_connection(url, plan, start_frame=pos, headers=headers(), stop=stop, record=rec,
                                         cursor=cursor, on_open=opened, open_timeout=open_timeout,
                                         loopback_only=loopback_only)
        pos = result.next_frame
        if result.outcome not in (Outcome.DROPPED, Outcome.CLOSED) or not faults.reconnect:
            return result
        if stop is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(faults.reconnect_delay_s):
                    await stop.wait()
        else:
            await asyncio.sleep(faults.reconnect_delay_s)
        pos += int(faults.reconnect_delay_s * rate)
        cursor.frame = pos
        if stop is not None and stop.is_set():
            return ConnectionResult(Outcome.STOPPED, pos)
        if plan.total_frames is not None and pos >= plan.total_frames:
            return ConnectionResult(Outcome.COMPLETED, plan.total_frames)
        reestablished = True
