"""JWT bearer credentials for jupyter_server: :class:`JWTIdentityProvider`.

Set ``c.ServerApp.identity_provider_class = "jupyter_server_ext.auth.JWTIdentityProvider"``
and configure ``c.JWTIdentityProvider``. A request whose ``Authorization`` header is
``Bearer <jwt>`` is verified with PyJWT against the configured key and claims; any
other request falls back to the server's own token and password-cookie auth.

A JWT is a monitoring credential: it is verified only for a request to a handler that
is a :class:`MonitoringRoute` (sysmon's routes). On every other route of the server
(kernels and their channels, sessions, contents, terminals, ``api/me``, pages,
jupyter_server's ``/metrics``, any other extension's) a request that presents a JWT is
not authenticated at all. The rule lives in the provider, the one place every handler
asks "who is this?", and in the handler's class, not in a URL pattern or an
``Authorizer`` setting: no configuration can forget it (a custom authorizer, a route that
only checks ``@web.authenticated`` and never asks the authorizer, a ``base_url``), and a
route added later admits JWTs only if its class says so.

Nothing in a token is trusted before its signature is: the algorithm comes from the
configured list (never from the token), the key from configuration or the JWKS
endpoint, and ``exp``, ``iss`` and ``aud`` must be present and right.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import jwt
from jupyter_server.auth.identity import PasswordIdentityProvider, User
from tornado import web
from traitlets import Float, List, Unicode, validate

from sysmon_nb.protocol import quote

from .errors import ConfigError, InvalidCredentials

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
PUBLIC_KEY_ALGORITHMS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES256K",
        "ES384",
        "ES512",
        "EdDSA",
    }
)
REQUIRED_CLAIMS = ("exp", "iss", "aud")

#: Largest ``leeway`` accepted (s): leeway is for clock skew, not for extending tokens.
MAX_LEEWAY = 60.0
#: Least time between two JWKS refreshes caused by unknown key ids (s): a stream of
#: made-up ``kid`` values must not turn into a stream of requests to the key server.
JWKS_REFRESH_COOLDOWN = 10.0
#: Timeout of one request to the JWKS endpoint (s).
JWKS_TIMEOUT = 10.0

#: Characters of a token's (or its header's) client-controlled text that reach a log line
#: or an error: a made-up 40 KB ``kid`` must not become a 40 KB line per request.
LOGGED_CHARS = 200

_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"bearer\s+(\S+)\s*", re.IGNORECASE)


class MonitoringRoute:
    """Marker base class of the handlers that admit monitoring credentials (sysmon's
    routes): only for these does :class:`JWTIdentityProvider` verify a bearer JWT."""


@dataclass
class JWTUser(User):
    """A user identified by a verified JWT."""

    roles: tuple[str, ...] = ()
    #: The token's ``exp`` (unix s): the connection may not outlive it.
    expires_at: float | None = None


class _JWKSKeys:
    """Signing keys from a JWKS endpoint: cached, fetched off the event loop, an unknown
    ``kid`` triggers one refresh (at most one per :data:`JWKS_REFRESH_COOLDOWN`)."""

    def __init__(self, url: str, lifespan: float) -> None:
        self.client = jwt.PyJWKClient(
            url, cache_jwk_set=True, lifespan=lifespan, timeout=JWKS_TIMEOUT
        )
        self._lock = threading.Lock()
        self._refreshed_at = -JWKS_REFRESH_COOLDOWN

    async def key_for(self, token: str) -> Any:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as err:
            raise InvalidCredentials(f"unreadable JWT header: {err}") from None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._lookup, kid)

    def _lookup(self, kid: Any) -> Any:
        with self._lock:
            try:
                key = self._match(self.client.get_signing_keys(), kid)
                now = time.monotonic()
                if key is None and now - self._refreshed_at >= JWKS_REFRESH_COOLDOWN:
                    self._refreshed_at = now
                    key = self._match(self.client.get_signing_keys(refresh=True), kid)
            except jwt.PyJWKClientError as err:
                raise InvalidCredentials(f"JWKS: {err}") from None
        if key is None:
            raise InvalidCredentials(f"no JWKS key with kid {kid!r}")  # cut where logged
        return key.key

    @staticmethod
    def _match(keys: list[Any], kid: Any) -> Any:
        if kid is None:
            return keys[0] if len(keys) == 1 else None
        return next((k for k in keys if k.key_id == kid), None)


class JWTIdentityProvider(PasswordIdentityProvider):
    """Admits ``Authorization: Bearer <jwt>``; otherwise the server's token or password.

    A JWT user's roles come from ``roles_claim``; ``c.SysmonExtension.admin_role`` among
    them makes the user an administrator of sysmon.
    """

    secret = Unicode(
        "",
        help="Shared secret for HMAC algorithms (HS256/384/512).",
    ).tag(config=True)

    public_key = Unicode(
        "",
        help="PEM public key for RS*, PS*, ES* or EdDSA algorithms.",
    ).tag(config=True)

    jwks_url = Unicode(
        "",
        help="URL of a JWKS document with the public keys (used instead of public_key). "
        "Keys are cached for jwks_cache_seconds; an unknown key id refreshes them once.",
    ).tag(config=True)

    jwks_cache_seconds = Float(
        300.0,
        help="Seconds a fetched JWKS document is kept.",
    ).tag(config=True)

    algorithms = List(
        Unicode(),
        help="Accepted signing algorithms, e.g. ['RS256']. Required; never taken from the "
        "token. HMAC and public-key algorithms cannot be mixed.",
    ).tag(config=True)

    issuer = Unicode(
        "",
        help="Required value of the 'iss' claim.",
    ).tag(config=True)

    audience = Unicode(
        "",
        help="Required value (or member) of the 'aud' claim.",
    ).tag(config=True)

    leeway = Float(
        5.0,
        help=f"Seconds of clock skew allowed when checking 'exp' and 'nbf' (at most {MAX_LEEWAY}).",
    ).tag(config=True)

    username_claim = Unicode(
        "sub",
        help="Claim holding the username.",
    ).tag(config=True)

    roles_claim = Unicode(
        "roles",
        help="Claim holding the user's roles: a list of strings or a space-separated string. "
        "A dotted name reads a nested claim (e.g. 'realm_access.roles').",
    ).tag(config=True)

    @validate("leeway")
    def _validate_leeway(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not 0 <= value <= MAX_LEEWAY:
            raise ConfigError(f"JWTIdentityProvider.leeway must be 0..{MAX_LEEWAY} s, got {value}")
        return value

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        problem = self.config_problem()
        if problem is not None:
            message = f"JWTIdentityProvider is misconfigured: {problem}"
            self.log.critical(message)
            raise ConfigError(message)
        self._jwks = _JWKSKeys(self.jwks_url, self.jwks_cache_seconds) if self.jwks_url else None

    def config_problem(self) -> str | None:
        """What stops this configuration from verifying tokens safely, or None."""
        algorithms = set(self.algorithms)
        if not algorithms:
            return "set algorithms, e.g. ['RS256'] or ['HS256']"
        unknown = algorithms - HMAC_ALGORITHMS - PUBLIC_KEY_ALGORITHMS
        if unknown:
            return f"unsupported algorithms {sorted(unknown)} ('none' is never accepted)"
        if algorithms & HMAC_ALGORITHMS and algorithms & PUBLIC_KEY_ALGORITHMS:
            return (
                "algorithms mix HMAC and public-key algorithms; a public key could then be "
                "used as an HMAC secret"
            )
        sources = [name for name in ("secret", "public_key", "jwks_url") if getattr(self, name)]
        if len(sources) != 1:
            return f"set exactly one of secret, public_key, jwks_url (got {sources or 'none'})"
        hmac = bool(algorithms & HMAC_ALGORITHMS)
        if hmac and sources != ["secret"]:
            return f"HMAC algorithms need secret, not {sources[0]}"
        if not hmac and sources == ["secret"]:
            return "public-key algorithms need public_key or jwks_url, not secret"
        if hmac and "-----BEGIN" in self.secret:
            return "secret looks like a PEM key; a key pair needs a public-key algorithm"
        if hmac:
            # RFC 7518 3.2: an HMAC key at least as long as the hash output.
            need = max(int(alg[2:]) // 8 for alg in algorithms)
            if len(self.secret.encode()) < need:
                return f"secret must be at least {need} bytes for {sorted(algorithms)}"
        if self.public_key:
            try:
                from cryptography.hazmat.primitives.serialization import load_pem_public_key

                load_pem_public_key(self.public_key.encode())
            except (ImportError, ValueError) as err:
                return f"public_key is not a usable PEM public key ({err})"
        if not self.issuer:
            return "set issuer (the required 'iss' claim)"
        if not self.audience:
            return "set audience (the required 'aud' claim)"
        return None

    # -- authentication ---------------------------------------------------------------

    def bearer_jwt(self, handler: web.RequestHandler) -> str | None:
        """The JWT in ``Authorization: Bearer``, or None when the request carries none.

        ``Bearer <server token>`` is the server's plain token auth, so only JWT-shaped
        values that are not the server's token take the JWT path."""
        match = _BEARER.fullmatch(handler.request.headers.get("Authorization", ""))
        if match is None:
            return None
        value = match.group(1)
        if not _JWT_SHAPE.fullmatch(value) or (self.token and value == self.token):
            return None
        return value

    async def get_user(self, handler: web.RequestHandler) -> User | None:
        token = self.bearer_jwt(handler)
        if token is None:
            return await self._get_user(handler)
        if not isinstance(handler, MonitoringRoute):
            # A monitoring credential opens sysmon's routes and nothing else: judged by
            # the JWT alone, the request is not authenticated here (403, or the login
            # page). Not verified either: no key lookup for a route it cannot open.
            self.log.debug(
                "sysmon: a bearer JWT opens only sysmon's routes, not %s",
                quote(handler.request.path, LOGGED_CHARS),
            )
            return None
        try:
            claims = await self.verify(token)
            user = self.user_from_claims(claims)
        except InvalidCredentials as err:
            self.log.warning(
                "sysmon: refused a bearer JWT from %s: %s",
                handler.request.remote_ip,
                quote(str(err), LOGGED_CHARS),
            )
            return None
        # As token auth does: a header browsers never send by themselves, so no origin
        # check and no XSRF. Unlike token auth, no login cookie: it would outlive 'exp'.
        handler._token_authenticated = True  # type: ignore[attr-defined]
        return user

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of ``token`` once its signature and claims check out."""
        key: Any = self.secret or self.public_key
        if self._jwks is not None:
            key = await self._jwks.key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except (jwt.PyJWTError, ValueError, TypeError) as err:
            raise InvalidCredentials(f"{type(err).__name__}: {err}") from None
        if not isinstance(claims, dict):
            raise InvalidCredentials("payload is not a JSON object")
        return claims

    def user_from_claims(self, claims: dict[str, Any]) -> JWTUser:
        """The identity the verified ``claims`` describe."""
        name = claims.get(self.username_claim)
        if not isinstance(name, str) or not name:
            raise InvalidCredentials(f"claim {self.username_claim!r} is not a non-empty string")
        exp = claims["exp"]
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise InvalidCredentials("claim 'exp' is not a number")
        return JWTUser(username=name, roles=self.roles_from(claims), expires_at=float(exp))

    def roles_from(self, claims: dict[str, Any]) -> tuple[str, ...]:
        value: Any = claims
        for part in self.roles_claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str):
            return tuple(value.split())
        if isinstance(value, list):
            return tuple(role for role in value if isinstance(role, str))
        return ()

    def set_login_cookie(self, handler: web.RequestHandler, user: User) -> None:
        if isinstance(user, JWTUser):
            return  # a JWT is sent with every request; a cookie would outlive its 'exp'
        super().set_login_cookie(handler, user)
