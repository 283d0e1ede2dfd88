"""devstack.functions_host's non-HTTP triggers over real Azurite queues and a real uvicorn: queue messages sent with
the azure-storage-queue SDK reach a throwaway app's functions, failures are retried after visibilityTimeout and land
in `<queue>-poison`, timers fire on their schedule without overlapping, and POST /admin/functions/{name} runs a
function once with the master key only."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import azure.functions as func
import httpx
import pytest
from azure.storage.queue import QueueClient, QueueServiceClient, TextBase64EncodePolicy

from devstack.azurite import Azurite
from devstack.functions_host import Keys, build_app
from devstack.host_triggers import queue_connection_string, queue_options
from devstack.serve import ServerThread

KEYS = Keys(frozenset({"fk"}), "master")
SEEN: list[dict[str, Any]] = []
_LOCK = threading.Lock()


def record(**fields: Any) -> None:
    with _LOCK:
        SEEN.append({"at": time.monotonic(), **fields})


def seen(function: str) -> list[dict[str, Any]]:
    with _LOCK:
        return [s for s in SEEN if s["function"] == function]


toy = func.FunctionApp()


@toy.function_name("Work")
@toy.queue_trigger(arg_name="msg", queue_name="%WORK_QUEUE%", connection="ToyStorage")
def work(msg: func.QueueMessage) -> None:
    record(function="Work", body=msg.get_body(), id=msg.id, dequeue_count=msg.dequeue_count,
           inserted=msg.insertion_time, expires=msg.expiration_time, pop_receipt=msg.pop_receipt,
           thread=threading.current_thread().name)


@toy.function_name("Flaky")
@toy.queue_trigger(arg_name="msg", queue_name="%FLAKY_QUEUE%", connection="ToyStorage")
async def flaky(msg: func.QueueMessage) -> None:
    record(function="Flaky", body=msg.get_body(), dequeue_count=msg.dequeue_count,
           on_loop=asyncio.get_running_loop() is not None)
    raise RuntimeError("this message always fails")


@toy.function_name("Slow")
@toy.queue_trigger(arg_name="msg", queue_name="%SLOW_QUEUE%", connection="ToyStorage")
def slow(msg: func.QueueMessage) -> None:
    record(function="Slow", phase="start")
    time.sleep(1.0)
    record(function="Slow", phase="end")


@toy.function_name("Sweep")
@toy.timer_trigger(arg_name="timer", schedule="0 */5 * * * *")
def sweep(timer: func.TimerRequest) -> None:
    record(function="Sweep", past_due=timer.past_due)


@toy.function_name("Ping")
@toy.route(route="ping", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def ping(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("pong")


ticker = func.FunctionApp()


@ticker.function_name("Tick")
@ticker.timer_trigger(arg_name="timer", schedule="* * * * * *", run_on_startup=True)
def tick(timer: func.TimerRequest) -> None:
    started = time.monotonic()
    time.sleep(1.3)  # longer than the schedule's period: the next run must wait for this one
    record(function="Tick", started=started, ended=time.monotonic(), past_due=timer.past_due)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(autouse=True)
def _clear_seen() -> None:
    with _LOCK:
        SEEN.clear()


@pytest.fixture
def queues() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    return {"WORK_QUEUE": f"work-{suffix}", "FLAKY_QUEUE": f"flaky-{suffix}", "SLOW_QUEUE": f"slow-{suffix}"}


@contextlib.contextmanager
def hosted(app: func.FunctionApp, azurite: Azurite, tmp_path: Path, queues: dict[str, str], *,
           timers: bool = False, extra_env: dict[str, str] | None = None, **options: Any) -> Iterator[Any]:
    host_json = tmp_path / "host.json"
    host_json.write_text(json.dumps({"version": "2.0", "extensions": {"queues": {
        "maxPollingInterval": "00:00:00.500", "visibilityTimeout": "00:00:01", "maxDequeueCount": 3, **options}}}))
    env = {"ToyStorage": azurite.connection_string, **queues, **(extra_env or {})}
    served = build_app(app, KEYS, prefix="api", host_json=host_json, env=env, timers=timers)
    with ServerThread(served) as server:
        yield SimpleNamespace(url=server.url, triggers=served.state.triggers)


def client(azurite: Azurite, queue: str, *, base64_encode: bool = True) -> QueueClient:
    policy = TextBase64EncodePolicy() if base64_encode else None
    return QueueClient.from_connection_string(azurite.connection_string, queue, message_encode_policy=policy)


def approximate_count(azurite: Azurite, queue: str) -> int:
    return int(client(azurite, queue).get_queue_properties().approximate_message_count)


def test_a_base64_message_reaches_the_function_decoded_and_is_deleted(
        azurite: Azurite, tmp_path: Path, queues: dict[str, str]) -> None:
    with hosted(toy, azurite, tmp_path, queues) as server:
        wait_for(lambda: "Work" in server.triggers.listening, 10, "the listener to create its queue")
        sent = client(azurite, queues["WORK_QUEUE"]).send_message("call-123 ready ✓")
        (got,) = wait_for(lambda: seen("Work"), 10, "the invocation")
        assert got["body"] == "call-123 ready ✓".encode()
        assert got["id"] == sent.id and got["dequeue_count"] == 1 and got["pop_receipt"]
        assert got["inserted"].tzinfo is not None and got["expires"] > got["inserted"]
        assert got["thread"].startswith("functions-worker")  # a sync function runs in the worker's pool
        wait_for(lambda: approximate_count(azurite, queues["WORK_QUEUE"]) == 0, 10, "the message to be deleted")
        time.sleep(1.5)  # past visibilityTimeout: a message that was only released would be back by now
        assert len(seen("Work")) == 1


def test_a_failing_message_is_retried_after_the_visibility_timeout_then_poisoned(
        azurite: Azurite, tmp_path: Path, queues: dict[str, str]) -> None:
    name = queues["FLAKY_QUEUE"]
    with hosted(toy, azurite, tmp_path, queues) as server:
        wait_for(lambda: "Flaky" in server.triggers.listening, 10, "the listener to create its queue")
        client(azurite, name).send_message("doomed")
        poison = client(azurite, f"{name}-poison", base64_encode=False)
        wait_for(lambda: _exists(poison) and poison.peek_messages(), 30, "the poison queue")
        attempts = seen("Flaky")
    assert [a["dequeue_count"] for a in attempts] == [1, 2, 3]  # maxDequeueCount 3, then no further attempt
    assert all(a["body"] == b"doomed" and a["on_loop"] for a in attempts)
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(attempts)]
    assert all(gap >= 0.95 for gap in gaps), gaps  # visibilityTimeout 00:00:01 between attempts
    (moved,) = poison.peek_messages(max_messages=32)
    assert moved.content == base64.b64encode(b"doomed").decode()  # the text as it was on the queue
    assert approximate_count(azurite, name) == 0


def test_a_message_that_is_not_base64_goes_to_poison_without_an_invocation(
        azurite: Azurite, tmp_path: Path, queues: dict[str, str]) -> None:
    name = queues["WORK_QUEUE"]
    with hosted(toy, azurite, tmp_path, queues) as server:
        wait_for(lambda: "Work" in server.triggers.listening, 10, "the listener")
        client(azurite, name, base64_encode=False).send_message("not base64!")
        poison = client(azurite, f"{name}-poison", base64_encode=False)
        wait_for(lambda: _exists(poison) and poison.peek_messages(), 10, "the poison queue")
        assert [m.content for m in poison.peek_messages()] == ["not base64!"]
        assert seen("Work") == []


def test_shutdown_lets_a_running_invocation_finish_and_deletes_its_message(
        azurite: Azurite, tmp_path: Path, queues: dict[str, str]) -> None:
    with hosted(toy, azurite, tmp_path, queues) as server:
        wait_for(lambda: "Slow" in server.triggers.listening, 10, "the listener")
        client(azurite, queues["SLOW_QUEUE"]).send_message("take your time")
        wait_for(lambda: seen("Slow"), 10, "the invocation to start")
    assert [s["phase"] for s in seen("Slow")] == ["start", "end"]  # the host stopped while it ran
    assert approximate_count(azurite, queues["SLOW_QUEUE"]) == 0


def test_message_encoding_none_passes_the_text(azurite: Azurite, tmp_path: Path, queues: dict[str, str]) -> None:
    with hosted(toy, azurite, tmp_path, queues, messageEncoding="none") as server:
        wait_for(lambda: "Work" in server.triggers.listening, 10, "the listener")
        client(azurite, queues["WORK_QUEUE"], base64_encode=False).send_message('{"call": "abc"}')
        (got,) = wait_for(lambda: seen("Work"), 10, "the invocation")
        assert got["body"] == b'{"call": "abc"}'


def test_an_idle_queue_is_polled_at_least_every_max_polling_interval(
        azurite: Azurite, tmp_path: Path, queues: dict[str, str]) -> None:
    with hosted(toy, azurite, tmp_path, queues) as server:
        wait_for(lambda: "Work" in server.triggers.listening, 10, "the listener")
        time.sleep(3)  # long idle: the back-off has reached maxPollingInterval (0.5 s)
        sent_at = time.monotonic()
        client(azurite, queues["WORK_QUEUE"]).send_message("late")
        (got,) = wait_for(lambda: seen("Work"), 10, "the invocation")
        assert got["at"] - sent_at < 0.5 + 0.5  # one capped interval, plus the invocation's own time


def test_a_missing_connection_setting_stops_only_that_listener(
        azurite: Azurite, tmp_path: Path, queues: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    host_json = tmp_path / "host.json"
    host_json.write_text("{}")
    with ServerThread(build_app(toy, KEYS, prefix="api", host_json=host_json, env=dict(queues),
                                timers=False)) as server:
        assert httpx.get(f"{server.url}/api/ping").text == "pong"
    assert "The listener for function 'Work' was unable to start" in caplog.text
    assert "'ToyStorage'" in caplog.text


def test_connection_resolution() -> None:
    assert queue_connection_string("S", {"S": "cs1"}) == "cs1"
    assert queue_connection_string("S", {"AzureWebJobsS": "cs2"}) == "cs2"
    assert queue_connection_string(None, {"AzureWebJobsStorage": "cs3"}) == "cs3"
    with pytest.raises(LookupError, match="identity-based"):
        queue_connection_string("S", {"S__queueServiceUri": "https://a.queue.core.windows.net"})
    with pytest.raises(LookupError, match="not set"):
        queue_connection_string("S", {})


def test_host_json_queue_options(tmp_path: Path) -> None:
    path = tmp_path / "host.json"
    path.write_text("{}")
    defaults = queue_options(path)
    assert (defaults.max_polling_interval, defaults.visibility_timeout, defaults.batch_size, defaults.threshold,
            defaults.max_dequeue_count, defaults.message_encoding) == (60.0, 0.0, 16, 8, 5, "base64")
    path.write_text(json.dumps({"extensions": {"queues": {"maxPollingInterval": "00:00:00.250", "batchSize": 4,
                                                          "newBatchThreshold": 1, "messageEncoding": "None"}}}))
    o = queue_options(path)
    assert (o.max_polling_interval, o.batch_size, o.threshold, o.message_encoding) == (0.25, 4, 1, "none")
    for bad in ({"maxPollingInterval": 2000}, {"maxPollingInterval": "00:00:00.050"}, {"batchSize": 33},
                {"messageEncoding": "utf8"}, {"maxDequeueCount": 0}):
        path.write_text(json.dumps({"extensions": {"queues": bad}}))
        with pytest.raises(ValueError):
            queue_options(path)


def test_the_repo_host_json_finalizes_within_the_promise() -> None:
    o = queue_options(Path(__file__).resolve().parent.parent / "host.json")
    assert (o.max_polling_interval, o.visibility_timeout, o.max_dequeue_count) == (2.0, 10.0, 5)


def test_timers_fire_on_schedule_without_overlapping(azurite: Azurite, tmp_path: Path,
                                                     queues: dict[str, str]) -> None:
    with hosted(ticker, azurite, tmp_path, queues, timers=True):
        runs = wait_for(lambda: seen("Tick") if len(seen("Tick")) >= 3 else None, 15, "three timer runs")
    assert all(b["started"] >= a["ended"] for a, b in itertools.pairwise(runs))  # never two at once
    assert not any(r["past_due"] for r in runs)


def test_disabled_timers_do_not_fire(azurite: Azurite, tmp_path: Path, queues: dict[str, str]) -> None:
    with hosted(ticker, azurite, tmp_path, queues, timers=False):
        time.sleep(2.5)  # runOnStartup and a schedule of every second: both suppressed
    assert seen("Tick") == []


def test_admin_endpoint_runs_non_http_functions_with_the_master_key_only(
        azurite: Azurite, tmp_path: Path, queues: dict[str, str]) -> None:
    with hosted(toy, azurite, tmp_path, queues) as server:
        url = f"{server.url}/admin/functions"
        body = {"input": "ignored for a timer"}
        for headers in ({}, {"x-functions-key": "fk"}, {"x-functions-key": "wrong"}):
            refused = httpx.post(f"{url}/Sweep", json=body, headers=headers)
            assert refused.status_code == 401 and refused.content == b""
        time.sleep(0.3)
        assert seen("Sweep") == []
        ok = httpx.post(f"{url}/Sweep", json=body, headers={"x-functions-key": "master"})
        assert ok.status_code == 202
        assert wait_for(lambda: seen("Sweep"), 5, "the timer run")[0]["past_due"] is False
        assert httpx.post(f"{url}/sweep", params={"code": "master"}, json={}).status_code == 202  # any case
        queued = httpx.post(f"{url}/Work", json={"input": "by hand"}, headers={"x-functions-key": "master"})
        assert queued.status_code == 202
        (work_run,) = wait_for(lambda: seen("Work"), 5, "the queue function run")
        assert work_run["body"] == b"by hand" and work_run["id"]
        assert httpx.post(f"{url}/Nope", json={}, headers={"x-functions-key": "master"}).status_code == 404
        assert httpx.post(f"{url}/Ping", json={}, headers={"x-functions-key": "master"}).status_code == 400
        assert httpx.post(f"{url}/Sweep", content=b"{", headers={"x-functions-key": "master"}).status_code == 400
        wait_for(lambda: len(seen("Sweep")) == 2, 5, "the second timer run")


def test_unsupported_triggers_and_bad_bindings_are_refused_at_start(tmp_path: Path) -> None:
    blob_app = func.FunctionApp()

    @blob_app.blob_trigger(arg_name="blob", path="c/{name}", connection="S")
    def on_blob(blob: func.InputStream) -> None: ...

    with pytest.raises(ValueError, match="blobTrigger"):
        build_app(blob_app, KEYS, prefix="api")

    bad_timer = func.FunctionApp()

    @bad_timer.timer_trigger(arg_name="timer", schedule="0 */5 * * *")
    def five_fields(timer: func.TimerRequest) -> None: ...

    with pytest.raises(ValueError, match="six fields"):
        build_app(bad_timer, KEYS, prefix="api")

    bad_queue = func.FunctionApp()

    @bad_queue.queue_trigger(arg_name="msg", queue_name="Bad_Name", connection="S")
    def bad_name(msg: func.QueueMessage) -> None: ...

    with pytest.raises(ValueError, match="queue name"):
        build_app(bad_queue, KEYS, prefix="api")
    with pytest.raises(ValueError, match="WORK_QUEUE"):
        build_app(toy, KEYS, prefix="api", env={})  # %WORK_QUEUE% unresolved


def test_queue_service_sdk_sync_and_aio_work_against_azurite(azurite: Azurite) -> None:
    from azure.storage.queue.aio import QueueServiceClient as AsyncQueueServiceClient

    name = f"sdk-{uuid.uuid4().hex[:10]}"
    service = QueueServiceClient.from_connection_string(azurite.connection_string)
    service.create_queue(name)
    service.get_queue_client(name).send_message("one")

    async def receive() -> list[str]:
        async with AsyncQueueServiceClient.from_connection_string(azurite.connection_string) as aio:
            queue = aio.get_queue_client(name)
            return [m.content async for m in queue.receive_messages(max_messages=5)]

    assert asyncio.run(receive()) == ["one"]
    assert name in [q.name for q in service.list_queues()]
    service.delete_queue(name)


def _exists(queue: QueueClient) -> bool:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        queue.get_queue_properties()
    except ResourceNotFoundError:
        return False
    return True
