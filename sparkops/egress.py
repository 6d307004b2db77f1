"""The one outbound HTTP path of Spark-Ops: SSRF-safe requests on httpx.

Every HTTP tool call, outbound webhook and OpenAI-compatible SDK call leaves the process
through this module (a test walks the code base and fails if anything else imports an HTTP
client). What it guarantees:

- only ``http``/``https``; URLs with userinfo (``user@host``) are refused;
- the host is resolved ONCE, at connect time, with ``socket.getaddrinfo`` (what the OS would
  connect to, so ``127.1``, ``0``, ``2130706433``, ``0x7f000001`` are seen as loopback), EVERY
  resolved address is checked, and the TCP connection is made to the checked address itself:
  there is no second lookup, hence no DNS-rebinding window. TLS still verifies (and sends SNI
  for) the hostname of the URL, because httpcore starts TLS on the stream we return;
- loopback, private (RFC 1918, ULA), CGNAT, link-local, cloud metadata, multicast,
  reserved/unspecified, documentation/benchmark ranges, IPv4-mapped IPv6, and NAT64 / 6to4
  addresses embedding such an IPv4 are refused unless ``SPARKOPS_OUTBOUND_ALLOW`` lists them
  (hostnames, case-insensitive, ``*.suffix`` wildcards; IPs; CIDRs);
- redirects are followed by hand, each hop re-checked (scheme, userinfo, host, addresses);
  on a cross-origin hop only harmless headers are carried over;
- connect/read timeouts, a whole-exchange deadline, and a response size cap enforced while
  streaming (the body is never read past ``max_bytes``);
- environment proxies, ``.netrc`` and Unix sockets are ignored (``trust_env=False``).

request() runs on httpx; sdk_http_client() gives the openai/anthropic SDKs the same pinned
transport built on httpx2/httpcore2, the httpx fork those SDKs are written against, and
sdk_async_http_client() gives the `mcp` SDK (async, on httpx2 too) its async twin, with the
response size cap enforced while streaming.

Why not a package: ``safehttpx`` (async only, on ``httpx2``; falls back to a public DNS-over-HTTPS
resolver; accepts a host if ANY record is public), ``safe-outbound`` (its httpx client checks
but explicitly does not pin the checked address) and ``httpx-secure`` (async only; picks the
address by opening a TCP probe, including to denied addresses, and checks only that one address)
each miss a requirement above, so the pinning backend lives here.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json as jsonlib
import re
import socket
import ssl
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpcore
import httpcore2
import httpx
import httpx2
from django.conf import settings

from sparkops.errors import SparkOpsError

__all__ = [
    "EgressDenied",
    "EgressError",
    "EgressResponse",
    "check_url",
    "request",
    "sdk_async_http_client",
    "sdk_http_client",
    "static_url_problem",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class EgressDenied(SparkOpsError):
    """The target is not allowed (scheme, userinfo, internal address...); says why."""

    status_code = 400
    error_type = "egress_denied"


class EgressError(SparkOpsError):
    """The exchange failed: timeout, connection error, protocol error, response too large."""

    status_code = 502
    error_type = "egress_error"

    def __init__(self, detail: str, *, retryable: bool = False, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.retryable = retryable


@dataclass
class EgressResponse:
    status_code: int
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    content: bytes
    url: str  # the final URL, after redirects
    elapsed_ms: float

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    def text(self) -> str:
        match = re.search(r"charset\s*=\s*\"?([\w.:-]+)", self.headers.get("content-type", ""))
        encoding = match.group(1) if match else "utf-8"
        try:
            return self.content.decode(encoding, errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")


# --- Address policy --------------------------------------------------------------------------

_V4_RULES: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), reason)
    for net, reason in (
        ("169.254.169.254/32", "a cloud metadata endpoint"),
        ("169.254.170.2/32", "a cloud metadata endpoint"),
        ("100.100.100.200/32", "a cloud metadata endpoint"),
        ("0.0.0.0/8", "unspecified ('this network')"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("100.64.0.0/10", "shared address space (CGNAT)"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
        ("192.0.0.0/24", "reserved (IETF protocol assignments)"),
        ("192.0.2.0/24", "reserved (documentation)"),
        ("198.51.100.0/24", "reserved (documentation)"),
        ("203.0.113.0/24", "reserved (documentation)"),
        ("198.18.0.0/15", "reserved (benchmarking)"),
        ("192.88.99.0/24", "reserved (6to4 relay anycast)"),
    )
)

_V6_RULES: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), reason)
    for net, reason in (
        ("fd00:ec2::254/128", "a cloud metadata endpoint"),
        ("::1/128", "loopback"),
        ("::/128", "unspecified"),
        ("::/96", "reserved (IPv4-compatible)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("fc00::/7", "private (unique local)"),
        ("ff00::/8", "multicast"),
        ("64:ff9b:1::/48", "reserved (local-use NAT64)"),
        ("2001::/32", "reserved (Teredo)"),
        ("2001:db8::/32", "reserved (documentation)"),
        ("100::/64", "reserved (discard-only)"),
    )
)

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIXTOFOUR = ipaddress.IPv6Network("2002::/16")

# Names refused without resolving them (they answer on link-local addresses in clouds).
_METADATA_HOSTNAMES = frozenset(
    {
        "metadata.google.internal",
        "metadata.goog",
        "metadata",
        "instance-data",
        "instance-data.ec2.internal",
    }
)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    if ip.ipv4_mapped is not None:
        return "an IPv4-mapped", ip.ipv4_mapped
    if ip in _NAT64:
        return "a NAT64", ipaddress.IPv4Address(ip.packed[12:])
    if ip.sixtofour is not None:
        return "a 6to4", ip.sixtofour
    return None


def _address_problem(ip: IPAddress) -> str | None:
    """Why `ip` may not be contacted, or None if it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            unscoped = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
            return _address_problem(unscoped) or "a scoped IPv6 address"
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            kind, inner = embedded
            problem = _address_problem(inner)
            return f"{kind} address of {inner}, which is {problem}" if problem else None
        rules: tuple[tuple[Any, str], ...] = _V6_RULES
    else:
        rules = _V4_RULES
    for network, reason in rules:
        if ip in network:
            return reason
    # A net under the explicit tables, so the verdict is never looser than the stdlib's.
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified or ip.is_reserved or ip.is_private or not ip.is_global:
        return "not a public address"
    return None


