"""Keys, tokens and server settings for the JWT tests (real RSA keys, real PyJWT)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from jupyter_server_ext.auth import JWTIdentityProvider

from .conftest import TEST_INTERVAL

ISSUER = "https://login.example.test/"
AUDIENCE = "sysmon"
SECRET = "s3cret-for-tests-only-0123456789abcdef"


def _rsa_pair() -> tuple[Any, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return key, public_pem


PRIVATE_KEY, PUBLIC_PEM = _rsa_pair()
OTHER_PRIVATE_KEY, OTHER_PUBLIC_PEM = _rsa_pair()


def claims(**overrides: Any) -> dict[str, Any]:
    """A valid admin's claims, valid for five minutes; ``None`` drops a claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "roles": ["admin"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(
    key: Any = PRIVATE_KEY, alg: str = "RS256", kid: str | None = None, **overrides: Any
) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: Any, payload: Any, signature: bytes = b"") -> str:
    """A JWT put together by hand, for what PyJWT refuses to produce."""
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(payload).encode())
    return f"{head}.{body}.{b64(signature)}"


def hmac_token(secret: bytes, payload: dict[str, Any]) -> str:
    """HS256-signed by hand with any bytes as the secret (e.g. a public key's PEM)."""
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def provider_config(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "algorithms": ["RS256"],
        "public_key": PUBLIC_PEM,
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "leeway": 1.0,
    }
    base.update(overrides)
    return base


def server_config(jwt_config: dict[str, Any], sysmon_config: dict[str, Any]) -> dict[str, Any]:
    """``jp_server_config`` for a server that uses :class:`JWTIdentityProvider`."""
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_server_ext": True},
            "identity_provider_class": JWTIdentityProvider,
        },
        "SysmonExtension": {"interval": TEST_INTERVAL, "history": 50, **sysmon_config},
        "JWTIdentityProvider": jwt_config,
    }
