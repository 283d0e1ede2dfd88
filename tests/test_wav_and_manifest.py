"""The shared contract's pieces: WAV chunks any reader can open, and a manifest merge that loses nothing."""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import wave

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import manifest as mf
from common import wav
from common.layout import chunk_blob, is_valid_call_id, stream_id
from common.slots import fill_empty


@pytest.mark.parametrize("rate", [16000, 24000])
def test_chunk_is_a_standard_wav(rate):
    pcm = bytes(range(256)) * 10
    data = wav.encode(pcm, rate)
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, rate)
        assert w.readframes(w.getnframes()) == pcm
    assert wav.decode(data) == (rate, pcm)
    assert int.from_bytes(data[4:8], "little") == len(data) - 8


def _occ(*bits: int) -> np.ndarray:
    return np.array(bits, dtype=bool)


def test_fill_empty_takes_only_slots_the_stored_chunk_has_no_frame_in():
    stored = b"A" * 640 + bytes(640) + b"A" * 640  # slot 1 is a hole (zeros, no frame)
    new = b"B" * 640 * 5
    pcm, occ, filled, conflicts = fill_empty(stored, _occ(1, 0, 1), new, _occ(0, 1, 0, 0, 1), 640)
    assert pcm == b"A" * 640 + b"B" * 640 + b"A" * 640 + bytes(640) + b"B" * 640
    assert list(occ) == [True, True, True, False, True] and (filled, conflicts) == (2, 0)


def test_fill_empty_never_replaces_stored_audio_and_counts_the_conflict():
    stored = b"A" * 640 * 2
    pcm, _, filled, conflicts = fill_empty(stored, _occ(1, 1), b"B" * 640 * 2, _occ(1, 1), 640)
    assert pcm == stored and (filled, conflicts) == (0, 2)
    # silence that was received is audio too: a later write cannot replace it either
    pcm, _, filled, conflicts = fill_empty(bytes(640), _occ(1), b"B" * 640, _occ(1), 640)
    assert pcm == bytes(640) and (filled, conflicts) == (0, 1)
    # replaying the same write (a retry whose reply was lost) is neither a fill nor a conflict
    assert fill_empty(stored, _occ(1, 1), stored, _occ(1, 1), 640)[2:] == (0, 0)


def test_stream_ids_are_path_safe_and_reversible():
    for raw in ["8:acs:3d20e1de-0f28-41c5_0000000b-faeb", "4:+15550100", "28:orgid:ü/?&"]:
        sid = stream_id(raw)
        assert sid.startswith("p-") and all(c.isalnum() or c in "-_" for c in sid)
        body = sid[len("p-"):]  # base64url of the raw id, unpadded: a reader of blob names can recover it
        assert base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode() == raw
    assert stream_id(None) == stream_id("") == "mixed"
    assert chunk_blob("c1", "mixed", 7) == "c1/mixed/000007.wav"
    assert is_valid_call_id("18dea47f-b081-4107-9a5c-4300819d2c6c")
    assert not is_valid_call_id("../etc") and not is_valid_call_id("a/b") and not is_valid_call_id("")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def P(doc: dict) -> mf.Part:
    """A part written as its JSON, validated by the model as a stored one would be."""
    return msgspec.convert(doc, mf.Part)


def B(m: mf.Manifest | None) -> dict | None:
    return None if m is None else mf.to_builtins(m)


def part(session: str, seqs: list[int], *, complete: bool = False, revision: int = 1) -> mf.Part:
    return P({"callConnectionId": "c1", "correlationId": "corr", "sampleRate": 16000, "chunkSeconds": 10.0,
            "clockOrigin": "2026-01-01T00:00:00.000Z", "audioChannel": "mixed",
            "sessions": [{"id": session, "startedAt": f"2026-01-01T00:00:0{len(session)}.000Z", "complete": complete,
                          "frames": 10}],
            "streams": [{"stream": "mixed", "participantRawId": None, "chunks": [
                {"blob": f"c1/mixed/{k:06d}.wav", "seq": k, "sha256": sha(f"{session}{k}"), "revision": revision,
                 "startTime": f"2026-01-01T00:00:{k * 10:02d}.000Z", "durationMs": 10000, "bytes": 320044}
                for k in seqs]}],
            "gaps": [{"stream": "mixed", "startTime": f"2026-01-01T00:00:{seqs[0]:02d}.000Z", "durationMs": 40}],
            "dtmf": [{"tone": "1", "timestamp": f"t{session}", "participantRawId": None}]})


def test_merge_is_idempotent_and_order_independent():
    a, b = part("s1", [0, 1], complete=True), part("s22", [2, 3])
    ab = B(mf.merge(mf.merge(None, a), b))
    ba = B(mf.merge(mf.merge(None, b), a))
    again = B(mf.merge(mf.merge(mf.merge(mf.merge(None, a), b), a), b))
    for m in (ba, again):
        assert {k: v for k, v in m.items() if k != "updatedAt"} == {k: v for k, v in ab.items() if k != "updatedAt"}
    assert [c["seq"] for c in ab["streams"][0]["chunks"]] == [0, 1, 2, 3]
    assert len(ab["gaps"]) == 2 and len(ab["dtmf"]) == 2
    assert ab["complete"] is False  # s22 has not finished
    done = mf.merge(mf.merge(mf.merge(None, a), b), part("s22", [2, 3], complete=True))
    assert done.complete is True


