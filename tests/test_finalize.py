"""The finalizer against real Azurite: chunks written by the streamer's own store (occupancy metadata, tags), the
call state by the function app's store, then `Finalizer.run` — finished files, recording.json, the event."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
import wave
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

import msgspec
import numpy as np
import pytest
from azure.core.messaging import CloudEvent
from azure.storage.blob import BlobServiceClient, ContainerClient

from common import manifest as mf
from common import recording as rec_model
from common import wav
from common.layout import MULTICHANNEL, final_blob, recording_blob, stream_id
from common.recording import FileKind, HoleCause, RecordingStatus
from devstack.azurite import ACCOUNT, ACCOUNT_KEY, Azurite
from function_app import assemble as assemble_mod
from function_app.finalize import Finalizer, Outcome
from function_app.sas import AccountKeySigner
from function_app.store import RecordingStore
from streamer.store import AzureBlobBackend
from streamer.store import RecordingStore as StreamerStore
from tests.recording import stitched

RATE = 16000
CHUNK_SECONDS = 1.0
CHUNK_BYTES = int(RATE * CHUNK_SECONDS) * 2
FRAME = RATE // 50 * 2
ORIGIN = 1_800_000_000.0
A, B = "8:acs:alice", "4:+15551230000"


class Events:
    """Stands in for EventGridPublisherClient here (the local stack's tests use the real SDK and receiver)."""

    def __init__(self, fail: int = 0):
        self.sent: list[CloudEvent[Any]] = []
        self.fail = fail
        self.lock = threading.Lock()

    def send(self, events: list[CloudEvent[Any]]) -> None:
        with self.lock:
            if self.fail:
                self.fail -= 1
                raise ConnectionError("topic down")
            self.sent.extend(events)


@pytest.fixture(scope="module")
def container(azurite: Azurite) -> ContainerClient:
    c = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(
        f"fin{uuid.uuid4().hex[:10]}")
    c.create_container()
    return c


def fstore(container: ContainerClient) -> RecordingStore:
    return RecordingStore(container, AccountKeySigner(ACCOUNT, ACCOUNT_KEY))


def tone(n_bytes: int, freq: float, seed: int) -> bytes:
    t = np.arange(n_bytes // 2) / RATE
    rng = np.random.default_rng(seed)
    return (np.sin(2 * np.pi * freq * t) * 8000 + rng.integers(-50, 50, t.size)).astype("<i2").tobytes()


def write_call(azurite: Azurite, container: ContainerClient, *, streams: dict[str | None, dict[int, bytes]],
               channel: str = "unmixed", settled: bool = True, ended: bool = True,
               first_slot: dict[str | None, int] | None = None) -> str:
    """A call as the streamer and the control plane leave it: chunks (first write), a manifest, a call state."""
    call_id = f"call-{uuid.uuid4().hex[:12]}"
    first_slot = first_slot or {}

    async def chunks() -> None:
        be = AzureBlobBackend(container.container_name, connection_string=azurite.connection_string)
        st = StreamerStore(be)
        entries: dict[str, list[mf.Chunk]] = {}
        for participant, seqs in streams.items():
            name = stream_id(participant)
            for seq, pcm in sorted(seqs.items()):
                slots = -(-len(pcm) // FRAME)
                mask = bytearray(slots * [1])
                if seq == min(seqs):
                    for i in range(first_slot.get(participant, 0)):
                        mask[i] = 0
                blob = f"{call_id}/{name}/{seq:06d}.wav"
                landed = await st.put_chunk(blob, wav.encode(pcm, RATE), bytes(mask), FRAME)
                ref = mf.ChunkRef(stream=name, participant_raw_id=participant, seq=seq,
                                  start_time=mf.utc_iso(ORIGIN + seq * CHUNK_SECONDS), session_id="s1")
                entries.setdefault(name, []).append(landed.entry(blob, ref))
        part = mf.Part(
            call_connection_id=call_id, sample_rate=RATE, frame_bytes=FRAME, chunk_seconds=CHUNK_SECONDS,
            clock_origin=mf.utc_iso(ORIGIN), audio_channel=channel,  # type: ignore[arg-type]
            sessions=[mf.Session(id="s1", started_at=mf.utc_iso(ORIGIN - 0.5), ended_at=mf.utc_iso(ORIGIN + 60),
                                 complete=settled, settled=settled, clean_close=True,
                                 end_reason=mf.EndReason.PEER_CLOSED, frames=100)],
            streams=[mf.Stream(stream=s, participant_raw_id=streams and next(
                p for p in streams if stream_id(p) == s), chunks=c) for s, c in entries.items()])
        await st.merge_manifest(call_id, part)
        await be.close()

    asyncio.run(chunks())

    def state(doc: dict[str, Any]) -> bool:
        doc.update(status="disconnected" if ended else "connected", audioChannel=channel,
                   connectedAt=mf.utc_iso(ORIGIN - 1), correlationId="corr-1")
        if ended:
            doc["disconnectedAt"] = mf.utc_iso(ORIGIN + 60.2)
        return True

    fstore(container).update_state(call_id, state)
    return call_id


def read_wav(container: ContainerClient, blob: str) -> tuple[int, int, bytes]:
    with wave.open(BytesIO(container.download_blob(blob).readall())) as w:
        return w.getframerate(), w.getnchannels(), w.readframes(w.getnframes())


def test_unmixed_call_gets_a_file_per_speaker_and_a_multichannel_file(azurite: Azurite,
                                                                        container: ContainerClient) -> None:
    a = {1: tone(CHUNK_BYTES, 440, 1), 2: tone(CHUNK_BYTES // 2, 440, 2), 4: tone(CHUNK_BYTES, 440, 3)}
    b = {0: tone(CHUNK_BYTES, 220, 4), 1: tone(CHUNK_BYTES, 220, 5)}
    call_id = write_call(azurite, container, streams={A: a, B: b})
    events = Events()
    fin = Finalizer(fstore(container), events, settle_seconds=0)
    assert fin.run(call_id) == Outcome.FINALIZED

    rec = rec_model.loads(container.download_blob(recording_blob(call_id)).readall())
    assert rec.status == RecordingStatus.READY
    m = mf.to_builtins(mf.loads(container.download_blob(f"{call_id}/manifest.json").readall()))
    streams = {f.participant_raw_id: f for f in rec.files if f.kind == FileKind.STREAM}
    assert set(streams) == {A, B}
    for participant, f in streams.items():
        rate, channels, pcm = read_wav(container, f.blob)
        assert (rate, channels) == (RATE, 1)
        assert pcm == stitched(container, m, stream_id(participant))  # the stitched download, byte for byte
        data = container.download_blob(f.blob).readall()
        assert hashlib.sha256(data).hexdigest() == f.sha256 and len(data) == f.size
    # B spoke first (seq 0): channel 0; A's last chunk ends at 5 s, B's at 2 s: padded
    assert [c.participant_raw_id for c in rec.channel_map] == [B, A]
    (multi,) = [f for f in rec.files if f.kind == FileKind.MULTICHANNEL]
    assert multi.blob == final_blob(call_id, MULTICHANNEL)
    rate, channels, pcm = read_wav(container, multi.blob)
    assert (rate, channels) == (RATE, 2)
    frames = np.frombuffer(pcm, dtype="<i2").reshape(-1, 2)
    for k, participant in enumerate([B, A]):
        mono = np.frombuffer(stitched(container, m, stream_id(participant)), dtype="<i2")
        assert np.array_equal(frames[: mono.size, k], mono)
        assert not frames[mono.size:, k].any()
    assert frames.shape[0] == 5 * RATE and multi.duration_ms == 5000
    # completeness: A sent 2.5 s (seq 1, half of 2, 4); seq 0, 3 and half of 2 are silence the recorder filled
    cov = {s.participant_raw_id: s for s in rec.completeness.streams} if rec.completeness else {}
    assert cov[A].duration_ms == 5000 and cov[A].audio_ms == 2500 and cov[A].silence_ms == 2500
    assert rec.digest == rec_model.digest_of(mf.loads(container.download_blob(f"{call_id}/manifest.json")
                                                     .readall()), rec.files)
    (event,) = events.sent
    assert event.type == "AcsCallRecorder.RecordingReady" and event.subject == f"recordings/{call_id}"
    assert event.id == rec.event_id and event.data["digest"]["value"] == rec.digest.value  # type: ignore[index]
    assert all("url" not in f or f["url"] is None for f in event.data["files"])  # type: ignore[index]
    assert rec.announced_at is not None

    # idempotent: a second request changes nothing and publishes nothing
    etags = {f.blob: container.get_blob_client(f.blob).get_blob_properties().etag for f in rec.files}
    assert fin.run(call_id) == Outcome.ALREADY_DONE
    assert len(events.sent) == 1
    assert etags == {f.blob: container.get_blob_client(f.blob).get_blob_properties().etag for f in rec.files}


def test_mixed_call_has_one_file_and_no_multichannel(azurite: Azurite, container: ContainerClient) -> None:
    call_id = write_call(azurite, container, streams={None: {0: tone(CHUNK_BYTES, 300, 7), 2: tone(999 * 2, 300, 8)}},
                         channel="mixed")
    fin = Finalizer(fstore(container), None, settle_seconds=0)
    assert fin.run(call_id) == Outcome.FINALIZED
    rec = rec_model.loads(container.download_blob(recording_blob(call_id)).readall())
    assert [f.kind for f in rec.files] == [FileKind.STREAM] and not rec.channel_map
    m = mf.to_builtins(mf.loads(container.download_blob(f"{call_id}/manifest.json").readall()))
    assert read_wav(container, rec.files[0].blob)[2] == stitched(container, m, "mixed")
    assert rec.files[0].duration_ms == 2000 + round(999 / RATE * 1000)


def test_long_files_are_split_into_parts_at_chunk_boundaries(azurite: Azurite, container: ContainerClient) -> None:
    a = {i: tone(CHUNK_BYTES, 500 + i, i) for i in range(5)}
    b = {i: tone(CHUNK_BYTES, 200 + i, 10 + i) for i in range(3)}
    call_id = write_call(azurite, container, streams={A: a, B: b})
    fin = Finalizer(fstore(container), None, settle_seconds=0, max_data_bytes=2 * CHUNK_BYTES * 2 + 100)
    assert fin.run(call_id) == Outcome.FINALIZED
    rec = rec_model.loads(container.download_blob(recording_blob(call_id)).readall())
    m = mf.to_builtins(mf.loads(container.download_blob(f"{call_id}/manifest.json").readall()))
    a_parts = sorted((f for f in rec.files if f.participant_raw_id == A), key=lambda f: f.part)
    assert [f.part for f in a_parts] == [1, 2] and {f.parts for f in a_parts} == {2}  # 4 chunks per mono part
    assert a_parts[1].blob == final_blob(call_id, stream_id(A), 2, 2) and a_parts[1].offset_ms == 4000
    assert b"".join(read_wav(container, f.blob)[2] for f in a_parts) == stitched(container, m, stream_id(A))
    multi = sorted((f for f in rec.files if f.kind == FileKind.MULTICHANNEL), key=lambda f: f.part)
    assert len(multi) == 3 and all(f.size - wav.HEADER_BYTES <= 2 * CHUNK_BYTES * 2 + 100 for f in multi)
    whole = b"".join(read_wav(container, f.blob)[2] for f in multi)
    assert len(whole) == 5 * CHUNK_BYTES * 2


def test_waits_for_the_call_to_end_and_its_sessions_to_settle(azurite: Azurite, container: ContainerClient) -> None:
    fin = Finalizer(fstore(container), None, settle_seconds=0)
    live = write_call(azurite, container, streams={None: {0: tone(CHUNK_BYTES, 300, 1)}}, channel="mixed",
                      ended=False)
    assert fin.run(live) == Outcome.CALL_LIVE
    open_ = write_call(azurite, container, streams={None: {0: tone(CHUNK_BYTES, 300, 1)}}, channel="mixed",
                       settled=False)
    assert fin.run(open_) == Outcome.SESSIONS_OPEN
    assert not container.get_blob_client(recording_blob(open_)).exists()
    assert fin.run(open_, force=True) == Outcome.FINALIZED  # the sweep, long after the call ended
    rec = rec_model.loads(container.download_blob(recording_blob(open_)).readall())
    assert rec.completeness is not None and rec.completeness.unsettled_sessions == ["s1"]
    assert not rec.completeness.complete and "NOT COMPLETE" in rec.completeness.statement
    assert fin.run("no-such-call") == Outcome.UNKNOWN_CALL


def test_two_racing_finalizers_write_one_set_of_files_and_one_event(azurite: Azurite,
                                                                    container: ContainerClient) -> None:
    call_id = write_call(azurite, container, streams={A: {0: tone(CHUNK_BYTES, 440, 1)},
                                                       B: {0: tone(CHUNK_BYTES, 220, 2)}})
    events = Events()
    barrier = threading.Barrier(2, timeout=30)

    class Racing(RecordingStore):
        def write_recording(self, doc: rec_model.Recording, etag: str | None) -> str:
            if doc.status == RecordingStatus.READY and doc.announced_at is None and doc.announcing_since is None:
                barrier.wait()  # both have built every file before either writes ready
            return super().write_recording(doc, etag)

    store = Racing(container, AccountKeySigner(ACCOUNT, ACCOUNT_KEY))
    outcomes: list[Outcome] = []
    threads = [threading.Thread(target=lambda: outcomes.append(Finalizer(store, events, settle_seconds=0)
                                                                .run(call_id))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == sorted([Outcome.FINALIZED, Outcome.RACED])
    assert len(events.sent) == 1
    finals = [b.name for b in container.list_blobs(name_starts_with=f"{call_id}/final/")]
    assert len(finals) == 3


def test_two_finalizers_announcing_one_unannounced_recording_publish_one_event(
        azurite: Azurite, container: ContainerClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A queue retry and the sweep's request both find the recording ready but not announced (the topic was down):
    the lease in recording.json lets one of them publish."""
    call_id = write_call(azurite, container, streams={None: {0: tone(CHUNK_BYTES, 440, 1)}}, channel="mixed")
    monkeypatch.setattr("function_app.finalize.PUBLISH_ATTEMPTS", 1)
    with pytest.raises(ConnectionError):
        Finalizer(fstore(container), Events(fail=100), settle_seconds=0).run(call_id)
    doc, _ = fstore(container).read_recording(call_id)
    assert doc is not None and doc.status == RecordingStatus.READY and doc.announced_at is None
    assert doc.announcing_since is None  # a failed publish gives the lease back

    class Slow(Events):
        def send(self, events: list[CloudEvent[Any]]) -> None:
            time.sleep(0.5)  # both finalizers are past their read of recording.json by now
            super().send(events)

    events = Slow()
    barrier = threading.Barrier(2, timeout=30)

    def run() -> Outcome:
        barrier.wait()
        return Finalizer(fstore(container), events, settle_seconds=0).run(call_id)

    outcomes: list[Outcome] = []
    threads = [threading.Thread(target=lambda: outcomes.append(run())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == sorted([Outcome.ANNOUNCED, Outcome.RACED]) and len(events.sent) == 1
    doc, _ = fstore(container).read_recording(call_id)
    assert doc is not None and doc.announced_at is not None and doc.announcing_since is None
    assert Finalizer(fstore(container), events, settle_seconds=0).run(call_id) == Outcome.ALREADY_DONE
    assert len(events.sent) == 1


def test_a_finalizer_killed_mid_way_leaves_nothing_visible_and_the_next_one_completes(
        azurite: Azurite, container: ContainerClient, monkeypatch: pytest.MonkeyPatch) -> None:
    call_id = write_call(azurite, container, streams={A: {i: tone(CHUNK_BYTES, 440, i) for i in range(4)},
                                                       B: {i: tone(CHUNK_BYTES, 220, i) for i in range(4)}})
    monkeypatch.setattr(assemble_mod, "BLOCK_BYTES", CHUNK_BYTES)
    staged = 0

    class Dying(RecordingStore):
        def stage_block(self, name: str, block_id: str, data: bytes) -> None:
            nonlocal staged
            staged += 1
            if staged == 6:
                raise SystemExit("killed")  # what a kill looks like from here: nothing after this runs
            super().stage_block(name, block_id, data)

    with pytest.raises(SystemExit):
        Finalizer(Dying(container, AccountKeySigner(ACCOUNT, ACCOUNT_KEY)), None, settle_seconds=0).run(call_id)
    doc = rec_model.loads(container.download_blob(recording_blob(call_id)).readall())
    assert doc.status == RecordingStatus.FINALIZING
    assert not list(container.list_blobs(name_starts_with=f"{call_id}/final/"))  # uncommitted blocks only
    events = Events(fail=2)  # and the topic is down for two tries
    assert Finalizer(fstore(container), events, settle_seconds=0).run(call_id) == Outcome.FINALIZED
    rec = rec_model.loads(container.download_blob(recording_blob(call_id)).readall())
    assert rec.status == RecordingStatus.READY and len(rec.files) == 3 and len(events.sent) == 1
    for f in rec.files:
        assert hashlib.sha256(container.download_blob(f.blob).readall()).hexdigest() == f.sha256


def test_a_chunk_changed_after_it_landed_is_reported(azurite: Azurite, container: ContainerClient) -> None:
    call_id = write_call(azurite, container, streams={None: {0: tone(CHUNK_BYTES, 300, 1),
                                                             1: tone(CHUNK_BYTES, 300, 2)}}, channel="mixed")
    blob = container.get_blob_client(f"{call_id}/mixed/000001.wav")
    blob.upload_blob(wav.encode(tone(CHUNK_BYTES, 999, 3), RATE), overwrite=True)
    assert Finalizer(fstore(container), None, settle_seconds=0).run(call_id) == Outcome.FINALIZED
    rec = rec_model.loads(container.download_blob(recording_blob(call_id)).readall())
    assert rec.completeness is not None and not rec.completeness.complete
    assert "INTEGRITY" in rec.completeness.statement


def test_holes_name_their_cause() -> None:
    from common import call_state as cs
    from function_app.completeness import completeness

    t0 = ORIGIN
    state = cs.CallState(
        call_connection_id="c1", status="disconnected", connected_at=mf.utc_iso(t0),
        disconnected_at=mf.utc_iso(t0 + 100),
        failures=[cs.Failure(event="MediaStreamingFailed", code=500, sub_code=8603, at=mf.utc_iso(t0 + 20.5))],
        streaming_requests=[cs.StreamingRequest(action="stop", at=mf.utc_iso(t0 + 60.1))])

    def session(sid: str, a: float, b: float, reason: mf.EndReason = mf.EndReason.PEER_CLOSED) -> mf.Session:
        return mf.Session(id=sid, started_at=mf.utc_iso(t0 + a), ended_at=mf.utc_iso(t0 + b), frames=10,
                          complete=reason == mf.EndReason.PEER_CLOSED, settled=True, end_reason=reason)

    manifest = mf.Manifest(call_connection_id="c1", sessions=[
        session("s1", 1, 20), session("s2", 30, 40, mf.EndReason.PEER_LOST), session("s3", 45, 60),
        session("s4", 70, 99.5)])
    c = completeness(state, manifest, [], t0 + 200)
    causes = [(h.cause, h.expected, h.healed, round(h.duration_ms / 1000, 1)) for h in c.holes]
    assert causes == [
        (HoleCause.STREAMING_STARTING, True, True, 1.0),
        (HoleCause.STREAMER_UNREACHABLE, False, True, 10.0),
        (HoleCause.CONNECTION_LOST, False, True, 5.0),
        (HoleCause.STOPPED_ON_REQUEST, True, True, 10.0),
        (HoleCause.STREAMING_ENDING, True, False, 0.5),
    ]
    assert c.holes[1].sub_code == 8603
    assert c.coverage == pytest.approx(73.5 / 100, abs=0.001)
    assert not c.complete and "NOT COMPLETE" in c.statement and "stopped on request" in c.statement
    never = completeness(cs.CallState(call_connection_id="c2", status="failed"), None, [], t0)
    assert never.coverage is None and "never connected" in never.statement


def _add_late_chunk(azurite: Azurite, container: ContainerClient, call_id: str, seq: int, pcm: bytes,
                    participant: str | None = None) -> None:
    """A session that could not reach storage before the call ended lands now (and settles)."""

    async def land() -> None:
        be = AzureBlobBackend(container.container_name, connection_string=azurite.connection_string)
        st = StreamerStore(be)
        name = stream_id(participant)
        blob = f"{call_id}/{name}/{seq:06d}.wav"
        landed = await st.put_chunk(blob, wav.encode(pcm, RATE), bytes(-(-len(pcm) // FRAME) * [1]), FRAME)
        ref = mf.ChunkRef(stream=name, participant_raw_id=participant, seq=seq,
                          start_time=mf.utc_iso(ORIGIN + seq * CHUNK_SECONDS), session_id="s2")
        await st.merge_manifest(call_id, mf.Part(call_connection_id=call_id, sessions=[mf.Session(
            id="s2", started_at=mf.utc_iso(ORIGIN + 30), ended_at=mf.utc_iso(ORIGIN + 59), complete=True,
            settled=True, clean_close=True, end_reason=mf.EndReason.PEER_CLOSED, frames=50)],
            streams=[mf.Stream(stream=name, participant_raw_id=participant, chunks=[landed.entry(blob, ref)])]))
        await be.close()

    asyncio.run(land())


def _files_match_blobs(container: ContainerClient, rec: rec_model.Recording) -> None:
    for f in rec.files:
        data = container.download_blob(f.blob).readall()
        assert hashlib.sha256(data).hexdigest() == f.sha256 and len(data) == f.size, f.blob
        with wave.open(BytesIO(data)) as w:
            assert w.getnframes() * w.getnchannels() * 2 == len(data) - wav.HEADER_BYTES, f.blob


def test_audio_that_lands_after_ready_makes_a_new_revision(azurite: Azurite, container: ContainerClient) -> None:
    call_id = write_call(azurite, container, streams={None: {0: tone(CHUNK_BYTES, 300, 1)}}, channel="mixed")
    events = Events()
    fin = Finalizer(fstore(container), events, settle_seconds=0)
    assert fin.run(call_id) == Outcome.FINALIZED
    first = rec_model.loads(container.download_blob(recording_blob(call_id)).readall())
    first_etag = container.get_blob_client(first.files[0].blob).get_blob_properties().etag
    _add_late_chunk(azurite, container, call_id, 3, tone(CHUNK_BYTES, 300, 2))
    assert fin.run(call_id) == Outcome.FINALIZED  # the late session's request
    second = rec_model.loads(container.download_blob(recording_blob(call_id)).readall())
    assert second.revision == 2 and second.files[0].blob == final_blob(call_id, "mixed", revision=2)
    m = mf.to_builtins(mf.loads(container.download_blob(f"{call_id}/manifest.json").readall()))
    assert read_wav(container, second.files[0].blob)[2] == stitched(container, m, "mixed")
    assert container.get_blob_client(first.files[0].blob).get_blob_properties().etag == first_etag  # kept
    assert second.completeness is not None and "Revision 2" in second.completeness.statement
    assert [e.id for e in events.sent] == [first.event_id, second.event_id] and first.event_id != second.event_id
    assert fin.run(call_id) == Outcome.ALREADY_DONE and len(events.sent) == 2


def test_a_new_revision_is_written_even_if_the_one_it_outdates_changed_meanwhile(
        azurite: Azurite, container: ContainerClient) -> None:
    """While revision 2 is being built, revision 1's announcer takes its lease (a write to recording.json): the
    ready write of revision 2 then conflicts. It used to give up as "raced", leaving revision 1 described and
    revision 2's files committed but nowhere listed."""
    call_id = write_call(azurite, container, streams={None: {0: tone(CHUNK_BYTES, 300, 1)}}, channel="mixed")
    assert Finalizer(fstore(container), None, settle_seconds=0).run(call_id) == Outcome.FINALIZED
    _add_late_chunk(azurite, container, call_id, 3, tone(CHUNK_BYTES, 300, 2))

    class LeaseMeanwhile(RecordingStore):
        def write_recording(self, doc: rec_model.Recording, etag: str | None) -> str:
            if doc.status == RecordingStatus.READY and doc.revision == 2 and not getattr(self, "leased", False):
                self.leased = True
                cur, cur_etag = self.read_recording(call_id)
                assert cur is not None and cur.revision == 1
                super().write_recording(msgspec.structs.replace(cur, announcing_since=mf.now_iso()), cur_etag)
            return super().write_recording(doc, etag)

    store = LeaseMeanwhile(container, AccountKeySigner(ACCOUNT, ACCOUNT_KEY))
    assert Finalizer(store, None, settle_seconds=0).run(call_id) == Outcome.FINALIZED
    rec = rec_model.loads(container.download_blob(recording_blob(call_id)).readall())
    assert rec.revision == 2 and rec.files[0].blob == final_blob(call_id, "mixed", revision=2)


def test_a_finalizer_that_read_older_chunks_never_replaces_a_newer_revision(
        azurite: Azurite, container: ContainerClient) -> None:
    """Two finalizers outdate revision 1: A read the manifest with one late chunk, B (later) with two. B finishes
    first; A, finding B's revision-2 files, builds revision 3 from its older chunks. It must not replace B's
    revision: it stands down and asks for another look (found by a probe)."""
    call_id = write_call(azurite, container, streams={None: {0: tone(CHUNK_BYTES, 300, 1)}}, channel="mixed")
    assert Finalizer(fstore(container), None, settle_seconds=0).run(call_id) == Outcome.FINALIZED
    _add_late_chunk(azurite, container, call_id, 2, tone(CHUNK_BYTES, 300, 2))
    older = fstore(container).read_manifest_model(call_id)
    _add_late_chunk(azurite, container, call_id, 4, tone(CHUNK_BYTES, 300, 3))
    newer = fstore(container).read_manifest_model(call_id)
    asked: list[str] = []

    class ReadEarlier(RecordingStore):
        def read_manifest_model(self, call_id: str) -> mf.Manifest | None:
            return older

        def stage_block(self, name: str, block_id: str, data: bytes) -> None:
            if not asked and not getattr(self, "b_ran", False):  # B runs to the end while A assembles
                self.b_ran = True
                assert Finalizer(fstore(container), None, settle_seconds=0).run(call_id) == Outcome.FINALIZED
            super().stage_block(name, block_id, data)

        def request_finalize(self, call_id: str, reason: str, *, force: bool = False) -> None:
            asked.append(reason)

    a = Finalizer(ReadEarlier(container, AccountKeySigner(ACCOUNT, ACCOUNT_KEY)), None, settle_seconds=0)
    assert a.run(call_id) == Outcome.RACED and asked == ["raced"]
    rec = rec_model.loads(container.download_blob(recording_blob(call_id)).readall())
    assert newer is not None and rec.revision == 2 and rec.chunks_digest == rec_model.chunks_digest_of(newer)
    _files_match_blobs(container, rec)


def test_an_announcer_outdated_mid_publish_does_not_mark_the_newer_revision_announced(
        azurite: Azurite, container: ContainerClient) -> None:
    """Revision 2 replaces revision 1 while revision 1's event is being published: revision 2 must stay
    unannounced (its own finalizer, or the sweep, publishes it), and the call must stay on the sweep's list."""
    call_id = write_call(azurite, container, streams={None: {0: tone(CHUNK_BYTES, 300, 1)}}, channel="mixed")
    store = fstore(container)
    assert Finalizer(store, None, settle_seconds=0).run(call_id) == Outcome.FINALIZED  # ready, no topic yet
    store.add_to_index(call_id, datetime.now(UTC))  # unannounced: on the sweep's list, as while publishing
    first, etag = store.read_recording(call_id)
    assert first is not None
    _add_late_chunk(azurite, container, call_id, 3, tone(CHUNK_BYTES, 300, 2))

    class Replaced(Events):
        def send(self, events: list[CloudEvent[Any]]) -> None:
            super().send(events)
            if len(self.sent) == 1:  # meanwhile: the late session's finalizer writes revision 2 (it dies after)
                with pytest.raises(SystemExit):
                    Finalizer(DiesAnnouncing(container, AccountKeySigner(ACCOUNT, ACCOUNT_KEY)), None,
                              settle_seconds=0).run(call_id)

    class DiesAnnouncing(RecordingStore):
        def mark_finished(self, call_id: str) -> None:
            raise SystemExit("killed before announcing")

    events = Replaced()
    fin = Finalizer(store, events, settle_seconds=0)
    fin._announce(msgspec.structs.replace(first, announced_at=None), etag)
    now, _ = store.read_recording(call_id)
    assert now is not None and now.revision == 2 and now.announced_at is None
    assert call_id in [c for c, _ in store.unfinished_calls()]  # the sweep still looks at it
    assert fin.run(call_id) == Outcome.ANNOUNCED and [e.id for e in events.sent] == [first.event_id, now.event_id]


def test_files_a_killed_finalizer_committed_from_other_chunks_are_not_described_as_new(
        azurite: Azurite, container: ContainerClient) -> None:
    call_id = write_call(azurite, container, streams={None: {0: tone(CHUNK_BYTES, 300, 1)}}, channel="mixed")

    class DiesBeforeReady(RecordingStore):
        def write_recording(self, doc: rec_model.Recording, etag: str | None) -> str:
            if doc.status == RecordingStatus.READY:
                raise SystemExit("killed after committing the files")
            return super().write_recording(doc, etag)

    with pytest.raises(SystemExit):
        Finalizer(DiesBeforeReady(container, AccountKeySigner(ACCOUNT, ACCOUNT_KEY)), None, settle_seconds=0
                  ).run(call_id)
    stale = container.get_blob_client(final_blob(call_id, "mixed")).get_blob_properties()
    _add_late_chunk(azurite, container, call_id, 2, tone(CHUNK_BYTES, 300, 3))
    assert Finalizer(fstore(container), None, settle_seconds=0).run(call_id) == Outcome.FINALIZED
    rec = rec_model.loads(container.download_blob(recording_blob(call_id)).readall())
    _files_match_blobs(container, rec)
    assert rec.files[0].blob != final_blob(call_id, "mixed") and rec.files[0].duration_ms == 3000
    assert container.get_blob_client(final_blob(call_id, "mixed")).get_blob_properties().etag == stale.etag


def test_finalizers_of_different_chunk_sets_never_mix_their_blocks(
        azurite: Azurite, container: ContainerClient, monkeypatch: pytest.MonkeyPatch) -> None:
    call_id = write_call(azurite, container, streams={None: {i: tone(CHUNK_BYTES, 300, i) for i in range(3)}},
                         channel="mixed")
    monkeypatch.setattr(assemble_mod, "BLOCK_BYTES", CHUNK_BYTES)
    y_staged, x_committed = threading.Event(), threading.Event()

    class X(RecordingStore):  # plans first, commits after Y has staged blocks for the same blob
        def commit_file(self, name: str, block_ids: list[str], metadata: dict[str, str]) -> None:
            assert y_staged.wait(30)
            try:
                super().commit_file(name, block_ids, metadata)
            finally:
                x_committed.set()

    class Y(RecordingStore):  # plans from more chunks, stages, and commits only after X did
        def commit_file(self, name: str, block_ids: list[str], metadata: dict[str, str]) -> None:
            y_staged.set()
            assert x_committed.wait(30)
            super().commit_file(name, block_ids, metadata)

    signer = AccountKeySigner(ACCOUNT, ACCOUNT_KEY)
    x = threading.Thread(target=lambda: Finalizer(X(container, signer), None, settle_seconds=0).run(call_id))
    x.start()
    time.sleep(1.0)  # X has read the manifest and is staging
    _add_late_chunk(azurite, container, call_id, 3, tone(CHUNK_BYTES, 300, 9))
    Finalizer(Y(container, signer), None, settle_seconds=0).run(call_id)
    x.join(60)
    Finalizer(fstore(container), None, settle_seconds=0).run(call_id)  # whatever is left: the latest chunks
    rec = rec_model.loads(container.download_blob(recording_blob(call_id)).readall())
    _files_match_blobs(container, rec)
    m = mf.loads(container.download_blob(f"{call_id}/manifest.json").readall())
    assert rec.chunks_digest == rec_model.chunks_digest_of(m)
    assert read_wav(container, rec.files[0].blob)[2] == stitched(container, mf.to_builtins(m), "mixed")
    for b in container.list_blobs(name_starts_with=f"{call_id}/final/"):  # no committed file is a hybrid
        data = container.download_blob(b.name).readall()
        assert hashlib.sha256(data).hexdigest() == container.get_blob_client(b.name).get_blob_properties(
            ).metadata["sha256"], b.name


def test_a_finished_recording_keeps_its_peaks_and_audio_after_the_chunks_expire(azurite: Azurite,
                                                                               container: ContainerClient) -> None:
    """The chunk lifecycle rule may delete chunks long before the finished files: the page's waveforms (peaks
    stored at finalization) and playback (`/audio` served from the finished file, ranges included) must not
    depend on them."""
    from function_app import recordings
    from function_app.peaks import peaks_document

    a = {0: tone(CHUNK_BYTES, 440, 11), 2: tone(CHUNK_BYTES // 2, 440, 12)}
    b = {1: tone(CHUNK_BYTES, 220, 13)}
    call_id = write_call(azurite, container, streams={A: a, B: b})
    store = fstore(container)
    manifest = store.read_manifest_model(call_id)
    assert manifest is not None
    live = mf.to_builtins(peaks_document(store, call_id, manifest, 10))
    with_chunks = {p: b"".join(recordings.open_audio(store, call_id, p).pieces) for p in (A, B)}
    assert Finalizer(store, Events(), settle_seconds=0).run(call_id) == Outcome.FINALIZED
    rec, _ = store.read_recording(call_id)
    assert rec is not None and rec.peaks_blob == f"{call_id}/peaks.json"
    for s in manifest.streams:
        for c in s.chunks:
            container.delete_blob(c.blob)  # what the lifecycle rule does after chunkRetentionDays
    stored = recordings.get_peaks(store, call_id, 10, None)
    assert stored["streams"] == live["streams"] and stored["pointsPerSecond"] == 10
    assert any(v is not None and v > 50 for v in stored["streams"][0]["levels"])  # the tones: 8000 of 32768
    coarse = recordings.get_peaks(store, call_id, 2, B)
    assert [s["participantRawId"] for s in coarse["streams"]] == [B] and coarse["pointsPerSecond"] == 2
    newest = recordings.get_peaks(store, call_id, 10, None, from_seq=1)
    per_chunk = round(CHUNK_SECONDS * 10)
    assert newest["firstPoint"] == per_chunk
    assert [s["levels"] for s in newest["streams"]] == [s["levels"][per_chunk:] for s in live["streams"]]
    for p in (A, B):  # the chunks are gone: stitching would answer silence, the finished file the audio
        audio = recordings.open_audio(store, call_id, p)
        assert audio.content_length == len(with_chunks[p]) and audio.window is None
        assert b"".join(audio.pieces) == with_chunks[p]
        part = recordings.open_audio(store, call_id, p, "bytes=40-4000")
        assert part.window == (40, 4000) and b"".join(part.pieces) == with_chunks[p][40:4001]
        tail = recordings.open_audio(store, call_id, p, f"bytes={len(with_chunks[p]) - 10}-")
        assert b"".join(tail.pieces) == with_chunks[p][-10:]
    # a finished file that has gone missing: the chunks are stitched instead, not a 500 (here they expired too,
    # so what is stitched is an empty WAV)
    container.delete_blob(next(f.blob for f in rec.files if f.stream == stream_id(A)))
    fallback = recordings.open_audio(store, call_id, A)
    body = b"".join(fallback.pieces)
    assert fallback.content_length == len(body) == 44 and wav.read(body)[2] == b""
