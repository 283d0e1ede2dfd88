"""Placing frames on the call clock: jitter, gaps, drift, duplicates, late frames, idle seals, unmixed alignment."""

from __future__ import annotations

import numpy as np
import pytest

from common import wav
from common.layout import stream_id
from common.slots import fill_empty
from streamer.protocol import AudioFormat
from streamer.timeline import CallTimeline, SealedChunk

T0 = 1_790_000_000.0  # an epoch near today's, so float precision is what production sees


def fmt(rate: int = 16000) -> AudioFormat:
    return AudioFormat("sub", "PCM", rate, 1, rate // 50 * 2)


def frame(i: int, rate: int = 16000) -> bytes:
    return np.full(rate // 50, (i + 1) % 30000, dtype=np.int16).tobytes()


class Collect:
    def __init__(self) -> None:
        self.chunks: list[SealedChunk] = []

    def __call__(self, c: SealedChunk) -> None:
        self.chunks.append(c)

    def pcm(self, stream: str = "mixed", chunk_bytes: int = 32000) -> bytes:
        """Stitch all parts of a stream on the grid, overlaying parts of the same chunk by their masks."""
        out = bytearray()
        occupied: dict[int, np.ndarray] = {}
        for c in (c for c in self.chunks if c.stream == stream):
            _, pcm = wav.decode(c.wav)
            start = c.seq * chunk_bytes
            cur = bytes(out[start:start + chunk_bytes])
            mask = np.frombuffer(c.mask, dtype=np.uint8) != 0
            if c.seq in occupied:
                merged, occupied[c.seq], _, conflicts = fill_empty(cur, occupied[c.seq], pcm, mask, 640)
                assert conflicts == 0, "two parts of one chunk wrote the same slot"
            else:
                merged, occupied[c.seq] = pcm, mask
            if len(out) < start + len(merged):
                out.extend(bytes(start + len(merged) - len(out)))
            out[start:start + len(merged)] = merged
        return bytes(out)


def test_contiguous_frames_make_chunks_on_the_grid():
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    for i in range(120):
        tl.add(None, frame(i), T0 + i * 0.02, False)
    tl.flush()
    assert [(c.seq, c.duration, c.final) for c in got.chunks] == [(0, 1.0, False), (1, 1.0, False), (2, 0.4, True)]
    assert [c.start for c in got.chunks] == [T0, T0 + 1, T0 + 2]
    assert got.pcm() == b"".join(frame(i) for i in range(120))


@pytest.mark.parametrize("jitter_ms", [10, -10, 9.9])
def test_jitter_up_to_10ms_keeps_frames_contiguous(jitter_ms):
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    for i in range(60):
        tl.add(None, frame(i), T0 + i * 0.02 + (jitter_ms / 1000 if i % 2 else 0), False)
    tl.flush()
    assert tl.stats.gap_slots == 0 and tl.stats.duplicates == 0
    assert got.pcm() == b"".join(frame(i) for i in range(60))


def test_a_frame_more_than_half_a_frame_late_in_time_opens_a_one_frame_gap():
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    tl.add(None, frame(0), T0, False)
    tl.add(None, frame(1), T0 + 0.02 + 0.011, False)  # 31 ms after the first: nearest slot is 2
    tl.flush()
    assert tl.gaps() == [("mixed", pytest.approx(T0 + 0.02), pytest.approx(0.02))]
    assert got.pcm() == frame(0) + bytes(640) + frame(1)


def test_slow_sender_clock_drift_does_not_drop_audio():
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    for i in range(200):
        tl.add(None, frame(i), T0 + i * 0.0199, False)  # 0.5 % slow: 1 frame behind after 4 s... never dropped
    tl.flush()
    assert tl.stats.duplicates == 0 and tl.stats.late_dropped == 0 and tl.stats.drift_corrections > 0
    assert got.pcm() == b"".join(frame(i) for i in range(200))


def test_duplicates_dropped_and_late_frames_fill_only_their_own_gap():
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    for i in [0, 1, 2, 5, 6, 2, 3]:  # 3 and 4 missing, then a duplicate of 2, then 3 arrives late
        tl.add(None, frame(i), T0 + i * 0.02, False)
    tl.flush()
    assert tl.stats.duplicates == 1 and tl.stats.late_placed == 1
    assert tl.gaps() == [("mixed", pytest.approx(T0 + 0.08), pytest.approx(0.02))]  # only slot 4 stays a gap
    assert got.pcm() == b"".join(frame(i) for i in [0, 1, 2, 3]) + bytes(640) + frame(5) + frame(6)


def test_a_frame_for_an_already_sealed_chunk_is_dropped_not_shifted():
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    for i in range(55):
        tl.add(None, frame(i), T0 + i * 0.02, False)
    tl.add(None, frame(999), T0 + 0.1, False)  # chunk 0 was sealed when frame 50 arrived
    tl.flush()
    assert tl.stats.late_dropped + tl.stats.duplicates == 1
    assert got.pcm() == b"".join(frame(i) for i in range(55))


def test_wild_timestamp_is_placed_at_the_cursor_and_does_not_strand_the_stream():
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    tl.add(None, frame(0), T0, False)
    tl.add(None, frame(1), T0 + 86400 * 365, False)  # a year ahead
    tl.add(None, frame(2), T0 + 0.04, False)
    tl.flush()
    assert tl.stats.bad_timestamps == 1 and tl.stats.gap_slots == 0
    assert got.pcm() == frame(0) + frame(1) + frame(2)


def test_a_new_participant_with_a_wild_first_timestamp_joins_at_the_call_clock():
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    for i in range(30):
        tl.add("8:acs:a", frame(i), T0 + i * 0.02, False)
    tl.add("8:acs:b", frame(99), T0 + 86400 * 30, False)  # a month ahead of everyone else
    tl.flush()
    assert tl.stats.bad_timestamps == 1
    (b,) = [c for c in got.chunks if c.participant == "8:acs:b"]
    assert b.seq == 0 and wav.decode(b.wav)[1][30 * 640:] == frame(99)


def test_silent_frames_are_written_as_zeros_and_keep_time():
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    tl.add(None, frame(0), T0, False)
    tl.add(None, frame(1), T0 + 0.02, True)  # flagged silent: whatever data says, zeros
    tl.add(None, frame(2), T0 + 0.04, False)
    tl.flush()
    assert got.pcm() == frame(0) + bytes(640) + frame(2)


def test_oversized_and_short_frames_are_split_and_padded_on_the_grid():
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    tl.add(None, frame(0) + frame(1), T0, False)  # two frames' worth in one message
    tl.add(None, frame(2)[:300], T0 + 0.04, False)  # a short one
    tl.add(None, frame(3), T0 + 0.06, False)
    tl.flush()
    assert got.pcm() == frame(0) + frame(1) + frame(2)[:300] + bytes(340) + frame(3)


def test_unmixed_streams_share_chunk_spans_and_a_late_speaker_starts_with_silence():
    got = Collect()
    tl = CallTimeline(fmt(24000), 1.0, got)
    for i in range(100):
        tl.add("8:acs:a", frame(i, 24000), T0 + i * 0.02, False)
        if i >= 70:
            tl.add("4:+1555", frame(i, 24000), T0 + i * 0.02, False)
    tl.flush()
    a = [c for c in got.chunks if c.participant == "8:acs:a"]
    b = [c for c in got.chunks if c.participant == "4:+1555"]
    assert [c.seq for c in a] == [0, 1] and [c.seq for c in b] == [1]
    assert a[1].start == b[0].start == T0 + 1
    _, pcm_b = wav.decode(b[0].wav)
    assert pcm_b[: 20 * 960] == bytes(20 * 960)
    assert pcm_b[20 * 960:] == b"".join(frame(i, 24000) for i in range(70, 100))
    assert b[0].stream == stream_id("4:+1555")


def test_idle_stream_is_sealed_early_and_a_resume_writes_a_second_part_with_its_mask():
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    for i in range(10):
        tl.add(None, frame(i), T0 + i * 0.02, False)
    assert tl.seal_idle(1.0, now=1e12) == 1  # idle: part 1 of chunk 0 leaves now
    for i in range(30, 40):
        tl.add(None, frame(i), T0 + i * 0.02, False)
    tl.flush()
    assert [(c.seq, c.final) for c in got.chunks] == [(0, False), (0, True)]
    assert got.chunks[1].mask[:30] == bytes(30) and got.chunks[1].mask[30:40] == b"\x01" * 10
    expected = b"".join(frame(i) for i in range(10)) + bytes(20 * 640) + b"".join(frame(i) for i in range(30, 40))
    assert got.pcm() == expected


def test_rotating_dominant_speakers_of_a_large_meeting_are_all_recorded():
    """Unmixed audio carries the 4 dominant speakers and they rotate: 40 speakers over the call, 4 at a time."""
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    for i in range(40 * 50):  # 40 s; every second the next four speakers
        for k in range(4):
            speaker = (i // 50 + k) % 40
            tl.add(f"8:acs:{speaker}", frame(i), T0 + i * 0.02, False, arrival=T0 + i * 0.02)
    tl.flush()
    assert len({c.stream for c in got.chunks}) == 40 and tl.stats.capped_frames == 0
    assert tl.stats.frames == 40 * 50 * 4


def test_beyond_the_stream_cap_frames_are_counted_not_invalid_and_named():
    from streamer.timeline import MAX_CAPPED_IDS, MAX_STREAMS

    collected = Collect()
    tl = CallTimeline(fmt(), 1.0, collected)
    for p in range(MAX_STREAMS):
        tl.add(f"8:acs:{p}", frame(0), T0, False)
    for p in range(MAX_CAPPED_IDS + 5):
        tl.add(f"8:acs:extra-{p}", frame(0), T0, False)  # no exception: not a bad frame
    assert tl.stats.capped_frames == MAX_CAPPED_IDS + 5 and len(tl.stats.capped_ids) == MAX_CAPPED_IDS
    tl.add("8:acs:0", frame(1), T0 + 0.02, False)  # the known ones go on
    tl.flush()
    assert len({c.stream for c in collected.chunks}) == MAX_STREAMS


@pytest.mark.parametrize("wild", [T0 + 73 * 365 * 86400, T0 - 26 * 365 * 86400, None])
def test_a_wild_first_timestamp_does_not_strand_the_call(wild):
    """A first frame dated 2099, 2000 or undated must not become the clock origin: every honest frame after it
    would be "late" and dropped."""
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    tl.add(None, frame(0), wild, False, arrival=T0)
    for i in range(1, 100):
        tl.add(None, frame(i), T0 + i * 0.02, False, arrival=T0 + i * 0.02)
    tl.flush()
    assert tl.origin == pytest.approx(T0, abs=0.001)
    assert tl.stats.late_dropped == 0 and tl.stats.frames == 100
    assert got.pcm() == b"".join(frame(i) for i in range(100))
    assert tl.stats.bad_timestamps == (0 if wild is None else 1)


def test_timestamps_from_the_future_are_placed_in_sequence_and_write_no_silence():
    """60 frames each dated 10 s after the previous, arriving at ACS's cadence: they cannot be 10 s apart. Placed
    after each other, they cost their own bytes, not 60 chunks of zeros."""
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    for i in range(60):
        tl.add(None, frame(i), T0 + i * 10.0, False, arrival=T0 + i * 0.02)
    for i in range(60, 110):  # then honest frames again
        tl.add(None, frame(i), T0 + i * 0.02, False, arrival=T0 + i * 0.02)
    tl.flush()
    written = sum(len(c.wav) for c in got.chunks)
    assert written < 110 * 640 + 2 * 44 + 1000  # the audio received, in two chunks
    assert tl.stats.bad_timestamps == 59 and tl.stats.late_dropped == 0
    assert got.pcm() == b"".join(frame(i) for i in range(110))


def test_small_jumps_cannot_creep_the_call_ahead_of_the_receive_clock():
    """Each jump leads by less than the tolerance, and the in-sequence frame after it used to raise the reference
    by as much: 600 frames over 12 s of arrivals wrote 16.8 MB (the stream ended 562 s ahead of the clock). The
    reference may rise by the tolerance once, so what is written stays near what really passed."""
    from streamer.timeline import FUTURE_TOLERANCE

    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    ts = T0
    for i in range(600):
        ts += 1.9 if i % 2 else 0.02
        tl.add(None, frame(i), ts, False, arrival=T0 + i * 0.02)
    tl.flush()
    audio_seconds = sum(c.duration for c in got.chunks)
    assert audio_seconds <= 600 * 0.02 + 2 * FUTURE_TOLERANCE + 2.0, audio_seconds
    assert sum(len(c.wav) for c in got.chunks) < 1_000_000
    assert tl.stats.bad_timestamps >= 250


def test_a_first_frame_that_arrived_late_does_not_hold_the_reference_down():
    """The first frame waited 5 s (connection set-up), the rest flow 50 ms behind: a 1-s pause later must still be
    a gap, and a speaker who joins after it must land where the clock says (found by a probe of the creep cap)."""
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    tl.add("8:acs:a", frame(0), T0, False, arrival=T0 + 5.0)
    t = T0 + 0.02
    while t < T0 + 8.0:
        tl.add("8:acs:a", frame(1), t, False, arrival=max(T0 + 5.0, t + 0.05))
        t += 0.02
    t += 1.0  # a quiet second
    for i in range(50):
        tl.add("8:acs:a", frame(2), t + i * 0.02, False, arrival=t + i * 0.02 + 0.05)
        tl.add("8:acs:b", frame(3), t + i * 0.02, False, arrival=t + i * 0.02 + 0.05)
    tl.flush()
    assert tl.stats.bad_timestamps == 0 and tl.stats.gap_slots == 50
    b_first = min(c.seq * 50 + c.mask.index(1) for c in got.chunks if c.participant == "8:acs:b")
    assert b_first == round((t - T0) / 0.02)


def test_one_stale_first_frame_of_a_reconnect_does_not_pin_the_honest_ones_behind_it():
    """A reconnecting session's first frame is 18 s old (within the skew allowed), then real-time frames follow:
    they go where their timestamps say, not after the stale one (found by an outside probe: before, each was a
    "jump from the future", placed over the earlier session's audio and lost as conflicts)."""
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got, origin=T0 - 20.0)
    tl.add(None, frame(0), T0 - 18.0, False, arrival=T0)
    for j in range(1, 250):
        tl.add(None, frame(j), T0 + 0.02 * j, False, arrival=T0 + 0.02 * j)
    tl.flush()
    assert tl.stats.bad_timestamps == 0
    assert sorted({c.seq for c in got.chunks}) == [2, 20, 21, 22, 23, 24]


def test_a_frame_dated_far_in_the_past_mid_call_is_kept_in_sequence():
    """One frame dated 2000 in the middle of a call is a wild timestamp, not a late frame: placed after the previous
    one and counted, not dropped "before the origin" (which also made the session incomplete)."""
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    for i in range(100):
        ts = T0 - 26 * 365 * 86400 if i == 50 else T0 + i * 0.02
        tl.add(None, frame(i), ts, False, arrival=T0 + i * 0.02 + 0.03)
    tl.flush()
    assert tl.stats.before_origin == 0 and tl.stats.late_dropped == 0 and tl.stats.bad_timestamps == 1
    pcm = got.pcm()
    assert pcm[50 * 640:51 * 640] == frame(50) and len(pcm) >= 100 * 640 - 640


def test_a_pause_then_resume_in_real_time_is_a_gap_not_a_bad_timestamp():
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    for i in list(range(50)) + list(range(3050, 3100)):  # a 60-s pause (an unmixed speaker who went quiet)
        tl.add("8:acs:a", frame(i), T0 + i * 0.02, False, arrival=T0 + i * 0.02 + 0.05)
    tl.flush()
    assert tl.stats.bad_timestamps == 0 and tl.stats.gap_slots == 3000
    assert [c.seq for c in got.chunks] == [0, 61]


def test_a_jump_seals_the_chunk_trimmed_to_its_last_frame():
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    for i in (0, 1, 2, 100):  # frames 0-2, then one 2 s later
        tl.add(None, frame(i), T0 + i * 0.02, False)
    tl.flush()
    assert [(c.seq, c.duration) for c in got.chunks] == [(0, pytest.approx(0.06)), (2, pytest.approx(0.02))]


def test_origin_from_an_earlier_session_continues_the_call_clock():
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got, origin=T0)
    for i in range(150, 160):  # this session starts 3 s into the call
        tl.add(None, frame(i), T0 + i * 0.02, False)
    tl.flush()
    (c,) = got.chunks
    assert c.seq == 3 and c.start == T0 + 3


def test_a_frame_that_overtook_a_chunk_boundary_fills_its_slot_as_a_part_of_its_own():
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    order = [*range(49), 50, 49, *range(51, 60)]  # frame 49 arrives after frame 50 (the next chunk's first)
    for i in order:
        tl.add(None, frame(i), T0 + i * 0.02, False, arrival=T0 + 0.03 + order.index(i) * 0.02)
    tl.flush()
    assert tl.stats.late_dropped == 0 and tl.stats.late_placed == 1
    assert got.pcm() == b"".join(frame(i) for i in range(60))
    assert tl.gaps() == []  # the frame came: no silence was filled


def test_a_speaker_silent_for_half_an_hour_resumes_where_the_clock_says():
    got = Collect()
    tl = CallTimeline(fmt(), 1.0, got)
    for i in [*range(10), *range(90_000, 90_010)]:  # 30 minutes of silence from this unmixed speaker
        tl.add("8:acs:a", frame(i), T0 + i * 0.02, False, arrival=T0 + i * 0.02 + 0.03)
    tl.flush()
    assert tl.stats.bad_timestamps == 0
    assert [c.seq for c in got.chunks] == [0, 1800]
