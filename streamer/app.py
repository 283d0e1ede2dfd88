"""The streamer's ASGI app: WebSocket ingest at /ws (and under /ws/), health, readiness, metrics, and draining.

The WebSocket endpoint is a raw ASGI callable rather than Starlette's WebSocket wrapper, and `StreamerApp` hands
media sockets to it before Starlette's middleware stack: the frame loop is the hot path, and every frame's wake-up
resumes each coroutine between uvicorn and the `await receive()` (ten of them through the stack, three without).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from common.acs_jwt import AcsJwtVerifier, AuthConfig, AuthError, bearer_token
from common.layout import is_valid_call_id
from common.transport import channel_hint, is_media_path
from streamer.metrics import Metrics
from streamer.session import DRAIN, PROTOCOL_ERROR, SERVER_ERROR, ProtocolClose, Session, replay_frames_log
from streamer.settings import Settings
from streamer.sink import FramesLog, Spool, UploadSink, recover_spool
from streamer.store import AzureBlobBackend, BlobBackend, RecordingStore

log = logging.getLogger(__name__)

IDLE_SEAL_SECONDS = 1.0
SWEEP_SECONDS = 0.25
TRIM_SECONDS = 60.0


def _heap_trimmer() -> Callable[[], object] | None:
    """glibc's malloc_trim, if this is glibc: chunk buffers, WAVs and upload bodies churn through the heap, and
    glibc keeps freed pages in the middle of it; trimming hands them back (measured: ~21 MB after three rounds of
    300 calls), so a replica's RSS follows its load down instead of ratcheting up."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return lambda: trim(0)


@dataclass
class Context:
    settings: Settings
    store: RecordingStore
    sink: UploadSink
    metrics: Metrics
    verifier: AcsJwtVerifier | None
    sessions: set[Session] = field(default_factory=set)
    finishing: dict[asyncio.Task[None], Session] = field(default_factory=dict)  # closed, final manifest pending
    background: set[asyncio.Task[None]] = field(default_factory=set)  # fire-and-forget tasks, kept referenced
    draining: bool = False
    ready_checked: tuple[float, bool] = (0.0, False)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


