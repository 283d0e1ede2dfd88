"""The finished files of a recording: one WAV per stream and, for unmixed calls, one multichannel WAV — written
in one pass over the chunks, with memory bounded by a few chunks and one block per file whatever the call length.

Every stream is planned exactly as the stitched download (`function_app.stitch`): chunk seq k at byte offset
k × chunk bytes on the call clock, gaps and missing chunks as silence, so a stream's finished PCM is byte-identical
to `GET /api/recordings/{id}/audio`. The multichannel file puts stream i in channel i (streams in order of first
received frame), all on the call clock, shorter streams padded with silence.

Each chunk is downloaded once (and checked against the sha256 the manifest lists), then fed to its stream's file
and to the multichannel interleaver. Files are uploaded as blocks (`BLOCK_BYTES`) and committed with
If-None-Match: * — a finished file is written once and never replaced; an uncommitted file is invisible, so a
finalizer that dies leaves nothing half-visible. Block ids are deterministic, so a second finalizer writing the same
file stages the same blocks.

Server-side assembly (Put Block From URL) would save the upload of the per-stream files, but Azurite answers it
with APINotImplemented, and the chunks must be downloaded anyway to check their hashes and compute the files'.

A file larger than WAV's 4 GiB limit is split into numbered parts at chunk boundaries (`{name}.001.wav`, …),
each a complete WAV; concatenating their PCM gives the whole stream.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
from dataclasses import dataclass, field

import numpy as np

from common import manifest as mf
from common import wav
from common.layout import MULTICHANNEL, final_blob
from common.recording import ChannelMapEntry, FileKind, FinishedFile, chunks_digest_of
from common.slots import read_occupancy
from function_app.completeness import StreamAudio
from function_app.stitch import StitchedWav, StitchError, stitch
from function_app.store import FileExists, RecordingStore

BLOCK_BYTES = 4 << 20

log = logging.getLogger(__name__)


class ChunkReader:
    """Reads chunks for the finalizer: each blob once per use, checked against the manifest's sha256, with its
    slot occupancy (blob metadata) kept to count received audio and find a stream's first frame."""

    def __init__(self, store: RecordingStore, manifest: mf.Manifest):
        self.store = store
        self.expected = {c.blob: c for s in manifest.streams for c in s.chunks}
        self.frame_bytes = manifest.frame_bytes
        self.mismatched: list[str] = []
        self.missing: list[str] = []
        self.occupied: dict[str, tuple[int, int | None, int]] = {}  # blob -> (slots held, first slot, slot bytes)
        self.reads = 0

    def __call__(self, name: str) -> bytes | None:
        got = self.store.read_chunk(name)
        self.reads += 1
        if got is None:
            if name not in self.missing:
                self.missing.append(name)
            return None
        data, meta = got
        entry = self.expected.get(name)
        if entry is not None and hashlib.sha256(data).hexdigest() != entry.sha256 and name not in self.mismatched:
            self.mismatched.append(name)
            log.error("chunk %s differs from the sha256 the manifest lists; its stored bytes are used", name)
        self.occupied[name] = _occupancy(meta, data, self.frame_bytes)
        return data


