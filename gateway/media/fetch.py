"""Guarded fetching of client-supplied media URLs (images now, audio later).

Owns `MediaFetcher`: the only way the gateway downloads a URL a client gave it. SGLang would fetch
such URLs itself with no address check (server-side request forgery into the GPU host's network,
see ../shared/SGLANG.md), so the gateway fetches them instead, and:

- accepts only ``http`` and ``https`` (no ``file:``, ``ftp:``, ``gopher:``, bare paths);
- refuses loopback, private, link-local (cloud metadata 169.254.169.254), multicast, reserved,
  unspecified and other non-public addresses, IPv4 and IPv6, including IPv4 embedded in IPv6
  (``::ffff:127.0.0.1``, 6to4, NAT64) and odd IPv4 spellings (``2130706433``, ``0x7f000001``,
  ``127.1``), unless `media_allow_private_addresses` or `media_allowed_networks` say otherwise;
- checks IP literals before any connection, and for host names resolves the name itself, checks
  EVERY address it resolves to, connects to a checked address and checks the peer address of the
  socket it got (DNS rebinding). This lives in an httpcore network backend (`_GuardedBackend`), so
  the check sits exactly where the socket is opened, on every hop of every redirect, while Host and
  TLS SNI keep the name (httpcore takes them from the URL, not from what we connect to);
- follows at most `media_fetch_max_redirects` redirects, each hop checked again;
- bounds the whole fetch in time (connect timeout plus a total deadline) and the body in size
  while streaming: a 2 GB body is cut at the cap, never read to be rejected;
- never sends or keeps cookies, never uses proxies from the environment, asks for an unencoded
  body (and bounds gzip/deflate if a server sends it anyway).

Every refusal or failure is an `errors.InvalidRequest` (400) whose `param` names the content part
and whose `code` says why: ``url_not_allowed``, ``fetch_timeout``, ``fetch_failed``,
``media_too_large`` (the caller may pass its own via `too_large_code`).
"""

from __future__ import annotations

import http.cookiejar
import ipaddress
import logging
import socket
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import anyio
import httpcore
import httpx

from gateway import errors
from gateway.settings import Settings

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the gateway reaches the embedded IPv4
_MAX_CONNECTIONS = 64
_USER_AGENT = "gemma3n-gateway media fetcher"


@dataclass(frozen=True, slots=True)
class FetchedMedia:
    """A fetched body, with what the server said about it."""

    data: bytes
    content_type: str | None  # the server's Content-Type, lower-cased, parameters dropped
    url: str  # the final URL, after redirects
    max_age: float | None = None  # seconds the server allows reuse (Cache-Control); None: unsaid


class AddressRefused(Exception):
    """A URL's host or an address it resolves to is not allowed; the text says why."""


class _BodyTooLarge(Exception):
    pass


class _FetchFailed(Exception):
    """The host answered, but not with a usable body; the text says what went wrong."""


