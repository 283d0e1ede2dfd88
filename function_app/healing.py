"""Self-healing media streaming: ACS stopped streaming a call that is still connected (MediaStreamingFailed, or a
MediaStreamingStopped nobody asked for), so the recorder asks ACS to start it again — a bounded number of times,
with backoff, each try recorded in the call state.

Flow: the callbacks see the outage and put a restart request on the `streaming-restart` queue, invisible for the
backoff delay. The StreamingRestart queue trigger (on any instance) reads the call state again — the call may have
ended meanwhile, streaming may have resumed, a user may have stopped it — claims the attempt in the call state (an
ETag-guarded write, so a request delivered twice restarts once) and calls `start_media_streaming`. ACS answers
with MediaStreamingStarted (healed: the completeness report shows the hole as healed by the recorder) or with
another MediaStreamingFailed, which plans the next attempt. After the last attempt the recorder gives up, loudly;
the hole stays in the report as not healed.

While an attempt is in flight (claimed, ACS has not answered) no further attempt is planned: a second outage event of
the same outage (ACS may send Failed and then Stopped) waits for the answer. What a callback cannot see, the
watchdog in the periodic sweep does (`overdue`): a plan whose queue message was lost, a trigger that died after its
claim, an attempt ACS never answered, or an outage reported before the call's CallConnected.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Any

import msgspec
from azure.communication.callautomation import CallAutomationClient
from azure.core.exceptions import AzureError

from common import call_state as cs
from common.logs import call_fields
from common.manifest import Id, Time, instant, now_iso
from common.retry import Backoff
from function_app import state as state_model
from function_app.store import RecordingStore

log = logging.getLogger(__name__)

DEFAULT_ATTEMPTS = 3  # per outage (STREAMING_RESTART_ATTEMPTS)
MAX_RESTARTS_PER_CALL = 10  # a stream that keeps failing after each heal is not healed forever
MIN_DELAY_SECONDS = 1.0  # lets a CallDisconnected that follows the stop land first (the call is then not restarted)
BACKOFF = Backoff(base=1.0, cap=8.0)  # full jitter: a replica lost under many calls is not hit by all at once
OPERATION_CONTEXT = "recorder-restart"
OUTAGE_EVENTS = frozenset({"MediaStreamingFailed", "MediaStreamingStopped"})
# events after which a call may need healing: an outage, or the CallConnected that follows an outage reported first
TRIGGER_EVENTS = OUTAGE_EVENTS | {"CallConnected"}
ANSWER_SECONDS = 60.0  # an attempt ACS has not answered after this counts as failed (the watchdog plans the next)
OVERDUE_SECONDS = 30.0  # a planned attempt nobody claimed after this was lost (the watchdog plans it again)
SWEEP_SECONDS = 300.0  # how often the watchdog (SweepRecordings) asks
SKEW_SECONDS = 0.25  # our clock against ACS's event times: an outage event this close to a claim is not its answer


class RestartRequest(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The queue message: restart the streaming of this call, for the outage that began at `outage_at`."""

    call_connection_id: Id
    outage_at: Time
    attempt: int


class Outcome(enum.StrEnum):
    REQUESTED = "requested"  # ACS accepted the start; its callback says whether streaming resumed
    REFUSED = "refused"  # ACS refused it (the next attempt is queued, unless this was the last)
    NOT_NEEDED = "not_needed"  # the call ended, streaming resumed, or a user stopped it
    DUPLICATE = "duplicate"  # this attempt was already made (a redelivered message)
    GAVE_UP = "gave_up"
    UNKNOWN_CALL = "unknown_call"


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RestartRequest)


def encode(req: RestartRequest) -> str:
    return _encoder.encode(req).decode()


def parse_request(body: bytes | str) -> RestartRequest:
    """Raises ValueError for a message that is not a restart request."""
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a streaming restart request: {exc}") from None


def _ts(value: str | None) -> float:
    """An event or request time, for ordering (unreadable ones first)."""
    t = instant(value)
    return float("-inf") if t is None else t


