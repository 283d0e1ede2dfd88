"""Unit-level checks of the simulator's building blocks (frames, audio, HMAC, identifiers, scripts).

The frame builders are string templates for speed, so they are checked against json.loads and datetime here,
including for awkward participant ids and every millisecond value.
"""

from __future__ import annotations

import base64
import json
import shutil
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devstack.simulator import hmac_auth
from devstack.simulator.audio import (
    AudioSpec,
    _encoded,
    build_tracks,
    espeak_available,
    read_wav,
    resample,
    write_wav,
)
from devstack.simulator.config import CallScript, SimulatorConfig
from devstack.simulator.frames import (
    EncodedTrack,
    audio_data,
    audio_metadata,
    dtmf_data,
    format_timestamp,
    frame_bytes,
    participant_fragment,
)
from devstack.simulator.identifiers import normalize
from devstack.simulator.media import Faults, MediaPlan
from tests._simulator_fixtures import sign

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=4_102_444_800_000))
def test_timestamp_is_iso_ms_z_and_exact(ms: int) -> None:
    text = format_timestamp(ms)
    assert text.endswith("Z") and len(text) == 24
    assert datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) == EPOCH + timedelta(milliseconds=ms)


@settings(max_examples=200, deadline=None)
@given(participant=st.one_of(st.none(), st.text()), silent=st.booleans(), data=st.binary(max_size=64))
def test_audio_data_frame_is_valid_json_with_the_documented_keys(participant: str | None, silent: bool,
                                                                 data: bytes) -> None:
    b64 = base64.b64encode(data).decode()
    frame = json.loads(audio_data("2024-11-15T19:16:12.925Z", b64, silent, participant_fragment(participant)))
    expected = {"timestamp": "2024-11-15T19:16:12.925Z", "data": b64, "silent": silent}
    if participant is not None:
        expected["participantRawID"] = participant
    assert frame == {"kind": "AudioData", "audioData": expected}


def test_metadata_and_dtmf_frames() -> None:
    assert json.loads(audio_metadata("sub", 24000)) == {"kind": "AudioMetadata", "audioMetadata": {
        "subscriptionId": "sub", "encoding": "PCM", "sampleRate": 24000, "channels": 1, "length": 960}}
    assert json.loads(dtmf_data("5")) == {"kind": "DtmfData", "dtmfData": {"data": "5"}}
    full = json.loads(dtmf_data("#", "2024-01-01T00:00:00.000Z", "4:+1555"))["dtmfData"]
    assert full == {"data": "#", "timestamp": "2024-01-01T00:00:00.000Z", "participantRawID": "4:+1555"}
    assert frame_bytes(16000) == 640 and frame_bytes(24000) == 960
    with pytest.raises(ValueError):
        frame_bytes(8000)


def test_encoded_track_flags_and_zeroes_quiet_frames() -> None:
    samples = np.zeros(320 * 4, dtype=np.int16)
    samples[0:320] = 5000  # loud
    samples[320:640] = 10  # under threshold → silent, zeroed
    samples[1000] = -3000  # frame 3 loud via one sample
    track = EncodedTrack.from_samples(samples, 16000, "8:acs:a", silence_threshold=20)
    assert track.silent == (False, True, True, False)
    assert len(track) == 4 and len(track.pcm) == 4 * 640
    for i, quiet in enumerate(track.silent):
        pcm = base64.b64decode(track.b64[i])
        assert pcm == track.frame_pcm(i)
        assert (pcm == bytes(640)) == quiet


def test_resample_keeps_a_tone_and_wav_round_trips(tmp_path: Path) -> None:
    t = np.arange(22050) / 22050
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    path = tmp_path / "tone.wav"
    write_wav(path, tone, 22050)
    out = read_wav(path, 16000)
    assert len(out) == 16000
    peak_hz = np.argmax(np.abs(np.fft.rfft(out.astype(float)))) * 16000 / len(out)
    assert abs(peak_hz - 440) <= 2
    assert len(resample(tone.astype(float), 22050, 24000)) == 24000


def test_wav_source_per_participant(tmp_path: Path) -> None:
    paths = []
    for i, hz in enumerate((300, 700)):
        t = np.arange(16000) / 16000
        write_wav(tmp_path / f"p{i}.wav", (6000 * np.sin(2 * np.pi * hz * t)).astype(np.int16), 16000)
        paths.append(str(tmp_path / f"p{i}.wav"))
    tracks = build_tracks(AudioSpec(source="wav", wav_paths=tuple(paths)), ("a", "b"), 16000, 4.0, False)
    assert [t.participant_raw_id for t in tracks] == ["a", "b"]
    assert all(0 < sum(t.silent) < len(t) for t in tracks)
    assert tracks[0].pcm != tracks[1].pcm


