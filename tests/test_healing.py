"""Self-healing media streaming (function_app.healing): the plan from the call state alone, then the callbacks and
the StreamingRestart queue trigger through the local host, with the real SDK against an ACS capture server and the
restart queue in Azurite. The whole loop (the simulator's stream drops, the recorder restarts it, the recording
shows the hole as healed) is in test_e2e.py."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import pytest
from azure.storage.queue import QueueClient, TextBase64DecodePolicy

from common import call_state as cs
from common import manifest as mf
from common.layout import STREAMING_RESTART_QUEUE
from common.recording import HealedBy
from devstack.azurite import Azurite
from devstack.serve import ServerThread
from function_app import healing
from function_app import state as state_model
from tests.functions_support import (
    MASTER_KEY,
    AcsCapture,
    HostUnderTest,
    hosted,
    make_settings,
    new_container,
    store_for,
)
from tests.test_functions_callbacks import event, streaming

T0 = "2026-01-01T00:00:0{}.0000000+00:00"


def _state(*events: dict[str, Any], requests: tuple[tuple[str, str, str], ...] = ()) -> cs.CallState:
    doc = state_model.new_state("c1")
    for e in events:
        state_model.apply_event(doc, e)
    for action, by, at in requests:
        state_model.record_streaming_request(doc, action, by=by)
        doc["streamingRequests"][-1]["at"] = at
    return msgspec.convert(doc, cs.CallState)


def _connected(call: str = "c1") -> list[dict[str, Any]]:
    return [event("CallConnected", call, T0.format(1)),
            event("MediaStreamingStarted", call, T0.format(2),
                  **streaming("mediaStreamingStarted", "subscriptionStarted"))]


def _failed(call: str = "c1", second: int = 5) -> dict[str, Any]:
    return event("MediaStreamingFailed", call, T0.format(second),
                 **streaming("mediaStreamingFailed", "streamConnectionInterrupted", 500, 8603, "interrupted"))


def _stopped(call: str = "c1", second: int = 5) -> dict[str, Any]:
    return event("MediaStreamingStopped", call, T0.format(second),
                 **streaming("mediaStreamingStopped", "subscriptionStopped"))


# -- the plan ---------------------------------------------------------------------------------------------------------
def test_a_failure_of_a_connected_call_plans_the_first_restart() -> None:
    req = healing.plan(_state(*_connected(), _failed()), 3)
    assert req == healing.RestartRequest(call_connection_id="c1", outage_at=T0.format(5), attempt=1)
    assert healing.parse_request(healing.encode(req)) == req


def test_nothing_is_planned_when_the_call_ended_streaming_runs_or_healing_is_off() -> None:
    assert healing.plan(_state(*_connected()), 3) is None  # streaming is up
    assert healing.plan(_state(*_connected(), _failed(), event("CallDisconnected", "c1", T0.format(6))), 3) is None
    assert healing.plan(_state(*_connected(), _failed()), 0) is None
    resumed = event("MediaStreamingStarted", "c1", T0.format(7),
                    **streaming("mediaStreamingStarted", "streamConnectionReestablished"))
    assert healing.plan(_state(*_connected(), _failed(), resumed), 3) is None


def test_a_stop_a_user_asked_for_is_not_undone_but_an_unasked_one_is() -> None:
    asked = _state(*_connected(), _stopped(), requests=(("stop", "api", T0.format(4)),))
    assert healing.plan(asked, 3) is None
    assert healing.plan(_state(*_connected(), _stopped()), 3) is not None
    # a stop asked while ACS's first Started was on its way (or stamped by a clock behind ACS's) still counts
    earlier = _state(*_connected(), _stopped(), requests=(("stop", "api", T0.format(0)),))
    assert healing.plan(earlier, 3) is None
    # and only the user's own start undoes it
    restarted = _state(*_connected(), _stopped(), requests=(("stop", "api", T0.format(0)),
                                                            ("start", "api", T0.format(3))))
    assert healing.plan(restarted, 3) is not None


def test_event_times_are_compared_as_instants_not_strings() -> None:
    """`…05Z` sorts after `…05.4Z` as text: a failure 0.4 s after a start must still count as the newer event."""
    started = event("MediaStreamingStarted", "c1", "2026-01-01T00:00:05Z",
                    **streaming("mediaStreamingStarted", "subscriptionStarted"))
    failed = event("MediaStreamingFailed", "c1", "2026-01-01T00:00:05.4Z",
                   **streaming("mediaStreamingFailed", "streamConnectionInterrupted", 500, 8603, "interrupted"))
    state = _state(event("CallConnected", "c1", "2026-01-01T00:00:01Z"), started, failed)
    assert state.streaming == "failed"
    assert healing.plan(state, 3) is not None
    offset = event("MediaStreamingStarted", "c1", "2026-01-01T02:00:06+02:00",  # 00:00:06Z, after the failure
                   **streaming("mediaStreamingStarted", "streamConnectionReestablished"))
    assert _state(event("CallConnected", "c1", "2026-01-01T00:00:01Z"), started, failed, offset).streaming == "started"


def test_attempts_are_counted_per_outage_and_bounded() -> None:
    evs = [*_connected(), _failed(second=5)]
    tries = tuple(("start", "recorder", T0.format(6)) for _ in range(2))
    doc = _state(*evs, requests=tries)
    doc = msgspec.structs.replace(doc, streaming_requests=[
        msgspec.structs.replace(r, heals=T0.format(5)) for r in doc.streaming_requests])
    assert healing.plan(doc, 3) == healing.RestartRequest(call_connection_id="c1", outage_at=T0.format(5), attempt=3)
    assert healing.plan(doc, 2) is None  # out of attempts: given up
    # a new outage after streaming came back starts counting again
    healed = event("MediaStreamingStarted", "c1", T0.format(7), **streaming("mediaStreamingStarted", "x"))
    doc2 = _state(*evs, healed, _failed(second=8))
    doc2 = msgspec.structs.replace(doc2, streaming_requests=doc.streaming_requests)
    assert healing.plan(doc2, 3) == healing.RestartRequest(call_connection_id="c1", outage_at=T0.format(8),
                                                           attempt=1)
    # and the call as a whole is bounded
    many = [cs.StreamingRequest(action="start", by="recorder", at=T0.format(3), heals=T0.format(3), attempt=1)
            for _ in range(healing.MAX_RESTARTS_PER_CALL)]
    assert healing.plan(msgspec.structs.replace(doc2, streaming_requests=many), 3) is None


def _claimed(state: cs.CallState, outage_at: str, attempt: int, at: float, **fields: Any) -> cs.CallState:
    """`state` with the recorder's claim of one attempt, made at `at` (our clock)."""
    mine = cs.StreamingRequest(action="start", by="recorder", at=mf.utc_iso(at), attempt=attempt, heals=outage_at,
                               **fields)
    return msgspec.structs.replace(state, streaming_requests=[*state.streaming_requests, mine])


