"""The simulator's state and call lifecycles: what ACS does between the REST calls.

One `Simulator` per app, living on the uvicorn event loop. Each connected call is a `CallSession`:

    create/answer ─▶ (connect_delay) ─▶ CallConnected ─▶ [startMediaStreaming] WS connect ─▶ MediaStreamingStarted
        … AudioData every 20 ms …  stop ─▶ WS close ─▶ MediaStreamingStopped;  start ─▶ new WS ─▶ Started …
    hang up / terminate / scripted end ─▶ WS close ─▶ MediaStreamingStopped ─▶ CallDisconnected

Callbacks of a call go through one queue and one worker, so they arrive in the order they happened; every POST
carries a fresh RS256 JWT. Everything sent is recorded (`CallRecord`) for tests to compare with what arrived.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx

from devstack.acs_tokens import TokenIssuer
from devstack.simulator import events
from devstack.simulator.audio import build_tracks
from devstack.simulator.config import CallScript, SimulatorConfig
from devstack.simulator.frames import FRAME_MS, FRAMES_PER_SECOND, now_ms
from devstack.simulator.identifiers import IdentifierError, from_raw_id, normalize, phone_model
from devstack.simulator.media import (
    ConnectionRecord,
    Cursor,
    MediaPlan,
    Outcome,
    StreamStats,
    acs_headers,
    is_loopback_url,
    stream_call,
)

log = logging.getLogger("devstack.simulator")

WS_TOKEN_LIFETIME = 24 * 3600  # docs/acs-protocol.md#websocket-upgrade: a new token per connection, 24 h
CALLBACK_TOKEN_LIFETIME = 300  # docs/acs-protocol.md#callback-authentication: 5 minutes, new per event
_EXTRA_SPEAKER_NS = uuid.UUID("0b7e3c2a-8a59-4d0e-9f7b-5c1d2e3f4a5b")


class ApiError(Exception):
    """A REST error the service would return: `{"error": {"code", "message"}}` with this status."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def bad_request(message: str, code: str = "BadRequest") -> ApiError:
    return ApiError(400, code, message)


def not_found(call_id: str) -> ApiError:
    return ApiError(404, "NotFound", f"Call connection {call_id} was not found.")


@dataclass(frozen=True)
class StreamingOptions:
    """The app's mediaStreamingOptions, validated (docs/acs-protocol.md#request-bodies). Values compared
    case-insensitively like the service."""

    transport_url: str
    audio_channel_type: str  # "mixed" | "unmixed"
    sample_rate: int
    start: bool
    enable_dtmf_tones: bool
    enable_bidirectional: bool
    raw: dict[str, Any]

    @classmethod
    def parse(cls, raw: Any) -> StreamingOptions:
        if not isinstance(raw, dict):
            raise bad_request("mediaStreamingOptions must be an object.")
        transport = str(raw.get("transportType", "")).lower()
        if transport != "websocket":
            raise bad_request("mediaStreamingOptions.transportType must be 'websocket'.")
        channel = str(raw.get("audioChannelType", "")).lower()
        if channel not in ("mixed", "unmixed"):
            raise bad_request("mediaStreamingOptions.audioChannelType must be 'mixed' or 'unmixed'.")
        content = str(raw.get("contentType", "audio")).lower()
        if content != "audio":
            raise bad_request("mediaStreamingOptions.contentType must be 'audio'.")
        url = raw.get("transportUrl")
        if not isinstance(url, str) or not url.lower().startswith(("ws://", "wss://")):
            raise bad_request("mediaStreamingOptions.transportUrl must be a ws:// or wss:// URL.")
        fmt = str(raw.get("audioFormat") or "pcm16KMono").lower()
        rates = {"pcm16kmono": 16000, "pcm24kmono": 24000}
        if fmt not in rates:
            raise bad_request("mediaStreamingOptions.audioFormat must be 'pcm16KMono' or 'pcm24KMono'.")
        return cls(transport_url=url, audio_channel_type=channel, sample_rate=rates[fmt],
                   start=bool(raw.get("startMediaStreaming", False)),
                   enable_dtmf_tones=bool(raw.get("enableDtmfTones", False)),
                   enable_bidirectional=bool(raw.get("enableBidirectional", False)), raw=dict(raw))


