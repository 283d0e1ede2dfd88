"""HTTP plumbing shared by the entries: bounded body reads, JSON answers, and the guard that turns every failure
into a JSON error without a stack trace (details go to the log with a reference the client can quote)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from function_app.errors import ApiError
from function_app.runtime import Runtime, get_runtime
from function_app.settings import SettingsError

log = logging.getLogger("function_app")


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def error_response(err: ApiError) -> Response:
    return json_response(err.status, err.body(), headers=err.headers)


async def read_body(req: Request, limit: int) -> bytes:
    declared = req.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "PayloadTooLarge", f"body: larger than {limit} bytes", field="body")
    chunks, size = [], 0
    async for chunk in req.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "PayloadTooLarge", f"body: larger than {limit} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def api_base(req: Request) -> str:
    """Absolute URL of the API root (`…/api`) as the client reached us; links we hand out start here. Behind a
    proxy (the Functions host forwards HTTP-streams requests to the worker) X-Forwarded-Host/-Proto win."""
    url = req.url.replace(query="")
    host = (req.headers.get("x-forwarded-host") or "").split(",")[0].strip()
    proto = (req.headers.get("x-forwarded-proto") or "").split(",")[0].strip()
    if host:
        url = url.replace(netloc=host)
    if proto in ("http", "https"):
        url = url.replace(scheme=proto)
    head, sep, _ = str(url).partition("/api/")
    return f"{head}/api" if sep else str(url).rstrip("/")


async def guarded(name: str, handler: Callable[[Runtime], Awaitable[Response]]) -> Response:
    try:
        return await handler(get_runtime())
    except ApiError as err:
        return error_response(err)
    except SettingsError as exc:
        log.error("%s: configuration error: %s", name, exc)
        return error_response(ApiError(500, "ServerMisconfigured", "the function app is not configured; see logs"))
    except Exception:
        ref = uuid.uuid4().hex
        log.exception("%s failed (ref %s)", name, ref)
        return error_response(ApiError(500, "InternalError", f"internal error (ref {ref})"))