def outage(state: cs.CallState) -> str | None:
    """When the current outage began: the first Failed/Stopped event after the last MediaStreamingStarted, if the
    call is connected, its streaming is down, and no user stopped it since it last started. None: nothing to heal."""
    if state.status != "connected" or state.streaming not in ("failed", "stopped"):
        return None
    last_start = max((_ts(e.time) for e in state.events if e.type == "MediaStreamingStarted"), default=float("-inf"))
    asked = [r for r in state.streaming_requests if r.by == "api" and r.error is None]
    if asked and asked[-1].action == "stop":
        return None  # a user stopped it (whenever ACS's events say it started): only their start undoes that
    down = sorted((e for e in state.events if e.type in OUTAGE_EVENTS and _ts(e.time) > last_start),
                  key=lambda e: _ts(e.time))
    return down[0].time if down else None


def context_of(outage_at: str, attempt: int) -> str:
    """The operationContext of one restart attempt: ACS echoes it on the events that answer it."""
    return f"{OPERATION_CONTEXT}#{attempt}@{outage_at}"


def _answered(state: cs.CallState, attempt: cs.StreamingRequest) -> bool:
    """Whether ACS has answered this attempt: refused at once, or an outage event carrying the attempt's
    operationContext (an accepted start ends the outage instead). An outage event without any context that is
    dated after the claim counts too, in case ACS does not echo it; one with another request's context is not."""
    if attempt.error is not None:
        return True
    claimed = instant(attempt.at)
    if claimed is None or attempt.heals is None or attempt.attempt is None:
        return True
    ours = context_of(attempt.heals, attempt.attempt)
    return any(e.type in OUTAGE_EVENTS and (e.operation_context == ours or (
        e.operation_context is None and _ts(e.time) > claimed + SKEW_SECONDS)) for e in state.events)


def plan(state: cs.CallState, max_attempts: int, now: float | None = None, *,
         quiet: bool = False) -> RestartRequest | None:
    """The next restart this call needs, or None (nothing to heal, healing off, out of attempts, or an attempt in
    flight that ACS has not answered for less than ANSWER_SECONDS)."""
    began = outage(state)
    if began is None or max_attempts <= 0:
        return None
    mine = [r for r in state.streaming_requests if r.by == "recorder"]
    these = [r for r in mine if r.heals == began]
    tries = len(these)
    fields = call_fields(state.call_connection_id, state.correlation_id)
    last = max(these, key=lambda r: r.attempt or 0, default=None)
    waited = (time.time() if now is None else now) - (_ts(last.at) if last is not None else float("inf"))
    silent = last is not None and not _answered(state, last)
    if silent and waited < ANSWER_SECONDS:
        return None  # ACS's answer (or the watchdog) plans the next
    if tries >= max_attempts or len(mine) >= MAX_RESTARTS_PER_CALL:
        # the watchdog asks every sweep: a failed last attempt was reported when it failed, an unanswered one in
        # the first sweep after ANSWER_SECONDS
        if quiet and not (silent and waited < ANSWER_SECONDS + SWEEP_SECONDS):
            return None
        log.error("media streaming of %s is down since %s and %d restart(s) did not bring it back; giving up — "
                  "the recording has a hole until the call ends", state.call_connection_id, began, tries,
                  extra=fields)
        return None
    if silent:
        log.warning("restart %s of media streaming of %s has had no answer from ACS for %.0f s; trying again",
                    tries, state.call_connection_id, ANSWER_SECONDS, extra=fields)
    return RestartRequest(call_connection_id=state.call_connection_id, outage_at=began, attempt=tries + 1)


def overdue(state: cs.CallState, max_attempts: int, now: float) -> RestartRequest | None:
    """The watchdog's question (asked by the periodic sweep of live calls): a restart that should be under way and
    is not — planned but never claimed for OVERDUE_SECONDS, or claimed and unanswered for ANSWER_SECONDS."""
    req = plan(state, max_attempts, now, quiet=True)
    if req is None:
        return None
    attempts = [_ts(r.at) for r in state.streaming_requests if r.by == "recorder" and r.heals == req.outage_at]
    since = max([_ts(req.outage_at), *attempts])
    return req if now - since >= OVERDUE_SECONDS else None


