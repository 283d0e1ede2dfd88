"""The function app's settings: one typed place, every name declared for the infra cross-check, errors that name
the setting, and the SDK client built from endpoint + credential (http only for loopback)."""

from __future__ import annotations

import ast
import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AzureKeyCredential
from azure.core.pipeline.policies import BearerTokenCredentialPolicy
from azure.storage.blob import UserDelegationKey

from common.transport import transport_url
from function_app.acs import build_client, streaming_options
from function_app.sas import UserDelegationSigner
from function_app.settings import (
    ENV_VARS,
    FIXED_VALUES,
    LOCAL_ONLY,
    QUEUE_CONNECTION,
    WORKER_SETTINGS,
    Settings,
    SettingsError,
)

APP = Path(__file__).resolve().parent.parent / "function_app"
KEY = base64.b64encode(b"k" * 32).decode()
MINIMAL = {"ACS_ENDPOINT": "https://res.communication.azure.com/", "STREAMER_WSS_URL": "wss://rec.example/ws",
           "CALLBACK_URL": "https://app.azurewebsites.net/api/callbacks", "ACS_RESOURCE_ID": "guid",
           "AZURE_STORAGE_ACCOUNT_URL": "https://acct.blob.core.windows.net"}


def test_defaults_for_azure() -> None:
    s = Settings.from_env(MINIMAL)
    assert s.acs_access_key is None and s.callback_auth and s.container == "recordings"
    assert (s.default_audio_channel, s.default_sample_rate, s.sas_ttl_seconds) == ("mixed", 16000, 900)
    assert s.jwt_issuer == "https://acscallautomation.communication.azure.com"
    assert s.jwks_url == "https://acscallautomation.communication.azure.com/calling/keys"
    assert s.allowed_targets == () and s.answer_recipients == ()


class ReadRecorder(dict[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: dict[str, str]):
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)


def test_everything_read_is_declared_and_nothing_else_reads_the_environment() -> None:
    env = ReadRecorder(MINIMAL)
    Settings.from_env(env)
    read = env.read
    assert read, "nothing was read: the recorder is stale"
    assert read <= set(ENV_VARS)
    platform = {s.env for s in WORKER_SETTINGS}
    assert set(ENV_VARS) - read == platform  # only the worker's and host's own settings are not read by us
    assert set(FIXED_VALUES) <= platform
    assert set(LOCAL_ONLY) <= set(ENV_VARS) and not set(LOCAL_ONLY) & set(FIXED_VALUES)
    assert {"ACS_ACCESS_KEY", "AZURE_STORAGE_CONNECTION_STRING", "CALLBACK_AUTH", "RECORDING_EVENTS_KEY",
            QUEUE_CONNECTION} == LOCAL_ONLY
    for path in APP.glob("*.py"):
        if path.name == "settings.py":
            continue
        tree = ast.parse(path.read_text())
        names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not names & {"environ", "getenv"}, f"{path.name} reads the environment"


def test_required_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ACS_ENDPOINT", "STREAMER_WSS_URL", "CALLBACK_URL"):
        env = {k: v for k, v in MINIMAL.items() if k != name}
        with pytest.raises(SettingsError, match=name):
            Settings.from_env(env)
    with pytest.raises(SettingsError, match="ACS_RESOURCE_ID"):
        Settings.from_env({k: v for k, v in MINIMAL.items() if k != "ACS_RESOURCE_ID"})
    assert Settings.from_env({**{k: v for k, v in MINIMAL.items() if k != "ACS_RESOURCE_ID"},
                              "CALLBACK_AUTH": "disabled"}).callback_auth is False
    with pytest.raises(SettingsError, match="AZURE_STORAGE_ACCOUNT_URL"):
        Settings.from_env({k: v for k, v in MINIMAL.items() if k != "AZURE_STORAGE_ACCOUNT_URL"})


