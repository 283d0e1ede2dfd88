"""`python -m streamer`: one uvicorn worker on $PORT with the sans-I/O websockets backend on uvloop.

SIGTERM/SIGINT: readiness flips to draining at once; uvicorn closes every socket (1012), each session flushes
its partial chunks, and the lifespan shutdown uploads or spools everything before the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import sys
from types import FrameType

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from common.logs import setup_logging
from streamer.app import create_app
from streamer.settings import Settings, SettingsError
from streamer.telemetry import freeze_sdk_settings, setup_telemetry

log = logging.getLogger("streamer")

HEADER_TIMEOUT_SECONDS = 5.0  # ACS sends its upgrade request at once; the ingress may bound this too


class _HeaderTimeoutH11(H11Protocol):
    """uvicorn waits as long as a client likes for a request's headers, so a client that connects and then
    dribbles (or sends nothing) holds a socket indefinitely. This closes a connection whose first request line
    and headers have not all arrived within HEADER_TIMEOUT_SECONDS. Once upgraded, the socket belongs to the
    WebSocket protocol and the timer leaves it alone."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT_SECONDS, self._headers_overdue)

    def _headers_overdue(self) -> None:
        transport = self.transport
        cycle: object | None = self.cycle  # typed as always set; it is None until a request has arrived
        if cycle is None and transport.get_protocol() is self and not transport.is_closing():
            log.warning("closing a connection that sent no complete request in %ss", HEADER_TIMEOUT_SECONDS)
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._header_timer.cancel()
        super().connection_lost(exc)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app_state: object):
        super().__init__(config)
        self._app_state = app_state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        registry = self._app_state.runtime.registry  # type: ignore[attr-defined]
        if registry is not None:
            registry.draining = True  # readiness answers "draining" from now on
        log.info("signal %s: draining", sig)
        super().handle_exit(sig, frame)
        # uvicorn re-raises captured signals after shutdown (exit status -15); a completed drain exits 0.
        if sig == signal.SIGTERM:
            self._captured_signals.remove(sig)


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        setup_logging()
        log.error("invalid settings: %s", exc)
        return 2
    setup_logging(settings.log_level)
    setup_telemetry(settings.appinsights_connection_string)
    freeze_sdk_settings()
    app = create_app(settings)
    config = uvicorn.Config(
        # uvloop: at ACS's cadence every frame is its own socket read, wake-up and pause/resume of reading; libuv
        # does that bookkeeping in C (about 1.5x the calls per core of asyncio's selector loop; README "Performance").
        app, host="0.0.0.0", port=settings.port, ws="websockets-sansio", loop="uvloop", http=_HeaderTimeoutH11,
        # uvicorn's own limit drops messages still queued ahead of an oversized one; ours (MAX_FRAME_BYTES) is
        # enforced in order by the handler, so uvicorn only gets a hard backstop well above it.
        ws_max_size=max(4 * settings.max_frame_bytes, 1 << 20),
        ws_ping_interval=settings.ws_ping_seconds, ws_ping_timeout=settings.ws_ping_seconds,
        # No X-Forwarded-* rewriting: nothing here reads the client address, and the middleware would sit between
        # uvicorn and every frame's `await receive()` (see streamer.app).
        log_config=None, access_log=False, lifespan="on", proxy_headers=False,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
    )
    _Server(config, app.state).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
