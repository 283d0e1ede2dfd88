"""Input validation for the HTTP API. Every rejection is a 400 that names the offending field, because placing
calls costs money and a silently-ignored typo ("audiochannel") would record the wrong thing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from common.layout import is_valid_call_id
from common.transport import CHANNELS
from function_app.errors import ApiError, bad_request
from function_app.settings import E164_RE, SAMPLE_RATES, Settings

ACS_USER_RE = re.compile(r"^8:acs:[A-Za-z0-9_-]{1,200}$")
MAX_CONTEXT = 512
_CREATE_FIELDS = ("target", "sourceCallerId", "audioChannel", "sampleRate", "dtmf", "operationContext")


@dataclass(frozen=True)
class CreateCall:
    """A `POST /api/calls` body, validated, allowed and resolved against the settings' defaults: what to ask ACS."""

    target: str
    source_caller_id: str | None  # the caller id to send: None for an ACS user called without an explicit one
    audio_channel: str
    sample_rate: int
    dtmf: bool
    operation_context: str | None


def json_object(raw: bytes, *, required: bool = True) -> dict[str, Any]:
    if not raw.strip():
        if required:
            raise bad_request("body", "a JSON object is required")
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("body", "is not valid JSON") from None
    if not isinstance(value, dict):
        raise bad_request("body", "must be a JSON object")
    return value


def _optional_str(body: dict[str, Any], field: str, max_len: int) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise bad_request(field, f"must be a non-empty string of at most {max_len} characters")
    return value


def parse_target(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad_request("target", "is required: an E.164 number (+15551234567) or an ACS user id (8:acs:…)")
    value = value.strip()
    if value.startswith("4:+"):
        value = value[2:]
    if E164_RE.fullmatch(value) or ACS_USER_RE.fullmatch(value):
        return str(value)
    raise bad_request("target", "must be an E.164 number (+15551234567) or an ACS user id (8:acs:…)")


def parse_create_call(body: dict[str, Any], settings: Settings) -> CreateCall:
    unknown = sorted(set(body) - set(_CREATE_FIELDS))
    if unknown:
        raise bad_request(unknown[0], f"unknown field (allowed: {', '.join(_CREATE_FIELDS)})")
    target = parse_target(body.get("target"))

    source = body.get("sourceCallerId")
    if source is not None and (not isinstance(source, str) or not E164_RE.fullmatch(source)):
        raise bad_request("sourceCallerId", "must be an E.164 number like +15551234567")
    if target.startswith("+"):  # the default caller id is for phone targets only
        source = source or settings.source_caller_id
        if not source:
            raise bad_request("sourceCallerId",
                              "is required to call a phone number (no ACS_SOURCE_CALLER_ID default)")

    channel = body.get("audioChannel", settings.default_audio_channel)
    if channel not in CHANNELS:
        raise bad_request("audioChannel", "must be 'mixed' or 'unmixed'")
    rate = body.get("sampleRate", settings.default_sample_rate)
    if isinstance(rate, bool) or rate not in SAMPLE_RATES:
        raise bad_request("sampleRate", "must be 16000 or 24000")
    dtmf = body.get("dtmf", False)
    if not isinstance(dtmf, bool):
        raise bad_request("dtmf", "must be true or false")
    context = _optional_str(body, "operationContext", MAX_CONTEXT)
    check_allowed(target, settings)
    return CreateCall(target, source, channel, int(rate), dtmf, context)


def check_allowed(target: str, settings: Settings) -> None:
    """ALLOWED_TARGETS: `+…` entries are prefixes of phone numbers, anything else must match exactly."""
    if not settings.allowed_targets:
        return
    for entry in settings.allowed_targets:
        if (entry.startswith("+") and target.startswith(entry)) or entry == target:
            return
    raise ApiError(403, "TargetNotAllowed", "target: not in the allowed list (ALLOWED_TARGETS)", field="target")


def parse_call_id(value: str | None) -> str:
    if not value or not is_valid_call_id(value):
        raise bad_request("callConnectionId", "is not a valid call connection id")
    return value


def parse_limit(value: str | None, default: int = 20, maximum: int = 100) -> int:
    if value is None or value == "":
        return default
    # isascii: str.isdigit() accepts "²" and other digits int() refuses
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= maximum:
        raise bad_request("limit", f"must be an integer in 1..{maximum}")
    return int(value)


def parse_count(value: str | None, field: str, maximum: int = 10**9) -> int:
    """A non-negative integer query parameter; absent means 0."""
    if value is None or value == "":
        return 0
    if not (value.isascii() and value.isdigit()) or int(value) > maximum:
        raise bad_request(field, f"must be an integer in 0..{maximum}")
    return int(value)


_DECIMAL = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")
MIN_POINTS_PER_SECOND = 0.01  # a point per 100 s: an hour in 36 points; finer bounds the work of one answer


def parse_points_per_second(value: str | None, maximum: float) -> float:
    """The waveform resolution a client asks for: a plain decimal in [MIN_POINTS_PER_SECOND, maximum]; absent
    means `maximum`."""
    if value is None or value == "":
        return maximum
    if not _DECIMAL.fullmatch(value) or not MIN_POINTS_PER_SECOND <= float(value) <= maximum:
        raise bad_request("pointsPerSecond", f"must be a number from {MIN_POINTS_PER_SECOND:g} to {maximum:g}")
    return float(value)


def parse_range(header: str | None, length: int) -> tuple[int, int] | None:
    """One byte range of an HTTP `Range` header (RFC 9110 §14.2) over a body of `length` bytes -> (first, last),
    inclusive; None when the header is absent, not a single bytes range, or malformed (the whole body is
    answered, as the RFC allows). Raises ApiError 416 when the range lies wholly past the end."""
    if not header or not header.isascii():
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = (p.strip() for p in spec.strip().partition("-"))
    if not dash or not (first_s.isdigit() or first_s == "") or not (last_s.isdigit() or last_s == ""):
        return None
    # a number too long for int() (Python refuses > 4300 digits) is past any end anyway
    first_s, last_s = (p if len(p) <= 18 else "9" * 18 for p in (first_s, last_s))
    if first_s == "":
        if last_s == "" or int(last_s) == 0:
            return None
        return max(0, length - int(last_s)), length - 1
    first = int(first_s)
    last = int(last_s) if last_s else None
    if last is not None and last < first:
        return None
    if first >= length:
        raise ApiError(416, "RangeNotSatisfiable", f"Range: the audio is {length} bytes so far", field="Range",
                       headers={"Content-Range": f"bytes */{length}"})
    return first, length - 1 if last is None else min(last, length - 1)


def parse_operation_context(body: dict[str, Any]) -> str | None:
    unknown = sorted(set(body) - {"operationContext"})
    if unknown:
        raise bad_request(unknown[0], "unknown field (allowed: operationContext)")
    return _optional_str(body, "operationContext", MAX_CONTEXT)
