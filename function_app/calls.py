"""Placing a call and acting on a live one — plain functions over an SDK client and a store, so tests and the
local host run them without the Functions runtime."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from azure.communication.callautomation import CallAutomationClient, PhoneNumberIdentifier
from azure.core.exceptions import AzureError

from common.layout import is_valid_call_id
from common.logs import call_fields
from common.manifest import now_iso, utc_iso
from function_app import acs
from function_app import state as state_model
from function_app.errors import from_acs
from function_app.settings import Settings
from function_app.store import RecordingStore
from function_app.validation import CreateCall

log = logging.getLogger(__name__)


def remember_call(store: RecordingStore, call_id: str, **fields: Any) -> None:
    """Write what we asked ACS for into the call state and the recent-calls index. The call already exists at
    this point, so a storage failure is logged rather than turned into an error the caller would retry."""
    if not is_valid_call_id(call_id):
        log.error("ACS returned an unusable call connection id %r; not recording state", call_id)
        return
    created = datetime.now(UTC)
    fields.setdefault("createdAt", utc_iso(created.timestamp()))
    try:
        def record(state: dict[str, Any]) -> bool:
            state_model.record_request(state, **fields)
            return True

        store.update_state(call_id, record)
        store.add_to_index(call_id, created)
    except Exception:
        log.exception("call %s is live but its state could not be stored", call_id, extra=call_fields(call_id))


def place_call(client: CallAutomationClient, store: RecordingStore, settings: Settings, req: CreateCall,
               api_base: str) -> dict[str, Any]:
    source = req.source_caller_id
    try:
        props = client.create_call(
            acs.identifier(req.target),
            settings.callback_url,
            source_caller_id_number=PhoneNumberIdentifier(source) if source else None,
            operation_context=req.operation_context,
            media_streaming=acs.streaming_options(settings, req.audio_channel, req.sample_rate, req.dtmf),
        )
    except AzureError as exc:
        log.warning("create_call to %s failed: %s", req.target, exc)
        raise from_acs(exc, "create_call") from None
    call_id = props.call_connection_id or ""
    log.info("placed call %s to %s (%s, %d Hz)", call_id, req.target, req.audio_channel, req.sample_rate,
             extra=call_fields(call_id, props.correlation_id))
    remember_call(store, call_id, direction="outbound", target=req.target, source=source,
                  audioChannel=req.audio_channel, sampleRate=req.sample_rate, dtmf=req.dtmf,
                  correlationId=props.correlation_id, serverCallId=props.server_call_id)
    return {"callConnectionId": call_id, "serverCallId": props.server_call_id,
            "correlationId": props.correlation_id, "recordingUrl": f"{api_base}/recordings/{call_id}"}


def set_streaming(client: CallAutomationClient, store: RecordingStore, call_id: str, context: str | None,
                  start: bool) -> dict[str, Any]:
    """Start or stop media streaming; the request is recorded in the call state (the completeness report tells
    a requested stop from a failure by it). Recorded before ACS is asked: ACS's MediaStreamingStopped may reach
    the callbacks before ACS's answer reaches us, and self-healing must already know the stop was asked for, or
    it would undo it. If it cannot be recorded, ACS is not asked."""
    connection = client.get_call_connection(call_id)
    action = "start_media_streaming" if start else "stop_media_streaming"
    asked = now_iso()
    store.update_state(call_id, lambda state: _record(state, start, asked))
    try:
        if start:
            connection.start_media_streaming(operation_context=context)
        else:
            connection.stop_media_streaming(operation_context=context)
    except AzureError as exc:
        log.warning("%s on %s failed: %s", action, call_id, exc, extra=call_fields(call_id))
        error = str(exc)[:1000]
        try:
            store.update_state(call_id, lambda state: _refused(state, asked, error))
        except Exception:
            log.exception("could not record that ACS refused %s of %s", action, call_id, extra=call_fields(call_id))
        raise from_acs(exc, action) from None
    log.info("%s accepted for %s", action, call_id, extra=call_fields(call_id))
    return {"callConnectionId": call_id, "streaming": "starting" if start else "stopping"}


def _record(state: dict[str, Any], start: bool, at: str) -> bool:
    state_model.record_streaming_request(state, "start" if start else "stop", at=at)
    return True


def _refused(state: dict[str, Any], at: str, error: str) -> bool:
    return state_model.update_streaming_request(state, lambda r: r.by == "api" and r.at == at, error=error)


def hang_up(client: CallAutomationClient, call_id: str) -> None:
    """Ends the call for everyone (terminate), not just our leg."""
    try:
        client.get_call_connection(call_id).hang_up(is_for_everyone=True)
    except AzureError as exc:
        log.warning("hang_up on %s failed: %s", call_id, exc, extra=call_fields(call_id))
        raise from_acs(exc, "hang_up") from None
    log.info("hung up %s for everyone", call_id, extra=call_fields(call_id))
