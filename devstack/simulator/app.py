"""HTTP surface of the simulator: the Call Automation REST routes the SDK uses, the JWKS, and `/sim/*` controls.

REST (docs/acs-protocol.md#rest-operations), all requiring `?api-version=` (400 without) and a valid HMAC (401):
    POST   /calling/callConnections                          create      201 CallConnectionProperties
    POST   /calling/callConnections:answer                   answer      200 CallConnectionProperties
    POST   /calling/callConnections:reject                   reject      204
    GET    /calling/callConnections/{id}                     get         200 CallConnectionProperties
    DELETE /calling/callConnections/{id}                     hang up     204
    POST   /calling/callConnections/{id}:terminate           terminate   204
    POST   /calling/callConnections/{id}:startMediaStreaming             202
    POST   /calling/callConnections/{id}:stopMediaStreaming              202
Errors: `{"error": {"code", "message"}}`. A POST with Repeatability-Request-ID seen before gets the first
response again and does nothing.

Keys: GET /calling/keys (JWKS), GET /calling/.well-known/acsopenidconfiguration.

Controls (no auth; loopback tooling):
    POST /sim/incoming-calls   {"eventGridUrl", "from", "to", "callerDisplayName"?, "script"?}  → ring the app
    POST /sim/scripts          {"target": rawId | null (default), "script": {...}}            → far-end behaviour
    GET  /sim/calls, GET /sim/calls/{id}                                                       → what was sent
    POST /sim/calls/{id}/hangup                                                                → far end hangs up
    GET  /sim/requests                                                                         → captured REST
    GET  /sim/info
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devstack.acs_tokens import TokenIssuer
from devstack.simulator import hmac_auth
from devstack.simulator.config import DEFAULT_API_VERSION, CallScript, SimulatorConfig
from devstack.simulator.core import ApiError, CapturedRequest, Simulator, bad_request

_CALL_ROUTE = re.compile(r"^/calling/callConnections/([^/:]+)(?::([A-Za-z]+))?$")


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body).encode(), status_code=status, media_type="application/json",
                    headers=headers)


def _error(exc: ApiError) -> Response:
    return _json(exc.status, exc.body())


def create_app(config: SimulatorConfig | None = None, *, token_issuer: TokenIssuer | None = None) -> Starlette:
    """A Starlette app simulating one ACS resource. Its `Simulator` is at `app.state.simulator`."""
    config = config or SimulatorConfig()
    sim = Simulator(config, token_issuer)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await sim.startup()
        try:
            yield
        finally:
            await sim.shutdown()

    async def calling(request: Request) -> Response:
        body = await request.body()
        scope = request.scope
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope.get("query_string", b"")
        captured = CapturedRequest(request.method, hmac_auth.path_and_query(raw_path, query),
                                   [(k, v) for k, v in request.headers.items()], body)
        sim.requests.append(captured)
        response = _handle(request, body, captured)
        captured.status = response.status_code
        if request.headers.get("x-ms-return-client-request-id", "").lower() == "true":
            client_id = request.headers.get("x-ms-client-request-id")
            if client_id:
                response.headers["x-ms-client-request-id"] = client_id
        return response

    def _handle(request: Request, body: bytes, captured: CapturedRequest) -> Response:
        version = request.query_params.get("api-version")
        if not version:
            return _error(ApiError(400, "MissingApiVersionParameter",
                                   "The api-version query parameter (?api-version=) is required for all requests."))
        if config.verify_hmac:
            try:
                hmac_auth.verify(method=request.method, raw_path=request.scope.get("raw_path") or b"",
                                 query_string=request.scope.get("query_string", b""), headers=request.headers,
                                 body=body, secret=config.secret, max_skew_s=config.max_clock_skew_s)
            except hmac_auth.HmacError as exc:
                captured.auth_error = str(exc)
                return _error(ApiError(401, "Unauthorized", f"HMAC authentication failed: {exc}"))
        repeat_id = request.headers.get("repeatability-request-id")
        key = (request.url.path, repeat_id) if repeat_id and request.method == "POST" else None
        if key is not None and key in sim.repeatability:
            status, content, headers = sim.repeatability[key]
            return Response(content, status_code=status, headers=headers)
        try:
            response = _dispatch(request, body, version)
        except ApiError as exc:
            response = _error(exc)
        if key is not None:
            response.headers["Repeatability-Result"] = "accepted"
            sim.repeatability[key] = (response.status_code, bytes(response.body), dict(response.headers))
            while len(sim.repeatability) > 10_000:  # bounded: the oldest ids are forgotten first
                del sim.repeatability[next(iter(sim.repeatability))]
        return response

    def _payload(body: bytes) -> dict[str, Any]:
        if not body:
            return {}
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise bad_request("The request body is not valid JSON.") from exc
        if not isinstance(data, dict):
            raise bad_request("The request body must be a JSON object.")
        return data

    def _dispatch(request: Request, body: bytes, version: str) -> Response:
        path, method = request.url.path, request.method
        if path == "/calling/callConnections" and method == "POST":
            return _json(201, sim.create_call(_payload(body), version).properties())
        if path == "/calling/callConnections:answer" and method == "POST":
            return _json(200, sim.answer_call(_payload(body), version).properties())
        if path == "/calling/callConnections:reject" and method == "POST":
            sim.reject_call(_payload(body))
            return Response(status_code=204)
        m = _CALL_ROUTE.match(path)
        if m is None:
            raise ApiError(404, "NotFound", f"No route for {method} {path}.")
        call_id, action = m.group(1), m.group(2)
        if action is None and method == "GET":
            return _json(200, sim.get_call(call_id))
        if action is None and method == "DELETE":
            sim.hang_up(call_id)
            return Response(status_code=204)
        if method == "POST" and action == "terminate":
            sim.hang_up(call_id)
            return Response(status_code=204)
        if method == "POST" and action == "startMediaStreaming":
            sim.start_media_streaming(call_id, _payload(body))
            return Response(status_code=202)
        if method == "POST" and action == "stopMediaStreaming":
            sim.stop_media_streaming(call_id, _payload(body))
            return Response(status_code=202)
        raise ApiError(404, "NotFound", f"No route for {method} {path}.")

    # -- keys ---------------------------------------------------------------------------------------------------
    async def keys(_request: Request) -> Response:
        return JSONResponse(sim.jwks)

    async def openid(request: Request) -> Response:
        base = config.public_url or str(request.base_url).rstrip("/")
        return JSONResponse({"issuer": config.issuer, "jwks_uri": f"{base}/calling/keys",
                             "id_token_signing_alg_values_supported": ["RS256"]})

    # -- controls -----------------------------------------------------------------------------------------------
    async def info(request: Request) -> Response:
        base = config.public_url or str(request.base_url).rstrip("/")
        return JSONResponse({"endpoint": base, "issuer": config.issuer, "audience": config.audience,
                             "jwksUrl": f"{base}/calling/keys", "apiVersion": DEFAULT_API_VERSION,
                             "pace": config.pace, "verifyHmac": config.verify_hmac,
                             "defaultScript": config.default_script.to_dict()})

    async def control_json(request: Request) -> dict[str, Any]:
        return _payload(await request.body())

    async def incoming_calls(request: Request) -> Response:
        try:
            data = await control_json(request)
            script_data = data.get("script") or {}
            base_script = sim.config.default_script
            script = CallScript.from_dict(script_data, base_script) if script_data else base_script
            result = await sim.place_incoming_call(
                event_grid_url=data.get("eventGridUrl"), from_=data.get("from", "+15551230000"),
                to=data.get("to", "+15559870000"), script=script,
                caller_display_name=data.get("callerDisplayName", "Simulated Caller"),
                custom_context=data.get("customContext"))
        except ApiError as exc:
            return _error(exc)
        except (TypeError, ValueError) as exc:
            return _error(bad_request(str(exc)))
        return JSONResponse(result, status_code=201)

    async def scripts(request: Request) -> Response:
        try:
            data = await control_json(request)
            target = data.get("target")
            base = sim.config.default_script
            script = CallScript.from_dict(data.get("script") or {}, base)
        except ApiError as exc:
            return _error(exc)
        except (TypeError, ValueError) as exc:
            return _error(bad_request(str(exc)))
        if target is None:
            sim.config.default_script = script
        else:
            sim.scripts[target] = script
        return JSONResponse({"target": target, "script": script.to_dict()})

    async def list_calls(_request: Request) -> Response:
        return JSONResponse([{"callConnectionId": r.call_connection_id, "direction": r.direction,
                              "state": r.state, "callbacks": r.callback_types()} for r in sim.records.values()])

    async def call_record(request: Request) -> Response:
        try:
            return JSONResponse(sim.call_record(request.path_params["call_id"]))
        except ApiError as exc:
            return _error(exc)

    async def remote_hangup(request: Request) -> Response:
        try:
            sim.remote_hang_up(request.path_params["call_id"])
        except ApiError as exc:
            return _error(exc)
        return Response(status_code=202)

    async def captured(_request: Request) -> Response:
        return JSONResponse([r.to_dict() for r in sim.requests])

    async def health(_request: Request) -> Response:
        return JSONResponse({"ok": True, "activeCalls": len(sim.calls)})

    routes = [
        Route("/calling/keys", keys, methods=["GET"]),
        Route("/calling/.well-known/acsopenidconfiguration", openid, methods=["GET"]),
        Route("/calling/{rest:path}", calling, methods=["GET", "POST", "DELETE", "PUT", "PATCH"]),
        Route("/sim/info", info, methods=["GET"]),
        Route("/sim/health", health, methods=["GET"]),
        Route("/sim/incoming-calls", incoming_calls, methods=["POST"]),
        Route("/sim/scripts", scripts, methods=["POST"]),
        Route("/sim/calls", list_calls, methods=["GET"]),
        Route("/sim/calls/{call_id}", call_record, methods=["GET"]),
        Route("/sim/calls/{call_id}/hangup", remote_hangup, methods=["POST"]),
        Route("/sim/requests", captured, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.simulator = sim
    app.state.config = config
    return app
