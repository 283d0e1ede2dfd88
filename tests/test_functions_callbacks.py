"""POST /api/callbacks: ACS's RS256 JWT verified against a real JWKS endpoint (accepted and refused), CloudEvent
arrays folded into the call state in Azurite, at least once and out of order, from concurrent deliveries."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from common.acs_jwt import AcsJwtVerifier, AuthConfig
from devstack.acs_tokens import TokenIssuer
from devstack.azurite import Azurite
from tests.conftest import ACS_RESOURCE_ID, TEST_ISSUER
from tests.functions_support import HostUnderTest, hosted, make_settings, new_container, store_for


@pytest.fixture(scope="module")
def host(azurite: Azurite, jwks_url: str) -> Iterator[HostUnderTest]:
    container = new_container()
    store_for(azurite, container)
    settings = make_settings(azurite, container, callback_auth=True, acs_resource_id=ACS_RESOURCE_ID,
                             jwks_url=jwks_url, jwt_issuer=TEST_ISSUER)
    verifier = AcsJwtVerifier(AuthConfig(issuer=TEST_ISSUER, audience=ACS_RESOURCE_ID, jwks_url=jwks_url),
                              min_refetch_seconds=0)
    with hosted(settings, verifier) as host:
        yield host


def event(kind: str, call_id: str, at: str | None = None, event_id: str | None = None, **data: Any) -> dict:
    return {"id": event_id or str(uuid.uuid4()), "source": f"calling/callConnections/{call_id}",
            "type": f"Microsoft.Communication.{kind}", "specversion": "1.0", "datacontenttype": "application/json",
            "subject": f"calling/callConnections/{call_id}", "time": at or "2026-01-01T00:00:01.0000000+00:00",
            "data": {"callConnectionId": call_id, "serverCallId": "srv", "correlationId": "corr",
                     "version": "2026-03-12", "publicEventType": f"Microsoft.Communication.{kind}", **data}}


def streaming(status: str, details: str, code: int = 200, sub: int = 0, message: str = "ok") -> dict:
    return {"resultInformation": {"code": code, "subCode": sub, "message": message},
            "mediaStreamingUpdate": {"contentType": "Audio", "mediaStreamingStatus": status,
                                     "mediaStreamingStatusDetails": details}}


def post(host: HostUnderTest, body: Any, token: str | None) -> Any:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    with host.client(key=None) as http:  # anonymous: ACS has no function key
        return http.post("/callbacks", json=body, headers=headers)


def test_lifecycle_is_stored_where_any_instance_can_read_it(host: HostUnderTest, token_issuer: TokenIssuer) -> None:
    call = str(uuid.uuid4())
    sequence = [
        event("CallConnected", call, "2026-01-01T00:00:01.0000000+00:00"),
        event("MediaStreamingStarted", call, "2026-01-01T00:00:02.0000000+00:00",
              **streaming("mediaStreamingStarted", "subscriptionStarted")),
        event("MediaStreamingStopped", call, "2026-01-01T00:00:20.0000000+00:00",
              **streaming("mediaStreamingStopped", "subscriptionStopped")),
        event("CallDisconnected", call, "2026-01-01T00:00:21.0000000+00:00"),
    ]
    for e in sequence:
        resp = post(host, [e], token_issuer.token())
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"received": 1, "applied": 1}
    state = host.runtime.store.read_state(call)
    assert state["status"] == "disconnected" and state["streaming"] == "stopped"
    assert state["connectedAt"] == "2026-01-01T00:00:01.0000000+00:00"
    assert state["streamingStartedAt"] == "2026-01-01T00:00:02.0000000+00:00"
    assert state["streamingStoppedAt"] == "2026-01-01T00:00:20.0000000+00:00"
    assert state["disconnectedAt"] == "2026-01-01T00:00:21.0000000+00:00"
    assert [e["type"] for e in state["events"]] == ["CallConnected", "MediaStreamingStarted",
                                                     "MediaStreamingStopped", "CallDisconnected"]
    assert state["correlationId"] == "corr" and state["failures"] == []


@pytest.mark.parametrize("case", ["wrong key", "unknown kid", "wrong audience", "wrong issuer", "expired",
                                  "missing", "not bearer", "garbage"])
def test_refused_without_a_valid_acs_token(host: HostUnderTest, token_issuer: TokenIssuer, case: str) -> None:
    call = str(uuid.uuid4())
    impostor = TokenIssuer(issuer=TEST_ISSUER, audience=ACS_RESOURCE_ID, kid=token_issuer.kid)
    token = {
        "wrong key": impostor.token(),
        "unknown kid": TokenIssuer(issuer=TEST_ISSUER, audience=ACS_RESOURCE_ID).token(),
        "wrong audience": token_issuer.token(audience="another-resource"),
        "wrong issuer": token_issuer.token(issuer="https://evil.example"),
        "expired": token_issuer.token(now=time.time() - 3600, lifetime=300),
        "missing": None,
        "not bearer": None,
        "garbage": "not.a.jwt",
    }[case]
    headers = {"authorization": "Basic dXNlcjpwYXNz"} if case == "not bearer" else {}
    with host.client(key=None) as http:
        if token:
            headers["authorization"] = f"Bearer {token}"
        resp = http.post("/callbacks", json=[event("CallConnected", call)], headers=headers)
    assert resp.status_code == 401
    assert resp.json() == {"error": {"code": "Unauthorized", "message": "missing or invalid ACS token"}}
    assert host.runtime.store.read_state(call) is None


def test_function_key_is_not_what_authenticates_callbacks(host: HostUnderTest) -> None:
    with host.client() as http:  # a function key, but no ACS token
        resp = http.post("/callbacks", json=[event("CallConnected", str(uuid.uuid4()))])
    assert resp.status_code == 401


@pytest.mark.parametrize(("body", "field"), [
    ({"type": "Microsoft.Communication.CallConnected"}, "body"),
    ([], "body"),
    ([{"data": {}}], "[0].type"),
    (["text"], "[0].type"),
    ([{"type": "Microsoft.Communication.CallConnected", "data": "x"}], "[0].data"),
    ([{"type": "Microsoft.Communication.CallConnected", "data": {}}], "[0].data.callConnectionId"),
    ([{"type": "Microsoft.Communication.CallConnected", "data": {"callConnectionId": "../etc"}}],
     "[0].data.callConnectionId"),
])
def test_authenticated_but_malformed_is_a_400(host: HostUnderTest, token_issuer: TokenIssuer, body: Any,
                                              field: str) -> None:
    resp = post(host, body, token_issuer.token())
    assert resp.status_code == 400 and resp.json()["error"]["field"] == field


def test_not_json_is_a_400(host: HostUnderTest, token_issuer: TokenIssuer) -> None:
    with host.client(key=None) as http:
        resp = http.post("/callbacks", content=b"{oops", headers={"authorization": f"Bearer {token_issuer.token()}"})
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "body"


def test_duplicates_unknown_types_and_out_of_order(host: HostUnderTest, token_issuer: TokenIssuer) -> None:
    call = str(uuid.uuid4())
    stopped = event("MediaStreamingStopped", call, "2026-01-01T00:00:30.0000000+00:00",
                    **streaming("mediaStreamingStopped", "subscriptionStopped"))
    started = event("MediaStreamingStarted", call, "2026-01-01T00:00:02.0000000+00:00",
                    **streaming("mediaStreamingStarted", "subscriptionStarted"))
    connected = event("CallConnected", call, "2026-01-01T00:00:01.0000000+00:00")
    play = event("PlayCompleted", call)
    first = post(host, [stopped, play], token_issuer.token())
    again = post(host, [stopped], token_issuer.token())
    late = post(host, [started, connected, connected], token_issuer.token())
    assert first.json() == {"received": 2, "applied": 1}
    assert again.status_code == 200 and again.json()["applied"] == 0
    assert late.json()["applied"] == 2
    state = host.runtime.store.read_state(call)
    assert state["streaming"] == "stopped" and state["status"] == "connected"
    assert len(state["events"]) == 3


def test_streaming_failure_8603_is_stored_and_explained(host: HostUnderTest, token_issuer: TokenIssuer,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    call = str(uuid.uuid4())
    failed = event("MediaStreamingFailed", call, **streaming(
        "mediaStreamingFailed", "streamConnectionUnsuccessful", 500, 8603,
        "Action failed, not able to establish websocket connection."))
    with caplog.at_level(logging.INFO):
        assert post(host, [failed], token_issuer.token()).status_code == 200
    state = host.runtime.store.read_state(call)
    assert state["streaming"] == "failed"
    assert state["failures"] == [{"event": "MediaStreamingFailed", "code": 500, "subCode": 8603,
                                  "message": "Action failed, not able to establish websocket connection.",
                                  "details": "streamConnectionUnsuccessful", "at": failed["time"]}]
    (record,) = [r for r in caplog.records if "media streaming failed" in r.getMessage()]
    assert record.levelno == logging.ERROR and "could not reach the streamer" in record.getMessage()
    assert "500/8603" in record.getMessage() and record.callConnectionId == call


@pytest.mark.parametrize("kind", ["CreateCallFailed", "AnswerFailed"])
def test_call_failures(host: HostUnderTest, token_issuer: TokenIssuer, kind: str) -> None:
    call = str(uuid.uuid4())
    info = {"resultInformation": {"code": 400, "subCode": 8519, "message": "Failed to establish the call."}}
    assert post(host, [event(kind, call, **info)], token_issuer.token()).status_code == 200
    state = host.runtime.store.read_state(call)
    assert state["status"] == "failed"
    assert state["failures"][0]["event"] == kind and state["failures"][0]["subCode"] == 8519
    # a late CallConnected cannot resurrect a failed call
    post(host, [event("CallConnected", call, "2026-01-01T00:00:09.0000000+00:00")], token_issuer.token())
    assert host.runtime.store.read_state(call)["status"] == "failed"


def test_a_call_that_connected_cannot_fail_to_be_created(host: HostUnderTest, token_issuer: TokenIssuer) -> None:
    """A replayed or forged CreateCallFailed (any ACS token signs any call's callbacks) after CallConnected is kept
    as a rejected event and changes nothing."""
    call = str(uuid.uuid4())
    post(host, [event("CallConnected", call, "2026-01-01T00:00:01.0000000+00:00")], token_issuer.token())
    forged = event("CreateCallFailed", call, "2026-01-01T00:00:05.0000000+00:00",
                   resultInformation={"code": 400, "subCode": 8519, "message": "forged"})
    assert post(host, [forged], token_issuer.token()).status_code == 200
    state = host.runtime.store.read_state(call)
    assert state["status"] == "connected" and state["failures"] == [] and state["disconnectedAt"] is None
    assert [(r["type"], r["reason"]) for r in state["rejectedEvents"]] == [
        ("CreateCallFailed", "the call had already connected")]


def test_concurrent_deliveries_lose_nothing(host: HostUnderTest, token_issuer: TokenIssuer) -> None:
    """Several instances writing one call's state at once: the ETag guard makes every event land."""
    call = str(uuid.uuid4())
    kinds = ["CallConnected", "MediaStreamingStarted", "PlayCompleted", "MediaStreamingStopped",
             "CallDisconnected", "MediaStreamingStarted", "MediaStreamingStopped", "CallConnected"]
    events = [event(k, call, f"2026-01-01T00:00:{i:02d}.0000000+00:00") for i, k in enumerate(kinds)]
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda e: post(host, [e], token_issuer.token()).status_code, events))
    assert codes == [200] * len(events)
    state = host.runtime.store.read_state(call)
    assert len(state["events"]) == 7  # all but PlayCompleted
    assert state["status"] == "disconnected" and state["streaming"] == "stopped"


def test_callback_auth_disabled_is_local_only_and_loud(azurite: Azurite, caplog: pytest.LogCaptureFixture) -> None:
    container = new_container()
    store_for(azurite, container)
    with caplog.at_level(logging.WARNING), hosted(make_settings(azurite, container, callback_auth=False)) as host:
        call = str(uuid.uuid4())
        assert post(host, [event("CallConnected", call)], None).status_code == 200
        assert host.runtime.store.read_state(call)["status"] == "connected"
    assert any("CALLBACK_AUTH=disabled" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
