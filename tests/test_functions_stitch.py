"""The stitcher and the call-state fold as pure functions, against arbitrary inputs (hypothesis)."""

from __future__ import annotations

import hashlib
import itertools
import random
import struct

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from common import manifest as mf
from common import wav as wav_module
from function_app import state as state_model
from function_app.stitch import StitchError, stitch
from tests.functions_support import wav

RATE = 16000


def manifest_for(chunks: dict[int, bytes], chunk_seconds: float) -> tuple[mf.Manifest, dict[str, bytes]]:
    blobs = {f"c/mixed/{seq:06d}.wav": wav(pcm, RATE) for seq, pcm in chunks.items()}
    entries = [mf.Chunk(seq=seq, blob=f"c/mixed/{seq:06d}.wav", start_time="2026-01-01T00:00:00Z", duration_ms=0,
                        sha256=hashlib.sha256(blobs[f"c/mixed/{seq:06d}.wav"]).hexdigest(), size=0)
               for seq in sorted(chunks)]
    return (mf.Manifest(call_connection_id="c", sample_rate=RATE, chunk_seconds=chunk_seconds,
                        streams=[mf.Stream(stream="mixed", chunks=entries)]), blobs)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.integers(0, 12), st.integers(0, 3200), min_size=1, max_size=8),
       st.sampled_from([0.05, 0.1, 0.25]))
def test_stitched_pcm_is_each_chunk_at_its_slot(sizes: dict[int, int], chunk_seconds: float) -> None:
    rng = random.Random(sum(sizes) * 31 + len(sizes))
    chunks = {seq: rng.randbytes(n // 2 * 2) for seq, n in sizes.items()}
    manifest, blobs = manifest_for(chunks, chunk_seconds)
    result = stitch(manifest, "mixed", blobs.get)
    out = b"".join(result.body())
    slot = round(chunk_seconds * RATE) * 2
    readable = [s for s in sorted(chunks) if chunks[s]]
    last = readable[-1] if readable else 0
    expected = b"".join((chunks.get(s, b"")[:slot]).ljust(slot, b"\0") for s in range(last))
    expected += chunks[last][:slot] if readable else b""
    assert out[44:] == expected
    assert len(out) == result.content_length == 44 + len(expected)
    assert struct.unpack_from("<I", out, 4)[0] == 36 + len(expected)
    assert struct.unpack_from("<I", out, 40)[0] == len(expected)


def test_wav_parser_walks_riff_chunks() -> None:
    pcm = bytes(range(200))
    extra = b"LIST" + struct.pack("<I", 5) + b"abcde" + b"\0"  # odd size: padded
    plain = wav(pcm, 24000)
    with_list = plain[:4] + struct.pack("<I", 36 + len(extra) + len(pcm)) + plain[8:36] + extra + plain[36:]
    assert wav_module.read(with_list) == (24000, 1, pcm)
    assert wav_module.header(len(pcm), 24000) + pcm == plain
    for bad in (b"", b"RIFF0000WAVX", plain[:36]):
        try:
            wav_module.read(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_unknown_stream_and_incomplete_manifest() -> None:
    manifest, blobs = manifest_for({0: b"\1\0"}, 1.0)
    for broken, stream in ((manifest, "p-xyz"), (msgspec.structs.replace(manifest, sample_rate=None), "mixed")):
        try:
            stitch(broken, stream, blobs.get)
        except StitchError:
            continue
        raise AssertionError("should not stitch")


def lifecycle(call: str) -> list[dict]:
    kinds = ["CallConnected", "MediaStreamingStarted", "MediaStreamingStopped", "MediaStreamingStarted",
             "MediaStreamingStopped", "CallDisconnected"]
    return [{"id": f"e{i}", "type": f"Microsoft.Communication.{k}", "time": f"2026-01-01T00:00:{i:02d}.0000000+00:00",
             "data": {"callConnectionId": call}} for i, k in enumerate(kinds)]


def test_any_delivery_order_and_duplication_folds_to_the_same_state() -> None:
    events = lifecycle("c")
    finals = set()
    for order in itertools.islice(itertools.permutations(events), 0, None, 37):
        doc = state_model.new_state("c")
        for e in [*order, *order[:2]]:  # duplicates too
            state_model.apply_event(doc, e)
        finals.add((doc["status"], doc["streaming"], doc["streamingStartedAt"], doc["disconnectedAt"],
                    len(doc["events"])))
    assert finals == {("disconnected", "stopped", "2026-01-01T00:00:01.0000000+00:00",
                       "2026-01-01T00:00:05.0000000+00:00", 6)}