def _occupancy(meta: dict[str, str], data: bytes, frame_bytes: int | None) -> tuple[int, int | None, int]:
    """(slots holding a received frame, the first of them, slot bytes) of a stored chunk."""
    pcm_bytes = max(0, len(data) - wav.HEADER_BYTES)
    # no slot size recorded (chunks of early versions): the call's frame length, else count samples
    slot_bytes = int(meta.get("slotbytes") or 0) or frame_bytes or 2
    try:
        held = np.flatnonzero(read_occupancy(meta, pcm_bytes, slot_bytes))
    except ValueError as exc:  # a damaged slot map: what is stored counts as received (as for chunks without one)
        log.error("a chunk's slot map is unreadable (%s); all its audio counts as received", exc)
        held = np.arange(-(-pcm_bytes // slot_bytes))
    return int(held.size), (int(held[0]) if held.size else None), slot_bytes


class FileSink:
    """One finished file (or part) being written: hashes every byte, stages blocks, commits once."""

    def __init__(self, store: RecordingStore, name: str, data_bytes: int, rate: int, channels: int, *,
                 exists: dict[str, str] | None, plan: str):
        self.store = store
        self.name = name
        self.plan = plan  # block ids carry the plan: finalizers of different chunk sets never share a block
        self.size = wav.HEADER_BYTES + data_bytes
        self.exists = exists  # the committed file's metadata when it is already there: only hashed, not written
        self.sha = hashlib.sha256()
        self.buf = bytearray()
        self.blocks: list[str] = []
        self.staged = 0
        self.write(wav.header(data_bytes, rate, channels))

    def write(self, data: bytes | memoryview) -> None:
        self.sha.update(data)
        if self.exists is None:
            self.buf += data
            if len(self.buf) >= BLOCK_BYTES:
                self._stage()

    def _stage(self) -> None:
        block_id = base64.b64encode(f"{self.plan}-{len(self.blocks):08d}".encode()).decode()
        self.store.stage_block(self.name, block_id, bytes(self.buf))
        self.blocks.append(block_id)
        self.staged += 1
        self.buf.clear()

    def close(self) -> bool:
        """Commit (unless already there); False when the stored file has other content than this plan made —
        an earlier finalizer built it from other chunks. It is never replaced: the caller moves to a new
        revision."""
        digest = self.sha.hexdigest()
        if self.exists is None:
            if self.buf or not self.blocks:
                self._stage()
            try:
                self.store.commit_file(self.name, self.blocks, {"sha256": digest})
            except FileExists:
                self.exists = self.store.file_metadata(self.name) or {}
        if self.exists is not None and self.exists.get("sha256") != digest:
            log.warning("finished file %s exists with other content (sha256 %s, this plan %s); kept as stored",
                        self.name, self.exists.get("sha256"), digest)
            return False
        return True

    @property
    def digest(self) -> str:
        return self.sha.hexdigest()


@dataclass
class _Output:
    kind: FileKind
    name: str  # stream id or MULTICHANNEL
    participant_raw_id: str | None
    channels: int
    total_bytes: int  # PCM bytes of the whole file, all parts
    part_bytes: int  # PCM bytes per part (a multiple of the chunk bytes × channels), the last part may be shorter
    sinks: list[FileSink] = field(default_factory=list)
    files: list[FinishedFile] = field(default_factory=list)

    @property
    def parts(self) -> int:
        return max(1, math.ceil(self.total_bytes / self.part_bytes))


@dataclass(frozen=True)
class Assembled:
    files: list[FinishedFile]
    channel_map: list[ChannelMapEntry]
    streams: list[StreamAudio]
    mismatched_chunks: list[str]
    missing_chunks: list[str]
    chunk_reads: int
    blocks_staged: int
    conflicting_files: list[str] = field(default_factory=list)  # stored with other content: use a new revision


def _first_audio(plan: StitchedWav, reader: ChunkReader) -> int:
    """Sample index on the call clock of the stream's first received frame."""
    if not plan.blobs:
        return 1 << 62
    seq = min(plan.blobs)
    name = plan.blobs[seq]
    if name not in reader.occupied:
        plan.pcm_at(seq)  # reads it through the reader
    _, first, slot_bytes = reader.occupied.get(name, (0, None, 1))
    offset = (first or 0) * slot_bytes // 2 if first is not None else plan.chunk_bytes // 2
    return seq * (plan.chunk_bytes // 2) + offset


def assemble(store: RecordingStore, manifest: mf.Manifest, *, multichannel: bool,
             max_data_bytes: int = wav.MAX_DATA_BYTES, revision: int = 1) -> Assembled:
    """Write the finished files of `manifest` as `revision` (idempotent: files already committed are hashed,
    not written; one with other content is named in `conflicting_files`)."""
    reader = ChunkReader(store, manifest)
    call_id = manifest.call_connection_id
    plans: list[tuple[mf.Stream, StitchedWav]] = []
    for s in manifest.streams:
        if not s.chunks:
            continue
        try:
            plan = stitch(manifest, s.stream, reader, max_data_bytes=None)
        except StitchError as exc:
            log.error("stream %s of %s cannot be finished: %s", s.stream, call_id, exc)
            continue
        if plan.data_bytes:
            plans.append((s, plan))
    if not plans:
        return Assembled([], [], [], reader.mismatched, reader.missing, reader.reads, 0)
    order = sorted(plans, key=lambda sp: (_first_audio(sp[1], reader), sp[0].stream))
    rate, chunk_bytes = order[0][1].sample_rate, order[0][1].chunk_bytes

    def output(kind: FileKind, name: str, participant: str | None, channels: int, total: int) -> _Output:
        per_part = max(1, max_data_bytes // (chunk_bytes * channels)) * chunk_bytes * channels
        return _Output(kind, name, participant, channels, total, per_part)

    outputs = [output(FileKind.STREAM, s.stream, s.participant_raw_id, 1, p.data_bytes) for s, p in order]
    last_seq = max(p.last_seq for _, p in order)
    k = len(order)
    multi: _Output | None = None
    if multichannel:
        tail = max(len(p.last_pcm) for _, p in order if p.last_seq == last_seq)
        multi = output(FileKind.MULTICHANNEL, MULTICHANNEL, None, k, (last_seq * chunk_bytes + tail) * k)
    plan_tag = chunks_digest_of(manifest)[:12]
    for out in [*outputs, *([multi] if multi else [])]:
        _open_parts(store, call_id, out, rate, revision, plan_tag)

    written = [0] * len(outputs)
    multi_written = 0
    for seq in range(last_seq + 1):
        blocks = [p.pcm_at(seq) for _, p in order]
        for i, pcm in enumerate(blocks):
            if pcm:
                written[i] = _feed(outputs[i], written[i], pcm)
        if multi is not None:
            frames = max(len(b) for b in blocks) // 2
            if frames:
                mix = np.zeros((frames, k), dtype="<i2")
                for i, pcm in enumerate(blocks):
                    if pcm:
                        mix[: len(pcm) // 2, i] = np.frombuffer(pcm, dtype="<i2")
                multi_written = _feed(multi, multi_written, memoryview(mix.tobytes()))

    files: list[FinishedFile] = []
    conflicting: list[str] = []
    blocks_staged = 0
    for out in [*outputs, *([multi] if multi else [])]:
        for part, sink in enumerate(out.sinks, start=1):
            if not sink.close():
                conflicting.append(sink.name)
            digest = sink.digest
            blocks_staged += sink.staged
            data_bytes = sink.size - wav.HEADER_BYTES
            files.append(FinishedFile(
                kind=out.kind, stream=out.name if out.kind == FileKind.STREAM else None,
                participant_raw_id=out.participant_raw_id, channels=out.channels, sample_rate=rate,
                duration_ms=round(data_bytes / 2 / out.channels / rate * 1000), size=sink.size, sha256=digest,
                blob=sink.name, part=part, parts=out.parts,
                offset_ms=round((part - 1) * out.part_bytes / 2 / out.channels / rate * 1000)))
    channel_map = [ChannelMapEntry(channel=i, stream=s.stream, participant_raw_id=s.participant_raw_id)
                   for i, (s, _) in enumerate(order)] if multi is not None else []
    streams = []
    for s, p in order:
        held = 0
        for name in p.blobs.values():
            n, _, slot_bytes = reader.occupied.get(name, (0, None, 1))
            held += n * slot_bytes
        streams.append(StreamAudio(s.stream, s.participant_raw_id, round(p.data_bytes / 2 / rate * 1000),
                                   round(held / 2 / rate * 1000)))
    return Assembled(files, channel_map, streams, reader.mismatched, reader.missing, reader.reads, blocks_staged,
                     conflicting)


def _open_parts(store: RecordingStore, call_id: str, out: _Output, rate: int, revision: int, plan: str) -> None:
    for part in range(1, out.parts + 1):
        name = final_blob(call_id, out.name, part, out.parts, revision)
        size = min(out.part_bytes, out.total_bytes - (part - 1) * out.part_bytes)
        out.sinks.append(FileSink(store, name, size, rate, out.channels, exists=store.file_metadata(name),
                                  plan=plan))


def _feed(out: _Output, written: int, data: bytes | memoryview) -> int:
    """Write `data` at PCM offset `written` of `out`, across a part boundary if it falls inside."""
    view = memoryview(data)
    while view:
        part = written // out.part_bytes
        room = out.part_bytes - written % out.part_bytes
        out.sinks[part].write(view[:room])
        written += min(room, len(view))
        view = view[room:]
    return written
