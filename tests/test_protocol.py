"""ACS frame parsing: field names exactly as ACS sends them, every malformed case classified."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer import protocol as p

EXAMPLE = Path(__file__).parent / "data" / "example-audio-frame.json"  # the ACS docs' frame, byte for byte


def test_documentation_example_frame_decodes_to_exactly_its_base64_bytes():
    raw = EXAMPLE.read_bytes()
    kind, msg = p.parse(raw)
    assert kind == p.AUDIO_DATA
    pcm, ts, participant, silent = p.audio_data(msg)
    doc = json.loads(raw)["audioData"]
    assert pcm == base64.b64decode(doc["data"], validate=True)
    assert len(pcm) == 640 and pcm[:4] == bytes([0xE4, 0x00, 0xF0, 0x00])
    assert ts == "2022-10-03T19:16:12.925Z"
    assert participant == doc["participantRawID"] and silent is False
    assert p.TimestampParser()(ts) == datetime(2022, 10, 3, 19, 16, 12, 925000, tzinfo=UTC).timestamp()


def test_text_and_binary_messages_parse_the_same():
    raw = EXAMPLE.read_bytes()
    assert p.parse(raw) == p.parse(raw.decode())


@pytest.mark.parametrize("rate,length", [(16000, 640), (24000, 960)])
def test_metadata_gives_rate_and_frame_length(rate, length):
    msg = {"kind": "AudioMetadata", "audioMetadata": {"subscriptionId": "s", "encoding": "PCM",
                                                      "sampleRate": rate, "channels": 1, "length": length}}
    fmt = p.audio_metadata(msg, 65536)
    assert (fmt.sample_rate, fmt.frame_bytes, fmt.frame_samples) == (rate, length, length // 2)
    assert fmt.frame_seconds == pytest.approx(0.02)
    del msg["audioMetadata"]["length"]
    assert p.audio_metadata(msg, 65536).frame_bytes == length  # 20 ms when length is absent


@pytest.mark.parametrize("field,value", [("encoding", "OPUS"), ("sampleRate", 96000), ("sampleRate", "16000"),
                                         ("channels", 2), ("length", 641), ("length", 1 << 20)])
def test_unsupported_metadata_is_fatal_1003(field, value):
    md = {"subscriptionId": "s", "encoding": "PCM", "sampleRate": 16000, "channels": 1, "length": 640, field: value}
    with pytest.raises(p.FrameError) as err:
        p.audio_metadata({"kind": "AudioMetadata", "audioMetadata": md}, 65536)
    assert err.value.fatal and err.value.close_code == 1003 and err.value.kind == "unsupported_format"


@pytest.mark.parametrize("payload,kind", [
    (b"{oops", "malformed_json"),
    (b"[1,2]", "wrong_type"),
    (b'{"kind": 3}', "wrong_type"),
    (b'{"kind":"AudioData","audioData":{"data":"AAA=","timestamp":5}}', "wrong_type"),
    (b'{"kind":"AudioData","audioData":{"data":"@@@@"}}', "bad_base64"),
    (b'{"kind":"AudioData","audioData":{"data":"AAAA"}}', "odd_length"),
    (b'{"kind":"AudioData","audioData":{"data":"AAA=","silent":"no"}}', "wrong_type"),
    (b'{"kind":"AudioData"}', "wrong_type"),
    (b'{"kind":"DtmfData","dtmfData":{}}', "wrong_type"),
])
def test_malformed_frames_are_classified(payload, kind):
    with pytest.raises(p.FrameError) as err:
        k, msg = p.parse(payload)
        p.audio_data(msg) if k == "AudioData" else p.dtmf_data(msg)
    assert err.value.kind == kind and not err.value.fatal


def test_dtmf_reads_tone_and_optional_fields():
    assert p.dtmf_data({"dtmfData": {"data": "3"}}) == ("3", None, None)
    assert p.dtmf_data({"dtmfData": {"data": "#", "timestamp": "t", "participantRawID": "4:+1"}}) == ("#", "t", "4:+1")


def test_timestamp_parser_is_exact_across_minutes_and_forms():
    parse = p.TimestampParser()
    for text in ["2024-11-15T19:16:59.980Z", "2024-11-15T19:17:00.000Z", "2024-11-15T19:17:00.020Z",
                 "2024-12-31T23:59:59.999Z", "2025-01-01T00:00:00.001Z"]:
        expect = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        assert parse(text) == pytest.approx(expect, abs=1e-6)
    assert parse("2024-11-15T19:16:12.925+00:00") == pytest.approx(parse("2024-11-15T19:16:12.925Z"), abs=1e-6)
    assert parse("2024-11-15T20:16:12.925+01:00") == pytest.approx(parse("2024-11-15T19:16:12.925Z"), abs=1e-6)
    assert parse("2024-11-15T19:16:12Z") == pytest.approx(parse("2024-11-15T19:16:12.000Z"), abs=1e-6)
    for bad in ("yesterday", "2026-13-45T99:99:99.999Z", "2026-02-30T10:00:00.000Z", "2026-1◂-24T12:00:00.000Z",
                "2026-11-24T12:00:xx.000Z", "9999-12-31T23:59:59.999Z", "0001-01-01T00:00:00.000Z"):
        with pytest.raises(p.FrameError):
            parse(bad)


_B64ISH = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n!"


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.text(alphabet=_B64ISH, max_size=24),
                 st.binary(max_size=18).map(lambda b: base64.b64encode(b).decode())))
def test_base64_decoding_is_at_least_as_strict_as_binascii_and_agrees_on_canonical_input(data):
    """The SIMD decoder on the frame path: canonical base64 (what ACS sends) decodes exactly as the standard
    library does; anything strict binascii rejects is rejected; the one extra refusal is non-canonical input
    such as excess padding ("0000="), which binascii's strict mode lets through."""
    frame = json.dumps({"kind": "AudioData", "audioData": {"data": data}})
    try:
        expected = binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        expected = None
    _, msg = p.parse(frame)
    try:
        got = p.audio_data(msg)[0]
    except p.FrameError as exc:
        got, kind = None, exc.kind
    if got is not None:
        assert got == expected
    elif kind == "odd_length":  # decoded (as binascii does), then refused for an odd byte count
        assert expected is not None and len(expected) % 2
    else:
        assert kind == "bad_base64"
        assert expected is None or base64.b64encode(expected).decode() != data
