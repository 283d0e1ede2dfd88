"""How complete a recording is: the call's connected interval against its streaming sessions, the holes between
them with their causes, audio and silence per stream, and one plain statement.

Pure functions over the call state and the manifest, so the same report is given while a call runs (the API
computes it on the fly) and when it is finalized (stored in recording.json).

Times: the connected interval comes from ACS's event times, sessions from the streamer replicas' clocks. Both are
NTP-synchronised in Azure, but they are different clocks, so holes shorter than `MIN_HOLE_MS` are not reported,
and the first/last hole (streaming starting after the call connected, ending before it disconnected) is
`expected` up to `EDGE_TOLERANCE_MS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec

from common import call_state as cs
from common import manifest as mf
from common.recording import Completeness, HealedBy, Hole, HoleCause, StreamCoverage

MIN_HOLE_MS = 250
EDGE_TOLERANCE_MS = 2000  # ACS starts media streaming a moment after the call connects
NEAR_MS = 5000  # an event this close to a hole's start explains it
UNREACHABLE_SUB_CODE = 8603


@dataclass(frozen=True)
class StreamAudio:
    """What a stream's finished file holds (or would hold): its length and the received audio in it."""

    stream: str
    participant_raw_id: str | None
    duration_ms: int
    audio_ms: int


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _union(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _session_spans(manifest: mf.Manifest | None, until: float) -> list[tuple[float, float, mf.Session]]:
    spans = []
    for s in manifest.sessions if manifest else []:
        a = mf.instant(s.started_at)
        if a is None:
            continue
        b = mf.instant(s.ended_at)
        spans.append((a, until if b is None else max(a, b), s))
    return sorted(spans, key=lambda x: x[0])


def _cause(state: cs.CallState, start: float, end: float, before: mf.Session | None, first: bool,
           last: bool, any_session: bool) -> tuple[HoleCause, cs.Failure | None, bool]:
    """-> (cause, the failure that explains it, expected)."""
    failure = next((f for f in state.failures if f.event == "MediaStreamingFailed"
                    and (at := mf.instant(f.at)) is not None and start - NEAR_MS / 1000 <= at <= end), None)
    if failure is not None:
        unreachable = failure.sub_code == UNREACHABLE_SUB_CODE
        return (HoleCause.STREAMER_UNREACHABLE if unreachable else HoleCause.STREAMING_FAILED), failure, False
    stop = next((r for r in state.streaming_requests if r.action == "stop" and r.error is None
                 and (at := mf.instant(r.at)) is not None and start - NEAR_MS / 1000 <= at <= end), None)
    if stop is not None:
        return HoleCause.STOPPED_ON_REQUEST, None, True
    short = (end - start) * 1000 <= EDGE_TOLERANCE_MS
    if not any_session:
        return HoleCause.NEVER_STREAMED, None, False
    if first:
        return HoleCause.STREAMING_STARTING, None, short
    if before is not None and before.end_reason in (mf.EndReason.PEER_LOST, mf.EndReason.NEVER_CLOSED,
                                                    mf.EndReason.SERVER_ERROR, mf.EndReason.DRAIN):
        return HoleCause.CONNECTION_LOST, None, False
    if last:
        return HoleCause.STREAMING_ENDING, None, short
    return HoleCause.UNKNOWN, None, False


def holes(state: cs.CallState, manifest: mf.Manifest | None, now: float) -> tuple[list[Hole], int, int]:
    """-> (holes, connected ms, streamed ms) of the connected interval (up to `now` while the call is connected)."""
    start = mf.instant(state.connected_at)
    if start is None:
        return [], 0, 0
    end = mf.instant(state.disconnected_at) if state.ended else None
    end = max(start, end if end is not None else now)
    spans = _session_spans(manifest, end)
    covered = _union((max(a, start), min(b, end)) for a, b, _ in spans if min(b, end) > max(a, start))
    streamed = sum(b - a for a, b in covered)
    found: list[Hole] = []
    cursor = start
    edges = [*covered, (end, end)]
    for i, (a, b) in enumerate(edges):
        if (a - cursor) * 1000 >= MIN_HOLE_MS:
            before = next((s for sa, sb, s in reversed(spans) if sb <= a and sb >= cursor - 0.001), None)
            is_last = i == len(edges) - 1
            cause, failure, expected = _cause(state, cursor, a, before, first=i == 0 and bool(covered),
                                              last=is_last, any_session=bool(spans))
            starts = [r for r in state.streaming_requests if r.action == "start"
                      and (at := mf.instant(r.at)) is not None and cursor - NEAR_MS / 1000 <= at <= a]
            # a recorder's start heals only once ACS accepted it (a claim whose trigger died asked nothing)
            healer = next((r for r in reversed(starts) if r.error is None
                           and (r.by == "api" or r.accepted_at is not None)), None)
            healed_by = None if is_last else (HealedBy.ACS if healer is None else HealedBy(healer.by))
            found.append(Hole(
                start_time=mf.utc_iso(cursor), end_time=mf.utc_iso(a), duration_ms=_ms(a - cursor), cause=cause,
                code=failure.code if failure else None, sub_code=failure.sub_code if failure else None,
                message=failure.message[:4096] if failure and failure.message else None,
                healed=not is_last, healed_by=healed_by, expected=expected,
                restarts=sum(1 for r in starts if r.by == "recorder")))
        cursor = max(cursor, b)
    return found, _ms(end - start), _ms(streamed)


def _seconds(ms: int) -> str:
    return f"{ms / 1000:.1f} s"


_HEALED = {HealedBy.RECORDER: ", restarted by the recorder", HealedBy.API: ", restarted through the API",
           HealedBy.ACS: ", reconnected by ACS"}


def _statement(c: Completeness, ended: bool) -> str:
    if c.coverage is None:
        return "The call never connected: there was nothing to record." if ended else \
            "The call has not connected yet."
    parts = [f"{c.coverage * 100:.1f} % of the {_seconds(c.connected_ms)} the call was connected was streamed "
             f"to the recorder."]
    unexpected = [h for h in c.holes if not h.expected]
    if unexpected:
        worst = ", ".join(f"{_seconds(h.duration_ms)} ({h.cause.value.replace('_', ' ')}"
                          + (f", code {h.code}/{h.sub_code}" if h.code is not None else "")
                          + (_HEALED[h.healed_by] if h.healed_by else "") + ")" for h in unexpected[:5])
        parts.append(f"NOT COMPLETE: audio is missing where no session was streaming: {worst}.")
    stops = [h for h in c.holes if h.cause == HoleCause.STOPPED_ON_REQUEST]
    if stops:
        parts.append(f"Streaming was stopped on request for {_seconds(sum(h.duration_ms for h in stops))}.")
    if c.unsettled_sessions and not ended:
        parts.append(f"In progress: {len(c.unsettled_sessions)} session(s) still streaming or landing audio.")
    elif c.unsettled_sessions:
        parts.append(f"NOT COMPLETE: {len(c.unsettled_sessions)} session(s) never reported that all their audio "
                     "landed (a replica was lost); audio in transit may be missing.")
    if c.incomplete_sessions:
        parts.append(f"NOT COMPLETE: {len(c.incomplete_sessions)} session(s) ended without a clean close; up to "
                     "the last frames in transit may be missing.")
    if c.quarantined_chunks:
        parts.append(f"NOT COMPLETE: {c.quarantined_chunks} chunk(s) could not be stored and are quarantined.")
    if c.complete:
        parts.insert(0, "Complete.")
    return " ".join(parts)


def completeness(state: cs.CallState | None, manifest: mf.Manifest | None, streams: Sequence[StreamAudio],
                 now: float) -> Completeness:
    if state is None:
        state = cs.CallState(call_connection_id=manifest.call_connection_id if manifest else "unknown")
    found, connected_ms, streamed_ms = holes(state, manifest, now)
    sessions = manifest.sessions if manifest else []
    audio = [s for s in sessions if s.has_content]
    unsettled = [s.id for s in sessions if not s.settled]
    incomplete = [s.id for s in audio if s.settled and not s.complete]
    quarantined = sum(len(s.quarantined_chunks) for s in sessions)
    coverage = min(1.0, streamed_ms / connected_ms) if connected_ms else (0.0 if state.connected_at else None)
    complete = (coverage is not None and not [h for h in found if not h.expected] and not unsettled
                and not incomplete and not quarantined and bool(audio))
    c = Completeness(
        connected_from=state.connected_at, connected_until=state.disconnected_at if state.ended else None,
        connected_ms=connected_ms, streamed_ms=streamed_ms, coverage=coverage, holes=found,
        streams=[StreamCoverage(stream=s.stream, participant_raw_id=s.participant_raw_id, duration_ms=s.duration_ms,
                                audio_ms=min(s.audio_ms, s.duration_ms),
                                silence_ms=max(0, s.duration_ms - s.audio_ms)) for s in streams],
        sessions=len(sessions), unsettled_sessions=unsettled, incomplete_sessions=incomplete,
        quarantined_chunks=quarantined, complete=complete)
    return msgspec.structs.replace(c, statement=_statement(c, state.ended))


def estimated_streams(manifest: mf.Manifest | None) -> list[StreamAudio]:
    """Per-stream audio from the manifest alone (a live call: no chunk is read): chunk lengths minus the gaps."""
    if manifest is None or not manifest.sample_rate or not manifest.chunk_seconds:
        return []
    chunk_ms = round(manifest.chunk_seconds * 1000)
    gap_ms: dict[str, int] = {}
    for g in manifest.gaps:
        gap_ms[g.stream] = gap_ms.get(g.stream, 0) + g.duration_ms
    out = []
    for s in manifest.streams:
        if not s.chunks:
            continue
        last = max(s.chunks, key=lambda c: c.seq)
        duration = last.seq * chunk_ms + last.duration_ms
        audio = sum(c.duration_ms for c in s.chunks) - gap_ms.get(s.stream, 0)
        out.append(StreamAudio(s.stream, s.participant_raw_id, duration, max(0, audio)))
    return out