@dataclass(frozen=True)
class _AllowList:
    hostnames: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def from_settings(cls) -> _AllowList:
        hostnames: set[str] = set()
        suffixes: list[str] = []
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for raw in getattr(settings, "SPARKOPS_OUTBOUND_ALLOW", None) or []:
            entry = str(raw).strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            entry = entry.rstrip(".")
            if entry.startswith("*."):
                suffixes.append(entry[1:])
            else:
                hostnames.add(entry)
        return cls(frozenset(hostnames), tuple(suffixes), tuple(networks))

    def allows_host(self, hostname: str) -> bool:
        return hostname in self.hostnames or hostname.endswith(self.suffixes)

    def allows_ip(self, ip: IPAddress) -> bool:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(
            c in net for c in candidates for net in self.networks if c.version == net.version
        )


# --- Host parsing ----------------------------------------------------------------------------

_NUMERIC_PART = r"(?:0x[0-9a-f]*|[0-9]+)"
_NUMERIC_HOST = re.compile(rf"{_NUMERIC_PART}(?:\.{_NUMERIC_PART}){{0,3}}\.?")
_NUMERIC_LABEL = re.compile(_NUMERIC_PART)
_HOSTNAME = re.compile(r"(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_-]{1,63})*")


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """IPv4 by the inet_aton rules getaddrinfo applies (`127.1`, `0x7f000001`, `0177.0.0.1`).

    None if `host` does not look numeric; EgressDenied if it looks numeric but is invalid
    (the resolver would then send it to DNS, where anyone could answer)."""
    if not _NUMERIC_HOST.fullmatch(host):
        return None
    values: list[int] = []
    for part in host.rstrip(".").split("."):
        if part.startswith("0x"):
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if not part.isdigit() or "8" in part or "9" in part:
                raise EgressDenied(f"host {host!r} is not a valid numeric address")
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *head, last = values
    if any(v > 0xFF for v in head) or last >= 256 ** (4 - len(head)):
        raise EgressDenied(f"host {host!r} is not a valid numeric address")
    number = 0
    for value in head:
        number = number * 256 + value
    return ipaddress.IPv4Address(number * 256 ** (4 - len(head)) + last)


