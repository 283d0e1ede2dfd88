"""The waveform envelope of every stream of a call on the call clock, for the recordings page.

Peaks come from the chunks' blob metadata (the streamer computes them when it stores a chunk; common.peaks), so a
call of any length costs one manifest read and one blob listing. A chunk stored before peaks were kept is read
and computed here, up to MAX_COMPUTED_CHUNKS per answer; beyond that its span is answered as not known.
"""

from __future__ import annotations

import logging
import math

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

log = logging.getLogger(__name__)


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
    try:
        rate, _, pcm = wav.read(data)
    except ValueError as exc:
        log.warning("chunk %s is unreadable (%s); its peaks are not known", chunk.blob, exc)
        return None
    slot = int(blob_meta.get("slotbytes") or frame_bytes)
    return peaks.levels(pcm, read_occupancy(blob_meta, len(pcm), slot), slot, rate)


def _per_chunk(manifest: mf.Manifest) -> int:
    return round((manifest.chunk_seconds or 0) * peaks.POINTS_PER_SECOND)


def stream_levels(store: RecordingStore, manifest: mf.Manifest, stream: mf.Stream, listing: dict[str, dict[str, str]],
                  budget: list[int], from_seq: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """-> (levels, known) at POINTS_PER_SECOND from chunk `from_seq` (0: the clock origin) to the stream's last
    landed audio."""
    per_chunk = _per_chunk(manifest)
    frame_bytes = manifest.frame_bytes or 2
    placed: list[tuple[int, np.ndarray | None, int]] = []
    for c in sorted((c for c in stream.chunks if c.seq >= from_seq), key=lambda c: c.seq):
        got = _chunk_levels(store, c, listing.get(c.blob), frame_bytes, budget)
        span = len(got) if got is not None else math.ceil(c.duration_ms * peaks.POINTS_PER_SECOND / 1000)
        placed.append(((c.seq - from_seq) * per_chunk, got, min(span, per_chunk)))
    total = max((start + span for start, _, span in placed), default=0)
    values = np.full(total, peaks.NO_AUDIO, dtype=np.uint8)
    known = np.ones(total, dtype=bool)
    for start, got, span in placed:
        if got is None:
            known[start:start + span] = False
        else:
            values[start:start + span] = got[:span]
    return values, known


def _factor(points_per_second: float) -> int:
    return max(1, round(peaks.POINTS_PER_SECOND / points_per_second))


def _levels(values: np.ndarray, known: np.ndarray) -> list[int | None]:
    out: list[int | None] = np.where(values == peaks.NO_AUDIO, -1, values.astype(np.int16)).tolist()
    for i in np.flatnonzero(~known).tolist():
        out[i] = None
    return out


def _aligned(from_seq: int, per_chunk: int, factor: int) -> int:
    """The latest chunk at or before `from_seq` whose first point starts a downsampled point."""
    while from_seq > 0 and (from_seq * per_chunk) % factor:
        from_seq -= 1
    return from_seq


def peaks_document(store: RecordingStore, call_id: str, manifest: mf.Manifest, points_per_second: float,
                   stream: str | None = None, *, max_computed: int = MAX_COMPUTED_CHUNKS,
                   from_seq: int = 0) -> PeaksDocument:
    """Every stream's envelope (or one stream's), at `points_per_second` (≤ POINTS_PER_SECOND: a whole divisor
    of it is used; the answer says which), from chunk `from_seq` on (`firstPoint` says where its levels start):
    a page following a live call asks only for what is new, which costs a request per new chunk instead of a
    listing of the whole call."""
    factor = _factor(points_per_second)
    per_chunk = _per_chunk(manifest)
    from_seq = _aligned(from_seq, per_chunk, factor)
    chosen = [s for s in manifest.streams if stream is None or s.stream == stream]
    recent = [c.blob for s in chosen for c in s.chunks if c.seq >= from_seq]
    if not chosen:
        listing = {}
    elif from_seq > 0 and len(recent) <= MAX_PROPERTY_READS:
        listing = store.chunk_properties(recent)
    else:
        listing = store.chunk_metadata(call_id, stream)
    budget = [max_computed]
    out = []
    for s in chosen:
        values, known = peaks.downsample(*stream_levels(store, manifest, s, listing, budget, from_seq), factor)
        out.append(StreamPeaks(stream=s.stream, participant_raw_id=s.participant_raw_id, levels=_levels(values, known)))
    return PeaksDocument(call_connection_id=call_id, clock_origin=manifest.clock_origin,
                         sample_rate=manifest.sample_rate, points_per_second=peaks.POINTS_PER_SECOND / factor,
                         scale=peaks.FULL_SCALE, streams=out, computed_chunks=max_computed - budget[0],
                         first_point=from_seq * per_chunk // factor)


def resampled(doc: PeaksDocument, points_per_second: float, stream: str | None = None,
              chunk_seconds: float | None = None, from_seq: int = 0) -> PeaksDocument:
    """A stored full-resolution document (the finished recording's) at `points_per_second`, for one stream or
    all, from chunk `from_seq` on."""
    factor = max(1, round(_factor(points_per_second) * doc.points_per_second / peaks.POINTS_PER_SECOND))
    per_chunk = round((chunk_seconds or 0) * doc.points_per_second)
    from_seq = _aligned(from_seq, per_chunk, factor) if per_chunk else 0
    first = from_seq * per_chunk
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
