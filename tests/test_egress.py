"""sparkops.egress: the one outbound HTTP path, SSRF-safe.

Every test runs with fake DNS (made-up names only; nothing reaches a real resolver) and a
recorder on `socket.socket.connect` that lets through loopback only: a refused target must
leave the recorder empty, and nothing can ever leave the machine."""

from __future__ import annotations

import ast
import datetime
import ipaddress
import json
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import httpcore
import httpx2
import pytest

from sparkops import egress
from sparkops.egress import (
    EgressDenied,
    EgressError,
    EgressResponse,
    check_url,
    request,
    sdk_async_http_client,
    sdk_http_client,
)
from sparkops.errors import SparkOpsError, exception_handler

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:4700:4700::1111"

_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex

# Made-up names; `FakeNet.dns` answers them (a list, or a callable for changing answers).
FAKE_DNS: dict[str, list[str]] = {
    "public.example": [PUBLIC_V4],
    "public6.example": [PUBLIC_V6],
    "internal.example": ["10.0.0.5"],
    "sub.internal.example": ["10.0.0.7"],
    "svc.corp.example": ["10.1.2.3"],
    "private172.example": ["172.16.5.4"],
    "private192.example": ["192.168.1.1"],
    "cgnat.example": ["100.64.0.1"],
    "meta.example": ["169.254.169.254"],
    "linklocal.example": ["169.254.1.1"],
    "loop.example": ["127.0.0.1"],
    "zero.example": ["0.0.0.0"],
    "multicast.example": ["224.0.0.251"],
    "v6loop.example": ["::1"],
    "v6zero.example": ["::"],
    "mapped.example": ["::ffff:127.0.0.1"],
    "mappedmeta.example": ["::ffff:169.254.169.254"],
    "ula.example": ["fd00::1"],
    "linklocal6.example": ["fe80::1"],
    "awsmeta6.example": ["fd00:ec2::254"],
    "nat64.example": ["64:ff9b::a00:1"],
    "sixtofour.example": ["2002:c0a8:101::1"],
    "mixed.example": [PUBLIC_V4, "10.0.0.1"],
    "mixed6.example": [PUBLIC_V6, "::1"],
    "metadata.google.internal": ["169.254.169.254"],
}


@dataclass
class FakeNet:
    dns: dict[str, Any] = field(default_factory=lambda: dict(FAKE_DNS))
    lookups: list[str] = field(default_factory=list)
    connects: list[Any] = field(default_factory=list)

    def getaddrinfo(self, host: Any, port: Any, family: int = 0, type: int = 0, *a: Any, **k: Any):
        name = host.decode() if isinstance(host, bytes) else host
        self.lookups.append(name)
        answer = self.dns.get(name)
        if callable(answer):
            answer = answer()
        if answer is None:
            try:
                ipaddress.ip_address(name)
            except ValueError:
                if name != "localhost":  # /etc/hosts; any other name would be real DNS
                    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
            return _real_getaddrinfo(host, port, family, type, *a, **k)
        results = []
        for address in answer:
            if ":" in address:
                results.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                results.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return results

    def lookups_of(self, name: str) -> int:
        return self.lookups.count(name)


def _loopback_only(net: FakeNet, address: Any) -> None:
    net.connects.append(address)
    host = address[0] if isinstance(address, tuple) else address
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ConnectionRefusedError(111, f"test network: no traffic to {address!r}")


