"""A real HTTP server on 127.0.0.1 that speaks enough of the OpenAI chat completions and
Anthropic messages APIs for the official SDKs to talk to it.

    with FakeLLMServer() as server:
        server.enqueue("openai", {"tool_calls": [{"name": "add", "arguments": {"a": 1}}]})
        server.enqueue("openai", {"content": "3"})
        ...  # point an SDK at server.openai_base_url
        server.requests[-1].body["messages"]

A queued response for `kind` ("openai" or "anthropic") is one of:

- a reply: `{"content": "..."}` and/or `{"tool_calls": [{"name": ..., "arguments": {...}}]}`
  (`arguments` may be a string, e.g. invalid JSON; `id` is optional), optionally with
  `input_tokens`, `output_tokens`, `model` and `finish_reason`;
- an error: `{"status": 401}` (optionally `"message"`, `"headers"`), answered with the error
  body the SDK of that kind parses into its matching exception class;
- any of the above with `"delay": seconds` to answer late (and provoke client timeouts).

A request with `"stream": true` gets the reply as Server-Sent Events the way each API streams
it (OpenAI chat completion chunks, with the usage chunk when `stream_options.include_usage`;
Anthropic's message_start / content_block_* / message_delta / message_stop), the text cut in
words and tool arguments in pieces, `"chunk_delay"` seconds (or `FakeLLMServer(chunk_delay=…)`)
between chunks. `server.chunk_times[i]` is the `time.time()` at which chunk i of the last
streamed reply left the server. A streamed reply with `"hold_after": n` stops after its n-th
chunk while `server.hold` is cleared, until the test sets it: the answer is then known to be
half-sent.

With an empty queue the server echoes the last user message, after `FakeLLMServer(delay=…)`
seconds. Every request is recorded in `server.requests` (method, path, lower-cased headers,
parsed JSON body); `server.peak_in_flight` is the most chat requests it held at once (calls
made concurrently overlap here, calls made one after another do not), and while
`server.gate` is cleared every chat request waits for it to be set.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KINDS = ("openai", "anthropic")

OPENAI_ERRORS = {
    400: ("invalid_request_error", "Invalid request.", None),
    401: ("invalid_request_error", "Incorrect API key provided.", "invalid_api_key"),
    403: ("invalid_request_error", "You are not allowed to use this model.", None),
    404: ("invalid_request_error", "The model does not exist.", "model_not_found"),
    429: ("requests", "Rate limit reached for requests.", "rate_limit_exceeded"),
    500: ("server_error", "The server had an error while processing your request.", None),
    503: ("server_error", "The engine is currently overloaded.", None),
}
ANTHROPIC_ERRORS = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "model: not found"),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "Internal server error."),
    529: ("overloaded_error", "Overloaded."),
}


@dataclass
class RecordedRequest:
    kind: str  # "openai", "anthropic" or "other"
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None
    received_at: float = field(default_factory=time.monotonic)  # when it arrived


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Hundreds of clients connect at once in the in-flight tests and bench/inflight.py; the
    # default backlog of 5 would drop their SYNs and delay them by a retransmit (1 s and more).
    request_queue_size = 2048


class FakeLLMServer:
    def __init__(
        self, host: str = "127.0.0.1", *, delay: float = 0.0, chunk_delay: float = 0.0
    ) -> None:
        self.host = host
        self.delay = delay
        self.chunk_delay = chunk_delay
        self.chunk_times: list[float] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        # Cleared, every chat request waits here until it is set again (or the server stops):
        # a test holds calls open to see how many a worker keeps in flight at once.
        self.gate = threading.Event()
        self.gate.set()
        # Cleared, a streamed reply with `hold_after` waits here midway (see the docstring).
        self.hold = threading.Event()
        self.hold.set()
        self.requests: list[RecordedRequest] = []
        self._queues: dict[str, deque[dict[str, Any]]] = {kind: deque() for kind in KINDS}
        self._lock = threading.Lock()
        # Delayed answers wait on this, so stop() releases them at once.
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeLLMServer:
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((self.host, 0), _handler_for(self))
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="fake-llm", kwargs={"poll_interval": 0.05}
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self.gate.set()
        self.hold.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeLLMServer is not started.")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        # The Anthropic SDK appends /v1/messages itself.
        return self.url

    base_url = openai_base_url

    # -- scripting --------------------------------------------------------------------------

    def enqueue(self, kind: str, response: dict[str, Any]) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        with self._lock:
            self._queues[kind].append(dict(response))

    def reset(self) -> None:
        with self._lock:
            for queue in self._queues.values():
                queue.clear()
            self.requests.clear()
            self.peak_in_flight = self.in_flight

    def requests_for(self, kind: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.kind == kind]

    def _entered(self, change: int) -> None:
        with self._lock:
            self.in_flight += change
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def _record(self, request: RecordedRequest) -> dict[str, Any] | None:
        with self._lock:
            self.requests.append(request)
            queue = self._queues.get(request.kind)
            return queue.popleft() if queue else None


# -- response bodies --------------------------------------------------------------------------


def _text(content: Any) -> str:
    """The text of a message's content, whether a string or a list of parts/blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        # An Anthropic user turn holding only tool results has no text: keep looking.
        text = _text(content)
        if text or isinstance(content, str):
            return text
    return ""