def test_an_attempt_in_flight_is_not_doubled_by_a_second_event_of_the_same_outage() -> None:
    """ACS may report one outage twice (Failed, then Stopped): the second must not plan attempt 2 while attempt 1
    waits for ACS's answer; an outage event dated after the claim is that answer."""
    now = time.time()
    state = _claimed(_state(*_connected(), _failed(), _stopped(second=6)), T0.format(5), 1, now - 5)
    assert healing.plan(state, 3, now) is None
    answer = event("MediaStreamingFailed", "c1", mf.utc_iso(now - 2),
                   **streaming("mediaStreamingFailed", "streamConnectionInterrupted", 500, 8603, "interrupted"))
    doc = state_model.new_state("c1")
    for e in [*_connected(), _failed(), _stopped(second=6), answer]:
        state_model.apply_event(doc, e)
    answered = _claimed(msgspec.convert(doc, cs.CallState), T0.format(5), 1, now - 5)
    assert healing.plan(answered, 3, now) == healing.RestartRequest(call_connection_id="c1", outage_at=T0.format(5),
                                                                    attempt=2)
    # unanswered for ANSWER_SECONDS (a trigger that died after its claim, or ACS never called back): tried again
    assert healing.plan(state, 3, now + healing.ANSWER_SECONDS) == healing.RestartRequest(
        call_connection_id="c1", outage_at=T0.format(5), attempt=2)
    # ACS echoes the attempt's operationContext on its answer: matched whatever the two clocks say ...
    def with_event(st: cs.CallState, e: dict[str, Any]) -> cs.CallState:
        doc = cs.to_builtins(st)
        state_model.apply_event(doc, e)
        return msgspec.convert(doc, cs.CallState)

    echoed = event("MediaStreamingFailed", "c1", mf.utc_iso(now - 30), operationContext=healing.context_of(
        T0.format(5), 1), **streaming("mediaStreamingFailed", "x", 500, 8603, "interrupted"))
    assert healing.plan(with_event(state, echoed), 3, now) is not None
    # ... and an event answering another request is not this attempt's answer, however it is dated
    other = event("MediaStreamingStopped", "c1", mf.utc_iso(now + 5), operationContext="startMediaStreamingContext",
                  **streaming("mediaStreamingStopped", "subscriptionStopped"))
    assert healing.plan(with_event(state, other), 3, now) is None
    # a refusal is an answer at once
    refused = _claimed(_state(*_connected(), _failed()), T0.format(5), 1, now, error="400 invalid")
    assert healing.plan(refused, 3, now) is not None


