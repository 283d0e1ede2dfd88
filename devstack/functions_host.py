"""A small stand-in for the Azure Functions host, for machines without Core Tools (`func` cannot be installed
offline). It serves an app's own functions at the URLs the real host uses, built only from their declared bindings:

- `httpTrigger` → `/{routePrefix}/{route}` (routePrefix from host.json, default `api`) with the declared methods;
  route parameters (`{name}`, `{name:int}`, `{*rest}`) reach the function as the real host passes them. The auth
  level is enforced: FUNCTION needs a function key or the master key in `?code=` or `x-functions-key`, ADMIN the
  master key, ANONYMOUS nothing; a failure is a bare 401, as on the real host.
- `eventGridTrigger` → `POST /runtime/webhooks/eventgrid?functionName=<name>`: `aeg-event-type:
  SubscriptionValidation` is answered with `{"validationResponse": code}`; `Notification` invokes the function
  once per array element (an object counts as one) and answers 202, or 500 if an invocation raised (Event Grid
  then retries); `Unsubscribe` 202; anything else 400 — the WebJobs Event Grid extension's rules.
- Functions typed with HTTP streams (FastAPI/Starlette `Request`) get the Starlette request and may return any
  Starlette response, streaming ones included; classic `func.HttpRequest` functions get a converted request.

What it does not emulate: the worker process and gRPC, other trigger or binding types (they are refused at start),
`context` parameters, host.json settings other than routePrefix, key management APIs and named keys per function,
Event Grid's system key name (any key given with --eventgrid-key works; without one the webhook is open, as under
`func start`), request size limits, timeouts, scale-out, retries, Application Insights, and the real host's
exact answers to unmatched methods (Starlette's 405 here) and malformed requests. Note that `func start` does
not enforce keys at all, while this host does, so key mistakes show up locally.

Run: `python -m devstack.functions_host --port 7071 [--key K] [--master-key M]`; the app reads its own settings
from the environment, as it does in Azure.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import re
import secrets
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import azure.functions as func
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger("devstack.functions_host")
REPO = Path(__file__).resolve().parent.parent
_PARAM = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z]+))?(\?)?\}")
_INDEXED: dict[int, list[Any]] = {}


@dataclass(frozen=True)
class Keys:
    function_keys: frozenset[str]
    master_key: str
    eventgrid_key: str | None = None

    def allows(self, level: str, presented: str | None) -> bool:
        level = level.upper()
        if level == "ANONYMOUS":
            return True
        if not presented:
            return False
        if secrets.compare_digest(presented, self.master_key):
            return True
        return level == "FUNCTION" and any(secrets.compare_digest(presented, k) for k in self.function_keys)


def indexed_functions(app: func.FunctionApp) -> list[Any]:
    """`get_functions()` may only run once per app (it accumulates bindings), so remember its answer."""
    if id(app) not in _INDEXED:
        _INDEXED[id(app)] = app.get_functions()
    return _INDEXED[id(app)]


def route_prefix(host_json: Path = REPO / "host.json") -> str:
    try:
        config = json.loads(host_json.read_text())
    except FileNotFoundError:
        return "api"
    return str(config.get("extensions", {}).get("http", {}).get("routePrefix", "api")).strip("/")


def starlette_path(prefix: str, route: str) -> str:
    def convert(m: re.Match[str]) -> str:
        star, name, constraint, optional = m.groups()
        if optional:
            raise ValueError(f"optional route parameters are not supported by the local host: {route!r}")
        if star:
            return f"{{{name}:path}}"
        if constraint and constraint.lower() == "int":
            return f"{{{name}:int}}"
        if constraint:
            raise ValueError(f"route constraint {constraint!r} is not supported by the local host: {route!r}")
        return f"{{{name}}}"

    path = "/".join(p for p in (prefix, _PARAM.sub(convert, route.strip("/"))) if p)
    return "/" + path


def _presented_key(request: Request) -> str | None:
    return request.query_params.get("code") or request.headers.get("x-functions-key")


async def _classic_request(request: Request) -> func.HttpRequest:
    return func.HttpRequest(method=request.method, url=str(request.url), headers=dict(request.headers),
                            params=dict(request.query_params),
                            route_params={k: str(v) for k, v in request.path_params.items()},
                            body=await request.body())


def _to_response(result: Any) -> Response:
    if isinstance(result, Response):
        return result
    if isinstance(result, func.HttpResponse):
        headers = {k: v for k, v in result.headers.items() if k.lower() != "content-length"}
        return Response(result.get_body(), status_code=result.status_code, headers=headers,
                        media_type=result.mimetype)
    if result is None:
        return Response(status_code=204)
    raise TypeError(f"unsupported HTTP function result {type(result).__name__}")


async def _invoke(user_function: Any, **kwargs: Any) -> Any:
    if inspect.iscoroutinefunction(user_function):
        return await user_function(**kwargs)
    return await run_in_threadpool(user_function, **kwargs)


def _check_params(name: str, user_function: Any, trigger: str) -> None:
    params = inspect.signature(user_function).parameters
    if set(params) != {trigger}:
        raise ValueError(f"{name}: the local host passes only the trigger parameter {trigger!r}, "
                         f"the function takes {list(params)}")


def _http_route(prefix: str, fn: Any, binding: dict[str, Any], keys: Keys) -> Route:
    name, user_function = fn.get_function_name(), fn.get_user_function()
    _check_params(name, user_function, binding["name"])
    classic = typing.get_type_hints(user_function).get(binding["name"]) is func.HttpRequest  # as the worker does
    level = str(binding.get("authLevel", "FUNCTION"))

    async def endpoint(request: Request) -> Response:
        if not keys.allows(level, _presented_key(request)):
            return Response(status_code=401)
        arg = await _classic_request(request) if classic else request
        try:
            return _to_response(await _invoke(user_function, **{binding["name"]: arg}))
        except Exception:
            log.exception("function %s raised", name)
            return Response(status_code=500)

    methods = [m.upper() for m in binding.get("methods") or ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]]
    return Route(starlette_path(prefix, binding.get("route") or name), endpoint, methods=methods, name=name)


def _event(item: Any) -> func.EventGridEvent:
    if not isinstance(item, dict):
        raise ValueError("each Event Grid event must be a JSON object")
    return func.EventGridEvent(id=item.get("id"), data=item.get("data"), topic=item.get("topic"),
                               subject=item.get("subject"), event_type=item.get("eventType"),
                               event_time=_parse_time(item.get("eventTime")), data_version=item.get("dataVersion"))


def _parse_time(value: Any) -> datetime | None:
    """Event Grid sends 7 fractional digits; keep microseconds, as the worker's converter does."""
    if not isinstance(value, str):
        return None
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", value)
    if not m:
        return None
    base, frac, zone = m.groups()
    zone = "+00:00" if zone in (None, "Z") else zone
    return datetime.fromisoformat(f"{base}.{(frac or '0')[:6].ljust(6, '0')}{zone}")


