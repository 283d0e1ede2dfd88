"""The call-state document (`{callId}/call-state.json`), written by the control plane and read by both planes.

The control plane folds what it asked ACS for and every callback event into it (see `function_app.state`); the
streamer reads it to learn whether a call exists and whether it has ended before a session began.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, field

from common.manifest import Id, Time, _Model

SCHEMA_VERSION = 1
CallStatus = Literal["connecting", "connected", "disconnected", "failed"]
StreamingStatus = Literal["requested", "started", "stopped", "failed"]
TERMINAL: tuple[CallStatus, ...] = ("disconnected", "failed")
Text = Annotated[str, Meta(max_length=65536)]  # a bound, generous: states written before it must still read


class Failure(_Model, frozen=True, kw_only=True):
    """A failure ACS reported (CreateCallFailed, AnswerFailed, MediaStreamingFailed) with its result codes."""

    event: Text
    code: int | str | None = None  # ACS sends integers; earlier versions stored whatever a callback carried
    sub_code: int | str | None = None
    message: Text | None = None
    details: Text | None = None
    at: Time | None = None


class EventRef(_Model, frozen=True, kw_only=True):
    id: Text
    type: Text
    time: Time
    operation_context: Text | None = None  # the request it answers, when ACS says (the recorder's restarts do)


class RejectedEvent(_Model, frozen=True, kw_only=True):
    """A callback event that contradicts what we know (e.g. CreateCallFailed after CallConnected): kept, not
    applied."""

    id: Text
    type: Text
    time: Time
    reason: Text


class StreamingRequest(_Model, frozen=True, kw_only=True):
    """A start or stop of media streaming we asked ACS for: by the API (a user) or by the recorder itself (healing
    a stream that failed). The completeness report tells a requested stop from a failure with these."""

    action: Literal["start", "stop"]
    by: Literal["api", "recorder"] = "api"
    at: Time
    attempt: int | None = None  # the recorder's n-th try to heal one outage
    heals: Time | None = None  # the recorder's: when the outage it answers began (the event that stopped streaming)
    error: Text | None = None  # ACS refused the request
    accepted_at: Time | None = None  # the recorder's: ACS accepted the start (whether it streams, a callback says)


class CallState(_Model, frozen=True, kw_only=True):
    call_connection_id: Id
    schema_version: int = SCHEMA_VERSION
    correlation_id: Text | None = None
    server_call_id: Annotated[str, Meta(max_length=4096)] | None = None
    direction: Literal["outbound", "inbound"] | None = None
    target: Text | None = None
    source: Text | None = None
    audio_channel: Literal["mixed", "unmixed"] | None = None
    sample_rate: int | None = None
    dtmf: bool | None = None
    status: CallStatus = "connecting"
    streaming: StreamingStatus | None = None
    created_at: Time | None = None
    connected_at: Time | None = None
    disconnected_at: Time | None = None
    streaming_started_at: Time | None = None
    streaming_stopped_at: Time | None = None
    streaming_updated_at: Time | None = None
    updated_at: Time | None = None
    failures: list[Failure] = field(default_factory=list)
    events: list[EventRef] = field(default_factory=list)
    rejected_events: list[RejectedEvent] = field(default_factory=list)
    streaming_requests: list[StreamingRequest] = field(default_factory=list)

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL


_decoder = msgspec.json.Decoder(CallState)


def to_builtins(doc: CallState) -> dict[str, Any]:
    return msgspec.to_builtins(doc)  # type: ignore[no-any-return]


def entry(item: Failure | EventRef | RejectedEvent | StreamingRequest) -> dict[str, Any]:
    """One list entry in the document's JSON shape, built from its model (the fold in function_app.state edits
    the document as JSON, so its entries are spelled once, here)."""
    return msgspec.to_builtins(item)  # type: ignore[no-any-return]


def loads(data: bytes | str) -> CallState:
    """Decode and validate a stored call state; raises ValueError naming the first field that is wrong."""
    return _decoder.decode(data)
