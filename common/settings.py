"""Conventions both planes' settings share: one error type that names the setting, URL and storage checks."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it (and never echoes a secret)."""


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_setting(env: Mapping[str, str], name: str, secure: str, insecure: str, required: bool = True) -> str:
    """A `secure`:// URL (`insecure`:// only for loopback, i.e. the local stack); '' when optional and unset."""
    raw = (env.get(name) or "").strip()
    if not raw:
        if required:
            raise SettingsError(f"{name} is required")
        return ""
    parts = urlsplit(raw)
    scheme_ok = parts.scheme == secure or (parts.scheme == insecure and is_loopback_host(parts.hostname))
    if scheme_ok and parts.hostname:
        return raw
    raise SettingsError(f"{name} must be a {secure}:// URL ({insecure}:// only for loopback), got {raw!r}")


def require_storage(account_url: str | None, connection_string: str | None) -> None:
    if not (account_url or connection_string):
        raise SettingsError("set AZURE_STORAGE_ACCOUNT_URL (managed identity) or "
                            "AZURE_STORAGE_CONNECTION_STRING (local)")
