"""Media-stream fidelity (docs/acs-protocol.md#media-streaming-websocket), judged on the frames a WebSocket server
actually received.

Key sets are compared with tests/data/example-audio-frame.json (the docs' example frame), PCM is decoded here and
hashed here, timestamps are parsed here; the simulator's own record must then agree with what arrived.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from azure.communication.callautomation import CallAutomationClient, PhoneNumberIdentifier

from common.acs_jwt import AcsJwtVerifier, AuthConfig, bearer_token
from devstack.simulator import SimulatorServer
from tests._simulator_fixtures import (
    ISSUER,
    RESOURCE_ID,
    Capture,
    WsConnection,
    media_options,
    sdk_client,
    synth_simulator,
)

# The example frame of the public media-streaming docs (see docs/acs-protocol.md#websocket-messages).
EXAMPLE_FRAME: dict[str, Any] = json.loads((Path(__file__).parent / "data" / "example-audio-frame.json").read_text())
ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with synth_simulator(connect_delay_s=0.02) as server:
        yield server


@pytest.fixture(scope="module")
def client(sim: SimulatorServer) -> CallAutomationClient:
    return sdk_client(sim)


_target_counter = iter(range(10_000))


def run_call(sim: SimulatorServer, capture: Capture, client: CallAutomationClient, *,
             script: dict[str, Any] | None = None, ws_mode: str = "accept", **media: Any) -> tuple[Any, dict, list]:
    """Place one call (its own target number → its own script), wait for the end; (props, record, connections)."""
    target = f"+1555020{next(_target_counter):04d}"
    if script is not None:
        sim.set_script({"connectDelayS": 0.02, **script}, target=f"4:{target}")
    props = client.create_call(PhoneNumberIdentifier(target), capture.callback_url("media"),
                               source_caller_id_number=PhoneNumberIdentifier("+15550199"),
                               media_streaming=media_options(f"{capture.ws_base}/{ws_mode}", **media))
    record = sim.wait_until_ended(props.call_connection_id, timeout=30)
    conns = capture.connections_for(props.call_connection_id)
    for c in conns:
        capture.wait(lambda c=c: c.closed, what="server side of the socket to finish")
    return props, record, conns


def ts_ms(ts: str) -> int:
    assert ISO_MS_Z.match(ts), ts
    dt = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


def audio_frames(conn: WsConnection) -> list[dict[str, Any]]:
    return [f["audioData"] for f in conn.frames() if f["kind"] == "AudioData"]


def per_stream(frames: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for f in frames:
        out.setdefault(f.get("participantRawID") or "mixed", []).append(f)
    return out


def test_mixed_16k_metadata_then_audio_frames_exactly_as_documented(sim: SimulatorServer, capture: Capture,
                                                                    client: CallAutomationClient) -> None:
    props, record, (conn,) = run_call(sim, capture, client)
    first = conn.frames()[0]
    assert first == {"kind": "AudioMetadata", "audioMetadata": {
        "subscriptionId": props.media_streaming_subscription.id, "encoding": "PCM", "sampleRate": 16000,
        "channels": 1, "length": 640}}
    assert all(isinstance(text, str) for _, text in conn.messages)  # text frames
    frames = conn.frames()[1:]
    assert len(frames) == 50 and all(f["kind"] == "AudioData" for f in frames)
    for f in frames:
        assert set(f) == set(EXAMPLE_FRAME)
        # mixed: participantRawID omitted by default (the JS SDK treats it as optional)
        assert set(f["audioData"]) == set(EXAMPLE_FRAME["audioData"]) - {"participantRawID"}
        assert isinstance(f["audioData"]["silent"], bool)
    pcm = [base64.b64decode(f["audioData"]["data"]) for f in frames]
    assert all(len(p) == 640 for p in pcm)
    stamps = [ts_ms(f["audioData"]["timestamp"]) for f in frames]
    assert all(b - a == 20 for a, b in itertools.pairwise(stamps))
    silent = [f["audioData"]["silent"] for f in frames]
    assert any(silent) and not all(silent)
    for p, s in zip(pcm, silent, strict=True):
        assert (p == bytes(640)) == s  # silent ⇔ all zeros
    stats = record["streams"]["mixed"]
    assert stats["sha256"] == hashlib.sha256(b"".join(pcm)).hexdigest()
    assert stats["frames"] == 50 and stats["silentFrames"] == sum(silent)
    assert stats["firstTimestamp"] == frames[0]["audioData"]["timestamp"]
    assert stats["lastTimestamp"] == frames[-1]["audioData"]["timestamp"]
    assert stamps[0] == record["epochMs"]


def test_unmixed_24k_interleaves_participants_with_their_own_audio_and_silences(
        sim: SimulatorServer, capture: Capture, client: CallAutomationClient) -> None:
    props, record, (conn,) = run_call(sim, capture, client, script={"speakers": 3, "durationS": 2.0},
                                      channel="unmixed", audio_format="pcm24KMono")
    meta = conn.frames()[0]["audioMetadata"]
    assert meta["sampleRate"] == 24000 and meta["length"] == 960
    frames = audio_frames(conn)
    participants = record["participants"]
    assert len(participants) == 3 and participants[0] == "4:" + props.targets[0].properties["value"]
    assert len(frames) == 3 * 100
    for f in frames:
        assert set(f) == set(EXAMPLE_FRAME["audioData"])
    for tick in range(100):  # one frame per participant per 20 ms, same timestamp, fixed order
        group = frames[3 * tick:3 * tick + 3]
        assert [f["participantRawID"] for f in group] == participants
        assert len({f["timestamp"] for f in group}) == 1
    streams = per_stream(frames)
    digests = set()
    for pid in participants:
        mine = streams[pid]
        pcm = [base64.b64decode(f["data"]) for f in mine]
        assert all(len(p) == 960 for p in pcm)
        assert all((p == bytes(960)) == f["silent"] for p, f in zip(pcm, mine, strict=True))
        assert any(f["silent"] for f in mine) and not all(f["silent"] for f in mine)  # talks and is quiet
        digest = hashlib.sha256(b"".join(pcm)).hexdigest()
        assert record["streams"][pid]["sha256"] == digest and record["streams"][pid]["frames"] == 100
        digests.add(digest)
    assert len(digests) == 3  # different audio per participant
    # Turn-taking: at some tick one participant speaks while another is silent.
    assert any(not frames[3 * t]["silent"] and frames[3 * t + 1]["silent"] for t in range(100))


def test_mixed_frames_can_name_the_participant(sim: SimulatorServer, capture: Capture,
                                               client: CallAutomationClient) -> None:
    _, record, (conn,) = run_call(sim, capture, client, script={"mixedParticipant": "first"})
    frames = audio_frames(conn)
    assert {f["participantRawID"] for f in frames} == {record["participants"][0]}
    assert set(record["streams"]) == {"mixed"}


def test_upgrade_headers_and_websocket_jwt(sim: SimulatorServer, capture: Capture,
                                           client: CallAutomationClient) -> None:
    props, _, (conn,) = run_call(sim, capture, client)
    assert conn.headers["x-ms-call-connection-id"] == props.call_connection_id
    assert conn.headers["x-ms-call-correlation-id"] == props.correlation_id
    verifier = AcsJwtVerifier(AuthConfig(issuer=ISSUER, audience=RESOURCE_ID, jwks_url=sim.jwks_url))
    claims = asyncio.run(verifier.verify_async(bearer_token(conn.headers["authorization"])))
    assert claims["exp"] - claims["iat"] == 24 * 3600
    assert "permessage-deflate" not in conn.headers.get("sec-websocket-extensions", "")


def test_real_time_pace_100_frames_take_2_seconds(sim: SimulatorServer, capture: Capture,
                                                  client: CallAutomationClient) -> None:
    _, _, (conn,) = run_call(sim, capture, client, script={"durationS": 2.0, "pace": 1.0})
    arrivals = [t for (t, text) in conn.messages if '"AudioData"' in text]
    assert len(arrivals) == 100
    span = arrivals[-1] - arrivals[0]  # 99 intervals of 20 ms
    assert 1.98 * 0.9 <= span <= 1.98 * 1.1, span
    # No drift: frame k arrives close to k·20 ms after the first (monotonic schedule, not summed sleeps).
    worst = max(abs((t - arrivals[0]) - k * 0.02) for k, t in enumerate(arrivals))
    assert worst < 0.1, worst


def test_speed_up_pace(sim: SimulatorServer, capture: Capture, client: CallAutomationClient) -> None:
    _, _, (conn,) = run_call(sim, capture, client, script={"durationS": 2.0, "pace": 10.0})
    arrivals = [t for (t, text) in conn.messages if '"AudioData"' in text]
    assert len(arrivals) == 100
    assert 0.1 <= arrivals[-1] - arrivals[0] <= 0.5
    stamps = [ts_ms(f["timestamp"]) for f in audio_frames(conn)]
    assert stamps[-1] - stamps[0] == 99 * 20  # timestamps stay on the 20 ms call clock


def test_dtmf_tones_only_when_enabled(sim: SimulatorServer, capture: Capture,
                                      client: CallAutomationClient) -> None:
    script = {"dtmf": [[0.1, "1"], [0.3, "#"]]}
    _, record, (conn,) = run_call(sim, capture, client, script=script, dtmf=True)
    dtmf = [f for f in conn.frames() if f["kind"] == "DtmfData"]
    assert dtmf == [{"kind": "DtmfData", "dtmfData": {"data": "1"}}, {"kind": "DtmfData", "dtmfData": {"data": "#"}}]
    kinds = [f["kind"] for f in conn.frames()]
    assert kinds.index("DtmfData") == 1 + 5 + 1  # after the AudioData of frame 5 (0.1 s)
    assert record["connections"][0]["dtmfSent"] == ["1", "#"]
    _, _, (quiet,) = run_call(sim, capture, client, script=script)
    assert all(f["kind"] != "DtmfData" for f in quiet.frames())


def test_timestamp_jitter_stays_within_bounds(sim: SimulatorServer, capture: Capture,
                                              client: CallAutomationClient) -> None:
    _, record, (conn,) = run_call(sim, capture, client, script={"faults": {"jitterMs": 4, "seed": 3}})
    stamps = [ts_ms(f["timestamp"]) for f in audio_frames(conn)]
    nominal = [record["epochMs"] + 20 * k for k in range(len(stamps))]
    offsets = [s - n for s, n in zip(stamps, nominal, strict=True)]
    assert max(abs(o) for o in offsets) <= 4 and len(set(offsets)) > 1


def test_gap_skips_frames_and_time_jumps(sim: SimulatorServer, capture: Capture,
                                         client: CallAutomationClient) -> None:
    _, record, (conn,) = run_call(sim, capture, client, script={"faults": {"gaps": [[0.4, 0.2]]}})
    frames = audio_frames(conn)
    assert len(frames) == 40
    deltas = [b - a for a, b in itertools.pairwise(ts_ms(f["timestamp"]) for f in frames)]
    assert sorted(set(deltas)) == [20, 220] and deltas.count(220) == 1
    assert record["connections"][0]["skippedFrames"] == 10 and record["streams"]["mixed"]["frames"] == 40


def test_dropped_connection_reconnects_like_acs(sim: SimulatorServer, capture: Capture,
                                                client: CallAutomationClient) -> None:
    faults = {"dropAtS": 0.4, "reconnect": True, "reconnectDelayS": 0.1}
    _, record, conns = run_call(sim, capture, client, script={"faults": faults})
    assert len(conns) == 2
    first, second = conns
    assert first.disconnect_code not in (1000, None)  # aborted: no close handshake
    assert [f["kind"] for f in second.frames()][:2] == ["AudioMetadata", "AudioData"]
    a, b = audio_frames(first), audio_frames(second)
    assert len(a) == 20
    epoch = record["epochMs"]
    assert ts_ms(b[0]["timestamp"]) == epoch + 20 * record["connections"][1]["startedFrame"]
    assert record["connections"][1]["startedFrame"] == 25 and len(b) == 25
    for conn_rec, frames in zip(record["connections"], (a, b), strict=True):
        pcm = b"".join(base64.b64decode(f["data"]) for f in frames)
        assert conn_rec["streams"]["mixed"]["sha256"] == hashlib.sha256(pcm).hexdigest()
    whole = b"".join(base64.b64decode(f["data"]) for f in a + b)
    assert record["streams"]["mixed"]["sha256"] == hashlib.sha256(whole).hexdigest()
    types = [c["type"] for c in record["callbacks"]]
    assert types == ["CallConnected", "MediaStreamingStarted", "MediaStreamingStarted", "MediaStreamingStopped",
                     "CallDisconnected"]
    details = [c["event"]["data"]["mediaStreamingUpdate"]["mediaStreamingStatusDetails"]
               for c in record["callbacks"] if c["type"] == "MediaStreamingStarted"]
    assert details == ["subscriptionStarted", "streamConnectionReestablished"]


@pytest.mark.parametrize("how", ["drop", "server-close"])
def test_lost_connection_without_reconnect_fails_the_stream(sim: SimulatorServer, capture: Capture,
                                                            client: CallAutomationClient, how: str) -> None:
    if how == "drop":
        _, record, conns = run_call(sim, capture, client, script={"faults": {"dropAtS": 0.2}})
    else:
        _, record, conns = run_call(sim, capture, client, script={"pace": 2.0}, ws_mode="closeafter-11")
    assert len(conns) == 1
    assert [c["type"] for c in record["callbacks"]] == [
        "CallConnected", "MediaStreamingStarted", "MediaStreamingFailed", "CallDisconnected"]
    failed = record["callbacks"][2]["event"]["data"]
    assert failed["mediaStreamingUpdate"]["mediaStreamingStatusDetails"] == "streamConnectionInterrupted"
    assert failed["resultInformation"]["code"] == 500
    assert record["connections"][0]["outcome"] == ("dropped" if how == "drop" else "closed")


def test_bidirectional_messages_from_the_server_are_read_in_both_casings(
        sim: SimulatorServer, capture: Capture, client: CallAutomationClient) -> None:
    _, record, (conn,) = run_call(sim, capture, client, ws_mode="talkback")
    (rec,) = record["connections"]
    assert rec["outcome"] == "completed" and rec["inboundKinds"] == {"audiodata": 1, "stopaudio": 1}
    assert len(audio_frames(conn)) == 50