def test_the_watchdog_plans_only_what_is_overdue() -> None:
    """The sweep's question: a restart that should be under way and is not."""
    now = time.time()
    fresh = _state(event("CallConnected", "c1", mf.utc_iso(now - 3)),
                   event("MediaStreamingFailed", "c1", mf.utc_iso(now - 2),
                         **streaming("mediaStreamingFailed", "x", 500, 8603, "interrupted")))
    began = fresh.events[-1].time
    assert healing.plan(fresh, 3, now) is not None  # the callback's plan
    assert healing.overdue(fresh, 3, now) is None  # its message may still be invisible in the queue
    assert healing.overdue(fresh, 3, now + healing.OVERDUE_SECONDS) == healing.RestartRequest(
        call_connection_id="c1", outage_at=began, attempt=1)  # never claimed: lost
    in_flight = _claimed(fresh, began, 1, now)
    assert healing.overdue(in_flight, 3, now + healing.OVERDUE_SECONDS) is None
    assert healing.overdue(in_flight, 3, now + healing.ANSWER_SECONDS + 1).attempt == 2  # type: ignore[union-attr]
    assert healing.overdue(in_flight, 1, now + healing.ANSWER_SECONDS + 1) is None  # that was the last attempt


def test_the_watchdog_reports_giving_up_once_not_every_sweep(caplog: pytest.LogCaptureFixture) -> None:
    now = time.time()
    state = _claimed(_state(*_connected(), _failed()), T0.format(5), 3, now)  # the last attempt, never answered
    for r in (1, 2):
        state = msgspec.structs.replace(state, streaming_requests=[
            cs.StreamingRequest(action="start", by="recorder", at=mf.utc_iso(now - 100), attempt=r,
                                heals=T0.format(5), error="refused"), *state.streaming_requests])
    for k in range(4):  # four sweeps after the answer ran out
        assert healing.overdue(state, 3, now + healing.ANSWER_SECONDS + 5 + k * healing.SWEEP_SECONDS) is None
    assert sum("giving up" in r.getMessage() for r in caplog.records) == 1


def test_a_users_many_requests_never_push_out_the_recorders_own() -> None:
    doc = state_model.new_state("c1")
    state_model.record_streaming_request(doc, "start", by="recorder", attempt=1, heals=T0.format(5))
    for i in range(state_model.MAX_EVENTS + 50):
        state_model.record_streaming_request(doc, "stop" if i % 2 else "start")
    requests = doc["streamingRequests"]
    assert len(requests) == state_model.MAX_EVENTS
    assert requests[0]["by"] == "recorder" and requests[-1]["action"] == "stop"  # the newest user's kept


def test_a_hole_is_healed_by_the_recorder_only_if_acs_accepted_its_start() -> None:
    from function_app.completeness import completeness

    t0 = time.time() - 100
    def session(sid: str, a: float, b: float, reason: mf.EndReason) -> mf.Session:
        return mf.Session(id=sid, started_at=mf.utc_iso(t0 + a), ended_at=mf.utc_iso(t0 + b), frames=10,
                          complete=reason == mf.EndReason.PEER_CLOSED, settled=True, end_reason=reason)

    manifest = mf.Manifest(call_connection_id="c1", sessions=[
        session("s1", 0, 20, mf.EndReason.PEER_LOST), session("s2", 30, 60, mf.EndReason.PEER_CLOSED)])
    claim = cs.StreamingRequest(action="start", by="recorder", at=mf.utc_iso(t0 + 22), attempt=1,
                                heals=mf.utc_iso(t0 + 20))
    state = cs.CallState(call_connection_id="c1", status="disconnected", connected_at=mf.utc_iso(t0),
                         disconnected_at=mf.utc_iso(t0 + 60), streaming_requests=[claim])
    (hole,) = completeness(state, manifest, [], t0 + 100).holes
    assert hole.healed and hole.healed_by == HealedBy.ACS  # claimed, but its start never reached ACS
    accepted = msgspec.structs.replace(claim, accepted_at=mf.utc_iso(t0 + 22.5))
    (hole,) = completeness(msgspec.structs.replace(state, streaming_requests=[accepted]), manifest, [],
                           t0 + 100).holes
    assert hole.healed_by == HealedBy.RECORDER and hole.restarts == 1


