"""The per-call manifest — what was recorded, where it is, whether it is complete — as one typed model.

Several writers touch one call's manifest: a streaming session per WebSocket connection (stop/start makes a new
one, possibly on another replica) and the spool drainer after a restart. Each writer keeps its own *part* — a
`Part`, manifest-shaped, holding only what it contributed — and merges it into the stored manifest with an
ETag-conditional write. `merge` is a union keyed by identity, so it is idempotent and order-independent: replaying
a part, or two writers racing, never loses an entry.

The models are msgspec structs: the streamer writes a manifest per landed chunk, and msgspec encodes and
validates a struct several times faster than a dict goes through orjson plus hand-written checks. Every writer
builds its entries here and every reader decodes with `loads`, which validates what it reads; the JSON Schema in
`docs/schema/manifest.schema.json` is generated from these classes (`python -m common.schema`).

The first write of `clockOrigin`, `sampleRate`, `frameBytes`, `chunkSeconds` wins: a new call's first session
claims the clock by creating the manifest, and every later session adopts it.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct, field

from common.layout import MAX_PARTICIPANT_ID

SCHEMA_VERSION = 1
MAX_DTMF_PER_CALL = 5000  # backstop over every session's own cap; what is cut is counted in `dtmfDropped`
MAX_GAPS_PER_CALL = 10000  # likewise for gap entries (`gapsDropped`); a session's gapFrames still counts them all

Id = Annotated[str, Meta(min_length=1, max_length=128)]
StreamName = Annotated[str, Meta(max_length=1400, description="`mixed`, or `p-` + unpadded base64url of the "
                                                            "participant's raw id")]
Time = Annotated[str, Meta(max_length=40, description="ISO-8601 UTC, e.g. 2026-01-01T12:00:00.000Z")]
ParticipantId = Annotated[str, Meta(max_length=MAX_PARTICIPANT_ID)]
Count = Annotated[int, Meta(ge=0)]
AudioChannel = Literal["mixed", "unmixed", "auto"]


class EndReason(enum.StrEnum):
    """How a streaming session ended. A session is complete when all its chunks landed and it ended by the peer's
    close handshake (or by our refusal of bad input): a lost connection, a drain or a hard kill may have cut audio
    in transit."""

    PEER_CLOSED = "peer_closed"
    PEER_LOST = "peer_lost"
    PROTOCOL_ERROR = "protocol_error"
    SERVER_ERROR = "server_error"
    DRAIN = "drain"
    NEVER_CLOSED = "never_closed"


COMPLETE_REASONS = frozenset({EndReason.PEER_CLOSED, EndReason.PROTOCOL_ERROR})


class _Model(Struct, rename="camel", kw_only=True, frozen=True, forbid_unknown_fields=False):
    """camelCase on the wire, snake_case in Python; unknown fields of a newer writer are ignored on read; frozen,
    so entries can be shared between a stored manifest and a merge of it."""


class Chunk(_Model, frozen=True, kw_only=True):
    """One landed WAV chunk. `revision` grows when a later part filled slots the stored chunk had empty."""

    blob: Annotated[str, Meta(max_length=1600)]
    seq: Count
    start_time: Time
    duration_ms: Count
    sha256: Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
    size: Count = field(name="bytes")
    revision: Annotated[int, Meta(ge=1)] = 1
    session_id: Id | None = None


class ChunkRef(_Model, frozen=True, kw_only=True):
    """A sealed chunk before it has landed: where it goes in the manifest. Kept beside a spooled chunk, so a chunk
    that lands after a restart is listed as the session would have listed it."""

    stream: StreamName
    participant_raw_id: ParticipantId | None = None
    seq: Count
    start_time: Time
    session_id: Id

    def landed(self, blob: str, *, revision: int, sha256: str, size: int, duration_ms: int) -> Chunk:
        return Chunk(blob=blob, seq=self.seq, start_time=self.start_time, duration_ms=duration_ms, sha256=sha256,
                     size=size, revision=revision, session_id=self.session_id)


class Stream(_Model, frozen=True, kw_only=True):
    stream: StreamName
    participant_raw_id: ParticipantId | None = None
    chunks: list[Chunk] = field(default_factory=list)


class Gap(_Model, frozen=True, kw_only=True):
    """Frames a stream skipped (filled with silence when stitched)."""

    stream: StreamName
    start_time: Time
    duration_ms: Count
    session_id: Id | None = None


class Dtmf(_Model, frozen=True, kw_only=True):
    tone: Annotated[str, Meta(pattern="^[0-9*#A-D]{1,16}$")]
    timestamp: Time | None = None
    participant_raw_id: ParticipantId | None = None
    received_at: Time | None = None


class QuarantinedChunk(_Model, frozen=True, kw_only=True):
    stream: StreamName
    seq: Count
    reason: Annotated[str, Meta(max_length=300)]


class Session(_Model, frozen=True, kw_only=True):
    """One streaming session's entry. Every default is neutral under `merge_session`, so a part may carry only
    what it knows (spool recovery writes just `quarantinedChunks` or the covered span).

    `settled`: nothing more will come from this session — every chunk it sealed has landed or is quarantined
    (its final write, or spool recovery's). A call's recording is finalized once all its sessions are settled."""

    id: Id
    replica: Annotated[str, Meta(max_length=256)] | None = None
    started_at: Time | None = None
    ended_at: Time | None = None
    complete: bool = False
    settled: bool = False
    clean_close: bool = False
    close_code: int | None = None
    end_reason: Annotated[str, Meta(max_length=32, description="an EndReason value")] | None = None
    subscription_id: Annotated[str, Meta(max_length=128)] | None = None
    sample_rate: int | None = None
    frames: Count = 0
    bad_frames: Count = 0
    ignored_messages: Count = 0
    late_frames_placed: Count = 0
    late_frames_dropped: Count = 0
    duplicate_frames: Count = 0
    gap_frames: Count = 0
    bad_timestamps: Count = 0
    conflict_frames: Count = 0
    dtmf_tones: Count = 0
    dtmf_dropped: Count = 0
    gaps_omitted: Count = 0
    capped_frames: Count = 0
    frames_before_origin: Count = 0
    capped_participants: list[ParticipantId] = field(default_factory=list)
    quarantined_chunks: list[QuarantinedChunk] = field(default_factory=list)
    covered_from: Time | None = None
    covered_until: Time | None = None

    @property
    def has_content(self) -> bool:
        """A session that received audio. Sessions without audio (empty, or tones only) do not decide
        completeness."""
        return self.frames > 0


class Manifest(_Model, frozen=True, kw_only=True):
    call_connection_id: Id
    schema_version: int = SCHEMA_VERSION
    correlation_id: Id | None = None
    sample_rate: Annotated[int, Meta(gt=0)] | None = None
    frame_bytes: Annotated[int, Meta(gt=0)] | None = None
    chunk_seconds: Annotated[float, Meta(gt=0, le=3600)] | None = None
    clock_origin: Time | None = None
    audio_channel: AudioChannel | None = None
    complete: bool = False
    updated_at: Time | None = None
    dtmf_dropped: Count = 0
    gaps_dropped: Count = 0
    sessions: list[Session] = field(default_factory=list)
    streams: list[Stream] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    dtmf: list[Dtmf] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The call clock decides where every later session's audio goes: it must be usable, or not there at all.
        if self.clock_origin is not None:
            try:
                parse_iso(self.clock_origin)
            except ValueError:
                raise ValueError(f"clockOrigin is not a time: {self.clock_origin[:40]!r}") from None

    def stream(self, name: str) -> Stream | None:
        return next((s for s in self.streams if s.stream == name), None)


class Part(Manifest, frozen=True, kw_only=True):
    """What one writer contributes. `gaps_of`: sessions whose gap list this part carries whole (late frames may
    have filled a gap since), so their older gap entries are replaced rather than kept."""

    gaps_of: list[Id] = field(default_factory=list)


_FIRST_WINS = ("correlation_id", "sample_rate", "frame_bytes", "chunk_seconds", "clock_origin", "audio_channel")
_SESSION_FIELDS = Session.__struct_fields__


def utc_iso(ts: float) -> str:
    """ISO-8601 UTC rounded to the millisecond, with a `Z`: the form ACS uses in frame timestamps."""
    ms = round(ts * 1000)
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def parse_iso(value: str) -> float:
    """Inverse of `utc_iso` (accepts any ISO-8601; naive means UTC)."""
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def instant(value: str | None) -> float | None:
    """`parse_iso` for times read from documents and events: None when absent or not ISO-8601."""
    if value is None:
        return None
    try:
        return parse_iso(value)
    except ValueError:
        return None


def now_iso() -> str:
    return utc_iso(datetime.now(UTC).timestamp())


def merge_session(old: Session | None, new: Session) -> Session:
    """One session's entry, merged so that it only moves forward whatever order its parts arrive in: flags only
    turn true (`complete`, `cleanClose`), counters only grow, a value once set is kept (`endedAt`, `closeCode`,
    `endReason`), lists keep the longer version. A stale or replayed part can therefore never reopen a session."""
    if old is None:
        return new
    changes: dict[str, Any] = {}
    for name in _SESSION_FIELDS:
        value = getattr(new, name)
        if value is None:
            continue
        cur = getattr(old, name)
        if cur is None:
            changes[name] = value
        elif type(value) is bool:
            if value and not cur:
                changes[name] = True
        elif type(value) is int:
            if value > cur:
                changes[name] = value
        elif type(value) is list and len(value) > len(cur):
            changes[name] = value
    return msgspec.structs.replace(old, **changes) if changes else old


def merge(base: Manifest | None, part: Manifest) -> Manifest:
    """Union of `part` into `base` (neither is modified). Identity keys: session id (merged by `merge_session`);
    (stream, seq) for chunks, where the higher `revision` wins (a chunk whose empty slots a later part filled
    supersedes the first write; equal revisions keep the entry already there); (stream, startTime) for gaps;
    (timestamp, tone, participant) for DTMF.

    `complete` is true when at least one session carried audio and every such session is complete.

    Entries are frozen and shared between inputs and output; only the lists are rebuilt. A streamer rewrites the
    manifest after every chunk, so a deep copy would make each write of an hour-long call cost several times
    more."""
    call_id = part.call_connection_id
    if base is not None and base.call_connection_id != call_id:
        raise ValueError(f"manifest of {base.call_connection_id!r} cannot take a part of {call_id!r}")
    src = base if base is not None else Manifest(call_connection_id=call_id)
    first = {k: getattr(part, k) for k in _FIRST_WINS if getattr(src, k) is None and getattr(part, k) is not None}

    sessions = {s.id: s for s in src.sessions}
    for s in part.sessions:
        sessions[s.id] = merge_session(sessions.get(s.id), s)
    merged_sessions = sorted(sessions.values(), key=lambda s: (s.started_at or "", s.id))

    streams = {s.stream: s for s in src.streams}
    for ps in part.streams:
        cur = streams.get(ps.stream)
        by_seq = {c.seq: c for c in cur.chunks} if cur is not None else {}
        changed = cur is None
        for c in ps.chunks:
            old = by_seq.get(c.seq)
            if old is None or c.revision > old.revision:
                by_seq[c.seq] = c
                changed = True
        if changed:
            participant = cur.participant_raw_id if cur is not None else ps.participant_raw_id
            streams[ps.stream] = Stream(stream=ps.stream, participant_raw_id=participant,
                                        chunks=[by_seq[k] for k in sorted(by_seq)])
    merged_streams = sorted(streams.values(), key=lambda s: s.stream)

    replaced = set(part.gaps_of) if isinstance(part, Part) else set()
    gaps = {(g.stream, g.start_time): g for g in src.gaps if g.session_id not in replaced}
    gaps.update({(g.stream, g.start_time): g for g in part.gaps})
    gap_keys = sorted(gaps)
    gaps_dropped = max(src.gaps_dropped, part.gaps_dropped, len(gap_keys) - MAX_GAPS_PER_CALL)

    # Stored tones are kept (as stored audio is): a later part adds only what still fits under the call's cap.
    dtmf = {_dtmf_key(d): d for d in src.dtmf}
    for d in sorted(part.dtmf, key=_dtmf_key):
        if _dtmf_key(d) not in dtmf and len(dtmf) < MAX_DTMF_PER_CALL:
            dtmf[_dtmf_key(d)] = d
    dtmf_keys = sorted(dtmf)
    # every session lists all the tones it kept, so what the call's cap cut is what they offered beyond it (only
    # once the cap is reached: below it, two sessions listing the same tones are one tone, not one dropped)
    offered = sum(s.dtmf_tones for s in merged_sessions) if len(dtmf_keys) >= MAX_DTMF_PER_CALL else 0
    dtmf_dropped = max(src.dtmf_dropped, part.dtmf_dropped, offered - len(dtmf_keys))

    counted = [s for s in merged_sessions if s.has_content]
    return Manifest(
        call_connection_id=call_id,
        correlation_id=first.get("correlation_id", src.correlation_id),
        sample_rate=first.get("sample_rate", src.sample_rate),
        frame_bytes=first.get("frame_bytes", src.frame_bytes),
        chunk_seconds=first.get("chunk_seconds", src.chunk_seconds),
        clock_origin=first.get("clock_origin", src.clock_origin),
        audio_channel=first.get("audio_channel", src.audio_channel),
        complete=bool(counted) and all(s.complete for s in counted),
        updated_at=now_iso(),
        dtmf_dropped=dtmf_dropped,
        gaps_dropped=gaps_dropped,
        sessions=merged_sessions,
        streams=merged_streams,
        gaps=[gaps[k] for k in gap_keys[:MAX_GAPS_PER_CALL]],
        dtmf=[dtmf[k] for k in dtmf_keys[:MAX_DTMF_PER_CALL]],
    )


def _dtmf_key(d: Dtmf) -> tuple[str, str, str]:
    return d.timestamp or "", d.tone, d.participant_raw_id or ""


def span_of(manifest: Manifest, session_ids: set[str]) -> dict[str, tuple[str, str]]:
    """(first sample, last sample) on the call clock of each session's landed chunks, as ISO-8601."""
    spans: dict[str, tuple[float, float]] = {}
    for s in manifest.streams:
        for c in s.chunks:
            if c.session_id in session_ids:
                a = parse_iso(c.start_time)
                b = a + c.duration_ms / 1000
                lo, hi = spans.get(c.session_id, (a, b))
                spans[c.session_id] = (min(lo, a), max(hi, b))
    return {sid: (utc_iso(a), utc_iso(b)) for sid, (a, b) in spans.items()}


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Manifest)
_part_decoder = msgspec.json.Decoder(Part)
_session_decoder = msgspec.json.Decoder(Session)


def dumps(doc: Struct) -> bytes:
    """Compact JSON (the streamer rewrites it per chunk; `python -m json.tool` pretty-prints it)."""
    return _encoder.encode(doc)


def loads(data: bytes | str) -> Manifest:
    """Decode and validate a stored manifest; raises ValueError (msgspec's errors are ValueErrors) naming the
    first field that is wrong."""
    return _decoder.decode(data)


def loads_part(data: bytes | str) -> Part:
    return _part_decoder.decode(data)


def loads_session(data: bytes | str) -> Session:
    return _session_decoder.decode(data)


def to_builtins(doc: Struct) -> Any:
    """The JSON-shaped form (dicts, lists, camelCase keys) that the API returns."""
    return msgspec.to_builtins(doc)
