"""The function entries: bindings (route, methods, auth level) and nothing else. Each one reads and validates the
request, calls a plain function (calls, incoming, callbacks, recordings) off the event loop, and shapes the answer;
`http_function` registers it and guards it.

HTTP functions use the HTTP streams types (azurefunctions-extensions-http-fastapi; PYTHON_ENABLE_INIT_INDEXING=1)
so the stitched WAV is streamed instead of being built in memory. Every HTTP function needs a function key except
`Callbacks`, which ACS calls anonymously and which verifies ACS's JWT instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response, StreamingResponse

from common import peaks
from common.acs_jwt import AuthError, bearer_token
from common.layout import FINALIZE_QUEUE, STREAMING_RESTART_QUEUE
from function_app import callbacks, calls, finalize, healing, incoming, recordings, ui, validation
from function_app.errors import ApiError
from function_app.runtime import Runtime, get_runtime
from function_app.settings import QUEUE_CONNECTION
from function_app.web import api_base, guarded, json_response, read_body

MAX_REQUEST_BYTES = 64 * 1024
MAX_CALLBACK_BYTES = 1024 * 1024

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
log = logging.getLogger("function_app")

Handler = Callable[[Request, Runtime], Awaitable[Response]]


def http_function(name: str, *, route: str, method: str,
                  auth_level: func.AuthLevel = func.AuthLevel.FUNCTION) -> Callable[[Handler], Handler]:
    """Registers `handler(req, rt)` as the HTTP function `name`. The worker sees an entry whose only parameter is
    its trigger binding `req`; the entry runs the handler with the per-process runtime through `guarded`, so every
    failure answers as JSON (never a stack trace). Returns the handler unchanged."""

    def register(handler: Handler) -> Handler:
        async def entry(req: Request) -> Response:
            return await guarded(name, lambda rt: handler(req, rt))

        _register(name, route, method, auth_level, entry, handler)
        return handler

    return register


def _register(name: str, route: str, method: str, auth_level: func.AuthLevel,
              entry: Callable[[Request], Awaitable[Response]], handler: Callable[..., Any]) -> None:
    """Indexes `entry` as the HTTP function `name`, named and documented as the handler it runs."""
    entry.__name__ = entry.__qualname__ = handler.__name__
    entry.__doc__ = handler.__doc__
    app.function_name(name)(app.route(route=route, methods=[method], auth_level=auth_level)(entry))


@http_function("CreateCall", route="calls", method="POST")
async def create_call(req: Request, rt: Runtime) -> Response:
    body = validation.json_object(await read_body(req, MAX_REQUEST_BYTES))
    call = validation.parse_create_call(body, rt.settings)
    result = await asyncio.to_thread(calls.place_call, rt.acs, rt.store, rt.settings, call, api_base(req))
    return json_response(201, result, headers={"Location": result["recordingUrl"]})


@http_function("HangUp", route="calls/{callConnectionId}", method="DELETE")
async def hang_up(req: Request, rt: Runtime) -> Response:
    call_id = validation.parse_call_id(req.path_params.get("callConnectionId"))
    await asyncio.to_thread(calls.hang_up, rt.acs, call_id)
    return Response(status_code=204)


async def _streaming(req: Request, rt: Runtime, start: bool) -> Response:
    call_id = validation.parse_call_id(req.path_params.get("callConnectionId"))
    body = validation.json_object(await read_body(req, MAX_REQUEST_BYTES), required=False)
    context = validation.parse_operation_context(body)
    return json_response(202, await asyncio.to_thread(calls.set_streaming, rt.acs, rt.store, call_id, context,
                                                      start))


@http_function("StartStreaming", route="calls/{callConnectionId}/streaming/start", method="POST")
async def start_streaming(req: Request, rt: Runtime) -> Response:
    return await _streaming(req, rt, start=True)


@http_function("StopStreaming", route="calls/{callConnectionId}/streaming/stop", method="POST")
async def stop_streaming(req: Request, rt: Runtime) -> Response:
    return await _streaming(req, rt, start=False)


@http_function("Callbacks", route="callbacks", method="POST", auth_level=func.AuthLevel.ANONYMOUS)
async def acs_callbacks(req: Request, rt: Runtime) -> Response:
    if rt.verifier is not None:
        try:
            await rt.verifier.verify_async(bearer_token(req.headers.get("authorization")))
        except AuthError as exc:
            log.warning("refused a callback: %s", exc)
            raise ApiError(401, "Unauthorized", "missing or invalid ACS token") from None
    events = callbacks.parse_events(await read_body(req, MAX_CALLBACK_BYTES))
    changed = await asyncio.to_thread(callbacks.handle_events, rt.store, events,
                                      restart_attempts=rt.settings.streaming_restart_attempts)
    return json_response(200, {"received": len(events), "applied": changed})


@http_function("ListRecordings", route="recordings", method="GET")
async def list_recordings(req: Request, rt: Runtime) -> Response:
    limit = validation.parse_limit(req.query_params.get("limit"))
    token = req.query_params.get("pageToken")
    return json_response(200, await asyncio.to_thread(recordings.list_recordings, rt.store, limit, token))


@http_function("GetRecording", route="recordings/{callConnectionId}", method="GET")
async def get_recording(req: Request, rt: Runtime) -> Response:
    call_id = validation.parse_call_id(req.path_params.get("callConnectionId"))
    body = await asyncio.to_thread(recordings.get_recording, rt.store, call_id, api_base(req),
                                   rt.settings.sas_ttl_seconds)
    return json_response(200, body)


@http_function("GetRecordingAudio", route="recordings/{callConnectionId}/audio", method="GET")
async def get_recording_audio(req: Request, rt: Runtime) -> Response:
    call_id = validation.parse_call_id(req.path_params.get("callConnectionId"))
    participant = req.query_params.get("participant")
    audio = await asyncio.to_thread(recordings.open_audio, rt.store, call_id, participant, req.headers.get("range"))
    headers = {"Accept-Ranges": "bytes", "Content-Disposition": f'attachment; filename="{audio.filename}"'}
    if audio.window is None:
        return StreamingResponse(audio.pieces, media_type="audio/wav",
                                 headers=headers | {"Content-Length": str(audio.content_length)})
    first, last = audio.window
    headers |= {"Content-Length": str(last - first + 1),
                "Content-Range": f"bytes {first}-{last}/{audio.content_length}"}
    return StreamingResponse(audio.pieces, status_code=206, media_type="audio/wav", headers=headers)


@http_function("GetRecordingPeaks", route="recordings/{callConnectionId}/peaks", method="GET")
async def get_recording_peaks(req: Request, rt: Runtime) -> Response:
    """The waveform envelope the recordings page draws (function_app.peaks)."""
    call_id = validation.parse_call_id(req.path_params.get("callConnectionId"))
    pps = validation.parse_points_per_second(req.query_params.get("pointsPerSecond"), peaks.POINTS_PER_SECOND)
    participant = req.query_params.get("participant")
    from_seq = validation.parse_count(req.query_params.get("fromSeq"), "fromSeq")
    return json_response(200, await asyncio.to_thread(recordings.get_peaks, rt.store, call_id, pps, participant,
                                                      from_seq))


def page_function(name: str, route: str) -> Callable[[Callable[[Request], Response]], Callable[[Request], Response]]:
    """Registers a GET of the recordings page's code (function_app.ui): anonymous — it holds no data, and every
    request it makes for data carries the function key — and independent of the runtime, so the page still
    loads (and shows the API's "not configured" answers) when the app's settings are broken."""

    def register(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        async def entry(req: Request) -> Response:
            try:
                return handler(req)
            except Exception:
                log.exception("%s failed", name)
                return Response("internal error", status_code=500, media_type="text/plain")

        _register(name, route, "GET", func.AuthLevel.ANONYMOUS, entry, handler)
        return handler

    return register


@page_function("RecordingsPage", route="ui")
def recordings_page(req: Request) -> Response:
    return ui.page(req.url.path, ui.storage_url(get_runtime))


@page_function("RecordingsPageAsset", route="ui/{asset}")
def recordings_page_asset(req: Request) -> Response:
    return ui.asset(str(req.path_params.get("asset") or ""), req.headers.get("if-none-match"))


@app.function_name("IncomingCall")
@app.event_grid_trigger(arg_name="event")
def incoming_call(event: func.EventGridEvent) -> None:
    rt = get_runtime()
    incoming.handle_incoming(rt.acs, rt.store, rt.settings, event.event_type, event.get_json() or {}, event.id)


@app.function_name("FinalizeRecording")
@app.queue_trigger(arg_name="msg", queue_name=FINALIZE_QUEUE, connection=QUEUE_CONNECTION)
def finalize_recording(msg: func.QueueMessage) -> None:
    """A call may be ready to finalize (see function_app.finalize). An exception makes the host retry the
    message, and after maxDequeueCount (host.json) move it to the poison queue; the sweep asks again later."""
    try:
        call_id, force = finalize.parse_request(msg.get_body())
    except ValueError as exc:
        log.error("dropping finalize request %s: %s", msg.id, exc)
        return
    outcome = get_runtime().finalizer.run(call_id, force=force)
    log.info("finalize %s: %s (dequeue count %s)", call_id, outcome, msg.dequeue_count,
             extra={"callConnectionId": call_id})


@app.function_name("StreamingRestart")
@app.queue_trigger(arg_name="msg", queue_name=STREAMING_RESTART_QUEUE, connection=QUEUE_CONNECTION)
def streaming_restart(msg: func.QueueMessage) -> None:
    """Media streaming of a connected call stopped unasked: try to start it again (see function_app.healing). An
    exception (storage, not ACS refusing) makes the host retry the message."""
    try:
        req = healing.parse_request(msg.get_body())
    except ValueError as exc:
        log.error("dropping streaming restart request %s: %s", msg.id, exc)
        return
    rt = get_runtime()
    outcome = healing.restart(rt.acs, rt.store, req, rt.settings.streaming_restart_attempts)
    log.info("streaming restart %d of %s: %s", req.attempt, req.call_connection_id, outcome,
             extra={"callConnectionId": req.call_connection_id})


@app.function_name("SweepRecordings")
@app.timer_trigger(arg_name="timer", schedule="0 */5 * * * *", run_on_startup=False)
def sweep_recordings(timer: func.TimerRequest) -> None:
    """Every 5 minutes: ask again for every ended call whose recording is not ready and announced."""
    get_runtime().finalizer.sweep()
