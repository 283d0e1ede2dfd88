"""Callback and Event Grid fidelity (docs/acs-protocol.md#callbacks, #incomingcall-via-event-grid), judged on what a
receiver actually got.

The reference fixtures below are copied from the protocol notes (Java SDK test fixtures / the Event Grid spec
example), not from the simulator; events are compared with them field by field. JWTs are checked with the
product's own verifier against the simulator's JWKS, and with a wrong audience to prove the claim is there.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from azure.communication.callautomation import CallAutomationClient, PhoneNumberIdentifier
from azure.core.messaging import CloudEvent

from common.acs_jwt import AcsJwtVerifier, AuthConfig, AuthError, bearer_token
from devstack.ports import free_port
from devstack.simulator import AudioSpec, CallScript, SimulatorServer
from tests._simulator_fixtures import ISSUER, RESOURCE_ID, Capture, media_options, sdk_client, synth_simulator

# docs/acs-protocol.md#callback-event-types: MediaStreamingStarted (Java SDK fixture, verbatim values).
STARTED_FIXTURE: dict[str, Any] = {
    "id": "d13c62c5-721e-44b9-a680-9866c33db7e7",
    "source": "calling/callConnections/4c1f5600-a9c6-4343-8979-b638a98de98f",
    "type": "Microsoft.Communication.MediaStreamingStarted",
    "data": {"eventSource": "calling/callConnections/4c1f5600-a9c6-4343-8979-b638a98de98f",
             "operationContext": "startMediaStreamingContext",
             "resultInformation": {"code": 200, "subCode": 0, "message": "Action completed successfully."},
             "mediaStreamingUpdate": {"contentType": "Audio", "mediaStreamingStatus": "mediaStreamingStarted",
                                      "mediaStreamingStatusDetails": "subscriptionStarted"},
             "version": "2024-06-15-preview", "callConnectionId": "4c1f5600-a9c6-4343-8979-b638a98de98f",
             "serverCallId": "aHR0cHM6Ly9...", "correlationId": "30f0ad34-d615-4bf3-8476-5630ae7fc3db",
             "publicEventType": "Microsoft.Communication.MediaStreamingStarted"},
    "time": "2024-05-02T11:20:42.9110236+00:00", "specversion": "1.0", "datacontenttype": "application/json",
    "subject": "calling/callConnections/4c1f5600-a9c6-4343-8979-b638a98de98f"}
STREAM_FAILED_RESULT = {"code": 500, "subCode": 8603,
                        "message": "Action failed, not able to establish websocket connection."}
# docs/acs-protocol.md#incomingcall-via-event-grid: IncomingCall in the Event Grid schema (spec example, placeholders).
INCOMING_FIXTURE: dict[str, Any] = {
    "id": "e80026e7-e298-46ba-bc42-dab0eda92581", "topic": "/subscriptions/{subscription-id}/...",
    "subject": "/caller/{caller-id}/recipient/{recipient-id}",
    "data": {"to": {}, "from": {}, "serverCallId": "{server-call-id}", "callerDisplayName": "VOIP Caller",
             "customContext": {"sipHeaders": {}, "voipHeaders": {}},
             "incomingCallContext": "{incoming-call-contextValue}", "correlationId": "correlationId"},
    "eventType": "Microsoft.Communication.IncomingCall", "dataVersion": "1.0", "metadataVersion": "1",
    "eventTime": "2023-04-04T17:18:42.5542219Z"}
CLOUD_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}\+00:00$")
GRID_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$")


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with synth_simulator(connect_delay_s=0.05) as server:
        yield server


@pytest.fixture(scope="module")
def client(sim: SimulatorServer) -> CallAutomationClient:
    return sdk_client(sim)


@pytest.fixture(scope="module")
def verifier(sim: SimulatorServer) -> AcsJwtVerifier:
    return AcsJwtVerifier(AuthConfig(issuer=ISSUER, audience=RESOURCE_ID, jwks_url=sim.jwks_url))


def _call(client: CallAutomationClient, capture: Capture, name: str, ws_mode: str = "accept", *,
          start: bool = True, target: str = "+15550100", **kw: Any) -> Any:
    return client.create_call(PhoneNumberIdentifier(target), capture.callback_url(name),
                              source_caller_id_number=PhoneNumberIdentifier("+15550199"),
                              media_streaming=media_options(f"{capture.ws_base}/{ws_mode}", start=start), **kw)


def _assert_envelope(evt: dict[str, Any], call_id: str, event: str) -> None:
    """Field-by-field against the callback fixture's envelope."""
    assert set(evt) == set(STARTED_FIXTURE)
    assert evt["source"] == evt["subject"] == f"calling/callConnections/{call_id}"
    assert evt["type"] == f"Microsoft.Communication.{event}"
    assert evt["specversion"] == "1.0" and evt["datacontenttype"] == "application/json"
    assert CLOUD_TIME.match(evt["time"]), evt["time"]
    data = evt["data"]
    assert data["publicEventType"] == evt["type"]
    assert data["callConnectionId"] == call_id
    assert data["eventSource"] == evt["source"]
    assert data["version"] == "2026-03-12"
    result = data["resultInformation"]
    assert isinstance(result["code"], int) and isinstance(result["subCode"], int) and isinstance(result["message"],
                                                                                                str)
    parsed = CloudEvent.from_dict(evt)
    assert parsed.type == evt["type"] and parsed.source == evt["source"]


