"""The call-state document (`{callId}/call-state.json`): pure functions that fold what we did and what ACS told us
into one JSON object.

Callbacks are delivered at least once and not necessarily in order, and the create/answer response may land after
the first callback. So every change here is idempotent (events are de-duplicated by CloudEvent id) and
order-tolerant: disconnected/failed are terminal, and the streaming status follows the newest event time.

Shape: {"schemaVersion", "callConnectionId", "correlationId", "serverCallId", "direction": "outbound"|"inbound",
"target", "source", "audioChannel", "sampleRate", "dtmf", "status": "connecting"|"connected"|"disconnected"|"failed",
"streaming": None|"requested"|"started"|"stopped"|"failed", "createdAt", "connectedAt", "disconnectedAt",
"streamingStartedAt", "streamingStoppedAt", "streamingUpdatedAt", "updatedAt", "failures": [...], "events": [...]}
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec

from common import call_state as cs
from common.manifest import now_iso, parse_iso

MAX_EVENTS = 200
EVENT_PREFIX = "Microsoft.Communication."
TERMINAL = cs.TERMINAL
HANDLED = frozenset({"CallConnected", "CallDisconnected", "CreateCallFailed", "AnswerFailed",
                     "MediaStreamingStarted", "MediaStreamingStopped", "MediaStreamingFailed"})
_STREAMING = {"MediaStreamingStarted": "started", "MediaStreamingStopped": "stopped",
              "MediaStreamingFailed": "failed"}

log = logging.getLogger(__name__)


def new_state(call_id: str) -> dict[str, Any]:
    return cs.to_builtins(cs.CallState(call_connection_id=call_id))


def checked(doc: dict[str, Any]) -> dict[str, Any]:
    """The document as the model validates it (raises ValueError naming the field): nothing else is stored."""
    return cs.to_builtins(msgspec.convert(doc, cs.CallState))


def record_request(state: dict[str, Any], **fields: Any) -> None:
    """What we asked ACS for (create/answer). Fills fields; never overrides what callbacks already set."""
    for key, value in fields.items():
        if state.get(key) is None and value is not None:
            state[key] = value[:1024] if isinstance(value, str) else value
    if state.get("streaming") is None:
        state["streaming"] = "requested"
    state["updatedAt"] = now_iso()


def record_streaming_request(state: dict[str, Any], action: str, *, by: str = "api", error: str | None = None,
                             attempt: int | None = None, heals: str | None = None, at: str | None = None) -> None:
    """A start/stop we asked ACS for: through the API (`by: api`) or to heal an outage (`by: recorder`)."""
    entry = cs.entry(cs.StreamingRequest(action=action, by=by, at=at or now_iso(),  # type: ignore[arg-type]
                                         attempt=attempt, heals=heals, error=error))
    requests = [*state.get("streamingRequests", []), entry]
    while len(requests) > MAX_EVENTS:  # a user's oldest go first: the recorder's own (a few per call, bounded by
        # healing.MAX_RESTARTS_PER_CALL) are what bounds its restarts and explains the holes it healed
        del requests[next((i for i, r in enumerate(requests) if r.get("by") != "recorder"), 0)]
    state["streamingRequests"] = requests
    state["updatedAt"] = now_iso()


def update_streaming_request(state: dict[str, Any], match: Callable[[cs.StreamingRequest], bool],
                             **changes: Any) -> bool:
    """Change the newest streaming request `match` accepts (fields by their model names); False if none does."""
    requests = state.get("streamingRequests", [])
    for i in range(len(requests) - 1, -1, -1):
        current = msgspec.convert(requests[i], cs.StreamingRequest)
        if match(current):
            requests[i] = cs.entry(msgspec.structs.replace(current, **changes))
            return True
    return False


def event_name(event: dict[str, Any]) -> str:
    kind = str(event.get("type") or "")
    return kind[len(EVENT_PREFIX):] if kind.startswith(EVENT_PREFIX) else kind


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def _text(value: Any, limit: int = 1024) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _time(value: Any) -> str:
    """An event's time as sent (ISO-8601, kept verbatim so events order by it), or now if it is not one."""
    if isinstance(value, str) and len(value) <= 40:
        try:
            parse_iso(value)
            return value
        except ValueError:
            pass
    return now_iso()


