"""Helpers for the control-plane tests: settings, a store on Azurite, real WAV chunks + manifests, and a capture
server that speaks Call Automation REST (docs/acs-protocol.md#call-automation-rest) and re-computes the SDK's HMAC
itself."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common import manifest as manifest_model
from common import wav as wav_module
from common.layout import chunk_blob, manifest_blob, stream_id
from devstack.azurite import Azurite
from function_app.settings import Settings
from function_app.store import RecordingStore

ACCESS_KEY = base64.b64encode(b"control-plane-test-key-0123456789").decode()


def make_settings(azurite: Azurite, container: str, acs_endpoint: str = "http://127.0.0.1:9", **kw: Any) -> Settings:
    base = Settings(acs_endpoint=acs_endpoint, streamer_wss_url="wss://streamer.example/ws",
                    callback_url="https://func.example/api/callbacks", acs_access_key=ACCESS_KEY,
                    source_caller_id="+15550000000", acs_resource_id="unused", callback_auth=False,
                    storage_connection_string=azurite.connection_string, container=container)
    return replace(base, **kw)


def new_container() -> str:
    return f"cp-{uuid.uuid4().hex[:16]}"


def store_for(azurite: Azurite, container: str) -> RecordingStore:
    store = RecordingStore.from_settings(make_settings(azurite, container))
    store.container.create_container()
    return store


def wav(pcm: bytes, rate: int) -> bytes:
    return wav_module.encode(pcm, rate)


def put_recording(store: RecordingStore, call_id: str, chunks: dict[str | None, dict[int, bytes]], *,
                  rate: int = 16000, chunk_seconds: float = 1.0) -> dict[str, Any]:
    """Uploads chunk WAVs for {participantRawId or None (mixed): {seq: pcm}} and the manifest describing them."""
    part: dict[str, Any] = {
        "callConnectionId": call_id, "sampleRate": rate, "chunkSeconds": chunk_seconds,
        "clockOrigin": "2026-01-01T00:00:00.000Z", "audioChannel": "mixed" if list(chunks) == [None] else "unmixed",
        "sessions": [{"id": "s1", "startedAt": "2026-01-01T00:00:00.000Z", "complete": True, "frames": 1}],
        "streams": []}
    for participant, seqs in chunks.items():
        stream = stream_id(participant)
        entries = []
        for seq, pcm in sorted(seqs.items()):
            data = wav(pcm, rate)
            blob = chunk_blob(call_id, stream, seq)
            store.container.upload_blob(blob, data, overwrite=True)
            entries.append({"blob": blob, "seq": seq, "startTime": "2026-01-01T00:00:00.000Z",
                            "durationMs": len(pcm) * 1000 // (2 * rate), "sha256": hashlib.sha256(data).hexdigest(),
                            "bytes": len(data), "revision": 1, "sessionId": "s1"})
        part["streams"].append({"stream": stream, "participantRawId": participant, "chunks": entries})
    manifest = manifest_model.merge(None, msgspec.convert(part, manifest_model.Part))
    store.container.upload_blob(manifest_blob(call_id), manifest_model.dumps(manifest), overwrite=True)
    return manifest_model.to_builtins(manifest)


# -- a Call Automation REST capture server -------------------------------------------------------------------------
@dataclass
class Captured:
    method: str
    path: str  # raw path + query, as signed
    headers: dict[str, str]
    body: bytes
    hmac_ok: bool

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@dataclass
class AcsCapture:
    """Answers like ACS (status codes and bodies of docs/acs-protocol.md#rest-operations); `fail[route] = (status,
    code, message)` injects
    CommunicationErrorResponse errors; `answered` makes a second answer of one context fail as ACS does."""

    key: str = ACCESS_KEY
    requests: list[Captured] = field(default_factory=list)
    fail: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    on: dict[str, Callable[[], None]] = field(default_factory=dict)  # run before answering a route (its events)

    def _verify(self, request: Request, path: str, body: bytes) -> bool:
        date, host = request.headers.get("x-ms-date", ""), request.headers.get("host", "")
        content_hash = base64.b64encode(hashlib.sha256(body).digest()).decode()
        signed = f"{request.method}\n{path}\n{date};{host};{content_hash}"
        sig = base64.b64encode(hmac.new(base64.b64decode(self.key), signed.encode(), hashlib.sha256).digest())
        expected = f"HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={sig.decode()}"
        return (request.headers.get("x-ms-content-sha256") == content_hash
                and hmac.compare_digest(request.headers.get("authorization", ""), expected))

    @staticmethod
    def properties(call_id: str, state: str = "connecting") -> dict[str, Any]:
        return {"callConnectionId": call_id, "serverCallId": f"server-{call_id}", "correlationId": f"corr-{call_id}",
                "callConnectionState": state, "callbackUri": "https://func.example/api/callbacks",
                "targets": [{"kind": "phoneNumber", "rawId": "4:+15551234567",
                             "phoneNumber": {"value": "+15551234567"}}],
                "mediaStreamingSubscription": {"id": str(uuid.uuid4()), "state": "inactive",
                                               "subscribedContentTypes": ["audio"]}}

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            raw = request.scope["raw_path"].decode() + "?" + request.scope["query_string"].decode()
            body = await request.body()
            ok = self._verify(request, raw, body)
            self.requests.append(Captured(request.method, raw, dict(request.headers), body, ok))
            if not ok:
                return JSONResponse({"error": {"code": "Unauthorized", "message": "HMAC mismatch"}}, 401)
            if "api-version" not in request.query_params:
                return JSONResponse({"error": {"code": "MissingApiVersion", "message": "api-version"}}, 400)
            tail = request.path_params["rest"]
            route = tail.split(":")[-1] if ":" in tail else ("get" if request.method == "GET" else
                                                             "delete" if request.method == "DELETE" else "create")
            if route in self.on:  # e.g. ACS's callback for this request, delivered before ACS's answer
                await asyncio.to_thread(self.on[route])
            if route in self.fail:
                status, code, message = self.fail[route]
                return JSONResponse({"error": {"code": code, "message": message}}, status)
            if route == "create":
                return JSONResponse(self.properties(str(uuid.uuid4())), 201)
            if route == "answer":
                context = orjson.loads(body)["incomingCallContext"]
                if context in self.answered:
                    return JSONResponse({"error": {"code": "8523", "message": "Call already answered"}}, 400)
                self.answered.add(context)
                return JSONResponse(self.properties(str(uuid.uuid4()), "connecting"), 200)
            if route in ("startMediaStreaming", "stopMediaStreaming"):
                return Response(status_code=202)
            if route in ("terminate", "delete"):
                return Response(status_code=204)
            return JSONResponse(self.properties(tail), 200)

        return Starlette(routes=[Route("/calling/callConnections{rest:path}", handle,
                                       methods=["GET", "POST", "DELETE"])])


# -- the app behind the local host, with an injected runtime --------------------------------------------------------
FUNCTION_KEY = "test-function-key"
MASTER_KEY = "test-master-key"


@dataclass
class HostUnderTest:
    url: str
    runtime: Any
    acs: AcsCapture | None = None

    def client(self, key: str | None = FUNCTION_KEY) -> Any:
        import httpx

        headers = {"x-functions-key": key} if key else {}
        return httpx.Client(base_url=f"{self.url}/api", headers=headers, timeout=30)


def start_host(settings: Settings, verifier: Any = None, port: int | None = None,
               env: dict[str, str] | None = None) -> tuple[Any, Any]:
    """The real function entries behind devstack.functions_host on a loopback port, with our own runtime."""
    import function_entry
    from devstack.functions_host import Keys, build_app
    from devstack.serve import ServerThread
    from function_app.acs import build_client, call_exists
    from function_app.events import build_publisher
    from function_app.finalize import Finalizer
    from function_app.runtime import Runtime, set_runtime

    settings.warn_about_risks()
    store = RecordingStore.from_settings(settings)
    client = build_client(settings)
    finalizer = Finalizer(store, build_publisher(settings), restart_attempts=settings.streaming_restart_attempts,
                          call_exists=lambda call_id: call_exists(client, call_id))
    runtime = Runtime(settings, client, store, verifier, finalizer)
    set_runtime(runtime)
    # timers=False: the 5-minute sweep must not fire into a test; tests run it through the admin endpoint
    # env: the host's app settings (os.environ by default); `RecordingsStorage` there starts the queue triggers
    app = build_app(function_entry.app, Keys(frozenset({FUNCTION_KEY}), MASTER_KEY), timers=False, env=env)
    return ServerThread(app, port=port).start(), runtime


@contextlib.contextmanager
def hosted(settings: Settings, verifier: Any = None, *, port: int | None = None,
           acs: AcsCapture | None = None, env: dict[str, str] | None = None) -> Iterator[HostUnderTest]:
    """`start_host` for a module-scoped fixture: stops the server and clears the app's runtime afterwards.
    (conftest points the runtime at the module's `host` before each test.)"""
    from function_app.runtime import set_runtime

    server, runtime = start_host(settings, verifier, port=port, env=env)
    try:
        yield HostUnderTest(server.url, runtime, acs)
    finally:
        server.stop()
        set_runtime(None)
