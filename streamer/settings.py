"""Every setting the streamer reads, typed, in one place. Nothing else in `streamer/` touches os.environ."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.acs_jwt import DEFAULT_ISSUER, DEFAULT_JWKS_URL
from common.layout import DEFAULT_CONTAINER
from common.settings import SettingsError, require_storage, url_setting

# name -> meaning. The infra cross-check test compares this with the app settings the Bicep sets.
ENV_VARS: dict[str, str] = {
    "PORT": "TCP port to serve on (default 8080)",
    "ACS_RESOURCE_ID": "ACS immutable resource id: the JWT audience (required unless STREAMER_AUTH=disabled)",
    "ACS_JWT_ISSUER": f"JWT issuer (default {DEFAULT_ISSUER})",
    "ACS_JWKS_URL": f"JWKS URL (default {DEFAULT_JWKS_URL})",
    "STREAMER_AUTH": "'disabled' turns JWT verification off — local use only, logged as a warning",
    "STREAMER_CALL_CHECK": "'disabled' records calls the control plane does not know (no call state) and calls that "
                           "have ended — local use only, logged as a warning",
    "AZURE_STORAGE_ACCOUNT_URL": "Blob endpoint, used with managed identity (DefaultAzureCredential)",
    "AZURE_STORAGE_CONNECTION_STRING": "Connection string — local use (Azurite) only",
    "AZURE_CLIENT_ID": "Client id of the user-assigned managed identity",
    "RECORDINGS_CONTAINER": f"Blob container for recordings (default {DEFAULT_CONTAINER})",
    "CHUNK_SECONDS": "Seconds of audio per WAV chunk (default 10)",
    "SPOOL_DIR": "Directory for chunks that cannot be uploaded yet (default /tmp/acs-recorder-spool)",
    "UPLOAD_MEMORY_BYTES": "Bytes of chunks waiting in memory before spilling to SPOOL_DIR (default 64 MiB)",
    "UPLOAD_CONCURRENCY": "Chunk uploads in flight at once (default 32): chunk throughput is this over upload latency",
    "MAX_FRAME_BYTES": "Largest WebSocket message accepted (default 65536); larger closes with 1009",
    "MAX_ACTIVE_CALLS": "Per-replica cap on concurrent WebSocket sessions (default 500); beyond it, refused",
    "SHUTDOWN_GRACE_SECONDS": "Time allowed on SIGTERM to flush and upload before spooling the rest (default 25)",
    "WS_PING_SECONDS": "WebSocket ping interval and pong timeout: a silent dead peer is dropped after 2x (default 20)",
    "LOG_LEVEL": "Log level (default INFO)",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "Sends traces/metrics/logs to Application Insights when set",
}
# Settings that must never be set in Azure (the Bicep must not set them).
LOCAL_ONLY: frozenset[str] = frozenset({"AZURE_STORAGE_CONNECTION_STRING", "STREAMER_AUTH", "STREAMER_CALL_CHECK"})

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    port: int = 8080
    acs_resource_id: str = ""
    jwt_issuer: str = DEFAULT_ISSUER
    jwks_url: str = DEFAULT_JWKS_URL
    auth_enabled: bool = True
    call_check: bool = True
    storage_account_url: str | None = None
    storage_connection_string: str | None = None
    azure_client_id: str | None = None
    container: str = DEFAULT_CONTAINER
    chunk_seconds: float = 10.0
    spool_dir: Path = Path("/tmp/acs-recorder-spool")
    upload_memory_bytes: int = 64 * 1024 * 1024
    upload_concurrency: int = 32
    max_frame_bytes: int = 65536
    max_active_calls: int = 500
    shutdown_grace_seconds: float = 25.0
    ws_ping_seconds: float = 20.0
    log_level: str = "INFO"
    appinsights_connection_string: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def num(name: str, default: float, kind: type = float, minimum: float = 0) -> float:
            raw = env.get(name)
            if raw in (None, ""):
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise SettingsError(f"{name} must be a number, got {raw!r}") from None
            if value <= minimum:
                raise SettingsError(f"{name} must be greater than {minimum}, got {raw!r}")
            return value

        auth = (env.get("STREAMER_AUTH") or "enabled").strip().lower()
        if auth not in ("enabled", "disabled"):
            raise SettingsError(f"STREAMER_AUTH must be 'enabled' or 'disabled', got {auth!r}")
        call_check = (env.get("STREAMER_CALL_CHECK") or "enabled").strip().lower()
        if call_check not in ("enabled", "disabled"):
            raise SettingsError(f"STREAMER_CALL_CHECK must be 'enabled' or 'disabled', got {call_check!r}")
        s = cls(
            port=int(num("PORT", 8080, int)),
            acs_resource_id=(env.get("ACS_RESOURCE_ID") or "").strip(),
            jwt_issuer=env.get("ACS_JWT_ISSUER") or DEFAULT_ISSUER,
            jwks_url=url_setting(env, "ACS_JWKS_URL", "https", "http", required=False) or DEFAULT_JWKS_URL,
            auth_enabled=auth == "enabled",
            call_check=call_check == "enabled",
            storage_account_url=url_setting(env, "AZURE_STORAGE_ACCOUNT_URL", "https", "http", required=False) or None,
            storage_connection_string=env.get("AZURE_STORAGE_CONNECTION_STRING") or None,
            azure_client_id=env.get("AZURE_CLIENT_ID") or None,
            container=env.get("RECORDINGS_CONTAINER") or DEFAULT_CONTAINER,
            chunk_seconds=num("CHUNK_SECONDS", 10.0, float, 0.0),
            spool_dir=Path(env.get("SPOOL_DIR") or "/tmp/acs-recorder-spool"),
            upload_memory_bytes=int(num("UPLOAD_MEMORY_BYTES", 64 * 1024 * 1024, int)),
            upload_concurrency=int(num("UPLOAD_CONCURRENCY", 32, int)),
            max_frame_bytes=int(num("MAX_FRAME_BYTES", 65536, int, 1023)),
            max_active_calls=int(num("MAX_ACTIVE_CALLS", 500, int)),
            shutdown_grace_seconds=num("SHUTDOWN_GRACE_SECONDS", 25.0, float, 0.0),
            ws_ping_seconds=num("WS_PING_SECONDS", 20.0, float, 0.0),
            log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
            appinsights_connection_string=env.get("APPLICATIONINSIGHTS_CONNECTION_STRING") or None,
        )
        if s.auth_enabled and not s.acs_resource_id:
            raise SettingsError("ACS_RESOURCE_ID is required (the JWT audience); set STREAMER_AUTH=disabled "
                                "only for local development")
        require_storage(s.storage_account_url, s.storage_connection_string)
        return s
