"""The waveform envelope of every stream of a call on the call clock, for the recordings page.

Peaks come from the chunks' blob metadata (the streamer computes them when it stores a chunk; common.peaks), so a
call of any length costs one manifest read and one blob listing. A chunk stored before peaks were kept is read
and computed here, up to MAX_COMPUTED_CHUNKS per answer; beyond that its span is answered as not known.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import msgspec
import numpy as np

from common import manifest as mf
from common import peaks, wav
from common.layout import peaks_blob
from common.recording import PeaksDocument, StreamPeaks
from common.slots import read_occupancy
from function_app.store import RecordingStore

MAX_COMPUTED_CHUNKS = 60  # ten minutes of one stream's audio read per answer, at most
MAX_PROPERTY_READS = 16  # chunks asked for one by one (fromSeq); more than this and one listing is cheaper
MAX_POINTS = 100 * 3600 * peaks.POINTS_PER_SECOND  # 100 hours of call clock: beyond it a manifest is not a call
MAX_SLOT_BYTES = 1 << 20

log = logging.getLogger(__name__)


class PeaksError(ValueError):
    """The manifest places audio where no envelope can be drawn (a chunk absurdly far along the call clock)."""


@dataclass(frozen=True)
class Grid:
    """Where a chunk's points go on the call clock: chunk k starts at sample k × samples_per_chunk (its length in
    whole samples, as stitching places it), and point i covers samples [i, i+1) × per_point. With chunk lengths
    that are not whole points (30-ms frames make 9.99-s chunks) a chunk's own points are off the grid by less than
    one point, and never add up along the call."""

    samples_per_chunk: int
    per_point: int

    def start(self, seq: int) -> int:
        return seq * self.samples_per_chunk // self.per_point

    def chunk_of(self, point: int) -> int:
        return point * self.per_point // self.samples_per_chunk


def grid(manifest: mf.Manifest) -> Grid | None:
    if not manifest.sample_rate or not manifest.chunk_seconds:
        return None
    per_point = max(1, manifest.sample_rate // peaks.POINTS_PER_SECOND)
    return Grid(max(1, round(manifest.chunk_seconds * manifest.sample_rate)), per_point)


def _slot_bytes(meta: dict[str, str], default: int) -> int | None:
    raw = meta.get("slotbytes")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 2 <= int(raw) <= MAX_SLOT_BYTES or int(raw) % 2:
        return None
    return int(raw)


def _chunk_levels(store: RecordingStore, chunk: mf.Chunk, meta: dict[str, str] | None, frame_bytes: int,
                  budget: list[int]) -> np.ndarray | None:
    stored = peaks.decode(meta) if meta is not None else None
    if stored is not None or budget[0] <= 0:
        return stored
    budget[0] -= 1
    got = store.read_chunk(chunk.blob)
    if got is None:
        return None
    data, blob_meta = got
    slot = _slot_bytes(blob_meta, frame_bytes)
    if slot is None:
        log.warning("chunk %s has no usable slot size; its peaks are not known", chunk.blob)
        return None
    try:
        rate, _, pcm = wav.read(data)
        return peaks.levels(pcm, read_occupancy(blob_meta, len(pcm), slot), slot, rate)
    except ValueError as exc:
        log.warning("chunk %s is unreadable (%s); its peaks are not known", chunk.blob, exc)
        return None


def stream_levels(store: RecordingStore, manifest: mf.Manifest, g: Grid | None, stream: mf.Stream,
                  listing: dict[str, dict[str, str]], budget: list[int], from_point: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """-> (levels, known) at POINTS_PER_SECOND from point `from_point` (0: the clock origin) to the stream's last
    landed audio, on the manifest's grid `g`."""
    if g is None:
        return np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=bool)
    frame_bytes = manifest.frame_bytes or 2
    placed: list[tuple[int, np.ndarray | None, int]] = []
    first_seq = g.chunk_of(from_point)
    for c in sorted((c for c in stream.chunks if c.seq >= first_seq), key=lambda c: c.seq):
        start = g.start(c.seq)
        if start > MAX_POINTS:
            raise PeaksError(f"chunk {c.seq} starts {start // peaks.POINTS_PER_SECOND} s into the call")
        span = min(g.start(c.seq + 1) - start, math.ceil(c.duration_ms * peaks.POINTS_PER_SECOND / 1000))
        placed.append((start - from_point, _chunk_levels(store, c, listing.get(c.blob), frame_bytes, budget), span))
    total = max((start + span for start, _, span in placed), default=0)
    values = np.full(max(0, total), peaks.NO_AUDIO, dtype=np.uint8)
    known = np.ones(max(0, total), dtype=bool)
    for start, got, span in placed:
        skip = max(0, -start)  # the chunk that holds from_point begins before it
        lo, hi = start + skip, start + span
        if hi <= lo:
            continue
        if got is None:
            known[lo:hi] = False
            continue
        part = got[skip:span]
        values[lo:lo + len(part)] = part
        known[lo + len(part):hi] = False  # stored peaks shorter than the chunk: the rest is not known
    return values, known


