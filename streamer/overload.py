"""Overload: how late the event loop runs, the signal upgrade admission and readiness shed new calls on.

One process, one core: every frame, chunk upload and call open shares one event loop. When call opens arrive
faster than the core can take them (a failover sends a dead replica's calls to the survivors at once), the loop
falls behind and every live call's frames and chunks wait. Its lag covers every CPU cause and none that is not
CPU (a storage outage leaves the loop idle and is readiness's other check), so admission refuses new upgrades with
503 + Retry-After while the lag is over the limit, and calls already here keep their core.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

SAMPLE_SECONDS = 0.05  # how often the loop's lateness is sampled
WINDOW_SAMPLES = 20  # lag = the worst of the last second's samples


class LoopLag:
    def __init__(self) -> None:
        self._samples: deque[float] = deque([0.0], maxlen=WINDOW_SAMPLES)
        self.worst = 0.0  # since start, for /metrics
        self._due = float("inf")  # when the sampler's current sleep should end

    @property
    def seconds(self) -> float:
        """The loop's worst lateness over the last second (while the sampler is itself late, how late it is now)."""
        return max(max(self._samples), time.monotonic() - self._due)

    async def run(self) -> None:
        while True:
            self._due = time.monotonic() + SAMPLE_SECONDS
            await asyncio.sleep(SAMPLE_SECONDS)
            late = max(0.0, time.monotonic() - self._due)
            self._samples.append(late)
            self.worst = max(self.worst, late)
