"""The whole loop, as the demo runs it: real function code + real SDK -> simulator -> signed WebSocket -> streamer
-> Azurite, and back out through the retrieval API. Audio compared by sha256 with what the simulator sent."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import wave
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from benchmarks.harness import parse_metrics
from devstack.acs_tokens import TokenIssuer
from devstack.demo import wait_complete
from devstack.simulator import CallScript
from devstack.stack import LocalStack
from recorder_cli.client import RecorderClient

SECONDS, CHUNK = 10.0, 2.0


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    with LocalStack(workdir=tmp_path_factory.mktemp("stack"), pace=4.0, chunk_seconds=CHUNK,
                    default_script=CallScript(duration_s=SECONDS, speakers=2)) as stack:
        assert stack.simulator is not None
        client = RecorderClient(stack.functions_url, stack.function_key)
        stack.simulator.set_script(CallScript(duration_s=SECONDS, speakers=2, dtmf=((1.0, "7"), (2.0, "#"))),
                                   target="4:+15557654321")
        out = client.place_call({"target": "+15557654321", "audioChannel": "unmixed", "sampleRate": 24000,
                                 "dtmf": True})
        rang = stack.simulator.place_incoming_call(stack.event_grid_url, from_="+15551230000", to="+15559870000",
                                                   script={"durationS": SECONDS, "speakers": 2})
        incoming = stack.simulator.wait_for_answer(rang["incomingCallContext"])
        calls = {"outbound": out["callConnectionId"], "incoming": incoming}
        for cid in calls.values():
            stack.simulator.wait_until_ended(cid, timeout=60)
            wait_complete(client, cid)
        yield stack, client, calls


def stitched_pcm(client: RecorderClient, call_id: str, participant: str | None) -> tuple[int, bytes]:
    with client.audio(call_id, participant) as (_n, _name, chunks):
        data = b"".join(chunks)
    with wave.open(io.BytesIO(data)) as w:
        return w.getframerate(), w.readframes(w.getnframes())


@pytest.mark.parametrize(("direction", "rate", "channel"),
                         [("outbound", 24000, "unmixed"), ("incoming", 16000, "mixed")])
def test_recorded_audio_is_exactly_what_acs_sent(loop, direction, rate, channel):
    stack, client, calls = loop
    call_id = calls[direction]
    sent = stack.simulator.call(call_id)["streams"]
    rec = client.recording(call_id)
    m = rec["manifest"]
    assert m["complete"] is True and m["sampleRate"] == rate and m["audioChannel"] == channel
    assert len(m["streams"]) == len(sent) == (2 if channel == "unmixed" else 1)
    for stream in m["streams"]:
        key = stream["participantRawId"] or "mixed"
        got_rate, pcm = stitched_pcm(client, call_id, stream["participantRawId"])
        assert got_rate == rate
        assert hashlib.sha256(pcm).hexdigest() == sent[key]["sha256"], key
        chunks = stream["chunks"]
        assert [c["seq"] for c in chunks] == list(range(round(SECONDS / CHUNK)))
        assert all(c["durationMs"] == CHUNK * 1000 for c in chunks)
        assert chunks[0]["startTime"] == sent[key]["firstTimestamp"]
    assert m["gaps"] == []
    if direction == "outbound":
        assert [d["tone"] for d in m["dtmf"]] == ["7", "#"]


def test_call_state_goes_connected_streaming_disconnected(loop):
    stack, client, calls = loop
    for call_id in calls.values():
        state = client.recording(call_id)["callState"]
        assert state["status"] == "disconnected" and state["streaming"] == "stopped"
        assert state["connectedAt"] <= state["streamingStartedAt"] <= state["streamingStoppedAt"] \
            <= state["disconnectedAt"]
        types = [e["type"] for e in state["events"]]
        assert types.index("CallConnected") < types.index("MediaStreamingStarted") \
            < types.index("MediaStreamingStopped") < types.index("CallDisconnected")
        delivered = stack.simulator.call(call_id)["callbacks"]
        assert delivered and all(c["status"] == 200 for c in delivered)  # JWT verified and accepted


def test_wrong_tokens_are_refused_on_the_websocket_and_the_callbacks(loop):
    stack, _client, calls = loop
    sim = stack.simulator
    forger = TokenIssuer(sim.issuer, sim.audience)  # right claims, wrong key

    async def upgrade() -> None:
        async with connect(f"ws://127.0.0.1:{stack.streamer_port}/ws", additional_headers={
                "x-ms-call-connection-id": calls["incoming"], "Authorization": f"Bearer {forger.token()}"}):
            pass

    with pytest.raises(InvalidStatus) as err:
        asyncio.run(upgrade())
    assert err.value.response.status_code == 403
    resp = httpx.post(f"{stack.functions_url}/api/callbacks", headers={"Authorization": f"Bearer {forger.token()}"},
                      json=[{"id": "x", "source": f"calling/callConnections/{calls['incoming']}",
                             "type": "Microsoft.Communication.CallDisconnected", "specversion": "1.0",
                             "data": {"callConnectionId": calls["incoming"]}}])
    assert resp.status_code == 401
    metrics = parse_metrics(httpx.get(f"{stack.streamer_url}/metrics").text)
    assert metrics['acs_streamer_refusals_total{reason="unauthorized"}'] == 1
    assert metrics["acs_streamer_sessions_total"] == 2  # the two real calls, each authenticated


def test_the_stack_wires_the_finalize_queue_and_the_events_topic(loop):
    """What the finished-recordings path will use: the queue endpoint in every storage connection string the stack
    hands out, the topic behind RECORDING_EVENTS_ENDPOINT/KEY, and the host's admin endpoint with the master key."""
    from azure.core.credentials import AzureKeyCredential
    from azure.core.messaging import CloudEvent
    from azure.eventgrid import EventGridPublisherClient
    from azure.storage.queue import QueueServiceClient

    from common.layout import FINALIZE_QUEUE

    stack, _client, _calls = loop
    assert stack.functions is not None and stack.streamer is not None and stack.azurite is not None
    host_env, streamer_env = stack.functions.env, stack.streamer.env
    connection = host_env["RecordingsStorage"]
    assert f"QueueEndpoint={stack.azurite.queue_endpoint};" in connection
    assert streamer_env["AZURE_STORAGE_CONNECTION_STRING"] == connection
    queues = QueueServiceClient.from_connection_string(connection)
    queue = queues.get_queue_client("wiring-probe")  # not the finalize queue: the host is consuming that one
    queue.create_queue()
    assert FINALIZE_QUEUE in [q.name for q in queues.list_queues()]  # the calls' ends were put on it
    try:
        queue.send_message("probe")
        assert [m.content for m in queue.peek_messages()] == ["probe"]
    finally:
        queue.delete_queue()

    assert host_env["RECORDING_EVENTS_ENDPOINT"] == stack.events_endpoint
    publisher = EventGridPublisherClient(host_env["RECORDING_EVENTS_ENDPOINT"],
                                         AzureKeyCredential(host_env["RECORDING_EVENTS_KEY"]))
    probe = CloudEvent(source="/e2e-probe", type="E2e.Probe", data={"probe": True})
    publisher.send([probe])
    (received,) = stack.wait_for_events(1, type="E2e.Probe", timeout=10)
    assert received["id"] == probe.id and received["data"] == {"probe": True}

    refused = httpx.post(f"{stack.functions_url}/admin/functions/ListRecordings", json={},
                         headers={"x-functions-key": stack.function_key})
    assert refused.status_code == 401  # a function key is not the master key
    with pytest.raises(RuntimeError, match="400"):  # the master key is accepted; an HTTP function is not run so
        stack.run_function("ListRecordings")