def test_callbacks_are_cloudevent_arrays_in_order_with_fresh_verified_jwts(
        sim: SimulatorServer, capture: Capture, client: CallAutomationClient, verifier: AcsJwtVerifier) -> None:
    props = _call(client, capture, "order", operation_context="ctx-order")
    record = sim.wait_until_ended(props.call_connection_id)
    posts = capture.callbacks["order"]
    assert [c["status"] for c in record["callbacks"]] == [200] * 4
    order = ["CallConnected", "MediaStreamingStarted", "MediaStreamingStopped", "CallDisconnected"]
    assert [c["type"] for c in record["callbacks"]] == order
    assert len(posts) == 4
    tokens = []
    for post, name in zip(posts, order, strict=True):
        body = post.json()
        assert isinstance(body, list) and len(body) == 1
        evt = body[0]
        _assert_envelope(evt, props.call_connection_id, name)
        data = evt["data"]
        assert data["serverCallId"] == props.server_call_id and data["correlationId"] == props.correlation_id
        assert data["operationContext"] == "ctx-order"
        token = bearer_token(post.headers["authorization"])
        claims = asyncio.run(verifier.verify_async(token))
        assert claims["iss"] == ISSUER and claims["aud"] == RESOURCE_ID
        assert claims["exp"] - claims["iat"] == 300
        tokens.append(token)
    assert len(set(tokens)) == 4  # a new token per event

    started, stopped = posts[1].json()[0]["data"], posts[2].json()[0]["data"]
    assert set(started) == set(STARTED_FIXTURE["data"])
    assert started["mediaStreamingUpdate"] == STARTED_FIXTURE["data"]["mediaStreamingUpdate"]
    assert started["resultInformation"] == STARTED_FIXTURE["data"]["resultInformation"]
    assert stopped["mediaStreamingUpdate"] == {"contentType": "Audio", "mediaStreamingStatus": "mediaStreamingStopped",
                                               "mediaStreamingStatusDetails": "subscriptionStopped"}
    connected = posts[0].json()[0]["data"]
    assert "mediaStreamingUpdate" not in connected

    wrong_audience = AcsJwtVerifier(AuthConfig(issuer=ISSUER, audience="someone-else", jwks_url=sim.jwks_url))
    with pytest.raises(AuthError):
        asyncio.run(wrong_audience.verify_async(tokens[0]))
    assert jwt.get_unverified_header(tokens[0])["alg"] == "RS256"


