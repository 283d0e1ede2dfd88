"""The per-process objects every invocation shares (settings, SDK client, store, JWT verifier), built lazily on
first use — never at import, so the Functions worker can index the app without any configuration. Tests and the
local host may install their own with `set_runtime`."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from azure.communication.callautomation import CallAutomationClient

from common.acs_jwt import AcsJwtVerifier, AuthConfig
from function_app.acs import build_client, call_exists
from function_app.events import build_publisher
from function_app.finalize import Finalizer
from function_app.settings import Settings
from function_app.store import RecordingStore


@dataclass
class Runtime:
    settings: Settings
    acs: CallAutomationClient
    store: RecordingStore
    verifier: AcsJwtVerifier | None  # None only when CALLBACK_AUTH=disabled
    finalizer: Finalizer


def build_runtime(settings: Settings) -> Runtime:
    settings.warn_about_risks()
    verifier = None
    if settings.callback_auth:
        verifier = AcsJwtVerifier(AuthConfig(issuer=settings.jwt_issuer, audience=settings.acs_resource_id,
                                             jwks_url=settings.jwks_url))
    store = RecordingStore.from_settings(settings)
    client = build_client(settings)
    finalizer = Finalizer(store, build_publisher(settings), restart_attempts=settings.streaming_restart_attempts,
                          call_exists=lambda call_id: call_exists(client, call_id))
    return Runtime(settings, client, store, verifier, finalizer)


_lock = threading.Lock()
_current: Runtime | None = None


def get_runtime() -> Runtime:
    """Raises SettingsError (naming the setting) when the configuration is incomplete."""
    global _current
    with _lock:
        if _current is None:
            _current = build_runtime(Settings.from_env())
        return _current


def set_runtime(runtime: Runtime | None) -> None:
    global _current
    with _lock:
        _current = runtime
