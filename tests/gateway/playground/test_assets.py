"""The playground's routes over real HTTP: the page and its files, their security and caching
headers, HEAD and conditional requests, gzip, `PLAYGROUND=false`, and API keys (the page loads
without one; nothing else does)."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import MODEL, ServerThread
from fake_sglang import FakeSGLang

from gateway.playground.assets import (
    ASSET_PREFIX,
    CONTENT_SECURITY_POLICY,
    STATIC_DIR,
    Playground,
    StaticFile,
    _accepts_gzip,
    _etag_matches,
)

KEY = "sk-playground-0123456789"
PAGE = (STATIC_DIR / "index.html").read_bytes()
ASSETS = sorted(p.name for p in STATIC_DIR.iterdir() if p.suffix in (".js", ".css"))


def _directives(policy: str) -> dict[str, list[str]]:
    return {
        name: values
        for name, *values in (part.split() for part in policy.split(";") if part.strip())
    }


def _assert_security_headers(response: httpx.Response) -> None:
    policy = _directives(response.headers["content-security-policy"])
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval'
    assert policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]  # the key can only be sent back here
    assert policy["img-src"] == ["'self'", "blob:", "data:"]
    assert policy["media-src"] == ["'self'", "blob:"]
    for directive in ("frame-ancestors", "base-uri", "form-action", "object-src"):
        assert policy[directive] == ["'none'"]
    # Every source any directive allows is the page's own origin or a local scheme.
    allowed = {source for values in policy.values() for source in values}
    assert allowed <= {"'self'", "'none'", "blob:", "data:"}
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-cache"
    assert re.fullmatch(r'"[0-9a-f]{32}"', response.headers["etag"])


@pytest.mark.parametrize("path", ["/", "/playground"])
def test_the_page_is_served_at_root_and_playground(http: httpx.Client, path: str) -> None:
    response = http.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.content == PAGE
    _assert_security_headers(response)
    assert "x-request-id" in response.headers  # an ordinary gateway response otherwise


@pytest.mark.parametrize("name", ASSETS)
def test_each_asset_is_served_with_its_type(http: httpx.Client, name: str) -> None:
    response = http.get(ASSET_PREFIX + name, headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    kind = "text/javascript" if name.endswith(".js") else "text/css"
    assert response.headers["content-type"] == f"{kind}; charset=utf-8"
    assert "content-encoding" not in response.headers
    assert response.content == (STATIC_DIR / name).read_bytes()
    _assert_security_headers(response)


def test_gzip_is_sent_to_clients_that_accept_it(http: httpx.Client) -> None:
    # httpx would decode transparently; read the raw bytes to see what travelled.
    with http.stream("GET", ASSET_PREFIX + "app.js", headers={"Accept-Encoding": "gzip"}) as r:
        raw = b"".join(r.iter_raw())
    assert r.headers["content-encoding"] == "gzip"
    assert r.headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(raw) == (STATIC_DIR / "app.js").read_bytes()
    assert len(raw) < len((STATIC_DIR / "app.js").read_bytes()) / 2
    refused = http.get(ASSET_PREFIX + "app.js", headers={"Accept-Encoding": "gzip;q=0, br"})
    assert "content-encoding" not in refused.headers


def test_head_answers_headers_without_a_body(http: httpx.Client) -> None:
    get = http.get("/playground", headers={"Accept-Encoding": "identity"})
    head = http.head("/playground", headers={"Accept-Encoding": "identity"})
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["etag"] == get.headers["etag"]
    assert head.headers["content-length"] == str(len(PAGE))
    _assert_security_headers(head)


def test_a_matching_etag_is_304_without_a_body(http: httpx.Client) -> None:
    etag = http.get("/").headers["etag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = http.get("/", headers={"If-None-Match": header})
        assert again.status_code == 304, header
        assert again.content == b""
        assert again.headers["etag"] == etag
    assert http.get("/", headers={"If-None-Match": '"stale"'}).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/index.html",
        "/playground/static/",
        "/playground/static/index.html",
        "/playground/static/nope.js",
        "/playground/static/../assets.py",
        "/playground/static/%2e%2e/assets.py",
    ],
)
def test_nothing_else_exists_under_the_page(http: httpx.Client, path: str) -> None:
    response = http.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ["/playground/", "/playground/static/app.js/"])
def test_a_trailing_slash_is_a_404_as_on_every_route(http: httpx.Client, path: str) -> None:
    # No redirect: one built from the client's Host header is an open redirect (issue 13).
    response = http.get(path)
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_post_to_the_page_is_405(http: httpx.Client) -> None:
    response = http.post("/", json={})
    assert response.status_code == 405
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_playground_false_makes_its_paths_ordinary_404s(
    make_gateway: Callable[..., ServerThread],
) -> None:
    server = make_gateway(playground=False)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for path in ["/", "/playground", *(ASSET_PREFIX + name for name in ASSETS)]:
            response = http.get(path)
            assert response.status_code == 404, path
            assert response.json() == {
                "error": {
                    "message": f"Invalid URL (GET {path})",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
            assert "content-security-policy" not in response.headers
        assert http.get("/v1/models").status_code == 200  # the API is untouched


def test_with_keys_the_page_loads_without_one_and_nothing_else_does(
    make_gateway: Callable[..., ServerThread], fake: FakeSGLang
) -> None:
    server = make_gateway(api_keys=KEY)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for path in ["/", "/playground", *(ASSET_PREFIX + name for name in ASSETS)]:
            assert http.get(path).status_code == 200, path
            assert http.head(path).status_code == 200, path
        refused = [
            ("GET", "/v1/models"),
            ("POST", "/v1/chat/completions"),
            ("POST", "/"),  # open paths are open to reading only
            ("POST", "/playground"),
            ("GET", "/playground/"),
            ("GET", "/playground/static/nope.js"),
            ("GET", "/playground/static/app.js/"),
            ("GET", "/playground/other"),
            ("GET", "/metrics/"),
        ]
        for method, path in refused:
            response = http.request(method, path)
            assert response.status_code == 401, (method, path)
            assert response.json()["error"]["code"] == "invalid_api_key"
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        ok = http.post(
            "/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert ok.status_code == 200
    assert len(fake.chat_requests) == 1


def test_with_keys_and_playground_false_its_paths_need_a_key_like_any_other(
    make_gateway: Callable[..., ServerThread],
) -> None:
    server = make_gateway(api_keys=KEY, playground=False)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/").status_code == 401
        with_key = http.get("/", headers={"Authorization": f"Bearer {KEY}"})
        assert with_key.status_code == 404


def test_open_paths_are_exactly_the_served_files() -> None:
    playground = Playground()
    assert playground.open_paths == {"/", "/playground"} | {ASSET_PREFIX + n for n in ASSETS}
    assert set(playground.assets) == set(ASSETS)
    assert {"app.js", "api.js", "markdown.js", "audio.js", "style.css"} <= set(ASSETS)


def test_everything_the_page_references_is_served_and_relative() -> None:
    """index.html's links and the modules' imports resolve to served files on this origin."""
    html = PAGE.decode()
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert refs, "index.html references nothing?"
    for ref in refs:
        if ref == "data:,":  # the empty favicon, so the browser asks for no /favicon.ico
            continue
        assert ref.startswith("playground/static/"), ref  # relative: works under a path prefix
        assert ref.removeprefix("playground/static/") in ASSETS
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script"
    assert "<style" not in html and " style=" not in html, "inline style"
    for name in ASSETS:
        if name.endswith(".js"):
            text = (STATIC_DIR / name).read_text()
            for imported in re.findall(r'^import .* from "([^"]+)";$', text, flags=re.M):
                assert imported.startswith("./") and imported[2:] in ASSETS, (name, imported)
            assert "innerHTML" not in text and "insertAdjacentHTML" not in text, name
            assert "eval(" not in text and "new Function" not in text, name


def test_static_file_gzip_only_when_it_helps(tmp_path: Path) -> None:
    small = tmp_path / "small.css"
    small.write_text("p{}")
    assert StaticFile.read(small).gzipped is None
    big = tmp_path / "big.js"
    big.write_text("const x = 1;\n" * 500)
    packed = StaticFile.read(big)
    assert packed.gzipped is not None
    assert gzip.decompress(packed.gzipped) == big.read_bytes()
    assert StaticFile.read(big).gzipped == packed.gzipped  # reproducible: no timestamp inside


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        (None, False),
        ("", False),
        ("gzip", True),
        ("br, gzip", True),
        ("GZIP;q=0.5", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("*", True),
        ("identity", False),
        ("gzip;q=x", True),
    ],
)
def test_accept_encoding(header: str | None, accepted: bool) -> None:
    assert _accepts_gzip(header) is accepted


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ('"abc"', True),
        ('W/"abc"', True),
        ('"x", "abc"', True),
        ('"abcd"', False),
        ("*", True),
    ],
)
def test_if_none_match(header: str | None, matches: bool) -> None:
    assert _etag_matches(header, '"abc"') is matches


def test_the_page_is_not_part_of_the_openapi_document(gateway: ServerThread) -> None:
    paths = set(gateway.app.openapi()["paths"])
    assert "/v1/chat/completions" in paths
    assert not {p for p in paths if p == "/" or p.startswith("/playground")}


def test_the_policy_is_one_header_line() -> None:
    assert "\n" not in CONTENT_SECURITY_POLICY and CONTENT_SECURITY_POLICY.isascii()