@pytest.mark.parametrize(("name", "value"), [
    ("ACS_ENDPOINT", "http://res.communication.azure.com"),  # plain http only for loopback
    ("ACS_ENDPOINT", "ftp://127.0.0.1"),
    ("STREAMER_WSS_URL", "https://rec.example/ws"),
    ("STREAMER_WSS_URL", "ws://rec.example/ws"),
    ("CALLBACK_URL", "http://10.0.0.5/api/callbacks"),
    ("ACS_ACCESS_KEY", "not base64!"),
    ("ACS_SOURCE_CALLER_ID", "5551234"),
    ("DEFAULT_AUDIO_CHANNEL", "stereo"),
    ("DEFAULT_SAMPLE_RATE", "8000"),
    ("CALLBACK_AUTH", "off"),
    ("SAS_TTL_SECONDS", "5"),
    ("SAS_TTL_SECONDS", "many"),
    ("ALLOWED_TARGETS", "+44,1555"),
    ("ACS_JWKS_URL", "http://evil.example/keys"),
])
def test_malformed_values_name_the_setting(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name) as info:
        Settings.from_env({**MINIMAL, name: value})
    if name == "ACS_ACCESS_KEY":
        assert value not in str(info.value)  # never echo a secret


def test_loopback_http_is_allowed_for_the_simulator() -> None:
    s = Settings.from_env({**MINIMAL, "ACS_ENDPOINT": "http://127.0.0.1:8081", "ACS_ACCESS_KEY": KEY,
                           "STREAMER_WSS_URL": "ws://localhost:8080/ws/", "CALLBACK_URL": "http://[::1]:7071/x",
                           "ALLOWED_TARGETS": " +1555, 8:acs:abc ", "ANSWER_RECIPIENTS": "+15550001111"})
    assert s.streamer_wss_url == "ws://localhost:8080/ws"
    assert s.allowed_targets == ("+1555", "8:acs:abc") and s.answer_recipients == ("+15550001111",)
    client = build_client(s)
    assert client._client._config.endpoint == "http://127.0.0.1:8081"  # not rewritten to https


def test_managed_identity_when_there_is_no_key() -> None:
    client = build_client(Settings.from_env({**MINIMAL, "AZURE_CLIENT_ID": "client-guid"}))
    policy = client._client._config.authentication_policy
    assert isinstance(policy, BearerTokenCredentialPolicy)
    assert policy._scopes == ("https://communication.azure.com//.default",)
    assert not (APP / "acs.py").read_text().count("from_connection_string(")
    keyed = build_client(Settings.from_env({**MINIMAL, "ACS_ACCESS_KEY": KEY}))
    assert isinstance(keyed._client._config.credential, AzureKeyCredential)


def test_transport_url_tells_the_streamer_the_channel_type() -> None:
    s = Settings.from_env({**MINIMAL, "STREAMER_WSS_URL": "wss://rec.example/ws"})
    assert transport_url(s.streamer_wss_url, "mixed") == "wss://rec.example/ws/mixed"
    opts = streaming_options(s, "unmixed", 24000, dtmf=False)
    assert opts.transport_url == "wss://rec.example/ws/unmixed" and opts.enable_dtmf_tones is None


def test_user_delegation_sas_is_signed_with_a_cached_key() -> None:
    calls: list[tuple[datetime, datetime]] = []

    class Service:
        account_name = "acct"

        def get_user_delegation_key(self, start: datetime, expiry: datetime) -> Any:
            calls.append((start, expiry))
            key = UserDelegationKey()
            key.signed_oid, key.signed_tid, key.signed_service, key.signed_version = "oid", "tid", "b", "2025-01-05"
            key.signed_start = start.strftime("%Y-%m-%dT%H:%M:%SZ")
            key.signed_expiry = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
            key.value = base64.b64encode(b"x" * 32).decode()
            return key

    signer = UserDelegationSigner(Service())  # type: ignore[arg-type]
    soon = datetime.now(UTC) + timedelta(minutes=15)
    first = signer.sign("recordings", "c/mixed/000000.wav", soon)
    second = signer.sign("recordings", "c/mixed/000001.wav", soon)
    assert len(calls) == 1
    for sas in (first, second):
        assert "skoid=oid" in sas and "sktid=tid" in sas and "sp=r" in sas and "sr=b" in sas and "sig=" in sas
    signer.sign("recordings", "x", datetime.now(UTC) + timedelta(days=3))  # beyond the cached key: renew
    assert len(calls) == 2