class MediaStreamEndpoint:
    """ASGI app for one media-streaming WebSocket: authenticate, accept, loop on frames, flush on close."""

    def __init__(self, ctx_ref: dict[str, Context]):
        self._ctx_ref = ctx_ref

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = self._ctx_ref["ctx"]
        headers = _headers(scope)
        call_id = headers.get("x-ms-call-connection-id") or None
        correlation_id = headers.get("x-ms-call-correlation-id") or None
        if correlation_id is not None and not is_valid_call_id(correlation_id):
            correlation_id = None  # stored in the manifest: only a bounded, path-safe id is kept
        fields = {"callConnectionId": call_id, "correlationId": correlation_id}
        await receive()  # websocket.connect

        refusal = None
        if ctx.draining:
            refusal = "draining"
        elif len(ctx.sessions) >= ctx.settings.max_active_calls:
            refusal = "at_capacity"
        elif call_id is not None and not is_valid_call_id(call_id):
            refusal = "bad_call_id"
        elif ctx.verifier is not None:
            try:
                await ctx.verifier.verify_async(bearer_token(headers.get("authorization")))
            except AuthError as exc:
                refusal = "unauthorized"
                log.warning("upgrade refused: %s", exc, extra=fields)
        if refusal:
            ctx.metrics.sessions_refused += 1
            ctx.metrics.refusals[refusal] += 1
            if refusal != "unauthorized":
                log.warning("upgrade refused: %s", refusal, extra=fields)
            await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
            return

        session = Session(ctx, call_id, correlation_id,
                          channel_hint(scope.get("path", ""), scope.get("query_string", b"")))

        def fatal(exc: ProtocolClose) -> None:  # found while the socket is idle (held messages replayed, refusal)
            log.warning("closing stream: %s", exc.reason, extra={**session.fields, "closeCode": exc.code})
            internal = exc.code == 1011
            self._end(ctx, session, exc.code, not internal, SERVER_ERROR if internal else PROTOCOL_ERROR)
            task = asyncio.create_task(self._close(send, exc.code, exc.reason))
            ctx.background.add(task)
            task.add_done_callback(ctx.background.discard)

        session.on_fatal = fatal
        await send({"type": "websocket.accept"})
        ctx.sessions.add(session)
        ctx.metrics.sessions_started += 1
        ctx.metrics.active_calls += 1
        session.start()
        log.info("stream connected", extra={**session.fields, "channel": session.channel})
        code, clean = 1006, False
        max_bytes = ctx.settings.max_frame_bytes
        try:
            while True:
                message = await receive()
                mtype = message["type"]
                if mtype == "websocket.receive":
                    raw = message.get("text")
                    if raw is None:
                        raw = message.get("bytes") or b""
                    if len(raw) > max_bytes:
                        raise ProtocolClose(1009, f"message of {len(raw)} bytes exceeds {max_bytes}")
                    session.on_message(raw)
                elif mtype == "websocket.disconnect":
                    code = message.get("code", 1005)
                    # A lost connection (no close frame) arrives as 1006, or from uvicorn as 1005 without a
                    # "reason"; a real close handshake carries the peer's code and a reason (possibly empty).
                    clean = code != 1006 and not (code == 1005 and "reason" not in message)
                    if not clean:
                        code = 1006
                    break
        except ProtocolClose as exc:
            log.warning("closing stream: %s", exc.reason, extra={**session.fields, "closeCode": exc.code})
            # flush first: a peer that stops reading can block the close
            self._end(ctx, session, exc.code, True, PROTOCOL_ERROR)
            await self._close(send, exc.code, exc.reason)
        except Exception:
            log.exception("stream handler failed; flushing what was received", extra=session.fields)
            self._end(ctx, session, 1011, False, SERVER_ERROR)
            await self._close(send, 1011, "internal error")
        finally:
            # During a drain uvicorn closes the socket itself (1012): that is our restart, not the end of the stream.
            self._end(ctx, session, code, clean and not ctx.draining, DRAIN if ctx.draining else None)

    @staticmethod
    async def _close(send: Send, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(send({"type": "websocket.close", "code": code, "reason": reason[:120]}), 5.0)

    @staticmethod
    def _end(ctx: Context, session: Session, code: int, clean: bool, reason: str | None = None) -> None:
        if session.closed:
            return
        try:
            session.close(code, clean, reason)
        except Exception:  # never leave a session half-ended: it would hold its slot and its audio forever
            log.exception("flushing the stream failed", extra=session.fields)
        ctx.sessions.discard(session)
        ctx.metrics.active_calls -= 1
        if session.timeline is not None:
            st = session.timeline.stats
            ctx.metrics.late_frames += st.late_dropped
            ctx.metrics.duplicate_frames += st.duplicates
            ctx.metrics.gap_frames += st.gap_slots
        log.info("stream closed", extra={**session.fields, "closeCode": session.close_code, "clean": clean,
                                         "endReason": session.end_reason,
                                         "frames": session.timeline.stats.frames if session.timeline else 0})
        task = asyncio.create_task(session.finish(), name=f"finish-{session.id}")
        ctx.finishing[task] = session
        task.add_done_callback(lambda t: ctx.finishing.pop(t, None))


async def replay_held_frames(ctx: Context) -> None:
    """Sessions an earlier process held frames for (clock unknown at the time): replay each, one after another."""
    for path in ctx.sink.spool.frames_logs():
        try:
            frames_log = FramesLog.open(path)
        except (OSError, ValueError) as exc:
            log.error("unreadable frames log left in the spool", extra={"path": str(path), "error": str(exc)})
            continue
        try:
            await replay_frames_log(ctx, frames_log)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("replaying held frames failed; kept for the next start", extra={"path": str(path)})


class StreamerApp(Starlette):
    """Starlette for health, readiness and metrics; media WebSockets go straight to their endpoint."""

    def __init__(self, media: MediaStreamEndpoint, **kwargs: Any):
        super().__init__(**kwargs)
        self._media = media

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and is_media_path(scope["path"]):
            await self._media(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def build_backend(settings: Settings) -> BlobBackend:
    return AzureBlobBackend(settings.container, account_url=settings.storage_account_url,
                            connection_string=settings.storage_connection_string,
                            client_id=settings.azure_client_id)


def create_app(settings: Settings, backend: BlobBackend | None = None) -> Starlette:
    ctx_ref: dict[str, Context] = {}
    metrics = Metrics()

    async def sweeper(ctx: Context) -> None:
        trim, trimmed_at = _heap_trimmer(), time.monotonic()
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.monotonic()
            if trim is not None and now - trimmed_at >= TRIM_SECONDS:
                trim()
                trimmed_at = now
            ctx.sink.spool_overdue(now)
            wall = time.time()  # frames' arrivals are wall times
            for s in list(ctx.sessions):
                try:
                    s.seal_idle(IDLE_SEAL_SECONDS, wall)
                except Exception:
                    log.exception("idle seal failed", extra=s.fields)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        be = backend or build_backend(settings)
        store = RecordingStore(be)
        spool = Spool(settings.spool_dir)
        sink = UploadSink(store, spool, metrics, memory_limit=settings.upload_memory_bytes,
                          workers=settings.upload_concurrency)
        verifier = None
        if settings.auth_enabled:
            verifier = AcsJwtVerifier(AuthConfig(settings.jwt_issuer, settings.acs_resource_id,
                                                 settings.jwks_url))
        else:
            log.warning("STREAMER_AUTH=disabled: WebSocket upgrades are NOT authenticated (local use only)")
        if not settings.call_check:
            log.warning("STREAMER_CALL_CHECK=disabled: audio of calls the control plane does not know, or that have "
                        "ended, is recorded (local use only)")
        ctx = Context(settings, store, sink, metrics, verifier)
        ctx_ref["ctx"] = ctx
        try:
            await be.ensure_container()
        except Exception as exc:
            log.error("cannot reach storage at start; chunks will wait and retry", extra={"error": str(exc)})
        sink.start()
        stop_recovery = asyncio.Event()
        tasks = [asyncio.create_task(sweeper(ctx), name="sweeper"),
                 asyncio.create_task(recover_spool(spool, store, metrics, stop=stop_recovery), name="recover"),
                 asyncio.create_task(replay_held_frames(ctx), name="replay-held")]
        log.info("streamer ready", extra={"container": settings.container, "auth": settings.auth_enabled,
                                          "chunkSeconds": settings.chunk_seconds})
        try:
            yield
        finally:
            await drain(ctx, settings.shutdown_grace_seconds)
            stop_recovery.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await be.close()

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def readyz(_request: Request) -> JSONResponse:
        ctx = ctx_ref.get("ctx")
        if ctx is None or ctx.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if len(ctx.sessions) >= ctx.settings.max_active_calls:  # steer new sockets to replicas with room
            return JSONResponse({"status": "at capacity", "activeCalls": len(ctx.sessions)}, status_code=503)
        checked_at, ok = ctx.ready_checked
        if time.monotonic() - checked_at > 2.0:
            try:
                await asyncio.wait_for(ctx.store.backend.ping(), 3.0)
                ok = True
            except Exception:
                ok = False
                ctx.sink.suspect_storage()  # uploads wait behind one probe; what waits in memory is spooled
            ctx.ready_checked = (time.monotonic(), ok)
        if not ok or not ctx.sink.healthy:
            return JSONResponse({"status": "storage unreachable"}, status_code=503)
        if ctx.sink.stuck():  # chunks are not landing (whatever the reason): send new calls elsewhere
            return JSONResponse({"status": "uploads stuck", "oldestChunkWaitSeconds": round(ctx.sink.oldest_wait())},
                                status_code=503)
        return JSONResponse({"status": "ready", "activeCalls": len(ctx.sessions)})

    async def metrics_route(_request: Request) -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    app = StreamerApp(
        MediaStreamEndpoint(ctx_ref),
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics_route)],
        lifespan=lifespan,
    )
    app.state.ctx_ref = ctx_ref
    app.state.metrics = metrics
    return app


async def drain(ctx: Context, grace_seconds: float) -> None:
    """Flush every open stream, wait for uploads until the grace deadline, spool what is left."""
    ctx.draining = True
    deadline = time.monotonic() + grace_seconds
    for s in list(ctx.sessions):
        # Not a clean end: ACS is told to go elsewhere (1012) and may continue the call on another replica.
        MediaStreamEndpoint._end(ctx, s, 1012, False, DRAIN)
    remaining = max(0.0, deadline - time.monotonic())
    await ctx.sink.wait_idle(remaining * 0.8)
    if ctx.finishing:
        await asyncio.wait(set(ctx.finishing), timeout=max(0.0, deadline - time.monotonic()))
    left = await ctx.sink.stop_and_spool()
    # Sessions whose final manifest write has not landed: chunks still queued, or storage refusing the manifest
    # itself. Their parts go beside the spooled chunks for the next start to merge.
    unfinished = {j.owner for j in left if isinstance(j.owner, Session)} | set(ctx.finishing.values())
    for t in list(ctx.finishing):
        t.cancel()
    for s in unfinished:
        s.spool_part()
    log.info("drained", extra={"spooledChunks": len(left), "spooledSessions": len(unfinished)})
