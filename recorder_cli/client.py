"""A thin HTTP client for the control-plane API. The function key travels in the `x-functions-key` header (not in
the URL, which proxies and shells tend to log)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx


class ApiFailure(Exception):
    """The API answered with an error; `message` is what a person should read."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def api_root(url: str) -> str:
    """Accepts https://app.azurewebsites.net, …/api or …/api/ and returns …/api."""
    url = url.rstrip("/")
    return url if url.endswith("/api") else f"{url}/api"


def _failure(resp: httpx.Response) -> ApiFailure:
    if resp.status_code == 401 and not resp.content:
        return ApiFailure(401, "unauthorized: check the function key (--key / ACSREC_KEY)")
    try:
        err = resp.json()["error"]
    except (ValueError, KeyError, TypeError):
        return ApiFailure(resp.status_code, f"HTTP {resp.status_code}: {resp.text[:200]}")
    parts = [f"{err.get('code', 'Error')}: {err.get('message', '')}"]
    if err.get("acsCode"):
        parts.append(f"(ACS {err.get('acsStatus')} {err['acsCode']})")
    return ApiFailure(resp.status_code, " ".join(parts))


class RecorderClient:
    def __init__(self, url: str, key: str | None, timeout: float = 60.0, transport: Any = None):
        headers = {"x-functions-key": key} if key else {}
        self._http = httpx.Client(base_url=api_root(url), headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiFailure(0, f"cannot reach {self._http.base_url}: {exc}") from None
        if resp.status_code >= 400:
            raise _failure(resp)
        return resp.json() if resp.content else None

    def place_call(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/calls", json=body)

    def hang_up(self, call_id: str) -> None:
        self._json("DELETE", f"/calls/{quote(call_id, safe='')}")

    def streaming(self, call_id: str, action: str) -> dict[str, Any]:
        return self._json("POST", f"/calls/{quote(call_id, safe='')}/streaming/{action}")

    def recordings(self, limit: int, page_token: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if page_token:
            params["pageToken"] = page_token
        return self._json("GET", "/recordings", params=params)

    def recording(self, call_id: str) -> dict[str, Any]:
        return self._json("GET", f"/recordings/{quote(call_id, safe='')}")

    @contextmanager
    def audio(self, call_id: str, participant: str | None) -> Iterator[tuple[int | None, str | None,
                                                                             Iterator[bytes]]]:
        """(Content-Length, server's file name, byte iterator) of the stitched WAV."""
        params = {"participant": participant} if participant else None
        try:
            with self._http.stream("GET", f"/recordings/{quote(call_id, safe='')}/audio", params=params) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _failure(resp)
                length = resp.headers.get("content-length")
                disposition = resp.headers.get("content-disposition", "")
                name = disposition.split('filename="', 1)[1].rstrip('"') if 'filename="' in disposition else None
                yield (int(length) if length else None), name, resp.iter_bytes(64 * 1024)
        except httpx.HTTPError as exc:
            raise ApiFailure(0, f"download failed: {exc}") from None


def blob_bytes(url: str, timeout: float = 60.0) -> Iterator[bytes]:
    """A blob by its short-lived read URL. A client of its own: the function key must never reach storage."""
    try:
        with httpx.Client(timeout=timeout) as http, http.stream("GET", url) as resp:
            if resp.status_code >= 400:
                resp.read()
                raise ApiFailure(resp.status_code, f"storage answered HTTP {resp.status_code} for a read URL "
                                 "(expired? run the command again)")
            yield from resp.iter_bytes(256 * 1024)
    except httpx.HTTPError as exc:
        raise ApiFailure(0, f"download failed: {exc}") from None


def save_stream(chunks: Iterator[bytes], target: Path, progress: Callable[[int], None]) -> int:
    """Write to a temporary name and rename at the end, so an interrupted download never looks complete."""
    partial = target.with_name(target.name + ".part")
    written = 0
    with partial.open("wb") as out:
        for chunk in chunks:
            out.write(chunk)
            written += len(chunk)
            progress(len(chunk))
    partial.replace(target)
    return written
