"""Bearer-token authentication, checked in the http middleware so it behaves the same in `chalice local`,
`chalice.test.Client` and behind API Gateway.

The expected token is `API_TOKEN` from the environment or, on AWS, the Secrets Manager secret named by
`API_TOKEN_SECRET_ARN` (its SecretString: the token itself, or JSON with a "token" key), fetched on first use and
cached for the container's life. No token configured means every authenticated route answers 503: the API is
never open by default.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Mapping

from chalicelib.errors import ApiError
from tickstream.secrets import secret_string
from tickstream.settings import load_settings

# The console's page and files are public; every data call it makes carries the token.
PUBLIC_ROUTES = frozenset({"/health", "/console", "/console/{asset}"})
# After a failed Secrets Manager call, wait this long before the next one, so a broken secret is not hammered.
SECRET_RETRY_SECONDS = 5.0
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tickstream"'}


class TokenSource:
    """The expected token, from the environment or Secrets Manager (cached)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secret_tokens: dict[str, str] = {}
        self._failed_at: dict[str, float] = {}

    def expected(self) -> str:
        settings = load_settings()
        if settings.api_token:
            return settings.api_token
        if settings.api_token_secret_arn:
            return self._from_secret(settings.api_token_secret_arn)
        raise ApiError(503, "auth_not_configured",
                       "no API token is configured (set API_TOKEN or API_TOKEN_SECRET_ARN); refusing every request")

    def _from_secret(self, arn: str) -> str:
        with self._lock:
            if arn in self._secret_tokens:
                return self._secret_tokens[arn]
            if time.monotonic() - self._failed_at.get(arn, float("-inf")) < SECRET_RETRY_SECONDS:
                raise _secret_unavailable()
            try:
                token = _fetch_secret(arn)
            except Exception as error:  # any failure (network, permissions, format) means: cannot authenticate
                self._failed_at[arn] = time.monotonic()
                raise _secret_unavailable() from error
            self._secret_tokens[arn] = token
            return token

    def clear(self) -> None:
        with self._lock:
            self._secret_tokens.clear()
            self._failed_at.clear()


def _secret_unavailable() -> ApiError:
    return ApiError(503, "auth_unavailable", "the API token secret cannot be read right now")


def _fetch_secret(arn: str) -> str:
    text = secret_string(arn).strip()
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