@dataclass
class CallbackRecord:
    type: str
    url: str
    event: dict[str, Any]
    status: int | None = None
    error: str | None = None
    sent_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "url": self.url, "status": self.status, "error": self.error,
                "sentAt": self.sent_at, "event": self.event}


@dataclass
class CallRecord:
    """Everything the simulator did on one call, for tests: states, callbacks (with HTTP status), connections and
    per-stream sent-PCM digests (whole call: `streams`; per connection: `connections[i].streams`)."""

    call_connection_id: str
    server_call_id: str
    correlation_id: str
    direction: str
    participants: list[str]
    script: CallScript
    media: StreamingOptions | None
    subscription_id: str
    states: list[tuple[str, float]] = field(default_factory=list)
    callbacks: list[CallbackRecord] = field(default_factory=list)
    connections: list[ConnectionRecord] = field(default_factory=list)
    streams: dict[str, StreamStats] = field(default_factory=dict)
    epoch_ms: int | None = None
    finished: bool = False  # call over and every callback POST completed

    @property
    def state(self) -> str:
        return self.states[-1][0] if self.states else "unknown"

    def callback_types(self) -> list[str]:
        return [c.type for c in self.callbacks]

    def to_dict(self) -> dict[str, Any]:
        return {
            "callConnectionId": self.call_connection_id, "serverCallId": self.server_call_id,
            "correlationId": self.correlation_id, "direction": self.direction, "state": self.state,
            "finished": self.finished,
            "states": [{"state": s, "at": t} for s, t in self.states], "participants": list(self.participants),
            "mediaStreamingOptions": self.media.raw if self.media else None,
            "sampleRate": self.media.sample_rate if self.media else None,
            "audioChannelType": self.media.audio_channel_type if self.media else None,
            "subscriptionId": self.subscription_id, "epochMs": self.epoch_ms, "script": self.script.to_dict(),
            "callbacks": [c.to_dict() for c in self.callbacks],
            "connections": [c.to_dict() for c in self.connections],
            "streams": {k: s.to_dict() for k, s in self.streams.items()},
        }


@dataclass
class IncomingCall:
    context: str
    event: dict[str, Any]
    from_: dict[str, Any]
    to: dict[str, Any]
    server_call_id: str
    correlation_id: str
    script: CallScript
    expires_at: float
    state: str = "ringing"  # ringing | answered | rejected
    answered_call_id: str | None = None


@dataclass
class CapturedRequest:
    method: str
    path_and_query: str
    headers: list[tuple[str, str]]
    body: bytes
    status: int | None = None
    auth_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "pathAndQuery": self.path_and_query, "headers": self.headers,
                "body": self.body.decode("utf-8", "replace"), "status": self.status, "authError": self.auth_error}


def _incoming_context() -> str:
    """Opaque like the real one (an unsigned-JWT-looking blob); only the simulator can map it back to a call."""
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps(
        {"cc": base64.b64encode(secrets.token_bytes(384)).decode(), "shrToken": secrets.token_urlsafe(48)}
    ).encode()).rstrip(b"=").decode()
    return f"{header}.{payload}."


def _server_call_id() -> str:
    url = f"https://llc.sim.conv.local/conv/{uuid.uuid4()}?i=10&e={int(time.time())}"
    return base64.urlsafe_b64encode(url.encode()).rstrip(b"=").decode()