def _factor(points_per_second: float) -> int:
    return max(1, round(peaks.POINTS_PER_SECOND / points_per_second))


def _levels(values: np.ndarray, known: np.ndarray) -> list[int | None]:
    out: list[int | None] = np.where(values == peaks.NO_AUDIO, -1, values.astype(np.int16)).tolist()
    for i in np.flatnonzero(~known).tolist():
        out[i] = None
    return out


def _first_point(g: Grid | None, from_seq: int, factor: int) -> int:
    """The point an answer from chunk `from_seq` starts at: where that chunk starts, rounded down to a whole
    downsampled point."""
    if g is None or from_seq <= 0:
        return 0
    return min(g.start(from_seq), MAX_POINTS) // factor * factor


def peaks_document(store: RecordingStore, call_id: str, manifest: mf.Manifest, points_per_second: float,
                   stream: str | None = None, *, max_computed: int = MAX_COMPUTED_CHUNKS,
                   from_seq: int = 0) -> PeaksDocument:
    """Every stream's envelope (or one stream's), at `points_per_second` (≤ POINTS_PER_SECOND: a whole divisor
    of it is used; the answer says which), from chunk `from_seq` on (`firstPoint` says where its levels start):
    a page following a live call asks only for what is new, which costs a request per new chunk instead of a
    listing of the whole call."""
    factor = _factor(points_per_second)
    g = grid(manifest)
    first = _first_point(g, from_seq, factor)
    chosen = [s for s in manifest.streams if stream is None or s.stream == stream]
    first_seq = g.chunk_of(first) if g is not None else 0
    recent = [c.blob for s in chosen for c in s.chunks if c.seq >= first_seq]
    if not chosen:
        listing = {}
    elif first > 0 and len(recent) <= MAX_PROPERTY_READS:
        listing = store.chunk_properties(recent)
    else:
        listing = store.chunk_metadata(call_id, stream)
    budget = [max_computed]
    out = []
    for s in chosen:
        values, known = peaks.downsample(*stream_levels(store, manifest, g, s, listing, budget, first), factor)
        out.append(StreamPeaks(stream=s.stream, participant_raw_id=s.participant_raw_id, levels=_levels(values, known)))
    return PeaksDocument(call_connection_id=call_id, clock_origin=manifest.clock_origin,
                         sample_rate=manifest.sample_rate, points_per_second=peaks.POINTS_PER_SECOND / factor,
                         scale=peaks.FULL_SCALE, streams=out, computed_chunks=max_computed - budget[0],
                         first_point=first // factor)


def resampled(doc: PeaksDocument, points_per_second: float, stream: str | None = None,
              manifest: mf.Manifest | None = None, from_seq: int = 0) -> PeaksDocument:
    """A stored full-resolution document (the finished recording's) at `points_per_second`, for one stream or
    all, from chunk `from_seq` of `manifest` on."""
    factor = _factor(points_per_second)
    first = _first_point(grid(manifest) if manifest else None, from_seq, factor)
    out = []
    for s in doc.streams:
        if stream is not None and s.stream != stream:
            continue
        levels = s.levels[first:]
        known = np.array([v is not None for v in levels], dtype=bool)
        values = np.array([peaks.NO_AUDIO if v is None or v < 0 else v for v in levels], dtype=np.uint8)
        out.append(msgspec.structs.replace(s, levels=_levels(*peaks.downsample(values, known, factor))))
    return msgspec.structs.replace(doc, streams=out, points_per_second=doc.points_per_second / factor,
                                   computed_chunks=0, first_point=first // factor)


def write_finished(store: RecordingStore, manifest: mf.Manifest, revision: int) -> str:
    """At finalization: every stream's peaks at full resolution, kept beside the finished files (the chunks carry
    them while the call runs, and may be expired by the lifecycle rule long before the files). -> its blob."""
    call_id = manifest.call_connection_id
    doc = peaks_document(store, call_id, manifest, peaks.POINTS_PER_SECOND, max_computed=1 << 30)
    name = peaks_blob(call_id, revision)
    store.write_json(name, msgspec.json.encode(doc))
    return name
