"""The streamer's ASGI app: wiring. Media WebSockets at /ws (and under /ws/), health, readiness, metrics.

What lives where: upgrade admission and the frame loop in `streamer.endpoint`, session lifecycle and the drain in
`streamer.registry`, one connection in `streamer.session`, chunks to storage in `streamer.sink`, the heap trim
in `streamer.heap`. This module builds them at start (the lifespan) and runs the periodic sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.acs_jwt import AcsJwtVerifier, AuthConfig
from streamer.endpoint import DenialLogFilter, MediaBypass, MediaStreamEndpoint
from streamer.heap import TRIM_SECONDS, heap_trimmer
from streamer.metrics import CONTENT_TYPE, Metrics
from streamer.overload import LoopLag
from streamer.recovery import recover_spool
from streamer.registry import SessionRegistry
from streamer.session import Session, SessionConfig
from streamer.settings import Settings
from streamer.sink import Spool, UploadSink
from streamer.store import (
    AzureBlobBackend,
    AzureFinalizeQueue,
    BlobBackend,
    FinalizeQueue,
    RecordingStore,
    request_counter,
)

log = logging.getLogger(__name__)

IDLE_SEAL_SECONDS = 1.0
SWEEP_SECONDS = 0.25
READY_CHECK_SECONDS = 2.0


class Runtime:
    """What the lifespan built, for the routes and the signal handler (None until started)."""

    registry: SessionRegistry | None = None
    store: RecordingStore | None = None
    sink: UploadSink | None = None
    endpoint: MediaStreamEndpoint | None = None
    ready_checked: tuple[float, bool] = (0.0, False)


def build_backend(settings: Settings, metrics: Metrics) -> BlobBackend:
    return AzureBlobBackend(settings.container, account_url=settings.storage_account_url,
                            connection_string=settings.storage_connection_string,
                            client_id=settings.azure_client_id, on_request=request_counter(metrics.storage_requests))


async def sweep(registry: SessionRegistry, sink: UploadSink) -> None:
    """Every SWEEP_SECONDS: seal idle streams (so chunks land within seconds of their audio), spool chunks that
    storage is slow to take, and trim the heap once a minute."""
    trim, trimmed_at = heap_trimmer(), time.monotonic()
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        now = time.monotonic()
        if trim is not None and now - trimmed_at >= TRIM_SECONDS:
            trim()
            trimmed_at = now
        sink.spool_overdue(now)
        wall = time.time()  # frames' arrivals are wall times
        for s in list(registry.sessions):
            try:
                s.seal_idle(IDLE_SEAL_SECONDS, wall)
            except Exception:
                log.exception("idle seal failed", extra=s.fields)


def build_queue(settings: Settings, metrics: Metrics) -> FinalizeQueue | None:
    if not settings.has_queue():
        log.warning("no queue endpoint in the storage settings: the control plane is not asked to finalize "
                    "recordings when their last session settles (its sweep still does)")
        return None
    return AzureFinalizeQueue(account_url=settings.queue_account_url(),
                              connection_string=settings.storage_connection_string,
                              client_id=settings.azure_client_id,
                              on_request=request_counter(metrics.storage_requests))


def create_app(settings: Settings, backend: BlobBackend | None = None,
               queue: FinalizeQueue | None = None) -> MediaBypass:
    """`backend`/`queue`: in-process tests pass their own; by default both come from the settings (a test that
    passes a backend and no queue runs without one)."""
    metrics = Metrics()
    rt = Runtime()
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, DenialLogFilter) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(DenialLogFilter())
    config = SessionConfig(chunk_seconds=settings.chunk_seconds, max_frame_bytes=settings.max_frame_bytes,
                           call_check=settings.call_check)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        be = backend or build_backend(settings, metrics)
        fq = queue if backend is not None else build_queue(settings, metrics)
        store = RecordingStore(be, fq, on_retry=metrics.retried)
        spool = Spool(settings.spool_dir)
        sink = UploadSink(store, spool, metrics, memory_limit=settings.upload_memory_bytes,
                          workers=settings.upload_concurrency)

        def make_session(call_id: str | None, correlation_id: str | None, channel: str, **kw: Any) -> Session:
            return Session(call_id, correlation_id, channel, store=store, sink=sink, spool=spool, metrics=metrics,
                           config=config, **kw)

        registry = SessionRegistry(sink, metrics, make_session)
        verifier = None
        if settings.auth_enabled:
            verifier = AcsJwtVerifier(AuthConfig(settings.jwt_issuer, settings.acs_resource_id, settings.jwks_url))
        else:
            log.warning("STREAMER_AUTH=disabled: WebSocket upgrades are NOT authenticated (local use only)")
        if not settings.call_check:
            log.warning("STREAMER_CALL_CHECK=disabled: audio of calls the control plane does not know, or that have "
                        "ended, is recorded (local use only)")
        lag = LoopLag()
        metrics.loop_lag = lambda: (lag.seconds, lag.worst)
        endpoint = MediaStreamEndpoint(registry, verifier, max_active_calls=settings.max_active_calls,
                                       max_frame_bytes=settings.max_frame_bytes, lag=lag,
                                       max_loop_lag=settings.max_loop_lag_seconds)
        bypass.media = rt.endpoint = endpoint
        rt.registry, rt.store, rt.sink = registry, store, sink
        try:
            await be.ensure_container()
        except Exception as exc:
            log.error("cannot reach storage at start; chunks will wait and retry", extra={"error": str(exc)})
        sink.start()
        stop_recovery = asyncio.Event()
        tasks = [asyncio.create_task(sweep(registry, sink), name="sweeper"),
                 asyncio.create_task(lag.run(), name="loop-lag"),
                 asyncio.create_task(recover_spool(spool, store, metrics, stop=stop_recovery), name="recover"),
                 asyncio.create_task(registry.replay_held_frames(), name="replay-held")]
        log.info("streamer ready", extra={"container": settings.container, "auth": settings.auth_enabled,
                                          "chunkSeconds": settings.chunk_seconds})
        try:
            yield
        finally:
            await registry.drain(settings.shutdown_grace_seconds)
            stop_recovery.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await be.close()
            if fq is not None:
                await fq.close()

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def readyz(_request: Request) -> JSONResponse:
        registry, store, sink, endpoint = rt.registry, rt.store, rt.sink, rt.endpoint
        if registry is None or store is None or sink is None or endpoint is None or registry.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        shed = endpoint.shedding()  # steer new sockets to replicas with room, as upgrade admission does
        if shed is not None:
            return JSONResponse({"status": shed.replace("_", " "), "activeCalls": len(registry),
                                 "loopLagSeconds": round(endpoint.lag.seconds if endpoint.lag else 0.0, 3)},
                                status_code=503)
        checked_at, ok = rt.ready_checked
        if time.monotonic() - checked_at > READY_CHECK_SECONDS:
            try:
                async with asyncio.timeout(3.0):
                    await store.backend.ping()
                ok = True
            except Exception:
                ok = False
                sink.suspect_storage()  # uploads wait behind one probe; what waits in memory is spooled
            rt.ready_checked = (time.monotonic(), ok)
        if not ok or not sink.healthy:
            return JSONResponse({"status": "storage unreachable"}, status_code=503)
        if sink.stuck():  # chunks are not landing (whatever the reason): send new calls elsewhere
            return JSONResponse({"status": "uploads stuck", "oldestChunkWaitSeconds": round(sink.oldest_wait())},
                                status_code=503)
        return JSONResponse({"status": "ready", "activeCalls": len(registry)})

    async def metrics_route(_request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    starlette = Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics_route)],
        lifespan=lifespan,
    )
    bypass = MediaBypass(None, starlette)
    starlette.state.runtime = rt
    starlette.state.metrics = metrics
    bypass.state = starlette.state  # for `python -m streamer`'s signal handler
    return bypass
