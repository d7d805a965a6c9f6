"""fetch.MediaFetcher against a real HTTP server on 127.0.0.1, and its address guards."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpcore
import pytest
from local_http import (
    ServerState,
    Trap,
    declared_length,
    endless,
    gzipped,
    ipv6_loopback_available,
    redirect,
    serve,
    slow_headers,
    static,
    status,
    trickle,
)

from gateway import errors
from gateway.media import fetch as media_fetch
from gateway.media.fetch import AddressPolicy, MediaFetcher, parse_ip_literal
from gateway.settings import Settings

pytestmark = pytest.mark.anyio

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
PARAM = "messages[0].content[1].image_url"


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    with serve() as served:
        yield served


def settings(**overrides: Any) -> Settings:
    # The test server is on 127.0.0.1: only that one address is let through, so every other
    # non-public address is still refused as in production.
    values: dict[str, Any] = {
        "media_allowed_networks": ["127.0.0.1/32"],
        "media_fetch_timeout": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


async def fetch(url: str, max_bytes: int = 1_000_000, **overrides: Any) -> media_fetch.FetchedMedia:
    fetcher = MediaFetcher(settings(**overrides))
    try:
        return await fetcher.fetch(url, param=PARAM, max_bytes=max_bytes, what="image")
    finally:
        await fetcher.aclose()


async def refused(url: str, code: str, max_bytes: int = 1_000_000, **overrides: Any) -> str:
    with pytest.raises(errors.InvalidRequest) as caught:
        await fetch(url, max_bytes, **overrides)
    assert caught.value.param == PARAM
    assert caught.value.status_code == 400
    assert caught.value.code == code, caught.value.message
    return caught.value.message


# -- fetching ----------------------------------------------------------------------------------


async def test_fetches_a_body_with_its_type_and_cache_lifetime(
    server: tuple[str, ServerState],
) -> None:
    base, state = server
    state.routes["/a.png"] = static(PNG, "image/png; charset=x", Cache_Control="public, max-age=60")
    fetched = await fetch(base + "/a.png")
    assert fetched.data == PNG
    assert fetched.content_type == "image/png"
    assert fetched.url == base + "/a.png"
    assert fetched.max_age == 60.0
    headers = state.requests[0][1]
    assert headers["accept-encoding"] == "identity"
    assert "cookie" not in headers


async def test_follows_a_redirect_chain_checking_each_hop(server: tuple[str, ServerState]) -> None:
    base, state = server
    state.routes["/r3"] = redirect("/r2", 301)
    state.routes["/r2"] = redirect(base + "/r1", 307)
    state.routes["/r1"] = redirect("/final.png", 308)
    state.routes["/final.png"] = static(PNG, "image/png")
    fetched = await fetch(base + "/r3")
    assert fetched.data == PNG
    assert fetched.url == base + "/final.png"
    assert [path for path, _ in state.requests] == ["/r3", "/r2", "/r1", "/final.png"]


async def test_too_many_redirects(server: tuple[str, ServerState]) -> None:
    base, state = server
    state.routes["/loop"] = redirect("/loop")
    message = await refused(base + "/loop", "fetch_failed", media_fetch_max_redirects=2)
    assert "more than 2 redirects" in message
    assert len(state.requests) == 3


async def test_redirect_into_a_private_address_is_refused_without_connecting(
    server: tuple[str, ServerState], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = server
    trap = Trap("127.0.0.2")  # loopback, but not the allowed 127.0.0.1/32
    try:
        state.routes["/to-loopback"] = redirect(f"http://127.0.0.2:{trap.port}/x.png")
        state.routes["/to-metadata"] = redirect("http://169.254.169.254/latest/meta-data/")
        state.routes["/to-file"] = redirect("file:///etc/passwd")
        message = await refused(base + "/to-loopback", "url_not_allowed")
        assert "127.0.0.2 is a loopback address" in message
        assert "redirect" in message
        message = await refused(base + "/to-metadata", "url_not_allowed")
        assert "169.254.169.254 is a link-local address" in message
        message = await refused(base + "/to-file", "url_not_allowed")
        assert "not file" in message
        assert trap.connections() == 0
    finally:
        trap.close()


async def test_status_errors_name_the_status(server: tuple[str, ServerState]) -> None:
    base, state = server
    state.routes["/gone"] = status(404)
    message = await refused(base + "/gone", "fetch_failed")
    assert "HTTP 404" in message


async def test_slow_server_times_out(server: tuple[str, ServerState]) -> None:
    base, state = server
    state.routes["/slow"] = slow_headers(5)
    state.routes["/trickle"] = trickle(b"x", 0.05)
    for path in ("/slow", "/trickle"):
        start = time.monotonic()
        message = await refused(base + path, "fetch_timeout", media_fetch_timeout=0.4)
        assert 0.3 < time.monotonic() - start < 2.0
        assert "timed out" in message


async def test_endless_body_is_cut_at_the_cap(server: tuple[str, ServerState]) -> None:
    base, state = server
    state.routes["/endless"] = endless("endless")
    message = await refused(base + "/endless", "media_too_large", max_bytes=300_000)
    assert "300000 bytes" in message
    await anyio.sleep(0.2)
    # The client hung up right after the cap: the server got out no more than the cap plus
    # what socket buffers hold, far from the 10 s of writing it would otherwise do.
    assert state.bytes_sent["endless"] < 20_000_000


async def test_declared_length_over_the_cap_is_refused_before_reading(
    server: tuple[str, ServerState],
) -> None:
    base, state = server
    state.routes["/huge"] = declared_length(2 * 1024**3)
    await refused(base + "/huge", "media_too_large")


async def test_compressed_bodies_are_decoded_within_the_cap(
    server: tuple[str, ServerState],
) -> None:
    base, state = server
    state.routes["/gz"] = gzipped(PNG, "image/png")
    state.routes["/gz-bomb"] = gzipped(b"\x00" * 50_000_000, "image/png")
    assert (await fetch(base + "/gz")).data == PNG
    await refused(base + "/gz-bomb", "media_too_large", max_bytes=1_000_000)


async def test_content_type_is_reported_not_judged(server: tuple[str, ServerState]) -> None:
    # The fetcher serves images and audio alike: what the bytes are is the caller's to sniff.
    base, state = server
    state.routes["/mislabelled"] = static(PNG, "text/html")
    state.routes["/untyped"] = static(PNG, None)
    assert (await fetch(base + "/mislabelled")).content_type == "text/html"
    assert (await fetch(base + "/untyped")).content_type is None


async def test_cookies_are_neither_kept_nor_sent(server: tuple[str, ServerState]) -> None:
    base, state = server
    state.routes["/set"] = static(PNG, "image/png", Set_Cookie="session=secret; Path=/")
    fetcher = MediaFetcher(settings())
    try:
        await fetcher.fetch(base + "/set", param=PARAM, max_bytes=1000)
        await fetcher.fetch(base + "/set", param=PARAM, max_bytes=1000)
    finally:
        await fetcher.aclose()
    assert all("cookie" not in headers for _, headers in state.requests)


async def test_connection_refused_is_a_fetch_failure() -> None:
    trap = Trap()
    port = trap.port
    trap.close()  # nothing listens there any more
    message = await refused(f"http://127.0.0.1:{port}/x.png", "fetch_failed")
    assert "could not connect" in message


async def test_host_name_keeps_host_header_while_connecting_to_the_checked_address(
    server: tuple[str, ServerState],
) -> None:
    base, state = server
    state.routes["/a.png"] = static(PNG, "image/png")
    port = base.rsplit(":", 1)[1]
    fetched = await fetch(f"http://localhost:{port}/a.png", media_allow_private_addresses=True)
    assert fetched.data == PNG
    assert state.requests[0][1]["host"] == f"localhost:{port}"


# -- refusals before any connection ------------------------------------------------------------


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Records (and blocks) every attempt to open a socket, at two levels."""
    attempts: list[object] = []

    async def backend_connect(self: object, host: str, port: int, **kwargs: object) -> object:
        attempts.append((host, port))
        raise AssertionError(f"connection attempted to {host}:{port}")

    def socket_connect(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise AssertionError(f"socket connect to {address}")

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", backend_connect)
    monkeypatch.setattr(socket.socket, "connect", socket_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", socket_connect)
    return attempts


@pytest.fixture
def traps() -> Iterator[dict[str, Trap]]:
    opened = {"v4": Trap("127.0.0.1")}
    if ipv6_loopback_available():
        opened["v6"] = Trap("::1")
    yield opened
    for trap in opened.values():
        trap.close()


async def test_private_addresses_are_refused_without_any_connection(
    no_connections: list[object], traps: dict[str, Trap]
) -> None:
    port = traps["v4"].port
    port6 = traps["v6"].port if "v6" in traps else port
    cases = {
        f"http://127.0.0.1:{port}/a.png": "127.0.0.1 is a loopback address",
        f"http://localhost:{port}/a.png": "host localhost resolves to a non-public address",
        "http://10.0.0.1/a.png": "10.0.0.1 is a private address",
        "http://192.168.1.10/a.png": "private",
        "http://172.16.0.1/a.png": "private",
        "http://169.254.169.254/latest/meta-data/": "169.254.169.254 is a link-local address",
        "http://100.64.0.1/a.png": "100.64.0.1 is a non-public address",
        "http://0.0.0.0/a.png": "unspecified",
        "http://224.0.0.1/a.png": "multicast",
        "http://240.0.0.1/a.png": "reserved",
        f"http://[::1]:{port6}/a.png": "::1 is a loopback address",
        f"http://[::ffff:127.0.0.1]:{port}/a.png": "127.0.0.1 is a loopback address (inside",
        "http://[::ffff:169.254.169.254]/": "link-local",
        "http://[fe80::1]/a.png": "link-local",
        "http://[fc00::1]/a.png": "private",
        "http://[::]/a.png": "unspecified",
        "http://[ff02::1]/a.png": "multicast",
        "http://[2002:7f00:1::]/a.png": "127.0.0.1 is a loopback address (inside",  # 6to4
        "http://[64:ff9b::a9fe:a9fe]/": "169.254.169.254 is a link-local address",  # NAT64
        f"http://2130706433:{port}/a.png": "127.0.0.1 is a loopback address",  # decimal
        f"http://0x7f000001:{port}/a.png": "127.0.0.1 is a loopback address",  # hex
        f"http://127.1:{port}/a.png": "127.0.0.1 is a loopback address",  # short form
        "http://0xa9fea9fe/": "169.254.169.254 is a link-local address",
        f"http://0177.0.0.1:{port}/a.png": "not a valid URL",  # octal: httpx refuses to parse it
    }
    fetcher = MediaFetcher(Settings())  # production defaults: nothing private allowed
    try:
        for url, reason in cases.items():
            with pytest.raises(errors.InvalidRequest) as caught:
                await fetcher.fetch(url, param=PARAM, max_bytes=1000, what="image")
            assert caught.value.code == "url_not_allowed", url
            assert reason in caught.value.message, (url, caught.value.message)
            assert caught.value.message.startswith("Image URL refused: ")
    finally:
        await fetcher.aclose()
    assert no_connections == []
    assert all(trap.connections() == 0 for trap in traps.values())


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://example.com/", "/etc/passwd"],
)
async def test_other_schemes_are_refused(url: str, no_connections: list[object]) -> None:
    message = await refused(url, "url_not_allowed")
    assert "only http and https" in message or "not a valid URL" in message
    assert no_connections == []


async def test_host_allow_list(
    no_connections: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_dns(*args: object, **kwargs: object) -> object:
        raise AssertionError("resolved a host that is not allowed")

    monkeypatch.setattr(anyio, "getaddrinfo", no_dns)
    hosts = ["img.example.com", "*.cdn.example.org"]
    for url in ("http://evil.example.com/a.png", "http://cdn.example.org/a.png"):
        message = await refused(url, "url_not_allowed", media_allowed_hosts=hosts)
        assert "not in the allowed hosts" in message
    assert no_connections == []


async def test_a_name_with_any_private_answer_is_refused(
    no_connections: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def rebinding_dns(host: str, port: int, **kwargs: object) -> list[Any]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", port)),
        ]

    monkeypatch.setattr(anyio, "getaddrinfo", rebinding_dns)
    message = await refused("http://rebind.example/a.png", "url_not_allowed")
    assert "resolves to a non-public address" in message
    assert no_connections == []


async def test_the_address_actually_connected_to_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # DNS says public; the socket ends up on loopback (as a rebinding resolver, a hijacked
    # route or a transparent proxy could arrange). The peer address is checked after connect.
    trap = Trap()
    real_connect = httpcore.AnyIOBackend.connect_tcp
    asked: list[str] = []

    async def public_dns(host: str, port: int, **kwargs: object) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]

    async def misrouted(self: Any, host: str, port: int, **kwargs: Any) -> Any:
        asked.append(host)
        return await real_connect(self, "127.0.0.1", trap.port, **kwargs)

    monkeypatch.setattr(anyio, "getaddrinfo", public_dns)
    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", misrouted)
    try:
        message = await refused(
            "http://public.example/a.png", "url_not_allowed", media_allowed_networks=[]
        )
        assert "127.0.0.1 is a loopback address" in message
        assert asked == ["93.184.215.14"]  # connected to the checked address, not the name
    finally:
        trap.close()


# -- the address policy on its own -------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("[::1]", "::1"),
        ("example.com", None),
        ("deadbeef", None),
        ("1.2.3.4.5", None),
    ],
)
def test_parse_ip_literal(host: str, address: str | None) -> None:
    parsed = parse_ip_literal(host)
    assert (str(parsed) if parsed else None) == address


def test_policy_allows_public_and_listed_networks() -> None:
    policy = AddressPolicy(
        allow_private=False, allowed_networks=[ipaddress.ip_network("10.1.2.0/24")]
    )
    assert policy.refusal(ipaddress.ip_address("93.184.215.14")) is None
    assert policy.refusal(ipaddress.ip_address("2606:2800:21f:cb07:6820:80da:af6b:8b2c")) is None
    assert policy.refusal(ipaddress.ip_address("10.1.2.3")) is None
    assert policy.refusal(ipaddress.ip_address("10.1.3.3")) == "10.1.3.3 is a private address"
    everything = AddressPolicy(allow_private=True)
    assert everything.refusal(ipaddress.ip_address("127.0.0.1")) is None


def test_bad_allowed_network_fails_at_start_up() -> None:
    with pytest.raises(ValueError, match="MEDIA_ALLOWED_NETWORKS"):
        MediaFetcher(Settings(media_allowed_networks=["10.0.0.1/8"]))
