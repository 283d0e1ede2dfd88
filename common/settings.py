"""How both planes declare and read their settings, and the settings they share.

A setting is declared once, as a field of a plane's frozen `Settings` dataclass made with `setting(...)`: the
attribute, its type, the environment variable, its parser (which validates), its default and its doc sit on one
line, and `read()` builds the dataclass from an environment by walking those fields. The ACS-auth and storage
settings both planes read are declared here (`AcsAuthSettings`, `StorageSettings`); each plane's `Settings`
inherits them, so both parse them with the same code. The Bicep cross-check test and the README tables
(`devstack/settings_docs.py`) are derived from the same declarations (`declared()`).

Every value is stripped first; an unset or blank variable means the default. Errors are `SettingsError`s that name
the setting and never echo a secret.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar, cast
from urllib.parse import urlsplit

from common.acs_jwt import DEFAULT_ISSUER, DEFAULT_JWKS_URL
from common.layout import DEFAULT_CONTAINER

T = TypeVar("T")
S = TypeVar("S")
# (variable name, stripped non-empty value) -> the typed value; raises SettingsError naming the variable.
Parser = Callable[[str, str], T]


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it (and never echoes a secret)."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()  # the default of a setting that has none
_SPEC = "setting"  # dataclass field metadata key


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One environment variable: what reads it (`parse`; None when the platform reads it, not our code), its
    default, its doc (markdown, for the README tables), and how it may be deployed."""

    env: str
    doc: str
    parse: Parser[T] | None = None
    default: T | _Required = REQUIRED
    shown_default: str | None = None  # how the docs show the default, when the value alone would not say it
    local_only: bool = False  # must never be set in Azure (the Bicep cross-check enforces it)
    fixed: str | None = None  # the value this code base fixes in Azure (read by the platform)

    def read(self, env: Mapping[str, str]) -> T:
        raw = (env.get(self.env) or "").strip()
        if not raw:
            if isinstance(self.default, _Required):
                raise SettingsError(f"{self.env} is required")
            return self.default
        if self.parse is None:
            raise TypeError(f"{self.env} is read by the platform, not by this code")
        return self.parse(self.env, raw)

    def default_text(self) -> str:
        """The default as the docs show it."""
        if self.shown_default is not None:
            return self.shown_default
        if self.fixed is not None:
            return f"`{self.fixed}` (fixed)"
        if isinstance(self.default, _Required):
            return "required"
        if self.default in (None, "", ()):
            return "—"
        value: object = self.default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return f"`{value}`"


def setting(env: str, default: T | _Required, doc: str, parse: Parser[T], *, shown_default: str | None = None,
            local_only: bool = False) -> T:
    """A dataclass field read from `env` by `read()`; typed as its value so the dataclass stays plainly typed."""
    spec = Setting(env, doc, parse, default, shown_default, local_only)
    if isinstance(default, _Required):
        required: T = dataclasses.field(metadata={_SPEC: spec})  # no default: the dataclass requires it
        return required
    return dataclasses.field(default=default, metadata={_SPEC: spec})


def declared(cls: type) -> tuple[Setting[Any], ...]:
    """The settings a `Settings` dataclass reads, in field order (shared ones first)."""
    return tuple(f.metadata[_SPEC] for f in dataclasses.fields(cls) if _SPEC in f.metadata)


def read(cls: type[S], env: Mapping[str, str]) -> S:
    """Build `cls` from `env`, every declared field through its parser (the first bad one raises)."""
    values = {f.name: f.metadata[_SPEC].read(env) for f in dataclasses.fields(cast(Any, cls)) if _SPEC in f.metadata}
    built: S = cls(**values)
    return built


# -- derived views: what the infra cross-check and the docs use -----------------------------------------------
def env_vars(settings: Iterable[Setting[Any]]) -> dict[str, str]:
    """name -> doc."""
    return {s.env: s.doc for s in settings}


def local_only(settings: Iterable[Setting[Any]]) -> frozenset[str]:
    return frozenset(s.env for s in settings if s.local_only)


def fixed_values(settings: Iterable[Setting[Any]]) -> dict[str, str]:
    return {s.env: s.fixed for s in settings if s.fixed is not None}


# -- parsers ---------------------------------------------------------------------------------------------------
def text(name: str, raw: str) -> str:
    return raw


def upper(name: str, raw: str) -> str:
    return raw.upper()


def path(name: str, raw: str) -> Path:
    return Path(raw)


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url(secure: str, insecure: str, *, strip_slash: bool = False) -> Parser[str]:
    """A `secure`:// URL; `insecure`:// only for loopback, i.e. the local stack."""

    def parse(name: str, raw: str) -> str:
        parts = urlsplit(raw)
        scheme_ok = parts.scheme == secure or (parts.scheme == insecure and is_loopback_host(parts.hostname))
        if not (scheme_ok and parts.hostname):
            raise SettingsError(f"{name} must be a {secure}:// URL ({insecure}:// only for loopback), got {raw!r}")
        return raw.rstrip("/") if strip_slash else raw

    return parse


