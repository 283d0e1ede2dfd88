"""The finished recording, as one typed contract.

- `Recording` is stored beside the manifest (`{callId}/recording.json`) by the finalizer (function_app.finalize):
  the finished files, the channel map, the completeness statement and the digest. It is written `finalizing` first
  and `ready` once every file is committed; files are written once and never replaced.
- `RecordingDocument` is what `GET /api/recordings/{id}` answers: the call state, the manifest, the stored recording
  (or, while the call runs, a completeness computed on the fly) and short-lived read URLs.
- `RecordingReadyData` is the data of the `AcsCallRecorder.RecordingReady` CloudEvent.

The digest (`digest_of`) lets anyone holding the document check every blob: SHA-256 over one line per chunk
(`chunk {stream} {seq} {sha256}`, streams in name order, seqs ascending) then one line per finished file
(`file {blob} {sha256}`, in `files` order), each line ending in `\\n`.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, field

from common.call_state import CallState
from common.manifest import Count, Id, Manifest, ParticipantId, StreamName, Time, _Model

SCHEMA_VERSION = 1
EVENT_TYPE = "AcsCallRecorder.RecordingReady"
Url = Annotated[str, Meta(max_length=8192)]
Sha256 = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
BlobName = Annotated[str, Meta(max_length=1600)]
Text = Annotated[str, Meta(max_length=4096)]
Ratio = Annotated[float, Meta(ge=0, le=1)]


class RecordingStatus(enum.StrEnum):
    LIVE = "live"  # the call is connected or a streaming session is still open or landing chunks
    FINALIZING = "finalizing"  # the call ended and its sessions settled; the finished files are being written
    READY = "ready"  # every finished file is committed and the document is final


class FileKind(enum.StrEnum):
    STREAM = "stream"  # one stream (mixed, or one participant) on the call clock
    MULTICHANNEL = "multichannel"  # every participant of an unmixed call, one channel each


class HoleCause(enum.StrEnum):
    """Why a span of the connected call has no streaming session."""

    STREAMING_STARTING = "streaming_starting"  # between the call connecting and its first session
    STREAMING_ENDING = "streaming_ending"  # between the last session ending and the call disconnecting
    STOPPED_ON_REQUEST = "stopped_on_request"  # streaming was stopped through the API
    STREAMING_FAILED = "streaming_failed"  # ACS reported MediaStreamingFailed (code/subCode kept)
    STREAMER_UNREACHABLE = "streamer_unreachable"  # MediaStreamingFailed with subCode 8603
    CONNECTION_LOST = "connection_lost"  # a session ended without a close handshake
    NEVER_STREAMED = "never_streamed"  # the call connected, no session ever began
    UNKNOWN = "unknown"


class HealedBy(enum.StrEnum):
    """Who brought streaming back after a hole."""

    RECORDER = "recorder"  # the control plane restarted it (STREAMING_RESTART_ATTEMPTS)
    API = "api"  # a user's POST /api/calls/{id}/streaming/start
    ACS = "acs"  # ACS reconnected by itself


class ChannelMapEntry(_Model, frozen=True, kw_only=True):
    channel: Count  # 0-based, the order of samples in each frame of the multichannel file
    stream: StreamName
    participant_raw_id: ParticipantId | None = None


class FinishedFile(_Model, frozen=True, kw_only=True):
    kind: FileKind
    stream: StreamName | None = None  # None for the multichannel file
    participant_raw_id: ParticipantId | None = None
    channels: Annotated[int, Meta(ge=1, le=64)]
    sample_rate: Annotated[int, Meta(gt=0)]
    duration_ms: Count
    size: Count = field(name="bytes")
    sha256: Sha256
    blob: BlobName
    part: Annotated[int, Meta(ge=1)] = 1  # a file longer than WAV's 4 GiB limit is split into numbered parts
    parts: Annotated[int, Meta(ge=1)] = 1
    offset_ms: Count = 0  # where this part starts on the call clock
    url: Url | None = None  # in API answers only: a short-lived read URL


class Hole(_Model, frozen=True, kw_only=True):
    start_time: Time
    end_time: Time
    duration_ms: Count
    cause: HoleCause
    code: int | str | None = None  # ACS result code and subCode, when a failure caused it
    sub_code: int | str | None = None
    message: Text | None = None
    healed: bool = False  # streaming resumed after it
    healed_by: HealedBy | None = None
    restarts: Count = 0  # the recorder's restart requests during it (accepted or refused)
    expected: bool = False  # a requested stop, or streaming starting/ending within the tolerance


class StreamCoverage(_Model, frozen=True, kw_only=True):
    stream: StreamName
    participant_raw_id: ParticipantId | None = None
    duration_ms: Count  # from the clock origin to the stream's last sample
    audio_ms: Count  # received audio (chunks minus the gaps in them)
    silence_ms: Count  # filled by the recorder: gaps, missing chunks, before the first chunk


class Completeness(_Model, frozen=True, kw_only=True):
    connected_from: Time | None = None
    connected_until: Time | None = None
    connected_ms: Count = 0
    streamed_ms: Count = 0  # of the connected interval, covered by a streaming session
    coverage: Ratio | None = None  # streamed_ms / connected_ms; None when the call never connected
    holes: list[Hole] = field(default_factory=list)
    streams: list[StreamCoverage] = field(default_factory=list)
    sessions: Count = 0
    unsettled_sessions: list[Id] = field(default_factory=list)  # never settled: audio in transit may be missing
    incomplete_sessions: list[Id] = field(default_factory=list)  # ended without a clean close, or lost a chunk
    quarantined_chunks: Count = 0
    complete: bool = False  # no unexpected hole, every session complete, nothing quarantined
    statement: Text = ""


class Digest(_Model, frozen=True, kw_only=True):
    algorithm: Literal["sha256"] = "sha256"
    value: Sha256
    chunks: Count
    files: Count


class Finished(_Model, frozen=True, kw_only=True):
    """What finalization decides, in both the stored document and the API's."""

    call_connection_id: Id
    status: RecordingStatus
    revision: Annotated[int, Meta(ge=1)] = 1  # grows when audio landed after the recording was finalized
    files: list[FinishedFile] = field(default_factory=list)
    channel_map: list[ChannelMapEntry] = field(default_factory=list)
    completeness: Completeness | None = None
    digest: Digest | None = None
    ready_at: Time | None = None
    event_id: Id | None = None
    announced_at: Time | None = None


