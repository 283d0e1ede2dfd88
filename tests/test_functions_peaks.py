"""The recordings page's server side over real HTTP against Azurite: waveform peaks (computed by the streamer's
store when a chunk lands, or from the audio for older chunks), Range requests on the stitched WAV, and the page's
routes (anonymous code, locked-down headers, data still behind the function key)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import peaks, wav
from common.layout import chunk_blob, stream_id
from devstack.azurite import Azurite
from function_app import ui
from function_app.validation import parse_range
from streamer.store import AzureBlobBackend
from streamer.store import RecordingStore as StreamerStore
from tests.functions_support import HostUnderTest, hosted, make_settings, new_container, put_recording, store_for

RATE = 16000
FRAME = 640  # 20 ms at 16 kHz


@pytest.fixture(scope="module")
def container(azurite: Azurite) -> str:
    name = new_container()
    store_for(azurite, name)
    return name


@pytest.fixture(scope="module")
def host(azurite: Azurite, container: str) -> Iterator[HostUnderTest]:
    with hosted(make_settings(azurite, container, sas_ttl_seconds=600)) as host:
        yield host


def speech(seconds: float, amplitude: int) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype("<i2")


def test_levels_mark_loud_quiet_and_unreceived_spans() -> None:
    # 0.3 s at half scale, 0.2 s received digital silence, 0.5 s never received (the recorder's zeros)
    pcm = np.concatenate([speech(0.3, 16384), np.zeros(int(0.7 * RATE), dtype="<i2")])
    occupied = np.zeros(50, dtype=bool)
    occupied[:25] = True
    got = peaks.levels(pcm.tobytes(), occupied, FRAME, RATE)
    assert len(got) == 10
    assert list(got[:3]) == [127, 127, 127]  # ceil(16384 * 254 / 32768)
    assert list(got[3:5]) == [0, 0]
    assert list(got[5:]) == [peaks.NO_AUDIO] * 5
    full = peaks.levels(np.array([-32768, 1], dtype="<i2").tobytes(), np.ones(1, dtype=bool), FRAME, RATE)
    assert list(full) == [254]
    whisper = peaks.levels(np.array([1] * 10, dtype="<i2").tobytes(), np.ones(1, dtype=bool), FRAME, RATE)
    assert list(whisper) == [1]  # any sound is visible


def test_downsample_keeps_the_loudest_received_level() -> None:
    v = np.array([5, peaks.NO_AUDIO, 0, 9, peaks.NO_AUDIO, peaks.NO_AUDIO, 3], dtype=np.uint8)
    known = np.array([True, True, True, True, True, True, False])
    out, k = peaks.downsample(v, known, 2)
    assert list(out) == [5, 9, peaks.NO_AUDIO, peaks.NO_AUDIO]
    assert list(k) == [True, True, True, False]


def test_peaks_round_trip_through_metadata() -> None:
    v = np.array([0, 1, 254, 255], dtype=np.uint8)
    decoded = peaks.decode({peaks.META_KEY: peaks.encode(v)})
    assert decoded is not None and list(decoded) == [0, 1, 254, 255]
    assert peaks.decode({}) is None and peaks.decode({peaks.META_KEY: "not base64!"}) is None


def land(azurite: Azurite, container: str, call: str, stream: str, seq: int, pcm: np.ndarray,
         occupied: np.ndarray) -> None:
    """A chunk stored by the streamer's own store (so with the metadata it really writes)."""

    async def go() -> None:
        backend = AzureBlobBackend(container, connection_string=azurite.connection_string)
        try:
            await StreamerStore(backend).put_chunk(chunk_blob(call, stream, seq), wav.encode(pcm.tobytes(), RATE),
                                                   occupied.astype(np.uint8).tobytes(), FRAME)
        finally:
            await backend.close()

    asyncio.run(go())


