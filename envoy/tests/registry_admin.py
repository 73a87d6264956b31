"""What the registry tests drive and watch: the collector's registry API as an operator calls it,
the filter's registry stats on Envoy's admin page, and waiting until every Envoy worker shows a
change."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from support import Gateway, Response

import stack


class RegistryApi:
    """The collector's operator endpoints for the registry (admin token)."""

    def __init__(self, url: str, admin_token: str) -> None:
        self.url = url
        self.admin_token = admin_token
        # Every key the API handed out, for the check that no log shows one.
        self.issued: list[str] = []

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        status, _, data = stack.http_request(
            method,
            self.url + path,
            headers={"Authorization": f"Bearer {self.admin_token}"},
            body=body,
        )
        return status, (json.loads(data) if data else None)

    def expect(self, status: int, method: str, path: str, body: dict | None = None) -> Any:
        got, answer = self.call(method, path, body)
        assert got == status, f"{method} {path}: {got} {answer}"
        return answer

    def create(self, tenant_id: str, rate_limit: int = 100_000, **fields: Any) -> dict:
        """`{tenant, key_id, api_key}`."""
        body = {"id": tenant_id, "rate_limit": rate_limit, "token_budget": 10_000_000, **fields}
        created = self.expect(201, "POST", "/v1/tenants", body)
        self.issued.append(created["api_key"])
        return created

    def patch(self, tenant_id: str, **fields: Any) -> dict:
        return self.expect(200, "PATCH", f"/v1/tenants/{tenant_id}", fields)

    def delete(self, tenant_id: str) -> dict:
        return self.expect(200, "DELETE", f"/v1/tenants/{tenant_id}")

    def add_key(self, tenant_id: str) -> dict:
        added = self.expect(201, "POST", f"/v1/tenants/{tenant_id}/keys")
        self.issued.append(added["api_key"])
        return added

    def revoke_key(self, tenant_id: str, key_id: str) -> dict:
        return self.expect(200, "DELETE", f"/v1/tenants/{tenant_id}/keys/{key_id}")

    def set_healthy(self, healthy: bool) -> dict:
        return self.expect(200, "PUT", "/v1/health", {"healthy": healthy})


class EnvoyStats:
    """The filter's registry metrics, as Envoy's admin `/stats` lists them."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url

    def registry(self) -> dict[str, int]:
        status, _, body = stack.http_request(
            "GET", f"{self.admin_url}/stats?filter=inference_gate\\.registry\\."
        )
        assert status == 200, body
        found = re.findall(rb"wasmcustom\.inference_gate\.registry\.(\w+): (\d+)", body)
        return {name.decode(): int(value) for name, value in found}


def settled(
    send: Callable[[], Response],
    expect: Callable[[Response], bool],
    *,
    what: str,
    timeout: float,
    confirm: int = 8,
    tick: float = 0.4,
) -> tuple[Response, float]:
    """Sends until a response is as expected, then waits one worker tick and checks that
    `confirm` more, each on a new connection (so spread over Envoy's workers), are all as
    expected. Returns the first such response and how long it took to come."""
    started = time.monotonic()
    deadline = started + timeout
    history: list[int] = []
    while True:
        response = send()
        history.append(response.status)
        if expect(response):
            break
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not seen within {timeout:.1f}s; statuses {history[-20:]}, "
                f"last {response!r}"
            )
        time.sleep(0.05)
    took = time.monotonic() - started
    # Every worker follows the published snapshot on its own tick.
    time.sleep(tick)
    for i in range(confirm):
        again = send()
        assert expect(again), f"{what}: request {i + 1} after the change: {again!r}"
    return response, took


def chat(gateway: Gateway, key: str, model: str | None = None) -> Response:
    fields = {"model": model} if model else {}
    return gateway.chat(key, "registry test", max_tokens=8, **fields)
