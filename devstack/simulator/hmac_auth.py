"""Verify the SDK's HMAC-SHA256 request signature exactly as ACS does (docs/acs-protocol.md#hmac-request-signing).

    Authorization: HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=<base64>
    string to sign = VERB \\n path_and_query \\n <values of SignedHeaders joined by ';'>

path_and_query is rebuilt from the raw request target (ASGI raw_path + query_string), never the decoded path;
host is the Host header; x-ms-content-sha256 must equal the hash of the body actually received; x-ms-date must be
within the allowed skew (a captured request cannot be replayed later).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

SCHEME = "HMAC-SHA256"


class HmacError(Exception):
    """Why a request is not authentic; becomes a 401 with this message."""


def content_hash(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def path_and_query(raw_path: bytes, query_string: bytes) -> str:
    pq = raw_path.decode("latin-1")
    if query_string:
        pq += "?" + query_string.decode("latin-1")
    return pq


def parse_authorization(value: str | None) -> tuple[list[str], str]:
    if not value:
        raise HmacError("missing Authorization header")
    scheme, _, params = value.partition(" ")
    if scheme != SCHEME:
        raise HmacError(f"Authorization scheme must be {SCHEME}")
    parts = dict(p.split("=", 1) for p in params.strip().split("&") if "=" in p)
    signed = parts.get("SignedHeaders")
    signature = parts.get("Signature")
    if not signed or not signature:
        raise HmacError("Authorization needs SignedHeaders and Signature")
    return [h.strip().lower() for h in signed.split(";")], signature


def verify(*, method: str, raw_path: bytes, query_string: bytes, headers: Mapping[str, str], body: bytes,
           secret: bytes, max_skew_s: float, now: datetime | None = None) -> None:
    """Raise HmacError unless the request carries a valid, fresh signature over exactly these bytes."""
    signed_headers, signature = parse_authorization(headers.get("authorization"))
    for required in ("x-ms-date", "host", "x-ms-content-sha256"):
        if required not in signed_headers:
            raise HmacError(f"SignedHeaders must include {required}")
    received_hash = headers.get("x-ms-content-sha256")
    if received_hash is None or not hmac.compare_digest(received_hash, content_hash(body)):
        raise HmacError("x-ms-content-sha256 does not match the request body")
    date = headers.get("x-ms-date")
    try:
        sent = parsedate_to_datetime(date) if date else None
    except (TypeError, ValueError):
        sent = None
    if sent is None:
        raise HmacError("missing or malformed x-ms-date")
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=UTC)
    skew = abs(((now or datetime.now(UTC)) - sent).total_seconds())
    if skew > max_skew_s:
        raise HmacError(f"x-ms-date is {skew:.0f}s away from the service clock (max {max_skew_s:.0f}s)")
    values = []
    for name in signed_headers:
        value = headers.get(name)
        if value is None:
            raise HmacError(f"signed header {name} is missing")
        values.append(value)
    string_to_sign = f"{method.upper()}\n{path_and_query(raw_path, query_string)}\n{';'.join(values)}"
    expected = base64.b64encode(hmac.new(secret, string_to_sign.encode("utf-8"), hashlib.sha256).digest())
    if not hmac.compare_digest(expected.decode("ascii"), signature):
        raise HmacError("signature mismatch")