def test_the_peaks_api_answers_stored_peaks_on_the_call_clock(host: HostUnderTest, azurite: Azurite,
                                                              container: str) -> None:
    call, who = str(uuid.uuid4()), "8:acs:res_alice"
    loud = np.concatenate([speech(0.5, 30000), np.zeros(RATE // 2, dtype="<i2")])
    quiet = np.zeros(RATE, dtype="<i2")
    put_recording(host.runtime.store, call, {who: {0: loud.tobytes(), 2: quiet.tobytes()}})
    half = np.zeros(50, dtype=bool)
    half[:25] = True
    for seq, audio, occupied in ((0, loud, np.ones(50, dtype=bool)), (2, quiet, half)):
        # the manifest is put_recording's; the chunks are stored again as the streamer stores them
        host.runtime.store.container.delete_blob(chunk_blob(call, stream_id(who), seq))
        land(azurite, container, call, stream_id(who), seq, audio, occupied)
    with host.client() as http:
        doc = http.get(f"/recordings/{call}/peaks").json()
        coarse = http.get(f"/recordings/{call}/peaks", params={"pointsPerSecond": "2"}).json()
        one = http.get(f"/recordings/{call}/peaks", params={"participant": who})
        other = http.get(f"/recordings/{call}/peaks", params={"participant": "8:acs:res_bob"})
    assert doc["pointsPerSecond"] == 10 and doc["scale"] == 254 and doc["computedChunks"] == 0
    assert doc["clockOrigin"] == "2026-01-01T00:00:00.000Z" and doc["sampleRate"] == RATE
    (s,) = doc["streams"]
    assert s["participantRawId"] == who and len(s["levels"]) == 30
    assert all(v >= 220 for v in s["levels"][:5]) and s["levels"][5:10] == [0] * 5  # loud, then received silence
    assert s["levels"][10:20] == [-1] * 10  # seq 1: no chunk
    assert s["levels"][20:25] == [0] * 5 and s["levels"][25:] == [-1] * 5  # half received, half filled
    assert coarse["pointsPerSecond"] == 2
    assert coarse["streams"][0]["levels"] == [max(s["levels"][:5]), 0, -1, -1, 0, -1]
    assert one.status_code == 200 and one.json()["streams"][0]["stream"] == stream_id(who)
    assert other.status_code == 404 and other.json()["error"]["field"] == "participant"
    # what a page following a live call asks for: only chunks from fromSeq on, joined at firstPoint
    with host.client() as http:
        newest = http.get(f"/recordings/{call}/peaks", params={"fromSeq": "2"}).json()
        newest_coarse = http.get(f"/recordings/{call}/peaks", params={"fromSeq": "1", "pointsPerSecond": "2"}).json()
        beyond = http.get(f"/recordings/{call}/peaks", params={"fromSeq": "7"}).json()
        bad = http.get(f"/recordings/{call}/peaks", params={"fromSeq": "-1"})
    assert newest["firstPoint"] == 20 and newest["streams"][0]["levels"] == s["levels"][20:]
    assert newest_coarse["firstPoint"] == 2 and newest_coarse["streams"][0]["levels"] == \
        coarse["streams"][0]["levels"][2:]
    assert beyond["firstPoint"] == 70 and beyond["streams"][0]["levels"] == []
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "fromSeq"


def test_chunks_stored_without_peaks_are_computed_from_their_audio(host: HostUnderTest) -> None:
    call = str(uuid.uuid4())
    loud = np.concatenate([speech(0.5, 30000), np.zeros(RATE // 2, dtype="<i2")])
    put_recording(host.runtime.store, call, {None: {0: loud.tobytes(), 1: loud.tobytes()}})
    with host.client() as http:
        doc = http.get(f"/recordings/{call}/peaks").json()
    assert doc["computedChunks"] == 2
    levels = doc["streams"][0]["levels"]
    expected = peaks.levels(loud.tobytes(), np.ones(50, dtype=bool), FRAME, RATE).tolist()
    assert levels == expected + expected


@pytest.mark.parametrize("value", ["0", "11", "-1", "abc", "nan", "inf", "１", "0.001", "1e-7", "1e-300", " 5", "+5",
                                   "0_5", "0x1"])
def test_bad_points_per_second_is_refused(host: HostUnderTest, value: str) -> None:
    with host.client() as http:
        resp = http.get("/recordings/some-call/peaks", params={"pointsPerSecond": value})
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "pointsPerSecond"


def test_peaks_of_a_call_without_audio_and_of_no_call(host: HostUnderTest) -> None:
    call = str(uuid.uuid4())
    host.runtime.store.update_state(call, lambda s: s.update(status="connecting") or True)
    with host.client() as http:
        empty = http.get(f"/recordings/{call}/peaks")
        missing = http.get(f"/recordings/{uuid.uuid4()}/peaks")
    assert empty.status_code == 200 and empty.json()["streams"] == []
    assert missing.status_code == 404


@pytest.fixture(scope="module")
def stitched(host: HostUnderTest) -> tuple[str, bytes]:
    call = str(uuid.uuid4())
    c0, c2 = os.urandom(2 * RATE), os.urandom(RATE // 3 * 2)
    put_recording(host.runtime.store, call, {None: {0: c0, 2: c2}})
    with host.client() as http:
        whole = http.get(f"/recordings/{call}/audio")
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    return call, whole.content


@settings(max_examples=25, deadline=None)
@given(first=st.integers(0, 70000), size=st.integers(1, 70000))
def test_a_range_of_the_stitched_wav_is_those_bytes_of_the_whole(host: HostUnderTest, stitched: tuple[str, bytes],
                                                                  first: int, size: int) -> None:
    call, whole = stitched
    first = min(first, len(whole) - 1)
    last = first + size - 1
    with host.client() as http:
        resp = http.get(f"/recordings/{call}/audio", headers={"Range": f"bytes={first}-{last}"})
    assert resp.status_code == 206
    end = min(last, len(whole) - 1)
    assert resp.content == whole[first:end + 1]
    assert resp.headers["content-range"] == f"bytes {first}-{end}/{len(whole)}"
    assert int(resp.headers["content-length"]) == end - first + 1


def test_range_edge_cases(host: HostUnderTest, stitched: tuple[str, bytes]) -> None:
    call, whole = stitched
    with host.client() as http:
        suffix = http.get(f"/recordings/{call}/audio", headers={"Range": "bytes=-100"})
        past = http.get(f"/recordings/{call}/audio", headers={"Range": f"bytes={len(whole)}-"})
        malformed = http.get(f"/recordings/{call}/audio", headers={"Range": "bytes=5-2"})
        several = http.get(f"/recordings/{call}/audio", headers={"Range": "bytes=0-1,5-6"})
    assert suffix.status_code == 206 and suffix.content == whole[-100:]
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(whole)}"
    assert past.json()["error"]["code"] == "RangeNotSatisfiable"
    assert malformed.status_code == 200 and malformed.content == whole  # ignored, as RFC 9110 allows
    assert several.status_code == 200 and several.content == whole


def test_parse_range() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-", 10) == (0, 9)
    assert parse_range("bytes=2-100", 10) == (2, 9)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=-30", 10) == (0, 9)
    assert parse_range("items=0-1", 10) is None
    assert parse_range("bytes=a-b", 10) is None
    assert parse_range("bytes=-0", 10) is None


def test_the_page_is_served_without_a_key_but_its_data_needs_one(host: HostUnderTest) -> None:
    with host.client(key=None) as anonymous:
        page = anonymous.get("/ui")
        script = anonymous.get("/ui/app.js")
        again = anonymous.get("/ui/app.js", headers={"If-None-Match": script.headers["etag"]})
        unknown = anonymous.get("/ui/index.html")
        traversal = anonymous.get("/ui/..%2Fapp.py")
        data = [anonymous.get(p).status_code for p in ("/recordings", "/recordings/x/peaks", "/recordings/x/audio")]
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "media-src 'self' blob: http://127.0.0.1:" in csp  # the storage account serves the finished files
    assert page.headers["x-frame-options"] == "DENY" and page.headers["referrer-policy"] == "no-referrer"
    assert 'src="/api/ui/app.js"' in page.text and 'data-api="/api"' in page.text
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert again.status_code == 304
    assert unknown.status_code == 404 and traversal.status_code == 404
    assert data == [401, 401, 401]


def test_the_page_is_small_and_self_contained() -> None:
    total = sum(len(a.body) for a in ui.ASSETS.values()) + len(ui._PAGE.encode())
    assert total < 200 * 1024, total
    for name, a in [*ui.ASSETS.items(), ("index.html", ui.Asset(ui._PAGE.encode(), "", ""))]:
        text = a.body.decode()
        assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text, name
        assert "@import" not in text and "fonts." not in text, name


def test_api_root_follows_the_route_prefix() -> None:
    assert ui.api_root("/api/ui") == "/api"
    assert ui.api_root("/api/ui/") == "/api"
    assert ui.api_root("/ui") == ""
    assert ui.api_root("/x/api/ui") == "/x/api"
    assert ui.api_root("/api/UI") == "/api"


def test_the_lowest_resolution_is_bounded(host: HostUnderTest) -> None:
    call = str(uuid.uuid4())
    put_recording(host.runtime.store, call, {None: {0: speech(1.0, 9000).tobytes()}})
    with host.client() as http:
        doc = http.get(f"/recordings/{call}/peaks", params={"pointsPerSecond": "0.01"}).json()
    assert doc["pointsPerSecond"] == 0.01 and len(doc["streams"][0]["levels"]) == 1


def test_peaks_stay_on_the_audio_when_chunks_are_not_whole_points(host: HostUnderTest) -> None:
    """30-ms frames make 0.99-s chunks: chunk 100 starts at 99.0 s, where stitching puts it, not at 100 s."""
    call = str(uuid.uuid4())
    samples = round(0.99 * RATE)
    loud = speech(samples / RATE, 30000).tobytes()
    put_recording(host.runtime.store, call, {None: {0: bytes(2 * samples), 100: loud}}, chunk_seconds=0.99)
    with host.client() as http:
        levels = http.get(f"/recordings/{call}/peaks").json()["streams"][0]["levels"]
        audio = http.get(f"/recordings/{call}/audio").content
    loud_from = next(i for i, v in enumerate(levels) if v is not None and v > 100)
    assert loud_from == 990  # 99.0 s
    first_sample = next(i for i, v in enumerate(np.frombuffer(audio[44:], dtype="<i2")) if abs(v) > 1000)
    assert abs(first_sample / RATE - loud_from / 10) < 0.1


def test_hostile_chunk_metadata_and_manifests_get_clear_answers(host: HostUnderTest) -> None:
    call = str(uuid.uuid4())
    put_recording(host.runtime.store, call, {None: {0: speech(1.0, 9000).tobytes(), 1: speech(1.0, 9000).tobytes()}})
    blob = host.runtime.store.container.get_blob_client(chunk_blob(call, "mixed", 0))
    for bad in ("0", "abc", "-640", "2000000000"):
        blob.set_blob_metadata({"slotbytes": bad})
        with host.client() as http:
            resp = http.get(f"/recordings/{call}/peaks")
        assert resp.status_code == 200, (bad, resp.text)
        assert resp.json()["streams"][0]["levels"][:10] == [None] * 10  # not known, rather than a 500
    far = str(uuid.uuid4())
    put_recording(host.runtime.store, far, {None: {10 ** 9: speech(1.0, 9000).tobytes()}})
    with host.client() as http:
        resp = http.get(f"/recordings/{far}/peaks")
        huge = http.get(f"/recordings/{call}/audio", headers={"Range": "bytes=" + "9" * 5000 + "-"})
        huge_last = http.get(f"/recordings/{call}/audio", headers={"Range": "bytes=0-" + "9" * 5000})
        huge_from = http.get(f"/recordings/{call}/peaks", params={"fromSeq": "999999999"})
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "NoEnvelope"
    assert huge.status_code == 416
    assert huge_last.status_code == 206 and len(huge_last.content) == int(huge_last.headers["content-length"])
    assert huge_from.status_code == 200 and huge_from.json()["streams"][0]["levels"] == []


def test_a_very_long_chunk_keeps_its_metadata_under_azures_limit() -> None:
    """Azure refuses blob metadata over 8 KiB; peaks (10 bytes a second) would pass it at ~6 minutes a chunk, so a
    chunk that long is stored without them (the page computes them from its audio)."""
    from streamer.store import MAX_METADATA_CHARS, _chunk_meta

    for seconds, kept in ((10, True), (600, False)):
        pcm = np.zeros(seconds * RATE, dtype="<i2").tobytes()
        meta = _chunk_meta(1, "0" * 64, np.ones(seconds * 50, dtype=bool), FRAME, pcm, RATE)
        assert (peaks.META_KEY in meta) is kept
        assert sum(len(k) + len(v) for k, v in meta.items()) <= MAX_METADATA_CHARS
