"""Blob Storage access for the control plane: call state (ETag-guarded read-modify-write, because Functions scale
out and callbacks for one call may run on several instances at once), the recent-calls index, manifests, chunks
and their read URLs.

The index is one empty blob per call under `_calls/`, named by inverted creation time so that a plain blob
listing is newest-first and pages with the service's own continuation token. `_calls` can never be a call id
(ids start with a letter or digit, see common.layout), so it cannot collide with a recording folder.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import msgspec
import orjson
from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobBlock, BlobServiceClient, ContainerClient, ContentSettings
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from common import call_state as cs
from common import manifest as manifest_model
from common import recording as rec_model
from common.layout import (
    FINAL_FOLDER,
    FINALIZE_QUEUE,
    STREAMING_RESTART_QUEUE,
    UNFINISHED_PREFIX,
    call_state_blob,
    is_valid_call_id,
    manifest_blob,
    recording_blob,
    unfinished_marker,
)
from common.retry import Backoff
from function_app import state as state_model
from function_app.sas import AccountKeySigner, SasSigner, UserDelegationSigner
from function_app.settings import Settings

INDEX_PREFIX = "_calls/"
_INVERT = 10**13 - 1
_JSON = ContentSettings(content_type="application/json")
MAX_WRITE_ATTEMPTS = 12
WRITE_RETRY = Backoff(base=0.01, cap=0.5)  # another instance wrote the same call state: try again soon

log = logging.getLogger(__name__)


class StoreConflict(RuntimeError):
    """Too many concurrent writers for one call-state blob; the caller should fail and let the sender retry."""


def index_blob(call_id: str, created: datetime) -> str:
    millis = int(created.timestamp() * 1000)
    return f"{INDEX_PREFIX}{_INVERT - millis:013d}_{call_id}"


def parse_index_blob(name: str) -> tuple[str, str] | None:
    """(call id, ISO creation time) from an index blob name, or None if it is not one."""
    stem = name[len(INDEX_PREFIX):]
    inverted, _, call_id = stem.partition("_")
    if not inverted.isdigit() or not is_valid_call_id(call_id):
        return None
    return call_id, manifest_model.utc_iso((_INVERT - int(inverted)) / 1000)


class RecordingConflict(RuntimeError):
    """recording.json changed since it was read: another finalizer is at work."""


class FileExists(RuntimeError):
    """A finished file was already committed (by a racing finalizer); it is never replaced."""


class RecordingStore:
    def __init__(self, container: ContainerClient, signer: SasSigner,
                 queues: Callable[[str], QueueClient] | None = None):
        """`queues(name)`: a client for one of the recordings account's queues (None: the storage settings name
        no queue endpoint)."""
        self.container = container
        self.signer = signer
        self._queue_factory = queues
        self._queues: dict[str, QueueClient] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> RecordingStore:
        if settings.storage_connection_string:
            service = BlobServiceClient.from_connection_string(settings.storage_connection_string)
            key = service.credential.account_key if service.credential else None
            if not key:
                raise ValueError("AZURE_STORAGE_CONNECTION_STRING must carry an AccountKey (needed to sign SAS)")
            signer: SasSigner = AccountKeySigner(service.account_name or "", key)
            conn = settings.storage_connection_string
            queues: Callable[[str], QueueClient] | None = (lambda name: QueueClient.from_connection_string(
                conn, name, message_encode_policy=TextBase64EncodePolicy())) if settings.has_queue() else None
        else:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential(managed_identity_client_id=settings.azure_client_id)
            service = BlobServiceClient(settings.storage_account_url or "", credential=credential)
            signer = UserDelegationSigner(service)
            queue_url = settings.queue_account_url() or ""

            def queues(name: str) -> QueueClient:
                return QueueClient(queue_url, name, credential=credential,
                                   message_encode_policy=TextBase64EncodePolicy())

        return cls(service.get_container_client(settings.container), signer, queues)

    # -- raw blobs -------------------------------------------------------------------------------------------
    def read_blob(self, name: str) -> bytes | None:
        try:
            return self.container.get_blob_client(name).download_blob().readall()
        except ResourceNotFoundError:
            return None

    def _read_json(self, name: str) -> tuple[dict[str, Any] | None, str | None]:
        try:
            downloader = self.container.get_blob_client(name).download_blob()
        except ResourceNotFoundError:
            return None, None
        return orjson.loads(downloader.readall()), downloader.properties.etag

    def _upload(self, name: str, data: bytes, **conditions: Any) -> None:
        blob = self.container.get_blob_client(name)
        try:
            blob.upload_blob(data, content_settings=_JSON, **conditions)
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) != "ContainerNotFound":
                raise
            with contextlib.suppress(ResourceExistsError):
                self.container.create_container()
            blob.upload_blob(data, content_settings=_JSON, **conditions)

    # -- call state ------------------------------------------------------------------------------------------
    def _read_state(self, call_id: str) -> tuple[dict[str, Any] | None, str | None]:
        """The stored call state, validated by the model (defaults filled in), and its ETag."""
        doc, etag = self._read_json(call_state_blob(call_id))
        return (None if doc is None else state_model.checked(doc)), etag

    def read_state(self, call_id: str) -> dict[str, Any] | None:
        return self._read_state(call_id)[0]

    def read_state_model(self, call_id: str) -> cs.CallState | None:
        doc = self.read_state(call_id)
        return None if doc is None else msgspec.convert(doc, cs.CallState)

    def update_state(self, call_id: str, change: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Read-modify-write with an ETag condition, retried on conflict (the one retry policy, full jitter).
        `change` mutates and says if it did; what it made is validated by the model before it is written."""
        name = call_state_blob(call_id)

        def attempt() -> dict[str, Any]:
            current, etag = self._read_state(call_id)
            doc = current if current is not None else state_model.new_state(call_id)
            if not change(doc):
                return doc
            doc = state_model.checked(doc)
            data = orjson.dumps(doc)
            if etag is None:
                self._upload(name, data, overwrite=False)
            else:
                self._upload(name, data, overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified)
            return doc

        def conflict(exc: BaseException) -> bool:
            return isinstance(exc, ResourceExistsError | ResourceModifiedError) or (
                isinstance(exc, HttpResponseError) and exc.status_code in (409, 412))

        try:
            return WRITE_RETRY.run_sync("call state update", attempt, retry_if=conflict, attempts=MAX_WRITE_ATTEMPTS)
        except (ResourceExistsError, ResourceModifiedError, HttpResponseError) as exc:
            if conflict(exc):
                raise StoreConflict(f"call state of {call_id} kept changing under us") from None
            raise

    # -- index -----------------------------------------------------------------------------------------------
    def add_to_index(self, call_id: str, created: datetime) -> None:
        self._upload(index_blob(call_id, created), b"", overwrite=True)
        self._upload(unfinished_marker(call_id), b"", overwrite=True)

    def unfinished_calls(self, limit: int = 5000) -> list[tuple[str, datetime]]:
        """Calls whose recording is not ready and announced yet (the sweep's work list), with the marker's age."""
        out: list[tuple[str, datetime]] = []
        try:
            for b in self.container.list_blobs(name_starts_with=UNFINISHED_PREFIX):
                call_id = b.name[len(UNFINISHED_PREFIX):]
                if is_valid_call_id(call_id):
                    out.append((call_id, b.last_modified))
                if len(out) >= limit:
                    break
        except ResourceNotFoundError:
            pass
        return out

    def mark_finished(self, call_id: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self.container.delete_blob(unfinished_marker(call_id))

    # -- finalization --------------------------------------------------------------------------------------------
    def _send(self, queue_name: str, body: str, *, delay: float = 0.0) -> bool:
        """Add a message (invisible for `delay` seconds) to one of our queues, creating it on first use. False
        when no queue endpoint is configured."""
        if self._queue_factory is None:
            return False
        queue = self._queues.get(queue_name)
        if queue is None:
            queue = self._queues[queue_name] = self._queue_factory(queue_name)
        visibility = max(0, math.ceil(delay)) or None
        try:
            queue.send_message(body, visibility_timeout=visibility)
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):
                queue.create_queue()
            queue.send_message(body, visibility_timeout=visibility)
        return True

    def request_finalize(self, call_id: str, reason: str, *, force: bool = False) -> None:
        """Ask a finalizer (the FinalizeRecording queue trigger, on any instance) to look at this call."""
        if not self._send(FINALIZE_QUEUE, rec_model.finalize_request(call_id, reason, force=force)):
            log.warning("no finalize queue (the storage connection string names none): %s is not finalized "
                        "until the sweep", call_id, extra={"callConnectionId": call_id})

    def request_restart(self, body: str, call_id: str, delay: float) -> bool:
        """Ask the StreamingRestart queue trigger (any instance) to restart a call's streaming after `delay`."""
        if not self._send(STREAMING_RESTART_QUEUE, body, delay=delay):
            log.error("no queue endpoint in the storage settings: streaming of %s is not restarted", call_id,
                      extra={"callConnectionId": call_id})
            return False
        return True

    def read_recording(self, call_id: str) -> tuple[rec_model.Recording | None, str | None]:
        try:
            downloader = self.container.get_blob_client(recording_blob(call_id)).download_blob()
        except ResourceNotFoundError:
            return None, None
        return rec_model.loads(downloader.readall()), downloader.properties.etag

    def write_recording(self, doc: rec_model.Recording, etag: str | None) -> str:
        """Create (etag None: only if absent) or replace (only if unchanged since `etag`) recording.json; raises
        RecordingConflict otherwise. Returns the new ETag."""
        blob = self.container.get_blob_client(recording_blob(doc.call_connection_id))
        data = manifest_model.dumps(doc)
        try:
            if etag is None:
                result = blob.upload_blob(data, content_settings=_JSON, overwrite=False)
            else:
                result = blob.upload_blob(data, content_settings=_JSON, overwrite=True, etag=etag,
                                          match_condition=MatchConditions.IfNotModified)
        except (ResourceExistsError, ResourceModifiedError) as exc:
            raise RecordingConflict(str(exc)[:200]) from None
        except HttpResponseError as exc:
            if exc.status_code in (409, 412):
                raise RecordingConflict(str(exc)[:200]) from None
            raise
        return str(result["etag"])

    def read_chunk(self, name: str) -> tuple[bytes, dict[str, str]] | None:
        """A chunk's bytes and metadata (its slot occupancy), in one request."""
        try:
            downloader = self.container.get_blob_client(name).download_blob()
        except ResourceNotFoundError:
            return None
        return downloader.readall(), dict(downloader.properties.metadata or {})

    def write_json(self, name: str, data: bytes) -> None:
        """A derived document (the finished recording's peaks): rewritten whole, the same by whoever writes it."""
        self._upload(name, data, overwrite=True)

    def blob_pieces(self, name: str, offset: int | None = None, length: int | None = None) -> Iterator[bytes]:
        """A blob's bytes (or `length` of them from `offset`) as the service sends them, a few MB at a time. The
        first request is made now (ResourceNotFoundError if the blob is gone), the rest as the pieces are read."""
        return iter(self.container.get_blob_client(name).download_blob(offset=offset, length=length).chunks())

    def chunk_properties(self, names: list[str]) -> dict[str, dict[str, str]]:
        """Metadata of a few chunks, a request each (absent ones are left out)."""
        out = {}
        for name in names:
            try:
                out[name] = dict(self.container.get_blob_client(name).get_blob_properties().metadata or {})
            except ResourceNotFoundError:
                continue
        return out

    def chunk_metadata(self, call_id: str, stream: str | None = None) -> dict[str, dict[str, str]]:
        """Every chunk of a call (or of one stream) with its metadata — slot occupancy and waveform peaks — from
        one listing (5000 blobs a page): what drawing a call costs, whatever its length."""
        prefix = f"{call_id}/{stream}/" if stream else f"{call_id}/"
        return {b.name: dict(b.metadata or {})
                for b in self.container.list_blobs(name_starts_with=prefix, include=["metadata"])
                if b.name.endswith(".wav") and not b.name.startswith(f"{call_id}/{FINAL_FOLDER}/")}

    def stage_block(self, name: str, block_id: str, data: bytes) -> None:
        self.container.get_blob_client(name).stage_block(block_id, data, length=len(data))

    def commit_file(self, name: str, block_ids: list[str], metadata: dict[str, str]) -> None:
        """Commit a finished file once: If-None-Match: * — an existing file is never replaced (FileExists)."""
        blob = self.container.get_blob_client(name)
        try:
            blob.commit_block_list([BlobBlock(block_id=b) for b in block_ids], metadata=metadata,
                                   content_settings=ContentSettings(content_type="audio/wav"),
                                   match_condition=MatchConditions.IfMissing)
        except (ResourceExistsError, ResourceModifiedError) as exc:
            raise FileExists(name) from exc
        except HttpResponseError as exc:
            if exc.status_code in (409, 412):
                raise FileExists(name) from exc
            raise

    def file_metadata(self, name: str) -> dict[str, str] | None:
        try:
            props = self.container.get_blob_client(name).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return dict(props.metadata or {}) | {"_size": str(props.size)}

    def list_calls(self, limit: int, page_token: str | None) -> tuple[list[tuple[str, str]], str | None]:
        pages = self.container.list_blobs(name_starts_with=INDEX_PREFIX, results_per_page=limit).by_page(
            continuation_token=page_token)
        try:
            page = next(pages)
            names = [b.name for b in page]
        except StopIteration:
            return [], None
        except ResourceNotFoundError:
            return [], None
        calls = [c for c in (parse_index_blob(n) for n in names) if c]
        return calls, pages.continuation_token or None  # type: ignore[attr-defined]  # ItemPaged.by_page

    # -- recordings ------------------------------------------------------------------------------------------
    def read_manifest_model(self, call_id: str) -> manifest_model.Manifest | None:
        """The stored manifest, validated by the model (raises ValueError if it is not one)."""
        raw = self.read_blob(manifest_blob(call_id))
        return manifest_model.loads(raw) if raw is not None else None

    def read_url(self, name: str, ttl_seconds: int) -> tuple[str, str]:
        expiry = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
        sas = self.signer.sign(self.container.container_name, name, expiry)
        url = f"{self.container.url.rstrip('/')}/{quote(name)}?{sas}"
        return url, manifest_model.utc_iso(expiry.timestamp())
