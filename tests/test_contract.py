"""The typed contract between the planes: committed JSON Schemas match the models, and /metrics parses."""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import connect

from common import schema
from tests.acs_frames import at as frame_time
from tests.acs_frames import audio, metadata, tone_pcm
from tests.test_streamer_ws import headers


def test_committed_json_schemas_are_what_the_models_say():
    assert schema.stale() == [], "run: python -m common.schema"


def test_a_running_calls_anomalies_reach_metrics_before_it_ends(streamer_factory, token_issuer):
    """Late, duplicate and gap counts of a session still streaming are exported at every scrape, not only when
    the session ends (a long call's trouble is visible while it runs)."""
    s = streamer_factory()
    frames = tone_pcm(20)
    seen: dict[str, float] = {}

    async def run() -> None:
        async with connect(s.ws, additional_headers=headers(token_issuer.token(), "live-metrics")) as ws:
            await ws.send(metadata())
            for i in (0, 1, 2, 5, 6):  # 3 and 4 skipped: a gap
                await ws.send(audio(frames[i], frame_time(i), participant=None))
            await ws.send(audio(frames[6], frame_time(6), participant=None))  # a duplicate
            for _ in range(100):
                await asyncio.sleep(0.1)
                m = await asyncio.to_thread(s.metrics)
                if m.get("acs_streamer_duplicate_frames_total") and m.get("acs_streamer_gap_frames_total"):
                    seen.update(m)
                    break

    asyncio.run(run())
    assert seen.get("acs_streamer_active_calls") == 1, "scraped while the call was open"
    assert seen["acs_streamer_gap_frames_total"] == 2 and seen["acs_streamer_duplicate_frames_total"] == 1
    after = s.metrics()  # ended: the totals carry over from the running session, not counted twice
    assert after["acs_streamer_gap_frames_total"] == 2 and after["acs_streamer_duplicate_frames_total"] == 1
