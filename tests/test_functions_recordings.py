"""Retrieval over real HTTP against Azurite: recent calls (newest first, paged), one recording with working
account-key SAS URLs, and the stitched WAV (RIFF sizes and PCM bytes exact, gaps and missing chunks as silence)."""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from common import manifest as mf
from common.layout import chunk_blob, stream_id
from devstack.azurite import Azurite
from function_app import state as state_model
from tests.functions_support import HostUnderTest, hosted, make_settings, new_container, put_recording, store_for

RATE = 16000
SECOND = RATE * 2  # bytes of one 1 s chunk


@pytest.fixture(scope="module")
def host(azurite: Azurite) -> Iterator[HostUnderTest]:
    container = new_container()
    store_for(azurite, container)
    with hosted(make_settings(azurite, container, sas_ttl_seconds=600)) as host:
        yield host


def pcm(n_bytes: int) -> bytes:
    return os.urandom(n_bytes // 2 * 2)


def remember(host: HostUnderTest, call_id: str, created: datetime, **fields: object) -> None:
    stamp = created.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    host.runtime.store.update_state(call_id, lambda s: state_model.record_request(
        s, createdAt=stamp, direction="outbound", **fields) or True)
    host.runtime.store.add_to_index(call_id, created)


def riff(data: bytes) -> tuple[int, int, int, int, int, int]:
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt " and data[36:40] == b"data"
    riff_size, = struct.unpack_from("<I", data, 4)
    fmt, channels, rate, byte_rate, align, bits = struct.unpack_from("<HHIIHH", data, 20)
    data_size, = struct.unpack_from("<I", data, 40)
    assert (fmt, channels, byte_rate, align, bits) == (1, 1, rate * 2, 2, 16)
    return riff_size, rate, data_size, len(data), fmt, channels


def test_recent_calls_newest_first_and_paged(host: HostUnderTest, azurite: Azurite) -> None:
    container = new_container()
    store = store_for(azurite, container)
    saved = host.runtime.store
    host.runtime.store = store
    try:
        base = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        ids = [f"call-{i}-{uuid.uuid4().hex[:6]}" for i in range(5)]
        for i, call_id in enumerate(ids):
            remember(host, call_id, base + timedelta(minutes=i), target=f"+1555000000{i}")
        with host.client() as http:
            first = http.get("/recordings", params={"limit": 2}).json()
            second = http.get("/recordings", params={"limit": 2, "pageToken": first["nextPageToken"]}).json()
            third = http.get("/recordings", params={"limit": 2, "pageToken": second["nextPageToken"]}).json()
            everything = http.get("/recordings").json()
    finally:
        host.runtime.store = saved
    newest_first = list(reversed(ids))
    assert [i["callConnectionId"] for i in first["items"]] == newest_first[:2]
    assert [i["callConnectionId"] for i in second["items"]] == newest_first[2:4]
    assert [i["callConnectionId"] for i in third["items"]] == newest_first[4:]
    assert third["nextPageToken"] is None
    assert [i["callConnectionId"] for i in everything["items"]] == newest_first
    item = first["items"][0]
    assert item["target"] == "+15550000004" and item["callStatus"] == "connecting" and item["status"] == "live"
    assert item["createdAt"] == "2026-03-01T12:04:00.000Z" and item["direction"] == "outbound"


@pytest.mark.parametrize(("params", "field"), [({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"),
                                               ({"limit": "ten"}, "limit"), ({"limit": "²"}, "limit"),
                                               ({"limit": "٣"}, "limit"), ({"pageToken": "bogus!"}, "pageToken")])
def test_listing_bad_input(host: HostUnderTest, params: dict[str, str], field: str) -> None:
    with host.client() as http:
        resp = http.get("/recordings", params=params)
    assert resp.status_code == 400 and resp.json()["error"]["field"] == field


def test_one_recording_with_short_lived_chunk_urls(host: HostUnderTest) -> None:
    call = str(uuid.uuid4())
    alice, bob = "8:acs:res_alice", "4:+15551234567"
    chunks = {alice: {0: pcm(SECOND), 1: pcm(SECOND)}, bob: {1: pcm(SECOND // 2)}}
    put_recording(host.runtime.store, call, chunks)
    remember(host, call, datetime.now(UTC), target="+15551234567", audioChannel="unmixed")
    before = datetime.now(UTC)
    with host.client() as http:
        resp = http.get(f"/recordings/{call}")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["callConnectionId"] == call
    assert body["callState"]["target"] == "+15551234567"
    assert body["manifest"]["callConnectionId"] == call and body["manifest"]["sampleRate"] == RATE
    expires = datetime.fromisoformat(body["urlsExpireAt"].replace("Z", "+00:00"))
    assert timedelta(seconds=590) <= expires - before <= timedelta(seconds=610)
    streams = {s["participantRawId"]: s for s in body["streams"]}
    assert set(streams) == {alice, bob}
    assert streams[bob]["audioUrl"] == f"{host.url}/api/recordings/{call}/audio?participant=4%3A%2B15551234567"
    for participant, seqs in chunks.items():
        got = streams[participant]["chunks"]
        assert [c["seq"] for c in got] == sorted(seqs)
        for c in got:
            fetched = httpx.get(c["url"], timeout=10)  # no key, no credential: the SAS is the authorisation
            assert fetched.status_code == 200
            assert fetched.content[44:] == seqs[c["seq"]]
            assert "sig=" in c["url"] and "sp=r" in c["url"]
    url = streams[alice]["chunks"][0]["url"]
    forged = url.replace(chunk_blob(call, stream_id(alice), 0), chunk_blob(call, stream_id(alice), 1))
    assert httpx.get(forged, timeout=10).status_code == 403  # a SAS is good for its own blob only


def test_unknown_and_invalid_recording(host: HostUnderTest) -> None:
    with host.client() as http:
        missing = http.get("/recordings/no-such-call")
        invalid = http.get("/recordings/bad..id")
        audio_missing = http.get("/recordings/no-such-call/audio")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "RecordingNotFound"
    assert invalid.status_code == 400 and invalid.json()["error"]["field"] == "callConnectionId"
    assert audio_missing.status_code == 404


def test_call_without_audio_yet(host: HostUnderTest) -> None:
    call = str(uuid.uuid4())
    remember(host, call, datetime.now(UTC))
    with host.client() as http:
        shown = http.get(f"/recordings/{call}")
        audio = http.get(f"/recordings/{call}/audio")
    assert shown.status_code == 200 and shown.json()["manifest"] is None and shown.json()["streams"] == []
    assert audio.status_code == 404 and audio.json()["error"]["code"] == "NoAudioYet"
    # streaming started (the manifest holds the claimed clock) but no chunk has landed yet: still NoAudioYet,
    # not "participant is required for this unmixed recording"
    m = mf.merge(None, mf.Part(call_connection_id=call, sample_rate=16000, chunk_seconds=10.0,
                               clock_origin="2026-01-01T00:00:00.000Z", audio_channel="mixed"))
    host.runtime.store.container.upload_blob(f"{call}/manifest.json", mf.dumps(m))
    with host.client() as http:
        audio = http.get(f"/recordings/{call}/audio")
    assert audio.status_code == 404 and audio.json()["error"]["code"] == "NoAudioYet"


def test_stitched_mixed_wav_with_missing_and_short_chunks(host: HostUnderTest) -> None:
    call = str(uuid.uuid4())
    c0, c2, c3, c5 = pcm(SECOND), pcm(SECOND // 4), pcm(SECOND), pcm(SECOND // 3)
    put_recording(host.runtime.store, call, {None: {0: c0, 2: c2, 3: c3, 5: c5}})
    with host.client() as http, http.stream("GET", f"/recordings/{call}/audio") as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "audio/wav"
        assert resp.headers["content-disposition"] == f'attachment; filename="{call}-mixed.wav"'
        parts = list(resp.iter_raw())
        data = b"".join(parts)
    expected_pcm = c0 + bytes(SECOND) + c2 + bytes(SECOND - len(c2)) + c3 + bytes(SECOND) + c5
    riff_size, rate, data_size, total, _, _ = riff(data)
    assert (rate, data_size, riff_size, total) == (RATE, len(expected_pcm), 36 + len(expected_pcm),
                                                    44 + len(expected_pcm))
    assert int(resp.headers["content-length"]) == total
    assert data[44:] == expected_pcm
    assert len(parts) > 1  # streamed in pieces, not built in one buffer


def test_stitched_participant_streams_align_on_the_call_clock(host: HostUnderTest) -> None:
    call = str(uuid.uuid4())
    alice, bob = "8:acs:res_alice", "8:acs:res_bob"
    a0, a1, b2 = pcm(SECOND), pcm(SECOND), pcm(SECOND // 2)
    put_recording(host.runtime.store, call, {alice: {0: a0, 1: a1}, bob: {2: b2}})
    with host.client() as http:
        ambiguous = http.get(f"/recordings/{call}/audio")
        unknown = http.get(f"/recordings/{call}/audio", params={"participant": "8:acs:res_carol"})
        bob_wav = http.get(f"/recordings/{call}/audio", params={"participant": bob})
        alice_wav = http.get(f"/recordings/{call}/audio", params={"participant": stream_id(alice)})
    assert ambiguous.status_code == 400 and ambiguous.json()["error"]["field"] == "participant"
    assert unknown.status_code == 404 and unknown.json()["error"]["field"] == "participant"
    assert bob_wav.status_code == 200 and bob_wav.content[44:] == bytes(2 * SECOND) + b2
    assert riff(bob_wav.content)[2] == 2 * SECOND + len(b2)
    assert alice_wav.content[44:] == a0 + a1


def test_chunk_listed_but_missing_in_storage_is_silence(host: HostUnderTest) -> None:
    call = str(uuid.uuid4())
    c0, c1, c2 = pcm(SECOND), pcm(SECOND), pcm(SECOND)
    put_recording(host.runtime.store, call, {None: {0: c0, 1: c1, 2: c2}})
    host.runtime.store.container.delete_blob(chunk_blob(call, "mixed", 1))
    with host.client() as http:
        resp = http.get(f"/recordings/{call}/audio", params={"participant": "mixed"})
    assert resp.status_code == 200 and resp.content[44:] == c0 + bytes(SECOND) + c2
    assert riff(resp.content)[2] == 3 * SECOND


def test_24k_recording(host: HostUnderTest) -> None:
    call = str(uuid.uuid4())
    c0, c1 = pcm(48000), pcm(1000)
    put_recording(host.runtime.store, call, {None: {0: c0, 1: c1}}, rate=24000)
    with host.client() as http:
        resp = http.get(f"/recordings/{call}/audio")
    riff_size, rate, data_size, total, _, _ = riff(resp.content)
    assert (riff_size, rate, data_size, total) == (36 + 49000, 24000, 49000, 44 + 49000)
    assert (rate, data_size) == (24000, 49000) and resp.content[44:] == c0 + c1


def test_retrieval_needs_a_function_key(host: HostUnderTest) -> None:
    with host.client(key=None) as anonymous, host.client(key="wrong") as wrong:
        for http in (anonymous, wrong):
            assert http.get("/recordings").status_code == 401
            assert http.get("/recordings/x").status_code == 401
            assert http.get("/recordings/x/audio").status_code == 401
