"""The web console: a static page and its assets, served by the API itself (`GET /console`,
`GET /console/{asset}`), so it works wherever the API does — behind API Gateway's stage prefix, under
`chalice local`, in `make up`.

The shell is public; every data call the page makes carries the bearer token, as any API client's. The files are
read from `console_assets/` (packaged with chalicelib/) into memory once; only those names are served. The
Content-Security-Policy allows scripts, styles, images and requests from this origin only, and no inline script.
"""

from __future__ import annotations

import json
from pathlib import Path

from chalice import Response

from chalicelib.errors import not_found
from tickstream.venues import VENUES

SHELL_ROUTE = "/console"
ASSET_ROUTE = "/console/{asset}"
ROUTES = frozenset({SHELL_ROUTE, ASSET_ROUTE})
SHELL = "index.html"
ASSETS_DIR = Path(__file__).resolve().parent / "console_assets"
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".json": "application/json"}
VENUES_ASSET = "venues.json"  # what the forms offer per broker type, from tickstream.venues (not a file)
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
                           " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def _load_assets() -> dict[str, tuple[str, str]]:
    """name → (text, content type) for the console's files and the vendored libraries (flat names)."""
    assets = {}
    for path in [*ASSETS_DIR.glob("*"), *ASSETS_DIR.glob("vendor/*")]:
        content_type = _CONTENT_TYPES.get(path.suffix)
        if path.is_file() and content_type:
            assets[path.name] = (path.read_text(encoding="utf-8"), content_type)
    venues = [{"type": venue.type, "title": venue.title, "ws_url": venue.ws_url, "rest_url": venue.rest_url,
               "streams": list(venue.streams), "symbol_example": venue.symbol_example} for venue in VENUES.values()]
    assets[VENUES_ASSET] = (json.dumps(venues), _CONTENT_TYPES[".json"])
    return assets


ASSETS = _load_assets()


def asset(name: str) -> Response:
    found = ASSETS.get(name)
    if found is None:
        raise not_found(f"no console file {name[:60]!r}")
    text, content_type = found
    return Response(body=text, headers={**SECURITY_HEADERS, "Content-Type": content_type})