def test_operation_callback_uri_gets_the_operation_events(sim: SimulatorServer, capture: Capture,
                                                          client: CallAutomationClient) -> None:
    script = CallScript(duration_s=None, audio=AudioSpec(source="synth"), connect_delay_s=0.05)
    sim.set_script(script, target="4:+15550177")
    props = _call(client, capture, "opbase", start=False, target="+15550177", operation_context="create-ctx")
    conn = client.get_call_connection(props.call_connection_id)
    sim.wait_for_callback(props.call_connection_id, "CallConnected")
    conn.start_media_streaming(operation_context="op-start", operation_callback_url=capture.callback_url("op"))
    sim.wait_for_callback(props.call_connection_id, "MediaStreamingStarted")
    conn.stop_media_streaming(operation_context="op-stop", operation_callback_url=capture.callback_url("op"))
    sim.wait_for_callback(props.call_connection_id, "MediaStreamingStopped")
    conn.hang_up(is_for_everyone=True)
    sim.wait_until_ended(props.call_connection_id)
    op = capture.events("op")
    base = capture.events("opbase")
    assert [(e["type"].rsplit(".", 1)[1], e["data"]["operationContext"]) for e in op] == [
        ("MediaStreamingStarted", "op-start"), ("MediaStreamingStopped", "op-stop")]
    assert [(e["type"].rsplit(".", 1)[1], e["data"]["operationContext"]) for e in base] == [
        ("CallConnected", "create-ctx"), ("CallDisconnected", "create-ctx")]


@pytest.mark.parametrize("mode", ["refused", "reject", "policy"])
def test_websocket_failure_gives_media_streaming_failed_8603(sim: SimulatorServer, capture: Capture,
                                                            client: CallAutomationClient, mode: str) -> None:
    name = f"fail-{mode}"
    if mode == "refused":
        url = f"ws://127.0.0.1:{free_port()}/ws"  # nothing listens there
        props = client.create_call(PhoneNumberIdentifier("+15550100"), capture.callback_url(name),
                                   source_caller_id_number=PhoneNumberIdentifier("+15550199"),
                                   media_streaming=media_options(url))
    else:
        props = _call(client, capture, name, ws_mode=mode)
    record = sim.wait_until_ended(props.call_connection_id)
    types = [c["type"] for c in record["callbacks"]]
    expected = {"refused": ["CallConnected", "MediaStreamingFailed", "CallDisconnected"],
                "reject": ["CallConnected", "MediaStreamingFailed", "CallDisconnected"],
                # accepted, then closed 1008: the socket was up (Started), then it is a failed stream
                "policy": ["CallConnected", "MediaStreamingStarted", "MediaStreamingFailed", "CallDisconnected"]}
    assert types == expected[mode]
    failed = next(e for e in capture.events(name) if e["type"].endswith("MediaStreamingFailed"))
    _assert_envelope(failed, props.call_connection_id, "MediaStreamingFailed")
    assert failed["data"]["resultInformation"] == STREAM_FAILED_RESULT
    assert failed["data"]["mediaStreamingUpdate"] == {
        "contentType": "Audio", "mediaStreamingStatus": "mediaStreamingFailed",
        "mediaStreamingStatusDetails": "streamConnectionUnsuccessful"}
    (conn,) = record["connections"]
    if mode == "reject":
        assert conn["httpStatus"] == 403
    if mode == "policy":
        assert conn["closeCode"] == 1008


