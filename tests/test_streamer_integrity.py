"""Audio once stored is the truth: the defects an adversarial probe found, each against the real streamer and Azurite.

Every test here failed before its fix (see the README, "Never losing audio"): a reconnect during a storage blip,
or with the call id only in AudioMetadata, overwrote the call's audio; a wild first timestamp stranded the call; a
permanent upload error stalled every call; a second session replaced stored audio; DTMF was unbounded; rotating
dominant speakers were dropped and closed the socket; a hard kill during an outage lost every queued chunk; bogus
timestamp jumps wrote megabytes of zeros; and a handful of smaller ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from common import manifest as mf
from common import wav
from common.layout import stream_id
from devstack.azurite import Azurite
from tests import recording as rec
from tests.acs_frames import at, audio, iso, metadata, tone_pcm
from tests.test_streamer_faults import live_then
from tests.test_streamer_ws import headers, send_all


def _wait(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _frames(frames: list[bytes], start: int = 0, participant: str | None = None) -> list[str | bytes | float]:
    return [audio(f, at(start + i), participant=participant) for i, f in enumerate(frames)]


# -- 1. a session is never placed on a clock it could not load ----------------------------------------------------
def test_reconnect_during_a_storage_blip_continues_the_clock_and_overwrites_nothing(streamer_factory, token_issuer,
                                                                                     tmp_path):
    az = Azurite(location=tmp_path / "azurite").start()
    try:
        s = streamer_factory(storage=az)
        first, second = tone_pcm(100, seed=1), tone_pcm(100, seed=2)
        asyncio.run(send_all(f"{s.ws}/mixed", [metadata(), *_frames(first)], headers(token_issuer.token(), "blip")))
        m1 = rec.wait_complete(s.container, "blip")
        before = {c["seq"]: c["sha256"] for c in m1["streams"][0]["chunks"]}
        az.stop()  # storage goes down; ACS reconnects the call (streaming restarted 3 s into the call)
        asyncio.run(send_all(f"{s.ws}/mixed", [metadata(subscription_id="sub-2"), *_frames(second, start=150)],
                             headers(token_issuer.token(), "blip")))
        time.sleep(1.0)
        az.start()
        m = rec.wait_complete(s.container, "blip", timeout=60, sessions=2)
        chunks = {c["seq"]: c for c in m["streams"][0]["chunks"]}
        assert sorted(chunks) == [0, 1, 3, 4]  # session 2 is on the stored clock: seq 3 on, not 0 on
        assert {k: chunks[k]["sha256"] for k in before} == before  # session 1's chunks untouched
        assert rec.stitched(s.container, m, "mixed") == b"".join(first) + bytes(50 * 640) + b"".join(second)
        assert all(x["complete"] for x in m["sessions"]) and m["complete"] is True
    finally:
        az.close()


def test_call_id_from_subscription_id_loads_the_stored_clock(streamer_factory, token_issuer):
    """No x-ms-call-connection-id header: the call id comes from AudioMetadata, and the stored clock is loaded
    then (it was never loaded: the second session restarted at seq 0 over the first one's audio)."""
    s = streamer_factory()
    first, second = tone_pcm(100, seed=3), tone_pcm(100, seed=4)
    asyncio.run(send_all(s.ws, [metadata(subscription_id="sub-call"), *_frames(first)],
                         {"Authorization": f"Bearer {token_issuer.token()}"}))
    rec.wait_complete(s.container, "sub-call")
    asyncio.run(send_all(s.ws, [metadata(subscription_id="sub-call"), *_frames(second, start=150)],
                         {"Authorization": f"Bearer {token_issuer.token()}"}))
    m = rec.wait_complete(s.container, "sub-call", sessions=2)
    assert [c["seq"] for c in m["streams"][0]["chunks"]] == [0, 1, 3, 4]
    assert rec.stitched(s.container, m, "mixed") == b"".join(first) + bytes(50 * 640) + b"".join(second)
    assert all(c["revision"] == 1 for c in m["streams"][0]["chunks"])


def test_two_sessions_opening_a_new_call_at_once_share_one_clock(streamer_factory, token_issuer):
    """Both find no manifest; the first to create it sets the clock origin and the other adopts it."""
    s = streamer_factory()
    a, b = tone_pcm(100, seed=5), tone_pcm(100, seed=6)

    async def both() -> None:  # b connects while a's clock claim may still be on its way
        await asyncio.gather(
            send_all(f"{s.ws}/unmixed", [metadata(), *_frames(a, participant="8:acs:a")],
                     headers(token_issuer.token(), "race")),
            send_all(f"{s.ws}/unmixed", [0.05, metadata(), *_frames(b, start=10, participant="8:acs:b")],
                     headers(token_issuer.token(), "race")))

    asyncio.run(both())
    m = rec.wait_complete(s.container, "race", sessions=2)
    frame = 640
    got_a = rec.stitched(s.container, m, stream_id("8:acs:a"))
    got_b = rec.stitched(s.container, m, stream_id("8:acs:b"))
    origin = mf.parse_iso(m["clockOrigin"])
    offset_a = round((at(0).timestamp() - origin) / 0.02)
    assert got_a[offset_a * frame:] == b"".join(a)
    assert got_b[(offset_a + 10) * frame:] == b"".join(b)  # b started 10 frames after a, on the same clock


# -- 2. a wild first timestamp ------------------------------------------------------------------------------------
@pytest.mark.parametrize("wild", ["2099-01-01T00:00:00.000Z", "2000-01-01T00:00:00.000Z", None])
def test_a_wild_first_timestamp_does_not_strand_the_call(streamer_factory, token_issuer, wild):
    s = streamer_factory()
    frames = tone_pcm(100, seed=7)
    first = json.loads(audio(frames[0], at(0), participant=None))
    if wild is None:
        del first["audioData"]["timestamp"]  # missing: once the epoch (1970) became the origin
    else:
        first["audioData"]["timestamp"] = wild
    call = f"wild-{(wild or 'none')[:4]}"
    asyncio.run(send_all(s.ws, [metadata(), json.dumps(first), *_frames(frames[1:], start=1)],
                         headers(token_issuer.token(), call)))
    m = rec.wait_complete(s.container, call)
    assert abs(mf.parse_iso(m["clockOrigin"]) - at(0).timestamp()) < 5
    assert rec.stitched(s.container, m, "mixed").endswith(b"".join(frames[1:]))
    (session,) = m["sessions"]
    assert session["lateFramesDropped"] == 0 and session["frames"] == 100
    assert [c["seq"] for c in m["streams"][0]["chunks"]] == [0, 1]


# -- 3. a permanent upload error is quarantined, never in the way of other calls ------------------------------------
def test_a_poison_chunk_is_quarantined_and_other_calls_keep_landing(streamer_factory, token_issuer):
    s = streamer_factory(UPLOAD_CONCURRENCY="1")
    # A chunk slot already holding audio at another rate (an earlier recorder version, an operator's copy, ...):
    # this call's first chunk can never be merged into it.
    s.container.upload_blob("poison/mixed/000000.wav", wav.encode(bytes(960 * 10), 24000))
    frames, other = tone_pcm(150, seed=8), tone_pcm(150, seed=9)
    asyncio.run(send_all(s.ws, [metadata(), *_frames(frames)], headers(token_issuer.token(), "poison")))
    asyncio.run(send_all(s.ws, [metadata(), *_frames(other)], headers(token_issuer.token(), "healthy")))
    good = rec.wait_complete(s.container, "healthy")
    assert rec.stitched(s.container, good, "mixed") == b"".join(other)
    _wait(lambda: rec.manifest(s.container, "poison")["sessions"][0].get("endedAt") is not None
          and rec.manifest(s.container, "poison")["sessions"][0]["quarantinedChunks"], 15, "the quarantine record")
    m = rec.manifest(s.container, "poison")
    (session,) = m["sessions"]
    assert [(q["stream"], q["seq"]) for q in session["quarantinedChunks"]] == [("mixed", 0)]
    assert "24000 Hz" in session["quarantinedChunks"][0]["reason"]
    assert m["complete"] is False and [c["seq"] for c in m["streams"][0]["chunks"]] == [1, 2]
    metrics = s.metrics()
    assert metrics["acs_streamer_chunks_quarantined_total"] == 1
    kept = list(Path(s.env["SPOOL_DIR"], "_quarantine", "poison").glob("*.wav"))
    assert len(kept) == 1 and wav.decode(kept[0].read_bytes())[1] == b"".join(frames[:50])
    assert httpx.get(f"{s.http}/readyz").status_code == 200
    assert "chunk quarantined" in s.process.log()


def test_a_second_session_at_another_sample_rate_is_refused_at_metadata_time(streamer_factory, token_issuer):
    s = streamer_factory()
    asyncio.run(send_all(s.ws, [metadata(16000), *_frames(tone_pcm(60))], headers(token_issuer.token(), "rate")))
    rec.wait_complete(s.container, "rate")
    code = asyncio.run(send_all(s.ws, [metadata(24000), *_frames(tone_pcm(60, 24000), start=100)],
                                headers(token_issuer.token(), "rate"), expect_close=True))
    assert code == 1003
    m = rec.manifest(s.container, "rate")
    assert m["sampleRate"] == 16000 and [c["seq"] for c in m["streams"][0]["chunks"]] == [0, 1]
    assert s.metrics()['acs_streamer_bad_frames_total{reason="format_change"}'] == 1
    assert s.metrics()["acs_streamer_chunks_quarantined_total"] == 0


def test_readiness_reports_uploads_that_stopped_landing(tmp_path, monkeypatch):
    """Storage answers pings but one call's writes never land: the replica says so on /readyz."""
    from devstack.serve import ServerThread
    from streamer import sink
    from streamer.app import create_app
    from streamer.settings import Settings
    from streamer.store import MemoryBackend, StorageUnavailable

    class Throttled(MemoryBackend):
        async def create(self, name: str, data: bytes, metadata: dict[str, str], content_type: str) -> str:
            if name.endswith(".wav"):
                raise StorageUnavailable("503 ServerBusy")
            return await super().create(name, data, metadata, content_type)

    monkeypatch.setattr(sink, "STUCK_SECONDS", 1.0)
    settings = Settings.from_env({"STREAMER_AUTH": "disabled", "STREAMER_CALL_CHECK": "disabled",
                                  "AZURE_STORAGE_CONNECTION_STRING": "unused",
                                  "SPOOL_DIR": str(tmp_path / "spool"), "CHUNK_SECONDS": "1"})
    with ServerThread(create_app(settings, Throttled())) as server:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{base}/readyz").status_code == 200
        asyncio.run(send_all(f"ws://127.0.0.1:{server.port}/ws", [metadata(), *_frames(tone_pcm(60))],
                             headers(None, "stuck")))
        _wait(lambda: httpx.get(f"{base}/readyz").status_code == 503, 10, "readiness to drop")
        assert httpx.get(f"{base}/readyz").json()["status"] == "uploads stuck"
        assert list((tmp_path / "spool" / "stuck").glob("c.*.wav"))  # failed once: spooled before any retry


# -- 4. stored audio is never replaced -----------------------------------------------------------------------------
def test_a_second_session_with_the_same_timestamps_cannot_replace_stored_audio(streamer_factory, token_issuer):
    s = streamer_factory()
    honest, forged = tone_pcm(100, seed=10), tone_pcm(100, seed=11)
    asyncio.run(send_all(s.ws, [metadata(), *_frames(honest)], headers(token_issuer.token(), "replace")))
    m1 = rec.wait_complete(s.container, "replace")
    asyncio.run(send_all(s.ws, [metadata(), *_frames(forged)], headers(token_issuer.token(), "replace")))
    m = rec.wait_complete(s.container, "replace", sessions=2)
    assert rec.stitched(s.container, m, "mixed") == b"".join(honest)
    assert m["streams"] == m1["streams"]  # same chunks, same revisions, same hashes
    second = next(x for x in m["sessions"] if x["id"] != m1["sessions"][0]["id"])
    assert second["conflictFrames"] == 100
    assert s.metrics()["acs_streamer_slot_conflicts_total"] == 100


def test_an_empty_socket_neither_creates_nor_reopens_a_recording(streamer_factory, token_issuer):
    s = streamer_factory()
    asyncio.run(send_all(s.ws, [metadata(), *_frames(tone_pcm(60))], headers(token_issuer.token(), "done")))
    done = rec.wait_complete(s.container, "done")

    async def open_and_abort(call_id: str) -> None:
        ws = await connect(s.ws, additional_headers=headers(token_issuer.token(), call_id))
        await ws.send(metadata())
        ws.transport.abort()  # no close handshake

    asyncio.run(open_and_abort("done"))
    asyncio.run(open_and_abort("never-existed"))
    asyncio.run(send_all(s.ws, [metadata()], headers(token_issuer.token(), "never-existed-2")))
    _wait(lambda: s.metrics()["acs_streamer_sessions_without_audio_total"] == 3, 10, "the empty sessions to end")
    after = rec.manifest(s.container, "done")
    assert after["complete"] is True and after["sessions"] == done["sessions"]
    names = {b.name.split("/")[0] for b in s.container.list_blobs()}
    assert names == {"done"}


def _call_state(container, call_id: str, **fields: object) -> None:  # type: ignore[no-untyped-def]
    """What the control plane writes when it places or answers a call (and at each callback)."""
    from function_app.state import new_state

    container.upload_blob(f"{call_id}/call-state.json", json.dumps({**new_state(call_id), **fields}),
                          overwrite=True)


def test_only_calls_the_control_plane_knows_are_recorded(streamer_factory, token_issuer):
    """Any valid ACS token opens a socket for any call id; the streamer records only calls with a call state (the
    control plane placed or answered them), waiting a moment for a call that was just created."""
    from streamer.session import KNOWN_CALL_WAIT_SECONDS

    s = streamer_factory(STREAMER_CALL_CHECK="enabled")
    frames = tone_pcm(60, seed=20)
    _call_state(s.container, "known", status="connected")

    async def run() -> tuple[int | None, int | None, int | None]:
        async def late_state() -> None:  # the control plane records the call 2 s after its media connected
            await asyncio.sleep(2.0)
            await asyncio.to_thread(_call_state, s.container, "just-created", status="connecting")

        t0 = time.monotonic()
        codes = await asyncio.gather(
            send_all(s.ws, [metadata(), *_frames(frames)], headers(token_issuer.token(), "known")),
            send_all(s.ws, [metadata(), *_frames(frames), 3.0], headers(token_issuer.token(), "just-created")),
            send_all(s.ws, [metadata(), *_frames(frames)], headers(token_issuer.token(), "made-up"),
                     expect_close=True, close_timeout=KNOWN_CALL_WAIT_SECONDS + 10),
            late_state())
        assert time.monotonic() - t0 >= KNOWN_CALL_WAIT_SECONDS
        return codes[0], codes[1], codes[2]

    known, created, made_up = asyncio.run(run())
    assert (known, created, made_up) == (None, None, 1008)
    for call_id in ("known", "just-created"):
        assert rec.stitched(s.container, rec.wait_complete(s.container, call_id), "mixed") == b"".join(frames)
    assert not s.container.get_blob_client("made-up/manifest.json").exists()
    assert s.metrics()['acs_streamer_refusals_total{reason="unknown_call"}'] == 1


def test_a_call_that_ended_takes_no_new_session(streamer_factory, token_issuer):
    s = streamer_factory(STREAMER_CALL_CHECK="enabled")
    frames = tone_pcm(60, seed=21)
    _call_state(s.container, "ended", status="connected")
    asyncio.run(send_all(s.ws, [metadata(), *_frames(frames)], headers(token_issuer.token(), "ended")))
    before = rec.wait_complete(s.container, "ended")
    _call_state(s.container, "ended", status="disconnected", disconnectedAt=mf.now_iso())
    time.sleep(2.5)
    code = asyncio.run(send_all(s.ws, [metadata(), *_frames(tone_pcm(60, seed=22), start=100)],
                                headers(token_issuer.token(), "ended"), expect_close=True))
    assert code == 1008
    assert rec.manifest(s.container, "ended")["streams"] == before["streams"]
    assert s.metrics()['acs_streamer_refusals_total{reason="call_ended"}'] == 1


# -- 5. DTMF is bounded --------------------------------------------------------------------------------------------
def test_dtmf_is_only_tones_bounded_per_session_and_counted(streamer_factory, token_issuer):
    from streamer.session import MAX_DTMF_PER_SESSION

    s = streamer_factory()
    msgs: list[str | bytes | float] = [metadata()]
    for i, f in enumerate(tone_pcm(50)):
        msgs.append(audio(f, at(i), participant=None))
        msgs.append(json.dumps({"kind": "DtmfData", "dtmfData": {"data": "x" * 60_000}}))  # 60 KB of "tone"
    msgs += [json.dumps({"kind": "DtmfData", "dtmfData": {"data": "0123456789*#ABCD"[i % 16],
                                                          "timestamp": iso(at(0, ms=0) + timedelta(milliseconds=i))}})
             for i in range(MAX_DTMF_PER_SESSION + 200)]
    asyncio.run(send_all(s.ws, msgs, headers(token_issuer.token(), "dtmf")))
    m = rec.wait_complete(s.container, "dtmf")
    (session,) = m["sessions"]
    assert len(m["dtmf"]) == MAX_DTMF_PER_SESSION and session["dtmfDropped"] == 200
    assert {d["tone"] for d in m["dtmf"]} <= set("0123456789*#ABCD")
    assert len(mf.dumps(m)) < 400_000
    assert s.metrics()['acs_streamer_bad_frames_total{reason="bad_dtmf"}'] == 50


# -- 6. rotating dominant speakers ----------------------------------------------------------------------------------
def test_twelve_rotating_speakers_are_all_recorded_and_the_socket_stays_open(streamer_factory, token_issuer):
    s = streamer_factory()
    speakers = [f"8:acs:speaker-{k}" for k in range(12)]
    msgs: list[str | bytes | float] = [metadata(24000)]
    pcm = tone_pcm(12 * 50, 24000, seed=12)
    for i in range(12 * 50):  # 12 s; every second one speaker leaves the dominant four and the next one joins
        for k in range(4):
            msgs.append(audio(pcm[i], at(i), participant=speakers[(i // 50 + k) % 12]))
    code = asyncio.run(send_all(f"{s.ws}/unmixed", msgs, headers(token_issuer.token(), "meeting")))
    assert code is None
    m = rec.wait_complete(s.container, "meeting")
    assert {x["participantRawId"] for x in m["streams"]} == set(speakers)
    (session,) = m["sessions"]
    assert session["cappedFrames"] == 0 and session["badFrames"] == 0 and session["closeCode"] == 1000


# -- 7. a hard kill loses at most the open chunk --------------------------------------------------------------------
def test_kill_9_during_a_storage_outage_loses_no_sealed_chunk(streamer_factory, token_issuer, tmp_path):
    az = Azurite(location=tmp_path / "azurite").start()
    spool = tmp_path / "spool-kill"
    try:
        s = streamer_factory(storage=az, SPOOL_DIR=str(spool))
        frames = tone_pcm(175, seed=13)  # 3.5 s: three full chunks and a half one

        async def run() -> None:
            async with connect(s.ws, additional_headers=headers(token_issuer.token(), "killed")) as ws:
                await ws.send(metadata())
                await ws.send(audio(frames[0], at(0), participant=None))
                await asyncio.to_thread(_wait, lambda: s.container.get_blob_client("killed/manifest.json").exists(),
                                        10, "the call to go live")
                await asyncio.to_thread(az.stop)
                for i, f in enumerate(frames[1:], start=1):
                    await ws.send(audio(f, at(i), participant=None))
                # the half chunk is sealed after 1 s idle; every sealed chunk is spooled (storage is down)
                await asyncio.to_thread(_wait, lambda: len(list(spool.glob("killed/c.*.wav"))) == 4, 15,
                                        "four chunks in the spool")
                s.process.kill()  # SIGKILL: no drain, no close

        asyncio.run(run())
        az.start()
        s2 = streamer_factory(storage=az, RECORDINGS_CONTAINER=s.container_name, SPOOL_DIR=str(spool))
        _wait(lambda: not list(spool.glob("killed/*")), 30, "the spool to be recovered")
        m = rec.manifest(s2.container, "killed")
        assert rec.stitched(s2.container, m, "mixed") == b"".join(frames)
        (session,) = m["sessions"]
        assert session["endReason"] == "never_closed" and session["complete"] is False and m["complete"] is False
        assert (session["coveredFrom"], session["coveredUntil"]) == (iso(at(0)), iso(at(175)))
    finally:
        az.close()


def test_kill_9_while_a_session_waits_for_its_clock_keeps_what_it_held(streamer_factory, token_issuer, tmp_path):
    """Storage down before the call connects: the session cannot load its clock and holds every message; once
    storage has failed it holds them in the spool's frames log, so a hard kill loses none of them."""
    az = Azurite(location=tmp_path / "azurite").start()
    spool = tmp_path / "spool-held"
    try:
        s = streamer_factory(storage=az, SPOOL_DIR=str(spool))
        _wait(lambda: httpx.get(f"{s.http}/readyz").status_code == 200, 10, "ready")
        az.stop()
        frames = tone_pcm(120, seed=14)
        asyncio.run(send_all(s.ws, [metadata(), *_frames(frames)], headers(token_issuer.token(), "held")))
        _wait(lambda: list(spool.glob("held/frames.*.log")), 15, "the frames log")
        time.sleep(0.5)
        s.process.kill()
        az.start()
        s2 = streamer_factory(storage=az, RECORDINGS_CONTAINER=s.container_name, SPOOL_DIR=str(spool))
        m = rec.wait_complete(s2.container, "held", timeout=40)
        assert rec.stitched(s2.container, m, "mixed") == b"".join(frames)
        assert m["sessions"][0]["endReason"] == "peer_closed"  # the close was logged before the kill
    finally:
        az.close()


# -- 8. timestamp jumps do not amplify writes -----------------------------------------------------------------------
def test_timestamp_jumps_cost_their_own_bytes_not_chunks_of_zeros(streamer_factory, token_issuer):
    s = streamer_factory(CHUNK_SECONDS="10")
    frames = tone_pcm(60, seed=15)
    msgs: list[str | bytes | float] = [metadata()]
    for i, f in enumerate(frames):  # each frame claims to be 10 s after the previous one
        msgs.append(audio(f, at(i * 500), participant=None))
    asyncio.run(send_all(s.ws, msgs, headers(token_issuer.token(), "jumps")))
    m = rec.wait_complete(s.container, "jumps")
    written = sum(c["bytes"] for st in m["streams"] for c in st["chunks"])
    assert written < 2 * 60 * 640 + 10_000, written  # was 18.9 MB for these 38 KB
    assert m["sessions"][0]["badTimestamps"] >= 58


# -- 9. smaller ones ------------------------------------------------------------------------------------------------
def test_a_call_id_with_a_trailing_newline_is_refused(streamer_factory, token_issuer):
    s = streamer_factory()
    code = asyncio.run(send_all(s.ws, [metadata(subscription_id="abc\n"), *_frames(tone_pcm(5))],
                                {"Authorization": f"Bearer {token_issuer.token()}"}, expect_close=True))
    assert code == 1008 and list(s.container.list_blobs()) == []


def test_a_long_participant_id_is_dropped_and_a_bounded_one_survives_the_spool(streamer_factory, token_issuer,
                                                                              tmp_path):
    az = Azurite(location=tmp_path / "azurite").start()
    try:
        s = streamer_factory(storage=az)
        longest = "8:acs:" + "x" * 250  # 256 characters: its stream id alone is ~344
        frames = tone_pcm(60, seed=16)
        msgs = [audio(f, at(i), participant=longest) for i, f in enumerate(frames)]
        msgs += [audio(frames[0], at(60), participant="8:acs:" + "y" * 300)]
        asyncio.run(live_then(f"{s.ws}/unmixed", headers(token_issuer.token(), "longid"), s.container, "longid",
                              az.stop, msgs))
        _wait(lambda: s.metrics()["acs_streamer_chunks_spooled_total"] >= 1, 15, "a spooled chunk")
        az.start()
        m = rec.wait_complete(s.container, "longid", timeout=40)
        (stream,) = m["streams"]
        assert stream["participantRawId"] == longest
        assert rec.stitched(s.container, m, stream_id(longest)).endswith(b"".join(frames))
        (sess,) = m["sessions"]
        assert sess["cappedFrames"] == 1 and sess["cappedParticipants"][0].startswith("8:acs:yyy")
    finally:
        az.close()


def test_a_speaker_with_an_overlong_id_never_closes_the_socket_on_the_others(streamer_factory, token_issuer):
    """Its frames cannot be stored under any blob name: dropped and counted as capped, never "invalid frames" —
    before, 101 of them in a row closed the socket (1007) and the other speakers' audio stopped with it."""
    s = streamer_factory()
    overlong = "8:acs:" + "z" * 400
    frames = tone_pcm(150, seed=17)
    msgs: list[str | bytes | float] = [metadata()]
    msgs += [audio(f, at(i), participant=overlong) for i, f in enumerate(frames)]
    msgs += [audio(f, at(150 + i), participant="8:acs:ok") for i, f in enumerate(frames)]
    assert asyncio.run(send_all(f"{s.ws}/unmixed", msgs, headers(token_issuer.token(), "overlong"))) is None
    m = rec.wait_complete(s.container, "overlong")
    (sess,) = m["sessions"]
    assert sess["complete"] and sess["cappedFrames"] == 150 and sess["badFrames"] == 0
    assert [x["participantRawId"] for x in m["streams"]] == ["8:acs:ok"]
    assert rec.stitched(s.container, m, stream_id("8:acs:ok")).endswith(b"".join(frames))


def test_a_client_that_never_finishes_its_headers_is_disconnected(streamer_factory):
    from streamer.__main__ import HEADER_TIMEOUT_SECONDS

    s = streamer_factory()
    with socket.create_connection(("127.0.0.1", s.port), timeout=HEADER_TIMEOUT_SECONDS + 10) as sock:
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        t0 = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server
        assert time.monotonic() - t0 < HEADER_TIMEOUT_SECONDS + 5


# -- a second probe round, against the fixes above -----------------------------------------------------------------
def test_a_session_with_another_frame_length_is_refused_and_replaces_nothing(streamer_factory, token_issuer):
    s = streamer_factory()
    first = tone_pcm(100, seed=21)
    msgs = [metadata(), *_frames(first[:10]), *_frames(first[75:], start=75)]
    asyncio.run(send_all(f"{s.ws}/mixed", msgs, headers(token_issuer.token(), "flen")))
    before = rec.wait_complete(s.container, "flen")
    assert before["frameBytes"] == 640
    long_frames = tone_pcm(13, 32000, seed=22)  # 40-ms frames at 16 kHz: another slot grid
    code = asyncio.run(send_all(f"{s.ws}/mixed", [metadata(length=1280), *[audio(f, at(74 + 2 * j), participant=None)
                                                                            for j, f in enumerate(long_frames)]],
                                headers(token_issuer.token(), "flen"), expect_close=True))
    assert code == 1003
    assert rec.manifest(s.container, "flen")["streams"] == before["streams"]


def test_storage_that_hangs_without_failing_cannot_make_a_kill_lose_sealed_chunks(streamer_factory, token_issuer,
                                                                                   tmp_path):
    import os
    import signal

    az = Azurite(location=tmp_path / "azurite").start()
    spool = tmp_path / "spool-hang"
    try:
        s = streamer_factory(storage=az, SPOOL_DIR=str(spool))
        frames = tone_pcm(300, seed=31)  # 6 s: six chunks once the last one is idle-sealed

        async def run() -> None:
            async with connect(s.ws, additional_headers=headers(token_issuer.token(), "hung")) as ws:
                await ws.send(metadata())
                await ws.send(audio(frames[0], at(0), participant=None))
                await asyncio.to_thread(_wait, lambda: s.container.get_blob_client("hung/manifest.json").exists(),
                                        10, "the call to go live")
                assert az.proc is not None
                os.killpg(az.proc.pid, signal.SIGSTOP)  # requests neither answer nor fail
                t0 = time.monotonic()
                for i, f in enumerate(frames[1:], start=1):
                    await ws.send(audio(f, at(i), participant=None))
                    await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))
                await asyncio.to_thread(_wait, lambda: len(list(spool.glob("hung/c.*.wav"))) == 6, 15,
                                        "every sealed chunk in the spool")
                s.process.kill()

        asyncio.run(run())
        assert az.proc is not None
        os.killpg(az.proc.pid, signal.SIGKILL)  # the hung storage is replaced (same data, same port)
        az.proc.wait()
        az.proc = None
        az.start()
        s2 = streamer_factory(storage=az, RECORDINGS_CONTAINER=s.container_name, SPOOL_DIR=str(spool))
        _wait(lambda: not list(spool.glob("hung/*")), 30, "the spool to be recovered")
        m = rec.manifest(s2.container, "hung")
        assert rec.stitched(s2.container, m, "mixed") == b"".join(frames)
    finally:
        if az.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(az.proc.pid, signal.SIGCONT)
        az.close()


@pytest.mark.parametrize("order", [[*range(49), 50, 49, *range(51, 100)], [1, 0, *range(2, 100)]],
                         ids=["across-a-chunk-boundary", "the-first-two"])
def test_swapped_frames_are_both_recorded(streamer_factory, token_issuer, order):
    s = streamer_factory()
    frames = tone_pcm(100, seed=41)
    call = f"swap-{order[0]}"
    asyncio.run(send_all(f"{s.ws}/mixed", [metadata(), *[audio(frames[i], at(i), participant=None) for i in order]],
                         headers(token_issuer.token(), call)))
    m = rec.wait_complete(s.container, call)
    assert m["clockOrigin"] == iso(at(0)) and m["gaps"] == []
    assert rec.stitched(s.container, m, "mixed") == b"".join(frames)
    assert m["sessions"][0]["lateFramesDropped"] == 0


def test_tones_without_audio_do_not_make_a_recording_complete(streamer_factory, token_issuer):
    s = streamer_factory()
    tone = json.dumps({"kind": "DtmfData", "dtmfData": {"data": "5", "timestamp": iso(at(0))}})
    asyncio.run(send_all(f"{s.ws}/mixed", [metadata(), tone], headers(token_issuer.token(), "dtmf-only")))
    _wait(lambda: s.container.get_blob_client("dtmf-only/manifest.json").exists()
          and rec.manifest(s.container, "dtmf-only")["dtmf"], 10, "the tone")
    time.sleep(0.5)
    m = rec.manifest(s.container, "dtmf-only")
    assert m["complete"] is False and m["streams"] == [] and [d["tone"] for d in m["dtmf"]] == ["5"]


def test_chunk_seconds_is_the_real_span_when_frames_do_not_divide_it(streamer_factory, token_issuer):
    import numpy as np

    s = streamer_factory()  # CHUNK_SECONDS=1 with 30-ms frames: 33 frames, 0.99 s
    rng = np.random.default_rng(5)
    frames = [rng.integers(-8000, 8000, 480, dtype=np.int16).tobytes() for _ in range(100)]
    asyncio.run(send_all(f"{s.ws}/mixed", [metadata(length=960), *[audio(f, at(i, ms=30), participant=None)
                                                                    for i, f in enumerate(frames)]],
                         headers(token_issuer.token(), "odd-frame")))
    m = rec.wait_complete(s.container, "odd-frame")
    assert m["chunkSeconds"] == pytest.approx(0.99)
    origin = mf.parse_iso(m["clockOrigin"])
    for c in m["streams"][0]["chunks"]:
        assert abs(mf.parse_iso(c["startTime"]) - (origin + c["seq"] * m["chunkSeconds"])) < 0.001, c
    assert rec.stitched(s.container, m, "mixed") == b"".join(frames)


@pytest.mark.parametrize("body", [b"{not json", json.dumps({"callConnectionId": "badm", "clockOrigin": "soon",
                                                            "chunkSeconds": 1}).encode()], ids=["not-json", "no-time"])
def test_an_unusable_stored_manifest_is_kept_aside_and_the_call_recorded(streamer_factory, token_issuer, body):
    s = streamer_factory()
    s.container.upload_blob("badm/manifest.json", body)
    frames = tone_pcm(150, seed=51)
    asyncio.run(send_all(f"{s.ws}/mixed", [metadata(), *_frames(frames)], headers(token_issuer.token(), "badm")))
    m = rec.wait_complete(s.container, "badm")
    assert rec.stitched(s.container, m, "mixed") == b"".join(frames)
    (aside,) = [b.name for b in s.container.list_blobs(name_starts_with="badm/manifest.unreadable-")]
    assert s.container.download_blob(aside).readall() == body


def test_sessions_ending_during_an_outage_hold_no_file_descriptors(streamer_factory, token_issuer, tmp_path):
    import os

    az = Azurite(location=tmp_path / "azurite").start()
    try:
        s = streamer_factory(storage=az)
        assert s.process.proc is not None
        pid = s.process.proc.pid
        _wait(lambda: httpx.get(f"{s.http}/readyz").status_code == 200, 10, "ready")
        az.stop()
        _wait(lambda: httpx.get(f"{s.http}/readyz").status_code == 503, 10, "storage to be seen down")
        base = len(os.listdir(f"/proc/{pid}/fd"))
        frames = tone_pcm(5, seed=61)

        async def many() -> None:
            for n in range(100):
                await send_all(s.ws, [metadata(), *_frames(frames)], headers(token_issuer.token(), f"fd-{n}"))

        asyncio.run(many())
        _wait(lambda: len(list(Path(s.env["SPOOL_DIR"]).glob("*/frames.*.log"))) == 100, 15, "100 frames logs")
        assert len(os.listdir(f"/proc/{pid}/fd")) - base < 20
        az.start()
        for n in (0, 99):
            assert rec.stitched(s.container, rec.wait_complete(s.container, f"fd-{n}", timeout=40), "mixed") == \
                b"".join(frames)
    finally:
        az.close()


def test_lossy_audio_does_not_grow_the_manifest_without_bound(streamer_factory, token_issuer):
    """20 unmixed speakers losing every other packet for 8 s, in real time: 4,000 gaps, of which the manifest
    names the first MAX_GAPS_PER_SESSION and counts the rest."""
    from streamer.session import MAX_GAPS_PER_SESSION

    s = streamer_factory(CHUNK_SECONDS="10")
    speakers = [f"8:acs:p{k}" for k in range(20)]
    pcm = tone_pcm(1, seed=71)[0]

    async def run() -> None:
        async with connect(f"{s.ws}/unmixed", additional_headers=headers(token_issuer.token(), "lossy")) as ws:
            await ws.send(metadata())
            t0 = time.monotonic()
            for i in range(0, 400, 2):
                for p in speakers:
                    await ws.send(audio(pcm, at(i), participant=p))
                await asyncio.sleep(max(0.0, t0 + (i + 2) * 0.02 - time.monotonic()))

    asyncio.run(run())
    m = rec.wait_complete(s.container, "lossy", timeout=30)
    (session,) = m["sessions"]
    assert session["gapFrames"] == 20 * 199 and session["badTimestamps"] == 0
    assert len(m["gaps"]) == MAX_GAPS_PER_SESSION
    assert session["gapsOmitted"] == 20 * 199 - MAX_GAPS_PER_SESSION
    assert len(mf.dumps(m)) < 600_000


def test_sigterm_while_held_frames_are_replayed_loses_no_manifest_entry(streamer_factory, token_issuer, tmp_path):
    az = Azurite(location=tmp_path / "azurite").start()
    spool = tmp_path / "spool-replay"
    try:
        s = streamer_factory(storage=az, SPOOL_DIR=str(spool), CHUNK_SECONDS="0.1")
        _wait(lambda: httpx.get(f"{s.http}/readyz").status_code == 200, 10, "ready")
        az.stop()
        frames = tone_pcm(1000, seed=81)
        asyncio.run(send_all(s.ws, [metadata(), *_frames(frames)], headers(token_issuer.token(), "replayed")))
        _wait(lambda: list(spool.glob("replayed/frames.*.log")), 15, "the frames log")
        time.sleep(1)
        s.process.kill()
        az.start()
        s2 = streamer_factory(storage=az, RECORDINGS_CONTAINER=s.container_name, SPOOL_DIR=str(spool),
                              CHUNK_SECONDS="0.1", UPLOAD_CONCURRENCY="1", SHUTDOWN_GRACE_SECONDS="2")
        _wait(lambda: len(list(s2.container.list_blobs(name_starts_with="replayed/mixed/"))) >= 20, 20,
              "the replay to land chunks")
        assert s2.process.terminate(60) == 0  # while the replayed session still uploads
        s3 = streamer_factory(storage=az, RECORDINGS_CONTAINER=s.container_name, SPOOL_DIR=str(spool),
                              CHUNK_SECONDS="0.1")
        m = rec.wait_complete(s3.container, "replayed", timeout=60)
        listed = {c["blob"] for st in m["streams"] for c in st["chunks"]}
        blobs = {b.name for b in s3.container.list_blobs(name_starts_with="replayed/mixed/")}
        assert listed == blobs and len(blobs) == 200
        assert rec.stitched(s3.container, m, "mixed") == b"".join(frames)
        _wait(lambda: not list(spool.glob("replayed/*")), 10, "the spool to empty")
    finally:
        az.close()
