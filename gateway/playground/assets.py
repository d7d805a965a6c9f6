"""The playground's files, read once at start-up and served with their security headers.

Owns `Playground`: the page (`static/index.html`) at `/` and `/playground`, every other file of
`static/` at `/playground/static/<name>`, each an exact route (nothing else under those paths
exists). `open_paths` is that exact set: the front door lets GET/HEAD of these through without an
API key, because the page must load before the visitor can type one; every call the page then
makes is an ordinary API request that needs the key.

Every response carries a Content-Security-Policy that allows only the gateway's own origin (no
inline script or style, no framing, no form posts, `connect-src 'self'` so the key can only ever
be sent back here), `nosniff` and `no-referrer`. Files are served with `Cache-Control: no-cache`
and a strong ETag (304 on a match): without a build step there are no content-hashed names, so a
browser revalidates each file, cheaply, and never runs a stale script after an upgrade. A
gzipped copy is made once at start-up and sent to clients that accept it.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_FILE = "index.html"
PAGE_PATHS = ("/", "/playground")
ASSET_PREFIX = "/playground/static/"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
GZIP_MIN_BYTES = 1024  # below this the gzip header and a Vary cost more than they save

# https://developer.mozilla.org/docs/Web/HTTP/Headers/Content-Security-Policy
# blob: and data: for images: previews of attached files (blob:) and the favicon (data:);
# blob: for media: playback of a recording before it is sent.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "worker-src 'none'",
        "frame-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors' predecessor, for older browsers
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=(), payment=(), usb=()",
}


@dataclass(frozen=True)
class StaticFile:
    """One file as it is served: its bytes (and a gzipped copy), type and ETag."""

    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str

    @classmethod
    def read(cls, path: Path) -> StaticFile:
        body = path.read_bytes()
        packed = gzip.compress(body, compresslevel=9, mtime=0)
        worth_it = len(body) >= GZIP_MIN_BYTES and len(packed) < len(body)
        return cls(
            body=body,
            gzipped=packed if worth_it else None,
            content_type=CONTENT_TYPES[path.suffix],
            etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
        )

    def response(self, request: Request) -> Response:
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": self.etag}
        if self.gzipped is not None:
            headers["Vary"] = "Accept-Encoding"
        if _etag_matches(request.headers.get("if-none-match"), self.etag):
            return Response(status_code=304, headers=headers)
        body = self.body
        if self.gzipped is not None and _accepts_gzip(request.headers.get("accept-encoding")):
            body = self.gzipped
            headers["Content-Encoding"] = "gzip"
        headers["Content-Type"] = self.content_type
        return Response(body, headers=headers)


class Playground:
    """The page and its assets from `folder`, as routes; see the module docstring."""

    def __init__(self, folder: Path = STATIC_DIR) -> None:
        self.page = StaticFile.read(folder / PAGE_FILE)
        self.assets = {
            path.name: StaticFile.read(path)
            for path in sorted(folder.iterdir())
            if path.is_file() and path.suffix in CONTENT_TYPES and path.name != PAGE_FILE
        }

    @property
    def open_paths(self) -> frozenset[str]:
        """Every path this serves, exactly: what may be fetched without an API key."""
        return frozenset([*PAGE_PATHS, *(ASSET_PREFIX + name for name in self.assets)])

    def routes(self) -> list[BaseRoute]:
        return [
            *(_route(path, self.page) for path in PAGE_PATHS),
            *(_route(ASSET_PREFIX + name, file) for name, file in self.assets.items()),
        ]


def _route(path: str, file: StaticFile) -> Route:
    async def serve(request: Request) -> Response:
        return file.response(request)

    # Starlette adds HEAD to every GET route. A page is not part of the API, so it stays out of
    # the OpenAPI document (and out of what the fuzzer reads from it).
    return Route(path, serve, methods=["GET"], include_in_schema=False)


def _etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match: `*`, or a list of tags compared weakly (RFC 9110, 13.1.2)."""
    if not header:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in tags or etag in tags


def _accepts_gzip(header: str | None) -> bool:
    """True when Accept-Encoding lists gzip (or *) without q=0."""
    for item in (header or "").split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            name, _, value = params.strip().partition("=")
            return not (name.strip().lower() == "q" and _is_zero(value.strip()))
    return False


def _is_zero(quality: str) -> bool:
    try:
        return float(quality) == 0.0
    except ValueError:
        return False
