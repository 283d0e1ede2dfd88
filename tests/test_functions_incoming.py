"""The IncomingCall Event Grid function, driven the way Azure drives it: the ACS simulator rings the app through
the local host's Event Grid webhook, the real SDK answers against the simulator's REST (HMAC-checked there), and
the simulator's JWT-signed callbacks come back to /api/callbacks."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import orjson
import pytest

from common.acs_jwt import AcsJwtVerifier, AuthConfig
from devstack.azurite import Azurite
from devstack.ports import free_port
from devstack.serve import ServerThread
from devstack.simulator import CallScript, SimulatorConfig, SimulatorServer
from tests.functions_support import AcsCapture, HostUnderTest, hosted, make_settings, new_container, store_for

OUR_NUMBER = "+15559870000"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    script = CallScript(duration_s=0.5, speakers=1, connect_delay_s=0.05)
    with SimulatorServer(SimulatorConfig(pace=0, default_script=script, ws_open_timeout_s=1.0)) as server:
        yield server


@pytest.fixture(scope="module")
def host(azurite: Azurite, sim: SimulatorServer) -> Iterator[HostUnderTest]:
    container = new_container()
    store_for(azurite, container)
    port = free_port()
    settings = make_settings(
        azurite, container, acs_endpoint=sim.url, acs_access_key=sim.access_key,
        callback_url=f"http://127.0.0.1:{port}/api/callbacks",
        streamer_wss_url=f"ws://127.0.0.1:{free_port()}/ws",  # nothing listens: ACS reports 8603
        callback_auth=True, acs_resource_id=sim.audience, jwks_url=sim.jwks_url, jwt_issuer=sim.issuer)
    verifier = AcsJwtVerifier(AuthConfig(issuer=sim.issuer, audience=sim.audience, jwks_url=sim.jwks_url))
    with hosted(settings, verifier, port=port) as host:
        yield host


@pytest.fixture(autouse=True)
def current(host: HostUnderTest) -> Iterator[None]:
    saved = host.runtime.settings
    yield
    host.runtime.settings = saved


def webhook(host: HostUnderTest, name: str = "IncomingCall") -> str:
    return f"{host.url}/runtime/webhooks/eventgrid?functionName={name}"


def answers(sim: SimulatorServer, context: str) -> list[dict[str, Any]]:
    return [r for r in sim.requests() if r["pathAndQuery"].startswith("/calling/callConnections:answer")
            and orjson.loads(r["body"])["incomingCallContext"] == context]


def wait_state(host: HostUnderTest, call_id: str, ok: Any, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = host.runtime.store.read_state(call_id)
        if state and ok(state):
            return state
        assert time.monotonic() < deadline, f"call state of {call_id}: {state}"
        time.sleep(0.05)


def test_incoming_call_is_answered_with_streaming(host: HostUnderTest, sim: SimulatorServer) -> None:
    rang = sim.place_incoming_call(webhook(host), from_="+15551230000", to=OUR_NUMBER)
    assert rang["deliveryStatus"] == 202
    call_id = sim.wait_for_answer(rang["incomingCallContext"])
    (answer,) = answers(sim, rang["incomingCallContext"])
    assert answer["status"] == 200 and answer["authError"] is None  # the simulator verified our HMAC
    assert answer["pathAndQuery"] == "/calling/callConnections:answer?api-version=2026-03-12"
    assert orjson.loads(answer["body"]) == {
        "incomingCallContext": rang["incomingCallContext"],
        "callbackUri": f"{host.url}/api/callbacks",
        "mediaStreamingOptions": {"transportType": "websocket", "audioChannelType": "mixed",
                                  "transportUrl": f"{host.runtime.settings.streamer_wss_url}/mixed",
                                  "contentType": "audio", "startMediaStreaming": True,
                                  "enableBidirectional": False, "audioFormat": "pcm16KMono"},
    }
    # the simulator's JWT-signed callbacks reach /api/callbacks and are verified and stored
    state = wait_state(host, call_id, lambda s: s["streaming"] == "failed" and s["status"] == "disconnected")
    assert state["direction"] == "inbound" and state["source"] == "4:+15551230000"
    assert state["target"] == f"4:{OUR_NUMBER}" and state["connectedAt"]
    assert state["failures"][0]["subCode"] == 8603  # nothing listened at STREAMER_WSS_URL
    record = sim.wait_until_ended(call_id)
    assert {c["status"] for c in record["callbacks"]} == {200}


def test_duplicate_delivery_is_harmless(host: HostUnderTest, sim: SimulatorServer,
                                        caplog: pytest.LogCaptureFixture) -> None:
    rang = sim.place_incoming_call(webhook(host), to=OUR_NUMBER)
    call_id = sim.wait_for_answer(rang["incomingCallContext"])
    with caplog.at_level(logging.WARNING):
        again = httpx.post(webhook(host), json=[rang["event"]], headers={"aeg-event-type": "Notification"})
    assert again.status_code == 202  # handled: Event Grid must not retry
    first, second = answers(sim, rang["incomingCallContext"])
    assert (first["status"], second["status"]) == (200, 400)
    assert any("refused to answer" in r.getMessage() for r in caplog.records)
    assert host.runtime.store.read_state(call_id)["direction"] == "inbound"


def test_other_event_types_are_ignored(host: HostUnderTest, sim: SimulatorServer) -> None:
    before = len(sim.requests())
    other = {"id": "1", "topic": "/t", "subject": "s", "eventType": "Microsoft.Communication.CallStarted",
             "data": {"incomingCallContext": "x"}, "dataVersion": "1.0", "metadataVersion": "1",
             "eventTime": "2026-01-01T00:00:00.1234567Z"}
    resp = httpx.post(webhook(host), json=[other, other], headers={"aeg-event-type": "Notification"})
    assert resp.status_code == 202 and len(sim.requests()) == before


def test_only_configured_recipients_are_answered(host: HostUnderTest, sim: SimulatorServer) -> None:
    host.runtime.settings = replace(host.runtime.settings, answer_recipients=(OUR_NUMBER, "8:acs:res_frontdesk"))
    other = sim.place_incoming_call(webhook(host), to="+15550001111")
    ours = sim.place_incoming_call(webhook(host), to=OUR_NUMBER)
    user = sim.place_incoming_call(webhook(host), to="8:acs:res_frontdesk")
    assert answers(sim, other["incomingCallContext"]) == []
    assert sim.wait_for_answer(ours["incomingCallContext"])
    assert sim.wait_for_answer(user["incomingCallContext"])


def test_subscription_validation_handshake(host: HostUnderTest) -> None:
    validation = [{"id": "2d1781af", "topic": "/subscriptions/x", "subject": "",
                   "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6", "validationUrl": "https://x"},
                   "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                   "eventTime": "2018-01-25T22:12:19.4556811Z", "metadataVersion": "1", "dataVersion": "1"}]
    resp = httpx.post(webhook(host), json=validation, headers={"aeg-event-type": "SubscriptionValidation"})
    assert resp.status_code == 200
    assert resp.json() == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}


def test_transient_acs_failure_makes_event_grid_retry(host: HostUnderTest, azurite: Azurite) -> None:
    capture = AcsCapture()
    capture.fail["answer"] = (503, "ServiceUnavailable", "try later")
    from function_app.acs import build_client

    with ServerThread(capture.app()) as acs:
        saved = host.runtime.acs
        host.runtime.acs = build_client(replace(host.runtime.settings, acs_endpoint=acs.url,
                                                acs_access_key=capture.key))
        try:
            event = {"id": "e1", "topic": "/t", "subject": "s", "eventType": "Microsoft.Communication.IncomingCall",
                     "data": {"incomingCallContext": "ctx", "to": {"kind": "phoneNumber", "rawId": f"4:{OUR_NUMBER}",
                                                                   "phoneNumber": {"value": OUR_NUMBER}}},
                     "dataVersion": "1.0", "metadataVersion": "1", "eventTime": "2026-01-01T00:00:00Z"}
            resp = httpx.post(webhook(host), json=[event], headers={"aeg-event-type": "Notification"})
        finally:
            host.runtime.acs = saved
    assert resp.status_code == 500
    assert len([r for r in capture.requests if ":answer" in r.path]) >= 1
