"""Blob storage behind a narrow interface: create-if-absent, read with ETag, write-if-match, ping.

Two implementations: `AzureBlobBackend` (async azure-storage-blob; managed identity in Azure, connection string
locally) and `MemoryBackend` (unit tests). On top of the interface, `RecordingStore` implements the two writes
the streamer makes: a chunk (never overwritten — a second write of the same chunk fills only the slots the stored
chunk has no frame in, by the occupancy kept in its metadata) and a manifest part (merged into the stored manifest
with ETag-conditional writes, so no update is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from common import call_state as cs
from common import manifest as mf
from common import peaks, wav
from common.layout import CALL_STATE_NAME, CHUNK_TAG, FINALIZE_QUEUE, MANIFEST_NAME, call_state_blob, manifest_blob
from common.recording import finalize_request
from common.retry import Backoff, RetryHook
from common.slots import fill_empty, occupancy, read_occupancy

log = logging.getLogger(__name__)


class AlreadyExists(Exception):
    pass


class PreconditionFailed(Exception):
    pass


class StorageUnavailable(Exception):
    """Transient or unknown failure: retry later. Never a reason to drop audio."""


class RequestRejected(Exception):
    """Storage refused the request itself (400, 411, 413, 414, 431): sending it again cannot succeed. Throttling,
    auth (a role assignment may still be propagating) and server errors are not this: they are retried."""


_REJECTED = frozenset({400, 411, 413, 414, 431})
_CHUNK_TAGS = {CHUNK_TAG[0]: CHUNK_TAG[1]}


def _tags(content_type: str) -> dict[str, str] | None:
    """Chunks (the only WAVs the streamer writes) carry the blob index tag the chunk lifecycle rule matches."""
    return _CHUNK_TAGS if content_type == "audio/wav" else None


@dataclass(frozen=True)
class Blob:
    data: bytes
    etag: str
    metadata: dict[str, str]


class BlobBackend(Protocol):
    async def ensure_container(self) -> None: ...
    async def create(self, name: str, data: bytes, metadata: dict[str, str], content_type: str) -> str: ...
    async def get(self, name: str) -> Blob | None: ...
    async def replace(self, name: str, data: bytes, etag: str, metadata: dict[str, str],
                      content_type: str) -> str: ...
    async def ping(self) -> None: ...
    async def has_wav(self, prefix: str) -> bool: ...
    async def close(self) -> None: ...


class MemoryBackend:
    """In-process backend with the same conditional semantics as Blob Storage; `fail` simulates an outage."""

    def __init__(self) -> None:
        self.blobs: dict[str, Blob] = {}
        self.fail = False
        self._etags = itertools.count(1)

    def _check(self) -> None:
        if self.fail:
            raise StorageUnavailable("memory backend set to fail")

    async def ensure_container(self) -> None:
        self._check()

    async def create(self, name: str, data: bytes, metadata: dict[str, str], content_type: str) -> str:
        self._check()
        if name in self.blobs:
            raise AlreadyExists(name)
        etag = f'"{next(self._etags)}"'
        self.blobs[name] = Blob(bytes(data), etag, dict(metadata))
        return etag

    async def get(self, name: str) -> Blob | None:
        self._check()
        return self.blobs.get(name)

    async def replace(self, name: str, data: bytes, etag: str, metadata: dict[str, str],
                      content_type: str) -> str:
        self._check()
        cur = self.blobs.get(name)
        if cur is None or cur.etag != etag:
            raise PreconditionFailed(name)
        new = f'"{next(self._etags)}"'
        self.blobs[name] = Blob(bytes(data), new, dict(metadata))
        return new

    async def ping(self) -> None:
        self._check()

    async def has_wav(self, prefix: str) -> bool:
        self._check()
        return any(n.startswith(prefix) and n.endswith(".wav") for n in self.blobs)

    async def close(self) -> None:
        pass


class FinalizeQueue(Protocol):
    async def request(self, call_id: str, reason: str) -> None: ...
    async def close(self) -> None: ...


def request_counter(counts: Counter[tuple[str, str]]) -> Callable[[Any], None]:
    """A storage SDK `raw_request_hook` counting every request sent (retries included) by method and by what it
    touches, so the cost of a call in storage requests can be read from /metrics."""

    def hook(request: Any) -> None:
        http = request.http_request
        path = http.url.split("?", 1)[0]
        if path.endswith(".wav"):
            what = "chunk"
        elif path.endswith(MANIFEST_NAME):
            what = "manifest"
        elif path.endswith(CALL_STATE_NAME):
            what = "call_state"
        elif path.endswith("/messages"):
            what = "queue"
        else:
            what = "other"
        counts[http.method, what] += 1

    return hook


class AzureFinalizeQueue:
    """Puts "this call may be ready to finalize" on the control plane's `recording-finalize` queue (base64, as
    the Functions queue trigger expects by default)."""

    def __init__(self, *, account_url: str | None = None, connection_string: str | None = None,
                 client_id: str | None = None, on_request: Callable[[Any], None] | None = None):
        from azure.storage.queue import TextBase64EncodePolicy
        from azure.storage.queue.aio import QueueClient

        opts: dict[str, Any] = {"retry_total": 0, "connection_timeout": 5, "read_timeout": 10,
                                "use_env_settings": False, "message_encode_policy": TextBase64EncodePolicy(),
                                "raw_request_hook": on_request}
        self._credential = None
        if connection_string:
            self._queue = QueueClient.from_connection_string(connection_string, FINALIZE_QUEUE, **opts)
        elif account_url:
            from azure.identity.aio import DefaultAzureCredential

            self._credential = DefaultAzureCredential(managed_identity_client_id=client_id)
            self._queue = QueueClient(account_url, FINALIZE_QUEUE, credential=self._credential, **opts)
        else:
            raise ValueError("need an account URL or a connection string")

    async def request(self, call_id: str, reason: str) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        body = finalize_request(call_id, reason)
        try:
            await self._queue.send_message(body)
        except ResourceNotFoundError:  # the control plane creates it; a fresh local stack may not have yet
            with contextlib.suppress(ResourceExistsError):
                await self._queue.create_queue()
            await self._queue.send_message(body)

    async def close(self) -> None:
        await self._queue.close()
        if self._credential is not None:
            await self._credential.close()


class AzureBlobBackend:
    CLIENT_CACHE = 4096  # BlobClients kept (two per call: a few thousand calls); they share one pipeline

    def __init__(self, container: str, *, account_url: str | None = None, connection_string: str | None = None,
                 client_id: str | None = None, on_request: Callable[[Any], None] | None = None):
        from azure.storage.blob.aio import BlobServiceClient

        # Our own retry loop (with metrics, backoff ≤ 5 s and the spool) owns retries. The storage SDK's policy
        # would sleep 15 s before its first retry, hiding outages and delaying chunks past their deadline.
        # use_env_settings=False: aiohttp would otherwise look up proxy and netrc settings in a thread per request.
        opts: dict[str, Any] = {"retry_total": 0, "connection_timeout": 5, "read_timeout": 30,
                                "use_env_settings": False, "raw_request_hook": on_request}
        self._credential = None
        if connection_string:
            self._svc = BlobServiceClient.from_connection_string(connection_string, **opts)
        elif account_url:
            from azure.identity.aio import DefaultAzureCredential

            self._credential = DefaultAzureCredential(managed_identity_client_id=client_id)
            self._svc = BlobServiceClient(account_url, credential=self._credential, **opts)
        else:
            raise ValueError("need an account URL or a connection string")
        self._container = self._svc.get_container_client(container)
        self._clients: OrderedDict[str, Any] = OrderedDict()

    def _blob(self, name: str) -> Any:
        """A BlobClient for `name`, kept for the blobs a call touches again and again (its manifest and call
        state): building one costs about as much CPU as the request it sends. Chunks are written once each."""
        if name.endswith(".wav"):
            return self._container.get_blob_client(name)
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self._container.get_blob_client(name)
            if len(self._clients) > self.CLIENT_CACHE:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(name)
        return client

    @staticmethod
    def _translate(exc: Exception) -> Exception:
        from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError

        if isinstance(exc, ResourceExistsError):
            return AlreadyExists(str(exc))
        if isinstance(exc, ResourceModifiedError) or (
            isinstance(exc, HttpResponseError) and exc.status_code == 412
        ):
            return PreconditionFailed(str(exc))
        if isinstance(exc, HttpResponseError) and exc.status_code in _REJECTED:
            return RequestRejected(f"storage refused the request ({exc.status_code}): "
                                   f"{str(exc).splitlines()[0][:200]}")
        return StorageUnavailable(f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}")

    async def ensure_container(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        try:
            await self._container.create_container()
        except ResourceExistsError:
            pass
        except Exception as exc:
            raise self._translate(exc) from exc

    async def create(self, name: str, data: bytes, metadata: dict[str, str], content_type: str) -> str:
        from azure.storage.blob import ContentSettings

        try:
            props = await self._blob(name).upload_blob(
                data, overwrite=False, metadata=metadata, tags=_tags(content_type),
                content_settings=ContentSettings(content_type=content_type),
            )
        except Exception as exc:
            raise self._translate(exc) from exc
        return str(props["etag"])

    async def get(self, name: str) -> Blob | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            downloader = await self._blob(name).download_blob()
            data = await downloader.readall()
        except ResourceNotFoundError:
            return None
        except Exception as exc:
            raise self._translate(exc) from exc
        return Blob(data, downloader.properties.etag, dict(downloader.properties.metadata or {}))

    async def replace(self, name: str, data: bytes, etag: str, metadata: dict[str, str],
                      content_type: str) -> str:
        from azure.core import MatchConditions
        from azure.storage.blob import ContentSettings

        try:
            props = await self._blob(name).upload_blob(
                data, overwrite=True, metadata=metadata, etag=etag, tags=_tags(content_type),
                match_condition=MatchConditions.IfNotModified,
                content_settings=ContentSettings(content_type=content_type),
            )
        except Exception as exc:
            raise self._translate(exc) from exc
        return str(props["etag"])

    async def ping(self) -> None:
        try:
            await self._container.get_container_properties()
        except Exception as exc:
            raise self._translate(exc) from exc

    async def has_wav(self, prefix: str) -> bool:
        try:
            async for blob in self._container.list_blobs(name_starts_with=prefix):
                if blob.name.endswith(".wav"):
                    return True
        except Exception as exc:
            raise self._translate(exc) from exc
        return False

    async def close(self) -> None:
        await self._svc.close()
        if self._credential is not None:
            await self._credential.close()


@dataclass(frozen=True)
class CachedManifest:
    """A manifest as a writer last saw it; both None means there was none yet."""

    manifest: mf.Manifest | None
    etag: str | None


@dataclass(frozen=True)
class LandedChunk:
    revision: int
    sha256: str
    bytes: int
    duration_ms: int
    filled: int = 0  # slots this write added to the stored chunk (all of its slots when it created the blob)
    conflicts: int = 0  # slots this write also had, with other audio: the stored audio was kept

    def entry(self, blob: str, ref: mf.ChunkRef) -> mf.Chunk:
        """The manifest entry of the chunk as it now stands in storage."""
        return ref.landed(blob, revision=self.revision, sha256=self.sha256, size=self.bytes,
                          duration_ms=self.duration_ms)


class UnrecoverableClock(Exception):
    """The call's manifest is unusable while chunks of the call exist: a new clock would put new audio into the
    old chunks' slots. Not retried; what the session holds stays in the spool for an operator."""