def _eventgrid_route(functions: dict[str, Any], keys: Keys) -> list[Route]:
    async def webhook(request: Request) -> Response:
        name = request.query_params.get("functionName") or ""
        fn = functions.get(name.lower())
        if fn is None:
            return JSONResponse({"error": f"no Event Grid function {name!r}"}, status_code=404)
        if keys.eventgrid_key is not None:
            presented = _presented_key(request)
            if not presented or not (secrets.compare_digest(presented, keys.eventgrid_key)
                                     or secrets.compare_digest(presented, keys.master_key)):
                return Response(status_code=401)
        kind = (request.headers.get("aeg-event-type") or "").lower()
        try:
            payload = json.loads(await request.body())
        except ValueError:
            return Response(status_code=400)
        if kind == "subscriptionvalidation":
            first = payload[0] if isinstance(payload, list) and payload else payload
            code = (first.get("data") or {}).get("validationCode") if isinstance(first, dict) else None
            if not code:
                return Response(status_code=400)
            return JSONResponse({"validationResponse": code})
        if kind == "unsubscribe":
            return Response(status_code=202)
        if kind != "notification":
            return Response(status_code=400)
        user_function = fn.get_user_function()
        trigger = next(b["name"] for b in json.loads(fn.get_function_json())["bindings"]
                       if b["type"] == "eventGridTrigger")
        failed = 0
        for item in payload if isinstance(payload, list) else [payload]:
            try:
                await _invoke(user_function, **{trigger: _event(item)})
            except Exception:
                failed += 1
                log.exception("Event Grid function %s raised", fn.get_function_name())
        return Response(status_code=500 if failed else 202)

    return [Route(path, webhook, methods=["POST"]) for path in
            ("/runtime/webhooks/eventgrid", "/runtime/webhooks/EventGrid")]


def build_app(app: func.FunctionApp, keys: Keys, prefix: str | None = None) -> Starlette:
    prefix = route_prefix() if prefix is None else prefix
    http_routes: list[tuple[tuple[int, int], Route]] = []
    eventgrid: dict[str, Any] = {}
    for fn in indexed_functions(app):
        bindings = json.loads(fn.get_function_json())["bindings"]
        trigger = next((b for b in bindings if b["direction"] == "IN" and b["type"].endswith("Trigger")), None)
        if trigger and trigger["type"] == "httpTrigger":
            route = _http_route(prefix, fn, trigger, keys)
            literal = len([p for p in route.path.split("/") if p and "{" not in p])
            http_routes.append(((-literal, -len(route.path)), route))
        elif trigger and trigger["type"] == "eventGridTrigger":
            _check_params(fn.get_function_name(), fn.get_user_function(), trigger["name"])
            eventgrid[fn.get_function_name().lower()] = fn
        else:
            raise ValueError(f"{fn.get_function_name()}: trigger {trigger and trigger['type']!r} is not "
                             "supported by the local host")
    routes = [r for _, r in sorted(http_routes, key=lambda x: x[0])]
    return Starlette(routes=[*routes, *_eventgrid_route(eventgrid, keys)])


def main(argv: Iterable[str] | None = None) -> None:
    import uvicorn

    from common.logs import setup_logging

    parser = argparse.ArgumentParser(description="Serve the function app locally, as the Functions host would.")
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--key", action="append", help="a function key (repeatable); random when omitted")
    parser.add_argument("--master-key", help="the master (admin) key; random when omitted")
    parser.add_argument("--eventgrid-key", help="require this key on the Event Grid webhook (default: open)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(list(argv) if argv is not None else None)
    setup_logging(args.log_level)

    from function_entry import app

    function_keys = args.key or [secrets.token_hex(24)]
    keys = Keys(frozenset(function_keys), args.master_key or secrets.token_urlsafe(24), args.eventgrid_key)
    if not args.key:
        print(f"function key: {function_keys[0]}", flush=True)
    uvicorn.run(build_app(app, keys), host=args.host, port=args.port, log_level=args.log_level.lower())


if __name__ == "__main__":
    main()
