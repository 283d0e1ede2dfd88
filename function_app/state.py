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
from typing import Any

from common.manifest import now_iso

SCHEMA_VERSION = 1
MAX_EVENTS = 200
EVENT_PREFIX = "Microsoft.Communication."
TERMINAL = ("disconnected", "failed")
HANDLED = frozenset({"CallConnected", "CallDisconnected", "CreateCallFailed", "AnswerFailed",
                     "MediaStreamingStarted", "MediaStreamingStopped", "MediaStreamingFailed"})
_STREAMING = {"MediaStreamingStarted": "started", "MediaStreamingStopped": "stopped",
              "MediaStreamingFailed": "failed"}

log = logging.getLogger(__name__)


def new_state(call_id: str) -> dict[str, Any]:
    return {
        "schemaVersion": SCHEMA_VERSION, "callConnectionId": call_id, "correlationId": None, "serverCallId": None,
        "direction": None, "target": None, "source": None, "audioChannel": None, "sampleRate": None,
        "dtmf": None, "status": "connecting", "streaming": None, "createdAt": None, "connectedAt": None,
        "disconnectedAt": None, "streamingStartedAt": None, "streamingStoppedAt": None,
        "streamingUpdatedAt": None, "updatedAt": None, "failures": [], "events": [],
    }


def record_request(state: dict[str, Any], **fields: Any) -> None:
    """What we asked ACS for (create/answer). Fills fields; never overrides what callbacks already set."""
    for key, value in fields.items():
        if state.get(key) is None and value is not None:
            state[key] = value
    if state.get("streaming") is None:
        state["streaming"] = "requested"
    state["updatedAt"] = now_iso()


def event_name(event: dict[str, Any]) -> str:
    kind = str(event.get("type") or "")
    return kind[len(EVENT_PREFIX):] if kind.startswith(EVENT_PREFIX) else kind


def _failure(name: str, data: dict[str, Any], at: str) -> dict[str, Any]:
    info = data.get("resultInformation") or {}
    update = data.get("mediaStreamingUpdate") or {}
    return {"event": name, "code": info.get("code"), "subCode": info.get("subCode"),
            "message": info.get("message"), "details": update.get("mediaStreamingStatusDetails"), "at": at}


def _earliest(state: dict[str, Any], key: str, at: str) -> None:
    if state.get(key) is None or at < state[key]:
        state[key] = at


def _latest(state: dict[str, Any], key: str, at: str) -> None:
    if state.get(key) is None or at > state[key]:
        state[key] = at


def apply_event(state: dict[str, Any], event: dict[str, Any]) -> bool:
    """Fold one callback CloudEvent in. Returns False when it was already applied or is not one we track."""
    name = event_name(event)
    if name not in HANDLED:
        return False
    event_id = str(event.get("id") or "")
    if event_id and any(e.get("id") == event_id for e in state["events"]):
        return False
    data = event.get("data") or {}
    at = str(event.get("time") or now_iso())
    state["events"] = [*state["events"], {"id": event_id, "type": name, "time": at}][-MAX_EVENTS:]
    for key in ("correlationId", "serverCallId"):
        if state.get(key) is None and data.get(key):
            state[key] = data[key]

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
            state["rejectedEvents"] = [*state.get("rejectedEvents", []), {
                "id": event_id, "type": name, "time": at, "reason": "the call had already connected"}][-MAX_EVENTS:]
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
        if (state.get("streamingUpdatedAt") or "") <= at:
            state["streaming"] = status
            state["streamingUpdatedAt"] = at
    state["updatedAt"] = now_iso()
    return True


def summary(state: dict[str, Any]) -> dict[str, Any]:
    """The fields a listing shows."""
    keys = ("callConnectionId", "direction", "target", "source", "status", "streaming", "audioChannel",
            "sampleRate", "createdAt", "connectedAt", "disconnectedAt")
    return {k: state.get(k) for k in keys}
