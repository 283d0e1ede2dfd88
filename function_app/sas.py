"""Short-lived read URLs for chunk blobs: account-key SAS where we hold a key (Azurite, local), user-delegation SAS
where we authenticate with a managed identity (Azure) — so no storage key ever needs to reach the function app."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol

from azure.storage.blob import BlobSasPermissions, BlobServiceClient, UserDelegationKey, generate_blob_sas

CLOCK_SKEW = timedelta(minutes=5)


class SasSigner(Protocol):
    def sign(self, container: str, blob: str, expiry: datetime) -> str: ...


class AccountKeySigner:
    def __init__(self, account_name: str, account_key: str):
        self.account_name = account_name
        self._key = account_key

    def sign(self, container: str, blob: str, expiry: datetime) -> str:
        return generate_blob_sas(self.account_name, container, blob, account_key=self._key,
                                 permission=BlobSasPermissions(read=True), expiry=expiry,
                                 start=datetime.now(UTC) - CLOCK_SKEW)


class UserDelegationSigner:
    """Caches one user-delegation key (valid two days; a SAS lives at most one) and renews it before it would
    outlive a SAS it signs."""

    KEY_LIFETIME = timedelta(days=2)

    def __init__(self, service: BlobServiceClient):
        self._service = service
        self._key: UserDelegationKey | None = None
        self._key_expiry = datetime.min.replace(tzinfo=UTC)
        self._lock = threading.Lock()

    def _delegation_key(self, needed_until: datetime) -> UserDelegationKey:
        with self._lock:
            if self._key is None or self._key_expiry <= needed_until:
                start = datetime.now(UTC) - CLOCK_SKEW
                self._key_expiry = start + CLOCK_SKEW + self.KEY_LIFETIME
                self._key = self._service.get_user_delegation_key(start, self._key_expiry)
            return self._key

    def sign(self, container: str, blob: str, expiry: datetime) -> str:
        key = self._delegation_key(expiry)
        return generate_blob_sas(self._service.account_name or "", container, blob, user_delegation_key=key,
                                 permission=BlobSasPermissions(read=True), expiry=expiry,
                                 start=datetime.now(UTC) - CLOCK_SKEW)
