"""The recording document: what `GET /api/recordings/{id}` answers — the call state, the manifest, and short-lived
read URLs for every chunk — built by the function app from the two stored documents."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, field

from common.call_state import CallState
from common.manifest import Count, Id, Manifest, ParticipantId, StreamName, Time, _Model

Url = Annotated[str, Meta(max_length=8192)]


class ChunkLink(_Model, frozen=True, kw_only=True):
    seq: Count
    start_time: Time
    duration_ms: Count
    size: Count = field(name="bytes")
    url: Url


class StreamLinks(_Model, frozen=True, kw_only=True):
    stream: StreamName
    participant_raw_id: ParticipantId | None = None
    audio_url: Url  # the stream stitched into one WAV on the call clock
    chunks: list[ChunkLink] = field(default_factory=list)


class RecordingDocument(_Model, frozen=True, kw_only=True):
    call_connection_id: Id
    call_state: CallState | None = None
    manifest: Manifest | None = None
    streams: list[StreamLinks] = field(default_factory=list)
    urls_expire_at: Time | None = None