def test_a_merged_chunk_revision_supersedes_the_first_write_whatever_the_order():
    first, merged = part("s1", [1]), part("s22", [1], revision=2)
    for m in (mf.merge(mf.merge(None, first), merged), mf.merge(mf.merge(None, merged), first)):
        (c,) = m.streams[0].chunks
        assert c.revision == 2 and c.sha256 == sha("s221")
    # equal revisions (a second session's part that filled nothing) keep the entry already there
    (c,) = mf.merge(mf.merge(None, first), part("s22", [1])).streams[0].chunks
    assert c.sha256 == sha("s11")


def test_a_session_only_moves_forward_whatever_order_its_parts_arrive_in():
    live = mf.Session(id="s1", frames=50)
    done = mf.Session(id="s1", frames=120, complete=True, clean_close=True, ended_at="2026-01-01T00:01:00.000Z",
                      close_code=1000, end_reason=mf.EndReason.PEER_CLOSED)
    for first, second in ((live, done), (done, live)):
        s = mf.merge_session(mf.merge_session(None, first), second)
        assert (s.complete, s.clean_close, s.frames, s.close_code, s.end_reason) == (
            True, True, 120, 1000, "peer_closed")


def test_a_session_without_audio_does_not_decide_completeness():
    m = mf.merge(None, part("s1", [0], complete=True))
    empty = P({"callConnectionId": "c1", "sessions": [{"id": "s9", "frames": 0, "complete": False}]})
    assert mf.merge(m, empty).complete is True
    assert mf.merge(None, empty).complete is False  # nothing recorded is not a complete recording


def test_dtmf_is_capped_per_call_and_what_was_cut_is_counted():
    tones = [{"tone": "1", "timestamp": f"2026-01-01T00:00:00.{i:03d}Z", "participantRawId": None}
             for i in range(1000)]
    def session_part(k: int, dated: list[dict[str, object]]) -> mf.Part:  # what session k writes, every time
        return P({"callConnectionId": "c1", "sessions": [{"id": f"s{k}", "frames": 1, "dtmfTones": len(dated)}],
                  "dtmf": [{**t, "participantRawId": f"p{k}"} for t in dated]})

    m = None
    for k in range(6):
        m = mf.merge(m, session_part(k, tones))
        m = mf.merge(m, session_part(k, tones))  # each session rewrites its whole list: counted once
    assert m is not None and len(m.dtmf) == mf.MAX_DTMF_PER_CALL and m.dtmf_dropped == 1000
    assert {d.participant_raw_id for d in m.dtmf} == {f"p{k}" for k in range(5)}
    # below the cap, two sessions listing the same tones (a replayed session) drop nothing
    replay = P({"callConnectionId": "c1", "sessions": [{"id": "s9", "frames": 1, "dtmfTones": 2}],
                "dtmf": [{**t, "participantRawId": "p0"} for t in tones[:2]]})
    once = mf.merge(mf.merge(None, session_part(0, tones[:2])), replay)
    assert once.dtmf_dropped == 0 and len(once.dtmf) == 2
    # stored tones are the truth: a later session's tones dated earlier do not evict them
    earlier = [{**t, "timestamp": f"2025-01-01T00:00:00.{i:03d}Z"} for i, t in enumerate(tones[:10])]
    m = mf.merge(m, session_part(7, earlier))
    assert {d.participant_raw_id for d in m.dtmf} == {f"p{k}" for k in range(5)} and m.dtmf_dropped == 1010


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["s1", "s22", "s333"]), st.lists(st.integers(0, 6), min_size=1, max_size=4),
                          st.booleans(), st.integers(1, 3)), min_size=1, max_size=5))
def test_merge_never_modifies_its_inputs(parts):
    """merge shares entries with its inputs instead of deep-copying them; neither the stored manifest nor the
    part may change, or a writer's cached manifest would drift from what is in the blob."""
    base = None
    for session, seqs, complete, revision in parts:
        p = part(session, seqs, complete=complete, revision=revision)
        before_p, before_base = copy.deepcopy(B(p)), copy.deepcopy(B(base))
        merged = mf.merge(base, p)
        assert B(p) == before_p and B(base) == before_base
        assert {c.seq for c in merged.streams[0].chunks} >= set(seqs)
        base = merged


def test_manifest_loads_rejects_what_is_not_a_manifest():
    with pytest.raises(ValueError):
        mf.loads(b"not json")
    with pytest.raises(ValueError):
        mf.loads(b'{"streams": []}')
    with pytest.raises(ValueError):
        mf.loads(b'{"callConnectionId": "c1", "sampleRate": 0}')  # a clock nobody can place audio on
    with pytest.raises(ValueError):
        mf.loads(b'{"callConnectionId": "c1", "clockOrigin": "yesterday"}')
    with pytest.raises(ValueError):
        mf.loads(b'{"callConnectionId": "c1", "dtmf": [{"tone": "hello"}]}')
    with pytest.raises(ValueError):
        mf.merge(mf.Manifest(call_connection_id="other"), part("s1", [0]))
    assert mf.loads(mf.dumps(mf.Manifest(call_connection_id="c9"))).call_connection_id == "c9"


def test_iso_times_round_trip_at_millisecond_precision():
    t = 1_790_000_000.925
    assert mf.utc_iso(t).endswith(".925Z")
    assert mf.parse_iso(mf.utc_iso(t)) == pytest.approx(t, abs=1e-6)
    assert mf.utc_iso(1_790_000_000.9999) .endswith(":21.000Z")
