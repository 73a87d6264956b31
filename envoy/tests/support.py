"""Clients for the integration tests: the gateway, the collector's API and the demo model's log."""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from collections.abc import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import stack  # noqa: E402

T = TypeVar("T")

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MODEL = "demo-model"

# A duration as OpenAI writes it (Go's form): 850ms, 12s, 1.5s, 1m30s; at least one part.
RESET_FORMAT = re.compile(r"^(?=\d)(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")


def parse_reset(value: str) -> float:
    """Seconds in an x-ratelimit-reset-* value."""
    match = RESET_FORMAT.match(value)
    assert match, f"{value!r} is not a duration like 850ms, 12s, 1.5s or 1m30s"
    minutes, seconds, millis = (float(part) if part else 0.0 for part in match.groups())
    return minutes * 60 + seconds + millis / 1000


RATELIMIT_HEADERS = [
    f"x-ratelimit-{what}-{kind}"
    for kind in ("requests", "tokens")
    for what in ("limit", "remaining", "reset")
]


@dataclass(frozen=True)
class Tenant:
    id: str
    key: str
    rate_limit: int
    token_budget: int

    def plugin_entry(self, single_digest: bool = False) -> dict:
        digest = stack.sha256_hex(self.key)
        return {
            "id": self.id,
            "api_key_sha256": digest if single_digest else [digest],
            "rate_limit": self.rate_limit,
            "token_budget": self.token_budget,
        }


def poll(
    fetch: Callable[[], T],
    done: Callable[[T], bool],
    *,
    what: str,
    timeout: float = 20.0,
    interval: float = 0.1,
) -> T:
    """Call `fetch` until `done(result)`; fail with the last result after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}; last: {result!r}"
            )
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# The gateway


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")

    @property
    def error_code(self) -> str | None:
        try:
            return self.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None

    def int_header(self, name: str) -> int:
        value = self.headers.get(name)
        assert value is not None, f"no {name} header in {self.headers}"
        assert re.fullmatch(r"\d+", value), f"{name}: {value!r} is not a non-negative integer"
        return int(value)

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.headers}, {self.body[:300]!r})"


def assert_openai_error(response: Response, status: int, code: str) -> dict:
    """The status, and an OpenAI-shaped JSON error body with this code."""
    assert response.status == status, response
    assert response.headers.get("content-type", "").startswith("application/json"), response
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error.get("message"), str) and error["message"], body
    assert isinstance(error.get("type"), str) and error["type"], body
    assert error.get("code") == code, body
    return error


def assert_retry_after(response: Response) -> int:
    seconds = response.int_header("retry-after")
    assert 1 <= seconds <= 60, f"retry-after {seconds} is not within 1..60"
    return seconds


def assert_ratelimit_headers(response: Response, tenant: Tenant) -> dict[str, Any]:
    """All six x-ratelimit-* headers, well formed, with this tenant's limits."""
    missing = [name for name in RATELIMIT_HEADERS if name not in response.headers]
    assert not missing, f"missing {missing} in {response.headers}"
    values: dict[str, Any] = {}
    for kind, limit in (("requests", tenant.rate_limit), ("tokens", tenant.token_budget)):
        assert response.int_header(f"x-ratelimit-limit-{kind}") == limit
        remaining = response.int_header(f"x-ratelimit-remaining-{kind}")
        assert 0 <= remaining <= limit, f"remaining {kind} {remaining} outside 0..{limit}"
        reset = parse_reset(response.headers[f"x-ratelimit-reset-{kind}"])
        # The windows are one minute long.
        assert 0 <= reset <= 60, f"x-ratelimit-reset-{kind}: {reset}s is outside 0..60s"
        values[f"remaining_{kind}"] = remaining
        values[f"reset_{kind}"] = reset
    return values


class Gateway:
    def __init__(self, url: str) -> None:
        self.url = url

    def request(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        scheme: str = "Bearer",
        headers: dict[str, str] | None = None,
        body: dict | bytes | None = None,
        timeout: float = 30.0,
    ) -> Response:
        all_headers = dict(headers or {})
        if key is not None:
            all_headers["Authorization"] = f"{scheme} {key}"
        if isinstance(body, bytes):
            all_headers.setdefault("content-type", "application/json")
        status, response_headers, data = stack.http_request(
            method, self.url + path, headers=all_headers, body=body, timeout=timeout
        )
        return Response(status, response_headers, data)

    def chat(
        self,
        key: str | None,
        content: str = "Hello, gateway!",
        *,
        headers: dict[str, str] | None = None,
        **fields: Any,
    ) -> Response:
        body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}
        return self.request("POST", CHAT, key=key, headers=headers, body=body)

    def completion(
        self,
        key: str | None,
        prompt: Any = "Once upon a time",
        *,
        headers: dict[str, str] | None = None,
        **fields: Any,
    ) -> Response:
        body = {"model": MODEL, "prompt": prompt, **fields}
        return self.request("POST", COMPLETIONS, key=key, headers=headers, body=body)


def new_request_id() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------------------------------------
# The collector


class Collector:
    def __init__(self, url: str, admin_token: str) -> None:
        self.url = url
        self.admin_token = admin_token

    def get(self, path: str, **params: str | None) -> Any:
        query = "&".join(f"{k}={v}" for k, v in params.items() if v is not None)
        status, _, body = stack.http_request(
            "GET",
            f"{self.url}{path}" + (f"?{query}" if query else ""),
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        assert status == 200, f"GET {path}?{query}: {status} {body[:300]!r}"
        return json.loads(body)

    def billing(self, tenant: str) -> list[dict]:
        return self.get("/v1/billing", tenant_id=tenant)["records"]

    def usage(self, tenant: str) -> dict:
        return self.get("/v1/usage", tenant_id=tenant)

    def audit(self, tenant: str | None = None) -> list[dict]:
        return self.get("/v1/audit", tenant_id=tenant)["entries"]

    def wait_billing(
        self, tenant: str, request_ids: set[str], timeout: float = 20.0
    ) -> dict[str, dict]:
        """The billing records of these requests, by request id, once all have arrived."""
        records = poll(
            lambda: self.billing(tenant),
            lambda got: request_ids <= {r.get("request_id") for r in got},
            what=f"billing records of {len(request_ids)} requests of {tenant}",
            timeout=timeout,
        )
        return {r["request_id"]: r for r in records if r.get("request_id") in request_ids}

    def wait_audit(
        self, tenant: str | None, request_ids: set[str], timeout: float = 20.0
    ) -> dict[str, dict]:
        entries = poll(
            lambda: self.audit(tenant),
            lambda got: request_ids <= {e.get("request_id") for e in got},
            what=f"audit entries of {len(request_ids)} requests (tenant {tenant})",
            timeout=timeout,
        )
        return {e["request_id"]: e for e in entries if e.get("request_id") in request_ids}


# ---------------------------------------------------------------------------------------------
# The demo model's log file


class DemoLog:
    """One JSON object per request the demo model received (see demo-model's crate doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[dict]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def for_tenant(self, tenant: str) -> list[dict]:
        return [e for e in self.entries() if e.get("tenant_id") == tenant]

    def by_request_id(self, request_id: str) -> dict:
        matches = [e for e in self.entries() if e.get("request_id") == request_id]
        assert len(matches) == 1, f"{len(matches)} demo log lines for request {request_id}"
        return matches[0]
