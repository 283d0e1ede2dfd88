"""The `AcsCallRecorder.RecordingReady` CloudEvent, published with the azure-eventgrid SDK to an Event Grid topic.

In Azure the function app's managed identity needs `EventGrid Data Sender` on the topic (the Bicep grants it; the
topic has local auth disabled). Locally the stack runs an Event Grid-compatible receiver with a key.

Deliveries are at least once: a finalizer that publishes and dies before recording `announcedAt` publishes again
on the next try, so the event id is derived from the recording (call id and digest) and subscribers de-duplicate
on it.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any, Protocol

from azure.core.credentials import AzureKeyCredential
from azure.core.messaging import CloudEvent

from common import manifest as mf
from common.recording import EVENT_TYPE, ReadyCompleteness, Recording, RecordingReadyData
from function_app.settings import Settings

SOURCE = "/acs-call-recorder/recordings"
_NAMESPACE = uuid.UUID("6f1c1f53-6d2b-4f4e-9a55-0c4a5e2f7d10")  # this recorder's event ids

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def send(self, events: list[CloudEvent[Any]]) -> None: ...


def build_publisher(settings: Settings) -> Publisher | None:
    if not settings.events_endpoint:
        log.warning("RECORDING_EVENTS_ENDPOINT is not set: finished recordings are not announced by an event")
        return None
    from azure.eventgrid import EventGridPublisherClient

    if settings.events_key:
        return EventGridPublisherClient(settings.events_endpoint, AzureKeyCredential(settings.events_key))
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential(managed_identity_client_id=settings.azure_client_id)
    return EventGridPublisherClient(settings.events_endpoint, credential)


def event_id(call_id: str, digest: str) -> str:
    """Stable per recording: the same call and content always give the same id."""
    return str(uuid.uuid5(_NAMESPACE, f"{call_id}:{digest}"))


def ready_data(rec: Recording) -> RecordingReadyData:
    c = rec.completeness
    assert rec.digest is not None
    return RecordingReadyData(
        call_connection_id=rec.call_connection_id, correlation_id=rec.correlation_id, status=rec.status,
        files=rec.files, coverage=c.coverage if c else None,
        completeness=ReadyCompleteness(coverage=c.coverage if c else None, complete=bool(c and c.complete),
                                       statement=c.statement if c else "", holes=c.holes if c else []),
        digest=rec.digest)


def ready_event(rec: Recording) -> CloudEvent[Any]:
    assert rec.event_id is not None and rec.ready_at is not None
    return CloudEvent(source=SOURCE, type=EVENT_TYPE, subject=f"recordings/{rec.call_connection_id}",
                      id=rec.event_id, time=datetime.fromisoformat(rec.ready_at.replace("Z", "+00:00")),
                      datacontenttype="application/json", data=mf.to_builtins(ready_data(rec)))