def _ready(client: RecorderClient, call_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = client.recording(call_id)
        if doc["status"] == "ready" or time.monotonic() > deadline:
            return doc
        time.sleep(0.2)


def _blob(url: str) -> bytes:
    return httpx.get(url, timeout=30).raise_for_status().content


def test_ended_calls_are_finalized_verified_and_announced_once(loop):
    stack, client, calls = loop
    for direction, call_id in calls.items():
        ended = stack.simulator.call(call_id)
        doc = _ready(client, call_id)  # the calls ended when the fixture returned: within 30 s of that
        assert doc["status"] == "ready", (direction, doc["status"])
        sent = ended["streams"]
        c = doc["completeness"]
        assert c["complete"] is True and c["coverage"] > 0.5 and not [h for h in c["holes"] if not h["expected"]]
        streams = [f for f in doc["files"] if f["kind"] == "stream"]
        assert len(streams) == len(sent)
        pcm_of = {}
        for f in streams:
            data = _blob(f["url"])
            assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["bytes"]
            with wave.open(io.BytesIO(data)) as w:
                pcm_of[f["participantRawId"]] = w.readframes(w.getnframes())
            assert hashlib.sha256(pcm_of[f["participantRawId"]]).hexdigest() == \
                sent[f["participantRawId"] or "mixed"]["sha256"]  # what ACS (the simulator) sent, exactly
        multi = [f for f in doc["files"] if f["kind"] == "multichannel"]
        if direction == "outbound":  # unmixed: channel k is participant k's stream, padded
            (m,) = multi
            with wave.open(io.BytesIO(_blob(m["url"]))) as w:
                assert w.getnchannels() == 2
                frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
            for entry in doc["channelMap"]:
                mono = np.frombuffer(pcm_of[entry["participantRawId"]], dtype="<i2")
                assert np.array_equal(frames[: mono.size, entry["channel"]], mono)
        else:
            assert multi == []
        item = next(i for i in client.recordings(50, None)["items"] if i["callConnectionId"] == call_id)
        assert item["status"] == "ready" and item["callStatus"] == "disconnected" and item["coverage"] > 0.5
    events = stack.wait_for_events(2, type="AcsCallRecorder.RecordingReady")
    time.sleep(1.0)  # a duplicate would have arrived by now
    events = stack.events("AcsCallRecorder.RecordingReady")
    assert sorted(e["subject"] for e in events) == sorted(f"recordings/{cid}" for cid in calls.values())
    for e in events:
        doc = client.recording(e["subject"].split("/", 1)[1])
        assert e["id"] == doc["eventId"] and e["data"]["digest"] == doc["digest"]
        assert doc["announcedAt"] is not None


def test_verify_says_ok_then_names_a_changed_chunk(loop):
    from azure.storage.blob import BlobServiceClient
    from typer.testing import CliRunner

    from common import wav
    from recorder_cli.main import app

    stack, client, calls = loop
    call_id = calls["incoming"]
    _ready(client, call_id)
    args = ["--url", stack.functions_url, f"--key={stack.function_key}", "recordings", "verify", call_id]
    ok = CliRunner().invoke(app, args)
    assert ok.exit_code == 0 and ok.stdout.startswith("OK: digest"), ok.output
    chunk = client.recording(call_id)["manifest"]["streams"][0]["chunks"][1]["blob"]
    container = BlobServiceClient.from_connection_string(stack.azurite.connection_string).get_container_client(
        stack.container)
    container.upload_blob(chunk, wav.encode(bytes(64000), 16000), overwrite=True)
    bad = CliRunner().invoke(app, args)
    assert bad.exit_code == 1 and f"chunk mixed/{1:06d}" in bad.stderr, bad.output
    container.delete_blob(client.recording(call_id)["manifest"]["streams"][0]["chunks"][0]["blob"])  # expired
    gone = CliRunner().invoke(app, args)
    assert gone.exit_code == 1 and f"chunk mixed/{0:06d}: cannot be read" in gone.stderr, gone.output
    assert f"chunk mixed/{1:06d}: sha256" in gone.stderr  # and the check went on past it


def test_streaming_that_fails_mid_call_is_restarted_and_the_hole_reported_healed(loop):
    """The simulator's WebSocket drops at 4 s of call clock and ACS reports MediaStreamingFailed (no reconnect of
    its own); the control plane restarts streaming through the SDK; the streamer continues the call clock; the
    finished recording reports the hole, its cause and that the recorder healed it."""
    stack, client, _calls = loop
    target = "+15557650001"
    stack.simulator.set_script({"durationS": 60.0, "speakers": 1, "faults": {"dropAtS": 4.0}}, target=f"4:{target}")
    call_id = client.place_call({"target": target, "audioChannel": "mixed"})["callConnectionId"]
    stack.simulator.wait_until_ended(call_id, timeout=90)
    doc = _ready(client, call_id, timeout=60)
    assert doc["status"] == "ready", doc["status"]
    state = doc["callState"]
    mine = [r for r in state["streamingRequests"] if r["by"] == "recorder"]
    assert [(r["action"], r["attempt"], r["error"]) for r in mine] == [("start", 1, None)], state
    assert [f["event"] for f in state["failures"]] == ["MediaStreamingFailed"]
    first, second = doc["manifest"]["sessions"]  # the dropped one and the restarted one, on one call clock
    assert first["endReason"] == "peer_lost" and second["complete"] is True
    assert second["frames"] >= 250  # the restart came with seconds of the call left, and their audio landed
    (hole,) = [h for h in doc["completeness"]["holes"] if not h["expected"]]
    assert hole["cause"] in ("streaming_failed", "streamer_unreachable") and hole["code"] == 500
    assert hole["healed"] is True and hole["healedBy"] == "recorder" and hole["restarts"] == 1
    assert "restarted by the recorder" in doc["completeness"]["statement"]
    (f,) = [f for f in doc["files"] if f["kind"] == "stream"]
    assert f["durationMs"] >= second["frames"] * 20  # on the call clock, after the first session's audio


def test_audio_the_simulator_skipped_is_silence_in_the_finished_file(loop):
    """ACS leaves out 1 s of frames (time still passes; the next timestamp jumps): the finished file is what was
    sent, with exactly that second as silence on the call clock, and the completeness report counts it."""
    stack, client, _calls = loop
    target = "+15557650003"
    stack.simulator.set_script({"durationS": 6.0, "speakers": 1, "faults": {"gaps": [[2.0, 1.0]]}},
                               target=f"4:{target}")
    call_id = client.place_call({"target": target, "audioChannel": "mixed", "sampleRate": 16000})["callConnectionId"]
    stack.simulator.wait_until_ended(call_id, timeout=60)
    doc = _ready(client, call_id, timeout=60)
    assert doc["status"] == "ready", doc["status"]
    (f,) = [f for f in doc["files"] if f["kind"] == "stream"]
    with wave.open(io.BytesIO(_blob(f["url"]))) as w:
        pcm = w.readframes(w.getnframes())
    frame = 640  # 20 ms at 16 kHz
    gap = pcm[100 * frame:150 * frame]  # frames 100..149: call-clock seconds 2..3
    assert gap == bytes(50 * frame)
    sent = stack.simulator.call(call_id)["streams"]["mixed"]
    assert sent["frames"] == 250
    assert hashlib.sha256(pcm[:100 * frame] + pcm[150 * frame:]).hexdigest() == sent["sha256"]
    (cov,) = doc["completeness"]["streams"]
    assert cov["silenceMs"] == 1000 and cov["audioMs"] == 5000


def test_a_recording_finished_while_the_topic_is_down_is_announced_once_when_it_is_back(loop):
    """The topic answers 503 to every publish (the SDK's own retries and the queue's included): the recording is
    ready but unannounced, and stays on the sweep's list; once the topic is back, the sweep publishes it, once."""
    stack, client, _calls = loop
    assert stack.topic is not None
    target = "+15557650002"
    stack.simulator.set_script({"durationS": 8.0, "speakers": 1}, target=f"4:{target}")
    stack.topic.fail_next(10_000)
    try:
        call_id = client.place_call({"target": target, "audioChannel": "mixed"})["callConnectionId"]
        stack.simulator.wait_until_ended(call_id, timeout=60)
        doc = _ready(client, call_id, timeout=60)
        assert doc["status"] == "ready" and doc["announcedAt"] is None
        deadline = time.monotonic() + 30
        while httpx.get(f"{stack.topic.url}/events", headers={"aeg-sas-key": stack.events_key}
                        ).json()["publishes"]["failed"] < 2:  # the first try and at least one retry were refused
            assert time.monotonic() < deadline, "no publish was tried"
            time.sleep(0.2)
    finally:
        stack.topic.fail_next(0)
    assert not [e for e in stack.events("AcsCallRecorder.RecordingReady") if e["subject"] == f"recordings/{call_id}"]
    stack.run_function("SweepRecordings")
    deadline = time.monotonic() + 30
    while client.recording(call_id)["announcedAt"] is None:
        assert time.monotonic() < deadline, "the sweep did not announce the recording"
        time.sleep(0.2)
    time.sleep(2.0)  # a duplicate (the queue's retry of the same message) would have arrived by now
    mine = [e for e in stack.events("AcsCallRecorder.RecordingReady") if e["subject"] == f"recordings/{call_id}"]
    assert len(mine) == 1 and mine[0]["id"] == client.recording(call_id)["eventId"]
