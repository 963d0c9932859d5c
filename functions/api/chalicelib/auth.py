"""Bearer-token authentication, checked in the http middleware so it behaves the same in `chalice local`,
`chalice.test.Client` and behind API Gateway.

The expected token is `API_TOKEN` from the environment or, on AWS, the Secrets Manager secret named by
`API_TOKEN_SECRET_ARN` (its SecretString: the token itself, or JSON with a "token" key), read on first use and
again once the cached value is older than tickstream.secrets.SECRET_TTL_SECONDS (5 minutes), so a rotated token is
the only one accepted within 5 minutes. No token configured, or a secret that cannot be read, means every
authenticated route answers 503 (the reason is logged, never answered): the API is never open by default.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping

from chalicelib.errors import ApiError
from tickstream.secrets import SecretCache
from tickstream.settings import load_settings

log = logging.getLogger(__name__)
# The console's page and files are public; every data call it makes carries the token.
PUBLIC_ROUTES = frozenset({"/health", "/console", "/console/{asset}"})
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tickstream"'}


class TokenSource:
    """The expected token, from the environment or Secrets Manager (cached with a TTL)."""

    def __init__(self, secrets: SecretCache | None = None) -> None:
        self.secrets = secrets or SecretCache()

    def expected(self) -> str:
        settings = load_settings()
        if settings.api_token:
            return settings.api_token
        if settings.api_token_secret_arn:
            return self._from_secret(settings.api_token_secret_arn)
        raise ApiError(503, "auth_not_configured",
                       "no API token is configured (set API_TOKEN or API_TOKEN_SECRET_ARN); refusing every request")

    def _from_secret(self, arn: str) -> str:
        try:
            return _token(self.secrets.get(arn))
        except Exception as error:  # any failure (network, permissions, format) means: cannot authenticate
            log.warning("API token secret unusable: %s: %s", type(error).__name__, error)
            raise _secret_unavailable() from error

    def clear(self) -> None:
        self.secrets.clear()


def _secret_unavailable() -> ApiError:
    return ApiError(503, "auth_unavailable", "the API token secret cannot be read right now")


def _token(secret: str) -> str:
    text = secret.strip()
    if text.startswith("{"):
        text = str(json.loads(text)["token"]).strip()
    if not text:
        raise ValueError("the secret holds an empty token")
    return text


def _presented_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def authenticate(headers: Mapping[str, str], source: TokenSource) -> None:
    """Raise a 401 (or a 503 when no token can be known) unless `headers` carry the expected bearer token."""
    expected = source.expected()
    presented = _presented_token(headers)
    if presented is None:
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>", headers=_CHALLENGE)
    # Constant time over bytes: compare_digest refuses non-ASCII str, and headers may hold anything.
    if not hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), expected.encode("utf-8")):
        raise ApiError(401, "unauthorized", "the bearer token is not valid", headers=_CHALLENGE)
