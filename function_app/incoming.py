"""Answering `Microsoft.Communication.IncomingCall` from Event Grid with the same streaming options as outbound
calls.

Event Grid delivers at least once. A second delivery of an answered call makes ACS refuse the second answer with a
4xx; that is logged and swallowed (retrying cannot help). Transient failures (5xx, 408, 429, network) are raised so
that the Functions host fails the invocation and Event Grid retries while the incoming call context is still valid.
"""

from __future__ import annotations

import logging
from typing import Any

from azure.communication.callautomation import CallAutomationClient
from azure.core.exceptions import AzureError, HttpResponseError

from common.logs import call_fields
from function_app import acs
from function_app.calls import remember_call
from function_app.settings import Settings
from function_app.store import RecordingStore

INCOMING_CALL = "Microsoft.Communication.IncomingCall"
_TRANSIENT = {408, 429}

log = logging.getLogger(__name__)


def _raw_ids(identifier: Any) -> set[str]:
    """Every spelling of an Event Grid identifier we accept in ANSWER_RECIPIENTS."""
    if not isinstance(identifier, dict):
        return set()
    ids = {identifier.get("rawId")}
    phone = (identifier.get("phoneNumber") or {}).get("value")
    if phone:
        ids |= {phone, f"4:{phone}"}
    ids.add((identifier.get("communicationUser") or {}).get("id"))
    return {i for i in ids if isinstance(i, str) and i}


def is_recipient(settings: Settings, to: Any) -> bool:
    if not settings.answer_recipients:
        return True
    return bool(_raw_ids(to) & set(settings.answer_recipients))


def handle_incoming(client: CallAutomationClient, store: RecordingStore, settings: Settings, event_type: str,
                    data: dict[str, Any], event_id: str = "") -> str:
    """Returns what happened: answered, ignored, not-a-recipient, refused."""
    if event_type != INCOMING_CALL:
        log.info("ignoring Event Grid event %s of type %s", event_id, event_type)
        return "ignored"
    correlation = data.get("correlationId")
    to, caller = data.get("to"), data.get("from")
    if not is_recipient(settings, to):
        log.info("incoming call to %s is not for a configured recipient; not answering", _raw_ids(to) or "?",
                 extra=call_fields(None, correlation))
        return "not-a-recipient"
    context = data.get("incomingCallContext")
    if not isinstance(context, str) or not context:
        log.error("IncomingCall event %s has no incomingCallContext; cannot answer", event_id)
        return "ignored"
    channel, rate = settings.default_audio_channel, settings.default_sample_rate
    try:
        props = client.answer_call(context, settings.callback_url,
                                   media_streaming=acs.streaming_options(settings, channel, rate, False))
    except HttpResponseError as exc:
        status = exc.status_code or 0
        if status >= 500 or status in _TRANSIENT:
            log.warning("answer_call failed transiently (%s); Event Grid will retry", status)
            raise
        code = getattr(getattr(exc, "error", None), "code", None)
        log.warning("ACS refused to answer (status %s, code %s): already answered by an earlier delivery of "
                    "event %s, or the call is gone", status, code, event_id, extra=call_fields(None, correlation))
        return "refused"
    except AzureError:
        log.warning("answer_call could not reach ACS; Event Grid will retry", exc_info=True)
        raise
    call_id = props.call_connection_id or ""
    log.info("answered incoming call %s from %s", call_id, (caller or {}).get("rawId"),
             extra=call_fields(call_id, props.correlation_id or correlation))
    remember_call(store, call_id, direction="inbound", target=(to or {}).get("rawId"),
                  source=(caller or {}).get("rawId"), audioChannel=channel, sampleRate=rate, dtmf=False,
                  correlationId=props.correlation_id or correlation,
                  serverCallId=props.server_call_id or data.get("serverCallId"))
    return "answered"
