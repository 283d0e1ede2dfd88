"""Faults that must not lose audio: storage outage mid-call, SIGTERM mid-chunk, spool and recovery on restart."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from devstack.azurite import Azurite
from devstack.serve import ServerThread
from streamer.app import create_app
from streamer.settings import Settings
from streamer.store import MemoryBackend, StorageUnavailable
from tests import recording as rec
from tests.acs_frames import at, audio, metadata, tone_pcm
from tests.test_streamer_ws import headers, send_all


async def paced(url: str, hdrs: dict[str, str], frames: list[bytes], *, frame_seconds: float = 0.02,
                during: dict[int, object] | None = None) -> None:
    """Send frames at ACS's real cadence; at frame i, start `during[i]` (a blocking callable) in a thread."""
    background = []
    async with connect(url, additional_headers=hdrs) as ws:
        await ws.send(metadata())
        t0 = time.monotonic()
        for i, f in enumerate(frames):
            if during and i in during:
                background.append(asyncio.create_task(asyncio.to_thread(during[i])))  # type: ignore[arg-type]
            await ws.send(audio(f, at(i), participant=None))
            delay = t0 + (i + 1) * frame_seconds - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    await asyncio.gather(*background)


@pytest.mark.parametrize("outage_seconds", [10, 30])
def test_storage_down_mid_call_loses_nothing(streamer_factory, token_issuer, tmp_path, outage_seconds):
    az = Azurite(location=tmp_path / "azurite").start()
    try:
        s = streamer_factory(storage=az)
        seconds = outage_seconds + 5
        frames = tone_pcm(seconds * 50)  # real time; storage is down from 3 s for `outage_seconds`
        seen: dict[str, int] = {}

        def outage() -> None:
            az.stop()
            time.sleep(1.0)
            seen["readyz_during_outage"] = httpx.get(f"{s.http}/readyz", timeout=10).status_code
            time.sleep(outage_seconds - 1.0)
            az.start()

        asyncio.run(paced(s.ws, headers(token_issuer.token(), "call-outage"), frames, during={150: outage}))
        m = rec.wait_complete(s.container, "call-outage", timeout=60)
        assert rec.sha(rec.stitched(s.container, m, "mixed")) == rec.sha(b"".join(frames))
        assert [c["seq"] for c in m["streams"][0]["chunks"]] == list(range(seconds))
        metrics = s.metrics()
        assert metrics["acs_streamer_upload_retries_total"] > 0
        assert seen["readyz_during_outage"] == 503
        assert httpx.get(f"{s.http}/readyz").status_code == 200
    finally:
        az.close()


def test_sigterm_mid_chunk_flushes_every_stream_and_exits_zero(streamer_factory, token_issuer):
    s = streamer_factory(CHUNK_SECONDS="10")
    calls = {f"call-term-{n}": tone_pcm(150, seed=n) for n in range(100)}  # 3 s each: mid-chunk

    async def run() -> None:
        sockets = []
        for call_id, frames in calls.items():
            ws = await connect(s.ws, additional_headers=headers(token_issuer.token(), call_id))
            await ws.send(metadata())
            for i, f in enumerate(frames):
                await ws.send(audio(f, at(i), participant=None))
            sockets.append(ws)
        await asyncio.sleep(0.5)  # every frame received; chunks still open
        t0 = time.monotonic()
        code = await asyncio.to_thread(s.process.terminate, 30)
        assert code == 0, s.process.log()[-3000:]
        assert time.monotonic() - t0 < float(s.env["SHUTDOWN_GRACE_SECONDS"]) + 5
        for ws in sockets:
            await ws.wait_closed()
            assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code in (1001, 1012)

    asyncio.run(run())
    for call_id, frames in calls.items():
        m = rec.manifest(s.container, call_id)
        assert rec.stitched(s.container, m, "mixed") == b"".join(frames)
        # A drain is our restart, not the end of the stream: ACS may continue the call on another replica.
        (session,) = m["sessions"]
        assert (m["complete"], session["endReason"], session["closeCode"]) == (False, "drain", 1012), call_id


async def live_then(url: str, hdrs: dict[str, str], container, call_id: str, then, rest: list[str]) -> None:
    """Open a call with its first frame, wait until it is live (its clock is claimed: the manifest exists), run
    `then` (e.g. stop storage), send the rest."""
    async with connect(url, additional_headers=hdrs) as ws:
        await ws.send(metadata())
        await ws.send(rest[0])
        deadline = time.monotonic() + 10
        while not container.get_blob_client(f"{call_id}/manifest.json").exists():
            assert time.monotonic() < deadline, "the call never went live"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(then)
        for m in rest[1:]:
            await ws.send(m)


