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
- `queueTrigger` (devstack/host_triggers.py): polls the binding's queue (`%setting%` resolved) through the
  binding's connection — the app setting `<connection>` (or `AzureWebJobs<connection>`; none named:
  AzureWebJobsStorage) holding a connection string — and creates the queue if it is missing. host.json
  `extensions.queues` is read with the real defaults: `messageEncoding` base64 (default) or none (a message that is
  not base64 goes straight to the poison queue, as with storage extension 5.x); messages are dequeued for 10 min
  (renewed while the function runs) in batches of `batchSize` (16), a new batch once at most `newBatchThreshold`
  (batchSize/2) are running; the function gets an `azure.functions.QueueMessage` (id, decoded body,
  dequeue_count, insertion/expiration/next-visible times, pop_receipt); success deletes the message, an exception
  makes it visible again after `visibilityTimeout` (0), and the failure of the `maxDequeueCount`-th (5) attempt
  moves it to `<queue>-poison` (as does a dequeue count already above it). An empty queue is polled with random
  exponential back-off from 100 ms up to `maxPollingInterval` (1 min: the Azure default, not Core Tools' local
  2 s), back to 100 ms after a poll that found messages. A missing connection setting is logged as the listener
  being unable to start; the rest of the host runs on.
- `timerTrigger` (devstack/ncrontab.py): six-field NCRONTAB (`*`, `*/n`, `a-b`, `a-b/n`, `a,b`, numbers, month
  and day names; day-of-month AND day-of-week, as NCrontab) or a TimeSpan `hh:mm:ss`, in UTC; `runOnStartup`
  honoured; invocations of one timer never overlap (the next occurrence is computed when one ends); the function
  gets a `func.TimerRequest` whose `past_due` says it ran more than 1 s late. `--disable-timers` keeps them from
  firing on their own (the admin endpoint still runs them).
- `POST /admin/functions/{name}` with the master key (`x-functions-key` or `?code=`) runs a non-HTTP function once
  in the background and answers 202, as the real host does: body `{"input": "..."}`; a queue function gets the
  input as the message body (a fresh id, dequeue_count 0, no pop receipt: it never was on a queue), a timer
  function a TimerRequest with past_due false (input ignored). Without the master key 401 (Core Tools does not
  ask for it locally; this host does, as Azure), an unknown function 404, an HTTP function or a bad body 400.
- Functions typed with HTTP streams (FastAPI/Starlette `Request`) get the Starlette request and may return any
  Starlette response, streaming ones included; classic `func.HttpRequest` functions get a converted request.
- Sync functions of the non-HTTP triggers run in a thread pool sized as the Python worker's
  (PYTHON_THREADPOOL_THREAD_COUNT, else min(32, CPUs + 4)); async ones on the event loop.

What it does not emulate: the worker process and gRPC, other trigger or binding types (they are refused at start),
`context` parameters, host.json settings other than routePrefix and `extensions.queues`, identity-based
connections (`<connection>__queueServiceUri` with DefaultAzureCredential: refused with a log line), dynamic
concurrency, the queue listener's scale-out and its blob-lease singleton per queue (two local hosts on one queue
both poll it), timer singleton locks, `useMonitor` schedule status persistence (so a missed occurrence while the
host was down is never run late), WEBSITE_TIME_ZONE, `AzureWebJobs.<name>.Disabled`, key management APIs and named
keys per function, Event Grid's system key name (any key given with --eventgrid-key works; without one the webhook
is open, as under `func start`), request size limits, function timeouts, retries policies, Application Insights,
and the real host's exact answers to unmatched methods (Starlette's 405 here) and malformed requests. Note that
`func start` does not enforce keys at all, while this host does, so key mistakes show up locally. Unverified: the
metadata the real host gives an admin-run queue function, and whether its listener creates a missing trigger queue
(this one does).

Run: `python -m devstack.functions_host --port 7071 [--key K] [--master-key M] [--disable-timers]`; the app reads its
own settings from the environment, as it does in Azure.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import re
import secrets
import typing
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
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

from devstack.host_triggers import (
    QueueFunction,
    TimerFunction,
    Triggers,
    queue_function,
    queue_message,
    queue_options,
    timer_function,
)

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