def _estimate(value: Any) -> int:
    return len(json.dumps(value)) // 4 + 1


def _arguments_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments or {})


def _arguments_object(arguments: Any) -> Any:
    if not isinstance(arguments, str):
        return arguments or {}
    try:
        return json.loads(arguments)
    except ValueError:
        return {"_raw": arguments}


def openai_completion(body: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    content = spec.get("content")
    calls = spec.get("tool_calls") or []
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if calls:
        message["tool_calls"] = [
            {
                "id": call.get("id") or f"call_{uuid.uuid4().hex[:12]}",
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": _arguments_text(call.get("arguments")),
                },
            }
            for call in calls
        ]
    prompt_tokens = spec.get("input_tokens", _estimate(body.get("messages")))
    completion_tokens = spec.get("output_tokens", _estimate([content, calls]))
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": spec.get("model", body.get("model", "fake-model")),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": spec.get("finish_reason", "tool_calls" if calls else "stop"),
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def anthropic_message(body: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    content = spec.get("content")
    calls = spec.get("tool_calls") or []
    blocks: list[dict[str, Any]] = []
    if content is not None:
        blocks.append({"type": "text", "text": content})
    blocks.extend(
        {
            "type": "tool_use",
            "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:12]}",
            "name": call["name"],
            "input": _arguments_object(call.get("arguments")),
        }
        for call in calls
    )
    return {
        "id": f"msg_{uuid.uuid4().hex[:12]}",
        "type": "message",
        "role": "assistant",
        "model": spec.get("model", body.get("model", "fake-model")),
        "content": blocks,
        "stop_reason": spec.get("finish_reason", "tool_use" if calls else "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": spec.get(
                "input_tokens", _estimate([body.get("system"), body.get("messages")])
            ),
            "output_tokens": spec.get("output_tokens", _estimate([content, calls])),
        },
    }


def _pieces(text: str) -> list[str]:
    """`text` cut after each space: the words a model would stream, joined back exactly."""
    pieces: list[str] = []
    for word in text.split(" "):
        pieces.append(word + " ")
    pieces[-1] = pieces[-1][:-1]
    return [piece for piece in pieces if piece]


def openai_chunks(body: dict[str, Any], completion: dict[str, Any]) -> list[tuple[str | None, Any]]:
    """`completion` as the chat.completion.chunk events OpenAI streams."""
    choice = completion["choices"][0]
    message = choice["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> tuple[str | None, Any]:
        return None, {
            "id": completion["id"],
            "object": "chat.completion.chunk",
            "created": completion["created"],
            "model": completion["model"],
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    events = [chunk({"role": "assistant", "content": ""})]
    events.extend(chunk({"content": piece}) for piece in _pieces(message.get("content") or ""))
    for index, call in enumerate(message.get("tool_calls") or []):
        arguments = call["function"]["arguments"]
        head = {"index": index, "id": call["id"], "type": "function"}
        events.append(
            chunk(
                {
                    "tool_calls": [
                        {**head, "function": {"name": call["function"]["name"], "arguments": ""}}
                    ]
                }
            )
        )
        half = len(arguments) // 2
        for part in (arguments[:half], arguments[half:]):
            if part:
                events.append(
                    chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
                )
    events.append(chunk({}, choice["finish_reason"]))
    if (body.get("stream_options") or {}).get("include_usage"):
        _, last = chunk({})
        events.append((None, {**last, "choices": [], "usage": completion["usage"]}))
    events.append((None, "[DONE]"))
    return events


def anthropic_events(body: dict[str, Any], message: dict[str, Any]) -> list[tuple[str | None, Any]]:
    """`message` as the events Anthropic's messages API streams."""
    usage = message["usage"]
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1},
    }
    events: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": start})
    ]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            first: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(block["text"])]
        else:
            first = {**block, "input": {}}
            arguments = json.dumps(block["input"])
            half = len(arguments) // 2
            deltas = [
                {"type": "input_json_delta", "partial_json": part}
                for part in (arguments[:half], arguments[half:])
            ]
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": first},
            )
        )
        events.extend(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            for delta in deltas
        )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def error_body(kind: str, status: int, message: str | None) -> dict[str, Any]:
    if kind == "anthropic":
        error_type, default = ANTHROPIC_ERRORS.get(status, ("api_error", "Error."))
        return {"type": "error", "error": {"type": error_type, "message": message or default}}
    error_type, default, code = OPENAI_ERRORS.get(status, ("server_error", "Error.", None))
    return {
        "error": {"message": message or default, "type": error_type, "param": None, "code": code}
    }