class AddressPolicy:
    """Which IP addresses may be connected to: public ones, plus what the settings allow."""

    def __init__(self, *, allow_private: bool, allowed_networks: Iterable[IPNetwork] = ()) -> None:
        self.allow_private = allow_private
        self.allowed_networks = tuple(allowed_networks)

    def refusal(self, ip: IPAddress) -> str | None:
        """Why `ip` may not be connected to, or None when it may."""
        if self.allow_private or any(ip in net for net in self.allowed_networks):
            return None
        if isinstance(ip, ipaddress.IPv6Address):
            # An IPv6 address that carries an IPv4 one reaches that IPv4 host: judge the IPv4.
            embedded = _embedded_ipv4(ip)
            if embedded is not None:
                reason = self.refusal(embedded)
                return f"{reason} (inside the IPv6 address {ip})" if reason else None
        kind = _address_kind(ip)
        if kind is None:
            return None
        return f"{ip} is a {kind} address"

    async def resolve(self, host: str, port: int) -> list[str]:
        """Every address `host` resolves to, all checked; raises AddressRefused if any is not."""
        literal = parse_ip_literal(host)
        if literal is not None:
            reason = self.refusal(literal)
            if reason:
                raise AddressRefused(reason)
            return [str(literal)]
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            # Mapped by httpx to ConnectError, like any other failure to reach the host.
            raise httpcore.ConnectError(f"could not resolve host {host!r}") from exc
        addresses: list[str] = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            address = str(sockaddr[0])
            if address in addresses:
                continue
            reason = self.refusal(ipaddress.ip_address(address))
            if reason:
                # One bad answer refuses the host: a name that mixes public and private
                # answers is how DNS-rebinding attacks look.
                logger.info("media host %s refused: resolves to %s", host, address)
                raise AddressRefused(f"host {host} resolves to a non-public address")
            addresses.append(address)
        if not addresses:
            raise httpcore.ConnectError(f"host {host!r} has no address")
        return addresses


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _address_kind(ip: IPAddress) -> str | None:
    # Most specific first, so the message names what the address is; `is_global` last catches
    # the rest (shared 100.64/10, documentation ranges, benchmarking 198.18/15, ...).
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-public"
    return None


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address `host` spells, in any form a resolver would accept, or None for a name.

    Besides dotted quads and IPv6, C resolvers (inet_aton) take ``2130706433``, ``0x7f000001``,
    ``0177.0.0.1`` and ``127.1`` as 127.0.0.1: those are judged as the address they reach.
    """
    host = unquote(host).strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the address policy applied where sockets are opened.

    httpcore asks the backend to connect to the URL's host name; this one resolves it, checks
    every address, connects to a checked address (so a second, different DNS answer can never be
    used) and checks the socket's peer address. Host and SNI still come from the URL.
    """

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()  # anyio runs on asyncio (uvicorn) and trio

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's backend interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._policy.resolve(host, port)
        failure: Exception | None = None
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            peer = stream.get_extra_info("server_addr")
            reason = (
                "the connection has no peer address"
                if not peer
                else self._policy.refusal(ipaddress.ip_address(peer[0]))
            )
            if reason:
                await stream.aclose()
                raise AddressRefused(reason)
            return stream
        assert failure is not None  # resolve() returns at least one address
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's backend interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("unix sockets are never fetched from")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (request building, error mapping) over the guarded backend.

    httpx 0.28 has no `network_backend` argument, so the pool it built is replaced by the same
    pool with ours; `tests/gateway/media/test_fetch.py` proves the backend is the one used.
    """

    def __init__(self, policy: AddressPolicy, *, max_connections: int) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=max_connections,
            max_keepalive_connections=max_connections // 4,
            keepalive_expiry=5.0,
            network_backend=_GuardedBackend(policy),
        )


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """The fetcher serves every client: a cookie set for one must never reach another's fetch."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


