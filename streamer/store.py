"""Blob storage behind a narrow interface: create-if-absent, read with ETag, write-if-match, ping.

Two implementations: `AzureBlobBackend` (async azure-storage-blob; managed identity in Azure, connection string
locally) and `MemoryBackend` (unit tests). On top of the interface, `RecordingStore` implements the two writes
the streamer makes: a chunk (never overwritten — a second write of the same chunk is merged by overlay) and a
manifest part (merged into the stored manifest with ETag-conditional writes, so no update is lost).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from common import manifest as mf
from common.layout import manifest_blob
from streamer import wav

log = logging.getLogger(__name__)


class AlreadyExists(Exception):
    pass


class PreconditionFailed(Exception):
    pass


class StorageUnavailable(Exception):
    """Transient or unknown failure: retry later. Never a reason to drop audio."""


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

    async def close(self) -> None:
        pass


class AzureBlobBackend:
    def __init__(self, container: str, *, account_url: str | None = None, connection_string: str | None = None,
                 client_id: str | None = None):
        from azure.storage.blob.aio import BlobServiceClient

        # Our own retry loop (with metrics, backoff ≤ 5 s and the spool) owns retries. The storage SDK's policy
        # would sleep 15 s before its first retry, hiding outages and delaying chunks past their deadline.
        # use_env_settings=False: aiohttp would otherwise look up proxy and netrc settings in a thread per request.
        opts: dict[str, Any] = {"retry_total": 0, "connection_timeout": 5, "read_timeout": 30,
                                "use_env_settings": False}
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

    @staticmethod
    def _translate(exc: Exception) -> Exception:
        from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError

        if isinstance(exc, ResourceExistsError):
            return AlreadyExists(str(exc))
        if isinstance(exc, ResourceModifiedError) or (
            isinstance(exc, HttpResponseError) and exc.status_code == 412
        ):
            return PreconditionFailed(str(exc))
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
            props = await self._container.get_blob_client(name).upload_blob(
                data, overwrite=False, metadata=metadata,
                content_settings=ContentSettings(content_type=content_type),
            )
        except Exception as exc:
            raise self._translate(exc) from exc
        return props["etag"]

    async def get(self, name: str) -> Blob | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            downloader = await self._container.download_blob(name)
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
            props = await self._container.get_blob_client(name).upload_blob(
                data, overwrite=True, metadata=metadata, etag=etag,
                match_condition=MatchConditions.IfNotModified,
                content_settings=ContentSettings(content_type=content_type),
            )
        except Exception as exc:
            raise self._translate(exc) from exc
        return props["etag"]

    async def ping(self) -> None:
        try:
            await self._container.get_container_properties()
        except Exception as exc:
            raise self._translate(exc) from exc

    async def close(self) -> None:
        await self._svc.close()
        if self._credential is not None:
            await self._credential.close()


@dataclass(frozen=True)
class CachedManifest:
    """A manifest as a writer last saw it; both None means there was none yet."""

    manifest: dict[str, Any] | None
    etag: str | None


@dataclass(frozen=True)
class LandedChunk:
    revision: int
    sha256: str
    bytes: int
    duration_ms: int


class RecordingStore:
    """The streamer's two writes, on any BlobBackend."""

    def __init__(self, backend: BlobBackend):
        self.backend = backend

    async def put_chunk(self, name: str, wav_bytes: bytes, mask: bytes, frame_bytes: int) -> LandedChunk:
        sha = hashlib.sha256(wav_bytes).hexdigest()
        try:
            await self.backend.create(name, wav_bytes, {"revision": "1", "sha256": sha}, "audio/wav")
            return LandedChunk(1, sha, len(wav_bytes), self._duration_ms(wav_bytes))
        except AlreadyExists:
            pass
        # Same chunk written before (early seal, previous streaming session, or a retried upload whose reply
        # was lost): merge, never overwrite.
        rate, new_pcm = wav.decode(wav_bytes)
        while True:
            cur = await self.backend.get(name)
            if cur is None:  # deleted under us; create again
                try:
                    await self.backend.create(name, wav_bytes, {"revision": "1", "sha256": sha}, "audio/wav")
                    return LandedChunk(1, sha, len(wav_bytes), self._duration_ms(wav_bytes))
                except AlreadyExists:
                    continue
            cur_rate, cur_pcm = wav.decode(cur.data)
            if cur_rate != rate:
                raise StorageUnavailable(f"{name}: stored chunk is {cur_rate} Hz, new part {rate} Hz")
            merged = wav.encode(wav.overlay(cur_pcm, new_pcm, mask, frame_bytes), rate)
            revision = int(cur.metadata.get("revision", "1")) + 1
            msha = hashlib.sha256(merged).hexdigest()
            try:
                await self.backend.replace(name, merged, cur.etag, {"revision": str(revision), "sha256": msha},
                                           "audio/wav")
            except PreconditionFailed:
                continue
            log.info("chunk merged", extra={"blob": name, "revision": revision})
            return LandedChunk(revision, msha, len(merged), self._duration_ms(merged))

    @staticmethod
    def _duration_ms(wav_bytes: bytes) -> int:
        rate, pcm_bytes = wav.info(wav_bytes)  # from the header: decoding would copy the chunk's PCM
        return round(pcm_bytes / 2 / rate * 1000)

    async def merge_manifest(self, call_id: str, part: dict[str, Any], *, attempts: int = 20,
                             cached: CachedManifest | None = None) -> CachedManifest:
        """Merge `part` into the stored manifest with an ETag-conditional write, retried on conflicts (another
        session or the spool drainer). With `cached` (what this writer last wrote, or read at connect) the first
        try skips the read; a conflict means someone else wrote since, and the stored manifest is read and merged
        again."""
        name = manifest_blob(call_id)
        for _ in range(attempts):
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
                    except ValueError:
                        log.error("stored manifest unreadable; rebuilding from this part",
                                  extra={"callConnectionId": call_id})
            merged = mf.merge(base, part)
            try:
                if etag is None:
                    new_etag = await self.backend.create(name, mf.dumps(merged), {}, "application/json")
                else:
                    new_etag = await self.backend.replace(name, mf.dumps(merged), etag, {}, "application/json")
                return CachedManifest(merged, new_etag)
            except (AlreadyExists, PreconditionFailed):
                await asyncio.sleep(0.01)
        raise StorageUnavailable(f"manifest of {call_id}: too many concurrent updates")

    async def load_manifest(self, call_id: str) -> CachedManifest:
        """The stored manifest with its ETag, so a writer's first `merge_manifest` can skip reading it again."""
        cur = await self.backend.get(manifest_blob(call_id))
        return CachedManifest(mf.loads(cur.data), cur.etag) if cur is not None else CachedManifest(None, None)

    async def read_manifest(self, call_id: str) -> dict[str, Any] | None:
        return (await self.load_manifest(call_id)).manifest
