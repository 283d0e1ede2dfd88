"""The media-streaming WebSocket: upgrade admission (`admit`), then the frame loop (`__call__`), then the hand-over
to the registry.

A raw ASGI callable rather than Starlette's WebSocket wrapper, reached before Starlette's middleware stack
(`MediaBypass`): the frame loop is the hot path, and every frame's wake-up resumes each coroutine between uvicorn
and the `await receive()` (ten of them through the stack, three without).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from websockets.frames import CloseCode

from common.acs_jwt import AcsJwtVerifier, AuthError, bearer_token
from common.layout import is_valid_call_id
from common.manifest import EndReason
from common.transport import channel_hint, is_media_path
from streamer.overload import LoopLag
from streamer.registry import SessionRegistry
from streamer.session import ProtocolClose

log = logging.getLogger(__name__)

SHED = frozenset({"draining", "at_capacity", "overloaded"})  # refusals of a replica that has no room, not of the call
RETRY_AFTER_SECONDS = "1"


class DenialLogFilter(logging.Filter):
    """uvicorn's sans-I/O WebSocket protocol sends a denial response correctly and then logs, at ERROR, that the
    app "returned without completing handshake" (it only counts an accept or a close as completing it). Every
    upgrade this endpoint refuses is logged by the endpoint itself, so that line is dropped: a storm of shed
    upgrades must not read as a storm of server errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("ASGI callable returned without completing handshake")


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def disconnect_code(message: Mapping[str, Any]) -> tuple[int, bool]:
    """-> (close code, whether the peer closed cleanly) of a `websocket.disconnect`. A lost connection (no close
    frame) arrives as 1006, or from uvicorn as 1005 without a "reason"; a real close handshake carries the peer's
    code and a reason (possibly empty)."""
    code = message.get("code", CloseCode.NO_STATUS_RCVD)
    clean = code != CloseCode.ABNORMAL_CLOSURE and not (code == CloseCode.NO_STATUS_RCVD and "reason" not in message)
    return (code if clean else CloseCode.ABNORMAL_CLOSURE), clean


class MediaStreamEndpoint:
    """ASGI app for one media-streaming WebSocket: admit, accept, loop on frames, flush on close."""

    def __init__(self, registry: SessionRegistry, verifier: AcsJwtVerifier | None, *, max_active_calls: int,
                 max_frame_bytes: int, lag: LoopLag | None = None, max_loop_lag: float = 0.0):
        self.registry = registry
        self.verifier = verifier
        self.max_active_calls = max_active_calls
        self.max_frame_bytes = max_frame_bytes
        self.lag = lag
        self.max_loop_lag = max_loop_lag

    def shedding(self) -> str | None:
        """Why this replica takes no new calls now (draining, full, overloaded), or None: readiness says the same."""
        if self.registry.draining:
            return "draining"
        if len(self.registry) >= self.max_active_calls:
            return "at_capacity"
        if self.lag is not None and self.max_loop_lag and self.lag.over(self.max_loop_lag):
            return "overloaded"
        return None

    async def admit(self, call_id: str | None, authorization: str | None, fields: dict[str, Any]) -> str | None:
        """Upgrade admission: the reason to refuse this upgrade, or None to accept it. Shedding comes first: it
        costs nothing, and a replica that is behind must not spend a token check on a call it will refuse."""
        shed = self.shedding()
        if shed is not None:
            return shed
        if call_id is not None and not is_valid_call_id(call_id):
            return "bad_call_id"
        if self.verifier is not None:
            try:
                await self.verifier.verify_async(bearer_token(authorization))
            except AuthError as exc:
                log.warning("upgrade refused: %s", exc, extra=fields)
                return "unauthorized"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        registry = self.registry
        headers = _headers(scope)
        call_id = headers.get("x-ms-call-connection-id") or None
        correlation_id = headers.get("x-ms-call-correlation-id") or None
        if correlation_id is not None and not is_valid_call_id(correlation_id):
            correlation_id = None  # stored in the manifest: only a bounded, path-safe id is kept
        fields = {"callConnectionId": call_id, "correlationId": correlation_id}
        await receive()  # websocket.connect

        refusal = await self.admit(call_id, headers.get("authorization"), fields)
        if refusal:
            registry.metrics.sessions_refused += 1
            registry.metrics.refusals[refusal] += 1
            if refusal != "unauthorized":
                log.warning("upgrade refused: %s", refusal, extra=fields)
            await self._deny(scope, send, refusal)
            return

        session = registry.make_session(call_id, correlation_id, channel_hint(scope.get("path", ""),
                                                                               scope.get("query_string", b"")))
        session.on_fatal = registry.fatal_closer(session, lambda code, reason: self._close(send, code, reason))
        await send({"type": "websocket.accept"})
        registry.opened(session)
        log.info("stream connected", extra={**session.fields, "channel": session.channel})
        code: int = CloseCode.ABNORMAL_CLOSURE
        clean = False
        max_bytes = self.max_frame_bytes
        try:
            # -- the frame loop: every message to the session until the peer goes. Inline rather than a method of
            # its own: each frame's wake-up resumes every coroutine between uvicorn and `await receive()`.
            while True:
                message = await receive()
                mtype = message["type"]
                if mtype == "websocket.receive":
                    raw = message.get("text")
                    if raw is None:
                        raw = message.get("bytes") or b""
                    if len(raw) > max_bytes:
                        raise ProtocolClose(CloseCode.MESSAGE_TOO_BIG,
                                            f"message of {len(raw)} bytes exceeds {max_bytes}")
                    session.on_message(raw)
                elif mtype == "websocket.disconnect":
                    code, clean = disconnect_code(message)
                    break
        except ProtocolClose as exc:
            log.warning("closing stream: %s", exc.reason, extra={**session.fields, "closeCode": exc.code})
            # flush first: a peer that stops reading can block the close
            registry.end(session, exc.code, True, EndReason.PROTOCOL_ERROR)
            await self._close(send, exc.code, exc.reason)
        except Exception:
            log.exception("stream handler failed; flushing what was received", extra=session.fields)
            registry.end(session, CloseCode.INTERNAL_ERROR, False, EndReason.SERVER_ERROR)
            await self._close(send, CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            # During a drain uvicorn closes the socket itself (1012): that is our restart, not the end of the stream.
            registry.end(session, code, clean and not registry.draining,
                         EndReason.DRAIN if registry.draining else None)

    @staticmethod
    async def _deny(scope: Scope, send: Send, refusal: str) -> None:
        """Refuse the upgrade. A replica shedding load answers 503 with Retry-After (try again, elsewhere); a
        request that is itself wrong (token, call id) gets 403. Without uvicorn's denial-response extension both
        are a close before accept, which uvicorn answers with 403."""
        if refusal in SHED and "websocket.http.response" in scope.get("extensions", {}):
            body = f"not taking new calls: {refusal}".encode()
            await send({"type": "websocket.http.response.start", "status": 503, "headers": [
                (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                (b"retry-after", RETRY_AFTER_SECONDS.encode())]})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION})

    @staticmethod
    async def _close(send: Send, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await send({"type": "websocket.close", "code": code, "reason": reason[:120]})


class MediaBypass:
    """ASGI wrapper: media WebSockets go straight to their endpoint, everything else to the Starlette app."""

    state: Any  # the Starlette app's state, for `python -m streamer`'s signal handler

    def __init__(self, media: MediaStreamEndpoint | None, app: ASGIApp):
        self.media = media  # set by the app's lifespan, before the server accepts connections
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and is_media_path(scope["path"]) and self.media is not None:
            await self.media(scope, receive, send)
        else:
            await self.app(scope, receive, send)
