"""devstack.eventgrid_topic against the real azure-eventgrid SDK over http://127.0.0.1: batches published with an
AzureKeyCredential are stored (memory and JSONL) and listed, wrong keys raise in the SDK, the fault switch shows the
SDK's retries, and what is not CloudEvents 1.0 is refused with a message that says why."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.credentials import AccessToken, AzureKeyCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError
from azure.core.messaging import CloudEvent
from azure.eventgrid import EventGridPublisherClient

from devstack.eventgrid_topic import EventGridTopic
from devstack.ports import free_port
from devstack.processes import ChildProcess

READY = "AcsCallRecorder.RecordingReady"


@pytest.fixture
def topic(tmp_path: Path) -> Iterator[EventGridTopic]:
    with EventGridTopic(tmp_path / "topic") as t:
        yield t


def listed(topic: EventGridTopic, key: str | None = None) -> httpx.Response:
    return httpx.get(f"{topic.url}/events", headers={"aeg-sas-key": key or topic.key})


def post(topic: EventGridTopic, body: Any, content_type: str = "application/cloudevents-batch+json; charset=utf-8",
         *, key: str | None = None, api_version: str | None = "2018-01-01") -> httpx.Response:
    params = {"api-version": api_version} if api_version else {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(topic.endpoint, params=params, content=content,
                      headers={"content-type": content_type, "aeg-sas-key": key or topic.key})


def event(**overrides: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": "e1", "source": "/recorder", "type": READY, **overrides}


def test_the_sdk_publishes_a_batch_and_get_events_lists_it(topic: EventGridTopic) -> None:
    sent = [CloudEvent(source="/acs-call-recorder", type=READY, subject="recordings/call-1",
                       data={"callConnectionId": "call-1", "complete": True}),
            CloudEvent(source="/acs-call-recorder", type="Other", data=b"\x00\x01binary")]
    topic.client().send(sent)
    resp = listed(topic)
    assert resp.status_code == 200
    body = resp.json()
    assert [e["id"] for e in body["events"]] == [e.id for e in sent]
    first, second = body["events"]
    assert first["specversion"] == "1.0" and first["type"] == READY and first["subject"] == "recordings/call-1"
    assert first["data"] == {"callConnectionId": "call-1", "complete": True}
    assert second["data_base64"] == "AAFiaW5hcnk=" and "data" not in second
    assert body["publishes"] == {"accepted": 1, "failed": 0, "rejected": 0}
    lines = [json.loads(line) for line in topic.events_file.read_text().splitlines()]
    assert lines == body["events"]
    assert topic.events(READY) == [first]


def test_the_async_sdk_publishes_too(topic: EventGridTopic) -> None:
    from azure.eventgrid.aio import EventGridPublisherClient as AsyncPublisher

    async def send() -> None:
        async with AsyncPublisher(topic.endpoint, AzureKeyCredential(topic.key)) as client:
            await client.send([CloudEvent(source="/s", type=READY, data={"n": 1})])

    asyncio.run(send())
    assert [e["data"] for e in topic.wait_for_events(1, type=READY, timeout=5)] == [{"n": 1}]


def test_a_wrong_or_missing_key_is_refused(topic: EventGridTopic) -> None:
    wrong = EventGridPublisherClient(topic.endpoint, AzureKeyCredential("0" * 64))
    with pytest.raises(ClientAuthenticationError) as raised:
        wrong.send([CloudEvent(source="/s", type=READY)])
    assert raised.value.status_code == 401
    no_key = httpx.post(topic.endpoint, params={"api-version": "2018-01-01"}, json=[event()],
                        headers={"content-type": "application/cloudevents-batch+json"})
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "Unauthorized"
    assert listed(topic, key="wrong").status_code == 401
    assert httpx.get(f"{topic.url}/events").status_code == 401
    assert httpx.post(f"{topic.url}/faults", json={"fail": 1}).status_code == 401
    assert topic.events() == []


def test_a_token_credential_is_refused_by_the_sdk_over_http(topic: EventGridTopic) -> None:
    """Why the local stack uses a key: azure-core will not send a bearer token to an http:// endpoint."""

    class Token:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            return AccessToken("token", int(time.time()) + 3600)

    with pytest.raises(ServiceRequestError, match="non-TLS"):
        EventGridPublisherClient(topic.endpoint, Token()).send([CloudEvent(source="/s", type=READY)])


