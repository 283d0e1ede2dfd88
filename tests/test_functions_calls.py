"""POST /api/calls and the call actions, over real HTTP through the local host, with the real SDK talking to a
Call Automation REST capture server that checks the HMAC itself; call state lands in Azurite."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import orjson
import pytest

from devstack.azurite import Azurite
from devstack.serve import ServerThread
from tests.functions_support import (
    AcsCapture,
    HostUnderTest,
    hosted,
    make_settings,
    new_container,
    store_for,
)


@pytest.fixture(scope="module")
def acs() -> Iterator[tuple[AcsCapture, str]]:
    capture = AcsCapture()
    with ServerThread(capture.app()) as server:
        yield capture, server.url


@pytest.fixture(scope="module")
def host(azurite: Azurite, acs: tuple[AcsCapture, str]) -> Iterator[HostUnderTest]:
    capture, url = acs
    container = new_container()
    store_for(azurite, container)
    settings = make_settings(azurite, container, acs_endpoint=url)
    with hosted(settings, acs=capture) as host:
        yield host


@pytest.fixture(autouse=True)
def fresh(host: HostUnderTest) -> Iterator[None]:
    assert host.acs is not None
    host.acs.requests.clear()
    host.acs.fail.clear()
    yield


def with_settings(host: HostUnderTest, **kw: Any) -> None:
    host.runtime.settings = replace(host.runtime.settings, **kw)


def test_create_call_sends_exactly_what_acs_expects(host: HostUnderTest) -> None:
    with host.client() as http:
        resp = http.post("/calls", json={"target": "+15551234567", "operationContext": "ctx1"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    call_id = body["callConnectionId"]
    assert body == {"callConnectionId": call_id, "serverCallId": f"server-{call_id}",
                    "correlationId": f"corr-{call_id}", "recordingUrl": f"{host.url}/api/recordings/{call_id}"}
    assert resp.headers["location"] == body["recordingUrl"]

    (req,) = host.acs.requests
    assert req.method == "POST" and req.path == "/calling/callConnections?api-version=2026-03-12"
    assert req.hmac_ok
    assert req.headers["repeatability-request-id"] and req.headers["repeatability-first-sent"].endswith("GMT")
    assert req.headers["content-type"] == "application/json"
    assert req.json() == {
        "targets": [{"rawId": "4:+15551234567", "phoneNumber": {"value": "+15551234567"}}],
        "sourceCallerIdNumber": {"value": "+15550000000"},
        "operationContext": "ctx1",
        "callbackUri": "https://func.example/api/callbacks",
        "mediaStreamingOptions": {"transportType": "websocket", "audioChannelType": "mixed",
                                  "transportUrl": "wss://streamer.example/ws/mixed", "contentType": "audio",
                                  "startMediaStreaming": True, "enableBidirectional": False,
                                  "audioFormat": "pcm16KMono"},
    }
    state = host.runtime.store.read_state(call_id)
    assert state["direction"] == "outbound" and state["target"] == "+15551234567"
    assert state["status"] == "connecting" and state["streaming"] == "requested"
    assert (state["audioChannel"], state["sampleRate"], state["dtmf"]) == ("mixed", 16000, False)
    listed = host.runtime.store.list_calls(10, None)[0]
    assert call_id in [c for c, _ in listed]


def test_links_use_the_forwarded_host_behind_a_proxy(host: HostUnderTest) -> None:
    with host.client() as http:
        resp = http.post("/calls", json={"target": "+15551234567"},
                         headers={"x-forwarded-host": "app.azurewebsites.net", "x-forwarded-proto": "https"})
    call_id = resp.json()["callConnectionId"]
    assert resp.json()["recordingUrl"] == f"https://app.azurewebsites.net/api/recordings/{call_id}"


def test_unmixed_24k_dtmf_call_to_an_acs_user(host: HostUnderTest) -> None:
    target = "8:acs:2b1f7c1e-5a3d-4c7e-9d61-0c9f3a7e8b10_00000020-aaaa-bbbb"
    with host.client() as http:
        resp = http.post("/calls", json={"target": target, "audioChannel": "unmixed", "sampleRate": 24000,
                                         "dtmf": True})
    assert resp.status_code == 201, resp.text
    sent = host.acs.requests[0].json()
    assert sent["targets"] == [{"rawId": target, "communicationUser": {"id": target}}]
    assert "sourceCallerIdNumber" not in sent and "operationContext" not in sent
    assert sent["mediaStreamingOptions"] == {
        "transportType": "websocket", "audioChannelType": "unmixed",
        "transportUrl": "wss://streamer.example/ws/unmixed", "contentType": "audio", "startMediaStreaming": True,
        "enableBidirectional": False, "audioFormat": "pcm24KMono", "enableDtmfTones": True}


@pytest.mark.parametrize(("body", "field"), [
    ({}, "target"),
    ({"target": ""}, "target"),
    ({"target": "15551234567"}, "target"),
    ({"target": "+1"}, "target"),
    ({"target": "8:orgid:abc"}, "target"),
    ({"target": 15551234567}, "target"),
    ({"target": "+15551234567", "sourceCallerId": "5550000"}, "sourceCallerId"),
    ({"target": "+15551234567", "sourceCallerId": "+15559990000\n"}, "sourceCallerId"),  # `$` allowed it
    ({"target": "+15551234567", "audioChannel": "stereo"}, "audioChannel"),
    ({"target": "+15551234567", "sampleRate": 8000}, "sampleRate"),
    ({"target": "+15551234567", "sampleRate": "16000"}, "sampleRate"),
    ({"target": "+15551234567", "sampleRate": True}, "sampleRate"),
    ({"target": "+15551234567", "dtmf": "yes"}, "dtmf"),
    ({"target": "+15551234567", "operationContext": ""}, "operationContext"),
    ({"target": "+15551234567", "operationContext": "x" * 513}, "operationContext"),
    ({"target": "+15551234567", "audiochannel": "mixed"}, "audiochannel"),
])
def test_bad_input_is_a_400_naming_the_field(host: HostUnderTest, body: dict[str, Any], field: str) -> None:
    with host.client() as http:
        resp = http.post("/calls", json=body)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["field"] == field and err["code"] == "InvalidRequest" and field in err["message"]
    assert host.acs.requests == []


@pytest.mark.parametrize(("raw", "field"), [(b"", "body"), (b"{not json", "body"), (b"[1,2]", "body"),
                                             (b'"text"', "body")])
def test_body_that_is_not_a_json_object_is_a_400(host: HostUnderTest, raw: bytes, field: str) -> None:
    with host.client() as http:
        resp = http.post("/calls", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["field"] == field


def test_phone_target_without_any_caller_id_is_a_400(host: HostUnderTest) -> None:
    with_settings(host, source_caller_id=None)
    try:
        with host.client() as http:
            resp = http.post("/calls", json={"target": "+15551234567"})
        assert resp.status_code == 400 and resp.json()["error"]["field"] == "sourceCallerId"
    finally:
        with_settings(host, source_caller_id="+15550000000")


def test_allow_list_limits_who_can_be_called(host: HostUnderTest) -> None:
    with_settings(host, allowed_targets=("+1555", "8:acs:2b1f7c1e-5a3d-4c7e-9d61-0c9f3a7e8b10_1"))
    try:
        with host.client() as http:
            refused = http.post("/calls", json={"target": "+4420123456789"})
            refused_user = http.post("/calls", json={"target": "8:acs:2b1f7c1e-5a3d-4c7e-9d61-0c9f3a7e8b10_2"})
            allowed = http.post("/calls", json={"target": "+15559876543"})
            allowed_user = http.post("/calls", json={"target": "8:acs:2b1f7c1e-5a3d-4c7e-9d61-0c9f3a7e8b10_1"})
        for resp in (refused, refused_user):
            assert resp.status_code == 403
            assert resp.json()["error"] == {"code": "TargetNotAllowed", "field": "target",
                                            "message": "target: not in the allowed list (ALLOWED_TARGETS)"}
        assert allowed.status_code == 201 and allowed_user.status_code == 201
        assert len(host.acs.requests) == 2
    finally:
        with_settings(host, allowed_targets=())


def test_acs_error_is_a_502_with_acs_code_and_message_and_no_trace(host: HostUnderTest) -> None:
    host.acs.fail["create"] = (400, "8522", "Source caller id is not a number of this resource.")
    with host.client() as http:
        resp = http.post("/calls", json={"target": "+15551234567"})
    assert resp.status_code == 502
    err = resp.json()["error"]
    assert err["code"] == "AcsError" and err["acsStatus"] == 400 and err["acsCode"] == "8522"
    assert err["acsMessage"] == "Source caller id is not a number of this resource."
    assert "Traceback" not in resp.text and "File \"" not in resp.text


def test_acs_unreachable_is_a_502(host: HostUnderTest) -> None:
    from function_app.acs import build_client

    dead = replace(host.runtime.settings, acs_endpoint="http://127.0.0.1:9")
    saved = host.runtime.acs
    host.runtime.acs = build_client(dead)
    try:
        with host.client() as http:
            resp = http.post("/calls", json={"target": "+15551234567"})
    finally:
        host.runtime.acs = saved
    assert resp.status_code == 502 and resp.json()["error"]["code"] == "AcsUnreachable"


def test_streaming_start_stop_and_hang_up(host: HostUnderTest) -> None:
    call = "4c1f5600-a9c6-4343-8979-b638a98de98f"
    with host.client() as http:
        started = http.post(f"/calls/{call}/streaming/start", json={"operationContext": "start"})
        stopped = http.post(f"/calls/{call}/streaming/stop")
        hung = http.delete(f"/calls/{call}")
    assert started.status_code == 202 and started.json() == {"callConnectionId": call, "streaming": "starting"}
    assert stopped.status_code == 202 and stopped.json()["streaming"] == "stopping"
    assert hung.status_code == 204 and hung.content == b""
    start, stop, term = host.acs.requests
    assert (start.method, start.path) == ("POST", f"/calling/callConnections/{call}:startMediaStreaming"
                                                  "?api-version=2026-03-12")
    assert start.json() == {"operationContext": "start"}
    assert stop.path.startswith(f"/calling/callConnections/{call}:stopMediaStreaming") and stop.json() == {}
    assert (term.method, term.path.split("?")[0]) == ("POST", f"/calling/callConnections/{call}:terminate")
    assert term.body == b"" and all(r.hmac_ok for r in host.acs.requests)


def test_actions_on_an_unknown_call(host: HostUnderTest) -> None:
    host.acs.fail["terminate"] = (404, "8522", "Call not found.")
    host.acs.fail["startMediaStreaming"] = (400, "8581", "Media streaming is not configured.")
    with host.client() as http:
        gone = http.delete("/calls/4c1f5600-0000-0000-0000-000000000000")
        refused = http.post("/calls/4c1f5600-0000-0000-0000-000000000000/streaming/start")
    assert gone.status_code == 404 and gone.json()["error"]["acsCode"] == "8522"
    assert refused.status_code == 502 and refused.json()["error"]["acsCode"] == "8581"


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("DELETE", "/calls/bad..id", None, "callConnectionId"),
    ("POST", "/calls/-leading-dash/streaming/start", None, "callConnectionId"),
    ("POST", "/calls/abc/streaming/stop", {"operationContext": 5}, "operationContext"),
    ("POST", "/calls/abc/streaming/stop", {"context": "x"}, "context"),
    ("POST", "/calls/abc/streaming/start", [1], "body"),
])
def test_action_bad_input(host: HostUnderTest, method: str, path: str, body: Any, field: str) -> None:
    with host.client() as http:
        resp = http.request(method, path, content=orjson.dumps(body) if body is not None else None)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["field"] == field
    assert host.acs.requests == []


USER = "8:acs:2b1f7c1e-5a3d-4c7e-9d61-0c9f3a7e8b10_00000020-aaaa-bbbb"


@pytest.mark.parametrize(("body", "source"), [
    ({"target": "+15551234567"}, "+15550000000"),  # a phone target gets the default caller id
    ({"target": "4:+15551234567"}, "+15550000000"),
    ({"target": "+15551234567", "sourceCallerId": "+15559990000"}, "+15559990000"),
    ({"target": USER}, None),  # an ACS user is called without one, unless the request names one
    ({"target": USER, "sourceCallerId": "+15559990000"}, "+15559990000"),
])
def test_validation_resolves_the_request(body: dict[str, Any], source: str | None) -> None:
    from function_app.errors import ApiError
    from function_app.settings import Settings
    from function_app.validation import parse_create_call

    settings = Settings(acs_endpoint="https://acs.example", streamer_wss_url="wss://rec.example/ws",
                        callback_url="https://func.example/api/callbacks", source_caller_id="+15550000000",
                        default_audio_channel="unmixed", default_sample_rate=24000)
    call = parse_create_call(body, settings)
    assert call.source_caller_id == source and call.target == body["target"].removeprefix("4:")
    assert (call.audio_channel, call.sample_rate, call.dtmf, call.operation_context) == ("unmixed", 24000, False, None)
    with pytest.raises(ApiError) as refused:
        parse_create_call(body, replace(settings, allowed_targets=("+44",)))
    assert refused.value.status == 403 and refused.value.field == "target"
