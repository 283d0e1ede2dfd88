"""Streamer settings: defaults, validation with messages that name the setting."""

from __future__ import annotations

import pytest

from streamer.settings import ENV_VARS, LOCAL_ONLY, Settings, SettingsError

BASE = {"ACS_RESOURCE_ID": "abc", "AZURE_STORAGE_ACCOUNT_URL": "https://acct.blob.core.windows.net"}


def test_defaults():
    s = Settings.from_env(BASE)
    assert (s.port, s.container, s.chunk_seconds, s.max_frame_bytes, s.auth_enabled) == (
        8080, "recordings", 10.0, 65536, True)
    assert s.jwks_url == "https://acscallautomation.communication.azure.com/calling/keys"


@pytest.mark.parametrize("env,needle", [
    ({"ACS_RESOURCE_ID": ""}, "ACS_RESOURCE_ID"),
    ({"AZURE_STORAGE_ACCOUNT_URL": ""}, "AZURE_STORAGE_ACCOUNT_URL"),
    ({"CHUNK_SECONDS": "ten"}, "CHUNK_SECONDS"),
    ({"CHUNK_SECONDS": "0"}, "CHUNK_SECONDS"),
    ({"PORT": "-1"}, "PORT"),
    ({"STREAMER_AUTH": "off"}, "STREAMER_AUTH"),
    ({"MAX_FRAME_BYTES": "100"}, "MAX_FRAME_BYTES"),
    ({"UPLOAD_CONCURRENCY": "0"}, "UPLOAD_CONCURRENCY"),
    ({"UPLOAD_CONCURRENCY": "many"}, "UPLOAD_CONCURRENCY"),
    ({"ACS_JWKS_URL": "http://keys.example/calling/keys"}, "ACS_JWKS_URL"),  # plain http only on loopback
    ({"AZURE_STORAGE_ACCOUNT_URL": "ftp://acct"}, "AZURE_STORAGE_ACCOUNT_URL"),
])
def test_invalid_settings_name_the_setting(env, needle):
    with pytest.raises(SettingsError, match=needle):
        Settings.from_env({**BASE, **env})


def test_auth_can_only_be_disabled_explicitly():
    local = {"STREAMER_AUTH": "disabled", "AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"}
    s = Settings.from_env(local)
    assert s.auth_enabled is False and s.acs_resource_id == ""
    assert set(ENV_VARS) >= LOCAL_ONLY