# -- through the local host -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def host(azurite: Azurite) -> Iterator[HostUnderTest]:
    capture = AcsCapture()
    with ServerThread(capture.app()) as server:
        container = new_container()
        store_for(azurite, container)
        with hosted(make_settings(azurite, container, acs_endpoint=server.url), acs=capture) as host:
            yield host


@pytest.fixture
def restarts(azurite: Azurite) -> QueueClient:
    return QueueClient.from_connection_string(azurite.connection_string, STREAMING_RESTART_QUEUE,
                                              message_decode_policy=TextBase64DecodePolicy())


def _callbacks(host: HostUnderTest, *events: dict[str, Any]) -> None:
    with host.client(key=None) as http:
        assert http.post("/callbacks", json=list(events)).status_code == 200


def _planned(queue: QueueClient, call: str, timeout: float = 15.0) -> list[healing.RestartRequest]:
    """The restart requests for `call` once they are visible (each is delayed by its backoff)."""
    deadline, found = time.monotonic() + timeout, []
    while time.monotonic() < deadline and not found:
        for m in queue.receive_messages(messages_per_page=32, visibility_timeout=1):
            req = healing.parse_request(m.content)
            if req.call_connection_id == call:
                found.append(req)
                queue.delete_message(m)
        time.sleep(0.2)
    return found


def _run_trigger(host: HostUnderTest, req: healing.RestartRequest) -> None:
    r = httpx.post(f"{host.url}/admin/functions/StreamingRestart", json={"input": healing.encode(req)},
                   headers={"x-functions-key": MASTER_KEY})
    assert r.status_code == 202


def _starts(host: HostUnderTest, call: str) -> list[Any]:
    assert host.acs is not None
    return [r for r in host.acs.requests if r.path.startswith(f"/calling/callConnections/{call}:startMediaStreaming")]


