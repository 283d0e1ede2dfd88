"""Every setting the function app reads, typed and validated in one place. Nothing else in `function_app/`
touches os.environ.

Settings are read lazily (on the first invocation, see `runtime.py`), never at import: the Python worker imports
the app to index it, and indexing must not depend on configuration.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from common.acs_jwt import DEFAULT_ISSUER, DEFAULT_JWKS_URL
from common.layout import DEFAULT_CONTAINER
from common.settings import SettingsError, require_storage, url_setting
from common.transport import CHANNELS

# The root script the Functions Python worker must import (see docs/control-plane.md, "Layout").
ENTRY_SCRIPT = "function_entry.py"

# name -> meaning. The infra cross-check test compares this with the app settings the Bicep sets.
ENV_VARS: dict[str, str] = {
    "PYTHON_SCRIPT_FILE_NAME": f"Read by the Functions Python worker, not by our code: must be {ENTRY_SCRIPT} "
                               "(a package named function_app/ shadows a root function_app.py)",
    "PYTHON_ENABLE_INIT_INDEXING": "Read by the Python worker: must be 1, required by HTTP streams "
                                   "(azurefunctions-extensions-http-fastapi) that stream the stitched WAV",
    "ACS_ENDPOINT": "https URL of the ACS resource (plain http only for a loopback simulator)",
    "ACS_ACCESS_KEY": "Base64 ACS access key (HMAC) — local use only; in Azure the managed identity is used",
    "STREAMER_WSS_URL": "Public wss:// URL of the streamer's /ws endpoint; /mixed or /unmixed is appended",
    "CALLBACK_URL": "Full URL of POST /api/callbacks given to ACS as callbackUri",
    "ACS_SOURCE_CALLER_ID": "Default E.164 caller id for calls to phone numbers (an ACS number you own)",
    "ACS_RESOURCE_ID": "ACS immutable resource id: the callback JWT audience (required unless CALLBACK_AUTH=disabled)",
    "ACS_JWKS_URL": f"JWKS URL of ACS's callback signing keys (default {DEFAULT_JWKS_URL})",
    "ACS_JWT_ISSUER": f"Callback JWT issuer (default {DEFAULT_ISSUER})",
    "AZURE_STORAGE_ACCOUNT_URL": "Blob endpoint, used with managed identity (user-delegation SAS)",
    "AZURE_STORAGE_CONNECTION_STRING": "Storage connection string with account key — local use (Azurite) only",
    "RECORDINGS_CONTAINER": f"Blob container for recordings and call state (default {DEFAULT_CONTAINER})",
    "AZURE_CLIENT_ID": "Client id of the user-assigned managed identity (ACS and Storage)",
    "ALLOWED_TARGETS": "Optional comma list of E.164 prefixes (+44, +1555) or exact ids (8:acs:…) that may be called",
    "ANSWER_RECIPIENTS": "Optional comma list of numbers / raw ids whose incoming calls are answered (default: all)",
    "DEFAULT_AUDIO_CHANNEL": "mixed (default) or unmixed, when a request does not say",
    "DEFAULT_SAMPLE_RATE": "16000 (default) or 24000, when a request does not say",
    "CALLBACK_AUTH": "'disabled' turns callback JWT verification off — local use only, logged as an error",
    "SAS_TTL_SECONDS": "Lifetime of the read URLs handed out for chunks (default 900, at most 86400)",
}
# Settings that must never be set in Azure (the Bicep must not set them).
LOCAL_ONLY: frozenset[str] = frozenset({"ACS_ACCESS_KEY", "AZURE_STORAGE_CONNECTION_STRING", "CALLBACK_AUTH"})
# Settings whose value in Azure is fixed by this code base (the infra test checks them too).
FIXED_VALUES: dict[str, str] = {"PYTHON_SCRIPT_FILE_NAME": ENTRY_SCRIPT, "PYTHON_ENABLE_INIT_INDEXING": "1"}

SAMPLE_RATES = (16000, 24000)
E164_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")

log = logging.getLogger(__name__)


def _csv(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in (env.get(name) or "").split(",") if x.strip())


@dataclass(frozen=True)
class Settings:
    acs_endpoint: str
    streamer_wss_url: str
    callback_url: str
    acs_access_key: str | None = None
    source_caller_id: str | None = None
    acs_resource_id: str = ""
    jwks_url: str = DEFAULT_JWKS_URL
    jwt_issuer: str = DEFAULT_ISSUER
    storage_account_url: str | None = None
    storage_connection_string: str | None = None
    container: str = DEFAULT_CONTAINER
    azure_client_id: str | None = None
    allowed_targets: tuple[str, ...] = ()
    answer_recipients: tuple[str, ...] = ()
    default_audio_channel: str = "mixed"
    default_sample_rate: int = 16000
    callback_auth: bool = True
    sas_ttl_seconds: int = 900

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        key = (env.get("ACS_ACCESS_KEY") or "").strip() or None
        if key is not None:
            try:
                base64.b64decode(key, validate=True)
            except (binascii.Error, ValueError):
                raise SettingsError("ACS_ACCESS_KEY is not valid base64") from None
        caller = (env.get("ACS_SOURCE_CALLER_ID") or "").strip() or None
        if caller is not None and not E164_RE.match(caller):
            raise SettingsError(f"ACS_SOURCE_CALLER_ID must be an E.164 number like +15551234567, got {caller!r}")
        channel = (env.get("DEFAULT_AUDIO_CHANNEL") or "mixed").strip().lower()
        if channel not in CHANNELS:
            raise SettingsError(f"DEFAULT_AUDIO_CHANNEL must be mixed or unmixed, got {channel!r}")
        rate_raw = (env.get("DEFAULT_SAMPLE_RATE") or "16000").strip()
        if rate_raw not in {str(r) for r in SAMPLE_RATES}:
            raise SettingsError(f"DEFAULT_SAMPLE_RATE must be 16000 or 24000, got {rate_raw!r}")
        auth = (env.get("CALLBACK_AUTH") or "enabled").strip().lower()
        if auth not in ("enabled", "disabled"):
            raise SettingsError(f"CALLBACK_AUTH must be 'enabled' or 'disabled', got {auth!r}")
        ttl_raw = (env.get("SAS_TTL_SECONDS") or "900").strip()
        if not (ttl_raw.isascii() and ttl_raw.isdigit()) or not 60 <= int(ttl_raw) <= 86400:
            raise SettingsError(f"SAS_TTL_SECONDS must be an integer in 60..86400, got {ttl_raw!r}")
        for target in _csv(env, "ALLOWED_TARGETS"):
            if not (re.fullmatch(r"\+[0-9]{1,15}", target) or ":" in target):
                raise SettingsError(f"ALLOWED_TARGETS entry {target!r} is neither a +prefix nor a raw id")
        s = cls(
            acs_endpoint=url_setting(env, "ACS_ENDPOINT", "https", "http"),
            streamer_wss_url=url_setting(env, "STREAMER_WSS_URL", "wss", "ws").rstrip("/"),
            callback_url=url_setting(env, "CALLBACK_URL", "https", "http"),
            acs_access_key=key,
            source_caller_id=caller,
            acs_resource_id=(env.get("ACS_RESOURCE_ID") or "").strip(),
            jwks_url=url_setting(env, "ACS_JWKS_URL", "https", "http", required=False) or DEFAULT_JWKS_URL,
            jwt_issuer=(env.get("ACS_JWT_ISSUER") or "").strip() or DEFAULT_ISSUER,
            storage_account_url=url_setting(env, "AZURE_STORAGE_ACCOUNT_URL", "https", "http", required=False) or None,
            storage_connection_string=(env.get("AZURE_STORAGE_CONNECTION_STRING") or "").strip() or None,
            container=(env.get("RECORDINGS_CONTAINER") or "").strip() or DEFAULT_CONTAINER,
            azure_client_id=(env.get("AZURE_CLIENT_ID") or "").strip() or None,
            allowed_targets=_csv(env, "ALLOWED_TARGETS"),
            answer_recipients=_csv(env, "ANSWER_RECIPIENTS"),
            default_audio_channel=channel,
            default_sample_rate=int(rate_raw),
            callback_auth=auth == "enabled",
            sas_ttl_seconds=int(ttl_raw),
        )
        if s.callback_auth and not s.acs_resource_id:
            raise SettingsError("ACS_RESOURCE_ID is required (the callback JWT audience); set CALLBACK_AUTH=disabled "
                                "only for local development")
        require_storage(s.storage_account_url, s.storage_connection_string)
        return s

    def warn_about_risks(self) -> None:
        """Loud, once-per-process reminders of settings that are fine locally and dangerous in Azure."""
        if not self.callback_auth:
            log.error("CALLBACK_AUTH=disabled: /api/callbacks accepts unauthenticated requests (local use only)")
        if not self.allowed_targets:
            log.warning("ALLOWED_TARGETS is not set: POST /api/calls may call any number (toll-fraud risk)")