class MediaFetcher:
    """Fetches http(s) URLs given by clients, refusing every address they must not reach."""

    def __init__(self, settings: Settings) -> None:
        try:
            networks = [ipaddress.ip_network(n) for n in settings.media_allowed_networks]
        except ValueError as exc:
            raise ValueError(f"MEDIA_ALLOWED_NETWORKS: {exc}") from exc
        self.policy = AddressPolicy(
            allow_private=settings.media_allow_private_addresses, allowed_networks=networks
        )
        self._allowed_hosts = tuple(
            host.strip().lower().rstrip(".") for host in settings.media_allowed_hosts
        )
        self._total_timeout = settings.media_fetch_timeout
        self._max_redirects = settings.media_fetch_max_redirects
        self._client = httpx.AsyncClient(
            transport=_GuardedTransport(self.policy, max_connections=_MAX_CONNECTIONS),
            timeout=httpx.Timeout(
                settings.media_fetch_timeout, connect=settings.media_fetch_connect_timeout
            ),
            follow_redirects=False,  # followed by hand, each hop checked in `_check_url`
            trust_env=False,  # an environment proxy would connect for us, unchecked
            cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
            headers={
                "User-Agent": _USER_AGENT,
                # Images are compressed already; an encoded body could expand past the cap.
                "Accept-Encoding": "identity",
            },
        )

    async def fetch(
        self,
        url: str,
        *,
        param: str,
        max_bytes: int,
        what: str = "media",
        too_large_code: str = "media_too_large",
    ) -> FetchedMedia:
        """Download `url` (http/https) within the guards; raise InvalidRequest naming `param`.

        `what` names the thing in messages ("image", "audio"); `too_large_code` is the error code
        of a body over `max_bytes`.
        """
        what_url = f"{what.capitalize()} URL"
        try:
            with anyio.fail_after(self._total_timeout):
                return await self._fetch(url, max_bytes=max_bytes)
        except AddressRefused as exc:
            raise errors.InvalidRequest(
                f"{what_url} refused: {exc}.", param=param, code="url_not_allowed"
            ) from exc
        except _BodyTooLarge as exc:
            raise errors.InvalidRequest(
                f"The {what} at the URL is larger than the limit of {max_bytes} bytes.",
                param=param,
                code=too_large_code,
            ) from exc
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise errors.InvalidRequest(
                f"Fetching the {what} URL timed out (limit {self._total_timeout:g} s).",
                param=param,
                code="fetch_timeout",
            ) from exc
        except _FetchFailed as exc:
            raise errors.InvalidRequest(
                f"Fetching the {what} URL failed: {exc}.", param=param, code="fetch_failed"
            ) from exc
        except httpx.InvalidURL as exc:
            raise errors.InvalidRequest(
                f"{what_url} refused: not a valid URL ({exc}).", param=param, code="url_not_allowed"
            ) from exc
        except httpx.HTTPError as exc:
            # Connection refused, TLS failure, protocol garbage: the class names the failure
            # without echoing internals of the far side.
            logger.info("media fetch failed: %r", exc)
            reason = (
                "could not connect to the host"
                if isinstance(exc, httpx.ConnectError)
                else f"the transfer broke off ({type(exc).__name__})"
            )
            raise errors.InvalidRequest(
                f"Fetching the {what} URL failed: {reason}.", param=param, code="fetch_failed"
            ) from exc

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- internals ----------------------------------------------------------------------------

    async def _fetch(self, url: str, *, max_bytes: int) -> FetchedMedia:
        current = httpx.URL(url)
        for hop in range(self._max_redirects + 1):
            try:
                self._check_url(current)
                request = self._client.build_request("GET", current)
                response = await self._client.send(request, stream=True)
            except AddressRefused as exc:
                if hop:
                    raise AddressRefused(f"{exc} (reached through a redirect)") from exc
                raise
            try:
                if response.status_code in _REDIRECT_STATUSES and "location" in response.headers:
                    current = current.join(response.headers["location"])
                    continue
                if not 200 <= response.status_code < 300:
                    raise _FetchFailed(f"the server answered HTTP {response.status_code}")
                data = await _read_capped(response, max_bytes)
                content_type = response.headers.get("content-type", "").split(";")[0].strip()
                return FetchedMedia(
                    data=data,
                    content_type=content_type.lower() or None,
                    url=str(current),
                    max_age=_max_age(response.headers.get("cache-control")),
                )
            finally:
                await response.aclose()
        raise _FetchFailed(f"more than {self._max_redirects} redirects")

    def _check_url(self, url: httpx.URL) -> None:
        if url.scheme not in ("http", "https"):
            raise AddressRefused(
                f"only http and https URLs are fetched, not {url.scheme or 'a bare path'}"
            )
        host = url.host.rstrip(".")
        if not host:
            raise AddressRefused("the URL has no host")
        if self._allowed_hosts and not any(_host_matches(host, p) for p in self._allowed_hosts):
            raise AddressRefused(f"host {host} is not in the allowed hosts")
        # IP literals are refused here, before any resolution or connection. Names are checked
        # by the backend, on every address they resolve to.
        literal = parse_ip_literal(host)
        if literal is not None:
            reason = self.policy.refusal(literal)
            if reason:
                raise AddressRefused(reason)


def _host_matches(host: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


async def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _BodyTooLarge
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    decoder: Any = None
    if encoding in ("gzip", "x-gzip", "deflate"):
        # Asked for identity but got compressed: decode with an output bound per step, because
        # one 64 KB deflate chunk can expand to 64 MB (httpx's decoder has no such bound).
        decoder = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)  # gzip or zlib header
    elif encoding not in ("identity", ""):
        raise _FetchFailed(f"the server sent an unsupported Content-Encoding: {encoding}")
    body = bytearray()
    async for chunk in response.aiter_raw():
        if decoder is None:
            body += chunk
        else:
            pending = chunk
            try:
                while pending and len(body) <= max_bytes:
                    body += decoder.decompress(pending, max_bytes + 1 - len(body))
                    pending = decoder.unconsumed_tail
            except zlib.error as exc:
                raise _FetchFailed(f"the {encoding} body is corrupt") from exc
        if len(body) > max_bytes:
            raise _BodyTooLarge
    return bytes(body)


def _max_age(cache_control: str | None) -> float | None:
    if not cache_control:
        return None
    directives: dict[str, str] = {}
    for part in cache_control.lower().split(","):
        name, _, value = part.strip().partition("=")
        directives[name] = value.strip().strip('"')
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    for name in ("s-maxage", "max-age"):  # we are a shared cache: s-maxage wins
        if directives.get(name, "").isdigit():
            return float(directives[name])
    return None