def _failure(name: str, data: dict[str, Any], at: str) -> dict[str, Any]:
    raw_info, raw_update = data.get("resultInformation"), data.get("mediaStreamingUpdate")
    info: dict[str, Any] = raw_info if isinstance(raw_info, dict) else {}
    update: dict[str, Any] = raw_update if isinstance(raw_update, dict) else {}
    return cs.entry(cs.Failure(event=name, code=_int(info.get("code")), sub_code=_int(info.get("subCode")),
                               message=_text(info.get("message")),
                               details=_text(update.get("mediaStreamingStatusDetails")), at=at))


def _before(a: str, b: str) -> bool:
    """Event times as instants: as strings, `…05Z` sorts after `…05.4Z`, and offsets differ."""
    try:
        return parse_iso(a) < parse_iso(b)
    except ValueError:
        return a < b


def _earliest(state: dict[str, Any], key: str, at: str) -> None:
    if state.get(key) is None or _before(at, state[key]):
        state[key] = at


def _latest(state: dict[str, Any], key: str, at: str) -> None:
    if state.get(key) is None or _before(state[key], at):
        state[key] = at


def apply_event(state: dict[str, Any], event: dict[str, Any]) -> bool:
    """Fold one callback CloudEvent in. Returns False when it was already applied or is not one we track."""
    name = event_name(event)
    if name not in HANDLED:
        return False
    event_id = str(event.get("id") or "")[:1024]
    if event_id and any(e.get("id") == event_id for e in state["events"]):
        return False
    data = event.get("data") or {}
    at = _time(event.get("time"))
    context = _text(data.get("operationContext"))  # ours on a restart: how healing knows ACS's answer
    state["events"] = [*state["events"], cs.entry(cs.EventRef(id=event_id, type=name, time=at,
                                                              operation_context=context))][-MAX_EVENTS:]
    for key in ("correlationId", "serverCallId"):
        if state.get(key) is None and isinstance(data.get(key), str) and data[key]:
            state[key] = data[key][:4096 if key == "serverCallId" else 1024]

    if name == "CallConnected":
        _earliest(state, "connectedAt", at)
        if state["status"] not in TERMINAL:
            state["status"] = "connected"
    elif name == "CallDisconnected":
        _earliest(state, "disconnectedAt", at)
        if state["status"] != "failed":
            state["status"] = "disconnected"
    elif name in ("CreateCallFailed", "AnswerFailed"):
        if state.get("connectedAt") is not None:
            # A call we saw connect cannot have failed to be created or answered: a replayed or forged event.
            # Kept for the record, never applied.
            state["rejectedEvents"] = [*state.get("rejectedEvents", []), cs.entry(cs.RejectedEvent(
                id=event_id, type=name, time=at, reason="the call had already connected"))][-MAX_EVENTS:]
            log.warning("%s for %s ignored: the call had already connected", name, state["callConnectionId"],
                        extra={"callConnectionId": state["callConnectionId"]})
        else:
            state["failures"].append(_failure(name, data, at))
            state["status"] = "failed"
            _earliest(state, "disconnectedAt", at)
    else:
        status = _STREAMING[name]
        if name == "MediaStreamingStarted":
            _earliest(state, "streamingStartedAt", at)
        elif name == "MediaStreamingStopped":
            _latest(state, "streamingStoppedAt", at)
        else:
            state["failures"].append(_failure(name, data, at))
        if state.get("streamingUpdatedAt") is None or not _before(at, state["streamingUpdatedAt"]):
            state["streaming"] = status
            state["streamingUpdatedAt"] = at
    state["updatedAt"] = now_iso()
    return True


def summary(state: dict[str, Any]) -> dict[str, Any]:
    """The fields a listing shows."""
    keys = ("callConnectionId", "direction", "target", "source", "status", "streaming", "audioChannel",
            "sampleRate", "createdAt", "connectedAt", "disconnectedAt")
    return {k: state.get(k) for k in keys}
