"""Which exchange endpoints tickstream connects to: one allowlist rule, applied by the API and by the producer.

A broker's `api_config.ws_url` / `rest_url` name the exchange's WebSocket and REST base URLs. Whoever can write the
catalog could otherwise point the producer, which runs inside the VPC with an AWS role, at any address: the
instance metadata service (169.254.169.254), internal hosts, plain-text endpoints a man in the middle can rewrite.
So an endpoint is allowed only if it is
- wss:// (WebSocket) or https:// (REST) to one of *the broker's venue's* official hosts (tickstream.venues), on
  any port: an OKX broker may not point at a Binance host, nor the reverse; or
- wss:// or https:// to a host named in EXCHANGE_HOST_ALLOWLIST (host names or IP literals, matched exactly); or
- ws:// or http:// to a *loopback IP literal* named in EXCHANGE_HOST_ALLOWLIST: the exchange simulator of local
  stacks and tests (127.0.0.1). Plain text to anything else is refused.
No user info, query or fragment. Host names match exactly (case-insensitive): no suffixes, no trailing dot.
The clients never follow redirects, so the URL checked here is the one connected to.
"""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import urlsplit

from tickstream.venues import BINANCE, Venue

EndpointKind = Literal["ws", "rest"]
_SCHEMES: dict[EndpointKind, tuple[str, str]] = {"ws": ("wss", "ws"), "rest": ("https", "http")}


class EndpointRefused(ValueError):
    """An exchange URL outside the allowlist."""


def parse_host_allowlist(text: str | None) -> frozenset[str]:
    """EXCHANGE_HOST_ALLOWLIST: comma-separated host names or IP literals (no scheme, port or path)."""
    hosts = frozenset(part.strip().lower() for part in (text or "").split(",") if part.strip())
    for host in hosts:
        if any(char in host for char in "/:@[]?# ") and not _is_ip(host):
            raise ValueError(f"EXCHANGE_HOST_ALLOWLIST: {host!r} is not a host name or IP address (no scheme, port"
                             " or path)")
    return hosts


def official_hosts(venue: Venue, kind: EndpointKind) -> frozenset[str]:
    return venue.ws_hosts if kind == "ws" else venue.rest_hosts


def endpoint_problem(url: str, kind: EndpointKind, allowed_hosts: frozenset[str],
                     venue: Venue = BINANCE) -> str | None:
    """Why `url` may not be used as a `kind` endpoint of a `venue` broker, or None if it may. A caller that names
    no venue gets Binance spot's hosts (the only venue before the exchange seam), never the union of all venues'."""
    secure, plain = _SCHEMES[kind]
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port out of range
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in (secure, plain):
        return f"must be a {secure}:// URL"
    host = (parts.hostname or "").lower()
    if not host:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not contain user info (user@host)"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    official = official_hosts(venue, kind)
    if host in official and parts.scheme == secure:
        return None
    if host not in allowed_hosts:
        return (f"host {host!r} is not allowed: use {secure}:// to an official {venue.title} host"
                f" ({', '.join(sorted(official))}) or add the host to EXCHANGE_HOST_ALLOWLIST")
    if parts.scheme == plain and not _is_loopback(host):
        return (f"{plain}:// is unencrypted: allowed only to a loopback address named in EXCHANGE_HOST_ALLOWLIST"
                f" (the simulator); use {secure}://")
    return None


def check_endpoint(url: str, kind: EndpointKind, allowed_hosts: frozenset[str], venue: Venue = BINANCE) -> str:
    """`url` itself, or EndpointRefused saying why not."""
    problem = endpoint_problem(url, kind, allowed_hosts, venue)
    if problem is not None:
        raise EndpointRefused(f"exchange {kind} URL {url!r} {problem}")
    return url


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    return _is_ip(host) and ipaddress.ip_address(host).is_loopback
