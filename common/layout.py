"""Blob layout of a recording — the one contract between the streamer (writer) and retrieval (reader).

    {container}/{callConnectionId}/manifest.json
    {container}/{callConnectionId}/call-state.json          (control plane: call lifecycle)
    {container}/{callConnectionId}/{stream}/{seq:06d}.wav   (self-contained WAV chunks)
    {container}/{callConnectionId}/recording.json           (control plane: the finished recording's document)
    {container}/{callConnectionId}/final/{name}.wav         (finished files, written once: `name` is a stream id or
                                                             `multichannel`; `{name}.{part:03d}.wav` when split,
                                                             `{name}.r{n}….wav` for revision n ≥ 2)
    {container}/{callConnectionId}/peaks.json               (control plane: the finished recording's waveform peaks,
                                                             `peaks.r{n}.json` for revision n ≥ 2: the chunks, which
                                                             carry them while the call runs, may expire first)
    {container}/_calls/…                                     (control plane: empty index blobs, newest first,
                                                              for GET /api/recordings; `_` is not a call-id start)
    {container}/_unfinished/{callConnectionId}               (control plane: empty marker while a call's recording
                                                              is not ready and announced; the sweep lists these)
    queue `recording-finalize`                               (either plane: "this call may be ready to finalize")

`stream` is `mixed`, or `p-` + base64url(participantRawId) without padding, which is URL- and path-safe and
reversible. Chunk `seq` k covers [clockOrigin + k*chunkSeconds, clockOrigin + (k+1)*chunkSeconds) on the call clock
for every stream, so the same seq of two participants is the same wall-clock span.
"""

from __future__ import annotations

import base64
import re

MIXED_STREAM = "mixed"
MANIFEST_NAME = "manifest.json"
CALL_STATE_NAME = "call-state.json"
RECORDING_NAME = "recording.json"
FINAL_FOLDER = "final"
MULTICHANNEL = "multichannel"  # never a stream id (those are `mixed` or start with `p-`)
FINALIZE_QUEUE = "recording-finalize"
STREAMING_RESTART_QUEUE = "streaming-restart"  # the control plane's own: restarts of failed streaming
UNFINISHED_PREFIX = "_unfinished/"
CHUNK_TAG = ("recorder-kind", "chunk")  # blob index tag on every chunk: the chunk lifecycle rule matches it
DEFAULT_CONTAINER = "recordings"

_PARTICIPANT_PREFIX = "p-"
# ACS call connection ids are GUID-like; we allow a conservative superset that is safe in blob paths and URLs.
# fullmatch, not `$`: `$` also matches before a trailing newline, and "abc\n" must not become a blob folder.
_CALL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_PARTICIPANT_ID = 256  # ACS raw ids are ~80 characters; this keeps blob names well under 1024


def is_valid_call_id(call_id: str | None) -> bool:
    return (isinstance(call_id, str) and _CALL_ID_RE.fullmatch(call_id) is not None
            and ".." not in call_id)


def stream_id(participant_raw_id: str | None) -> str:
    """Name of the stream a frame belongs to: `mixed` when there is no participant."""
    if not participant_raw_id:
        return MIXED_STREAM
    encoded = base64.urlsafe_b64encode(participant_raw_id.encode("utf-8")).rstrip(b"=").decode("ascii")
    return _PARTICIPANT_PREFIX + encoded


def chunk_blob(call_id: str, stream: str, seq: int) -> str:
    return f"{call_id}/{stream}/{seq:06d}.wav"


def manifest_blob(call_id: str) -> str:
    return f"{call_id}/{MANIFEST_NAME}"


def call_state_blob(call_id: str) -> str:
    return f"{call_id}/{CALL_STATE_NAME}"


def recording_blob(call_id: str) -> str:
    return f"{call_id}/{RECORDING_NAME}"


def final_blob(call_id: str, name: str, part: int = 1, parts: int = 1, revision: int = 1) -> str:
    """A finished file: `name` is a stream id or MULTICHANNEL; a file split into parts numbers them from 1; a
    later revision of the recording (audio that landed after it was first finalized) has its own names."""
    rev = "" if revision == 1 else f".r{revision}"
    suffix = "" if parts == 1 else f".{part:03d}"
    return f"{call_id}/{FINAL_FOLDER}/{name}{rev}{suffix}.wav"


def peaks_blob(call_id: str, revision: int = 1) -> str:
    """The finished recording's waveform peaks (common.recording.PeaksDocument at full resolution)."""
    rev = "" if revision == 1 else f".r{revision}"
    return f"{call_id}/peaks{rev}.json"


def unfinished_marker(call_id: str) -> str:
    return f"{UNFINISHED_PREFIX}{call_id}"