def delay(attempt: int) -> float:
    return MIN_DELAY_SECONDS + BACKOFF.delay(attempt)


def schedule(store: RecordingStore, req: RestartRequest) -> None:
    wait = delay(req.attempt)
    if store.request_restart(encode(req), req.call_connection_id, wait):
        # INFO: ACS also stops streaming just before a call's CallDisconnected; the attempt then finds it ended.
        log.info("media streaming of %s is down (since %s): restart %d planned in %.1f s", req.call_connection_id,
                 req.outage_at, req.attempt, wait, extra={"callConnectionId": req.call_connection_id})


def restart(client: CallAutomationClient, store: RecordingStore, req: RestartRequest, max_attempts: int) -> Outcome:
    """Run one restart attempt (the queue trigger's body)."""
    call_id = req.call_connection_id
    state = store.read_state_model(call_id)
    if state is None:
        return Outcome.UNKNOWN_CALL
    if outage(state) != req.outage_at:  # ended, resumed, stopped by a user, or a newer outage with its own plan
        return Outcome.NOT_NEEDED
    if req.attempt > max_attempts:
        return Outcome.GAVE_UP
    claimed: list[bool] = []

    def claim(doc: dict[str, Any]) -> bool:
        current = msgspec.convert(doc, cs.CallState)
        if outage(current) != req.outage_at or any(_is(r, req) for r in current.streaming_requests):
            claimed[:] = []
            return False
        state_model.record_streaming_request(doc, "start", by="recorder", attempt=req.attempt, heals=req.outage_at)
        claimed[:] = [True]
        return True

    store.update_state(call_id, claim)
    if not claimed:
        return Outcome.DUPLICATE
    fields = call_fields(call_id, state.correlation_id)
    log.warning("media streaming of %s is down since %s while the call is connected: restarting it (attempt %d)",
                call_id, req.outage_at, req.attempt, extra=fields)
    try:
        client.get_call_connection(call_id).start_media_streaming(
            operation_context=context_of(req.outage_at, req.attempt))
    except AzureError as exc:
        error = str(exc)[:1000]
        log.warning("restart %d of media streaming of %s refused: %s", req.attempt, call_id, error, extra=fields)

        def note(doc: dict[str, Any]) -> bool:
            return state_model.update_streaming_request(doc, lambda r: _is(r, req), error=error)

        nxt = plan(msgspec.convert(store.update_state(call_id, note), cs.CallState), max_attempts)
        if nxt is not None:
            schedule(store, nxt)
        return Outcome.REFUSED
    log.info("restart %d of media streaming of %s accepted", req.attempt, call_id, extra=fields)
    accepted = now_iso()

    def mark(doc: dict[str, Any]) -> bool:
        return state_model.update_streaming_request(doc, lambda r: _is(r, req) and r.accepted_at is None,
                                                    accepted_at=accepted)

    after = msgspec.convert(store.update_state(call_id, mark), cs.CallState)
    claimed_at = next((_ts(r.at) for r in after.streaming_requests if _is(r, req)), float("inf"))
    if any(r.by == "api" and r.action == "stop" and r.error is None and _ts(r.at) >= claimed_at
           for r in after.streaming_requests):
        # a user's stop reached ACS between the claim and this start, which would undo it: stop again
        log.warning("a user stopped the streaming of %s while restart %d was under way; stopping it again",
                    call_id, req.attempt, extra=fields)
        try:
            client.get_call_connection(call_id).stop_media_streaming(operation_context=OPERATION_CONTEXT + "-undo")
        except AzureError as exc:
            log.error("could not stop the streaming of %s again: %s", call_id, str(exc)[:300], extra=fields)
    return Outcome.REQUESTED


def _is(r: cs.StreamingRequest, req: RestartRequest) -> bool:
    """Whether `r` is the call state's record of this attempt (the claim `restart` made)."""
    return r.by == "recorder" and r.heals == req.outage_at and r.attempt == req.attempt
