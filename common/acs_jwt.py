"""Verification of the JWTs ACS puts on callbacks and on media-streaming WebSocket upgrades.

Both carry `Authorization: Bearer <JWT>`: RS256, issuer `https://acscallautomation.communication.azure.com`,
audience = the ACS resource's immutable resource id, keys from the JWKS at `/calling/keys`
(docs/acs-protocol.md, "Callback authentication" and "WebSocket upgrade"). Keys are cached and refetched when a
token names an unknown `kid` — but at most once per `min_refetch_seconds`, so a flood of made-up kids cannot turn
us into a JWKS amplifier.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

DEFAULT_ISSUER = "https://acscallautomation.communication.azure.com"
DEFAULT_JWKS_URL = "https://acscallautomation.communication.azure.com/calling/keys"
ALGORITHMS = ["RS256"]


class AuthError(Exception):
    """The request is not from ACS (missing, malformed, expired or mis-signed token). Message is safe to log."""


@dataclass(frozen=True)
class AuthConfig:
    issuer: str
    audience: str
    jwks_url: str
    leeway_seconds: int = 60


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("missing Authorization header")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization is not a Bearer token")
    return token.strip()


class AcsJwtVerifier:
    """Task-safe verifier, used from the event loop by both planes (the streamer's upgrades, the function app's
    async callbacks entry): one key cache, refetched under one lock."""

    def __init__(self, config: AuthConfig, *, min_refetch_seconds: float = 10.0, http_timeout: float = 5.0):
        if not config.audience:
            raise ValueError("ACS JWT audience (ACS_RESOURCE_ID) is required")
        self.config = config
        self._keys: dict[str, Any] = {}
        self._fetched_at = float("-inf")
        self._min_refetch = min_refetch_seconds
        self._timeout = http_timeout
        self._alock: asyncio.Lock | None = None

    # -- key cache -------------------------------------------------------------------------------------------
    def _install(self, jwks: dict[str, Any]) -> None:
        keys = {}
        for entry in jwks.get("keys", []):
            try:
                pk = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # a key type we do not use; ignore rather than fail the whole set
            if pk.key_id:
                keys[pk.key_id] = pk.key
        self._keys = keys
        self._fetched_at = time.monotonic()

    def _may_refetch(self) -> bool:
        return time.monotonic() - self._fetched_at >= self._min_refetch

    async def _fetch_async(self) -> None:
        if self._alock is None:
            self._alock = asyncio.Lock()
        async with self._alock:
            if not self._may_refetch():
                return
            try:
                async with httpx.AsyncClient(timeout=self._timeout) as client:
                    resp = await client.get(self.config.jwks_url)
                resp.raise_for_status()
                self._install(resp.json())
            except (httpx.HTTPError, ValueError) as exc:
                self._fetched_at = time.monotonic()  # back off; keep the old keys
                raise AuthError(f"cannot fetch ACS signing keys: {exc.__class__.__name__}") from exc

    # -- verification ----------------------------------------------------------------------------------------
    def _kid(self, token: str) -> str:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(f"malformed token: {exc}") from exc
        if header.get("alg") not in ALGORITHMS:
            raise AuthError(f"token algorithm {header.get('alg')!r} is not RS256")
        kid = header.get("kid")
        if not kid:
            raise AuthError("token has no kid")
        return str(kid)

    def _decode(self, token: str, key: Any) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from exc

    async def verify_async(self, token: str) -> dict[str, Any]:
        kid = self._kid(token)
        if kid not in self._keys:
            await self._fetch_async()
        if kid not in self._keys:
            raise AuthError(f"unknown signing key {kid!r}")
        return self._decode(token, self._keys[kid])