def models_body(kind: str) -> dict[str, Any]:
    model: dict[str, Any]
    if kind == "anthropic":
        model = {
            "id": "fake-model",
            "type": "model",
            "display_name": "Fake model",
            "created_at": "2024-01-01T00:00:00Z",
        }
        return {"data": [model], "has_more": False, "first_id": "fake-model", "last_id": None}
    model = {"id": "fake-model", "object": "model", "created": 1_700_000_000, "owned_by": "fake"}
    return {"object": "list", "data": [model]}


# -- the handler ------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    fake: FakeLLMServer  # set per server by `_handler_for`
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle keep-alive connection must not hold a thread forever

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        kind = "anthropic" if "anthropic-version" in self.headers else "openai"
        self.fake._record(self._recorded(kind if self._path() == "/v1/models" else "other", None))
        if self._path() == "/v1/models":
            self._send_json(200, models_body(kind))
        else:
            self._send_json(404, error_body(kind, 404, f"No route GET {self._path()}"))

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path = self._path()
        kind = {"/v1/chat/completions": "openai", "/v1/messages": "anthropic"}.get(path)
        if kind is None:
            self.fake._record(self._recorded("other", body))
            self._send_json(404, error_body("openai", 404, f"No route POST {path}"))
            return
        self.fake._entered(1)
        try:
            spec = self.fake._record(self._recorded(kind, body))
            if not isinstance(body, dict):
                self._send_json(400, error_body(kind, 400, "The body is not a JSON object."))
                return
            self._answer(kind, body, spec)
        finally:
            self.fake._entered(-1)

    def _answer(self, kind: str, body: dict[str, Any], spec: dict[str, Any] | None) -> None:
        """What a scripted reply says: a delay, an error status, or a completion."""
        if spec is None:
            spec = {
                "content": _last_user_text(body.get("messages") or []),
                "delay": self.fake.delay,
            }
        self.fake.gate.wait()
        delay = float(spec.get("delay") or 0)
        if delay and self.fake._stopping.wait(delay):
            return  # the server is stopping: the client gave up long ago
        if "status" in spec:
            status = int(spec["status"])
            headers = {str(k): str(v) for k, v in (spec.get("headers") or {}).items()}
            self._send_json(status, error_body(kind, status, spec.get("message")), headers)
            return
        make = openai_completion if kind == "openai" else anthropic_message
        if body.get("stream"):
            chunks = openai_chunks if kind == "openai" else anthropic_events
            self._send_stream(chunks(body, make(body, spec)), spec)
            return
        self._send_json(200, make(body, spec))

    def _send_stream(self, events: list[tuple[str | None, Any]], spec: dict[str, Any]) -> None:
        """`events` as Server-Sent Events, each flushed on its own, `chunk_delay` apart."""
        pause = float(spec.get("chunk_delay", self.fake.chunk_delay) or 0)
        hold_after = spec.get("hold_after")
        self.fake.chunk_times = []
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            for index, (name, data) in enumerate(events):
                if index and pause and self.fake._stopping.wait(pause):
                    return
                if index == hold_after:
                    self.fake.hold.wait()
                text = data if isinstance(data, str) else json.dumps(data)
                frame = (f"event: {name}\n" if name else "") + f"data: {text}\n\n"
                self.wfile.write(frame.encode())
                self.wfile.flush()
                self.fake.chunk_times.append(time.time())
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _path(self) -> str:
        return self.path.split("?", 1)[0]

    def _recorded(self, kind: str, body: Any) -> RecordedRequest:
        return RecordedRequest(
            kind=kind,
            method=self.command,
            path=self._path(),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and hung up


def _handler_for(fake: FakeLLMServer) -> type[BaseHTTPRequestHandler]:
    return type("Handler", (_Handler,), {"fake": fake})