def _wait(predicate: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_failure_callback_restarts_streaming_once_per_attempt(host: HostUnderTest, restarts: QueueClient) -> None:
    call = str(uuid.uuid4())
    t = time.monotonic()
    _callbacks(host, *_connected(call), _failed(call))
    (req,) = _planned(restarts, call)
    assert time.monotonic() - t >= healing.MIN_DELAY_SECONDS  # invisible for its backoff
    assert req.attempt == 1 and req.outage_at == T0.format(5)
    _run_trigger(host, req)
    _wait(lambda: _starts(host, call), "the restart to reach ACS")
    (start,) = _starts(host, call)
    assert start.hmac_ok and start.json() == {"operationContext": healing.context_of(T0.format(5), 1)}
    state = host.runtime.store.read_state_model(call)
    (mine,) = state.streaming_requests
    assert (mine.action, mine.by, mine.attempt, mine.heals, mine.error) == ("start", "recorder", 1, T0.format(5), None)
    assert mine.accepted_at is not None
    _run_trigger(host, req)  # delivered twice: restarted once
    time.sleep(1.5)
    assert len(_starts(host, call)) == 1
    # ACS's answer: the stream is back; a redelivered failure callback plans nothing
    _callbacks(host, event("MediaStreamingStarted", call, T0.format(7),
                           **streaming("mediaStreamingStarted", "subscriptionStarted")), _failed(call))
    assert _planned(restarts, call, timeout=4) == []


def test_acs_refusing_the_restart_is_retried_then_given_up(host: HostUnderTest, restarts: QueueClient) -> None:
    assert host.acs is not None
    host.acs.fail["startMediaStreaming"] = (400, "8501", "Action is invalid when call is not in Established state")
    try:
        call = str(uuid.uuid4())
        _callbacks(host, *_connected(call), _failed(call))
        for attempt in (1, 2, 3):
            (req,) = _planned(restarts, call)
            assert req.attempt == attempt
            assert healing.restart(host.runtime.acs, host.runtime.store, req, 3) is healing.Outcome.REFUSED
        assert _planned(restarts, call, timeout=12) == []  # three tries, then given up
        state = host.runtime.store.read_state_model(call)
        assert [(r.attempt, r.error is not None) for r in state.streaming_requests] == [(1, True), (2, True),
                                                                                         (3, True)]
        assert len(_starts(host, call)) == 3
    finally:
        host.acs.fail.clear()


def test_no_restart_for_a_call_that_ended_meanwhile_or_a_stop_a_user_asked_for(host: HostUnderTest,
                                                                              restarts: QueueClient) -> None:
    call = str(uuid.uuid4())
    _callbacks(host, *_connected(call), _stopped(call))  # ACS stops streaming just before the call ends
    (req,) = _planned(restarts, call)
    _callbacks(host, event("CallDisconnected", call, T0.format(6)))
    assert healing.restart(host.runtime.acs, host.runtime.store, req, 3) is healing.Outcome.NOT_NEEDED
    assert _starts(host, call) == []

    asked = str(uuid.uuid4())
    _callbacks(host, *_connected(asked))
    with host.client() as http:
        assert http.post(f"/calls/{asked}/streaming/stop", json={}).status_code == 202
    _callbacks(host, _stopped(asked, second=9))
    assert _planned(restarts, asked, timeout=4) == []


def test_a_stop_whose_callback_lands_before_acs_answers_is_not_undone(host: HostUnderTest,
                                                                     restarts: QueueClient) -> None:
    """ACS's MediaStreamingStopped may reach the callbacks before ACS's answer to the stop reaches us: the stop
    is recorded before ACS is asked, so healing already knows a user asked for it."""
    assert host.acs is not None
    call = str(uuid.uuid4())
    _callbacks(host, *_connected(call))
    host.acs.on["stopMediaStreaming"] = lambda: _callbacks(host, _stopped(call, second=9))
    try:
        with host.client() as http:
            assert http.post(f"/calls/{call}/streaming/stop", json={}).status_code == 202
    finally:
        host.acs.on.clear()
    assert _planned(restarts, call, timeout=4) == []
    (stop,) = host.runtime.store.read_state_model(call).streaming_requests
    assert (stop.action, stop.by, stop.error) == ("stop", "api", None)


def test_a_stop_acs_refuses_is_recorded_with_its_error(host: HostUnderTest) -> None:
    assert host.acs is not None
    call = str(uuid.uuid4())
    _callbacks(host, *_connected(call))
    host.acs.fail["stopMediaStreaming"] = (400, "8501", "Action is invalid")
    try:
        with host.client() as http:
            assert http.post(f"/calls/{call}/streaming/stop", json={}).status_code == 502
    finally:
        host.acs.fail.clear()
    (stop,) = host.runtime.store.read_state_model(call).streaming_requests
    assert stop.action == "stop" and stop.error is not None and "8501" in stop.error


def test_a_failure_reported_before_the_call_connected_is_healed_once_it_does(host: HostUnderTest,
                                                                           restarts: QueueClient) -> None:
    """Callbacks are not ordered: a MediaStreamingFailed may arrive before CallConnected."""
    call = str(uuid.uuid4())
    _callbacks(host, _failed(call, second=2))
    assert _planned(restarts, call, timeout=3) == []  # not connected (yet): nothing to heal
    _callbacks(host, event("CallConnected", call, T0.format(1)))
    (req,) = _planned(restarts, call)
    assert (req.attempt, req.outage_at) == (1, T0.format(2))


def test_the_sweep_plans_a_restart_a_callback_could_not(host: HostUnderTest, restarts: QueueClient) -> None:
    """The watchdog: an outage whose plan was lost (its queue message never sent) is planned by the sweep; an
    attempt claimed and never answered is followed by the next once ANSWER_SECONDS have passed."""
    call = str(uuid.uuid4())
    store = host.runtime.store
    store.add_to_index(call, datetime.now(UTC))

    def lost_plan(doc: dict[str, Any]) -> bool:  # the callbacks stored the events, then could not queue the plan
        for e in [*_connected(call), _failed(call)]:
            state_model.apply_event(doc, e)
        return True

    store.update_state(call, lost_plan)
    fin = host.runtime.finalizer  # (other tests' calls in this container may be swept too: only ours is checked)
    now = time.time()
    assert dataclasses.replace(fin, clock=lambda: now).sweep().get("restart", 0) >= 1
    (req,) = _planned(restarts, call)
    assert (req.attempt, req.outage_at) == (1, T0.format(5))
    _run_trigger(host, req)
    _wait(lambda: _starts(host, call), "the restart to reach ACS")
    _wait(lambda: host.runtime.store.read_state_model(call).streaming_requests[-1].accepted_at, "the acceptance")
    # ACS accepted, then said nothing: not overdue yet, then overdue
    dataclasses.replace(fin, clock=lambda: time.time() + 5).sweep()
    assert _planned(restarts, call, timeout=2) == []
    dataclasses.replace(fin, clock=lambda: time.time() + healing.ANSWER_SECONDS).sweep()
    (nxt,) = _planned(restarts, call)
    assert nxt.attempt == 2
    store.mark_finished(call)


def test_a_stop_that_lands_between_the_claim_and_the_start_is_not_undone(host: HostUnderTest,
                                                                         restarts: QueueClient) -> None:
    """A user stops streaming while the recorder's restart is on its way to ACS: ACS gets the stop, then the
    start. The recorder sees the user's stop recorded after its claim and stops streaming again."""
    assert host.acs is not None
    call = str(uuid.uuid4())
    _callbacks(host, *_connected(call), _failed(call))
    (req,) = _planned(restarts, call)

    def user_stops() -> None:
        with host.client() as http:
            assert http.post(f"/calls/{call}/streaming/stop", json={}).status_code == 202

    host.acs.on["startMediaStreaming"] = user_stops
    try:
        assert healing.restart(host.runtime.acs, host.runtime.store, req, 3) is healing.Outcome.REQUESTED
    finally:
        host.acs.on.clear()
    sent = [(r.path.split(":")[-1].split("?")[0], r.json().get("operationContext"))
            for r in host.acs.requests if f"/callConnections/{call}:" in r.path]
    assert sent == [("startMediaStreaming", healing.context_of(T0.format(5), 1)), ("stopMediaStreaming", None),
                    ("stopMediaStreaming", healing.OPERATION_CONTEXT + "-undo")]


def test_the_sweep_ends_a_call_acs_no_longer_knows(host: HostUnderTest, azurite: Azurite) -> None:
    """A call whose CallDisconnected never arrived would stay live, and unfinalized, for good: once it has been
    quiet for QUIET_SECONDS the sweep asks ACS, and a 404 records it as ended at its last sign of life and asks for
    its finalization. A call ACS still knows stays live."""
    from common.layout import FINALIZE_QUEUE
    from function_app.finalize import QUIET_SECONDS

    assert host.acs is not None
    gone = str(uuid.uuid4())
    host.runtime.store.add_to_index(gone, datetime.now(UTC))
    _callbacks(host, *_connected(gone))
    fin = dataclasses.replace(host.runtime.finalizer, clock=lambda: time.time() + QUIET_SECONDS + 1)
    assert dataclasses.replace(fin, clock=time.time).sweep().get("ended_unseen") is None  # not quiet yet
    host.acs.fail["get"] = (404, "8522", "Call not found")
    try:
        assert fin.sweep().get("ended_unseen", 0) >= 1
    finally:
        host.acs.fail.clear()
    state = host.runtime.store.read_state_model(gone)
    assert state.ended and state.disconnected_at == mf.utc_iso(mf.instant(T0.format(2)))  # its last event
    assert [e.id for e in state.events][-1] == f"recorder-sweep-{gone}"
    queue = QueueClient.from_connection_string(azurite.connection_string, FINALIZE_QUEUE,
                                               message_decode_policy=TextBase64DecodePolicy())
    asked = [m.content for m in queue.peek_messages(max_messages=32)]
    assert any(gone in m and "call_gone" in m for m in asked)
    later = str(uuid.uuid4())
    host.runtime.store.add_to_index(later, datetime.now(UTC))
    _callbacks(host, *_connected(later))
    fin.sweep()  # ACS answers 200 for it: live it stays
    assert not host.runtime.store.read_state_model(later).ended