class CallSession:
    """One call from create/answer to CallDisconnected. Runs on the simulator's loop."""

    def __init__(self, sim: Simulator, *, direction: str, targets: list[dict[str, Any]], callback_uri: str,
                 operation_context: str | None, media: StreamingOptions | None, script: CallScript, version: str,
                 source: dict[str, Any] | None = None, source_caller_id: dict[str, Any] | None = None,
                 source_display_name: str | None = None, answered_for: dict[str, Any] | None = None,
                 server_call_id: str | None = None, correlation_id: str | None = None,
                 speakers_first: list[str] | None = None):
        self.sim = sim
        self.id = str(uuid.uuid4())
        self.direction = direction
        self.targets = targets
        self.callback_uri = callback_uri
        self.operation_context = operation_context
        self.media = media
        self.script = script
        self.version = version
        self.source = source or from_raw_id(sim.app_identity)
        self.source_caller_id = source_caller_id
        self.source_display_name = source_display_name
        self.answered_for = answered_for
        self.server_call_id = server_call_id or _server_call_id()
        self.correlation_id = correlation_id or str(uuid.uuid4())
        self.state = "connecting"
        self.media_state = "inactive"
        self.pace = script.pace if script.pace is not None else sim.config.pace
        self.rate = FRAMES_PER_SECOND * (self.pace if self.pace > 0 else 1.0)  # call-clock frames per second
        self.total_frames = None if script.duration_s is None else round(script.duration_s * FRAMES_PER_SECOND)
        participants = list(script.participants) or self._default_participants(speakers_first or [])
        self.record = CallRecord(self.id, self.server_call_id, self.correlation_id, direction, participants,
                                 script, media, subscription_id=str(uuid.uuid4()))
        self._set_state("connecting")
        self._queue: asyncio.Queue[CallbackRecord | None] = asyncio.Queue()
        self._worker = asyncio.create_task(self._callback_worker())
        self._lifecycle = asyncio.create_task(self._run())
        self._plan: MediaPlan | None = None
        self._cursor = Cursor(0)
        self._stream_task: asyncio.Task[str] | None = None
        self._stop = asyncio.Event()
        self._pause_pos = 0
        self._pause_at = 0.0
        self._end_timer: asyncio.TimerHandle | None = None
        self._ending = False
        self.ended = asyncio.Event()

    # -- helpers -------------------------------------------------------------------------------------------------
    def _default_participants(self, first: list[str]) -> list[str]:
        ids = first[:4]
        i = 0
        while len(ids) < self.script.speakers:
            ids.append(f"8:acs:{self.sim.config.audience}_{uuid.uuid5(_EXTRA_SPEAKER_NS, str(i))}")
            i += 1
        return ids[: max(self.script.speakers, 1)]

    def _set_state(self, state: str) -> None:
        self.state = state
        self.record.states.append((state, time.time()))

    def properties(self) -> dict[str, Any]:
        """CallConnectionProperties (docs/acs-protocol.md#identifiers), identifiers with rawId and kind."""
        body: dict[str, Any] = {"callConnectionId": self.id, "serverCallId": self.server_call_id,
                                "targets": self.targets, "callConnectionState": self.state,
                                "callbackUri": self.callback_uri, "source": self.source,
                                "correlationId": self.correlation_id}
        if self.source_caller_id:
            body["sourceCallerIdNumber"] = self.source_caller_id
        if self.source_display_name:
            body["sourceDisplayName"] = self.source_display_name
        if self.answered_for:
            body["answeredFor"] = self.answered_for
        if self.media:
            body["mediaStreamingSubscription"] = {"id": self.record.subscription_id, "state": self.media_state,
                                                  "subscribedContentTypes": ["audio"]}
        return body

    def _emit(self, event: str, *, result: dict[str, Any] | None, operation_context: str | None = None,
              url: str | None = None, streaming: tuple[str, str] | None = None) -> None:
        ctx = operation_context if operation_context is not None else self.operation_context
        evt = events.call_event(event, call_connection_id=self.id, server_call_id=self.server_call_id,
                                correlation_id=self.correlation_id, operation_context=ctx, result=result,
                                version=self.version, streaming=streaming)
        rec = CallbackRecord(event, url or self.callback_uri, evt)
        self.record.callbacks.append(rec)  # recorded in emission order; status filled in once POSTed
        self._queue.put_nowait(rec)

    async def _callback_worker(self) -> None:
        while True:
            rec = await self._queue.get()
            if rec is None:
                return
            await self.sim.post_callback(rec)

    # -- clock -----------------------------------------------------------------------------------------------
    def position(self) -> int:
        if self._stream_task is not None and not self._stream_task.done():
            return self._cursor.frame
        loop = asyncio.get_running_loop()
        return self._pause_pos + int((loop.time() - self._pause_at) * self.rate)

    def _pause_clock(self, frame: int) -> None:
        self._pause_pos = frame
        self._pause_at = asyncio.get_running_loop().time()
        self._schedule_end()

    def _schedule_end(self) -> None:
        if self._end_timer is not None:
            self._end_timer.cancel()
            self._end_timer = None
        if self.total_frames is None or self._ending:
            return
        remaining = max(0, self.total_frames - self._pause_pos)  # only scheduled while paused (not streaming)
        self._end_timer = asyncio.get_running_loop().call_later(remaining / self.rate, self.spawn_end, "script")

    def spawn_end(self, reason: str) -> None:
        if not self._ending:
            self.sim.spawn(self.end(reason))

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            if self.media is not None:
                tracks = await asyncio.to_thread(
                    build_tracks, self.script.audio, tuple(self.record.participants), self.media.sample_rate,
                    self.script.duration_s or 30.0, self.media.audio_channel_type == "mixed",
                    self.record.participants[0] if self.script.mixed_participant == "first" else None)
            await asyncio.sleep(self.script.connect_delay_s)
            if self._ending:
                return
            if self.script.outcome == "fail":
                failed = "CreateCallFailed" if self.direction == "outbound" else "AnswerFailed"
                self._ending = True
                self._emit(failed, result=events.CREATE_FAILED if failed == "CreateCallFailed"
                           else events.ANSWER_FAILED)
                self._set_state("disconnected")
                self._finish()
                return
            self._set_state("connected")
            self.record.epoch_ms = now_ms()
            if self.media is not None:
                dtmf = ()
                if self.media.enable_dtmf_tones:
                    dtmf = tuple((round(t * FRAMES_PER_SECOND), d) for t, d in self.script.dtmf)
                self._plan = MediaPlan(tracks=tracks, subscription_id=self.record.subscription_id,
                                       epoch_ms=self.record.epoch_ms, total_frames=self.total_frames,
                                       pace=self.pace, dtmf=dtmf, dtmf_participant=self.record.participants[0],
                                       dtmf_full=self.script.dtmf_full, faults=self.script.faults,
                                       mixed=self.media.audio_channel_type == "mixed")
            self._emit("CallConnected", result=events.OK)
            self._pause_clock(0)
            if self.media is not None and self.media.start:
                self.start_streaming(None, None)
        except Exception:  # a bug here must not leave a zombie call; record and end it
            log.exception("call %s lifecycle failed", self.id)
            self.spawn_end("error")

    def start_streaming(self, operation_context: str | None, operation_callback_uri: str | None) -> None:
        if self.media is None or self._plan is None:
            raise bad_request("Media streaming is not configured for this call.")
        if self._stream_task is not None and not self._stream_task.done():
            raise bad_request("Media streaming is already active for this call.")
        if self._end_timer is not None:
            self._end_timer.cancel()
            self._end_timer = None
        self._cursor.frame = self.position()
        self._stop = asyncio.Event()
        self._stream_task = asyncio.create_task(self._stream_loop(operation_context, operation_callback_uri))

    async def _stream_loop(self, op_ctx: str | None, op_url: str | None) -> str:
        assert self.media is not None and self._plan is not None

        def on_open(reestablished: bool) -> None:
            self.media_state = "active"
            details = "streamConnectionReestablished" if reestablished else "subscriptionStarted"
            self._emit("MediaStreamingStarted", result=events.OK, operation_context=op_ctx, url=op_url,
                       streaming=("mediaStreamingStarted", details))

        def headers() -> dict[str, str]:  # a new token per connection (docs/acs-protocol.md#websocket-upgrade)
            token = self.sim.issuer.token(lifetime=WS_TOKEN_LIFETIME, jti=str(uuid.uuid4()))
            return acs_headers(self.id, self.correlation_id, token)

        result = await stream_call(
            self.media.transport_url, self._plan, headers=headers, start_frame=self._cursor.frame, stop=self._stop,
            cursor=self._cursor, records=self.record.connections, call_streams=self.record.streams,
            on_open=on_open, open_timeout=self.sim.config.ws_open_timeout_s,
            loopback_only=self.sim.config.loopback_only)
        self._pause_clock(result.next_frame)
        if result.outcome is Outcome.COMPLETED:
            self.spawn_end("script")
        elif result.outcome in (Outcome.CONNECT_FAILED, Outcome.NOT_ALLOWED, Outcome.POLICY_CLOSED):
            self._fail_stream(op_ctx, op_url, events.STREAM_FAILED, "streamConnectionUnsuccessful")
        elif result.outcome in (Outcome.DROPPED, Outcome.CLOSED):
            self._fail_stream(op_ctx, op_url, events.STREAM_INTERRUPTED, "streamConnectionInterrupted")
        return result.outcome.value

    def _fail_stream(self, op_ctx: str | None, op_url: str | None, result: dict[str, Any], details: str) -> None:
        self.media_state = "inactive"
        self._emit("MediaStreamingFailed", result=result, operation_context=op_ctx, url=op_url,
                   streaming=("mediaStreamingFailed", details))

    async def _halt_stream(self) -> bool:
        """Stop the WebSocket (if any); True if streaming was active, i.e. a MediaStreamingStopped is due."""
        task = self._stream_task
        if task is not None and not task.done():
            self._stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        was_active = self.media_state == "active"
        self.media_state = "inactive"
        return was_active

    def request_stop_streaming(self, operation_context: str | None, operation_callback_uri: str | None) -> None:
        if self._stream_task is None or self._stream_task.done():
            raise bad_request("Media streaming is not active for this call.")
        self.sim.spawn(self._stop_streaming(operation_context, operation_callback_uri))

    async def _stop_streaming(self, op_ctx: str | None, op_url: str | None) -> None:
        if await self._halt_stream():
            self._emit("MediaStreamingStopped", result=events.OK, operation_context=op_ctx, url=op_url,
                       streaming=("mediaStreamingStopped", "subscriptionStopped"))

    def begin_hang_up(self) -> None:
        """REST hang up/terminate: the 204 goes out now, the teardown and callbacks follow."""
        if self._ending:
            return
        self.sim.spawn(self.end("hangup"))

    async def end(self, reason: str) -> None:
        if self._ending:
            return
        self._ending = True
        if self._end_timer is not None:
            self._end_timer.cancel()
        connected = self.state == "connected"
        self._set_state("disconnecting")
        if await self._halt_stream():
            self._emit("MediaStreamingStopped", result=events.OK,
                       streaming=("mediaStreamingStopped", "subscriptionStopped"))
        log.debug("call %s ends (%s, was connected: %s)", self.id, reason, connected)
        self._emit("CallDisconnected", result=events.CALL_ENDED)
        self._set_state("disconnected")
        self._finish()

    def _finish(self) -> None:
        self.sim.calls.pop(self.id, None)
        self._queue.put_nowait(None)
        self.sim.spawn(self._set_ended())

    async def _set_ended(self) -> None:
        with contextlib.suppress(Exception):
            await self._worker
        self.record.finished = True
        self.ended.set()

    async def cancel(self) -> None:
        """Shutdown: stop everything without callbacks."""
        for task in (self._stream_task, self._lifecycle, self._worker):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