class PermanentChunkError(Exception):
    """A chunk that can never land as it is (its format differs from the stored chunk's, the stored chunk is
    unreadable, storage refuses the request itself): retrying would block an upload worker forever."""


MAX_METADATA_CHARS = 7 * 1024  # Azure refuses blob metadata over 8 KiB (Azurite does not); keep clear of it


def _chunk_meta(revision: int, sha256: str, occupied: np.ndarray, frame_bytes: int, pcm: bytes | memoryview,
                rate: int) -> dict[str, str]:
    """A chunk blob's metadata: its revision and hash, which frame slots hold received audio, and the waveform
    peaks the recordings page draws (common.peaks) — computed here, once per stored revision."""
    meta = {"revision": str(revision), "sha256": sha256, "slots": occupancy(occupied), "slotbytes": str(frame_bytes),
            peaks.META_KEY: peaks.encode(peaks.levels(pcm, occupied, frame_bytes, rate))}
    if sum(len(k) + len(v) for k, v in meta.items()) > MAX_METADATA_CHARS:
        del meta[peaks.META_KEY]  # a very long chunk: the page computes its peaks from the audio instead
    return meta


class RecordingStore:
    """The streamer's two writes, on any BlobBackend."""

    def __init__(self, backend: BlobBackend, queue: FinalizeQueue | None = None, on_retry: RetryHook | None = None):
        self.backend = backend
        self.queue = queue
        # ETag conflicts: another writer of this call just wrote (counted like every other retry)
        self.merge_retry = Backoff(base=0.005, cap=0.2, on_retry=on_retry)

    async def settled(self, call_id: str, manifest: mf.Manifest | None) -> bool:
        """After a final manifest write: when every session of the call has settled and the call state (read
        now, after that write) says the call ended, ask the control plane to finalize. Returns whether it asked."""
        if self.queue is None or manifest is None or not manifest.sessions:
            return False
        if not all(s.settled for s in manifest.sessions):
            return False
        state = await self.read_call_state(call_id)
        if state is None or not state.ended:
            return False
        await self.queue.request(call_id, "sessions_settled")
        return True

    async def put_chunk(self, name: str, wav_bytes: bytes, mask: bytes, frame_bytes: int) -> LandedChunk:
        """Store one chunk part. Audio once stored is the truth: a part for a chunk that exists fills only the
        slots the stored chunk has no frame in, and slots both hold are kept as stored (counted as conflicts
        when the audio differs; an identical replay is not a conflict)."""
        sha = hashlib.sha256(wav_bytes).hexdigest()
        new_occ = np.frombuffer(mask, dtype=np.uint8) != 0
        try:
            rate, pcm_bytes = wav.info(wav_bytes)
        except ValueError as exc:  # only a damaged spool file gets here (the streamer writes every part itself)
            raise PermanentChunkError(f"{name}: this part is unreadable ({exc})") from None
        new_pcm = memoryview(wav_bytes)[wav.HEADER_BYTES:wav.HEADER_BYTES + pcm_bytes]
        duration_ms = round(pcm_bytes / 2 / rate * 1000)
        meta = _chunk_meta(1, sha, new_occ, frame_bytes, new_pcm, rate)
        try:
            await self.backend.create(name, wav_bytes, meta, "audio/wav")
            return LandedChunk(1, sha, len(wav_bytes), duration_ms, int(new_occ.sum()))
        except AlreadyExists:
            pass
        # Same chunk written before (early seal, previous streaming session, or a retried upload whose reply
        # was lost): fill what is empty, never overwrite.
        while True:
            cur = await self.backend.get(name)
            if cur is None:  # deleted under us; create again
                try:
                    await self.backend.create(name, wav_bytes, meta, "audio/wav")
                    return LandedChunk(1, sha, len(wav_bytes), duration_ms, int(new_occ.sum()))
                except AlreadyExists:
                    continue
            try:
                cur_rate, cur_pcm = wav.decode(cur.data, exact=True)
            except ValueError as exc:
                raise PermanentChunkError(f"{name}: stored chunk is unreadable ({exc})") from None
            if cur_rate != rate:
                raise PermanentChunkError(f"{name}: stored chunk is {cur_rate} Hz, this part {rate} Hz")
            if cur.metadata.get("slotbytes", str(frame_bytes)) != str(frame_bytes):
                raise PermanentChunkError(f"{name}: stored chunk has {cur.metadata['slotbytes']}-byte frame slots, "
                                          f"this part {frame_bytes}")
            try:
                cur_occ = read_occupancy(cur.metadata, len(cur_pcm), frame_bytes)
                revision = int(cur.metadata.get("revision", "1"))
            except ValueError as exc:  # changed by hand: which slots hold audio is unknown, so nothing may be added
                raise PermanentChunkError(f"{name}: stored chunk's metadata is unreadable ({exc})") from None
            merged_pcm, merged_occ, filled, conflicts = fill_empty(cur_pcm, cur_occ, new_pcm, new_occ,
                                                                        frame_bytes)
            if conflicts:
                log.warning("chunk part conflicts with stored audio; stored audio kept",
                            extra={"blob": name, "conflictSlots": conflicts})
            if not filled:  # nothing new: the stored chunk stands as it is
                return LandedChunk(revision, cur.metadata.get("sha256") or hashlib.sha256(cur.data).hexdigest(),
                                   len(cur.data), self._duration_ms(cur.data), 0, conflicts)
            merged = wav.encode(merged_pcm, rate)
            msha = hashlib.sha256(merged).hexdigest()
            try:
                await self.backend.replace(name, merged, cur.etag, _chunk_meta(
                    revision + 1, msha, merged_occ, frame_bytes, merged_pcm, rate), "audio/wav")
            except PreconditionFailed:
                continue
            log.info("chunk merged", extra={"blob": name, "revision": revision + 1, "filledSlots": filled})
            return LandedChunk(revision + 1, msha, len(merged), self._duration_ms(merged), filled, conflicts)

    @staticmethod
    def _duration_ms(wav_bytes: bytes) -> int:
        rate, pcm_bytes = wav.info(wav_bytes)  # from the header: decoding would copy the chunk's PCM
        return round(pcm_bytes / 2 / rate * 1000)

    async def merge_manifest(self, call_id: str, part: mf.Manifest, *, attempts: int = 20,
                             cached: CachedManifest | None = None) -> CachedManifest:
        """Merge `part` into the stored manifest with an ETag-conditional write, retried on conflicts (another
        session or the spool drainer). With `cached` (what this writer last wrote, or read at connect) the first
        try skips the read; a conflict means someone else wrote since, and the stored manifest is read and merged
        again."""
        name = manifest_blob(call_id)
        for attempt in range(1, attempts + 1):
            if cached is not None:
                base, etag = cached.manifest, cached.etag
                cached = None
            else:
                cur = await self.backend.get(name)
                base, etag = None, None
                if cur is not None:
                    etag = cur.etag
                    try:
                        base = mf.loads(cur.data)
                    except ValueError as exc:
                        await self._set_aside(call_id, cur.data, str(exc))
            merged = mf.merge(base, part)
            try:
                if etag is None:
                    new_etag = await self.backend.create(name, mf.dumps(merged), {}, "application/json")
                else:
                    new_etag = await self.backend.replace(name, mf.dumps(merged), etag, {}, "application/json")
                return CachedManifest(merged, new_etag)
            except (AlreadyExists, PreconditionFailed) as exc:
                self.merge_retry.note("manifest merge", attempt, exc)
                await asyncio.sleep(self.merge_retry.delay(attempt))
        raise StorageUnavailable(f"manifest of {call_id}: too many concurrent updates")

    async def claim_clock(self, call_id: str, claim: mf.Part) -> CachedManifest:
        """A session's first write for its call: create the manifest with `claim` (a clock and the session) if
        the call has none, or, if it has one, return the stored manifest, whose clock the session must then
        take. Create-first: a new call, the common case, costs one request and no read."""
        try:
            merged = mf.merge(None, claim)
            return CachedManifest(merged, await self.backend.create(manifest_blob(call_id), mf.dumps(merged), {},
                                                                    "application/json"))
        except AlreadyExists:
            pass
        cached = await self.load_manifest(call_id)
        stored = cached.manifest
        if stored is not None and stored.clock_origin and stored.chunk_seconds:
            return cached
        return await self.merge_manifest(call_id, claim, cached=cached)  # one without a clock (or set aside)

    async def load_manifest(self, call_id: str) -> CachedManifest:
        """The stored manifest with its ETag, so a writer's first `merge_manifest` can skip reading it again. One
        that cannot be used (not JSON, an unusable clock) is copied aside and treated as absent, so the call is
        recorded again rather than held forever — unless chunks of the call exist, whose clock it was
        (`UnrecoverableClock`)."""
        cur = await self.backend.get(manifest_blob(call_id))
        if cur is None:
            return CachedManifest(None, None)
        try:
            return CachedManifest(mf.loads(cur.data), cur.etag)
        except ValueError as exc:
            if await self.backend.has_wav(f"{call_id}/"):
                raise UnrecoverableClock(f"manifest of {call_id} is unusable ({exc}) and the call has chunks: "
                                         "its clock cannot be known") from None
            await self._set_aside(call_id, cur.data, str(exc))
            return CachedManifest(None, cur.etag)

    async def _set_aside(self, call_id: str, data: bytes, why: str) -> None:
        name = f"{call_id}/manifest.unreadable-{mf.now_iso().replace(':', '')}.json"
        with contextlib.suppress(AlreadyExists):
            await self.backend.create(name, data, {}, "application/json")
        log.error("stored manifest unreadable (%s); kept as %s and rebuilt from what is recorded now", why, name,
                  extra={"callConnectionId": call_id})

    async def read_manifest(self, call_id: str) -> mf.Manifest | None:
        return (await self.load_manifest(call_id)).manifest

    async def read_call_state(self, call_id: str) -> cs.CallState | None:
        """The control plane's call state (None if it has none): which calls exist and whether they ended. One
        that cannot be read counts as a call that exists and has not ended: the control plane wrote it."""
        cur = await self.backend.get(call_state_blob(call_id))
        if cur is None:
            return None
        try:
            return cs.loads(cur.data)
        except ValueError as exc:
            log.warning("call state unreadable: %s", exc, extra={"callConnectionId": call_id})
            return cs.CallState(call_connection_id=call_id)
