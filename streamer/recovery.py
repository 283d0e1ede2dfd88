"""Spool recovery at start: land what a previous process left in the spool and finish its sessions' manifests.

Chunks are uploaded (first write wins, as always), the manifest parts sessions spooled at shutdown are merged,
and sessions a hard kill left open (an `open.` marker and no part) are marked `never_closed` with the span their
landed chunks cover. Retries, with the one backoff policy, until done or told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from msgspec.structs import replace

from common import manifest as mf
from common.retry import Backoff
from streamer.metrics import Metrics
from streamer.sink import ChunkJob, Spool
from streamer.store import PermanentChunkError, RecordingStore, RequestRejected

log = logging.getLogger(__name__)


async def recover_spool(spool: Spool, store: RecordingStore, metrics: Metrics, *, retry_seconds: float = 5.0,
                        stop: asyncio.Event | None = None) -> int:
    """-> chunks recovered. A call whose recovery fails is tried again after a backoff, the others go on."""
    policy = Backoff(cap=retry_seconds, on_retry=metrics.retried)
    recovered = 0
    unreadable: dict[str, int] = {}
    pending = spool.scan(unreadable)
    metrics.chunks_quarantined += sum(unreadable.values())
    attempt = 0
    while pending:
        for call_id, (jobs, parts, markers) in list(pending.items()):
            try:
                recovered += await _recover_call(spool, store, metrics, call_id, jobs, parts, markers,
                                                 lost_chunk=call_id in unreadable)
                del pending[call_id]
            except Exception as exc:
                log.warning("spool recovery failed; will retry",
                            extra={"callConnectionId": call_id, "error": str(exc)[:300]})
        if pending:
            if stop is not None and stop.is_set():
                break
            attempt += 1
            policy.note("spool recovery", attempt, RuntimeError("calls left"))
            await asyncio.sleep(min(retry_seconds, policy.delay(attempt) + 0.5))
    return recovered


async def _recover_call(spool: Spool, store: RecordingStore, metrics: Metrics, call_id: str, jobs: list[ChunkJob],
                        parts: list[Path], markers: list[Path], *, lost_chunk: bool = False) -> int:
    landed: dict[str, list[mf.Chunk]] = {}
    participants: dict[str, str | None] = {}
    quarantined: dict[str, list[mf.QuarantinedChunk]] = {}
    done: list[ChunkJob] = []
    for job in jobs:
        ref = job.ref
        if job.quarantined is None:
            try:
                data = spool.read_chunk(job)
            except OSError as exc:  # its sidecar is there, its audio cannot be read: nothing can ever land
                _quarantine(spool, metrics, job, f"spooled chunk unreadable: {exc}")
            else:
                try:
                    result = await store.put_chunk(job.blob, data, job.mask, job.frame_bytes)
                except (PermanentChunkError, RequestRejected) as exc:
                    _quarantine(spool, metrics, job, str(exc))
        if job.quarantined is not None:
            quarantined.setdefault(ref.session_id, []).append(
                mf.QuarantinedChunk(stream=ref.stream, seq=ref.seq, reason=job.quarantined))
            continue
        metrics.slot_conflicts += result.conflicts
        landed.setdefault(ref.stream, []).append(result.entry(job.blob, ref))
        participants[ref.stream] = ref.participant_raw_id
        done.append(job)
    # The call clock travels with every spooled chunk: the manifest may not have survived whatever killed us.
    clock = next((j.clock for j in jobs if j.clock is not None), None)
    merged = mf.merge(None, clock) if clock is not None else None
    merged = mf.merge(merged, mf.Part(
        call_connection_id=call_id,
        streams=[mf.Stream(stream=s, participant_raw_id=participants[s], chunks=c) for s, c in landed.items()],
        sessions=[mf.Session(id=sid, quarantined_chunks=q) for sid, q in quarantined.items()]))
    spooled_sessions = set()
    for path in parts:
        try:
            saved = mf.loads_part(path.read_bytes())
        except (OSError, ValueError) as exc:  # damaged: kept for an operator; its session (named in the file
            _set_aside(spool, call_id, path, exc)  # name) is settled as not complete, so the call is not either
            sid = path.name[len("part."):-len(".json")]
            if 0 < len(sid) <= 128:
                spooled_sessions.add(sid)
                # frames=1: it carried audio (it wrote a part), so it counts, and the call cannot read complete
                merged = mf.merge(merged, mf.Part(call_connection_id=call_id, sessions=[mf.Session(
                    id=sid, frames=1, complete=False, settled=True, end_reason=mf.EndReason.SERVER_ERROR)]))
            continue
        sessions = []
        for sess in saved.sessions:
            # Every chunk of the session has now landed (or is quarantined): it is complete if it ended well.
            spooled_sessions.add(sess.id)
            reason = sess.end_reason or (mf.EndReason.PEER_CLOSED if sess.clean_close else mf.EndReason.PEER_LOST)
            complete = (reason in mf.COMPLETE_REASONS and not sess.quarantined_chunks and sess.id not in quarantined
                        and not lost_chunk)
            sessions.append(replace(sess, complete=complete, settled=True))
        merged = mf.merge(merged, replace(saved, sessions=sessions))
    never_closed = []
    for marker in markers:
        try:
            info = mf.loads_session(marker.read_bytes())
        except (OSError, ValueError) as exc:
            _set_aside(spool, call_id, marker, exc)
            continue
        if info.id not in spooled_sessions:
            never_closed.append(info.id)
            merged = mf.merge(merged, mf.Part(call_connection_id=call_id, sessions=[replace(
                info, end_reason=mf.EndReason.NEVER_CLOSED, complete=False, settled=True)]))
    written = await store.merge_manifest(call_id, merged)
    if never_closed and written.manifest is not None:
        spans = mf.span_of(written.manifest, set(never_closed))
        if spans:
            await store.merge_manifest(call_id, mf.Part(call_connection_id=call_id, sessions=[
                mf.Session(id=sid, covered_from=a, covered_until=b) for sid, (a, b) in spans.items()]),
                cached=written)
        log.warning("sessions of a process that died were marked never_closed",
                    extra={"callConnectionId": call_id, "sessions": never_closed})
    metrics.manifest_writes += 1
    try:
        await store.settled(call_id, written.manifest)
    except Exception as exc:
        log.warning("could not ask for finalization", extra={"callConnectionId": call_id, "error": str(exc)[:300]})
    for job in done:
        spool.remove_chunk(job)
    for p in [*parts, *markers]:
        p.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (spool.root / call_id).rmdir()
    log.info("spool recovered", extra={"callConnectionId": call_id, "chunks": len(done)})
    return len(done)


def _quarantine(spool: Spool, metrics: Metrics, job: ChunkJob, reason: str) -> None:
    job.quarantined = reason[:300]
    metrics.chunks_quarantined += 1
    spool.quarantine(job, job.quarantined)
    log.error("chunk quarantined: it can never land as it is; kept for an operator",
              extra={"callConnectionId": job.call_id, "blob": job.blob, "reason": job.quarantined})


def _set_aside(spool: Spool, call_id: str, path: Path, exc: Exception) -> None:
    """A spooled manifest part or open-session marker that cannot be read: retrying cannot help, and the rest of
    the call must still be recovered. Logged like a quarantined chunk, so the same alert fires."""
    folder = spool.set_aside(call_id, [path])
    log.error("chunk quarantined: a spooled session record is unreadable; kept for an operator",
              extra={"callConnectionId": call_id, "path": str(folder / path.name), "error": str(exc)[:200]})
