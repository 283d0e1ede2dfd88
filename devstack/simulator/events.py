"""Callback events (CloudEvents 1.0, docs/acs-protocol.md#callbacks) and the IncomingCall Event Grid event
(docs/acs-protocol.md#incomingcall-via-event-grid).

Callbacks are POSTed as a JSON array of one CloudEvent each:
    {"id", "source": "calling/callConnections/{id}", "type": "Microsoft.Communication.<Event>", "data",
     "time": "…7 fractional digits…+00:00", "specversion": "1.0", "datacontenttype": "application/json",
     "subject": "calling/callConnections/{id}"}
data: callConnectionId, serverCallId, correlationId, operationContext, resultInformation{code,subCode,message},
version (api-version), publicEventType (= type), eventSource; streaming events add mediaStreamingUpdate with
contentType "Audio" (capitalised, as the service sends it).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

PREFIX = "Microsoft.Communication."

# resultInformation per situation. The streaming ones are the Java SDK fixtures' values
# (docs/acs-protocol.md#callback-event-types); the others are
# plausible values of the same shape (marked UNVERIFIED in the README of the simulator).
OK = {"code": 200, "subCode": 0, "message": "Action completed successfully."}
STREAM_FAILED = {"code": 500, "subCode": 8603, "message": "Action failed, not able to establish websocket connection."}
STREAM_INTERRUPTED = {"code": 500, "subCode": 8603,
                      "message": "Action failed, websocket connection was interrupted."}
CALL_ENDED = {"code": 200, "subCode": 0, "message": "The conversation has ended."}
CREATE_FAILED = {"code": 408, "subCode": 0, "message": "Call was not answered by the target."}
ANSWER_FAILED = {"code": 500, "subCode": 0, "message": "Call could not be answered: the caller hung up."}


def cloud_time(dt: datetime | None = None) -> str:
    """`2024-05-02T11:20:42.9110236+00:00`: 7 fractional digits and an explicit offset, like the service."""
    dt = (dt or datetime.now(UTC)).astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0+00:00"


def event_grid_time(dt: datetime | None = None) -> str:
    """`2023-04-04T17:18:42.5542219Z`: Event Grid's form."""
    dt = (dt or datetime.now(UTC)).astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def call_event(event: str, *, call_connection_id: str, server_call_id: str, correlation_id: str,
               operation_context: str | None, result: dict[str, Any] | None, version: str,
               streaming: tuple[str, str] | None = None) -> dict[str, Any]:
    """One CloudEvent for `event` (e.g. "CallConnected"). `streaming` = (status, statusDetails)."""
    etype = PREFIX + event
    source = f"calling/callConnections/{call_connection_id}"
    data: dict[str, Any] = {"eventSource": source}
    if operation_context is not None:
        data["operationContext"] = operation_context
    if result is not None:
        data["resultInformation"] = dict(result)
    if streaming is not None:
        data["mediaStreamingUpdate"] = {"contentType": "Audio", "mediaStreamingStatus": streaming[0],
                                        "mediaStreamingStatusDetails": streaming[1]}
    data.update({"version": version, "callConnectionId": call_connection_id, "serverCallId": server_call_id,
                 "correlationId": correlation_id, "publicEventType": etype})
    return {"id": str(uuid.uuid4()), "source": source, "type": etype, "data": data, "time": cloud_time(),
            "specversion": "1.0", "datacontenttype": "application/json", "subject": source}


def incoming_call_event(*, topic: str, to: dict[str, Any], from_: dict[str, Any], server_call_id: str,
                        caller_display_name: str, incoming_call_context: str, correlation_id: str,
                        custom_context: dict[str, Any] | None = None) -> dict[str, Any]:
    """`Microsoft.Communication.IncomingCall` in the Event Grid schema (the default delivery schema)."""
    return {
        "id": str(uuid.uuid4()),
        "topic": topic,
        "subject": f"/caller/{from_['rawId']}/recipient/{to['rawId']}",
        "data": {"to": to, "from": from_, "serverCallId": server_call_id, "callerDisplayName": caller_display_name,
                 "customContext": custom_context or {"sipHeaders": {}, "voipHeaders": {}},
                 "incomingCallContext": incoming_call_context, "correlationId": correlation_id},
        "eventType": PREFIX + "IncomingCall",
        "dataVersion": "1.0",
        "metadataVersion": "1",
        "eventTime": event_grid_time(),
    }


def event_grid_headers(subscription: str) -> dict[str, str]:
    """What Event Grid puts on a webhook delivery."""
    return {"Content-Type": "application/json", "aeg-event-type": "Notification",
            "aeg-subscription-name": subscription, "aeg-delivery-count": "0", "aeg-data-version": "1.0",
            "aeg-metadata-version": "1"}