def _admin_route(functions: dict[str, tuple[str, Any]], keys: Keys, triggers: Triggers) -> Route:
    """`POST /admin/functions/{name}`: run a non-HTTP function once (master key only), answered 202 at once."""

    async def run(request: Request) -> Response:
        presented = _presented_key(request)
        if not presented or not secrets.compare_digest(presented, keys.master_key):
            return Response(status_code=401)
        entry = functions.get(request.path_params["name"].lower())
        if entry is None:
            return JSONResponse({"error": f"no function {request.path_params['name']!r}"}, status_code=404)
        kind, fn = entry
        body = await request.body()
        try:
            payload = json.loads(body) if body.strip() else {}
        except ValueError:
            return JSONResponse({"error": "the body must be JSON: {\"input\": \"...\"}"}, status_code=400)
        if not isinstance(payload, dict):
            return JSONResponse({"error": "the body must be a JSON object: {\"input\": \"...\"}"}, status_code=400)
        raw = payload.get("input")
        text = "" if raw is None else raw if isinstance(raw, str) else json.dumps(raw)
        if isinstance(fn, QueueFunction):
            arg: Any = queue_message(id=str(uuid.uuid4()), body=text.encode("utf-8"), dequeue_count=0)
        elif isinstance(fn, TimerFunction):
            arg = Triggers.timer_request(False, None, None)
        else:
            return JSONResponse({"error": f"{kind} functions are not run through the admin endpoint here"},
                                status_code=400)
        triggers.spawn(fn.name, fn.user_function, {fn.param: arg})
        return Response(status_code=202)

    return Route("/admin/functions/{name}", run, methods=["POST"], name="admin")


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


def build_app(app: func.FunctionApp, keys: Keys, prefix: str | None = None, *, host_json: Path | None = None,
              env: Mapping[str, str] | None = None, timers: bool = True, queues: bool = True) -> Starlette:
    """The host for `app`: HTTP routes, the Event Grid webhook, the admin endpoint, and (in the app's lifespan) the
    queue listeners and timers. `env` holds the app settings (default: os.environ); `timers=False` keeps timers
    from firing on their own, `queues=False` starts no queue listener."""
    host_json = REPO / "host.json" if host_json is None else host_json
    prefix = route_prefix(host_json) if prefix is None else prefix
    settings = os.environ if env is None else env
    http_routes: list[tuple[tuple[int, int], Route]] = []
    eventgrid: dict[str, Any] = {}
    by_name: dict[str, tuple[str, Any]] = {}
    queue_fns: list[QueueFunction] = []
    timer_fns: list[TimerFunction] = []
    for fn in indexed_functions(app):
        name, user_function = fn.get_function_name(), fn.get_user_function()
        bindings = json.loads(fn.get_function_json())["bindings"]
        trigger = next((b for b in bindings if b["direction"] == "IN" and b["type"].endswith("Trigger")), None)
        kind = trigger and trigger["type"]
        if trigger and kind == "httpTrigger":
            route = _http_route(prefix, fn, trigger, keys)
            literal = len([p for p in route.path.split("/") if p and "{" not in p])
            http_routes.append(((-literal, -len(route.path)), route))
            by_name[name.lower()] = (kind, None)
        elif trigger and kind == "eventGridTrigger":
            _check_params(name, user_function, trigger["name"])
            eventgrid[name.lower()] = fn
            by_name[name.lower()] = (kind, None)
        elif trigger and kind == "queueTrigger":
            _check_params(name, user_function, trigger["name"])
            queue_fns.append(queue_function(name, user_function, trigger, settings))
            by_name[name.lower()] = (kind, queue_fns[-1])
        elif trigger and kind == "timerTrigger":
            _check_params(name, user_function, trigger["name"])
            timer_fns.append(timer_function(name, user_function, trigger, settings))
            by_name[name.lower()] = (kind, timer_fns[-1])
        else:
            raise ValueError(f"{name}: trigger {kind!r} is not supported by the local host")
    triggers = Triggers(queue_fns, timer_fns, queue_options(host_json), settings, run_timers=timers,
                        run_queues=queues)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await triggers.start()
        try:
            yield
        finally:
            await triggers.stop()

    routes = [r for _, r in sorted(http_routes, key=lambda x: x[0])]
    served = Starlette(routes=[_admin_route(by_name, keys, triggers), *routes, *_eventgrid_route(eventgrid, keys)],
                       lifespan=lifespan)
    served.state.triggers = triggers
    return served


def main(argv: Iterable[str] | None = None) -> None:
    import uvicorn

    from common.logs import setup_logging

    parser = argparse.ArgumentParser(description="Serve the function app locally, as the Functions host would.")
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--key", action="append", help="a function key (repeatable); random when omitted")
    parser.add_argument("--master-key", help="the master (admin) key; random when omitted")
    parser.add_argument("--eventgrid-key", help="require this key on the Event Grid webhook (default: open)")
    parser.add_argument("--disable-timers", action="store_true",
                        help="timer functions do not fire on their own (POST /admin/functions/{name} still runs them)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(list(argv) if argv is not None else None)
    setup_logging(args.log_level)

    from function_entry import app

    function_keys = args.key or [secrets.token_hex(24)]
    keys = Keys(frozenset(function_keys), args.master_key or secrets.token_urlsafe(24), args.eventgrid_key)
    if not args.key:
        print(f"function key: {function_keys[0]}", flush=True)
    uvicorn.run(build_app(app, keys, timers=not args.disable_timers), host=args.host, port=args.port,
                log_level=args.log_level.lower())


if __name__ == "__main__":
    main()
