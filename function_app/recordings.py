"""Retrieval: recent calls, one recording (manifest + call state + short-lived chunk URLs), and one stream
stitched into a WAV."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import msgspec
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from common import manifest as mf
from common import peaks
from common.call_state import CallState
from common.layout import MIXED_STREAM, stream_id
from common.recording import (
    FINISHED_FIELDS,
    ChunkLink,
    FileKind,
    PeaksDocument,
    Recording,
    RecordingDocument,
    RecordingStatus,
    StreamLinks,
    loads_peaks,
)
from function_app import state as state_model
from function_app.completeness import completeness, estimated_streams
from function_app.errors import ApiError, bad_request
from function_app.peaks import PeaksError, peaks_document, resampled
from function_app.stitch import StitchError, stitch
from function_app.store import RecordingStore
from function_app.validation import parse_range

MAX_PAGE_TOKEN = 2048

log = logging.getLogger(__name__)


def not_found(call_id: str) -> ApiError:
    return ApiError(404, "RecordingNotFound", f"no call or recording with id {call_id}", field="callConnectionId")


def encode_token(marker: str | None) -> str | None:
    """Our page token wraps the service's continuation marker, so a made-up token is recognisably ours or not."""
    return base64.urlsafe_b64encode(b"v1:" + marker.encode()).decode() if marker else None


def decode_token(token: str | None) -> str | None:
    if token is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii") + b"=" * (-len(token) % 4))
    except (ValueError, UnicodeEncodeError):
        raw = b""
    if len(token) > MAX_PAGE_TOKEN or not raw.startswith(b"v1:") or len(raw) == 3:
        raise bad_request("pageToken", "is not a token this API handed out")
    return raw[3:].decode("utf-8", "replace")


def list_recordings(store: RecordingStore, limit: int, page_token: str | None) -> dict[str, Any]:
    marker = decode_token(page_token)
    try:
        calls, next_marker = store.list_calls(limit, marker)
    except HttpResponseError as exc:
        if marker and exc.status_code == 400:
            raise bad_request("pageToken", "is not a token this API handed out") from None
        raise
    items = []
    for call_id, created in calls:
        doc = store.read_state(call_id)
        item: dict[str, Any] = state_model.summary(doc) if doc else {"callConnectionId": call_id}
        item["callStatus"] = item.pop("status", None)
        item["failures"] = [{k: f.get(k) for k in ("event", "code", "subCode", "at")}
                            for f in (doc or {}).get("failures", [])[-3:]]
        rec, _ = store.read_recording(call_id)
        # the manifest only for an ended call not yet finalizing (seconds per call): the detail view's status
        settling = rec is None and doc is not None and doc.get("status") in state_model.TERMINAL
        item["status"] = recording_status(rec, doc, store.read_manifest_model(call_id) if settling else None)
        done = rec.completeness if rec is not None else None
        item["coverage"] = done.coverage if done else None
        item["complete"] = done.complete if done else None
        item["createdAt"] = item.get("createdAt") or created
        items.append(item)
    return {"items": items, "nextPageToken": encode_token(next_marker)}


def audio_url(api_base: str, call_id: str, participant: str | None) -> str:
    return f"{api_base}/recordings/{call_id}/audio?participant={quote(participant or MIXED_STREAM, safe='')}"


def recording_status(rec: Recording | None, state: dict[str, Any] | None,
                     manifest: mf.Manifest | None) -> RecordingStatus:
    """ready once recording.json says so; finalizing from the moment the call has ended and (when the manifest
    is known) its sessions have settled; live before."""
    if rec is not None:
        return rec.status
    if state is None or state.get("status") not in state_model.TERMINAL:
        return RecordingStatus.LIVE
    if manifest is not None and not all(s.settled for s in manifest.sessions):
        return RecordingStatus.LIVE
    return RecordingStatus.FINALIZING


def get_recording(store: RecordingStore, call_id: str, api_base: str, ttl_seconds: int) -> dict[str, Any]:
    """The recording document (common.recording): call state, manifest, the finished recording (or, before it
    is ready, completeness so far) and read URLs for every file and chunk."""
    state = store.read_state(call_id)
    manifest = store.read_manifest_model(call_id)
    rec, _ = store.read_recording(call_id)
    if state is None and manifest is None:
        raise not_found(call_id)
    streams, expires = [], None
    for s in manifest.streams if manifest else []:
        chunks = []
        for c in s.chunks:
            url, expires = store.read_url(c.blob, ttl_seconds)
            chunks.append(ChunkLink(seq=c.seq, start_time=c.start_time, duration_ms=c.duration_ms, size=c.size,
                                    url=url))
        streams.append(StreamLinks(stream=s.stream, participant_raw_id=s.participant_raw_id, chunks=chunks,
                                   audio_url=audio_url(api_base, call_id, s.participant_raw_id)))
    call_state = msgspec.convert(state, CallState) if state is not None else None
    status = recording_status(rec, state, manifest)
    finished = {name: getattr(rec, name) for name in FINISHED_FIELDS} if rec is not None else {}
    files = []
    for f in rec.files if rec is not None and status == RecordingStatus.READY else []:
        url, expires = store.read_url(f.blob, ttl_seconds)
        files.append(msgspec.structs.replace(f, url=url))
    if not finished.get("completeness"):
        finished["completeness"] = completeness(call_state, manifest, estimated_streams(manifest), time.time())
    doc = RecordingDocument(**{**finished, "call_connection_id": call_id, "status": status, "files": files},
                            call_state=call_state, manifest=manifest, streams=streams, urls_expire_at=expires)
    return msgspec.to_builtins(doc)  # type: ignore[no-any-return]


