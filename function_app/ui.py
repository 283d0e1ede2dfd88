"""The recordings page: plain HTML, CSS and JavaScript from `function_app/ui/`, served by the function app itself.

The page and its assets are served anonymously — they are code and hold no data — and every request the page
makes for data carries the function key the person enters once (header `x-functions-key`, kept in the tab's
sessionStorage, never in a URL). The answers are locked down: a Content-Security-Policy that allows only this
origin (plus the recordings storage account, which serves the finished files' short-lived read URLs), no
framing, no referrer.
"""

from __future__ import annotations

import hashlib
import html
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from starlette.responses import Response

from function_app.runtime import Runtime

log = logging.getLogger(__name__)

_DIR = Path(__file__).resolve().parent / "ui"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".svg": "image/svg+xml"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def _load() -> dict[str, Asset]:
    out = {}
    for path in sorted(_DIR.iterdir()):
        media = _TYPES.get(path.suffix)
        if media is not None:
            body = path.read_bytes()
            out[path.name] = Asset(body, media, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return out


ASSETS = _load()  # a fixed set, read once: no request names a file on disk
_PAGE = (_DIR / "index.html").read_text("utf-8")
_SECURITY = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
             "Cache-Control": "no-cache"}


def api_root(page_path: str) -> str:
    """The API's path prefix (`/api`) from the page's path (`/api/ui`), whatever routePrefix says."""
    path = page_path.rstrip("/")
    return path[: -len("/ui")] if path.lower().endswith("/ui") else ""  # the host matches routes in any case


def storage_url(runtime: Callable[[], Runtime]) -> str:
    """The recordings container's URL (the finished files' read URLs point there), or "" when the app's settings
    are incomplete: the page loads anyway and its API requests say what is wrong."""
    try:
        return str(runtime().store.container.url)
    except Exception as exc:  # SettingsError, or a storage client that cannot be built
        log.warning("recordings page: no storage URL for the Content-Security-Policy (%s)", exc)
        return ""


def csp(storage_url: str) -> str:
    parts = urlsplit(storage_url)
    storage = f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else ""
    media = " ".join(p for p in ("'self'", "blob:", storage) if p)
    return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self'; media-src {media}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def page(page_path: str, storage_url: str) -> Response:
    body = _PAGE.replace("{{api}}", html.escape(api_root(page_path), quote=True))
    return Response(body, media_type="text/html; charset=utf-8",
                    headers=_SECURITY | {"Content-Security-Policy": csp(storage_url)})


def asset(name: str, if_none_match: str | None) -> Response:
    found = ASSETS.get(name)
    if found is None:
        return Response("not found", status_code=404, media_type="text/plain")
    headers = _SECURITY | {"ETag": found.etag}
    if if_none_match and found.etag in (t.strip() for t in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)
