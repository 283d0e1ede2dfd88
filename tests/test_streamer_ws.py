"""The streamer end to end: a real `python -m streamer` process, real WebSocket clients, real Azurite, real JWTs."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from common.layout import stream_id
from tests import recording as rec
from tests.acs_frames import at, audio, iso, metadata, tone_pcm


def headers(token: str | None, call_id: str, correlation: str = "corr-1") -> dict[str, str]:
    h = {"x-ms-call-connection-id": call_id, "x-ms-call-correlation-id": correlation}
    if token:
        h["Authorization"] = f"Bearer {token}"
    return h


async def send_all(url: str, messages: list[str | bytes | float], hdrs: dict[str, str], *,
                   expect_close: bool = False, close_timeout: float = 10.0) -> int | None:
    """Send every message (a number in the list is a pause, in seconds: the streamer checks timestamps against its
    receive clock, so a gap in the audio must also be a gap in time). Normally close and return None; with
    `expect_close`, wait for the server to close the socket and return its close code."""
    async with connect(url, additional_headers=hdrs, max_size=None) as ws:
        try:
            for m in messages:
                if isinstance(m, float):
                    await asyncio.sleep(m)
                    continue
                await ws.send(m)
            if expect_close:
                await asyncio.wait_for(ws.wait_closed(), close_timeout)
        except ConnectionClosed:
            pass
    proto = ws.protocol
    return proto.close_rcvd.code if expect_close and proto.close_rcvd else None


def test_mixed_16k_call_lands_time_faithful_with_manifest(streamer_factory, token_issuer):
    s = streamer_factory()
    frames = tone_pcm(130)  # 2.6 s: two full 1-s chunks and a 0.6-s partial one
    msgs = [metadata(16000)] + [audio(f, at(i), participant="8:acs:caller") for i, f in enumerate(frames)]
    msgs.insert(60, json.dumps({"kind": "DtmfData", "dtmfData": {"data": "5"}}))
    msgs.insert(5, json.dumps({"kind": "TranscriptionData", "transcriptionData": {"text": "hi"}}))
    asyncio.run(send_all(f"{s.ws}/mixed", msgs, headers(token_issuer.token(), "call-mixed")))

    m = rec.wait_complete(s.container, "call-mixed")
    assert m["callConnectionId"] == "call-mixed" and m["correlationId"] == "corr-1"
    assert m["sampleRate"] == 16000 and m["audioChannel"] == "mixed" and m["complete"] is True
    (stream,) = m["streams"]
    assert stream["stream"] == "mixed" and stream["participantRawId"] is None
    assert [c["seq"] for c in stream["chunks"]] == [0, 1, 2]
    assert [c["durationMs"] for c in stream["chunks"]] == [1000, 1000, 600]
    assert [c["blob"] for c in stream["chunks"]] == [f"call-mixed/mixed/{k:06d}.wav" for k in range(3)]
    assert [c["startTime"] for c in stream["chunks"]] == [iso(at(0)), iso(at(50)), iso(at(100))]
    assert rec.sha(rec.stitched(s.container, m, "mixed")) == rec.sha(b"".join(frames))
    (tone,) = m["dtmf"]  # sent after frame 58: stamped with that frame's call-clock time
    assert (tone["tone"], tone["timestamp"], tone["participantRawId"]) == ("5", iso(at(58)), None)
    assert m["gaps"] == []
    metrics = s.metrics()
    assert metrics["acs_streamer_frames_total"] == 130
    assert metrics["acs_streamer_ignored_messages_total"] == 1
    assert metrics["acs_streamer_chunks_uploaded_total"] == 3


def test_unmixed_24k_two_participants_share_the_call_clock(streamer_factory, token_issuer):
    s = streamer_factory()
    a, b = "8:acs:alice", "4:+15550100"
    fa, fb = tone_pcm(150, 24000, seed=1), tone_pcm(90, 24000, seed=2)
    msgs = [metadata(24000)]
    for i in range(150):  # bob starts speaking at 1.2 s: frame 60
        msgs.append(audio(fa[i], at(i), participant=a))
        if i >= 60:
            msgs.append(audio(fb[i - 60], at(i), participant=b))
    asyncio.run(send_all(f"{s.ws}/unmixed", msgs, headers(token_issuer.token(), "call-unmixed")))

    m = rec.wait_complete(s.container, "call-unmixed")
    assert m["sampleRate"] == 24000
    streams = {st["participantRawId"]: st for st in m["streams"]}
    assert set(streams) == {a, b}
    assert streams[b]["stream"] == stream_id(b)
    assert [c["seq"] for c in streams[a]["chunks"]] == [0, 1, 2]
    assert [c["seq"] for c in streams[b]["chunks"]] == [1, 2]  # nothing before bob's first word
    # chunk k of every participant covers the same wall-clock span
    assert streams[a]["chunks"][1]["startTime"] == streams[b]["chunks"][0]["startTime"] == iso(at(50))
    frame = 960
    assert rec.stitched(s.container, m, stream_id(a)) == b"".join(fa)
    bob = rec.stitched(s.container, m, stream_id(b))
    assert bob[: 60 * frame] == bytes(60 * frame)  # silence before bob's first frame in its chunk
    assert bob[60 * frame:] == b"".join(fb)
    _, bob_chunk1 = rec.read_wav(s.container, streams[b]["chunks"][0]["blob"])
    assert len(bob_chunk1) == 50 * frame and bob_chunk1[: 10 * frame] == bytes(10 * frame)


def test_gap_jitter_duplicates_and_late_frames_never_shift_the_timeline(streamer_factory, token_issuer):
    s = streamer_factory()
    frames = tone_pcm(250)
    jitter = [0, 7, -9, 10, -10, 3]
    msgs: list[str | bytes | float] = [metadata()]
    for i in list(range(50)) + list(range(200, 250)):  # 3-s gap: frames 50..199 never sent
        if i == 200:
            msgs.append(3.0)
        t = at(i) + timedelta(milliseconds=jitter[i % len(jitter)])
        msgs.append(audio(frames[i], t, participant=None))
        if i == 20:  # an exact duplicate, and a copy of frame 10 with other content arriving late
            msgs.append(audio(frames[i], t, participant=None))
            msgs.append(audio(bytes(640), at(10), participant=None))
    asyncio.run(send_all(s.ws, msgs, headers(token_issuer.token(), "call-gap")))

    m = rec.wait_complete(s.container, "call-gap")
    assert m["gaps"] == [{"stream": "mixed", "startTime": iso(at(50)), "durationMs": 3000,
                          "sessionId": m["sessions"][0]["id"]}]
    expected = b"".join(frames[:50]) + bytes(150 * 640) + b"".join(frames[200:])
    assert rec.stitched(s.container, m, "mixed") == expected
    seqs = [c["seq"] for c in m["streams"][0]["chunks"]]
    assert seqs == [0, 4]  # chunks 1-3 were pure gap: no blob, the gap record covers them
    (sess,) = m["sessions"]
    assert sess["duplicateFrames"] == 2 and sess["gapFrames"] == 150


def test_stop_and_restart_streaming_appends_to_the_same_call(streamer_factory, token_issuer):
    s = streamer_factory()
    frames = tone_pcm(200)
    first = [metadata()] + [audio(frames[i], at(i), participant=None) for i in range(75)]  # 0 .. 1.5 s
    second = [metadata(subscription_id="sub-2")] + [
        audio(frames[i], at(i), participant=None) for i in range(85, 200)]  # 1.7 .. 4.0 s
    hdr = headers(token_issuer.token(), "call-restart")
    asyncio.run(send_all(f"{s.ws}/mixed", first, hdr))
    rec.wait_complete(s.container, "call-restart")
    s2 = streamer_factory(RECORDINGS_CONTAINER=s.container_name)  # "another replica"
    asyncio.run(send_all(f"{s2.ws}/mixed", second, headers(token_issuer.token(), "call-restart")))

    m = rec.wait_complete(s.container, "call-restart", sessions=2)
    assert len(m["sessions"]) == 2 and all(x["complete"] for x in m["sessions"])
    chunks = m["streams"][0]["chunks"]
    assert [c["seq"] for c in chunks] == [0, 1, 2, 3]
    assert chunks[1]["revision"] == 2  # chunk 1 holds the end of session 1 and the start of session 2
    expected = b"".join(frames[:75]) + bytes(10 * 640) + b"".join(frames[85:200])
    assert rec.stitched(s.container, m, "mixed") == expected


def test_unauthenticated_upgrades_are_refused_before_any_audio(streamer_factory, token_issuer):
    from devstack.acs_tokens import TokenIssuer

    s = streamer_factory()
    stranger = TokenIssuer(token_issuer.issuer, token_issuer.audience, kid=token_issuer.kid)
    bad_tokens = {
        "missing": None,
        "wrong audience": token_issuer.token(audience="00000000-0000-0000-0000-000000000000"),
        "wrong issuer": token_issuer.token(issuer="https://evil.example"),
        "expired": token_issuer.token(now=0, lifetime=60),
        "wrong key": stranger.token(),
        "garbage": "not-a-jwt",
    }
    for name, token in bad_tokens.items():
        with pytest.raises(InvalidStatus) as err:
            asyncio.run(send_all(s.ws, [metadata()], headers(token, f"call-{name.replace(' ', '-')}")))
        assert err.value.response.status_code == 403, name
    assert s.metrics()['acs_streamer_refusals_total{reason="unauthorized"}'] == len(bad_tokens)
    assert list(s.container.list_blobs()) == []


def test_auth_disabled_is_explicit_and_logged(streamer_factory):
    s = streamer_factory(STREAMER_AUTH="disabled")
    asyncio.run(send_all(s.ws, [metadata(), audio(tone_pcm(1)[0], at(0))], headers(None, "call-noauth")))
    rec.wait_complete(s.container, "call-noauth")
    assert "STREAMER_AUTH=disabled" in s.process.log()


@pytest.mark.parametrize(
    ("case", "bad", "close_code"),
    [
        ("malformed_json", "{not json", None),
        ("wrong_type", json.dumps({"kind": "AudioData", "audioData": {"data": 5}}), None),
        ("bad_base64", json.dumps({"kind": "AudioData", "audioData": {"data": "!!!!", "timestamp": "x"}}), None),
        ("odd_length", audio(b"\x01\x02\x03", at(0)), None),
        ("bad_timestamp", "frame 20 with a broken timestamp", None),
        ("unsupported_format", metadata(16000).replace('"PCM"', '"OPUS"'), 1003),
        ("format_change", metadata(24000), 1003),
    ],
)
def test_bad_input_is_counted_and_never_loses_received_audio(streamer_factory, token_issuer, case, bad, close_code):
    s = streamer_factory()
    frames = tone_pcm(40)
    msgs = [metadata()] + [audio(f, at(i), participant=None) for i, f in enumerate(frames[:20])]
    rest = frames[20:]
    if case == "bad_timestamp":  # the frame is kept and placed right after the previous one
        bad = audio(frames[20], at(20), participant=None).replace(iso(at(20))[:13], "yesterday at noon")
        rest = frames[21:]
    msgs.append(bad)
    if close_code is None:
        msgs += [audio(f, at(40 - len(rest) + i), participant=None) for i, f in enumerate(rest)]
    code = asyncio.run(send_all(s.ws, msgs, headers(token_issuer.token(), f"call-{case}"),
                                expect_close=close_code is not None))
    assert code == close_code
    m = rec.wait_complete(s.container, f"call-{case}")
    sent = frames if close_code is None else frames[:20]
    assert rec.stitched(s.container, m, "mixed") == b"".join(sent)
    assert s.metrics()[f'acs_streamer_bad_frames_total{{reason="{case}"}}'] == 1


def test_audio_before_metadata_and_oversized_frames(streamer_factory, token_issuer):
    s = streamer_factory(MAX_FRAME_BYTES="4096")
    frames = tone_pcm(10)
    msgs = [audio(frames[0], at(0)), metadata()] + [audio(f, at(i), participant=None) for i, f in enumerate(frames)]
    msgs.append("x" * 5000)
    code = asyncio.run(send_all(s.ws, msgs, headers(token_issuer.token(), "call-big"), expect_close=True))
    assert code == 1009
    m = rec.wait_complete(s.container, "call-big")
    assert rec.stitched(s.container, m, "mixed") == b"".join(frames)
    assert s.metrics()['acs_streamer_bad_frames_total{reason="audio_before_metadata"}'] == 1


def test_a_flood_of_garbage_closes_with_1007_and_other_calls_are_untouched(streamer_factory, token_issuer):
    s = streamer_factory()
    good = tone_pcm(100, seed=9)

    async def both() -> tuple[int | None, int | None]:
        garbage = [metadata()] + ["\x00garbage"] * 150
        fine = [metadata()] + [audio(f, at(i), participant=None) for i, f in enumerate(good)]
        return tuple(await asyncio.gather(  # type: ignore[return-value]
            send_all(s.ws, garbage, headers(token_issuer.token(), "call-flood"), expect_close=True),
            send_all(s.ws, fine, headers(token_issuer.token(), "call-fine"))))

    flood_code, fine_code = asyncio.run(both())
    assert flood_code == 1007 and fine_code is None
    m = rec.wait_complete(s.container, "call-fine")
    assert rec.stitched(s.container, m, "mixed") == b"".join(good)


def test_health_readiness_and_metrics_endpoints(streamer_factory):
    s = streamer_factory(STREAMER_AUTH="disabled")
    assert httpx.get(f"{s.http}/healthz").json() == {"status": "alive"}
    ready = httpx.get(f"{s.http}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    text = httpx.get(f"{s.http}/metrics").text
    assert "# TYPE acs_streamer_frames_total counter" in text  # the exposition format itself
    assert s.metrics()["acs_streamer_active_calls"] == 0


def test_only_media_paths_reach_the_media_endpoint(streamer_factory, token_issuer):
    """Media sockets bypass Starlette's router: /ws and /ws/… are media, anything else is Starlette's (no route)."""
    s = streamer_factory()
    base = s.ws.rsplit("/ws", 1)[0]
    for path in ("/wsx", "/other", "/healthz"):
        with pytest.raises(InvalidStatus) as err:
            asyncio.run(send_all(base + path, [metadata()], headers(token_issuer.token(), "call-not-media")))
        assert err.value.response.status_code == 403, path
    assert s.metrics()["acs_streamer_sessions_total"] == 0
    asyncio.run(send_all(base + "/ws/mixed", [metadata()], headers(token_issuer.token(), "call-media")))
    assert s.metrics()["acs_streamer_sessions_total"] == 1


def test_missing_settings_fail_fast_with_a_clear_message(tmp_path):
    from devstack.processes import ChildProcess

    p = ChildProcess("streamer", {"AZURE_STORAGE_CONNECTION_STRING": "", "AZURE_STORAGE_ACCOUNT_URL": "",
                                  "ACS_RESOURCE_ID": "", "STREAMER_AUTH": ""})
    p.start()
    assert p.proc is not None and p.proc.wait(30) == 2
    assert "ACS_RESOURCE_ID is required" in p.log()
