"""REST fidelity of the ACS simulator, driven by the REAL Call Automation SDK
(docs/acs-protocol.md#call-automation-rest).

What would catch drift: status codes and bodies the SDK must deserialize, 401 for a wrong key, the HMAC
recomputed here from the captured bytes with our own code (docs/acs-protocol.md#hmac-request-signing), raw response
shapes (rawId + kind), api-version,
repeatability, error bodies.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from email.utils import formatdate
from time import time

import httpx
import pytest
from azure.communication.callautomation import (
    CallAutomationClient,
    CommunicationUserIdentifier,
    PhoneNumberIdentifier,
)
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

from devstack.simulator import AudioSpec, CallScript, SimulatorConfig, SimulatorServer
from tests._simulator_fixtures import Capture, media_options, recompute_signature, sign

API = "api-version=2026-03-12"
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    script = CallScript(duration_s=30.0, audio=AudioSpec(source="synth"), connect_delay_s=0.05)
    with SimulatorServer(SimulatorConfig(pace=1.0, default_script=script)) as server:  # calls last until hung up
        yield server


@pytest.fixture(scope="module")
def client(sim: SimulatorServer) -> CallAutomationClient:
    return CallAutomationClient(sim.url, AzureKeyCredential(sim.access_key))


def _signed(sim: SimulatorServer, method: str, path_query: str, body: bytes = b"", *, date: str | None = None,
            sign_path: str | None = None, sign_body: bytes | None = None,
            extra: dict[str, str] | None = None) -> httpx.Response:
    host = f"127.0.0.1:{sim.port}"
    headers = sign(method, sign_path or path_query, host, body if sign_body is None else sign_body,
                   sim.access_key, date=date)
    headers["Content-Type"] = "application/json"
    headers.update(extra or {})
    with httpx.Client(trust_env=False) as http:
        return http.request(method, f"{sim.url}{path_query}", content=body, headers=headers)


def _create_body(capture: Capture, target: str = "+15550100", **extra: object) -> bytes:
    body = {"targets": [{"rawId": f"4:{target}", "phoneNumber": {"value": target}}],
            "sourceCallerIdNumber": {"value": "+15550199"}, "callbackUri": capture.callback_url("raw"), **extra}
    return json.dumps(body).encode()


def test_create_call_with_the_sdk_returns_connecting_then_connects(sim: SimulatorServer, capture: Capture,
                                                                     client: CallAutomationClient) -> None:
    props = client.create_call(
        PhoneNumberIdentifier("+15550100"), capture.callback_url("create"),
        source_caller_id_number=PhoneNumberIdentifier("+15550199"), operation_context="ctx-create",
        media_streaming=media_options(f"{capture.ws_base}/accept", channel="unmixed", start=False))
    assert GUID.match(props.call_connection_id)
    assert props.call_connection_state == "connecting"
    assert props.server_call_id and props.correlation_id
    assert props.callback_url == capture.callback_url("create")
    (target,) = props.targets
    assert isinstance(target, PhoneNumberIdentifier) and target.raw_id == "4:+15550100"
    assert target.properties["value"] == "+15550100"
    assert props.source_caller_id_number is not None and props.source_caller_id_number.raw_id == "4:+15550199"
    assert isinstance(props.source, CommunicationUserIdentifier) and props.source.raw_id.startswith("8:acs:")
    sub = props.media_streaming_subscription
    assert sub is not None and sub.state == "inactive" and sub.subscribed_content_types == ["audio"]

    sim.wait_for_callback(props.call_connection_id, "CallConnected")
    conn = client.get_call_connection(props.call_connection_id)
    now = conn.get_call_properties()
    assert now.call_connection_state == "connected"
    assert now.call_connection_id == props.call_connection_id and now.correlation_id == props.correlation_id
    assert now.media_streaming_subscription.id == sub.id

    assert conn.hang_up(is_for_everyone=True) is None  # POST :terminate → 204
    record = sim.wait_until_ended(props.call_connection_id)
    assert [c["type"] for c in record["callbacks"]] == ["CallConnected", "CallDisconnected"]
    with pytest.raises(ResourceNotFoundError):
        conn.get_call_properties()


def test_start_and_stop_media_streaming_with_the_sdk(sim: SimulatorServer, capture: Capture,
                                                      client: CallAutomationClient) -> None:
    props = client.create_call(
        PhoneNumberIdentifier("+15550101"), capture.callback_url("startstop"),
        source_caller_id_number=PhoneNumberIdentifier("+15550199"),
        media_streaming=media_options(f"{capture.ws_base}/accept", start=False))
    call_id = props.call_connection_id
    conn = client.get_call_connection(call_id)
    sim.wait_for_callback(call_id, "CallConnected")
    with pytest.raises(HttpResponseError) as not_active:
        conn.stop_media_streaming()
    assert not_active.value.status_code == 400

    assert conn.start_media_streaming(operation_context="start-1",
                                      operation_callback_url=capture.callback_url("startstop-op")) is None
    sim.wait_for_callback(call_id, "MediaStreamingStarted")
    assert conn.get_call_properties().media_streaming_subscription.state == "active"
    with pytest.raises(HttpResponseError) as already:
        conn.start_media_streaming()
    assert already.value.status_code == 400 and already.value.error.code == "BadRequest"

    assert conn.stop_media_streaming(operation_context="stop-1") is None
    sim.wait_for_callback(call_id, "MediaStreamingStopped")
    assert conn.get_call_properties().media_streaming_subscription.state == "inactive"
    conn.start_media_streaming(operation_context="start-2")
    sim.wait_for(call_id, lambda r: [c["type"] for c in r["callbacks"]].count("MediaStreamingStarted") == 2)

    assert conn.hang_up(is_for_everyone=False) is None  # DELETE → 204
    record = sim.wait_until_ended(call_id)
    assert [c["type"] for c in record["callbacks"]] == [
        "CallConnected", "MediaStreamingStarted", "MediaStreamingStopped", "MediaStreamingStarted",
        "MediaStreamingStopped", "CallDisconnected"]
    first, second = record["connections"]
    assert first["outcome"] == "stopped" and second["outcome"] == "stopped"
    ws = capture.connections_for(call_id)
    assert len(ws) == 2 and all(c.frames()[0]["kind"] == "AudioMetadata" for c in ws)
    # The call clock kept running while streaming was off: the second connection starts later, on the grid.
    last_first = ws[0].frames()[-1]["audioData"]["timestamp"]
    first_second = ws[1].frames()[1]["audioData"]["timestamp"]
    assert first_second > last_first
    with pytest.raises(ResourceNotFoundError):
        conn.hang_up(is_for_everyone=False)


def test_wrong_key_gets_401_and_changes_nothing(sim: SimulatorServer, capture: Capture) -> None:
    wrong = CallAutomationClient(sim.url, AzureKeyCredential(base64.b64encode(b"x" * 32).decode()))
    before = len(sim.calls())
    with pytest.raises(ClientAuthenticationError) as exc:
        wrong.create_call(PhoneNumberIdentifier("+15550100"), capture.callback_url("nope"),
                          source_caller_id_number=PhoneNumberIdentifier("+15550199"))
    assert exc.value.status_code == 401
    assert len(sim.calls()) == before
    with pytest.raises(ClientAuthenticationError):
        wrong.get_call_connection(str(uuid.uuid4())).get_call_properties()


def test_sdk_requests_carry_an_hmac_we_recompute_independently(sim: SimulatorServer, capture: Capture,
                                                               client: CallAutomationClient) -> None:
    props = client.create_call(PhoneNumberIdentifier("+15550102"), capture.callback_url("hmac"),
                               source_caller_id_number=PhoneNumberIdentifier("+15550199"))
    sim.wait_for_callback(props.call_connection_id, "CallConnected")
    client.get_call_connection(props.call_connection_id).get_call_properties()
    client.get_call_connection(props.call_connection_id).hang_up(is_for_everyone=True)
    sdk = [r for r in sim.requests() if props.call_connection_id in r["pathAndQuery"]
           or (r["method"] == "POST" and r["pathAndQuery"].startswith("/calling/callConnections?")
               and capture.callback_url("hmac") in r["body"])]
    assert {r["method"] for r in sdk} == {"POST", "GET"} and len(sdk) == 3
    for r in sdk:
        headers = {k.lower(): v for k, v in r["headers"]}
        assert headers["user-agent"].startswith("azsdk-python-communication-callautomation/")
        assert r["pathAndQuery"].endswith("?" + API)
        body = r["body"].encode()
        assert headers["x-ms-content-sha256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()
        scheme, _, params = headers["authorization"].partition(" ")
        assert scheme == "HMAC-SHA256"
        fields = dict(p.split("=", 1) for p in params.split("&"))
        assert fields["SignedHeaders"] == "x-ms-date;host;x-ms-content-sha256"
        assert fields["Signature"] == recompute_signature(r["method"], r["pathAndQuery"], headers, body,
                                                          sim.access_key)
        assert r["status"] in (201, 200, 204) and r["authError"] is None
    create = next(r for r in sdk if r["method"] == "POST" and "terminate" not in r["pathAndQuery"])
    create_headers = {k.lower() for k, _ in create["headers"]}
    assert {"repeatability-request-id", "repeatability-first-sent"} <= create_headers


def test_hand_signed_requests_tampering_and_staleness(sim: SimulatorServer, capture: Capture) -> None:
    unknown = f"/calling/callConnections/{uuid.uuid4()}?{API}"
    ok = _signed(sim, "GET", unknown)
    assert ok.status_code == 404
    assert set(ok.json()["error"]) >= {"code", "message"}
    ten_min_old = formatdate(time() - 600, usegmt=True)
    assert _signed(sim, "GET", unknown, date=ten_min_old).status_code == 404
    twenty_min_old = formatdate(time() - 1200, usegmt=True)
    stale = _signed(sim, "GET", unknown, date=twenty_min_old)
    assert stale.status_code == 401 and stale.json()["error"]["code"]
    assert _signed(sim, "GET", unknown, sign_path=unknown.replace("api-version", "api-versionx")).status_code == 401
    body = _create_body(capture)
    tampered = _signed(sim, "POST", f"/calling/callConnections?{API}", body,
                       sign_body=body.replace(b"+15550100", b"+15550666"))
    assert tampered.status_code == 401
    with httpx.Client(trust_env=False) as http:
        assert http.get(f"{sim.url}{unknown}").status_code == 401  # unsigned


def test_api_version_is_required(sim: SimulatorServer) -> None:
    resp = _signed(sim, "GET", f"/calling/callConnections/{uuid.uuid4()}")
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "MissingApiVersionParameter"


def test_raw_create_response_has_rawid_and_kind(sim: SimulatorServer, capture: Capture) -> None:
    resp = _signed(sim, "POST", f"/calling/callConnections?{API}", _create_body(capture, operationContext="raw"))
    assert resp.status_code == 201 and resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["targets"] == [{"kind": "phoneNumber", "rawId": "4:+15550100",
                                "phoneNumber": {"value": "+15550100"}}]
    assert body["source"]["kind"] == "communicationUser" and body["source"]["rawId"].startswith("8:acs:")
    assert body["source"]["communicationUser"]["id"] == body["source"]["rawId"]
    assert body["sourceCallerIdNumber"] == {"value": "+15550199"}
    assert body["callConnectionState"] == "connecting"
    assert {"callConnectionId", "serverCallId", "correlationId", "callbackUri"} <= set(body)
    assert "mediaStreamingSubscription" not in body  # no streaming requested
    _signed(sim, "POST", f"/calling/callConnections/{body['callConnectionId']}:terminate?{API}")


def test_repeatability_request_id_returns_the_first_response_without_a_second_call(
        sim: SimulatorServer, capture: Capture) -> None:
    repeat = {"Repeatability-Request-ID": str(uuid.uuid4()), "Repeatability-First-Sent": formatdate(usegmt=True)}
    before = len(sim.calls())
    first = _signed(sim, "POST", f"/calling/callConnections?{API}", _create_body(capture), extra=repeat)
    again = _signed(sim, "POST", f"/calling/callConnections?{API}", _create_body(capture), extra=repeat)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert len(sim.calls()) == before + 1
    other = _signed(sim, "POST", f"/calling/callConnections?{API}", _create_body(capture),
                    extra={**repeat, "Repeatability-Request-ID": str(uuid.uuid4())})
    assert other.json()["callConnectionId"] != first.json()["callConnectionId"]
    for resp in (first, other):
        _signed(sim, "POST", f"/calling/callConnections/{resp.json()['callConnectionId']}:terminate?{API}")


def test_validation_errors_look_like_the_service(sim: SimulatorServer, capture: Capture,
                                                 client: CallAutomationClient) -> None:
    with pytest.raises(HttpResponseError) as no_caller_id:
        client.create_call(PhoneNumberIdentifier("+15550100"), capture.callback_url("x"))
    assert no_caller_id.value.status_code == 400 and no_caller_id.value.error.code == "BadRequest"
    with pytest.raises(HttpResponseError) as outside:
        client.create_call(CommunicationUserIdentifier("8:acs:r_1"), "https://example.invalid/api/callbacks")
    assert outside.value.status_code == 400 and "CallbackUri" in outside.value.message
    with pytest.raises(ResourceNotFoundError) as missing:
        client.get_call_connection(str(uuid.uuid4())).get_call_properties()
    assert missing.value.status_code == 404


def test_answer_only_accepts_a_context_the_simulator_issued_and_only_once(
        sim: SimulatorServer, capture: Capture, client: CallAutomationClient) -> None:
    with pytest.raises(HttpResponseError) as bogus:
        client.answer_call("not-a-context", capture.callback_url("answer"))
    assert bogus.value.status_code == 400 and bogus.value.error.code == "InvalidIncomingCallContext"

    placed = sim.place_incoming_call(f"{capture.http}/eventgrid", from_="+15557770001", to="+15558880002")
    assert placed["deliveryStatus"] == 200
    context = placed["incomingCallContext"]
    props = client.answer_call(context, capture.callback_url("answer"), operation_context="ans",
                               media_streaming=media_options(f"{capture.ws_base}/accept", start=False))
    assert props.call_connection_state == "connecting"
    assert props.server_call_id == placed["serverCallId"] and props.correlation_id == placed["correlationId"]
    assert [t.raw_id for t in props.targets] == ["4:+15557770001"]
    assert props.answered_for is not None and props.answered_for.raw_id == "4:+15558880002"
    with pytest.raises(HttpResponseError) as twice:
        client.answer_call(context, capture.callback_url("answer"))
    assert twice.value.status_code == 400 and twice.value.error.code == "CallAlreadyAnswered"
    sim.wait_for_callback(props.call_connection_id, "CallConnected")
    client.get_call_connection(props.call_connection_id).hang_up(is_for_everyone=True)
    sim.wait_until_ended(props.call_connection_id)