def _parse_host(raw: str) -> IPAddress | str:
    """An IP address (literal or numeric form), or a normalized hostname."""
    host = raw.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.replace("%25", "%"))
        except ValueError:
            raise EgressDenied(f"host {raw!r} is not a valid IPv6 address") from None
    with contextlib.suppress(ValueError):
        return ipaddress.IPv4Address(host)
    numeric = _inet_aton(host)
    if numeric is not None:
        return numeric
    host = host.removesuffix(".")
    if not _HOSTNAME.fullmatch(host):
        raise EgressDenied(f"host {raw!r} is not a valid hostname")
    if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        raise EgressDenied(f"host {raw!r} is not a valid hostname")
    return host


class _ResolutionFailed(Exception):
    pass


def _resolve(hostname: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise _ResolutionFailed(f"host {hostname!r} could not be resolved: {exc}") from exc
    addresses: list[IPAddress] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            ip = ipaddress.ip_address(sockaddr[0])
        except ValueError:
            raise EgressDenied(f"host {hostname!r} resolved to {sockaddr[0]!r}") from None
        if family == socket.AF_INET6 and len(sockaddr) >= 4 and sockaddr[3]:
            raise EgressDenied(f"host {hostname!r} resolved to a scoped IPv6 address")
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise _ResolutionFailed(f"host {hostname!r} has no IPv4/IPv6 address")
    return addresses


def _check_hostname(hostname: str, allow: _AllowList) -> None:
    if hostname in _METADATA_HOSTNAMES and not allow.allows_host(hostname):
        raise EgressDenied(f"host {hostname} is a cloud metadata endpoint")


def _checked_addresses(host: str, port: int) -> list[IPAddress]:
    """Resolve `host` once and return its addresses, every one of them checked.

    Raises EgressDenied if any address is refused, _ResolutionFailed if DNS fails."""
    allow = _AllowList.from_settings()
    parsed = _parse_host(host)
    if isinstance(parsed, str):
        _check_hostname(parsed, allow)
        host_allowed = allow.allows_host(parsed)
        addresses = _resolve(parsed, port)
        source = f" (host {parsed})"
    else:
        host_allowed = False
        addresses = [parsed]
        source = ""
    if not host_allowed:
        for ip in addresses:
            problem = _address_problem(ip)
            if problem and not allow.allows_ip(ip):
                raise EgressDenied(f"address {ip} is {problem}{source}")
    return addresses


def _check_url_static(url: httpx.URL | str) -> httpx.URL:
    """Scheme, userinfo and host syntax: every check that needs no DNS."""
    if isinstance(url, str):
        if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
            raise EgressDenied("URL contains whitespace or control characters")
        try:
            url = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise EgressDenied(f"invalid URL: {exc}") from None
    scheme = url.scheme.lower()
    if scheme not in ("http", "https"):
        raise EgressDenied(f"scheme {scheme or '(none)'!r} is not allowed (only http and https)")
    if url.userinfo:
        raise EgressDenied("URLs with credentials (user@host) are not allowed")
    host = url.raw_host.decode("ascii", errors="replace")
    if not host:
        raise EgressDenied("URL has no host")
    if url.port == 0:
        raise EgressDenied("port 0 is not allowed")
    parsed = _parse_host(host)
    if isinstance(parsed, str):
        _check_hostname(parsed, _AllowList.from_settings())
    return url


def static_url_problem(url: str) -> str | None:
    """Why the egress client refuses `url` whatever DNS answers, or None: syntax, scheme,
    credentials, a metadata hostname, or a literal or numeric address (`0177.0.0.1`,
    `2130706433`, `[::ffff:127.0.0.1]`...) in a refused range. For checks on save; hostnames
    are resolved (and checked again) only at call time."""
    try:
        parsed = _check_url_static(url)
        host = _parse_host(parsed.raw_host.decode("ascii"))
    except EgressDenied as exc:
        return exc.detail
    if not isinstance(host, str):
        problem = _address_problem(host)
        if problem and not _AllowList.from_settings().allows_ip(host):
            return f"address {host} is {problem}"
    return None


def check_url(url: str) -> None:
    """Raise EgressDenied unless `url` may be requested now (DNS included).

    A later request() resolves again at connect time and connects only to what that check
    accepted, so a DNS answer that changes in between is caught, not trusted."""
    parsed = _check_url_static(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        _checked_addresses(parsed.raw_host.decode("ascii"), port)
    except _ResolutionFailed as exc:
        raise EgressDenied(str(exc)) from None


# --- The pinned transport --------------------------------------------------------------------
#
# request() runs on httpx/httpcore. The openai (3.x) and anthropic (2.x) SDKs run on their
# fork httpx2/httpcore2 (anthropic refuses an httpx.Client), so sdk_http_client() builds the
# same pinned transport on that pair. One mixin holds the logic for both.


class _PinningMixin:
    """Resolves once, checks every address, connects to a checked address (never re-resolves).

    httpcore passes the URL's host here and starts TLS on the returned stream with that same
    host as SNI/verification name, so pinning the IP keeps certificate checks intact."""

    _core: Any  # httpcore or httpcore2

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> Any:
        core = self._core
        try:
            addresses = _checked_addresses(host, port)
        except _ResolutionFailed as exc:
            raise core.ConnectError(str(exc)) from exc
        deadline = None if timeout is None else time.monotonic() + timeout
        error: Exception = core.ConnectError(f"no address to connect to for {host}")
        for address in addresses:  # every one checked above; try them in resolver order
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise core.ConnectTimeout(f"connecting to {host} timed out")
            try:
                # A mixin: the httpcore(2) backend it is combined with has connect_tcp.
                return super().connect_tcp(  # type: ignore[misc]
                    str(address),  # a literal: create_connection does no DNS lookup for it
                    port,
                    timeout=remaining,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except core.ConnectError as exc:
                error = exc
        raise error

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise EgressDenied("Unix domain sockets are not allowed")


class _PinnedAsyncBackend(httpcore2.AnyIOBackend):
    """The async twin of _PinningMixin (for the `mcp` SDK): the resolution and the checks run
    in a thread (getaddrinfo blocks), then each checked literal is dialled in turn."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> Any:
        import anyio.to_thread  # with the async client only: the sync paths never load it

        try:
            addresses = await anyio.to_thread.run_sync(_checked_addresses, host, port)
        except _ResolutionFailed as exc:
            raise httpcore2.ConnectError(str(exc)) from exc
        deadline = None if timeout is None else time.monotonic() + timeout
        error: Exception = httpcore2.ConnectError(f"no address to connect to for {host}")
        for address in addresses:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise httpcore2.ConnectTimeout(f"connecting to {host} timed out")
            try:
                return await super().connect_tcp(
                    str(address),
                    port,
                    timeout=remaining,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore2.ConnectError as exc:
                error = exc
        raise error

    async def connect_unix_socket(self, path: str, timeout: Any = None, socket_options=None):
        raise EgressDenied("Unix domain sockets are not allowed")


class _PinnedBackend(_PinningMixin, httpcore.SyncBackend):
    _core = httpcore


class _PinnedBackend2(_PinningMixin, httpcore2.SyncBackend):
    _core = httpcore2


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()  # certifi, or SSL_CERT_FILE/SSL_CERT_DIR if set


_MAX_CONNECTIONS, _MAX_KEEPALIVE, _KEEPALIVE_EXPIRY = 100, 20, 5.0


def _pinned_transport(http: Any, core: Any, backend: Any) -> Any:
    """`http.HTTPTransport` (direct, no env) whose connection pool dials through `backend`."""
    limits = http.Limits(
        max_connections=_MAX_CONNECTIONS,
        max_keepalive_connections=_MAX_KEEPALIVE,
        keepalive_expiry=_KEEPALIVE_EXPIRY,
    )
    transport = http.HTTPTransport(verify=_ssl_context(), trust_env=False, limits=limits, retries=0)
    if not isinstance(getattr(transport, "_pool", None), core.ConnectionPool):
        raise RuntimeError(f"unsupported {http.__name__} version: no HTTPTransport._pool")
    # The pool httpx builds for a direct transport, plus our network backend (a public
    # httpcore argument); `_pool` is the one private name used, checked above.
    transport._pool = core.ConnectionPool(
        ssl_context=_ssl_context(),
        max_connections=_MAX_CONNECTIONS,
        max_keepalive_connections=_MAX_KEEPALIVE,
        keepalive_expiry=_KEEPALIVE_EXPIRY,
        retries=0,
        network_backend=backend,
    )
    return transport


def _check_request_hook(request: Any) -> None:
    """Runs before every request a client sends, redirect hops included."""
    _check_url_static(str(request.url))


def _client(timeout: httpx.Timeout) -> httpx.Client:
    return httpx.Client(
        transport=_pinned_transport(httpx, httpcore, _PinnedBackend()),
        trust_env=False,
        timeout=timeout,
        follow_redirects=False,
        max_redirects=settings.SPARKOPS_OUTBOUND_MAX_REDIRECTS,
        event_hooks={"request": [_check_request_hook]},
    )


def sdk_http_client(*, timeout: float) -> httpx2.Client:
    """A client for the openai/anthropic SDKs' `http_client=`, on the pinned transport.

    It is an `httpx2.Client`: both installed SDKs are built on httpx2 (anthropic rejects an
    httpx.Client). Every connection is resolved/checked/pinned and every request (a redirect
    hop too, should a caller enable following) re-checked by a request hook. Redirects are not
    followed by default: an API answering 3xx is an error, and following would carry API-key
    headers to the new location. Env proxies and .netrc are ignored."""
    connect = min(settings.SPARKOPS_OUTBOUND_CONNECT_TIMEOUT, timeout)
    return httpx2.Client(
        transport=_pinned_transport(httpx2, httpcore2, _PinnedBackend2()),
        trust_env=False,
        timeout=httpx2.Timeout(timeout, connect=connect),
        follow_redirects=False,
        max_redirects=settings.SPARKOPS_OUTBOUND_MAX_REDIRECTS,
        event_hooks={"request": [_check_request_hook]},
    )


class _CappedStream(httpx2.AsyncByteStream):
    """A response body that fails once it passes `limit` bytes (never read past it)."""

    def __init__(self, inner: Any, limit: int, url: Any) -> None:
        self._inner, self._limit, self._url = inner, limit, url

    async def __aiter__(self) -> Any:
        total = 0
        async for chunk in self._inner:
            total += len(chunk)
            if total > self._limit:
                raise EgressError(
                    f"response of {self._url.host} is too large (over {self._limit} bytes)"
                )
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CappedAsyncTransport(httpx2.AsyncBaseTransport):
    def __init__(self, inner: httpx2.AsyncBaseTransport, limit: int) -> None:
        self._inner, self._limit = inner, limit

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._limit:
            await response.aclose()
            raise EgressError(
                f"response is too large ({declared} bytes, limit {self._limit})", retryable=False
            )
        response.stream = _CappedStream(response.stream, self._limit, request.url)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


async def _check_request_hook_async(request: Any) -> None:
    _check_url_static(str(request.url))


def sdk_async_http_client(
    *,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    max_bytes: int | None = None,
) -> httpx2.AsyncClient:
    """An `httpx2.AsyncClient` for the `mcp` SDK (`streamable_http_client(http_client=...)`,
    `sse_client(httpx_client_factory=...)`): the pinned transport (every connection resolved,
    checked and pinned; every request, redirect hops included, re-checked by a hook), no env
    proxies, redirects not followed by the client (the SDK follows same-origin ones itself,
    each through the hook), and each response body capped at `max_bytes` (default
    SPARKOPS_OUTBOUND_MAX_BYTES) while it streams. `timeout` bounds each read, write and pool
    wait; connecting by SPARKOPS_OUTBOUND_CONNECT_TIMEOUT (or `timeout` if smaller)."""
    connect = min(settings.SPARKOPS_OUTBOUND_CONNECT_TIMEOUT, timeout)
    limit = int(max_bytes if max_bytes is not None else settings.SPARKOPS_OUTBOUND_MAX_BYTES)
    pinned = _pinned_async_transport()
    return httpx2.AsyncClient(
        transport=_CappedAsyncTransport(pinned, limit),
        trust_env=False,
        headers=dict(headers or {}),
        timeout=httpx2.Timeout(timeout, connect=connect),
        follow_redirects=False,
        max_redirects=settings.SPARKOPS_OUTBOUND_MAX_REDIRECTS,
        event_hooks={"request": [_check_request_hook_async]},
    )


def _pinned_async_transport() -> httpx2.AsyncHTTPTransport:
    limits = httpx2.Limits(
        max_connections=_MAX_CONNECTIONS,
        max_keepalive_connections=_MAX_KEEPALIVE,
        keepalive_expiry=_KEEPALIVE_EXPIRY,
    )
    transport = httpx2.AsyncHTTPTransport(
        verify=_ssl_context(), trust_env=False, limits=limits, retries=0
    )
    if not isinstance(getattr(transport, "_pool", None), httpcore2.AsyncConnectionPool):
        raise RuntimeError("unsupported httpx2 version: no AsyncHTTPTransport._pool")
    transport._pool = httpcore2.AsyncConnectionPool(
        ssl_context=_ssl_context(),
        max_connections=_MAX_CONNECTIONS,
        max_keepalive_connections=_MAX_KEEPALIVE,
        keepalive_expiry=_KEEPALIVE_EXPIRY,
        retries=0,
        network_backend=_PinnedAsyncBackend(),
    )
    return transport


# --- request() -------------------------------------------------------------------------------

_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# Headers carried to another origin on redirect; the rest (credentials, API keys) are dropped.
_CROSS_ORIGIN_SAFE = frozenset(
    {"accept", "accept-encoding", "accept-language", "content-type", "content-language"}
)
_HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})


@contextlib.contextmanager
def _mapped_errors(url: httpx.URL) -> Iterator[None]:
    where = url.host
    try:
        yield
    except httpx.TimeoutException as exc:
        phase = type(exc).__name__.removesuffix("Timeout").lower() or "request"
        raise EgressError(f"{phase} timed out talking to {where}", retryable=True) from exc
    except httpx.UnsupportedProtocol as exc:
        raise EgressDenied(f"unsupported URL: {exc}") from exc
    except httpx.RemoteProtocolError as exc:
        if "location header" in str(exc).lower():  # httpx parses Location before we see it
            raise EgressDenied(f"redirect to an invalid URL: {exc}") from exc
        raise EgressError(f"connection to {where} failed: {exc}", retryable=True) from exc
    except httpx.TransportError as exc:
        raise EgressError(
            f"connection to {where} failed: {str(exc) or type(exc).__name__}", retryable=True
        ) from exc
    except httpx.InvalidURL as exc:
        raise EgressDenied(f"invalid URL: {exc}") from exc
    except (httpx.HTTPError, httpx.StreamError) as exc:
        raise EgressError(f"request to {where} failed: {exc}", retryable=False) from exc


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.raw_host, a.port) == (b.scheme, b.raw_host, b.port)


def _next_request(
    client: httpx.Client, req: httpx.Request, response: httpx.Response
) -> httpx.Request:
    location = response.headers["location"]
    try:
        target = req.url.join(location)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise EgressDenied(f"redirect to an invalid URL: {exc}") from None
    target = _check_url_static(str(target))
    method = req.method
    if (response.status_code in (302, 303) and method != "HEAD") or (
        response.status_code == 301 and method == "POST"
    ):
        method = "GET"
    keep_body = method == req.method
    same_origin = _same_origin(target, req.url)
    headers = {
        name: value
        for name, value in req.headers.items()
        if name not in _HOP_HEADERS
        and (same_origin or name in _CROSS_ORIGIN_SAFE)
        and (keep_body or name != "content-type")
    }
    return client.build_request(
        method, target, headers=headers, content=req.content if keep_body else None
    )


def _read_capped(response: httpx.Response, limit: int, deadline: float) -> bytes:
    declared = response.headers.get("content-length", "")
    if response.request.method != "HEAD" and declared.isdigit() and int(declared) > limit:
        raise EgressError(
            f"response is too large ({declared} bytes, limit {limit})", retryable=False
        )
    chunks: list[bytes] = []
    total = 0
    for chunk in response.iter_bytes():
        total += len(chunk)
        if total > limit:
            raise EgressError(f"response is too large (over {limit} bytes)", retryable=False)
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise EgressError(
                f"reading the response of {response.url.host} timed out", retryable=True
            )
    return b"".join(chunks)


def request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    params: Any = None,
    json: Any = None,
    content: bytes | str | None = None,
    files: list[tuple[str, tuple[str | None, bytes, str | None]]] | None = None,
    timeout: float | None = None,
    max_bytes: int | None = None,
    follow_redirects: bool = True,
) -> EgressResponse:
    """Send one HTTP request through the SSRF-safe path and read the whole (capped) response.

    `timeout` is the read/write timeout (default SPARKOPS_OUTBOUND_READ_TIMEOUT); connecting
    is bounded by SPARKOPS_OUTBOUND_CONNECT_TIMEOUT (or `timeout` if smaller), and the whole
    exchange, redirects and body included, by connect + read timeout. Raises EgressDenied
    for a refused target (any hop) and EgressError for timeouts, connection failures, too
    many redirects, or a body over `max_bytes` (default SPARKOPS_OUTBOUND_MAX_BYTES).
    `files` sends a multipart/form-data body: (part name, (file name, bytes, content type)) each;
    a part with no file name (and type None) is a plain form field."""
    read_timeout = float(
        timeout if timeout is not None else settings.SPARKOPS_OUTBOUND_READ_TIMEOUT
    )
    connect_timeout = min(float(settings.SPARKOPS_OUTBOUND_CONNECT_TIMEOUT), read_timeout)
    limit = int(max_bytes if max_bytes is not None else settings.SPARKOPS_OUTBOUND_MAX_BYTES)
    max_redirects = int(settings.SPARKOPS_OUTBOUND_MAX_REDIRECTS)
    target = _check_url_static(url)
    started = time.monotonic()
    deadline = started + connect_timeout + read_timeout
    send_headers = {"accept-encoding": "identity"}
    send_headers.update({k.lower(): v for k, v in (headers or {}).items()})

    with _client(httpx.Timeout(read_timeout, connect=connect_timeout)) as client:
        with _mapped_errors(target):
            req = client.build_request(
                method.upper(),
                target,
                headers=send_headers,
                params=params,
                json=json,
                content=content,
                files=files,
            )
            req.read()  # a multipart body is a stream: read it so a redirect can send it again
        hops = 0
        while True:
            with _mapped_errors(req.url):
                response = client.send(req, stream=True, follow_redirects=False)
            try:
                is_redirect = (
                    response.status_code in _REDIRECT_CODES and "location" in response.headers
                )
                if follow_redirects and is_redirect:
                    hops += 1
                    if hops > max_redirects:
                        raise EgressError(f"too many redirects (over {max_redirects})")
                    if time.monotonic() > deadline:
                        raise EgressError(f"request to {req.url.host} timed out", retryable=True)
                    req = _next_request(client, req, response)
                    continue
                with _mapped_errors(req.url):
                    body = _read_capped(response, limit, deadline)
                return EgressResponse(
                    status_code=response.status_code,
                    headers={k.lower(): v for k, v in response.headers.items()},
                    content=body,
                    url=str(response.url),
                    elapsed_ms=(time.monotonic() - started) * 1000.0,
                )
            finally:
                response.close()
