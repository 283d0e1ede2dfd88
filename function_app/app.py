"""The function entries: bindings (route, methods, auth level) and nothing else. Each one reads the request,
calls a plain function (calls, incoming, callbacks, recordings) off the event loop, and shapes the answer.

HTTP functions use the HTTP streams types (azurefunctions-extensions-http-fastapi; PYTHON_ENABLE_INIT_INDEXING=1)
so the stitched WAV is streamed instead of being built in memory. Every HTTP function needs a function key except
`Callbacks`, which ACS calls anonymously and which verifies ACS's JWT instead.
"""

from __future__ import annotations

import asyncio
import logging

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response, StreamingResponse

from common.acs_jwt import AuthError, bearer_token
from function_app import callbacks, calls, incoming, recordings, validation
from function_app.errors import ApiError
from function_app.runtime import Runtime, get_runtime
from function_app.web import api_base, guarded, json_response, read_body

MAX_REQUEST_BYTES = 64 * 1024
MAX_CALLBACK_BYTES = 1024 * 1024

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
log = logging.getLogger("function_app")


@app.function_name("CreateCall")
@app.route(route="calls", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def create_call(req: Request) -> Response:
    async def run(rt: Runtime) -> Response:
        body = validation.json_object(await read_body(req, MAX_REQUEST_BYTES))
        result = await asyncio.to_thread(calls.place_call, rt.acs, rt.store, rt.settings, body, api_base(req))
        return json_response(201, result, headers={"Location": result["recordingUrl"]})

    return await guarded("CreateCall", run)


@app.function_name("HangUp")
@app.route(route="calls/{callConnectionId}", methods=["DELETE"], auth_level=func.AuthLevel.FUNCTION)
async def hang_up(req: Request) -> Response:
    async def run(rt: Runtime) -> Response:
        call_id = validation.parse_call_id(req.path_params.get("callConnectionId"))
        await asyncio.to_thread(calls.hang_up, rt.acs, call_id)
        return Response(status_code=204)

    return await guarded("HangUp", run)


async def _streaming(req: Request, start: bool) -> Response:
    async def run(rt: Runtime) -> Response:
        call_id = validation.parse_call_id(req.path_params.get("callConnectionId"))
        body = validation.json_object(await read_body(req, MAX_REQUEST_BYTES), required=False)
        result = await asyncio.to_thread(calls.set_streaming, rt.acs, call_id, body, start)
        return json_response(202, result)

    return await guarded("StartStreaming" if start else "StopStreaming", run)


@app.function_name("StartStreaming")
@app.route(route="calls/{callConnectionId}/streaming/start", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def start_streaming(req: Request) -> Response:
    return await _streaming(req, start=True)


@app.function_name("StopStreaming")
@app.route(route="calls/{callConnectionId}/streaming/stop", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def stop_streaming(req: Request) -> Response:
    return await _streaming(req, start=False)


@app.function_name("Callbacks")
@app.route(route="callbacks", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def acs_callbacks(req: Request) -> Response:
    async def run(rt: Runtime) -> Response:
        if rt.verifier is not None:
            try:
                await rt.verifier.verify_async(bearer_token(req.headers.get("authorization")))
            except AuthError as exc:
                log.warning("refused a callback: %s", exc)
                raise ApiError(401, "Unauthorized", "missing or invalid ACS token") from None
        events = callbacks.parse_events(await read_body(req, MAX_CALLBACK_BYTES))
        changed = await asyncio.to_thread(callbacks.handle_events, rt.store, events)
        return json_response(200, {"received": len(events), "applied": changed})

    return await guarded("Callbacks", run)


@app.function_name("ListRecordings")
@app.route(route="recordings", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def list_recordings(req: Request) -> Response:
    async def run(rt: Runtime) -> Response:
        limit = validation.parse_limit(req.query_params.get("limit"))
        token = req.query_params.get("pageToken")
        return json_response(200, await asyncio.to_thread(recordings.list_recordings, rt.store, limit, token))

    return await guarded("ListRecordings", run)


@app.function_name("GetRecording")
@app.route(route="recordings/{callConnectionId}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def get_recording(req: Request) -> Response:
    async def run(rt: Runtime) -> Response:
        call_id = validation.parse_call_id(req.path_params.get("callConnectionId"))
        body = await asyncio.to_thread(recordings.get_recording, rt.store, call_id, api_base(req),
                                       rt.settings.sas_ttl_seconds)
        return json_response(200, body)

    return await guarded("GetRecording", run)


@app.function_name("GetRecordingAudio")
@app.route(route="recordings/{callConnectionId}/audio", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def get_recording_audio(req: Request) -> Response:
    async def run(rt: Runtime) -> Response:
        call_id = validation.parse_call_id(req.path_params.get("callConnectionId"))
        participant = req.query_params.get("participant")
        wav, filename = await asyncio.to_thread(recordings.open_audio, rt.store, call_id, participant)
        headers = {"Content-Length": str(wav.content_length),
                   "Content-Disposition": f'attachment; filename="{filename}"'}
        return StreamingResponse(wav.body(), media_type="audio/wav", headers=headers)

    return await guarded("GetRecordingAudio", run)


@app.function_name("IncomingCall")
@app.event_grid_trigger(arg_name="event")
def incoming_call(event: func.EventGridEvent) -> None:
    rt = get_runtime()
    incoming.handle_incoming(rt.acs, rt.store, rt.settings, event.event_type, event.get_json() or {}, event.id)
