"""An RS256 key pair that signs ACS-style JWTs, and its JWKS — what the simulator and tests use in place of ACS.

Tokens carry what ACS's do (docs/acs-protocol.md#callback-authentication, #websocket-upgrade): iss, aud (ACS
immutable resource id), iat/nbf/exp, kid.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


class TokenIssuer:
    def __init__(self, issuer: str, audience: str, kid: str | None = None):
        self.issuer = issuer
        self.audience = audience
        self.kid = kid or f"sim-{uuid.uuid4().hex[:12]}"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict[str, Any]:
        jwk = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    def token(self, *, lifetime: float = 300, audience: str | None = None, issuer: str | None = None,
              kid: str | None = None, now: float | None = None, **claims: Any) -> str:
        t = int(now if now is not None else time.time())
        payload = {"iss": issuer or self.issuer, "aud": audience or self.audience,
                   "iat": t, "nbf": t, "exp": t + int(lifetime), **claims}
        return jwt.encode(payload, self._key, algorithm="RS256", headers={"kid": kid or self.kid})
