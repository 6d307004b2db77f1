"""A real HTTP server on 127.0.0.1 (stdlib ThreadingHTTPServer, free port) for HTTP tool tests.

Every request is recorded (method, path, query, lower-cased headers, raw and JSON body). By
default it echoes the request back as JSON; `script(path, *responses)` queues answers for a
path (status, body, headers), used in order, then the echo again. `/hang` waits until the
server stops (for timeouts), without sleeping."""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _unquote(text: str) -> str:
    raw = text.replace("+", " ").encode()
    return re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), raw).decode()


def parse_query(query: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for pair in filter(None, query.split("&")):
        name, _, value = pair.partition("=")
        found[_unquote(name)].append(_unquote(value))
    return dict(found)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    json: Any = None


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=dict)  # JSON-able, or str/bytes sent as text/plain
    headers: dict[str, str] = field(default_factory=dict)


class ToolServer:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ToolServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None and self._thread is not None
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def script(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts[path].extend(replies)

    def calls(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def _next(self, recorded: Recorded) -> Reply | None:
        with self._lock:
            self.requests.append(recorded)
            queue = self._scripts.get(recorded.path)
            return queue.popleft() if queue else None


def _handler(owner: ToolServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            path, _, query = self.path.partition("?")
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = None
            recorded = Recorded(
                method=self.command,
                path=path,
                query=parse_query(query),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                json=parsed,
            )
            reply = owner._next(recorded)
            if path == "/hang" and reply is None:
                owner._stopping.wait(10)
                return
            if reply is None:
                reply = Reply(
                    body={
                        "method": recorded.method,
                        "path": path,
                        "query": recorded.query,
                        "headers": recorded.headers,
                        "json": parsed,
                    }
                )
            self._send(reply)

        def _send(self, reply: Reply) -> None:
            if isinstance(reply.body, bytes | str):
                payload = reply.body.encode() if isinstance(reply.body, str) else reply.body
                content_type = "text/plain; charset=utf-8"
            else:
                payload = json.dumps(reply.body).encode()
                content_type = "application/json"
            self.send_response(reply.status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    return Handler
