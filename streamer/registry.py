"""The sessions a process holds: open ones, ones finishing (closed, final manifest pending), and the drain.

One home for session lifecycle bookkeeping, so that neither the endpoint nor the app reaches into sessions, and
sessions know nothing of either.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from websockets.frames import CloseCode

from common.manifest import EndReason
from streamer.metrics import Metrics
from streamer.session import ProtocolClose, Session
from streamer.sink import FramesLog, UploadSink
from streamer.timeline import TimelineStats

log = logging.getLogger(__name__)

SessionFactory = Callable[..., Session]  # (call_id, correlation_id, channel, *, session_id=, started_at=)


class SessionRegistry:
    def __init__(self, sink: UploadSink, metrics: Metrics, make_session: SessionFactory):
        self.sink = sink
        self.metrics = metrics
        self.make_session = make_session
        self.sessions: set[Session] = set()
        self.finishing: dict[asyncio.Task[None], Session] = {}
        self.background: set[asyncio.Task[None]] = set()  # fire-and-forget tasks, kept referenced
        self.draining = False
        metrics.live_streams = self.live_stats

    def __len__(self) -> int:
        return len(self.sessions)

    def live_stats(self) -> Iterator[TimelineStats]:
        """Per-stream counters of the sessions still open (for /metrics while calls run)."""
        return (s.timeline.stats for s in self.sessions if s.timeline is not None)

    def opened(self, session: Session) -> None:
        self.sessions.add(session)
        self.metrics.sessions_started += 1
        self.metrics.active_calls += 1
        session.start()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def end(self, session: Session, code: int, clean: bool, reason: EndReason | None = None) -> None:
        """The socket is gone: seal and flush the session, then finish it in the background. Idempotent."""
        if session.closed:
            return
        try:
            session.close(code, clean, reason)
        except Exception:  # never leave a session half-ended: it would hold its slot and its audio forever
            log.exception("flushing the stream failed", extra=session.fields)
        self.sessions.discard(session)
        self.metrics.active_calls -= 1
        if session.timeline is not None:
            self.metrics.session_ended(session.timeline.stats)
        log.info("stream closed", extra={**session.fields, "closeCode": session.close_code, "clean": clean,
                                         "endReason": session.end_reason,
                                         "frames": session.timeline.stats.frames if session.timeline else 0})
        self._finish(session)

    def _finish(self, session: Session) -> asyncio.Task[None]:
        task = asyncio.create_task(session.finish(), name=f"finish-{session.id}")
        self.finishing[task] = session  # a shutdown meanwhile waits for it, then spools what is left
        self.metrics.finishing_sessions += 1
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        if self.finishing.pop(task, None) is not None:
            self.metrics.finishing_sessions -= 1

    async def replay(self, frames_log: FramesLog) -> None:
        """A session that was still waiting for its clock when its process stopped (or died): replay what it held
        on the call clock, as the live session would have, and close it as it ended (or as `never_closed`)."""
        h = frames_log.header
        session = self.make_session(h["callConnectionId"], h.get("correlationId"), h.get("channel") or "auto",
                                    session_id=h["sessionId"], started_at=h.get("startedAt"))
        session.adopt_frames_log(frames_log)
        end = frames_log.end_record()
        session.start()
        if end is None:
            session.close(CloseCode.ABNORMAL_CLOSURE, False, EndReason.NEVER_CLOSED)
        else:
            reason = end.get("endReason")
            session.close(end.get("closeCode") or CloseCode.ABNORMAL_CLOSURE, bool(end.get("cleanClose")),
                          EndReason(reason) if isinstance(reason, str) and reason in set(EndReason) else None)
            session.ended_at = end.get("endedAt") or session.ended_at
        await self._finish(session)
        log.info("held frames replayed", extra={**session.fields, "frames": session.timeline.stats.frames
                                                if session.timeline else 0})

    async def replay_held_frames(self) -> None:
        """Sessions an earlier process held frames for (clock unknown at the time): replay each in turn."""
        for path in self.sink.spool.frames_logs():
            try:
                frames_log = FramesLog.open(path)
            except (OSError, ValueError) as exc:
                log.error("unreadable frames log left in the spool", extra={"path": str(path), "error": str(exc)})
                continue
            try:
                await self.replay(frames_log)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("replaying held frames failed; kept for the next start", extra={"path": str(path)})

    async def drain(self, grace_seconds: float) -> None:
        """Flush every open stream, wait for uploads until the grace deadline, spool what is left."""
        self.draining = True
        deadline = time.monotonic() + grace_seconds
        for s in list(self.sessions):
            # Not a clean end: ACS is told to go elsewhere (1012) and may continue the call on another replica.
            self.end(s, CloseCode.SERVICE_RESTART, False, EndReason.DRAIN)
        remaining = max(0.0, deadline - time.monotonic())
        await self.sink.wait_idle(remaining * 0.8)
        if self.finishing:
            await asyncio.wait(set(self.finishing), timeout=max(0.0, deadline - time.monotonic()))
        left = await self.sink.stop_and_spool()
        # Sessions whose final manifest write has not landed (chunks still queued, or storage refusing the
        # manifest itself) are still finishing: their parts go beside the spooled chunks for the next start.
        unfinished = set(self.finishing.values())
        for t in list(self.finishing):
            t.cancel()
        for s in unfinished:
            s.spool_part()
        log.info("drained", extra={"spooledChunks": len(left), "spooledSessions": len(unfinished)})

    def fatal_closer(self, session: Session, close: Callable[[int, str], Coroutine[Any, Any, Any]]
                     ) -> Callable[[ProtocolClose], None]:
        """What a session calls when it must close its socket while the socket is idle (held messages replayed,
        the call refused)."""

        def fatal(exc: ProtocolClose) -> None:
            log.warning("closing stream: %s", exc.reason, extra={**session.fields, "closeCode": exc.code})
            internal = exc.code == CloseCode.INTERNAL_ERROR
            self.end(session, exc.code, not internal, EndReason.SERVER_ERROR if internal else EndReason.PROTOCOL_ERROR)
            self.spawn(close(exc.code, exc.reason))

        return fatal
