"""The HTTP side of the CLI: where the server is, who the caller is (an API key, or the JWT pair
a `login` stored), JSON errors turned into one exception, and the run's event stream."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
API = "/api/v1"


class CLIError(Exception):
    """Ends the command with a message on stderr and an exit code (see main.EXIT_*)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class APIError(CLIError):
    """The server answered 4xx/5xx; the message is its JSON error's `detail` (and `errors`)."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "detail" in body:
            message = f"{self.status} {body.get('type', 'error')}: {body['detail']}"
            if body.get("errors"):
                message += f"\n{json.dumps(body['errors'], indent=2)}"
        else:
            message = f"{self.status}: {response.text[:300].strip() or response.reason_phrase}"
        super().__init__(message, code=3)


def config_path() -> Path:
    """$SPARKOPS_CONFIG, else sparkops/config.json under the user's config directory."""
    if os.environ.get("SPARKOPS_CONFIG"):
        return Path(os.environ["SPARKOPS_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "sparkops" / "config.json"


def load_config() -> dict[str, Any]:
    try:
        data = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_config(data: dict[str, Any]) -> Path:
    """Written 0600 (it holds a refresh token), in a 0700 directory, replaced atomically."""
    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def base_url(flag: str | None, config: dict[str, Any]) -> str:
    url = flag or os.environ.get("SPARKOPS_URL") or config.get("url") or DEFAULT_URL
    url = url.rstrip("/")
    return url[: -len(API)] if url.endswith(API) else url


@dataclass
class Client:
    url: str
    api_key: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    timeout: float = 30.0

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url + API, timeout=self.timeout)

    def close(self) -> None:
        self.http.close()

    # --- authentication ------------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        if self.api_key:
            return {"X-API-Key": self.api_key}
        if self.config.get("access"):
            return {"Authorization": f"Bearer {self.config['access']}"}
        return {}

    def refresh(self) -> bool:
        """A stored login whose access token expired: trade the refresh token for a new pair
        (it rotates) and save it. False when there is nothing to refresh or it was refused."""
        if self.api_key or not self.config.get("refresh"):
            return False
        response = self.send("POST", "/auth/refresh", json={"refresh": self.config["refresh"]})
        if response.status_code != 200:
            return False
        tokens = response.json()
        self.config["access"] = tokens["access"]
        self.config["refresh"] = tokens.get("refresh", self.config["refresh"])
        save_config(self.config)
        return True

    # --- requests ------------------------------------------------------------------------------

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CLIError(f"cannot reach {self.url}: {exc}", code=4) from exc

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {**kwargs.pop("headers", {}), **self.auth_headers()}
        response = self.send(method, path, headers=headers, **kwargs)
        if response.status_code == 401 and self.refresh():
            headers.update(self.auth_headers())
            response = self.send(method, path, headers=headers, **kwargs)
        if response.status_code >= 400:
            raise APIError(response)
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=body if body is not None else {}, **kwargs)

    def pages(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every row of a paginated list, following `next`."""
        page = self.get(path, **params)
        while True:
            yield from page["results"]
            if not page.get("next"):
                return
            page = self.request("GET", page["next"])

    # --- the event stream ----------------------------------------------------------------------

    def events(
        self, run_id: str, after: int = 0, on_resume: Callable[[int], None] | None = None
    ) -> Iterator[dict[str, Any]]:
        """The run's events, oldest first, until the server says `end`. A stream that ends
        without `end` (the server's SPARKOPS_STREAM_MAX_SECONDS, a restart, a dropped
        connection) is reopened with Last-Event-ID, so no event is lost or repeated."""
        retry_seconds = 2.0
        failures = 0
        opened = False
        while True:
            if opened and on_resume is not None:
                on_resume(after)
            opened = True
            try:
                for item in self._stream_once(run_id, after):
                    if "retry" in item:
                        retry_seconds = item["retry"] / 1000
                        continue
                    failures = 0
                    if item["event"] == "end":
                        return
                    if item["seq"] is None:
                        # `llm.delta`: a piece of a model's answer as it streams, live only (no
                        # id, never replayed); the recorded `llm.call` event holds the answer.
                        continue
                    after = item["seq"]
                    yield item["data"]
            except httpx.HTTPError as exc:
                failures += 1
                if failures > 5:
                    raise CLIError(f"lost the event stream of run {run_id}: {exc}", code=4) from exc
            except _Throttled as exc:
                retry_seconds = max(retry_seconds, exc.seconds)
            time.sleep(retry_seconds)

    def _stream_once(self, run_id: str, after: int) -> Iterator[dict[str, Any]]:
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
        for attempt in range(2):
            headers.update(self.auth_headers())
            with self.http.stream(
                "GET", f"/runs/{run_id}/stream", headers=headers, timeout=httpx.Timeout(60.0)
            ) as response:
                if response.status_code == 401 and attempt == 0 and self.refresh():
                    continue
                if response.status_code == 429:
                    response.read()
                    raise _Throttled(float(response.headers.get("Retry-After") or 2))
                if response.status_code >= 400:
                    response.read()
                    raise APIError(response)
                yield from parse_sse(response.iter_lines())
                return


class _Throttled(Exception):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


def parse_sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Server-Sent Events: `{"retry": ms}`, or `{"event", "seq", "data"}` per dispatched event."""
    event: dict[str, Any] = {}
    data: list[str] = []
    for line in lines:
        if not line:
            if data or event:
                payload = json.loads("\n".join(data)) if data else {}
                yield {
                    "event": event.get("event", "message"),
                    "seq": event.get("id"),
                    "data": payload,
                }
            event, data = {}, []
        elif line.startswith(":"):
            continue  # keep-alive comment
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "id":
                event["id"] = int(value)
            elif name == "event":
                event["event"] = value
            elif name == "retry" and value.isdigit():
                yield {"retry": int(value)}
