"""Overload: how late the event loop runs, the signal upgrade admission and readiness shed new calls on.

One process, one core: every frame, chunk upload and call open shares one event loop. When call opens arrive
faster than the core can take them (a failover sends a dead replica's calls to the survivors at once), the loop
falls behind and every live call's frames and chunks wait. Its lag covers every CPU cause and none that is not
CPU (a storage outage leaves the loop idle and is readiness's other check), so admission refuses new upgrades with
503 + Retry-After while the loop keeps running late, and the calls already here keep their core. Keeps: one stall
(a first import, a garbage collection, a burst of chunk seals) is not overload, and shedding on it would refuse
calls a replica has room for; two late samples within a second are, and shedding then holds for that second.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque

SAMPLE_SECONDS = 0.05  # how often the loop's lateness is sampled
WINDOW = 20  # samples kept: about the last second
LATE_SAMPLES = 2  # overloaded: this many samples of the window were late


class LoopLag:
    def __init__(self) -> None:
        self._samples: deque[float] = deque([0.0] * WINDOW, maxlen=WINDOW)
        self.worst = 0.0  # since start, for /metrics

    @property
    def seconds(self) -> float:
        """How late the loop has run in the last second, one stall aside: the second-worst sample."""
        return heapq.nlargest(LATE_SAMPLES, self._samples)[-1]

    def over(self, limit: float) -> bool:
        return self.seconds > limit

    async def run(self) -> None:
        while True:
            due = time.monotonic() + SAMPLE_SECONDS
            await asyncio.sleep(SAMPLE_SECONDS)
            late = max(0.0, time.monotonic() - due)
            self._samples.append(late)
            self.worst = max(self.worst, late)
