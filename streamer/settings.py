"""Every setting the streamer reads, declared once (see common/settings.py). Nothing else in `streamer/` touches
os.environ; settings are read once at start, never on the frame path."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.settings import (
    AcsAuthSettings,
    SettingsError,
    StorageSettings,
    declared,
    env_vars,
    local_only,
    number,
    path,
    read,
    setting,
    switch,
    text,
    upper,
)

__all__ = ["DECLARED", "ENV_VARS", "LOCAL_ONLY", "Settings", "SettingsError"]


@dataclass(frozen=True, kw_only=True)
class Settings(StorageSettings, AcsAuthSettings):
    """Fields: ACS auth and storage (shared with the function app), then the streamer's own."""

    port: int = setting("PORT", 8080, "listen port", number(int))
    auth_enabled: bool = setting(
        "STREAMER_AUTH", True, "`disabled` turns the JWT checks off; logged as a warning at start", switch,
        shown_default="`enabled`", local_only=True)
    call_check: bool = setting(
        "STREAMER_CALL_CHECK", True, "records only calls the control plane placed or answered (their "
        "`call-state.json` exists; a new call's is waited for up to 10 s) and refuses (1008) a session that begins "
        "after its call ended; `disabled` records any call, logged as a warning", switch,
        shown_default="`enabled`", local_only=True)
    chunk_seconds: float = setting("CHUNK_SECONDS", 10.0, "seconds per chunk (rounded to whole frames)",
                                   number(float, 0.0))
    spool_dir: Path = setting(  # noqa: RUF009 - setting() makes a dataclasses.field; a Path is immutable
        "SPOOL_DIR", Path("/tmp/acs-recorder-spool"), "disk spool for chunks that cannot be uploaded yet", path)
    upload_memory_bytes: int = setting("UPLOAD_MEMORY_BYTES", 64 * 1024 * 1024,
                                       "chunk bytes kept in memory before spooling", number(int),
                                       shown_default="64 MiB")
    upload_concurrency: int = setting(
        "UPLOAD_CONCURRENCY", 32, "chunk uploads in flight; chunk throughput = this ÷ upload latency (with 8, "
        "chunks queued up at 700 benchmark calls)", number(int))
    max_frame_bytes: int = setting("MAX_FRAME_BYTES", 65536, "largest message accepted; a larger one closes with "
                                   "1009", number(int, 1023))
    max_active_calls: int = setting("MAX_ACTIVE_CALLS", 500, "per-replica cap; further upgrades are refused (503, "
                                    "`Retry-After`) and `/readyz` says not ready, so new calls go elsewhere",
                                    number(int))
    max_loop_lag_seconds: float = setting(
        "MAX_LOOP_LAG_SECONDS", 0.2, "overload: while the event loop runs this late (twice within a second: one stall "
        "is not overload), new "
        "upgrades are refused (503, `Retry-After`) and `/readyz` says not ready, so the calls already here keep "
        "their core; 0 turns shedding off", number(float, at_least=0.0))
    shutdown_grace_seconds: float = setting("SHUTDOWN_GRACE_SECONDS", 25.0,
                                            "upload time allowed on SIGTERM before spooling", number(float, 0.0))
    ws_ping_seconds: float = setting(
        "WS_PING_SECONDS", 20.0, "ping interval and pong timeout: a peer that vanished without closing is dropped "
        "(and its audio flushed) within 2× this", number(float, 0.0))
    log_level: str = setting("LOG_LEVEL", "INFO", "JSON logs on stderr, with `callConnectionId` and "
                             "`correlationId`", upper)
    appinsights_connection_string: str | None = setting(
        "APPLICATIONINSIGHTS_CONNECTION_STRING", None, "exports traces, logs and metrics to Application Insights "
        "(azure-monitor-opentelemetry)", text)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        s = read(cls, os.environ if env is None else env)
        s.require_audience(s.auth_enabled, "STREAMER_AUTH", "the JWT audience")
        s.require_storage()
        return s


# The declaration and its views; the infra cross-check test compares them with the app settings the Bicep sets.
DECLARED = declared(Settings)
ENV_VARS: dict[str, str] = env_vars(DECLARED)
LOCAL_ONLY: frozenset[str] = local_only(DECLARED)  # must never be set in Azure (the Bicep must not set them)
