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
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import orjson
from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings

from common import manifest as manifest_model
from common.layout import call_state_blob, is_valid_call_id, manifest_blob
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


class RecordingStore:
    def __init__(self, container: ContainerClient, signer: SasSigner):
        self.container = container
        self.signer = signer

    @classmethod
    def from_settings(cls, settings: Settings) -> RecordingStore:
        if settings.storage_connection_string:
            service = BlobServiceClient.from_connection_string(settings.storage_connection_string)
            key = service.credential.account_key if service.credential else None
            if not key:
                raise ValueError("AZURE_STORAGE_CONNECTION_STRING must carry an AccountKey (needed to sign SAS)")
            signer: SasSigner = AccountKeySigner(service.account_name or "", key)
        else:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential(managed_identity_client_id=settings.azure_client_id)
            service = BlobServiceClient(settings.storage_account_url or "", credential=credential)
            signer = UserDelegationSigner(service)
        return cls(service.get_container_client(settings.container), signer)

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

    def read_manifest(self, call_id: str) -> dict[str, Any] | None:
        """`read_manifest_model` in its JSON shape (what stitching and stream selection walk)."""
        m = self.read_manifest_model(call_id)
        return manifest_model.to_builtins(m) if m is not None else None

    def read_url(self, name: str, ttl_seconds: int) -> tuple[str, str]:
        expiry = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
        sas = self.signer.sign(self.container.container_name, name, expiry)
        url = f"{self.container.url.rstrip('/')}/{quote(name)}?{sas}"
        return url, manifest_model.utc_iso(expiry.timestamp())
