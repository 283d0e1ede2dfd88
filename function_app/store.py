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
import random
import time
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
from function_app import state as state_model
from function_app.sas import AccountKeySigner, SasSigner, UserDelegationSigner
from function_app.settings import Settings

INDEX_PREFIX = "_calls/"
_INVERT = 10**13 - 1
_JSON = ContentSettings(content_type="application/json")
MAX_WRITE_ATTEMPTS = 12

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
    def read_state(self, call_id: str) -> dict[str, Any] | None:
        return self._read_json(call_state_blob(call_id))[0]

    def update_state(self, call_id: str, change: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Read-modify-write with an ETag condition, retried on conflict. `change` mutates and says if it did."""
        name = call_state_blob(call_id)
        for attempt in range(MAX_WRITE_ATTEMPTS):
            current, etag = self._read_json(name)
            doc = current if current is not None else state_model.new_state(call_id)
            if not change(doc):
                return doc
            data = orjson.dumps(doc)
            try:
                if etag is None:
                    self._upload(name, data, overwrite=False)
                else:
                    self._upload(name, data, overwrite=True, etag=etag,
                                 match_condition=MatchConditions.IfNotModified)
                return doc
            except (ResourceExistsError, ResourceModifiedError):
                time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
            except HttpResponseError as exc:
                if exc.status_code not in (409, 412):
                    raise
                time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
        raise StoreConflict(f"call state of {call_id} kept changing under us")

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
        return calls, pages.continuation_token or None

    # -- recordings ------------------------------------------------------------------------------------------
    def read_manifest(self, call_id: str) -> dict[str, Any] | None:
        raw = self.read_blob(manifest_blob(call_id))
        return manifest_model.to_builtins(manifest_model.loads(raw)) if raw is not None else None

    def read_url(self, name: str, ttl_seconds: int) -> tuple[str, str]:
        expiry = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
        sas = self.signer.sign(self.container.container_name, name, expiry)
        url = f"{self.container.url.rstrip('/')}/{quote(name)}?{sas}"
        return url, manifest_model.utc_iso(expiry.timestamp())