class Simulator:
    """State of one simulated ACS resource. All methods run on the server's event loop."""

    def __init__(self, config: SimulatorConfig, issuer: TokenIssuer | None = None):
        self.config = config
        self.issuer = issuer or TokenIssuer(config.issuer, config.audience)
        self.jwks = self.issuer.jwks()
        self.app_identity = f"8:acs:{config.audience}_{uuid.uuid5(_EXTRA_SPEAKER_NS, 'app')}"
        self.calls: dict[str, CallSession] = {}
        self.records: dict[str, CallRecord] = {}
        self.incoming: dict[str, IncomingCall] = {}
        self.scripts: dict[str, CallScript] = {}
        self.requests: deque[CapturedRequest] = deque(maxlen=max(1, config.capture_requests))
        self.repeatability: dict[tuple[str, str], tuple[int, bytes, dict[str, str]]] = {}
        self.http: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- plumbing ----------------------------------------------------------------------------------------------
    async def startup(self) -> None:
        self._client()

    def _client(self) -> httpx.AsyncClient:
        """Created on the server loop (lifespan, or lazily when the host runs without lifespan)."""
        if self.http is None:
            # trust_env=False: never route loopback callbacks through a proxy from the environment.
            self.http = httpx.AsyncClient(timeout=self.config.callback_timeout_s, trust_env=False,
                                          limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        return self.http

    async def shutdown(self) -> None:
        for session in list(self.calls.values()):
            await session.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self.http is not None:
            await self.http.aclose()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _check_url(self, url: Any, field_name: str) -> str:
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            raise bad_request(f"The field {field_name} is invalid.")
        if self.config.loopback_only and not is_loopback_url(url):
            raise bad_request(f"The field {field_name} is invalid: this simulator only calls loopback hosts.")
        return url

    async def post_callback(self, rec: CallbackRecord) -> None:
        http = self._client()
        token = self.issuer.token(lifetime=CALLBACK_TOKEN_LIFETIME, jti=str(uuid.uuid4()))  # unique per event
        rec.sent_at = time.time()
        try:
            resp = await http.post(rec.url, content=json.dumps([rec.event]).encode(),
                                        headers={"Content-Type": "application/json",
                                                 "Authorization": f"Bearer {token}"})
            rec.status = resp.status_code
        except httpx.HTTPError as exc:
            rec.error = f"{type(exc).__name__}: {exc}"

    # -- scripts -----------------------------------------------------------------------------------------------
    def script_for(self, raw_ids: list[str]) -> CallScript:
        for raw_id in raw_ids:
            if raw_id in self.scripts:
                return self.scripts[raw_id]
        return self.config.default_script

    # -- REST operations ---------------------------------------------------------------------------------------
    def _session(self, call_id: str) -> CallSession:
        session = self.calls.get(call_id)
        if session is None or session.state in ("disconnecting", "disconnected"):
            raise not_found(call_id)
        return session

    def _media(self, body: dict[str, Any]) -> StreamingOptions | None:
        raw = body.get("mediaStreamingOptions")
        return None if raw is None else StreamingOptions.parse(raw)

    def create_call(self, body: dict[str, Any], version: str) -> CallSession:
        targets_raw = body.get("targets")
        if not isinstance(targets_raw, list) or not targets_raw:
            raise bad_request("The field Targets is required.")
        try:
            targets = [normalize(t) for t in targets_raw]
            source_caller = phone_model(body["sourceCallerIdNumber"]) if body.get("sourceCallerIdNumber") else None
            source = normalize(body["source"]) if body.get("source") else None
        except IdentifierError as exc:
            raise bad_request(f"Invalid identifier: {exc}") from exc
        if any(t["kind"] == "phoneNumber" for t in targets) and source_caller is None:
            raise bad_request("SourceCallerIdNumber is required to call a phone number (PSTN target).")
        callback = self._check_url(body.get("callbackUri"), "CallbackUri")
        media = self._media(body)
        raw_ids = [t["rawId"] for t in targets]
        session = CallSession(self, direction="outbound", targets=targets, callback_uri=callback,
                              operation_context=body.get("operationContext"), media=media,
                              script=self.script_for(raw_ids), version=version, source=source,
                              source_caller_id=source_caller, source_display_name=body.get("sourceDisplayName"),
                              speakers_first=raw_ids)
        self._register(session)
        return session

    def answer_call(self, body: dict[str, Any], version: str) -> CallSession:
        context = body.get("incomingCallContext")
        if not isinstance(context, str) or not context:
            raise bad_request("The field IncomingCallContext is required.")
        pending = self.incoming.get(context)
        if pending is None:
            raise bad_request("Invalid incoming call context.", code="InvalidIncomingCallContext")
        if pending.state == "answered":
            raise bad_request("Call was already answered.", code="CallAlreadyAnswered")
        if pending.state == "rejected":
            raise bad_request("Call was already rejected.", code="CallAlreadyRejected")
        if time.monotonic() > pending.expires_at:
            raise bad_request("Incoming call is no longer ringing (the caller hung up).",
                              code="IncomingCallContextExpired")
        callback = self._check_url(body.get("callbackUri"), "CallbackUri")
        media = self._media(body)
        answered_for = pending.to.get("phoneNumber") if pending.to["kind"] == "phoneNumber" else None
        session = CallSession(self, direction="inbound", targets=[pending.from_], callback_uri=callback,
                              operation_context=body.get("operationContext"), media=media, script=pending.script,
                              version=version, answered_for=answered_for, server_call_id=pending.server_call_id,
                              correlation_id=pending.correlation_id, speakers_first=[pending.from_["rawId"]])
        pending.state = "answered"
        pending.answered_call_id = session.id
        self._register(session)
        return session

    def reject_call(self, body: dict[str, Any]) -> None:
        pending = self.incoming.get(body.get("incomingCallContext") or "")
        if pending is None:
            raise bad_request("Invalid incoming call context.", code="InvalidIncomingCallContext")
        if pending.state != "ringing":
            raise bad_request(f"Call was already {pending.state}.")
        pending.state = "rejected"

    def _register(self, session: CallSession) -> None:
        self.calls[session.id] = session
        self.records[session.id] = session.record

    def get_call(self, call_id: str) -> dict[str, Any]:
        session = self.calls.get(call_id)
        if session is None or session.state == "disconnected":
            raise not_found(call_id)
        return session.properties()

    def hang_up(self, call_id: str) -> None:
        self._session(call_id).begin_hang_up()

    def start_media_streaming(self, call_id: str, body: dict[str, Any]) -> None:
        session = self._session(call_id)
        if session.state != "connected":
            raise bad_request("Action is not allowed: the call is not connected yet.")
        url = body.get("operationCallbackUri")
        session.start_streaming(body.get("operationContext"),
                                self._check_url(url, "OperationCallbackUri") if url else None)

    def stop_media_streaming(self, call_id: str, body: dict[str, Any]) -> None:
        session = self._session(call_id)
        if session.state != "connected":
            raise bad_request("Action is not allowed: the call is not connected yet.")
        url = body.get("operationCallbackUri")
        session.request_stop_streaming(body.get("operationContext"),
                                       self._check_url(url, "OperationCallbackUri") if url else None)

    # -- control plane (the far end) ---------------------------------------------------------------------------
    async def place_incoming_call(self, *, event_grid_url: str, from_: Any, to: Any, script: CallScript,
                                  caller_display_name: str = "Simulated Caller",
                                  custom_context: dict[str, Any] | None = None) -> dict[str, Any]:
        """Ring the app: POST the IncomingCall Event Grid event; the context stays answerable until ring timeout."""
        url = self._check_url(event_grid_url, "eventGridUrl")
        try:
            from_model, to_model = normalize(from_), normalize(to)
        except IdentifierError as exc:
            raise bad_request(f"Invalid identifier: {exc}") from exc
        context = _incoming_context()
        server_call_id, correlation_id = _server_call_id(), str(uuid.uuid4())
        event = events.incoming_call_event(
            topic=self.config.event_grid_topic, to=to_model, from_=from_model, server_call_id=server_call_id,
            caller_display_name=caller_display_name, incoming_call_context=context, correlation_id=correlation_id,
            custom_context=custom_context)
        self.incoming[context] = IncomingCall(context, event, from_model, to_model, server_call_id, correlation_id,
                                              script, time.monotonic() + self.config.ring_timeout_s)
        http = self._client()
        status: int | None = None
        error: str | None = None
        try:
            resp = await http.post(url, content=json.dumps([event]).encode(),
                                        headers=events.event_grid_headers(self.config.event_grid_subscription))
            status = resp.status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        pending = self.incoming[context]
        return {"incomingCallContext": context, "serverCallId": server_call_id, "correlationId": correlation_id,
                "deliveryStatus": status, "deliveryError": error, "event": event,
                "answeredCallConnectionId": pending.answered_call_id}

    def remote_hang_up(self, call_id: str) -> None:
        self._session(call_id).spawn_end("remote")

    def call_record(self, call_id: str) -> dict[str, Any]:
        rec = self.records.get(call_id)
        if rec is None:
            raise not_found(call_id)
        return rec.to_dict()

    def incoming_answered(self, context: str) -> str | None:
        pending = self.incoming.get(context)
        return pending.answered_call_id if pending else None


__all__ = ["FRAME_MS", "ApiError", "CallRecord", "CallSession", "Simulator", "StreamingOptions"]
