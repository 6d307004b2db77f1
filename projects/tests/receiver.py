"""A webhook receiver on 127.0.0.1 for tests: answers the statuses it is told to (then 200),
records every request with its raw body, so signatures can be checked byte for byte."""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-cased names
    raw: bytes

    def json(self) -> Any:
        return json.loads(self.raw)


class Receiver:
    def __init__(self, *statuses: int, delay: float = 0.0) -> None:
        self.statuses: deque[int] = deque(statuses)
        self.delay = delay
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.lock:
                    outer.requests.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
                    )
                    status = outer.statuses.popleft() if outer.statuses else 200
                if outer.delay:
                    outer._stop.wait(outer.delay)
                payload = json.dumps({"status": status}).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/spark"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