def test_auto_audio_uses_espeak_when_installed_else_synth() -> None:
    spec = AudioSpec(source="auto", seed=7)
    assert spec.resolved_source() == ("espeak" if shutil.which("espeak-ng") else "synth")
    assert espeak_available() == (shutil.which("espeak-ng") is not None)
    (mixed,) = build_tracks(spec, ("a", "b"), 16000, 3.0, True)
    assert 0 < sum(mixed.silent) < len(mixed) == 150
    synth = build_tracks(AudioSpec(source="synth", seed=7), ("a", "b"), 24000, 3.0, False)
    other_ids = build_tracks(AudioSpec(source="synth", seed=7), ("c", "d"), 24000, 3.0, False)
    assert [t.pcm for t in other_ids] == [t.pcm for t in synth]  # shared audio, own ids
    assert [t.participant_raw_id for t in other_ids] == ["c", "d"] and '"c"' in other_ids[0].participant_json
    again = _encoded.__wrapped__(AudioSpec(source="synth", seed=7), 2, 24000, 3.0, False)
    assert [t.pcm for t in again] == [t.pcm for t in synth]  # deterministic per seed


def test_hmac_verify_accepts_a_spec_signature_and_rejects_changes() -> None:
    key = base64.b64encode(b"k" * 32).decode()
    body = b'{"a":1}'
    path = "/calling/callConnections?api-version=2026-03-12"
    headers = {k.lower(): v for k, v in sign("POST", path, "127.0.0.1:9", body, key).items()}
    headers["host"] = "127.0.0.1:9"
    raw_path, query = path.split("?")

    def check(**over: object) -> None:
        args = {"method": "POST", "raw_path": raw_path.encode(), "query_string": query.encode(),
                "headers": headers, "body": body, "secret": base64.b64decode(key), "max_skew_s": 900.0, **over}
        hmac_auth.verify(**args)  # type: ignore[arg-type]

    check()
    for change in ({"method": "GET"}, {"body": b'{"a":2}'}, {"query_string": b"api-version=2025-06-15"},
                   {"headers": {**headers, "host": "127.0.0.1:10"}}, {"secret": b"other"},
                   {"headers": {**headers, "x-ms-date": formatdate(0, usegmt=True)}},
                   {"headers": {k: v for k, v in headers.items() if k != "authorization"}}):
        with pytest.raises(hmac_auth.HmacError):
            check(**change)


def test_identifiers_get_kind_and_raw_id() -> None:
    assert normalize({"rawId": "4:+1555", "phoneNumber": {"value": "+1555"}}) == {
        "kind": "phoneNumber", "rawId": "4:+1555", "phoneNumber": {"value": "+1555"}}
    assert normalize({"communicationUser": {"id": "8:acs:x"}}) == {
        "kind": "communicationUser", "rawId": "8:acs:x", "communicationUser": {"id": "8:acs:x"}}
    assert normalize("+1555")["kind"] == "phoneNumber"
    assert normalize({"rawId": "28:orgid:app"})["kind"] == "microsoftTeamsApp"


def test_scripts_and_config_validate() -> None:
    script = CallScript.from_dict({"durationS": 3, "faults": {"gaps": [[1, 0.5]], "dropAtS": 2},
                                   "audio": {"source": "synth"}, "dtmf": [[0.5, "9"]]})
    assert script.duration_s == 3 and script.faults.gaps == ((1, 0.5),) and script.dtmf == ((0.5, "9"),)
    assert script.faults.gap_frames() == frozenset(range(50, 75)) and script.faults.drop_frame() == 100
    for bad in ({"speakers": 5}, {"outcome": "maybe"}, {"dtmf": [[0, "x"]]}, {"nope": 1}):
        with pytest.raises(ValueError):
            CallScript.from_dict(bad)
    with pytest.raises(ValueError):
        SimulatorConfig(access_key="not base64!")
    with pytest.raises(ValueError):
        AudioSpec(source="wav")
    tracks = build_tracks(AudioSpec(source="synth"), ("a",), 16000, 1.0, False)
    with pytest.raises(ValueError):
        MediaPlan(tracks=tracks + build_tracks(AudioSpec(source="synth"), ("a",), 24000, 1.0, False),
                  subscription_id="s", epoch_ms=0)
    assert Faults().gap_frames() == frozenset()


def test_espeak_failure_degrades_to_synth_only_for_auto() -> None:
    silent_text = ("",)  # espeak-ng says nothing → no utterances (or espeak-ng is not installed at all)
    (mixed,) = build_tracks(AudioSpec(source="auto", texts=silent_text), ("a",), 16000, 2.0, True)
    assert sum(mixed.silent) < len(mixed)
    with pytest.raises(RuntimeError):
        build_tracks(AudioSpec(source="espeak", texts=silent_text), ("a",), 16000, 2.0, True)
