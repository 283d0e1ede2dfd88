"""Finalization: when a call has ended and every streaming session of it has settled, write the finished files and
the recording document, then announce it.

Who and when. The function app finalizes (queue trigger `FinalizeRecording`), never the streamer: assembling an
hour of audio is seconds of CPU and a gigabyte of I/O that must not run beside live calls' frames, and the
control plane owns the call state and the event topic. Either plane asks by putting the call id on the
`recording-finalize` queue after writing its own condition and then reading the other's:
- the callbacks, when the call state becomes terminal (CallDisconnected, CreateCallFailed, AnswerFailed);
- the streamer, when a session's final manifest write leaves every session of the call settled and the call
  state it then reads is terminal.
Each side writes before it reads, so whichever comes last sees both conditions: no timer in the common path.
A request that comes too early (sessions still open) is dropped; the later one follows.

Late audio. A session that could not reach storage before the call ended is invisible to the finalizer (it has
no manifest entry yet), so a `ready` recording can be outdated by chunks that land later. When that session
settles its request arrives again; the finalizer sees that the chunks differ from those the ready revision was
built from (`chunksDigest`) and writes revision n+1 under new file names — earlier files are never replaced — and
announces it (a new event id: the digest changed).

Idempotent: `recording.json` is created `finalizing` only if absent, files are committed only if absent (same
bytes from any finalizer: deterministic), and `ready` replaces the document only if it is unchanged since this
finalizer read it — of two racing finalizers one writes `ready` and publishes, the other sees it and stops. A
finalizer that dies mid-way leaves uncommitted blocks (invisible) and a `finalizing` document; the queue retries
the message, and the periodic sweep (`sweep`) asks again for every call whose recording is not ready and announced.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from common import call_state as cs
from common import manifest as mf
from common import wav
from common.layout import is_valid_call_id
from common.recording import Recording, RecordingStatus, chunks_digest_of, digest_of, parse_finalize_request
from common.retry import Backoff
from function_app import events, healing
from function_app import state as state_model
from function_app.assemble import Assembled, assemble
from function_app.completeness import completeness
from function_app.events import Publisher
from function_app.peaks import write_finished as write_finished_peaks
from function_app.store import RecordingConflict, RecordingStore

SETTLE_SECONDS = 5.0  # a session that began just before the call ended has written its entry by then
STALE_SECONDS = 600.0  # the sweep finalizes anyway this long after the call ended, naming unsettled sessions
FORGET_UNKNOWN_SECONDS = 86400.0  # a marker of a call that has no state this long is dropped
QUIET_SECONDS = 900.0  # a live call with no news this long: the sweep asks ACS whether the call still exists
PUBLISH_RETRY = Backoff(base=0.5, cap=8.0)
PUBLISH_ATTEMPTS = 5
ANNOUNCE_LEASE_SECONDS = 180.0  # longer than PUBLISH_ATTEMPTS tries with their backoff take
MAX_REVISION_STEPS = 5

log = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    FINALIZED = "finalized"
    ANNOUNCED = "announced"  # ready already; the event went out now
    ALREADY_DONE = "already_done"
    RACED = "raced"  # another finalizer wrote ready first
    CALL_LIVE = "call_live"
    SESSIONS_OPEN = "sessions_open"
    UNKNOWN_CALL = "unknown_call"


def parse_request(body: str | bytes) -> tuple[str, bool]:
    """A queue message (common.recording.FinalizeRequest) -> (call id, force). ValueError if unusable."""
    req = parse_finalize_request(body)
    if not is_valid_call_id(req.call_connection_id):
        raise ValueError("finalize request has no valid callConnectionId")
    return req.call_connection_id, req.force


def _empty() -> Assembled:
    return Assembled([], [], [], [], [], 0, 0)


@dataclass
class Finalizer:
    store: RecordingStore
    publisher: Publisher | None
    settle_seconds: float = SETTLE_SECONDS
    max_data_bytes: int = wav.MAX_DATA_BYTES
    restart_attempts: int = healing.DEFAULT_ATTEMPTS  # STREAMING_RESTART_ATTEMPTS, for the sweep's watchdog
    call_exists: Callable[[str], bool] | None = None  # asks ACS (function_app.acs.call_exists); None: never asked
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    stats: dict[str, Any] = field(default_factory=dict)  # what the last run did (benchmarks, logs)

    def run(self, call_id: str, *, force: bool = False) -> Outcome:
        extra = {"callConnectionId": call_id}
        rec, etag = self.store.read_recording(call_id)
        previous: Recording | None = None  # the ready revision that audio landing later has outdated
        if rec is not None and rec.status == RecordingStatus.READY:
            current = self.store.read_manifest_model(call_id)
            if current is None or rec.chunks_digest in (None, chunks_digest_of(current)):
                return self._announce(rec, etag)
            previous = rec
        state = self.store.read_state_model(call_id)
        if state is None:
            return Outcome.UNKNOWN_CALL
        if not state.ended:
            return Outcome.CALL_LIVE
        wait = _ended_at(state, self.clock()) + self.settle_seconds - self.clock()
        if wait > 0:
            self.sleep(min(wait, self.settle_seconds))
        manifest = self.store.read_manifest_model(call_id)
        open_sessions = [s.id for s in manifest.sessions if not s.settled] if manifest else []
        if open_sessions and not force:
            log.info("finalize %s: sessions still settling %s; their last write asks again", call_id,
                     open_sessions, extra=extra)
            return Outcome.SESSIONS_OPEN
        started = self.clock()
        if rec is None:
            rec = Recording(call_connection_id=call_id, status=RecordingStatus.FINALIZING,
                            correlation_id=state.correlation_id, finalizing_since=mf.now_iso())
            try:
                etag = self.store.write_recording(rec, None)
            except RecordingConflict:
                rec, etag = self.store.read_recording(call_id)
                if rec is not None and rec.status == RecordingStatus.READY:
                    return self._announce(rec, etag)
        unmixed = state.audio_channel == "unmixed" or (manifest is not None and any(
            s.participant_raw_id for s in manifest.streams))
        revision = previous.revision + 1 if previous is not None else 1
        built = _empty()
        for _ in range(MAX_REVISION_STEPS):  # a file of this revision stored from other chunks: the next one
            if manifest is None:
                break
            built = assemble(self.store, manifest, multichannel=unmixed, max_data_bytes=self.max_data_bytes,
                             revision=revision)
            if not built.conflicting_files:
                break
            revision += 1
        else:
            raise RuntimeError(f"finished files of {call_id} keep conflicting: {built.conflicting_files[:3]}")
        report = completeness(state, manifest, built.streams, self.clock())
        if built.mismatched_chunks or built.missing_chunks:
            note = (f" INTEGRITY: {len(built.mismatched_chunks)} chunk(s) differ from the hash the manifest lists "
                    f"and {len(built.missing_chunks)} listed chunk(s) are missing; the files hold what is stored.")
            report = msgspec.structs.replace(report, complete=False, statement=report.statement + note)
        if previous is not None:
            report = msgspec.structs.replace(report, statement=report.statement + (
                f" Revision {revision}: audio that landed after revision {previous.revision} was finalized is "
                "included; the earlier files are kept as they were."))
        digest = digest_of(manifest, built.files)
        peaks = write_finished_peaks(self.store, manifest, revision) if manifest is not None else None
        ready = Recording(
            call_connection_id=call_id, status=RecordingStatus.READY, revision=revision,
            correlation_id=state.correlation_id or (manifest.correlation_id if manifest else None),
            sample_rate=manifest.sample_rate if manifest else None,
            clock_origin=manifest.clock_origin if manifest else None, files=built.files,
            channel_map=built.channel_map, completeness=report, digest=digest,
            chunks_digest=chunks_digest_of(manifest), peaks_blob=peaks,
            finalizing_since=rec.finalizing_since if rec else None, ready_at=mf.now_iso(),
            event_id=events.event_id(call_id, digest.value))
        for _ in range(MAX_REVISION_STEPS):
            try:
                etag = self.store.write_recording(ready, etag)
                break
            except RecordingConflict:
                cur, etag = self.store.read_recording(call_id)
                # Replaced only if it is what this run read: a `finalizing` document, or the ready revision this
                # one outdates (changed meanwhile only by its announcer's lease). Any other ready revision is
                # another finalizer's, perhaps from other chunks than this run read: if so, look again from the
                # manifest as it is now (the next run sees which chunks that revision lacks, if any).
                outdated = previous is not None and cur is not None and cur.event_id == previous.event_id
                if cur is not None and cur.status == RecordingStatus.READY and not outdated:
                    if cur.chunks_digest != ready.chunks_digest:
                        self.store.request_finalize(call_id, "raced")
                    log.info("finalize %s: another finalizer was first", call_id, extra=extra)
                    return Outcome.RACED
        else:
            raise RuntimeError(f"the recording document of {call_id} keeps changing under the finalizer")
        self.stats = {"seconds": round(self.clock() - started, 3), "files": len(built.files),
                      "chunkReads": built.chunk_reads, "blocksStaged": built.blocks_staged, "revision": revision}
        log.info("recording of %s is ready: %d file(s), coverage %s", call_id, len(built.files),
                 report.coverage, extra={**extra, **self.stats})
        self._announce(ready, etag)
        return Outcome.FINALIZED

    def _announce(self, rec: Recording, etag: str | None) -> Outcome:
        """Publish RecordingReady once. A lease in recording.json (`announcingSince`, taken with the document's
        ETag) keeps two finalizers that race here — a queue retry and the sweep's request — from both publishing;
        a lease left by a process that died expires after ANNOUNCE_LEASE_SECONDS and the sweep tries again."""
        call_id = rec.call_connection_id
        if rec.announced_at is not None or self.publisher is None:
            self.store.mark_finished(call_id)
            return Outcome.ALREADY_DONE
        since = rec.announcing_since
        if since is not None and self.clock() - mf.parse_iso(since) < ANNOUNCE_LEASE_SECONDS:
            return Outcome.RACED  # another finalizer is publishing; the marker stays for the sweep
        try:
            leased = msgspec.structs.replace(rec, announcing_since=mf.now_iso())
            etag = self.store.write_recording(leased, etag)
        except RecordingConflict:
            return Outcome.RACED  # changed under us: whoever changed it carries on (or the sweep does)
        event = events.ready_event(rec)
        publisher = self.publisher
        try:
            PUBLISH_RETRY.run_sync("publishing RecordingReady", lambda: publisher.send([event]),
                                   retry_if=lambda _: True, attempts=PUBLISH_ATTEMPTS)
        except Exception:
            with contextlib.suppress(Exception):  # let the next try publish at once rather than after the lease
                self.store.write_recording(msgspec.structs.replace(leased, announcing_since=None), etag)
            raise
        announced = msgspec.structs.replace(leased, announced_at=mf.now_iso(), announcing_since=None)
        settled = False  # whether the stored document is this announced revision (then nothing is left to do)
        for _ in range(5):
            try:
                self.store.write_recording(announced, etag)
                settled = True
                break
            except RecordingConflict:
                cur, etag = self.store.read_recording(call_id)
                if cur is None or cur.event_id != rec.event_id:
                    break  # a newer revision replaced this one: its own finalizer announces it (or the sweep)
                if cur.announced_at is not None:
                    settled = True
                    break
                announced = msgspec.structs.replace(cur, announced_at=announced.announced_at, announcing_since=None)
        if settled:
            self.store.mark_finished(call_id)
        log.info("announced the recording of %s (event %s)", call_id, rec.event_id,
                 extra={"callConnectionId": call_id})
        return Outcome.ANNOUNCED

    def _ended_unseen(self, call_id: str) -> None:
        """ACS no longer knows a call whose state says it is live: its CallDisconnected never reached us. Recorded
        as a disconnect at the call's last sign of life (its newest event, or the end of its last session), so the
        recording is finalized rather than left live for good."""
        manifest = self.store.read_manifest_model(call_id)
        ends = [mf.instant(s.ended_at) for s in manifest.sessions] if manifest else []

        def ended(doc: dict[str, Any]) -> bool:
            state = msgspec.convert(doc, cs.CallState)
            last = _latest([*ends, *(mf.instant(e.time) for e in state.events)], self.clock())
            return state_model.apply_event(doc, {
                "id": f"recorder-sweep-{call_id}", "type": "Microsoft.Communication.CallDisconnected",
                "time": mf.utc_iso(last), "data": {"callConnectionId": call_id}})  # the id says who wrote it

        self.store.update_state(call_id, ended)
        log.warning("sweep: ACS no longer knows %s, whose CallDisconnected never arrived; recorded it as ended "
                    "and asking for its finalization", call_id, extra={"callConnectionId": call_id})
        self.store.request_finalize(call_id, "call_gone")

    def sweep(self) -> dict[str, int]:
        """For every call whose recording is not ready and announced: ask a finalizer again when the call has
        ended (forcing it once the call ended STALE_SECONDS ago); for a live one, plan the streaming restart a
        callback could not (see healing.overdue). Only reads here; the queues do the work."""
        counts: dict[str, int] = {}
        now = self.clock()
        for call_id, marked in self.store.unfinished_calls():
            try:
                state = self.store.read_state_model(call_id)
                if state is None:
                    if now - marked.timestamp() > FORGET_UNKNOWN_SECONDS:
                        self.store.mark_finished(call_id)
                    verdict = "unknown"
                elif not state.ended:
                    verdict = "live"
                    restart = healing.overdue(state, self.restart_attempts, now)
                    if restart is not None:  # the watchdog: a restart that should be under way is not
                        log.warning("sweep: media streaming of %s is down since %s and no restart is under way; "
                                    "planning attempt %d", call_id, restart.outage_at, restart.attempt,
                                    extra={"callConnectionId": call_id})
                        healing.schedule(self.store, restart)
                        verdict = "restart"
                    elif (self.call_exists is not None and now - _last_news(state) > QUIET_SECONDS
                          and not self.call_exists(call_id)):
                        self._ended_unseen(call_id)
                        verdict = "ended_unseen"
                else:
                    force = now - _ended_at(state, marked.timestamp()) > STALE_SECONDS
                    self.store.request_finalize(call_id, "sweep", force=force)
                    verdict = "forced" if force else "requested"
            except Exception:
                log.exception("sweep could not look at %s", call_id, extra={"callConnectionId": call_id})
                verdict = "error"
            counts[verdict] = counts.get(verdict, 0) + 1
        if counts:
            log.info("sweep: %s", counts)
        return counts


def _latest(times: list[float | None], otherwise: float) -> float:
    return max((t for t in times if t is not None), default=otherwise)


def _last_news(state: cs.CallState) -> float:
    """When the call state last changed (our clock), or its newest event's time."""
    return _latest([mf.instant(state.updated_at), *(mf.instant(e.time) for e in state.events)], 0.0)


def _ended_at(state: cs.CallState, otherwise: float) -> float:
    """When the call disconnected (ACS's event time), or `otherwise` when that is not known."""
    try:
        return mf.parse_iso(state.disconnected_at) if state.disconnected_at else otherwise
    except ValueError:
        return otherwise
