"""Test-side receivers for the simulator: a tiny Starlette app that captures what an ACS-facing app would get.

It knows nothing of the simulator's code: it records raw WebSocket messages (with arrival times and upgrade
headers), raw callback POSTs and raw Event Grid deliveries, so the fidelity tests judge the wire, not our objects.

WebSocket modes (path /ws/{mode}): `accept` (read everything), `reject` (close before accept → HTTP 403 on the
upgrade), `policy` (accept, then close 1008 as the docs advise on a bad token), `closeafter-N` (accept, read N
messages, then close 1011 like a crashing server), `talkback` (accept, send bidirectional audio + StopAudio).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from devstack.serve import ServerThread
from devstack.simulator import AudioSpec, CallScript, SimulatorConfig, SimulatorServer

RESOURCE_ID = "0d7f4b8e-1c2a-4f3b-9e5d-6a7b8c9d0e1f"  # the simulated ACS resource's immutable id (JWT audience)
ISSUER = "https://acscallautomation.communication.azure.com"


@contextlib.contextmanager
def synth_simulator(connect_delay_s: float) -> Iterator[SimulatorServer]:
    """The simulator as the fidelity tests use it: 1-s calls of synthetic audio, sent as fast as possible."""
    script = CallScript(duration_s=1.0, audio=AudioSpec(source="synth"), connect_delay_s=connect_delay_s)
    with SimulatorServer(SimulatorConfig(pace=0, issuer=ISSUER, audience=RESOURCE_ID, default_script=script)) as sim:
        yield sim


def sdk_client(sim: SimulatorServer) -> Any:
    """The real Call Automation SDK client, pointed at the simulator with its access key."""
    from azure.communication.callautomation import CallAutomationClient
    from azure.core.credentials import AzureKeyCredential

    return CallAutomationClient(sim.url, AzureKeyCredential(sim.access_key))


@dataclass
class WsConnection:
    mode: str
    headers: dict[str, str]
    messages: list[tuple[float, str]] = field(default_factory=list)  # (monotonic arrival, text)
    closed: bool = False
    disconnect_code: int | None = None

    def frames(self) -> list[dict[str, Any]]:
        return [json.loads(text) for _, text in self.messages]


@dataclass
class Posted:
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class Capture:
    """Thread-safe store + the Starlette app that fills it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ws: list[WsConnection] = []
        self.callbacks: dict[str, list[Posted]] = defaultdict(list)  # key: the {name} in /callbacks/{name}
        self.eventgrid: list[Posted] = []
        self.app = Starlette(routes=[
            WebSocketRoute("/ws/{mode}", self._ws),
            Route("/callbacks/{name}", self._callback, methods=["POST"]),
            Route("/eventgrid", self._eventgrid, methods=["POST"]),
        ])
        self.server = ServerThread(self.app)

    @property
    def http(self) -> str:
        return self.server.url

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/ws"

    def callback_url(self, name: str) -> str:
        return f"{self.http}/callbacks/{name}"

    async def _ws(self, websocket: WebSocket) -> None:
        mode = websocket.path_params["mode"]
        conn = WsConnection(mode, {k.lower(): v for k, v in websocket.headers.items()})
        with self.lock:
            self.ws.append(conn)
        if mode == "reject":
            await websocket.close(code=1008)  # before accept: uvicorn answers the upgrade with 403
            return
        await websocket.accept()
        if mode == "policy":
            await websocket.close(code=1008, reason="invalid token")
            conn.closed = True
            return
        if mode == "talkback":  # bidirectional: both outbound shapes the docs/SDKs use (docs/acs-protocol.md)
            await websocket.send_text('{"Kind":"AudioData","AudioData":{"Data":"AAAA"},"StopAudio":null}')
            await websocket.send_text('{"kind":"stopAudio","stopAudio":{}}')
        limit = int(mode.split("-", 1)[1]) if mode.startswith("closeafter-") else None
        try:
            while True:
                msg = await websocket.receive()
                if msg["type"] == "websocket.disconnect":
                    conn.disconnect_code = msg.get("code")
                    break
                text = msg.get("text")
                if text is None and msg.get("bytes") is not None:
                    text = msg["bytes"].decode()
                with self.lock:
                    conn.messages.append((time.monotonic(), text))
                if limit is not None and len(conn.messages) >= limit:
                    await websocket.close(code=1011)
                    break
        except WebSocketDisconnect as exc:
            conn.disconnect_code = exc.code
        conn.closed = True

    async def _callback(self, request: Request) -> Response:
        posted = Posted(request.url.path, request.url.query, {k.lower(): v for k, v in request.headers.items()},
                        await request.body(), time.monotonic())
        with self.lock:
            self.callbacks[request.path_params["name"]].append(posted)
        return Response(status_code=200)

    async def _eventgrid(self, request: Request) -> Response:
        posted = Posted(request.url.path, request.url.query, {k.lower(): v for k, v in request.headers.items()},
                        await request.body(), time.monotonic())
        with self.lock:
            self.eventgrid.append(posted)
        return JSONResponse({})

    def connections_for(self, call_id: str) -> list[WsConnection]:
        with self.lock:
            return [c for c in self.ws if c.headers.get("x-ms-call-connection-id") == call_id]

    def events(self, name: str) -> list[dict[str, Any]]:
        """Every CloudEvent POSTed to /callbacks/{name}, flattened from the arrays, in arrival order."""
        with self.lock:
            posts = list(self.callbacks.get(name, []))
        return [evt for p in posts for evt in p.json()]

    def wait(self, predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.02)


# -- an independent HMAC signer / checker (docs/acs-protocol.md#hmac-request-signing), from the spec, not the simulator

def sign(method: str, url_path_and_query: str, host: str, body: bytes, key_b64: str,
         date: str | None = None) -> dict[str, str]:
    date = date or formatdate(usegmt=True)
    content_hash = base64.b64encode(hashlib.sha256(body).digest()).decode()
    to_sign = f"{method}\n{url_path_and_query}\n{date};{host};{content_hash}"
    sig = base64.b64encode(hmac.new(base64.b64decode(key_b64), to_sign.encode(), hashlib.sha256).digest()).decode()
    return {"x-ms-date": date, "x-ms-content-sha256": content_hash,
            "Authorization": f"HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={sig}"}


def recompute_signature(method: str, path_and_query: str, headers: dict[str, str], body: bytes,
                        key_b64: str) -> str:
    to_sign = (f"{method}\n{path_and_query}\n{headers['x-ms-date']};{headers['host']};"
               f"{base64.b64encode(hashlib.sha256(body).digest()).decode()}")
    return base64.b64encode(hmac.new(base64.b64decode(key_b64), to_sign.encode(), hashlib.sha256).digest()).decode()


def media_options(transport_url: str, *, channel: str = "mixed", audio_format: str = "pcm16KMono",
                  start: bool = True, dtmf: bool | None = None) -> Any:
    """The SDK's MediaStreamingOptions as an app would build them."""
    from azure.communication.callautomation import MediaStreamingOptions

    return MediaStreamingOptions(transport_url=transport_url, transport_type="websocket", content_type="audio",
                                 audio_channel_type=channel, start_media_streaming=start,
                                 audio_format=audio_format, enable_dtmf_tones=dtmf)
