"""Places frames on the call clock by their timestamps and cuts the streams into chunks.

The call clock is a grid of *slots*, one per frame (20 ms for ACS), counted from `origin`. Chunk k is slots
[k*F, (k+1)*F) for every stream of the call (F = frames per chunk), so chunk k of two participants covers the
same wall-clock span. Each stream keeps a cursor (the slot it expects next):

* timestamp within ±10 ms of the cursor, or later than any seen but running slow (clock drift) → at the cursor;
* further ahead → a gap: the skipped slots stay silent and are recorded;
* behind → a late frame: written into its slot if that is still open and empty, else dropped as a duplicate or
  too late. Neither ever moves the cursor back, so the timeline never shifts.

Timestamps are checked against the receive clock (`arrival`, wall time when the frame arrived), because one wild
value must not decide where the rest of the call goes:

* a stream's first frame (and so the call's clock origin) must lie within `MAX_CLOCK_SKEW` behind and
  `FUTURE_TOLERANCE` ahead of the receive clock (a first frame dated 2099, 2000 or missing would otherwise strand
  every honest frame after it: they would all be "late");
* a jump ahead is believed only if it does not claim to be from the future: the frame's `ts - arrival` may exceed
  the call's reference offset (set by frames that arrived in sequence), or the receive clock when the reference
  lags it (a stale first frame set it), by at most `FUTURE_TOLERANCE`. Audio cannot
  arrive before it was captured, so a larger lead is a bad timestamp and the frame goes at the cursor. The
  reference itself may rise (a frame that arrived sooner than the others) to at most `FUTURE_TOLERANCE` ahead of
  the receive clock, so jumps that each lead a little cannot creep the call ahead of it: the silence a run of
  bogus jumps can make us write stays bounded by the time that really passed;
* a frame dated more than `MAX_CLOCK_SKEW` behind the reference is not a late frame but a wild timestamp (one
  dated 2000 in mid-call): counted, and placed right after the previous frame rather than dropped before the
  origin.

Anything a timestamp cannot be trusted for is counted (`bad_timestamps`) and the frame is placed right after the
previous one: audio is kept, position is best effort.

A chunk is sealed when a frame for a later chunk arrives, when its stream has been idle for a while (so the
chunk lands within seconds), or at close, always trimmed to its last written slot (readers pad a short chunk with
silence, so a jump never costs a chunk of zeros). A stream that resumes inside an early-sealed chunk writes a
second part of the same chunk with a mask of its slots; the store fills only the slots still empty
(`RecordingStore.put_chunk`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from common import wav
from common.layout import MAX_PARTICIPANT_ID, stream_id
from streamer.protocol import AudioFormat

_wall = time.time
# Unmixed audio carries the 4 dominant speakers at any moment, and in a meeting they rotate: an hour of a large
# meeting can bring dozens of distinct speakers. Idle streams hold no buffer (sealed after 1 s), so the cap only
# bounds bookkeeping against a peer inventing ids; frames beyond it are counted, never "invalid".
MAX_STREAMS = 256
MAX_CAPPED_IDS = 16  # participant ids beyond the cap that the manifest names (the rest are only counted)
MAX_CLOCK_SKEW = 60.0  # seconds a first timestamp may lag the receive clock (NTP keeps honest skew well under 1 s)
_TRUSTED_JUMP = float("inf")
FUTURE_TOLERANCE = 2.0  # seconds a timestamp may lead the receive clock beyond the call's reference offset


@dataclass(slots=True)
class SealedChunk:
    stream: str
    participant: str | None
    seq: int
    wav: bytes
    mask: bytes  # one byte per slot: 1 where this part wrote audio
    start: float  # epoch seconds of the chunk's first sample (grid start)
    duration: float  # seconds of audio in this WAV
    final: bool
    last_arrival: float  # wall time the newest frame of this part arrived (chunk latency is measured from it)


@dataclass(slots=True)
class TimelineStats:
    frames: int = 0
    late_placed: int = 0
    late_dropped: int = 0
    duplicates: int = 0
    drift_corrections: int = 0
    bad_timestamps: int = 0
    gap_slots: int = 0
    capped_frames: int = 0  # frames of participants beyond MAX_STREAMS or with an overlong id (dropped, counted)
    before_origin: int = 0  # frames dated before the call clock's origin (dropped, counted; session not complete)
    capped_ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _LatePart:
    pcm: bytearray
    mask: bytearray
    created: float  # wall time: emitted a second after the first late frame, or at close
    last_idx: int = -1


_MAX_LATE_PARTS = 4  # sealed chunks one stream gathers late frames for at once


@dataclass(slots=True)
class _Stream:
    name: str
    participant: str | None
    chunk: int = -1
    buf: np.ndarray | None = None  # the open chunk's PCM, preallocated (calloc: pages appear as they are written)
    view: memoryview | None = None  # byte view of `buf`: slice assignment is ~10x cheaper than numpy's
    mask: bytearray | None = None  # one byte per slot of the open chunk: 1 = written
    dirty: bool = False
    last_idx: int = -1  # highest slot index written in the open chunk part
    next_slot: int | None = None
    max_ts: float = float("-inf")
    last_arrival: float = 0.0
    gaps: list[list[int]] = field(default_factory=list)  # [start_slot, end_slot)
    held: tuple[bytes, bool, float] | None = None  # first frame with an implausible timestamp, placed by the next
    lead: list[list[int]] = field(default_factory=list)  # slots of the first chunk before the first frame
    late: dict[int, _LatePart] = field(default_factory=dict)  # late frames for chunks already sealed, by seq


class CallTimeline:
    def __init__(self, fmt: AudioFormat, chunk_seconds: float, on_chunk: Callable[[SealedChunk], None], *,
                 origin: float | None = None, jitter_seconds: float = 0.010, max_jump_seconds: float = 600.0):
        self.fmt = fmt
        self.frame_bytes = fmt.frame_bytes
        self.frame_seconds = fmt.frame_seconds
        self.frames_per_chunk = max(1, round(chunk_seconds / self.frame_seconds))
        self.chunk_seconds = self.frames_per_chunk * self.frame_seconds
        self.origin = origin
        self._tol = jitter_seconds / self.frame_seconds + 1e-3  # epoch floats carry ~0.2 µs of error
        self._max_jump = max_jump_seconds / self.frame_seconds
        self._on_chunk = on_chunk
        self._streams: dict[str | None, _Stream] = {}
        self._clock_slot: int | None = None  # the newest slot any stream of the call has reached
        self._ref: float | None = None  # timestamp minus arrival of the least-delayed in-sequence frame
        self._ref_cap = float("inf")  # how far `_ref` may rise: FUTURE_TOLERANCE ahead of the receive clock
        self.stats = TimelineStats()

    # -- per frame ------------------------------------------------------------------------------------------
    def add(self, participant: str | None, pcm: bytes, ts: float | None, silent: bool,
            arrival: float | None = None) -> None:
        """Place one frame. `arrival` is the wall time it arrived; None skips the receive-clock checks (unit tests
        of pure placement, and frames placed by `_release`)."""
        st = self._streams.get(participant)
        if st is None:
            st = self._new_stream(participant)
            if st is None:
                return
        st.last_arrival = _wall() if arrival is None else arrival
        self.stats.frames += 1
        nxt = st.next_slot
        if arrival is not None:
            # Fast path: a frame of a known stream that does not lead the reference offset, nor lag it by more
            # than any clock could, needs no more checks.
            ref = self._ref
            if ts is None or nxt is None or ref is None or not ref - MAX_CLOCK_SKEW <= ts - arrival <= ref:
                ts = self._vet(st, pcm, ts, silent, arrival)
                if ts is None:
                    return
                nxt = st.next_slot
        elif ts is None:
            ts = self._cursor_ts(nxt, None)
        # Without a receive clock, a jump beyond max_jump_seconds is taken for a bad timestamp; with one, the
        # checks above already judged it (a speaker silent for half an hour resumes where the clock says).
        max_jump = self._max_jump if arrival is None else _TRUSTED_JUMP
        if self.origin is None:
            self.origin = ts
        pos = (ts - self.origin) / self.frame_seconds
        if nxt is None:  # a stream's first frame: on the call clock, unless it is wildly off the other streams
            slot = round(pos)
            if self._clock_slot is not None and abs(slot - self._clock_slot) > max_jump:
                self.stats.bad_timestamps += 1
                slot = self._clock_slot
        else:
            d = pos - nxt
            tol = self._tol
            if -tol <= d <= tol:
                slot = nxt
            elif d > 0:
                if d > max_jump:
                    self.stats.bad_timestamps += 1
                    slot = nxt
                else:
                    slot = nxt + round(d)
            elif ts > st.max_ts:
                self.stats.drift_corrections += 1
                slot = nxt
            else:
                slot = nxt + round(d)
        if ts > st.max_ts:
            st.max_ts = ts
        if slot < 0:  # before the call clock's origin (another session claimed it later): cannot be placed
            self.stats.before_origin += 1
            return
        fb = self.frame_bytes
        if nxt is not None and slot > nxt:
            st.gaps.append([nxt, slot])
            self.stats.gap_slots += slot - nxt
        elif nxt is None and slot > 0:
            # before a stream's first frame there is silence; a frame it overtook may still fill it
            st.lead = [[max(0, slot - self.frames_per_chunk), slot]]
        late = nxt is not None and slot < nxt
        if len(pcm) <= fb:
            self._write(st, slot, pcm, silent, late)
            n_slots = 1
        else:
            n_slots = -(-len(pcm) // fb)
            for i in range(n_slots):
                self._write(st, slot + i, pcm[i * fb:(i + 1) * fb], silent, late)
        end = slot + n_slots
        if nxt is None or end > nxt:
            st.next_slot = end
            if self._clock_slot is None or end > self._clock_slot:
                self._clock_slot = end

    def _new_stream(self, participant: str | None) -> _Stream | None:
        if participant is not None and len(participant) > MAX_PARTICIPANT_ID:
            # no blob name can hold it: dropped and counted like a participant beyond the cap (never "invalid
            # frames", which would close the socket and lose every other speaker's audio too)
            self._capped(participant[:MAX_PARTICIPANT_ID - 1] + "…")
            return None
        if len(self._streams) >= MAX_STREAMS:
            self._capped(participant)
            return None
        st = self._streams[participant] = _Stream(stream_id(participant), participant)
        return st

    def _vet(self, st: _Stream, pcm: bytes, ts: float | None, silent: bool, arrival: float) -> float | None:
        """The receive-clock checks (module docstring). -> the time to place the frame at, or None when the frame
        is held until the stream's next frame says where it goes."""
        nxt = st.next_slot
        ref = self._ref
        if ts is None:  # no usable timestamp: continue the stream (or start it where the next frame says)
            if nxt is None and st.held is None:
                st.held = (pcm, silent, arrival)
                return None
            if st.held is not None:
                self._release(st, None)
            return self._cursor_ts(st.next_slot, arrival)
        off = ts - arrival
        if nxt is None or ref is None:  # a new stream (or the call's first timestamp): no trusted position yet
            base = 0.0 if ref is None else ref
            # ahead: judged against the receive clock too (a reference set by one stale frame must not make
            # every honest frame after it look like it is from the future)
            if off - max(base, 0.0) > FUTURE_TOLERANCE or base - off > MAX_CLOCK_SKEW:
                self.stats.bad_timestamps += 1
                if nxt is None and st.held is None:  # where it goes is decided by the next frame
                    st.held = (pcm, silent, arrival)
                    return None
                if st.held is not None:
                    self._release(st, None)
                return self._cursor_ts(st.next_slot, arrival)
            if ref is None:
                self._ref = off
                # anchored on the receive clock, not on this frame: a first frame that arrived late must not keep
                # the reference below the steady delay of the frames after it
                self._ref_cap = max(off, 0.0) + FUTURE_TOLERANCE
            if st.held is not None:
                self._release(st, ts)
            return ts
        if off < ref - MAX_CLOCK_SKEW:  # not late: dated before any honest clock could put it
            self.stats.bad_timestamps += 1
            return self._cursor_ts(nxt, arrival)
        d = (ts - self.origin) / self.frame_seconds - nxt  # type: ignore[operator]
        if d <= self._tol:  # in sequence (or late): this frame simply arrived sooner than the others
            self._ref = min(off, self._ref_cap)
        elif off > max(ref, 0.0) + FUTURE_TOLERANCE:  # a jump that claims to be from the future
            self.stats.bad_timestamps += 1
            return self._cursor_ts(nxt, arrival)
        return ts

    def _release(self, st: _Stream, next_ts: float | None) -> None:
        """Place a stream's first frame, held because its timestamp was implausible or missing: right before the
        next frame when that one is plausible (`next_ts`), else at its own arrival on the call clock."""
        assert st.held is not None
        pcm, silent, arrival = st.held
        st.held = None
        ts = next_ts - self.frame_seconds if next_ts is not None else self._cursor_ts(None, arrival)
        self.stats.frames -= 1  # counted when it arrived
        self.add(st.participant, pcm, ts, silent)

    def _cursor_ts(self, nxt: int | None, arrival: float | None) -> float:
        """Where a frame goes when its timestamp cannot be used: right after the stream's previous frame, or, for
        a stream's first frame, at its arrival time on the call clock (by the reference offset)."""
        if nxt is not None:
            return self.origin + nxt * self.frame_seconds  # type: ignore[operator]
        return (_wall() if arrival is None else arrival) + (self._ref or 0.0)

    def _capped(self, participant: str | None) -> None:
        self.stats.capped_frames += 1
        ids = self.stats.capped_ids
        if participant and len(ids) < MAX_CAPPED_IDS and participant not in ids:
            ids.append(participant)

    def _write(self, st: _Stream, slot: int, pcm: bytes, silent: bool, late: bool) -> None:
        fpc = self.frames_per_chunk
        k = slot // fpc
        if k != st.chunk:
            if k < st.chunk:  # for a chunk already sealed: only into a slot we skipped, as a part of its own
                if late and self._fill_gap(st, slot):
                    self._seal_late(st, k, slot - k * fpc, pcm, silent)
                    self.stats.late_placed += 1
                else:
                    self.stats.late_dropped += 1
                return
            if st.dirty:
                self._seal(st, final=False)
            st.chunk = k
            st.buf = None
        if st.buf is None:
            st.buf = np.zeros(fpc * self.frame_bytes, dtype=np.uint8)
            st.view = memoryview(st.buf).cast("B")  # type: ignore[arg-type]  # ndarray is a buffer
            st.mask = bytearray(fpc)
            st.last_idx = -1
        idx = slot - k * fpc
        mask = st.mask
        assert mask is not None and st.view is not None
        if mask[idx]:
            self.stats.duplicates += 1
            return
        if late:
            if not self._fill_gap(st, slot):
                self.stats.duplicates += 1  # a late frame for a slot we already wrote and sealed
                return
            self.stats.late_placed += 1
        mask[idx] = 1
        if not silent:
            off = idx * self.frame_bytes
            st.view[off:off + len(pcm)] = pcm
        st.dirty = True
        if idx > st.last_idx:
            st.last_idx = idx

    @staticmethod
    def _fill_gap(st: _Stream, slot: int) -> bool:
        """A late frame may only land in a slot we skipped (a recorded gap, or the start of the stream's first
        chunk before its first frame); shrink or split that range around it."""
        for ranges in (st.gaps, st.lead):
            for i in range(len(ranges) - 1, -1, -1):  # late frames belong to recent gaps
                a, b = ranges[i]
                if a <= slot < b:
                    ranges[i:i + 1] = [p for p in ([a, slot], [slot + 1, b]) if p[1] > p[0]]
                    return True
        return False

    # -- sealing --------------------------------------------------------------------------------------------
    def _seal(self, st: _Stream, *, final: bool) -> None:
        assert st.buf is not None and st.mask is not None and self.origin is not None
        slots = st.last_idx + 1
        nbytes = slots * self.frame_bytes
        chunk = SealedChunk(
            stream=st.name,
            participant=st.participant,
            seq=st.chunk,
            wav=wav.encode(st.buf.data[:nbytes], self.fmt.sample_rate),
            mask=bytes(st.mask),
            start=self.origin + st.chunk * self.chunk_seconds,
            duration=slots * self.frame_seconds,
            final=final,
            last_arrival=st.last_arrival,
        )
        st.buf = None
        st.view = None
        st.mask = None
        st.dirty = False
        self._on_chunk(chunk)

    def _seal_late(self, st: _Stream, seq: int, idx: int, pcm: bytes, silent: bool) -> None:
        """A late frame whose chunk was sealed already goes into a late part of that chunk (the store fills the
        empty slots it names). Late parts gather frames for a second, so a reordered burst costs one write, not
        one per frame."""
        part = st.late.get(seq)
        if part is None:
            if len(st.late) >= _MAX_LATE_PARTS:
                self._emit_late(st, next(iter(st.late)))
            part = st.late[seq] = _LatePart(bytearray(self.frames_per_chunk * self.frame_bytes),
                                            bytearray(self.frames_per_chunk), _wall())
        fb = self.frame_bytes
        if not silent:
            part.pcm[idx * fb:idx * fb + len(pcm)] = pcm
        part.mask[idx] = 1
        part.last_idx = max(part.last_idx, idx)

    def _emit_late(self, st: _Stream, seq: int) -> None:
        assert self.origin is not None
        part = st.late.pop(seq)
        slots = part.last_idx + 1
        self._on_chunk(SealedChunk(stream=st.name, participant=st.participant, seq=seq,
                                   wav=wav.encode(bytes(part.pcm[:slots * self.frame_bytes]), self.fmt.sample_rate),
                                   mask=bytes(part.mask), start=self.origin + seq * self.chunk_seconds,
                                   duration=slots * self.frame_seconds, final=False,
                                   last_arrival=st.last_arrival))

    def seal_idle(self, idle_seconds: float, now: float | None = None) -> int:
        """Seal the open part of every stream idle for `idle_seconds` (by wall time, like arrivals), so its audio
        lands without waiting."""
        now = _wall() if now is None else now
        sealed = 0
        for st in self._streams.values():
            for seq in [k for k, part in st.late.items() if now - part.created >= idle_seconds]:
                self._emit_late(st, seq)
            if st.held is not None and now - st.last_arrival >= idle_seconds:
                self._release(st, None)
            if st.dirty and now - st.last_arrival >= idle_seconds:
                self._seal(st, final=False)
                sealed += 1
        return sealed

    def flush(self) -> None:
        """Seal every open chunk, trimmed to its last written frame (socket closed)."""
        for st in self._streams.values():
            if st.held is not None:
                self._release(st, None)
            for seq in list(st.late):
                self._emit_late(st, seq)
            if st.dirty:
                self._seal(st, final=True)

    # -- reporting ------------------------------------------------------------------------------------------
    def gaps(self, limit: int | None = None) -> list[tuple[str, float, float]]:
        """(stream, start epoch seconds, duration seconds) of every silence we filled (the first `limit`)."""
        if self.origin is None:
            return []
        origin = self.origin
        out: list[tuple[str, float, float]] = []
        for st in self._streams.values():
            for a, b in st.gaps:
                if limit is not None and len(out) >= limit:
                    return out
                out.append((st.name, origin + a * self.frame_seconds, (b - a) * self.frame_seconds))
        return out

    @property
    def gap_count(self) -> int:
        return sum(len(st.gaps) for st in self._streams.values())

