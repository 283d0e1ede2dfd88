"""What a session holds before its clock is known, and late frames, across storage that hangs, fails or is slow and
across hard kills — the second adversarial probe round's cases, against the real streamer and Azurite."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from datetime import UTC, datetime, timedelta

import httpx
from websockets.asyncio.client import connect

from devstack.azurite import Azurite
from tests import recording as rec
from tests.acs_frames import at, audio, metadata, tone_pcm
from tests.test_streamer_integrity import _call_state, _wait
from tests.test_streamer_ws import headers, send_all


def _wavs(container, call_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [b.name for b in container.list_blobs(name_starts_with=f"{call_id}/") if b.name.endswith(".wav")]


def test_a_kill_right_after_a_frames_log_was_replayed_loses_nothing_it_held(streamer_factory, token_issuer,
                                                                          tmp_path):
    """50 s held on disk during an outage; storage returns, the log is replayed into chunks, and the process is
    killed at once: the log stays until those chunks have landed, so the next start replays it again."""
    az = Azurite(location=tmp_path / "azurite").start()
    spool = tmp_path / "spool"
    try:
        s = streamer_factory(storage=az, SPOOL_DIR=str(spool))
        az.stop()
        t0 = datetime.now(UTC) - timedelta(seconds=55)
        frames = tone_pcm(2500, seed=3)

        async def run() -> None:
            async with connect(s.ws, additional_headers=headers(token_issuer.token(), "replaykill")) as ws:
                await ws.send(metadata())
                for i, f in enumerate(frames):
                    await ws.send(audio(f, at(i, start=t0), participant=None))
                await asyncio.to_thread(_wait, lambda: list(spool.glob("replaykill/frames.*.log")), 10,
                                        "the frames log")
                await asyncio.to_thread(az.start)
                await asyncio.to_thread(_wait, lambda: s.metrics()["acs_streamer_chunks_sealed_total"] >= 49, 30,
                                        "the replay")
                s.process.kill()

        with contextlib.suppress(Exception):  # the socket dies with the process
            asyncio.run(run())
        s.start()
        _wait(lambda: len(_wavs(s.container, "replaykill")) >= 50, 30, "every chunk")
    finally:
        az.close()


def test_storage_that_hangs_while_a_new_call_waits_for_its_clock_then_a_kill(streamer_factory, token_issuer,
                                                                            tmp_path):
    az = Azurite(location=tmp_path / "azurite").start()
    spool = tmp_path / "spool"
    try:
        s = streamer_factory(storage=az, SPOOL_DIR=str(spool))
        assert az.proc is not None
        os.killpg(az.proc.pid, signal.SIGSTOP)
        t0 = datetime.now(UTC)
        frames = tone_pcm(400, seed=8)  # 8 s at ACS's pace

        async def run() -> None:
            async with connect(s.ws, additional_headers=headers(token_issuer.token(), "hangheld")) as ws:
                await ws.send(metadata())
                for i, f in enumerate(frames):
                    await ws.send(audio(f, at(i, start=t0), participant=None))
                    await asyncio.sleep(0.02)
                s.process.kill()

        with contextlib.suppress(Exception):
            asyncio.run(run())
        os.killpg(az.proc.pid, signal.SIGCONT)
        s.start()
        _wait(lambda: len(_wavs(s.container, "hangheld")) >= 7, 30, "the held audio")
    finally:
        if az.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(az.proc.pid, signal.SIGCONT)
        az.close()


def test_a_kill_while_a_new_call_waits_for_the_control_plane_keeps_what_was_held(streamer_factory, token_issuer,
                                                                                tmp_path):
    spool = tmp_path / "spool"
    s = streamer_factory(STREAMER_CALL_CHECK="enabled", SPOOL_DIR=str(spool))
    t0 = datetime.now(UTC)
    frames = tone_pcm(250, seed=2)  # 5 s; the call state is written only after the kill

    async def run() -> None:
        async with connect(s.ws, additional_headers=headers(token_issuer.token(), "slowstate")) as ws:
            await ws.send(metadata())
            for i, f in enumerate(frames):
                await ws.send(audio(f, at(i, start=t0), participant=None))
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            await asyncio.to_thread(s.process.kill)

    with contextlib.suppress(Exception):
        asyncio.run(run())
    _call_state(s.container, "slowstate", status="connected")
    s.start()
    _wait(lambda: len(_wavs(s.container, "slowstate")) >= 4, 20, "the held audio")


def test_a_late_burst_into_a_sealed_chunk_costs_a_write_not_one_per_frame(streamer_factory, token_issuer):
    """10 s of frames that another frame overtook by 10 s: every slot filled, in a handful of writes, and the
    replica stays ready."""
    s = streamer_factory(CHUNK_SECONDS="10")
    t0 = datetime.now(UTC)
    f = tone_pcm(560, seed=9)

    def frames(a: int, b: int) -> list[str | bytes | float]:
        return [audio(f[i], at(i, start=t0), participant=None) for i in range(a, b)]

    asyncio.run(send_all(f"{s.ws}/mixed", [metadata(), *frames(0, 10), 10.5, *frames(510, 560), *frames(10, 510)],
                         headers(token_issuer.token(), "storm")))
    m = rec.wait_complete(s.container, "storm", timeout=15)
    assert rec.stitched(s.container, m, "mixed") == b"".join(f)
    assert s.metrics()["acs_streamer_chunks_uploaded_total"] <= 6
    assert httpx.get(f"{s.http}/readyz").status_code == 200
    assert m["gaps"] == []  # every skipped slot was filled by a late frame


def test_a_gap_that_late_frames_filled_is_no_longer_listed(streamer_factory, token_issuer):
    s = streamer_factory()
    f = tone_pcm(200, seed=6)

    def frames(a: int, b: int) -> list[str | bytes | float]:
        return [audio(f[i], at(i), participant=None) for i in range(a, b)]

    asyncio.run(send_all(f"{s.ws}/mixed", [metadata(), *frames(0, 50), 3.0, *frames(150, 200), 1.6,
                                           *frames(50, 150)], headers(token_issuer.token(), "gapfill")))
    m = rec.wait_complete(s.container, "gapfill", timeout=40)
    time.sleep(1.5)  # the last manifest write after the late parts landed
    m = rec.manifest(s.container, "gapfill")
    assert rec.stitched(s.container, m, "mixed") == b"".join(f)
    assert m["gaps"] == []


def test_audio_dated_before_the_claimed_clock_is_counted_and_the_recording_not_complete(streamer_factory,
                                                                                       token_issuer):
    """Known limit (README): a session whose audio starts before the call's clock origin (another session claimed
    it later) cannot place those frames; it says so instead of claiming completeness."""
    s = streamer_factory()
    a, b = tone_pcm(50, seed=10), tone_pcm(100, seed=11)
    first = [audio(x, at(50 + i), participant=None) for i, x in enumerate(a)]
    asyncio.run(send_all(f"{s.ws}/mixed", [metadata(), *first], headers(token_issuer.token(), "pre")))
    rec.wait_complete(s.container, "pre")
    asyncio.run(send_all(f"{s.ws}/mixed", [metadata(), *[audio(x, at(i), participant=None) for i, x in enumerate(b)]],
                         headers(token_issuer.token(), "pre")))
    _wait(lambda: len(rec.manifest(s.container, "pre")["sessions"]) == 2
          and all(x.get("endedAt") for x in rec.manifest(s.container, "pre")["sessions"]), 15, "both sessions")
    time.sleep(0.5)
    m = rec.manifest(s.container, "pre")
    second = next(x for x in m["sessions"] if x["framesBeforeOrigin"])
    assert second["framesBeforeOrigin"] == 50 and second["complete"] is False and m["complete"] is False


def test_chunks_spooled_by_a_version_before_the_typed_contract_still_land(tmp_path):
    """A spool that survives an upgrade (a volume, a devstack restart): the flat sidecars earlier versions wrote
    are read, their chunks land and are listed, and the session completes only with them."""
    import orjson

    from common import manifest as mf
    from common import wav as wav_module
    from streamer.metrics import Metrics
    from streamer.recovery import recover_spool
    from streamer.sink import Spool
    from streamer.store import MemoryBackend, RecordingStore

    call_dir = tmp_path / "old-call"
    call_dir.mkdir()
    pcm = bytes(range(256)) * 5  # 2 frames of 640 bytes
    base = call_dir / "c.0123456789abcdef.000000.abcd1234"
    base.with_suffix(".wav").write_bytes(wav_module.encode(pcm, 16000))
    base.with_suffix(".json").write_bytes(orjson.dumps({  # what the previous version's ChunkJob.sidecar() wrote
        "call_id": "old-call", "blob": "old-call/mixed/000000.wav", "stream": "mixed", "participant": None, "seq": 0,
        "start_iso": "2026-01-01T00:00:00.000Z", "frame_bytes": 640, "mask": "0101", "session_id": "s1",
        "clock": {"sampleRate": 16000, "frameBytes": 640, "chunkSeconds": 10.0,
                  "clockOrigin": "2026-01-01T00:00:00.000Z", "audioChannel": "mixed", "correlationId": None}}))
    (call_dir / "part.s1.json").write_bytes(orjson.dumps({
        "callConnectionId": "old-call", "sessions": [{"id": "s1", "frames": 2, "endReason": "peer_closed",
                                                      "cleanClose": True}], "gapsOf": ["s1"]}))

    async def run() -> mf.Manifest | None:
        store = RecordingStore(MemoryBackend())
        assert await recover_spool(Spool(tmp_path), store, Metrics()) == 1
        return await store.read_manifest("old-call")

    m = asyncio.run(run())
    assert m is not None and m.complete and m.clock_origin == "2026-01-01T00:00:00.000Z"
    assert [(c.seq, c.session_id) for s in m.streams for c in s.chunks] == [(0, "s1")]
    assert not call_dir.exists() or not list(call_dir.glob("*"))


def test_an_unreadable_sidecar_is_quarantined_and_its_call_not_complete(tmp_path):
    import orjson

    from streamer.metrics import Metrics
    from streamer.recovery import recover_spool
    from streamer.sink import QUARANTINE, Spool
    from streamer.store import MemoryBackend, RecordingStore

    call_dir = tmp_path / "torn"
    call_dir.mkdir()
    (call_dir / "c.0123456789abcdef.000000.abcd1234.wav").write_bytes(b"RIFF")
    (call_dir / "c.0123456789abcdef.000000.abcd1234.json").write_bytes(b'{"call_id": "torn"}')
    (call_dir / "part.s1.json").write_bytes(orjson.dumps({
        "callConnectionId": "torn", "sessions": [{"id": "s1", "frames": 2, "endReason": "peer_closed"}]}))

    metrics = Metrics()

    async def run():
        store = RecordingStore(MemoryBackend())
        await recover_spool(Spool(tmp_path), store, metrics)
        return await store.read_manifest("torn")

    m = asyncio.run(run())
    assert m is not None and not m.complete and not m.sessions[0].complete
    assert metrics.chunks_quarantined == 1  # counted like every quarantine (the alert reads the log line)
    assert sorted(p.name for p in (tmp_path / QUARANTINE / "torn").iterdir()) == [
        "c.0123456789abcdef.000000.abcd1234.json", "c.0123456789abcdef.000000.abcd1234.wav"]


def test_damaged_spool_files_are_quarantined_at_restart_not_retried_forever(tmp_path):
    """A spooled chunk whose audio is garbage, a manifest part and an open-session marker that are not JSON: none
    can ever be read, so recovery sets them aside (counted, logged as quarantined) and finishes the call at once,
    instead of retrying it every few seconds for as long as the process lives."""
    import orjson

    from common import manifest as mf
    from streamer.metrics import Metrics
    from streamer.recovery import recover_spool
    from streamer.sink import QUARANTINE, Spool
    from streamer.store import MemoryBackend, RecordingStore

    call_dir = tmp_path / "poison"
    call_dir.mkdir()
    base = call_dir / "c.0123456789abcdef.000000.abcd1234"
    base.with_suffix(".wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(40))
    base.with_suffix(".json").write_bytes(orjson.dumps({
        "call_id": "poison", "blob": "poison/mixed/000000.wav", "stream": "mixed", "participant": None, "seq": 0,
        "start_iso": "2026-01-01T00:00:00.000Z", "frame_bytes": 640, "mask": "01", "session_id": "s1"}))
    (call_dir / "part.s2.json").write_bytes(b"{not json")
    (call_dir / "open.s3.json").write_bytes(b"\x00\x01")
    (call_dir / "open.s1.json").write_bytes(orjson.dumps({"id": "s1", "startedAt": "2026-01-01T00:00:00.000Z"}))
    metrics = Metrics()

    async def run() -> mf.Manifest | None:
        store = RecordingStore(MemoryBackend())
        await asyncio.wait_for(recover_spool(Spool(tmp_path), store, metrics, retry_seconds=0.1), 10)
        return await store.read_manifest("poison")

    m = asyncio.run(run())
    assert m is not None and not m.complete
    (s2,) = [x for x in m.sessions if x.id == "s2"]  # its part was damaged: settled, and not complete
    assert s2.settled and not s2.complete
    (s1,) = [x for x in m.sessions if x.id == "s1"]
    assert s1.end_reason == mf.EndReason.NEVER_CLOSED and [q.seq for q in s1.quarantined_chunks] == [0]
    assert "unreadable" in s1.quarantined_chunks[0].reason
    assert metrics.chunks_quarantined == 1
    kept = sorted(p.name for p in (tmp_path / QUARANTINE / "poison").iterdir())
    assert "part.s2.json" in kept and "open.s3.json" in kept and any(n.endswith(".wav") for n in kept)
    assert not list(call_dir.glob("*")) if call_dir.exists() else True
