"""A small Event Grid-compatible custom topic on loopback (CloudEvents 1.0 input schema), for the local stack and tests.

It takes what `azure.eventgrid.EventGridPublisherClient(endpoint, AzureKeyCredential(key)).send([CloudEvent(...)])`
sends — `POST /api/events?api-version=…` with `Content-Type: application/cloudevents-batch+json; charset=utf-8` (an
array), or one structured event as `application/cloudevents+json` — and answers as the service does: 200 with an
empty body once every event is stored; 401 without the `aeg-sas-key` header or with a wrong key (compared in
constant time; `aeg-sas-token` and bearer tokens are not accepted here); 400 with `{"error": {"code", "message"}}`
naming the first offending event and attribute when the batch is not CloudEvents 1.0 (specversion "1.0", non-empty
id, source and type strings; RFC 3339 time; not both data and data_base64; lowercase alphanumeric attribute names);
413 over Event Grid's 1 MB per publish. A batch is stored whole or not at all.

Every accepted event is kept in memory and appended as one line to `<workdir>/events.jsonl`. With the same key:
`GET /events` lists them (and counts accepted, failed and rejected publishes); `POST /faults {"fail": n, "status":
503}` makes the next n publishes answer that status (to show a publisher retries). `GET /healthz` is open.

Over http the SDK sends an AzureKeyCredential as it would over https (azure-core's key policy does not check the
scheme); a TokenCredential is refused client-side ("Bearer token authentication is not permitted for non-TLS
protected (non-https) URLs"), and an AzureSasCredential would be sent but is refused here.

In-process (tests, the local stack): `EventGridTopic(workdir).start()`; as a process:
`python -m devstack.eventgrid_topic --port P --key K --workdir DIR`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from devstack.ports import free_port
from devstack.serve import ServerThread

MAX_PUBLISH_BYTES = 1024 * 1024  # Event Grid: 1 MB per publish (one event or a batch)
BATCH_TYPE = "application/cloudevents-batch+json"
SINGLE_TYPE = "application/cloudevents+json"
EVENTS_FILE = "events.jsonl"
_ATTRIBUTE = re.compile(r"^[a-z0-9]{1,20}$")
_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)$")


class InvalidEvent(ValueError):
    pass


def validate(event: Any, index: int) -> None:
    """The CloudEvents 1.0 rules (JSON format) the topic enforces; InvalidEvent says which one broke."""
    where = f"event {index}"
    if not isinstance(event, dict):
        raise InvalidEvent(f"{where}: a CloudEvent must be a JSON object")
    if event.get("specversion") != "1.0":
        raise InvalidEvent(f"{where}: 'specversion' must be \"1.0\" (got {event.get('specversion')!r})")
    for required in ("id", "source", "type"):
        value = event.get(required)
        if not isinstance(value, str) or not value:
            raise InvalidEvent(f"{where}: required attribute {required!r} must be a non-empty string")
    for name in event:
        if name != "data_base64" and not _ATTRIBUTE.match(name):
            raise InvalidEvent(f"{where}: attribute name {name!r} must be 1-20 lowercase letters or digits")
    time_value = event.get("time")
    if time_value is not None and not (isinstance(time_value, str) and _RFC3339.match(time_value)
                                       and _parses(time_value)):
        raise InvalidEvent(f"{where}: 'time' must be an RFC 3339 timestamp (got {time_value!r})")
    for optional in ("subject", "datacontenttype", "dataschema"):
        if optional in event and not isinstance(event[optional], str):
            raise InvalidEvent(f"{where}: {optional!r} must be a string")
    if "data" in event and "data_base64" in event:
        raise InvalidEvent(f"{where}: 'data' and 'data_base64' are mutually exclusive")
    if "data_base64" in event:
        try:
            base64.b64decode(event["data_base64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise InvalidEvent(f"{where}: 'data_base64' is not base64") from None


def _parses(value: str) -> bool:
    m = re.match(r"^(.*?)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)$", value)
    if not m:
        return False
    base, fraction, zone = m.groups()
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:
        datetime.fromisoformat(f"{base.replace('t', 'T')}.{(fraction or '0')[:6].ljust(6, '0')}{zone}")
    except ValueError:
        return False
    return True


@dataclass
class TopicState:
    key: str
    workdir: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    accepted: int = 0
    failed: int = 0
    rejected: int = 0
    fail_next: int = 0
    fail_status: int = 503
    lock: threading.Lock = field(default_factory=threading.Lock)

    def authorized(self, request: Request) -> bool:
        presented = request.headers.get("aeg-sas-key")
        return presented is not None and secrets.compare_digest(presented.encode(), self.key.encode())


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _unauthorized() -> JSONResponse:
    return _error(401, "Unauthorized", "the request needs the topic's access key in the aeg-sas-key header")


def create_app(key: str, workdir: Path) -> Starlette:
    workdir.mkdir(parents=True, exist_ok=True)
    state = TopicState(key, workdir)

    async def publish(request: Request) -> Response:
        if not state.authorized(request):
            return _unauthorized()
        if not request.query_params.get("api-version"):
            return _error(400, "BadRequest", "the api-version query parameter is required")
        with state.lock:
            if state.fail_next > 0:
                state.fail_next -= 1
                state.failed += 1
                return _error(state.fail_status, "ServiceUnavailable", "injected fault (POST /faults)")
        try:
            events = _parse(request, await request.body())
        except _Refused as e:
            with state.lock:
                state.rejected += 1
            return _error(e.status, e.code, str(e))
        lines = "".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n" for e in events)
        with state.lock:
            with open(state.workdir / EVENTS_FILE, "a", encoding="utf-8") as f:
                f.write(lines)
            state.events.extend(events)
            state.accepted += 1
        return Response(status_code=200)

    async def list_events(request: Request) -> Response:
        if not state.authorized(request):
            return _unauthorized()
        with state.lock:
            return JSONResponse({"events": list(state.events), "publishes": {
                "accepted": state.accepted, "failed": state.failed, "rejected": state.rejected}})

    async def faults(request: Request) -> Response:
        if not state.authorized(request):
            return _unauthorized()
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "BadRequest", 'the body must be JSON: {"fail": n, "status": 503}')
        fail, status = (body.get("fail"), body.get("status", 503)) if isinstance(body, dict) else (None, None)
        if not (isinstance(fail, int) and not isinstance(fail, bool) and fail >= 0
                and isinstance(status, int) and (status == 429 or 500 <= status <= 599)):
            return _error(400, "BadRequest", '"fail" must be an integer >= 0 and "status" 429 or 5xx')
        with state.lock:
            state.fail_next, state.fail_status = fail, status
        return JSONResponse({"fail": fail, "status": status})

    async def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok")

    app = Starlette(routes=[
        Route("/api/events", publish, methods=["POST"]),
        Route("/events", list_events, methods=["GET"]),
        Route("/faults", faults, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ])
    app.state.topic = state
    return app


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def _parse(request: Request, body: bytes) -> list[dict[str, Any]]:
    if len(body) > MAX_PUBLISH_BYTES:
        raise _Refused(413, "RequestEntityTooLarge", f"a publish may carry at most {MAX_PUBLISH_BYTES} bytes")
    media, *params = [p.strip() for p in request.headers.get("content-type", "").split(";")]
    charset = next((p.split("=", 1)[1].strip().strip('"').lower() for p in params if p.lower().startswith(
        "charset=")), "utf-8")
    if media.lower() not in (BATCH_TYPE, SINGLE_TYPE):
        raise _Refused(400, "BadRequest", f"this topic takes CloudEvents 1.0: Content-Type {BATCH_TYPE} (an array) "
                       f"or {SINGLE_TYPE} (one event), not {media or 'none'!r}")
    if charset not in ("utf-8", "utf8"):
        raise _Refused(400, "BadRequest", f"charset {charset!r} is not supported (utf-8)")
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _Refused(400, "BadRequest", "the body is not valid JSON") from None
    if media.lower() == BATCH_TYPE:
        if not isinstance(payload, list) or not payload:
            raise _Refused(400, "BadRequest", f"{BATCH_TYPE} needs a non-empty JSON array of events")
        events = payload
    else:
        events = [payload]
    try:
        for i, event in enumerate(events):
            validate(event, i)
    except InvalidEvent as e:
        raise _Refused(400, "BadRequest", str(e)) from None
    return events


class EventGridTopic:
    """The topic in a background thread: `endpoint` and `key` are what the publisher is given."""

    def __init__(self, workdir: str | Path | None = None, key: str | None = None, port: int | None = None):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="eventgrid-"))
        self.key = key or secrets.token_hex(32)
        self.app = create_app(self.key, self.workdir)
        self.state: TopicState = self.app.state.topic
        self._thread = ServerThread(self.app, port=port)
        self.port = self._thread.port

    @property
    def url(self) -> str:
        return self._thread.url

    @property
    def endpoint(self) -> str:
        """What `EventGridPublisherClient` takes (and RECORDING_EVENTS_ENDPOINT holds)."""
        return f"{self.url}/api/events"

    @property
    def events_file(self) -> Path:
        return self.workdir / EVENTS_FILE

    def start(self) -> EventGridTopic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()

    def __enter__(self) -> EventGridTopic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def events(self, type: str | None = None) -> list[dict[str, Any]]:
        with self.state.lock:
            return [e for e in self.state.events if type is None or e.get("type") == type]

    def wait_for_events(self, count: int = 1, *, type: str | None = None,
                        timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(type)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(found)} of {count} events{f' of type {type}' if type else ''} after "
                                   f"{timeout}s")
            time.sleep(0.05)

    def fail_next(self, count: int, status: int = 503) -> None:
        with self.state.lock:
            self.state.fail_next, self.state.fail_status = count, status

    def client(self, **kwargs: Any) -> Any:
        """A real `EventGridPublisherClient` for this topic, with its key."""
        from azure.core.credentials import AzureKeyCredential
        from azure.eventgrid import EventGridPublisherClient

        return EventGridPublisherClient(self.endpoint, AzureKeyCredential(self.key), **kwargs)


def main(argv: Iterable[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="A local Event Grid custom topic (CloudEvents 1.0 input schema).")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--key", help="the topic's access key; random (printed) when omitted")
    parser.add_argument("--workdir", help="where events.jsonl goes (default: a new temporary folder)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    key = args.key or secrets.token_hex(32)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="eventgrid-"))
    port = args.port or free_port()
    if not args.key:
        print(f"topic key: {key}", flush=True)
    print(f"endpoint: http://{args.host}:{port}/api/events  events: {workdir / EVENTS_FILE}", flush=True)
    uvicorn.run(create_app(key, workdir), host=args.host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