def choose_stream(manifest: mf.Manifest, participant: str | None) -> str:
    """`participant` is a participant raw id, `mixed`, or absent (fine when there is one obvious stream)."""
    return pick_stream([(s.stream, s.participant_raw_id) for s in manifest.streams], participant)


def pick_stream(streams: list[tuple[str, str | None]], participant: str | None) -> str:
    """The stream of `participant` (a raw id, `mixed`, or a stream id) among (stream, participantRawId)."""
    names = [name for name, _ in streams]
    if not participant:
        if MIXED_STREAM in names:
            return MIXED_STREAM
        if len(names) == 1:
            return str(names[0])
        raw_ids = [raw for _, raw in streams]
        raise bad_request("participant", f"is required for this unmixed recording; one of {raw_ids}")
    wanted = MIXED_STREAM if participant == MIXED_STREAM else stream_id(participant)
    if wanted not in names and participant in names:
        wanted = participant  # a stream id from the manifest works too
    if wanted not in names:
        raise ApiError(404, "StreamNotFound", f"participant: no stream for {participant!r} in this recording",
                       field="participant")
    return wanted


@dataclass(frozen=True)
class Audio:
    """One stream's WAV as the answer sends it: the whole file, or the bytes `window` (first, last) of it."""

    content_length: int
    window: tuple[int, int] | None
    pieces: Iterator[bytes]
    filename: str


def _finished_file(store: RecordingStore, call_id: str, stream: str) -> tuple[str, int] | None:
    """(blob, bytes) of the stream's finished file when the recording is ready and the file is one part (a longer
    one is split into parts, which stitching refuses anyway)."""
    rec, _ = store.read_recording(call_id)
    if rec is None or rec.status != RecordingStatus.READY:
        return None
    for f in rec.files:
        if f.kind == FileKind.STREAM and f.stream == stream and f.parts == 1:
            return f.blob, f.size
    return None


def open_audio(store: RecordingStore, call_id: str, participant: str | None, range_header: str | None = None
               ) -> Audio:
    """One stream of the call as a WAV on the call clock. A ready recording's finished file is served as stored
    (byte-identical to the stitched WAV, and still there after the chunks expire); otherwise the chunks are
    stitched. Runs in a worker thread: the finished file's first request is made here, not on the event loop."""
    manifest = store.read_manifest_model(call_id)
    if manifest is None:
        if store.read_state(call_id) is not None:
            raise ApiError(404, "NoAudioYet", "the call exists but no audio has been recorded yet",
                           field="callConnectionId")
        raise not_found(call_id)
    if not manifest.streams:  # streaming has started, but no chunk has landed yet
        raise ApiError(404, "NoAudioYet", "the call exists but no audio has been recorded yet",
                       field="callConnectionId")
    stream = choose_stream(manifest, participant)
    filename = f"{call_id}-{stream}.wav"
    finished = _finished_file(store, call_id, stream)
    if finished is not None:
        blob, size = finished
        window = parse_range(range_header, size)
        first, last = window or (0, size - 1)
        try:
            return Audio(size, window, store.blob_pieces(blob, first, last - first + 1), filename)
        except ResourceNotFoundError:
            log.warning("finished file %s of a ready recording is missing; stitching the chunks instead", blob,
                        extra={"callConnectionId": call_id})
    try:
        wav = stitch(manifest, stream, store.read_blob)
    except StitchError as exc:
        raise ApiError(409, "NotStitchable", str(exc)) from None
    window = parse_range(range_header, wav.content_length)
    pieces = wav.body() if window is None else wav.byte_range(*window)
    return Audio(wav.content_length, window, pieces, filename)


def get_peaks(store: RecordingStore, call_id: str, points_per_second: float, participant: str | None,
              from_seq: int = 0) -> dict[str, Any]:
    """The waveform envelope of every stream (or of `participant`'s) on the call clock (function_app.peaks)."""
    rec, _ = store.read_recording(call_id)
    stored = store.read_blob(rec.peaks_blob) if rec is not None and rec.peaks_blob else None
    if rec is not None and rec.status == RecordingStatus.READY and stored is not None:
        doc = loads_peaks(stored)
        stream = None
        if participant:
            stream = pick_stream([(s.stream, s.participant_raw_id) for s in doc.streams], participant)
        manifest = store.read_manifest_model(call_id) if from_seq else None  # where chunk fromSeq starts
        return msgspec.to_builtins(  # type: ignore[no-any-return]
            resampled(doc, points_per_second, stream, manifest, from_seq))
    manifest = store.read_manifest_model(call_id)
    if manifest is None:
        if store.read_state(call_id) is not None:
            return msgspec.to_builtins(PeaksDocument(  # type: ignore[no-any-return]
                call_connection_id=call_id, points_per_second=points_per_second, scale=peaks.FULL_SCALE))
        raise not_found(call_id)
    stream = None
    if participant:
        stream = pick_stream([(s.stream, s.participant_raw_id) for s in manifest.streams], participant)
    try:
        doc = peaks_document(store, call_id, manifest, points_per_second, stream, from_seq=from_seq)
    except PeaksError as exc:
        raise ApiError(409, "NoEnvelope", f"this recording's manifest cannot be drawn: {exc}") from None
    return msgspec.to_builtins(doc)  # type: ignore[no-any-return]
