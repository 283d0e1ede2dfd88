"""The one retry policy: capped exponential backoff with full jitter, and a hook that counts every retry.

Full jitter (a uniform delay in [0, min(cap, base·2^attempt)]) spreads the retries of many sessions, upload
workers and replicas after an outage, instead of letting them hit storage again in lockstep. Everything that
retries uses it: chunk uploads, manifest merges, clock loads, spool recovery and the function app's ETag-guarded
writes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
RetryHook = Callable[[str, int, BaseException], None]  # (what, attempt, error) -> None


@dataclass(frozen=True)
class Backoff:
    base: float = 0.2
    cap: float = 5.0
    on_retry: RetryHook | None = None  # e.g. a metrics counter; called before each wait

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1 = the first retry)."""
        return random.uniform(0, min(self.cap, self.base * 2 ** min(max(attempt, 0), 16)))

    def note(self, what: str, attempt: int, exc: BaseException) -> None:
        if self.on_retry is not None:
            self.on_retry(what, attempt, exc)

    async def run(self, what: str, op: Callable[[], Awaitable[T]], *,
                  retry_if: Callable[[BaseException], bool] = lambda _: True,
                  timeout: float | None = None, attempts: int | None = None,
                  on_failure: Callable[[int, BaseException], None] | None = None) -> T:
        """Await `op()` until it succeeds. An error `retry_if` rejects, cancellation, or the last of `attempts`
        is raised; `on_failure(attempt, exc)` runs before each wait (logging, spilling to disk)."""
        attempt = 0
        while True:
            try:
                if timeout is None:
                    return await op()
                # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that arrives as the operation
                # completes, and a loop around it (an upload worker at shutdown) then never stops.
                async with asyncio.timeout(timeout):
                    return await op()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                if not retry_if(exc) or (attempts is not None and attempt >= attempts):
                    raise
                self.note(what, attempt, exc)
                if on_failure is not None:
                    on_failure(attempt, exc)
                await asyncio.sleep(self.delay(attempt))

    def run_sync(self, what: str, op: Callable[[], T], *, retry_if: Callable[[BaseException], bool],
                 attempts: int) -> T:
        """`run` for blocking code (the function app's storage client)."""
        attempt = 0
        while True:
            try:
                return op()
            except Exception as exc:
                attempt += 1
                if not retry_if(exc) or attempt >= attempts:
                    raise
                self.note(what, attempt, exc)
                time.sleep(self.delay(attempt))
