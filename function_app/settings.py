"""Every setting the function app reads, declared once (see common/settings.py). Nothing else in `function_app/`
touches os.environ.

Settings are read lazily (on the first invocation, see `runtime.py`), never at import: the Python worker imports
the app to index it, and indexing must not depend on configuration.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.settings import (
    REQUIRED,
    AcsAuthSettings,
    Setting,
    SettingsError,
    StorageSettings,
    base64_secret,
    choice,
    comma_list,
    declared,
    env_vars,
    fixed_values,
    https_url,
    integer_in,
    local_only,
    read,
    setting,
    switch,
    text,
    url,
)
from common.transport import CHANNELS

__all__ = ["DECLARED", "ENTRY_SCRIPT", "ENV_VARS", "FIXED_VALUES", "LOCAL_ONLY", "Settings", "SettingsError"]

# The root script the Functions Python worker must import (see docs/control-plane.md, "Layout").
ENTRY_SCRIPT = "function_entry.py"

SAMPLE_RATES = (16000, 24000)
E164_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")

log = logging.getLogger(__name__)


def _e164(name: str, raw: str) -> str:
    if not E164_RE.fullmatch(raw):
        raise SettingsError(f"{name} must be an E.164 number like +15551234567, got {raw!r}")
    return raw


def _target_entry(name: str, entry: str) -> None:
    if not (re.fullmatch(r"\+[0-9]{1,15}", entry) or ":" in entry):
        raise SettingsError(f"{name} entry {entry!r} is neither a +prefix nor a raw id")


# The connection the queue triggers (FinalizeRecording, StreamingRestart) name; the host reads
# `<name>__queueServiceUri` etc.
QUEUE_CONNECTION = "RecordingsStorage"

# Read by the Functions Python worker or host, not by our code; the fixed ones are fixed by this code base.
WORKER_SETTINGS: tuple[Setting[Any], ...] = (
    Setting("PYTHON_SCRIPT_FILE_NAME", f"read by the worker: must be `{ENTRY_SCRIPT}` (a package named "
            "`function_app/` shadows a root `function_app.py`)", fixed=ENTRY_SCRIPT),
    Setting("PYTHON_ENABLE_INIT_INDEXING", "read by the worker: must be `1`, required by the HTTP streams that "
            "stream the stitched WAV", fixed="1"),
    Setting(f"{QUEUE_CONNECTION}__queueServiceUri", "read by the host: queue endpoint of the finalization "
            "trigger (managed identity)", shown_default="set by the Bicep"),
    Setting(f"{QUEUE_CONNECTION}__credential", "read by the host: the trigger authenticates with the managed "
            "identity", fixed="managedidentity"),
    Setting(f"{QUEUE_CONNECTION}__clientId", "read by the host: the user-assigned identity of the trigger",
            shown_default="set by the Bicep"),
    Setting(QUEUE_CONNECTION, "read by the host: a connection string for the trigger (local stack only)",
            local_only=True, shown_default="—"),
)


@dataclass(frozen=True, kw_only=True)
class Settings(StorageSettings, AcsAuthSettings):
    """Fields: ACS auth and storage (shared with the streamer), then the function app's own."""

    acs_endpoint: str = setting("ACS_ENDPOINT", REQUIRED, "`https://<resource>.communication.azure.com`; "
                                "`http://` only for a loopback simulator", https_url)
    acs_access_key: str | None = setting(
        "ACS_ACCESS_KEY", None, "base64 access key (HMAC); without it the managed identity is used", base64_secret,
        local_only=True)
    streamer_wss_url: str = setting(
        "STREAMER_WSS_URL", REQUIRED, "public `wss://…/ws` of the streamer; `/mixed` or `/unmixed` is appended "
        "(common/transport.py)", url("wss", "ws", strip_slash=True))
    callback_url: str = setting("CALLBACK_URL", REQUIRED, "full URL of `POST /api/callbacks`, given to ACS as "
                                "`callbackUri`", https_url)
    source_caller_id: str | None = setting(
        "ACS_SOURCE_CALLER_ID", None, "default E.164 caller id for phone targets (a number of the ACS resource)",
        _e164)
    allowed_targets: tuple[str, ...] = setting(
        "ALLOWED_TARGETS", (), "comma list: `+…` entries are number prefixes, others exact ids (`8:acs:…`)",
        comma_list(_target_entry), shown_default="everyone (warned)")
    answer_recipients: tuple[str, ...] = setting(
        "ANSWER_RECIPIENTS", (), "comma list of numbers (`+1555…`) / raw ids (`4:+1…`, `8:acs:…`) whose incoming "
        "calls are answered", comma_list(), shown_default="all")
    default_audio_channel: str = setting("DEFAULT_AUDIO_CHANNEL", "mixed", "`mixed` or `unmixed` when a request "
                                         "does not say", choice({c: c for c in CHANNELS}))
    default_sample_rate: int = setting("DEFAULT_SAMPLE_RATE", 16000, "`16000` or `24000` when a request does not "
                                       "say", choice({str(r): r for r in SAMPLE_RATES}))
    callback_auth: bool = setting("CALLBACK_AUTH", True, "`disabled` skips the callback JWT check; logged as an "
                                  "error", switch, shown_default="`enabled`", local_only=True)
    sas_ttl_seconds: int = setting("SAS_TTL_SECONDS", 900, "lifetime of chunk read URLs (60…86400)",
                                   integer_in(60, 86400))
    streaming_restart_attempts: int = setting(
        "STREAMING_RESTART_ATTEMPTS", 3, "tries to restart media streaming that failed (or stopped unasked) while "
        "the call is connected, per outage (0…10; `0` = never)", integer_in(0, 10))
    events_endpoint: str | None = setting(
        "RECORDING_EVENTS_ENDPOINT", None, "Event Grid topic endpoint for `AcsCallRecorder.RecordingReady`; unset: "
        "no event (logged once)", https_url, shown_default="— (no events)")
    events_key: str | None = setting(
        "RECORDING_EVENTS_KEY", None, "topic access key (a local receiver); without it the managed identity is "
        "used", text, local_only=True)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        s = read(cls, os.environ if env is None else env)
        s.require_audience(s.callback_auth, "CALLBACK_AUTH", "the callback JWT audience")
        s.require_storage()
        return s

    def warn_about_risks(self) -> None:
        """Loud, once-per-process reminders of settings that are fine locally and dangerous in Azure."""
        if not self.callback_auth:
            log.error("CALLBACK_AUTH=disabled: /api/callbacks accepts unauthenticated requests (local use only)")
        if not self.allowed_targets:
            log.warning("ALLOWED_TARGETS is not set: POST /api/calls may call any number (toll-fraud risk)")


# The declaration and its views; the infra cross-check test compares them with the app settings the Bicep sets.
DECLARED: tuple[Setting[Any], ...] = (*WORKER_SETTINGS, *declared(Settings))
ENV_VARS: dict[str, str] = env_vars(DECLARED)
LOCAL_ONLY: frozenset[str] = local_only(DECLARED)  # must never be set in Azure (the Bicep must not set them)
FIXED_VALUES: dict[str, str] = fixed_values(DECLARED)  # the infra test checks the Bicep sets exactly these