def test_incoming_call_event_grid_delivery_and_answer(sim: SimulatorServer, capture: Capture,
                                                      client: CallAutomationClient,
                                                      verifier: AcsJwtVerifier) -> None:
    placed = sim.place_incoming_call(f"{capture.http}/eventgrid?functionName=IncomingCall&code=k",
                                     from_="+15557770001", to="+15558880002",
                                     script={"durationS": 0.6, "speakers": 1})
    assert placed["deliveryStatus"] == 200
    post = capture.eventgrid[-1]
    assert post.query == "functionName=IncomingCall&code=k"
    assert post.headers["aeg-event-type"] == "Notification"
    assert post.headers["content-type"].startswith("application/json")
    body = post.json()
    assert isinstance(body, list) and len(body) == 1
    evt = body[0]
    assert set(evt) == set(INCOMING_FIXTURE)
    assert set(evt["data"]) == set(INCOMING_FIXTURE["data"])
    assert evt["eventType"] == "Microsoft.Communication.IncomingCall"
    assert evt["dataVersion"] == "1.0" and evt["metadataVersion"] == "1"
    assert GRID_TIME.match(evt["eventTime"])
    assert evt["data"]["from"] == {"kind": "phoneNumber", "rawId": "4:+15557770001",
                                   "phoneNumber": {"value": "+15557770001"}}
    assert evt["data"]["to"]["rawId"] == "4:+15558880002"
    assert evt["subject"] == "/caller/4:+15557770001/recipient/4:+15558880002"
    assert evt["data"]["incomingCallContext"] == placed["incomingCallContext"]

    props = client.answer_call(evt["data"]["incomingCallContext"], capture.callback_url("incoming"),
                               operation_context="answered",
                               media_streaming=media_options(f"{capture.ws_base}/accept"))
    record = sim.wait_until_ended(props.call_connection_id)
    assert [c["type"] for c in record["callbacks"]] == [
        "CallConnected", "MediaStreamingStarted", "MediaStreamingStopped", "CallDisconnected"]
    events = capture.events("incoming")
    assert all(e["data"]["serverCallId"] == evt["data"]["serverCallId"] for e in events)
    assert all(e["data"]["correlationId"] == evt["data"]["correlationId"] for e in events)
    assert record["direction"] == "inbound" and record["streams"]["mixed"]["frames"] == 30
    ws = capture.connections_for(props.call_connection_id)
    asyncio.run(verifier.verify_async(bearer_token(ws[0].headers["authorization"])))


def test_create_call_failed_and_answer_failed(sim: SimulatorServer, capture: Capture,
                                              client: CallAutomationClient) -> None:
    sim.set_script({"outcome": "fail", "connectDelayS": 0.02}, target="4:+15550666")
    props = _call(client, capture, "createfail", target="+15550666", operation_context="cf")
    record = sim.wait_until_ended(props.call_connection_id)
    assert [c["type"] for c in record["callbacks"]] == ["CreateCallFailed"]
    (evt,) = capture.events("createfail")
    _assert_envelope(evt, props.call_connection_id, "CreateCallFailed")
    assert evt["data"]["operationContext"] == "cf" and evt["data"]["resultInformation"]["code"] >= 400
    assert capture.connections_for(props.call_connection_id) == []

    placed = sim.place_incoming_call(f"{capture.http}/eventgrid", script={"outcome": "fail"})
    props = client.answer_call(placed["incomingCallContext"], capture.callback_url("answerfail"))
    record = sim.wait_until_ended(props.call_connection_id)
    assert [c["type"] for c in record["callbacks"]] == ["AnswerFailed"]
    _assert_envelope(capture.events("answerfail")[0], props.call_connection_id, "AnswerFailed")


def test_far_end_hang_up_stops_streaming_then_disconnects(sim: SimulatorServer, capture: Capture,
                                                          client: CallAutomationClient) -> None:
    sim.set_script({"durationS": None, "connectDelayS": 0.02, "pace": 1.0}, target="4:+15550155")
    props = _call(client, capture, "remote", target="+15550155")
    sim.wait_for_callback(props.call_connection_id, "MediaStreamingStarted")
    sim.remote_hang_up(props.call_connection_id)
    record = sim.wait_until_ended(props.call_connection_id)
    assert [c["type"] for c in record["callbacks"]] == [
        "CallConnected", "MediaStreamingStarted", "MediaStreamingStopped", "CallDisconnected"]
    (conn,) = capture.connections_for(props.call_connection_id)
    capture.wait(lambda: conn.closed, what="the simulator to close the socket")
    assert conn.disconnect_code == 1000