def number(kind: Callable[[str], T], above: float = 0, *, at_least: float | None = None) -> Parser[T]:
    """An int or float strictly greater than `above` (or, with `at_least`, no less than that)."""

    def parse(name: str, raw: str) -> T:
        try:
            value = kind(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from None
        if at_least is not None:
            if value < at_least:  # type: ignore[operator]
                raise SettingsError(f"{name} must be at least {at_least}, got {raw!r}")
        elif value <= above:  # type: ignore[operator]
            raise SettingsError(f"{name} must be greater than {above}, got {raw!r}")
        return value

    return parse


def integer_in(low: int, high: int) -> Parser[int]:
    """Plain ASCII digits in low..high (str.isdigit alone accepts "²", which int() refuses)."""

    def parse(name: str, raw: str) -> int:
        if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
            raise SettingsError(f"{name} must be an integer in {low}..{high}, got {raw!r}")
        return int(raw)

    return parse


def choice(options: Mapping[str, T], phrase: str | None = None) -> Parser[T]:
    """One of a few words (case-insensitive), each standing for a value; `phrase` lists them in the error."""
    phrase = phrase or " or ".join(options)

    def parse(name: str, raw: str) -> T:
        word = raw.lower()
        if word not in options:
            raise SettingsError(f"{name} must be {phrase}, got {word!r}")
        return options[word]

    return parse


# `enabled` / `disabled` switches: the local-only escape hatches (auth, call check).
switch: Final[Parser[bool]] = choice({"enabled": True, "disabled": False}, "'enabled' or 'disabled'")


def comma_list(check: Callable[[str, str], None] | None = None) -> Parser[tuple[str, ...]]:
    """Comma-separated entries, blanks dropped; `check(name, entry)` raises for a bad entry."""

    def parse(name: str, raw: str) -> tuple[str, ...]:
        entries = tuple(x.strip() for x in raw.split(",") if x.strip())
        if check is not None:
            for entry in entries:
                check(name, entry)
        return entries

    return parse


def base64_secret(name: str, raw: str) -> str:
    try:
        base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError(f"{name} is not valid base64") from None  # never echo the value
    return raw


# -- what both planes read ---------------------------------------------------------------------------------------
https_url: Final = url("https", "http")


@dataclass(frozen=True, kw_only=True)
class AcsAuthSettings:
    """Verifying ACS's JWTs (media WebSocket upgrades, callbacks)."""

    acs_resource_id: str = setting(
        "ACS_RESOURCE_ID", "", "ACS immutable resource id: the audience of ACS's JWTs", text,
        shown_default="required unless the JWT checks are disabled")
    jwt_issuer: str = setting("ACS_JWT_ISSUER", DEFAULT_ISSUER, "issuer of ACS's JWTs", text)
    jwks_url: str = setting("ACS_JWKS_URL", DEFAULT_JWKS_URL, "ACS's JWT signing keys (JWKS)", https_url)

    def require_audience(self, verifying: bool, switch_name: str, audience: str) -> None:
        if verifying and not self.acs_resource_id:
            raise SettingsError(f"ACS_RESOURCE_ID is required ({audience}); set {switch_name}=disabled "
                                "only for local development")


@dataclass(frozen=True, kw_only=True)
class StorageSettings:
    """The recordings' Blob Storage."""

    storage_account_url: str | None = setting(
        "AZURE_STORAGE_ACCOUNT_URL", None, "blob endpoint; authenticates with the managed identity "
        "(`DefaultAzureCredential`)", https_url, shown_default="this or the connection string")
    storage_connection_string: str | None = setting(
        "AZURE_STORAGE_CONNECTION_STRING", None, "connection string with the account key (Azurite)", text,
        local_only=True)
    azure_client_id: str | None = setting(
        "AZURE_CLIENT_ID", None, "client id of the user-assigned managed identity", text,
        shown_default="system-assigned")
    container: str = setting("RECORDINGS_CONTAINER", DEFAULT_CONTAINER,
                             "container for chunks, manifests, call state and the call index", text)
    queue_url: str | None = setting(
        "AZURE_STORAGE_QUEUE_URL", None, "queue endpoint of the `recording-finalize` queue; authenticates with the "
        "managed identity", https_url, shown_default="derived: `.blob.` → `.queue.` in AZURE_STORAGE_ACCOUNT_URL")

    def has_queue(self) -> bool:
        """Whether the finalize queue can be reached: a connection string that names a blob endpoint but no
        queue endpoint (an Azurite started without its queue service) has none — the SDK would otherwise guess a
        public endpoint from the account name."""
        if self.storage_connection_string:
            keys = {p.split("=", 1)[0].strip().lower() for p in self.storage_connection_string.split(";") if p}
            return "queueendpoint" in keys or "blobendpoint" not in keys
        return bool(self.queue_account_url())

    def queue_account_url(self) -> str | None:
        """The queue endpoint for the managed identity (None with a connection string, which names its own)."""
        if self.queue_url:
            return self.queue_url
        if self.storage_account_url:
            return self.storage_account_url.replace(".blob.", ".queue.", 1)
        return None

    def require_storage(self) -> None:
        if not (self.storage_account_url or self.storage_connection_string):
            raise SettingsError("set AZURE_STORAGE_ACCOUNT_URL (managed identity) or "
                                "AZURE_STORAGE_CONNECTION_STRING (local)")