@pytest.fixture(autouse=True)
def net(monkeypatch: pytest.MonkeyPatch, settings: Any) -> FakeNet:
    fake = FakeNet()

    def connect(sock: socket.socket, address: Any) -> None:
        _loopback_only(fake, address)
        return _real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        _loopback_only(fake, address)
        return _real_connect_ex(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    settings.SPARKOPS_OUTBOUND_ALLOW = []
    settings.SPARKOPS_OUTBOUND_CONNECT_TIMEOUT = 5.0
    settings.SPARKOPS_OUTBOUND_READ_TIMEOUT = 10.0
    settings.SPARKOPS_OUTBOUND_MAX_BYTES = 5 * 1024 * 1024
    settings.SPARKOPS_OUTBOUND_MAX_REDIRECTS = 5
    return fake


# --- A real local server on 127.0.0.1 --------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "Content-Length" not in (headers or {}) and body is not None:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _json(self, data: Any) -> None:
        body = json.dumps(data).encode()
        self._send(200, body, {"Content-Type": "application/json; charset=utf-8"})

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = parts.path
        if path == "/ok":
            self._json({"ok": True, "method": self.command})
        elif path == "/echo":
            self._json(
                {
                    "method": self.command,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body.decode(),
                }
            )
        elif path == "/redirect":
            self._send(int(query.get("code", "302")), b"", {"Location": query["to"]})
        elif path == "/loop":
            self._send(302, b"", {"Location": "/loop"})
        elif path == "/slow":
            self.server.release.wait(10)
            self._json({"slow": True})
        elif path == "/big":
            self._send(200, b"x" * int(query["n"]))
        elif path == "/stream":  # no Content-Length: the body runs until the connection closes
            self.send_response(200)
            self.end_headers()
            remaining = int(query["n"])
            while remaining > 0:
                chunk = min(remaining, 1024)
                self.wfile.write(b"y" * chunk)
                remaining -= chunk
        elif path.endswith("/models"):  # enough of the OpenAI and Anthropic list endpoints
            self._json(
                {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}
            )
        elif path == "/latin1":
            self._send(
                200, "café".encode("latin-1"), {"Content-Type": "text/plain; charset=latin-1"}
            )
        else:
            self._send(404, b"not found")

    do_GET = do_POST = do_PUT = do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    release: threading.Event

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hung up on purpose (size cap, timeout)


@dataclass
class LocalServer:
    port: int
    release: threading.Event

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.release = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield LocalServer(port=httpd.server_address[1], release=httpd.release)
    finally:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _self_signed(hostname: str) -> tuple[bytes, bytes]:
    """A throwaway certificate for `hostname` (its own CA), and its key, as PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@dataclass
class TLSServer:
    port: int
    ca_pem: str


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    cert_pem, key_pem = _self_signed("tls.example")
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert_pem)
    (folder / "key.pem").write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.release = threading.Event()
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield TLSServer(port=httpd.server_address[1], ca_pem=cert_pem.decode())
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_tls_verifies_the_url_hostname_on_the_pinned_address(
    net: FakeNet, settings: Any, monkeypatch: pytest.MonkeyPatch, tls_server: TLSServer
) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    trusted = ssl.create_default_context(cadata=tls_server.ca_pem)
    monkeypatch.setattr(egress, "_ssl_context", lambda: trusted)
    net.dns["tls.example"] = ["127.0.0.1"]
    net.dns["other.example"] = ["127.0.0.1"]
    # Dialled 127.0.0.1, yet SNI and certificate check used the URL's name.
    response = request("GET", f"https://tls.example:{tls_server.port}/ok")
    assert response.json() == {"ok": True, "method": "GET"}
    with sdk_http_client(timeout=5) as client:
        assert client.get(f"https://tls.example:{tls_server.port}/ok").status_code == 200
    for wrong_name in ("other.example", "127.0.0.1"):
        with pytest.raises(EgressError, match="certificate"):
            request("GET", f"https://{wrong_name}:{tls_server.port}/ok")
    assert {a[0] for a in net.connects} == {"127.0.0.1"}


# --- The SSRF matrix: refused by default, before any connect ---------------------------------

REFUSED: list[tuple[str, str]] = [
    # loopback, literal and in every numeric spelling getaddrinfo/inet_aton accepts
    ("http://127.0.0.1/", "loopback"),
    ("http://127.0.0.1:8080/admin", "loopback"),
    ("https://127.0.0.1/", "loopback"),
    ("http://127.255.255.254/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://2130706433/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://0X7F000001/", "loopback"),
    ("http://0x7f.1/", "loopback"),
    ("http://0x7f.0.0.1/", "loopback"),
    ("http://017700000001/", "loopback"),
    ("http://0177.1/", "loopback"),
    ("http://0177.0.0.1/", "invalid URL"),
    ("http://127.000.000.001/", "invalid URL"),
    ("http://127.0.0.1./", "loopback"),
    ("http://127\u30020\u30020\u30021/", "loopback"),
    ("http://localhost/", "loopback"),
    ("http://LOCALHOST.:8000/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://[0:0:0:0:0:0:0:1]:8080/", "loopback"),
    # unspecified / "this network"
    ("http://0/", "unspecified"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://0x0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    # IPv4-mapped and IPv4-compatible IPv6
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped address of 127.0.0.1"),
    ("http://[::ffff:7f00:1]/", "IPv4-mapped address of 127.0.0.1"),
    ("http://[0:0:0:0:0:ffff:7f00:1]/", "IPv4-mapped"),
    ("http://[::ffff:a9fe:a9fe]/", "IPv4-mapped address of 169.254.169.254"),
    ("http://[::ffff:10.0.0.1]/", "private"),
    ("http://[::127.0.0.1]/", "IPv4-compatible"),
    # IPv6 link-local, unique local, site-local, multicast, cloud metadata
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "link-local"),
    ("http://[fc00::1]/", "unique local"),
    ("http://[fd12:3456:789a::1]/", "unique local"),
    ("http://[fec0::1]/", "site-local"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "cloud metadata"),
    # NAT64 and 6to4 embedding an internal IPv4
    ("http://[64:ff9b::7f00:1]/", "NAT64 address of 127.0.0.1"),
    ("http://[64:ff9b::a9fe:a9fe]/", "NAT64 address of 169.254.169.254"),
    ("http://[2002:7f00:1::]/", "6to4 address of 127.0.0.1"),
    ("http://[2002:c0a8:101::1]/", "6to4 address of 192.168.1.1"),
    ("http://[2002:a00:1::1]/", "6to4 address of 10.0.0.1"),
    # RFC 1918, CGNAT, link-local, metadata, multicast, reserved, broadcast
    ("http://10.0.0.1/", "private"),
    ("http://10.255.255.255/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://172.31.255.254/", "private"),
    ("http://192.168.0.1/", "private"),
    ("http://192.168.255.255:8443/", "private"),
    ("http://100.64.0.1/", "CGNAT"),
    ("http://100.127.255.254/", "CGNAT"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://169.254.170.2/v2/credentials", "cloud metadata"),
    ("http://169.254.0.1/", "link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://239.255.255.250/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "broadcast"),
    ("http://198.18.0.1/", "benchmarking"),
    ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata"),
    ("http://METADATA.Google.Internal./computeMetadata/v1/", "cloud metadata"),
    ("http://metadata/computeMetadata/v1/", "cloud metadata"),
    # made-up hostnames resolving to each kind (fake DNS)
    ("http://internal.example/", r"address 10\.0\.0\.5 is private .*host internal.example"),
    ("http://private172.example/", "private"),
    ("http://private192.example/", "private"),
    ("http://cgnat.example/", "CGNAT"),
    ("http://meta.example/", "cloud metadata"),
    ("http://linklocal.example/", "link-local"),
    ("http://loop.example/", "loopback"),
    ("http://zero.example/", "unspecified"),
    ("http://multicast.example/", "multicast"),
    ("http://v6loop.example/", "loopback"),
    ("http://v6zero.example/", "unspecified"),
    ("http://mapped.example/", "IPv4-mapped"),
    ("http://mappedmeta.example/", "cloud metadata"),
    ("http://ula.example/", "unique local"),
    ("http://linklocal6.example/", "link-local"),
    ("http://awsmeta6.example/", "cloud metadata"),
    ("http://nat64.example/", "NAT64 address of 10.0.0.1"),
    ("http://sixtofour.example/", "6to4 address of 192.168.1.1"),
    # one public and one private record: ANY bad record refuses
    ("http://mixed.example/", r"address 10\.0\.0\.1 is private"),
    ("http://mixed6.example/", r"address ::1 is loopback"),
    # userinfo tricks
    ("http://a@127.0.0.1/", "credentials"),
    ("http://user:pass@10.0.0.1/", "credentials"),
    ("http://public.example@127.0.0.1/", "credentials"),
    (f"http://127.0.0.1:80@{PUBLIC_V4}/", "credentials"),
    (f"http://127.0.0.1%5C@{PUBLIC_V4}/", "credentials"),
    (f"http://127.0.0.1\\@{PUBLIC_V4}/", "credentials"),
    # schemes and malformed hosts
    ("file:///etc/passwd", "scheme 'file'"),
    ("gopher://127.0.0.1:70/_GET", "scheme 'gopher'"),
    ("ftp://127.0.0.1/", "scheme 'ftp'"),
    ("dict://127.0.0.1:11211/stats", "scheme 'dict'"),
    ("http:///127.0.0.1/", "no host"),
    ("http://%31%32%37.0.0.1/", "not a valid hostname"),
    ("http://1.2.3.4.5/", "not a valid hostname"),
    ("http://0x100000000/", "not a valid numeric address"),
    ("http://127.0.0.1 /", "whitespace"),
]


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_request_refuses_before_any_connect(net: FakeNet, url: str, why: str) -> None:
    with pytest.raises(EgressDenied, match=why):
        request("GET", url)
    assert net.connects == []


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_check_url_refuses(net: FakeNet, url: str, why: str) -> None:
    with pytest.raises(EgressDenied, match=why):
        check_url(url)
    assert net.connects == []


def test_the_matrix_is_wide() -> None:
    assert len(REFUSED) >= 40


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_sdk_client_refuses_before_any_connect(net: FakeNet, url: str, why: str) -> None:
    # httpx itself rejects the URLs it cannot parse, before any hook or connect.
    with sdk_http_client(timeout=5) as client, pytest.raises((EgressDenied, httpx2.InvalidURL)):
        client.get(url)
    assert net.connects == []


def _async_get(url: str, *, follow_redirects: bool = False, max_bytes: int | None = None) -> Any:
    async def get() -> Any:
        async with sdk_async_http_client(timeout=5, max_bytes=max_bytes) as client:
            response = await client.get(url, follow_redirects=follow_redirects)
            return response.status_code, await response.aread()

    return anyio.run(get)


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_async_sdk_client_refuses_before_any_connect(net: FakeNet, url: str, why: str) -> None:
    with pytest.raises((EgressDenied, httpx2.InvalidURL)):
        _async_get(url)
    assert net.connects == []


@pytest.mark.parametrize("transport", ["streamable_http", "sse"])
@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_mcp_servers_refused_before_any_connect(
    net: FakeNet, url: str, why: str, transport: str
) -> None:
    """The MCP client (tools.mcp_client, the `mcp` SDK) dials only through the egress client:
    every refused target fails, clearly and not retryable, with nothing connected."""
    from projects.secrets import SecretBag
    from tools import mcp_client
    from tools.models import McpServer

    server = McpServer(name="m", url=url, transport=transport)
    with pytest.raises(mcp_client.McpFailure) as excinfo:
        mcp_client.list_tools(server, SecretBag(None), 5)
    assert net.connects == []
    assert excinfo.value.retryable is False, excinfo.value.message


# --- The allow-list --------------------------------------------------------------------------

ALLOWED_BY_LIST: list[tuple[str, list[str]]] = [
    ("http://10.0.0.1/", ["10.0.0.0/8"]),
    ("http://172.16.0.1/", ["172.16.0.1"]),
    ("http://192.168.1.10:8080/x", ["192.168.0.0/16"]),
    ("http://100.64.0.1/", ["100.64.0.0/10"]),
    ("http://169.254.169.254/latest/", ["169.254.169.254/32"]),
    ("http://[fd00:ec2::254]/", ["fd00:ec2::254"]),
    ("http://[::1]/", ["::1"]),
    ("http://[fc00::1]/", ["[fc00::/7]"]),
    ("http://[::ffff:127.0.0.1]/", ["127.0.0.1"]),
    ("http://127.0.0.1/", [" 127.0.0.1 "]),
    ("http://0x7f000001/", ["127.0.0.0/8"]),
    ("http://localhost/", ["localhost"]),
    ("http://internal.example/", ["internal.example"]),
    ("http://Internal.EXAMPLE./", ["INTERNAL.example"]),
    ("http://svc.corp.example/", ["*.corp.example"]),
    ("http://mixed.example/", ["10.0.0.1"]),
    ("http://metadata.google.internal/", ["metadata.google.internal"]),
]


@pytest.mark.parametrize(("url", "allow"), ALLOWED_BY_LIST)
def test_allow_list_permits_internal_targets(
    net: FakeNet, settings: Any, url: str, allow: list[str]
) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = allow
    check_url(url)
    assert net.connects == []


STILL_REFUSED: list[tuple[str, list[str]]] = [
    ("http://127.0.0.2/", ["127.0.0.1"]),
    ("http://10.0.0.2/", ["10.0.0.1"]),
    ("http://[::1]/", ["127.0.0.1"]),
    ("http://mixed.example/", [PUBLIC_V4]),
    ("http://internal.example/", ["other.example"]),
    ("http://sub.internal.example/", ["internal.example"]),
    ("http://metadata.google.internal/", ["169.254.169.254"]),
    ("http://127.0.0.1/", ["localhost"]),
]


@pytest.mark.parametrize(("url", "allow"), STILL_REFUSED)
def test_allow_list_is_exact(net: FakeNet, settings: Any, url: str, allow: list[str]) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = allow
    with pytest.raises(EgressDenied):
        request("GET", url)
    assert net.connects == []


LOCAL_ALLOWED: list[tuple[str, list[str]]] = [
    ("127.0.0.1", ["127.0.0.1"]),
    ("127.1", ["127.0.0.0/8"]),
    ("2130706433", ["127.0.0.1"]),
    ("0x7f000001", ["127.0.0.1/32"]),
    ("017700000001", ["127.0.0.1"]),
    ("loop.example", ["loop.example"]),
    ("loop.example", ["127.0.0.1"]),
]


@pytest.mark.parametrize(("host", "allow"), LOCAL_ALLOWED)
def test_allow_listed_loopback_request_succeeds(
    net: FakeNet, settings: Any, server: LocalServer, host: str, allow: list[str]
) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = allow
    response = request("GET", server.url("/ok", host=host))
    assert response.status_code == 200
    assert response.json() == {"ok": True, "method": "GET"}
    assert net.connects == [("127.0.0.1", server.port)]


@pytest.mark.parametrize("host", ["localhost", "LocalHost"])
def test_allow_listed_localhost_request_succeeds(
    net: FakeNet, settings: Any, server: LocalServer, host: str
) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["LOCALHOST"]
    response = request("GET", server.url("/ok", host=host))
    assert response.status_code == 200
    assert net.connects  # whatever /etc/hosts lists first, only loopback was dialled
    assert all(ipaddress.ip_address(a[0]).is_loopback for a in net.connects)
    assert net.connects[-1] == ("127.0.0.1", server.port)


# --- DNS rebinding: one resolution, and the connect goes to the checked address --------------


def _answers(*answers: list[str]) -> Callable[[], list[str]]:
    queue = list(answers)
    return lambda: queue.pop(0) if len(queue) > 1 else queue[0]


def test_connect_uses_the_single_checked_resolution(net: FakeNet, server: LocalServer) -> None:
    # First answer public (checked, pinned); any later lookup would say loopback.
    net.dns["rebind.example"] = _answers([PUBLIC_V4], ["127.0.0.1"])
    with pytest.raises(EgressError) as excinfo:
        request("GET", server.url("/ok", host="rebind.example"))
    assert excinfo.value.retryable is True
    assert net.lookups_of("rebind.example") == 1
    # The test network refused the public address: the connect went where the check looked.
    assert net.connects == [(PUBLIC_V4, server.port)]


def test_answer_changed_between_check_and_connect_is_caught(
    net: FakeNet, server: LocalServer
) -> None:
    net.dns["rebind.example"] = _answers([PUBLIC_V4], ["127.0.0.1"])
    check_url(server.url("/ok", host="rebind.example"))  # looks public now
    with pytest.raises(EgressDenied, match=r"address 127\.0\.0\.1 is loopback"):
        request("GET", server.url("/ok", host="rebind.example"))
    assert net.lookups_of("rebind.example") == 2
    assert net.connects == []


def test_rebinding_after_an_allowed_answer_does_not_move_the_connection(
    net: FakeNet, settings: Any, server: LocalServer
) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    net.dns["rebind.example"] = _answers(["127.0.0.1"], ["10.0.0.1"])
    response = request("GET", server.url("/ok", host="rebind.example"))
    assert response.status_code == 200
    assert net.lookups_of("rebind.example") == 1
    assert net.connects == [("127.0.0.1", server.port)]


def test_sdk_client_pins_too(net: FakeNet, settings: Any, server: LocalServer) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    net.dns["rebind.example"] = _answers(["127.0.0.1"], ["10.0.0.1"])
    with sdk_http_client(timeout=5) as client:
        response = client.get(server.url("/ok", host="rebind.example"))
    assert response.status_code == 200
    assert net.lookups_of("rebind.example") == 1
    assert net.connects == [("127.0.0.1", server.port)]


def test_backend_dials_the_checked_literal(
    net: FakeNet, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.SPARKOPS_OUTBOUND_CONNECT_TIMEOUT = 1.5
    settings.SPARKOPS_OUTBOUND_ALLOW = ["loop.example"]
    calls: list[dict[str, Any]] = []

    def spy(self: Any, host: str, port: int, **kwargs: Any) -> Any:
        calls.append({"host": host, "port": port, **kwargs})
        raise httpcore.ConnectError("spy")

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", spy)
    with pytest.raises(EgressError):
        request("GET", "http://loop.example:8123/ok")
    assert calls[0]["host"] == "127.0.0.1"
    assert calls[0]["port"] == 8123
    assert 1.0 < calls[0]["timeout"] <= 1.5
    calls.clear()
    with pytest.raises(EgressError):
        request("GET", "http://loop.example:8123/ok", timeout=0.5)
    assert calls[0]["timeout"] <= 0.5


# --- Redirects -------------------------------------------------------------------------------

REDIRECT_TARGETS: list[tuple[str, str]] = [
    ("http://10.0.0.1/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:a9fe:a9fe]/", "IPv4-mapped"),
    ("http://internal.example/", "private"),
    ("http://metadata.google.internal/", "cloud metadata"),
    ("http://127.0.0.2:{port}/ok", "loopback"),
    ("http://a@127.0.0.1:{port}/ok", "credentials"),
    ("file:///etc/passwd", "scheme 'file'"),
    ("gopher://127.0.0.1:70/_GET", "scheme 'gopher'"),
    (f"ftp://{PUBLIC_V4}/", "scheme 'ftp'"),
]


def _redirect(server: LocalServer, to: str, code: int = 302) -> str:
    return server.url("/redirect") + "?" + urlencode({"to": to, "code": code})


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
@pytest.mark.parametrize(("target", "why"), REDIRECT_TARGETS)
def test_redirect_hops_are_rechecked(
    net: FakeNet, settings: Any, server: LocalServer, code: int, target: str, why: str
) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    url = _redirect(server, target.format(port=server.port), code)
    with pytest.raises(EgressDenied, match=why):
        request("GET", url)
    assert net.connects == [("127.0.0.1", server.port)]  # the first hop only


@pytest.mark.parametrize(("target", "why"), REDIRECT_TARGETS)
def test_sdk_client_rechecks_followed_redirects(
    net: FakeNet, settings: Any, server: LocalServer, target: str, why: str
) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    url = _redirect(server, target.format(port=server.port))
    with sdk_http_client(timeout=5) as client, pytest.raises(EgressDenied, match=why):
        client.get(url, follow_redirects=True)
    assert net.connects == [("127.0.0.1", server.port)]


@pytest.mark.parametrize(("target", "why"), REDIRECT_TARGETS)
def test_async_sdk_client_rechecks_followed_redirects(
    net: FakeNet, settings: Any, server: LocalServer, target: str, why: str
) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    url = _redirect(server, target.format(port=server.port))
    with pytest.raises(EgressDenied, match=why):
        _async_get(url, follow_redirects=True)
    assert net.connects == [("127.0.0.1", server.port)]


def test_async_sdk_client_pins_and_caps(net: FakeNet, settings: Any, server: LocalServer) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    net.dns["rebind.example"] = _answers(["127.0.0.1"], ["10.0.0.1"])
    assert _async_get(server.url("/ok", host="rebind.example"))[0] == 200
    assert net.lookups_of("rebind.example") == 1
    assert net.connects == [("127.0.0.1", server.port)]
    assert _async_get(server.url("/big?n=1000"), max_bytes=1000) == (200, b"x" * 1000)
    for path in ("/big?n=2000", "/stream?n=65536"):
        with pytest.raises(EgressError, match="too large") as excinfo:
            _async_get(server.url(path), max_bytes=1000)
        assert excinfo.value.retryable is False


def test_allowed_redirect_is_followed(settings: Any, server: LocalServer) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    response = request("GET", _redirect(server, "/ok"))
    assert response.status_code == 200
    assert response.url == server.url("/ok")


def test_303_turns_post_into_get_and_307_keeps_post(settings: Any, server: LocalServer) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    after_303 = request("POST", _redirect(server, "/echo", 303), json={"a": 1}).json()
    assert after_303["method"] == "GET"
    assert after_303["body"] == ""
    after_307 = request("POST", _redirect(server, "/echo", 307), json={"a": 1}).json()
    assert after_307["method"] == "POST"
    assert json.loads(after_307["body"]) == {"a": 1}


def test_a_multipart_body_is_sent_again_after_a_307(settings: Any, server: LocalServer) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    parts = [("title", (None, b"T", None)), ("doc", ("a.txt", b"file bytes", "text/plain"))]
    echoed = request("POST", _redirect(server, "/echo", 307), files=parts).json()
    assert echoed["method"] == "POST"
    assert echoed["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    body = echoed["body"]
    assert 'name="title"\r\n\r\nT\r\n' in body
    assert 'name="doc"; filename="a.txt"\r\nContent-Type: text/plain\r\n\r\nfile bytes' in body


def test_cross_origin_redirect_drops_credentials(settings: Any, server: LocalServer) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1", "localhost"]
    headers = {"Authorization": "Bearer s3cret", "X-Api-Key": "k3y", "Accept": "text/plain"}
    same = request("GET", _redirect(server, "/echo"), headers=headers).json()["headers"]
    assert same["authorization"] == "Bearer s3cret"
    assert same["x-api-key"] == "k3y"
    other = server.url("/echo", host="localhost")
    cross = request("GET", _redirect(server, other), headers=headers).json()["headers"]
    assert "authorization" not in cross
    assert "x-api-key" not in cross
    assert cross["accept"] == "text/plain"
    assert cross["host"] == f"localhost:{server.port}"


def test_malformed_redirect_is_refused(net: FakeNet, settings: Any, server: LocalServer):
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    with pytest.raises(EgressDenied, match="invalid URL"):
        request("GET", _redirect(server, "http://[::1"))
    assert net.connects == [("127.0.0.1", server.port)]


def test_too_many_redirects(settings: Any, server: LocalServer) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    settings.SPARKOPS_OUTBOUND_MAX_REDIRECTS = 3
    with pytest.raises(EgressError, match="too many redirects") as excinfo:
        request("GET", server.url("/loop"))
    assert excinfo.value.retryable is False


def test_redirects_can_be_left_unfollowed(net: FakeNet, settings: Any, server: LocalServer):
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    response = request("GET", _redirect(server, "http://10.0.0.1/"), follow_redirects=False)
    assert response.status_code == 302
    assert response.headers["location"] == "http://10.0.0.1/"
    assert net.connects == [("127.0.0.1", server.port)]


# --- Timeouts, connection errors, size cap ---------------------------------------------------


def test_read_timeout_is_retryable(settings: Any, server: LocalServer) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    try:
        with pytest.raises(EgressError, match="timed out") as excinfo:
            request("GET", server.url("/slow"), timeout=0.3)
    finally:
        server.release.set()
    assert excinfo.value.retryable is True
    assert excinfo.value.status_code == 502


def test_connection_refused_is_retryable(net: FakeNet, settings: Any) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    port = _free_port()
    with pytest.raises(EgressError, match=r"connection to 127\.0\.0\.1 failed") as excinfo:
        request("GET", f"http://127.0.0.1:{port}/")
    assert excinfo.value.retryable is True
    assert net.connects == [("127.0.0.1", port)]


def test_unresolvable_host(net: FakeNet) -> None:
    with pytest.raises(EgressError, match="could not be resolved") as excinfo:
        request("GET", "http://nowhere.example/")
    assert excinfo.value.retryable is True
    with pytest.raises(EgressDenied, match="could not be resolved"):
        check_url("http://nowhere.example/")
    assert net.connects == []


@pytest.mark.parametrize("path", ["/big?n=2000", "/stream?n=65536"])
def test_size_cap(settings: Any, server: LocalServer, path: str) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    with pytest.raises(EgressError, match="too large") as excinfo:
        request("GET", server.url(path), max_bytes=1000)
    assert excinfo.value.retryable is False


def test_size_cap_defaults_to_the_setting(settings: Any, server: LocalServer) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    settings.SPARKOPS_OUTBOUND_MAX_BYTES = 500
    assert request("GET", server.url("/big?n=500")).content == b"x" * 500
    assert len(request("GET", server.url("/stream?n=500")).content) == 500
    with pytest.raises(EgressError, match="too large"):
        request("GET", server.url("/big?n=501"))
    with pytest.raises(EgressError, match="too large"):
        request("GET", server.url("/stream?n=501"))


# --- check_url and the response/exception shapes ---------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"https://{PUBLIC_V4}/",
        f"https://{PUBLIC_V4}:8443/v1/chat?x=1",
        f"http://[{PUBLIC_V6}]/",
        "https://public.example/path",
        "https://PUBLIC6.example./",
        "http://[64:ff9b::808:808]/",  # NAT64 of a public address
        "http://[::ffff:8.8.8.8]/",
    ],
)
def test_public_targets_pass_check_url(net: FakeNet, url: str) -> None:
    check_url(url)
    assert net.connects == []


@pytest.mark.parametrize(
    "url",
    [
        f"ftp://{PUBLIC_V4}/",
        f"ws://{PUBLIC_V4}/",
        "javascript:alert(1)",
        "data:text/plain,hi",
        "mailto:someone@public.example",
        f"//{PUBLIC_V4}/",
        "public.example/path",
    ],
)
def test_non_http_schemes_are_refused(net: FakeNet, url: str) -> None:
    with pytest.raises(EgressDenied, match="scheme"):
        check_url(url)
    with pytest.raises(EgressDenied, match="scheme"):
        request("GET", url)
    assert net.connects == []


def test_error_shapes() -> None:
    denied = EgressDenied("address 127.0.0.1 is loopback")
    assert isinstance(denied, SparkOpsError)
    assert (denied.status_code, denied.error_type) == (400, "egress_denied")
    failed = EgressError("read timed out", retryable=True)
    assert isinstance(failed, SparkOpsError)
    assert (failed.status_code, failed.error_type, failed.retryable) == (502, "egress_error", True)
    assert EgressError("too large").retryable is False
    body = exception_handler(denied, {})
    assert body.status_code == 400
    assert body.data == {"type": "egress_denied", "detail": "address 127.0.0.1 is loopback"}


def test_response_shape(settings: Any, server: LocalServer) -> None:
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    response = request(
        "post",
        server.url("/echo"),
        headers={"X-Trace": "t1"},
        params={"q": "1"},
        content=b"raw",
    )
    assert isinstance(response, EgressResponse)
    assert response.status_code == 200
    assert response.url == server.url("/echo?q=1")
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert all(name == name.lower() for name in response.headers)
    assert response.elapsed_ms > 0
    echoed = response.json()
    assert echoed["method"] == "POST"
    assert echoed["body"] == "raw"
    assert echoed["headers"]["x-trace"] == "t1"
    assert echoed["headers"]["accept-encoding"] == "identity"
    assert json.loads(response.text()) == echoed
    assert request("GET", server.url("/latin1")).text() == "café"


def test_sdk_client_shape_and_env_proxies_ignored(
    net: FakeNet, settings: Any, server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://10.9.9.9:3128")
    monkeypatch.setenv("NO_PROXY", "")
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    client = sdk_http_client(timeout=7)
    with client:
        assert isinstance(client, httpx2.Client)
        assert client.trust_env is False
        assert client.timeout.read == 7
        assert client.follow_redirects is False
        response = client.get(server.url("/ok"))
        assert response.json() == {"ok": True, "method": "GET"}
        with pytest.raises(EgressDenied, match="scheme"):  # httpx makes it a relative URL
            client.get("file:///etc/passwd")
    assert net.connects == [("127.0.0.1", server.port)]
    with pytest.raises(EgressDenied):
        request("GET", "http://10.9.9.9:3128/")


def test_sdks_accept_the_client(net: FakeNet, settings: Any, server: LocalServer) -> None:
    import anthropic
    import openai

    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    local = server.url("/v1")
    gpt = openai.OpenAI(
        api_key="k", base_url=local, max_retries=0, http_client=sdk_http_client(timeout=5)
    )
    claude = anthropic.Anthropic(
        api_key="k",
        base_url=server.url(""),
        max_retries=0,
        http_client=sdk_http_client(timeout=5),
    )
    assert list(gpt.models.list()) == []
    assert list(claude.models.list()) == []
    assert {a[0] for a in net.connects} == {"127.0.0.1"}
    net.connects.clear()

    denied = [
        openai.OpenAI(
            api_key="k",
            base_url="http://169.254.169.254/v1",
            max_retries=0,
            http_client=sdk_http_client(timeout=5),
        ).models.list,
        anthropic.Anthropic(
            api_key="k",
            base_url="http://10.0.0.1",
            max_retries=0,
            http_client=sdk_http_client(timeout=5),
        ).models.list,
    ]
    for call in denied:
        with pytest.raises(Exception) as excinfo:  # the SDK may wrap it
            call()
        error = excinfo.value
        assert isinstance(error, EgressDenied) or isinstance(error.__cause__, EgressDenied)
    assert net.connects == []


# --- Guard: nothing but sparkops/egress.py talks HTTP ----------------------------------------

ROOT = Path(__file__).resolve().parents[1]
BANNED_MODULES = (
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore2",
    "requests",
    "urllib.request",
    "urllib3",
    "http.client",
    "aiohttp",
    "pycurl",
)
SDK_CONSTRUCTORS = {
    "OpenAI",
    "AsyncOpenAI",
    "AzureOpenAI",
    "AsyncAzureOpenAI",
    "Anthropic",
    "AsyncAnthropic",
}
# sparkops_cli is the command-line client, on the user's machine: its only HTTP is to the
# Spark-Ops server it is pointed at, and it may not import the server (.importlinter).
SKIP_DIRS = {".venv", "venv", ".git", "node_modules", "__pycache__", "tests", "sparkops_cli"}
ALLOWED_FILE = ROOT / "sparkops" / "egress.py"


def _banned(name: str) -> bool:
    return any(name == mod or name.startswith(mod + ".") for mod in BANNED_MODULES)


def _dotted(node: ast.AST) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def egress_violations(source: str) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if _banned(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if _banned(node.module):
                found.append(f"from {node.module} import ...")
            found += [
                f"from {node.module} import {a.name}"
                for a in node.names
                if _banned(f"{node.module}.{a.name}")
            ]
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            # `import urllib` then `urllib.request.urlopen(...)`; single names (httpx...) are
            # caught at import, so a local variable called `requests` is not flagged.
            if dotted and dotted.startswith(("urllib.request", "http.client")):
                found.append(f"uses {dotted}")
        elif isinstance(node, ast.Call):
            func = _dotted(node.func) or ""
            if func in ("__import__", "importlib.import_module", "import_module"):
                arg = node.args[0] if node.args else None
                if (
                    isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)
                    and _banned(arg.value)
                ):
                    found.append(f"{func}({arg.value!r})")
            if func.rsplit(".", 1)[-1] in SDK_CONSTRUCTORS and not any(
                kw.arg == "http_client" for kw in node.keywords
            ):
                found.append(f"{func}() without http_client=sdk_http_client(...)")
    return found


def _project_files() -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
        for filename in filenames:
            path = Path(dirpath) / filename
            if filename.endswith(".py") and filename != "conftest.py" and path != ALLOWED_FILE:
                yield path


def test_only_egress_talks_http() -> None:
    offenders = {}
    files = list(_project_files())
    assert any(p.parts[-2:] == ("sparkops", "settings.py") for p in files)
    for path in files:
        found = egress_violations(path.read_text(encoding="utf-8"))
        if found:
            offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}, "outbound HTTP must go through sparkops.egress"


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        ("import httpx", True),
        ("import requests as r", True),
        ("import urllib.request", True),
        ("from urllib import request", True),
        ("from urllib.request import urlopen", True),
        ("import urllib\nurllib.request.urlopen('x')", True),
        ("import http.client", True),
        ("from http import client", True),
        ("import urllib3", True),
        ("import aiohttp", True),
        ("import httpcore", True),
        ("import httpx2", True),
        ("from httpcore2 import ConnectionPool", True),
        ("__import__('requests')", True),
        ("import importlib\nimportlib.import_module('httpx')", True),
        ("import openai\nopenai.OpenAI(api_key='k')", True),
        ("from anthropic import Anthropic\nAnthropic()", True),
        ("import urllib.parse\nurllib.parse.urlsplit('x')", False),
        ("from http import HTTPStatus", False),
        ("requests = Run.objects.all()\nrequests.count()", False),
        ("import openai\nopenai.OpenAI(api_key='k', http_client=c)", False),
        ("from sparkops.egress import request", False),
    ],
)
def test_guard_detects(source: str, bad: bool) -> None:
    assert bool(egress_violations(source)) is bad


def test_module_exports() -> None:
    assert set(egress.__all__) == {
        "EgressDenied",
        "EgressError",
        "EgressResponse",
        "check_url",
        "request",
        "sdk_async_http_client",
        "sdk_http_client",
        "static_url_problem",
    }
