"""ACS call events (a JSON array of CloudEvents) folded into the per-call state blob.

Authentication happens before this (the entry verifies the ACS JWT with common.acs_jwt, the same code the
streamer uses); here we only check the shape, log what an operator needs, and store.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import msgspec
import orjson

from common import call_state as cs
from common.layout import is_valid_call_id
from common.logs import call_fields
from function_app import healing
from function_app import state as state_model
from function_app.errors import bad_request
from function_app.store import RecordingStore

UNREACHABLE_STREAMER = 8603

log = logging.getLogger(__name__)


def parse_events(raw: bytes) -> list[dict[str, Any]]:
    try:
        events = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("body", "is not valid JSON") from None
    if not isinstance(events, list) or not events:
        raise bad_request("body", "must be a non-empty JSON array of CloudEvents")
    for i, event in enumerate(events):
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise bad_request(f"[{i}].type", "every event must be an object with a string type")
        data = event.get("data")
        if not isinstance(data, dict):
            raise bad_request(f"[{i}].data", "must be an object")
        name = state_model.event_name(event)
        if name in state_model.HANDLED and not is_valid_call_id(data.get("callConnectionId")):
            raise bad_request(f"[{i}].data.callConnectionId", "is missing or not a valid call connection id")
    return events


def _log_event(name: str, data: dict[str, Any]) -> None:
    call_id = data.get("callConnectionId")
    extra = call_fields(call_id, data.get("correlationId"), event=name)
    info = data.get("resultInformation") or {}
    update = data.get("mediaStreamingUpdate") or {}
    if name == "MediaStreamingFailed":
        hint = (" — ACS could not reach the streamer WebSocket (check STREAMER_WSS_URL, TLS and ingress)"
                if info.get("subCode") == UNREACHABLE_STREAMER else "")
        log.error("media streaming failed for %s: code %s/%s %r, status %s/%s%s", call_id, info.get("code"),
                  info.get("subCode"), info.get("message"), update.get("mediaStreamingStatus"),
                  update.get("mediaStreamingStatusDetails"), hint, extra=extra)
    elif name in ("CreateCallFailed", "AnswerFailed"):
        log.error("%s for %s: code %s/%s %r", name, call_id, info.get("code"), info.get("subCode"),
                  info.get("message"), extra=extra)
    elif name in state_model.HANDLED:
        log.info("%s for %s (%s/%s)", name, call_id, update.get("mediaStreamingStatus") or info.get("code"),
                 update.get("mediaStreamingStatusDetails") or info.get("subCode"), extra=extra)
    else:
        log.info("ignoring callback %s for %s", name, call_id, extra=extra)


ENDING = frozenset({"CallDisconnected", "CreateCallFailed", "AnswerFailed"})
DEFAULT_RESTART_ATTEMPTS = healing.DEFAULT_ATTEMPTS


def handle_events(store: RecordingStore, events: list[dict[str, Any]], *,
                  restart_attempts: int = DEFAULT_RESTART_ATTEMPTS) -> int:
    """Store every tracked event; returns how many changed a call state (duplicates change nothing). After the state
    is written (so that whoever acts next sees it): a call whose state is terminal after an ending event is put on
    the finalize queue, and a connected call whose streaming stopped unasked gets a restart planned (see
    function_app.healing). A redelivered event asks again: both requests are idempotent."""
    by_call: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        name = state_model.event_name(event)
        _log_event(name, event["data"])
        if name in state_model.HANDLED:
            by_call[event["data"]["callConnectionId"]].append(event)
    changed = 0
    unplanned: list[str] = []
    for call_id, evs in by_call.items():
        applied: list[str] = []

        def fold(doc: dict[str, Any], evs: list[dict[str, Any]] = evs, applied: list[str] = applied) -> bool:
            applied[:] = [state_model.event_name(e) for e in evs if state_model.apply_event(doc, e)]
            return bool(applied)

        doc = store.update_state(call_id, fold)
        changed += len(applied)
        fields = call_fields(call_id, doc.get("correlationId"))
        if doc.get("status") in state_model.TERMINAL and any(state_model.event_name(e) in ENDING for e in evs):
            try:
                store.request_finalize(call_id, "call_ended")
            except Exception:
                log.exception("could not ask for finalization of %s; the sweep will", call_id, extra=fields)
        elif any(state_model.event_name(e) in healing.TRIGGER_EVENTS for e in evs):  # redelivered ones too
            try:
                restart = healing.plan(msgspec.convert(doc, cs.CallState), restart_attempts)
                if restart is not None:
                    healing.schedule(store, restart)
            except Exception:
                log.exception("could not plan a restart of the streaming of %s", call_id, extra=fields)
                unplanned.append(call_id)
    if unplanned:  # the other calls of the batch are stored; answered as an error, the delivery is retried and the
        # restart planned again (its events are already applied: nothing else repeats)
        raise RuntimeError(f"could not plan streaming restarts for {', '.join(unplanned)}")
    return changed
