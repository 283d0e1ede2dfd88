"""Call churn: what a call open and close costs in storage requests, and shedding when the replica falls behind."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from benchmarks.harness import parse_metrics
from common import manifest as mf
from devstack.serve import ServerThread
from streamer.app import create_app
from streamer.settings import Settings
from streamer.store import MemoryBackend
from tests import recording as rec
from tests.acs_frames import at, audio, metadata, tone_pcm
from tests.test_streamer_integrity import _call_state
from tests.test_streamer_ws import headers, send_all


def _requests(s, what: str) -> dict[str, int]:
    """Storage requests the streamer counted for `what` (manifest, chunk, call_state), by method."""
    prefix = "acs_streamer_storage_requests_total{"
    return {k.split('method="')[1].split('"')[0]: int(v) for k, v in s.metrics().items()
            if k.startswith(prefix) and f'what="{what}"' in k}


def _settled(s, sessions: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = s.metrics()
        if m["acs_streamer_sessions_total"] >= sessions and m["acs_streamer_finishing_sessions"] == 0 \
                and m["acs_streamer_active_calls"] == 0:
            return
        time.sleep(0.1)
    raise AssertionError("the streamer did not settle its sessions")


def test_a_new_call_costs_five_storage_requests_and_a_reconnect_takes_the_stored_clock(streamer_factory,
                                                                                      token_issuer):
    """A new call: the call state read (is it a call we placed or answered?), the manifest created with the
    clock and the session (no read first), the chunk, the final manifest, and the call state read after it
    (has the call ended? then ask for finalization). A second session of the call finds the manifest there and
    continues the same clock, placing its audio after the first session's, and is listed in the manifest as soon
    as it has the clock."""
    s = streamer_factory(STREAMER_CALL_CHECK="enabled")
    _call_state(s.container, "churn-1", status="connected")
    first, second = tone_pcm(50, seed=30), tone_pcm(50, seed=31)  # one 1-s chunk each

    asyncio.run(send_all(s.ws, [metadata(), *(audio(f, at(i), participant=None) for i, f in enumerate(first))],
                         headers(token_issuer.token(), "churn-1")))
    _settled(s, 1)
    assert _requests(s, "manifest") == {"PUT": 2}  # the claim (create-if-absent) and the final write
    assert _requests(s, "chunk") == {"PUT": 1}
    assert _requests(s, "call_state") == {"GET": 2}

    asyncio.run(send_all(s.ws, [metadata(), *(audio(f, at(100 + i), participant=None)
                                              for i, f in enumerate(second))],
                         headers(token_issuer.token(), "churn-1")))
    _settled(s, 2)
    # the create found a manifest: read it, list the session at once (so the manifest cannot read complete while
    # this session is open and unlisted), final write
    assert _requests(s, "manifest") == {"PUT": 5, "GET": 1}
    m = rec.wait_complete(s.container, "churn-1", sessions=2)
    assert [c["seq"] for st in m["streams"] for c in st["chunks"]] == [0, 2]  # 2 s later on the same clock
    assert len(m["sessions"]) == 2 and all(x["complete"] for x in m["sessions"])
    stitched = rec.stitched(s.container, m, "mixed")
    assert stitched.startswith(b"".join(first)) and stitched.endswith(b"".join(second))


def test_an_unknown_call_is_refused_without_waiting_for_its_audio(streamer_factory, token_issuer):
    """The call-state check runs while the first audio is awaited: a call that has ended is refused even if it
    never sends a frame, and nothing is written for it."""
    s = streamer_factory(STREAMER_CALL_CHECK="enabled")
    _call_state(s.container, "churn-ended", status="disconnected", disconnectedAt="2026-01-01T00:00:00Z")
    code = asyncio.run(send_all(s.ws, [metadata()], headers(token_issuer.token(), "churn-ended"),
                                expect_close=True, close_timeout=5))
    assert code == 1008
    assert _requests(s, "manifest") == {}
    assert not s.container.get_blob_client("churn-ended/manifest.json").exists()


class _Stalls:
    """Block the server's event loop again and again, as a core saturated by call opens would: 0.3 s at a time with
    a few ms free in between, from a thread, until stopped."""

    def __init__(self, server: ServerThread, each: float = 0.3):
        self.server, self.each = server, each
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        assert self.server.loop is not None
        while not self._stop.is_set():
            self.server.loop.call_soon_threadsafe(time.sleep, self.each)
            time.sleep(self.each + 0.02)

    def __enter__(self) -> _Stalls:
        self._thread.start()
        time.sleep(6 * (self.each + 0.02))  # long enough for most of the lag samples to be late
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_replica_behind_sheds_new_calls_with_503_and_keeps_the_ones_it_has(tmp_path):
    backend = MemoryBackend()
    settings = Settings.from_env({"STREAMER_AUTH": "disabled", "STREAMER_CALL_CHECK": "disabled",
                                  "AZURE_STORAGE_CONNECTION_STRING": "unused", "CHUNK_SECONDS": "1",
                                  "SPOOL_DIR": str(tmp_path / "spool"), "MAX_LOOP_LAG_SECONDS": "0.2"})
    frames = tone_pcm(100, seed=32)
    with ServerThread(create_app(settings, backend)) as server:
        ws_url = f"ws://127.0.0.1:{server.port}/ws"
        assert httpx.get(f"{server.url}/readyz").status_code == 200

        async def run() -> None:
            async with connect(ws_url, additional_headers=headers(None, "churn-live")) as live:
                await live.send(metadata())
                for i, f in enumerate(frames[:50]):
                    await live.send(audio(f, at(i), participant=None))
                # One stall is not overload: nothing is shed for it.
                assert server.loop is not None
                server.loop.call_soon_threadsafe(time.sleep, 0.6)
                await asyncio.sleep(0.7)
                ready = await asyncio.to_thread(httpx.get, f"{server.url}/readyz")
                assert ready.status_code == 200, ready.text
                with _Stalls(server):  # a loop that stays behind: new calls are shed
                    ready = await asyncio.to_thread(httpx.get, f"{server.url}/readyz")
                    assert (ready.status_code, ready.json()["status"]) == (503, "overloaded")
                    with pytest.raises(InvalidStatus) as err:
                        async with connect(ws_url, additional_headers=headers(None, "churn-new")):
                            pass
                    assert (err.value.response.status_code, err.value.response.headers["Retry-After"]) == (503, "1")
                for i, f in enumerate(frames[50:], start=50):  # the call already here streams on
                    await live.send(audio(f, at(i), participant=None))

        asyncio.run(run())
        deadline = time.monotonic() + 5
        while httpx.get(f"{server.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "readiness did not come back once the loop caught up"
            time.sleep(0.1)
        asyncio.run(send_all(ws_url, [metadata(), *(audio(f, at(200 + i), participant=None)
                                                    for i, f in enumerate(frames[:10]))],
                             headers(None, "churn-new")))
        metrics = parse_metrics(httpx.get(f"{server.url}/metrics").text)
        assert metrics['acs_streamer_refusals_total{reason="overloaded"}'] == 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = mf.loads(backend.blobs["churn-live/manifest.json"].data)
            if m.complete:
                break
            time.sleep(0.1)
        assert m.complete and sum(len(st.chunks) for st in m.streams) == 2  # all 100 frames of the live call
        assert "churn-new/manifest.json" in backend.blobs