class Recording(Finished, frozen=True, kw_only=True):
    schema_version: int = SCHEMA_VERSION
    correlation_id: Id | None = None
    sample_rate: int | None = None
    clock_origin: Time | None = None
    finalizing_since: Time | None = None
    announcing_since: Time | None = None  # a finalizer is publishing the event (a lease: one event under a race)
    chunks_digest: Sha256 | None = None  # over the chunk lines alone: the chunks this revision was built from
    peaks_blob: BlobName | None = None  # the waveform peaks of this revision (kept after the chunks expire)


FINISHED_FIELDS = Finished.__struct_fields__


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


class RecordingDocument(Finished, frozen=True, kw_only=True):
    status: RecordingStatus = RecordingStatus.LIVE
    call_state: CallState | None = None
    manifest: Manifest | None = None
    streams: list[StreamLinks] = field(default_factory=list)
    urls_expire_at: Time | None = None


class StreamPeaks(_Model, frozen=True, kw_only=True):
    """One stream's waveform envelope from the clock origin: `levels[i]` covers [i, i+1) / pointsPerSecond
    seconds of the call clock — 0…scale the loudest received sample there (common.peaks), -1 no frame received
    (silence the recorder filled, or no chunk), null not known (a chunk without stored peaks, beyond what one
    answer computes)."""

    stream: StreamName
    participant_raw_id: ParticipantId | None = None
    levels: list[int | None] = field(default_factory=list)


class PeaksDocument(_Model, frozen=True, kw_only=True):
    """What `GET /api/recordings/{id}/peaks` answers: every stream's envelope on the call clock."""

    call_connection_id: Id
    clock_origin: Time | None = None
    sample_rate: int | None = None
    points_per_second: Annotated[float, Meta(gt=0)]
    scale: int
    streams: list[StreamPeaks] = field(default_factory=list)
    computed_chunks: Count = 0  # chunks without stored peaks whose audio was read for this answer
    first_point: Count = 0  # every stream's levels[0] is this point (fromSeq × points per chunk; 0 = the origin)


class ReadyCompleteness(_Model, frozen=True, kw_only=True):
    coverage: Ratio | None = None
    complete: bool
    statement: Text
    holes: list[Hole] = field(default_factory=list)


class RecordingReadyData(_Model, frozen=True, kw_only=True):
    call_connection_id: Id
    correlation_id: Id | None = None
    status: RecordingStatus
    files: list[FinishedFile] = field(default_factory=list)  # without URLs
    coverage: float | None = None  # = completeness.coverage, at the top for subscribers' filters
    completeness: ReadyCompleteness
    digest: Digest


class FinalizeRequest(_Model, frozen=True, kw_only=True):
    """A message on the `recording-finalize` queue, from either plane: this call may be ready to finalize.
    `force`: finalize even with sessions that never settled (the sweep, long after the call ended)."""

    call_connection_id: Id
    reason: Annotated[str, Meta(max_length=64)] = ""
    force: bool = False


_request_decoder = msgspec.json.Decoder(FinalizeRequest)


def finalize_request(call_id: str, reason: str, *, force: bool = False) -> str:
    """The queue message text (the queue clients base64 it, as the Functions trigger expects)."""
    return msgspec.json.encode(FinalizeRequest(call_connection_id=call_id, reason=reason, force=force)).decode()


def parse_finalize_request(body: bytes | str) -> FinalizeRequest:
    """Raises ValueError naming what is wrong."""
    return _request_decoder.decode(body)


def chunk_lines(manifest: Manifest | None) -> Iterable[str]:
    for s in sorted(manifest.streams if manifest else [], key=lambda s: s.stream):
        for c in sorted(s.chunks, key=lambda c: c.seq):
            yield f"chunk {s.stream} {c.seq} {c.sha256}\n"


def chunks_digest_of(manifest: Manifest | None) -> str:
    """SHA-256 over the chunk lines alone: changes whenever a chunk is added or gets a new revision."""
    h = hashlib.sha256()
    for line in chunk_lines(manifest):
        h.update(line.encode())
    return h.hexdigest()


def digest_of(manifest: Manifest | None, files: Iterable[FinishedFile]) -> Digest:
    """The recording's digest (see the module docstring for what it covers)."""
    h = hashlib.sha256()
    chunks = 0
    for line in chunk_lines(manifest):
        h.update(line.encode())
        chunks += 1
    n = 0
    for f in files:
        h.update(f"file {f.blob} {f.sha256}\n".encode())
        n += 1
    return Digest(value=h.hexdigest(), chunks=chunks, files=n)


_decoder = msgspec.json.Decoder(Recording)
_peaks_decoder = msgspec.json.Decoder(PeaksDocument)


def loads_peaks(data: bytes | str) -> PeaksDocument:
    return _peaks_decoder.decode(data)


def loads(data: bytes | str) -> Recording:
    return _decoder.decode(data)
