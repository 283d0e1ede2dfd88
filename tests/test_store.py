"""RecordingStore on a real Azurite and on the in-memory backend: no overwrite, no lost manifest update."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import numpy as np
import pytest

from common import manifest as mf
from common import wav
from common.slots import occupancy
from streamer.store import (
    AlreadyExists,
    AzureBlobBackend,
    MemoryBackend,
    PermanentChunkError,
    RecordingStore,
    StorageUnavailable,
)


@pytest.fixture(params=["memory", "azurite"])
def backend_factory(request, azurite):
    def make():
        if request.param == "memory":
            return MemoryBackend()
        return AzureBlobBackend(f"store-{uuid.uuid4().hex[:10]}", connection_string=azurite.connection_string)
    return make


def session_part(i: int) -> mf.Part:
    return msgspec.convert({
        "callConnectionId": "c1", "sessions": [{"id": f"s{i:03d}", "complete": True, "frames": 1}],
        "streams": [{"stream": "mixed", "participantRawId": None, "chunks": [
            {"blob": f"c1/mixed/{i:06d}.wav", "seq": i, "sha256": "0" * 64, "revision": 1, "startTime": f"t{i}",
             "durationMs": 10, "bytes": 364}]}],
        "gaps": [], "dtmf": [{"tone": str(i % 10), "timestamp": f"t{i}", "participantRawId": None}]}, mf.Part)


def test_concurrent_manifest_updates_are_all_kept(backend_factory):
    async def run() -> mf.Manifest | None:
        be = backend_factory()
        await be.ensure_container()
        store = RecordingStore(be)
        await asyncio.gather(*(store.merge_manifest("c1", session_part(i)) for i in range(12)))
        m = await store.read_manifest("c1")
        await be.close()
        return m

    m = asyncio.run(run())
    assert m is not None
    assert [c.seq for c in m.streams[0].chunks] == list(range(12))
    assert len(m.sessions) == 12 and len(m.dtmf) == 12 and m.complete is True


def test_second_write_of_a_chunk_is_merged_never_overwritten(backend_factory):
    async def run():
        be = backend_factory()
        await be.ensure_container()
        store = RecordingStore(be)
        first = wav.encode(b"\x01" * 640 * 2, 16000)
        second = wav.encode(bytes(640 * 3) + b"\x02" * 640, 16000)
        l1 = await store.put_chunk("c1/mixed/000000.wav", first, b"\x01\x01", 640)
        l2 = await store.put_chunk("c1/mixed/000000.wav", second, b"\x00\x00\x00\x01", 640)
        blob = await be.get("c1/mixed/000000.wav")
        await be.close()
        return l1, l2, blob

    l1, l2, blob = asyncio.run(run())
    assert (l1.revision, l2.revision) == (1, 2)
    assert wav.decode(blob.data)[1] == b"\x01" * 1280 + bytes(640) + b"\x02" * 640
    assert l2.duration_ms == 80 and blob.metadata["revision"] == "2"


def test_stored_audio_is_never_replaced_by_a_later_write_of_the_same_slots(backend_factory):
    """First write wins, slot by slot: a second session with the same timestamps (or a replay with other audio)
    fills nothing, changes nothing, and is counted as conflicts; a stored silent frame counts as audio."""
    async def run():
        be = backend_factory()
        await be.ensure_container()
        store = RecordingStore(be)
        first = wav.encode(b"\x01" * 640 + bytes(640), 16000)  # slot 1: a received silent frame
        other = wav.encode(b"\x07" * 640 * 3, 16000)
        l1 = await store.put_chunk("c1/mixed/000000.wav", first, b"\x01\x01", 640)
        l2 = await store.put_chunk("c1/mixed/000000.wav", other, b"\x01\x01\x01", 640)
        l3 = await store.put_chunk("c1/mixed/000000.wav", other, b"\x01\x01\x01", 640)
        blob = await be.get("c1/mixed/000000.wav")
        await be.close()
        return l1, l2, l3, blob

    l1, l2, l3, blob = asyncio.run(run())
    assert (l1.revision, l1.filled) == (1, 2)
    assert wav.decode(blob.data)[1] == b"\x01" * 640 + bytes(640) + b"\x07" * 640  # only the empty slot 2 filled
    assert (l2.revision, l2.filled, l2.conflicts) == (2, 1, 2)
    assert (l3.revision, l3.filled, l3.conflicts) == (2, 0, 2) and l3.sha256 == l2.sha256  # nothing new: no write
    assert blob.metadata["revision"] == "2"


def test_a_chunk_stored_without_occupancy_counts_as_fully_occupied():
    """Chunks written before occupancy was recorded: silence and "no frame" look alike there, so nothing in them
    may be replaced; audio beyond their end can still be added."""
    async def run():
        be = MemoryBackend()
        store = RecordingStore(be)
        await be.create("c1/mixed/000000.wav", wav.encode(bytes(640 * 2), 16000), {"revision": "1"}, "audio/wav")
        landed = await store.put_chunk("c1/mixed/000000.wav", wav.encode(b"\x05" * 640 * 3, 16000),
                                       b"\x01\x01\x01", 640)
        return landed, await be.get("c1/mixed/000000.wav")

    landed, blob = asyncio.run(run())
    assert wav.decode(blob.data)[1] == bytes(640 * 2) + b"\x05" * 640
    assert (landed.filled, landed.conflicts) == (1, 2)


def test_a_part_at_another_sample_rate_is_a_permanent_error():
    async def run():
        store = RecordingStore(MemoryBackend())
        await store.put_chunk("c1/mixed/000000.wav", wav.encode(b"\x01" * 640, 16000), b"\x01", 640)
        await store.put_chunk("c1/mixed/000000.wav", wav.encode(b"\x01" * 960, 24000), b"\x00\x01", 960)

    with pytest.raises(PermanentChunkError, match="16000 Hz"):
        asyncio.run(run())


def test_a_damaged_part_or_stored_metadata_is_a_permanent_error_not_retried():
    """Only a damaged spool file or a hand-edited blob gets here; retried, it would hold an upload worker forever
    and keep the replica not-ready."""
    async def part(data: bytes) -> None:
        await RecordingStore(MemoryBackend()).put_chunk("c1/mixed/000000.wav", data, b"\x01", 640)

    for junk in (b"RIFF" + bytes(60), wav.encode(b"\x01" * 640, 16000)[:24] + bytes(4) + bytes(656)):
        with pytest.raises(PermanentChunkError, match="unreadable"):
            asyncio.run(part(junk))

    async def stored(meta: dict[str, str]) -> None:
        be = MemoryBackend()
        await be.create("c1/mixed/000000.wav", wav.encode(bytes(640), 16000), meta, "audio/wav")
        await RecordingStore(be).put_chunk("c1/mixed/000000.wav", wav.encode(b"\x05" * 1280, 16000),
                                           b"\x01\x01", 640)

    for meta in ({"revision": "1", "slots": "%%%"}, {"revision": "one"}):
        with pytest.raises(PermanentChunkError, match="metadata is unreadable"):
            asyncio.run(stored(meta))


def test_a_slot_map_that_calls_stored_sound_empty_is_not_believed():
    """A hand-edited map of the right length whose bits were cleared, or a header whose size was shrunk: the
    stored audio stays (found by an outside probe: before, a later part replaced it)."""
    stored = b"\x07" * 640 * 25

    async def write(meta: dict[str, str], data: bytes) -> bytes:
        be = MemoryBackend()
        await be.create("c1/mixed/000000.wav", data, meta, "audio/wav")
        await RecordingStore(be).put_chunk("c1/mixed/000000.wav", wav.encode(b"\x05" * 640 * 50, 16000),
                                           b"\x01" * 50, 640)
        got = await be.get("c1/mixed/000000.wav")
        assert got is not None
        return wav.decode(got.data)[1]

    cleared = {"revision": "1", "slots": occupancy(np.zeros(25, dtype=bool)), "slotbytes": "640"}
    pcm = asyncio.run(write(cleared, wav.encode(stored, 16000)))
    assert pcm[: len(stored)] == stored and pcm[len(stored):] == b"\x05" * 640 * 25  # only the empty ones filled
    shrunk = bytearray(wav.encode(stored, 16000))
    shrunk[40:44] = (640 * 5).to_bytes(4, "little")
    with pytest.raises(PermanentChunkError, match="header says"):
        asyncio.run(write({"revision": "1"}, bytes(shrunk)))


def test_manifest_merge_conflicts_are_counted_as_retries():
    retried: list[str] = []

    class Busy(MemoryBackend):
        conflicts = 2

        async def create(self, name, data, metadata, content_type):  # type: ignore[no-untyped-def]
            if self.conflicts:
                self.conflicts -= 1
                raise AlreadyExists(name)
            return await super().create(name, data, metadata, content_type)

        async def get(self, name):  # type: ignore[no-untyped-def]
            return None if self.conflicts else await super().get(name)

    store = RecordingStore(Busy(), on_retry=lambda what, attempt, exc: retried.append(what))
    asyncio.run(store.merge_manifest("c1", mf.Part(call_connection_id="c1")))
    assert retried == ["manifest merge", "manifest merge"]


def test_memory_backend_outage_raises_storage_unavailable():
    be = MemoryBackend()
    be.fail = True
    with pytest.raises(StorageUnavailable):
        asyncio.run(RecordingStore(be).merge_manifest("c1", mf.Part(call_connection_id="c1")))
    assert mf.Manifest(call_connection_id="c1").complete is False