def test_storage_down_longer_than_memory_spools_and_recovers_on_next_start(streamer_factory, token_issuer,
                                                                             tmp_path):
    az = Azurite(location=tmp_path / "azurite").start()
    spool = tmp_path / "spool-shared"
    try:
        s = streamer_factory(storage=az, UPLOAD_MEMORY_BYTES="40000", SPOOL_DIR=str(spool),
                             SHUTDOWN_GRACE_SECONDS="3")
        frames = tone_pcm(5 * 50)
        msgs = [audio(f, at(i), participant=None) for i, f in enumerate(frames)]
        asyncio.run(live_then(s.ws, headers(token_issuer.token(), "call-spool"), s.container, "call-spool",
                              az.stop, msgs))
        time.sleep(1.0)
        assert s.metrics()["acs_streamer_chunks_spooled_total"] >= 3
        assert s.process.terminate(30) == 0
        spooled = sorted(p.name for p in (spool / "call-spool").iterdir())
        assert sum(n.endswith(".wav") for n in spooled) == 5 and any(n.startswith("part.") for n in spooled)

        az.start()
        s2 = streamer_factory(storage=az, RECORDINGS_CONTAINER=s.container_name, SPOOL_DIR=str(spool))
        m = rec.wait_complete(s2.container, "call-spool", timeout=30)
        assert rec.stitched(s2.container, m, "mixed") == b"".join(frames)
        assert m["sessions"][0]["cleanClose"] is True
        deadline = time.monotonic() + 10
        while (spool / "call-spool").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not (spool / "call-spool").exists(), list(Path(spool).rglob("*"))
    finally:
        az.close()


class _ManifestOutage(MemoryBackend):
    """Blob Storage that takes chunks but refuses manifest writes while `manifests_down` is set — except a call's
    first manifest write (the clock claim), so that the call goes live."""

    manifests_down = False

    def _refuse(self, name: str) -> bool:
        return self.manifests_down and name.endswith("/manifest.json") and name in self.blobs

    async def create(self, name: str, data: bytes, metadata: dict[str, str], content_type: str) -> str:
        if self._refuse(name):
            raise StorageUnavailable("manifest writes refused")
        return await super().create(name, data, metadata, content_type)

    async def replace(self, name: str, data: bytes, etag: str, metadata: dict[str, str],
                      content_type: str) -> str:
        if self._refuse(name):
            raise StorageUnavailable("manifest writes refused")
        return await super().replace(name, data, etag, metadata, content_type)


def test_shutdown_spools_the_manifest_part_of_a_call_whose_chunks_landed_but_manifest_did_not(tmp_path):
    """Every chunk landed, then storage refused the final manifest write until SIGTERM: the session's part
    (chunk entries, clean close) is spooled and merged by the next start, so the manifest loses nothing."""
    backend = _ManifestOutage()
    settings = Settings.from_env({"STREAMER_AUTH": "disabled", "STREAMER_CALL_CHECK": "disabled",
                                  "AZURE_STORAGE_CONNECTION_STRING": "unused",
                                  "SPOOL_DIR": str(tmp_path / "spool"), "SHUTDOWN_GRACE_SECONDS": "2"})
    call = "call-manifest-outage"
    frames = [audio(f, at(i), participant=None) for i, f in enumerate(tone_pcm(50))]

    server = ServerThread(create_app(settings, backend)).start()
    backend.manifests_down = True
    asyncio.run(send_all(f"ws://127.0.0.1:{server.port}/ws/mixed", [metadata(), *frames], headers(None, call)))
    deadline = time.monotonic() + 10
    while not any(n.endswith(".wav") for n in backend.blobs) and time.monotonic() < deadline:
        time.sleep(0.05)
    chunk = next(n for n in backend.blobs if n.endswith(".wav"))
    claimed = json.loads(backend.blobs[f"{call}/manifest.json"].data)  # only the clock claim landed
    assert [(s["endedAt"], s["settled"]) for s in claimed["sessions"]] == [(None, False)]  # opened, nothing more
    assert claimed["streams"] == []
    server.stop()

    parts = list((tmp_path / "spool" / call).glob("part.*.json"))
    assert len(parts) == 1, "the final manifest part was not spooled"
    backend.manifests_down = False
    with ServerThread(create_app(settings, backend)):
        deadline = time.monotonic() + 10
        while (not json.loads(backend.blobs[f"{call}/manifest.json"].data)["complete"]
               and time.monotonic() < deadline):
            time.sleep(0.05)
        time.sleep(0.2)
    manifest = json.loads(backend.blobs[f"{call}/manifest.json"].data)
    assert manifest["complete"] is True
    assert [c["blob"] for s in manifest["streams"] for c in s["chunks"]] == [chunk]
    assert not list((tmp_path / "spool").rglob("*.json"))