def test_faults_answer_503_and_the_sdk_retries_until_it_lands(topic: EventGridTopic) -> None:
    assert httpx.post(f"{topic.url}/faults", json={"fail": 2}, headers={"aeg-sas-key": topic.key}).json() == {
        "fail": 2, "status": 503}
    topic.client().send([CloudEvent(source="/s", type=READY, data={"try": "retried"})])
    body = listed(topic).json()
    assert body["publishes"] == {"accepted": 1, "failed": 2, "rejected": 0}
    assert [e["data"] for e in body["events"]] == [{"try": "retried"}]  # stored once


def test_faults_beyond_the_retries_reach_the_caller(topic: EventGridTopic) -> None:
    topic.fail_next(10)
    with pytest.raises(HttpResponseError) as raised:
        topic.client().send([CloudEvent(source="/s", type=READY)], retry_total=1, retry_backoff_factor=0.01)
    assert raised.value.status_code == 503
    assert listed(topic).json()["publishes"]["failed"] == 2 and topic.events() == []


@pytest.mark.parametrize(("body", "content_type", "message"), [
    ([event(specversion="0.3")], None, "'specversion' must be \"1.0\""),
    ([event(id="")], None, "'id' must be a non-empty string"),
    ([{k: v for k, v in event().items() if k != "source"}], None, "'source'"),
    ([event(), event(type=None)], None, "event 1: required attribute 'type'"),
    ([event(data={"a": 1}, data_base64="AAE=")], None, "mutually exclusive"),
    ([event(time="yesterday")], None, "RFC 3339"),
    ([event(time="2026-02-30T00:00:00Z")], None, "RFC 3339"),
    ([event(Subject="x")], None, "lowercase"),
    ([], None, "non-empty JSON array"),
    (event(), None, "non-empty JSON array"),
    (b"[{", None, "not valid JSON"),
    ([event()], "application/json", "CloudEvents 1.0"),
    ([event()], "application/cloudevents-batch+json; charset=latin-1", "charset"),
])
def test_what_is_not_cloudevents_1_0_is_refused(topic: EventGridTopic, body: Any, content_type: str | None,
                                                message: str) -> None:
    resp = post(topic, body, content_type) if content_type else post(topic, body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "BadRequest" and message in resp.json()["error"]["message"]
    assert topic.events() == [] and listed(topic).json()["publishes"]["rejected"] == 1


def test_one_structured_event_api_version_and_size(topic: EventGridTopic) -> None:
    single = post(topic, event(time="2026-01-02T03:04:05.1234567Z"), "application/cloudevents+json")
    assert single.status_code == 200 and single.content == b""
    assert topic.events()[0]["time"] == "2026-01-02T03:04:05.1234567Z"
    missing = post(topic, [event(id="e2")], api_version=None)
    assert missing.status_code == 400 and "api-version" in missing.json()["error"]["message"]
    huge = post(topic, [event(id="e3", data="x" * (1024 * 1024))])
    assert huge.status_code == 413
    assert [e["id"] for e in topic.events()] == ["e1"]


def test_fault_switch_validation(topic: EventGridTopic) -> None:
    for bad in ({"fail": -1}, {"fail": "2"}, {"fail": 1, "status": 404}, [1]):
        assert httpx.post(f"{topic.url}/faults", json=bad, headers={"aeg-sas-key": topic.key}).status_code == 400
    assert httpx.post(f"{topic.url}/faults", json={"fail": 1, "status": 429},
                      headers={"aeg-sas-key": topic.key}).status_code == 200
    assert post(topic, [event()]).status_code == 429
    assert post(topic, [event()]).status_code == 200


def test_runs_as_a_module(tmp_path: Path) -> None:
    port, key = free_port(), "f" * 64
    proc = ChildProcess("devstack.eventgrid_topic", {}, args=[
        "--port", str(port), f"--key={key}", "--workdir", str(tmp_path / "eg")], log_path=tmp_path / "topic.log")
    proc.start(f"http://127.0.0.1:{port}/healthz", timeout=30)
    try:
        client = EventGridPublisherClient(f"http://127.0.0.1:{port}/api/events", AzureKeyCredential(key))
        client.send([CloudEvent(source="/s", type=READY)])
        assert len(httpx.get(f"http://127.0.0.1:{port}/events", headers={"aeg-sas-key": key}).json()["events"]) == 1
        assert (tmp_path / "eg" / "events.jsonl").read_text().count("\n") == 1
    finally:
        assert proc.terminate(30) in (0, -15)  # uvicorn re-raises SIGTERM after its graceful shutdown
