"""RecordingStore on a real Azurite and on the in-memory backend: no overwrite, no lost manifest update."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from common import manifest as mf
from streamer import wav
from streamer.store import AzureBlobBackend, MemoryBackend, RecordingStore, StorageUnavailable


@pytest.fixture(params=["memory", "azurite"])
def backend_factory(request, azurite):
    def make():
        if request.param == "memory":
            return MemoryBackend()
        return AzureBlobBackend(f"store-{uuid.uuid4().hex[:10]}", connection_string=azurite.connection_string)
    return make


def session_part(i: int) -> dict:
    return {"callConnectionId": "c1", "sessions": [{"id": f"s{i:03d}", "complete": True}],
            "streams": [{"stream": "mixed", "participantRawId": None, "chunks": [
                {"blob": f"c1/mixed/{i:06d}.wav", "seq": i, "sha256": "x", "revision": 1}]}],
            "gaps": [], "dtmf": [{"tone": str(i % 10), "timestamp": f"t{i}", "participantRawId": None}]}


def test_concurrent_manifest_updates_are_all_kept(backend_factory):
    async def run() -> dict:
        be = backend_factory()
        await be.ensure_container()
        store = RecordingStore(be)
        await asyncio.gather(*(store.merge_manifest("c1", session_part(i)) for i in range(12)))
        m = await store.read_manifest("c1")
        await be.close()
        return m

    m = asyncio.run(run())
    assert [c["seq"] for c in m["streams"][0]["chunks"]] == list(range(12))
    assert len(m["sessions"]) == 12 and len(m["dtmf"]) == 12 and m["complete"] is True


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


def test_memory_backend_outage_raises_storage_unavailable():
    be = MemoryBackend()
    be.fail = True
    with pytest.raises(StorageUnavailable):
        asyncio.run(RecordingStore(be).merge_manifest("c1", {"callConnectionId": "c1"}))
    assert mf.empty("c1")["complete"] is False
