"""Rate-limit headers, the request limit under concurrency, the token budget and settlement."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import Counter

from support import (
    Response,
    assert_openai_error,
    assert_ratelimit_headers,
    assert_retry_after,
)


def test_ratelimit_headers_on_success(gateway, tenants):
    tenant = tenants["headers"]
    seen = []
    for _ in range(3):
        response = gateway.chat(tenant.key)
        assert response.status == 200, response
        seen.append(assert_ratelimit_headers(response, tenant))

    remaining = [s["remaining_requests"] for s in seen]
    assert remaining == [remaining[0], remaining[0] - 1, remaining[0] - 2], remaining
    assert remaining[0] == tenant.rate_limit - 1, "the first request of a fresh tenant leaves L-1"
    assert all(s["remaining_tokens"] < tenant.token_budget for s in seen)


def test_request_limit_holds_under_concurrency(gateway, tenants, demo_log):
    """3L concurrent requests from one tenant, over both Envoy workers: exactly L pass."""
    tenant = tenants["ratelimit"]
    count = 3 * tenant.rate_limit
    barrier = threading.Barrier(count)
    responses: list[Response | BaseException] = [None] * count  # type: ignore[list-item]

    def send(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            responses[i] = gateway.chat(tenant.key, f"request {i}")
        except BaseException as err:  # reported below, with the others
            responses[i] = err

    threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    failures = [r for r in responses if not isinstance(r, Response)]
    assert not failures, failures
    statuses = Counter(r.status for r in responses)
    assert statuses == {200: tenant.rate_limit, 429: count - tenant.rate_limit}, statuses

    for response in responses:
        assert_ratelimit_headers(response, tenant)
        if response.status == 429:
            assert_openai_error(response, 429, "rate_limit_exceeded")
            assert_retry_after(response)
            assert response.int_header("x-ratelimit-remaining-requests") == 0

    # Only the admitted requests reached the model server, not even the headers of the others.
    reached = {e["request_id"] for e in demo_log.for_tenant(tenant.id)}
    assert reached == {r.request_id for r in responses if r.status == 200}


def test_request_too_large_never_reaches_the_model(gateway, tenants, demo_log):
    tenant = tenants["budget"]
    model = f"too-large-{uuid.uuid4()}"
    too_large = [
        gateway.chat(tenant.key, model=model, max_tokens=tenant.token_budget + 1),
        # n multiplies the completion reservation: 2 x 400 does not fit in 600 either.
        gateway.chat(tenant.key, model=model, max_tokens=400, n=2),
    ]
    for response in too_large:
        assert_openai_error(response, 429, "request_too_large")
        assert_ratelimit_headers(response, tenant)

    # Not even its headers reached the model server.
    refused = {r.request_id for r in too_large}
    reached = [e for e in demo_log.entries() if e["request_id"] in refused or e["model"] == model]
    assert not reached, reached


def test_token_budget_is_enforced(gateway, tenants, demo_log):
    tenant = tenants["budget"]
    statuses = []
    for i in range(40):
        response = gateway.chat(tenant.key, f"spend tokens {i}", max_tokens=100)
        statuses.append(response.status)
        assert response.status in (200, 429), response
        assert_ratelimit_headers(response, tenant)
        if response.status == 429:
            break
    else:
        raise AssertionError(f"a {tenant.token_budget}-token budget took 40 requests: {statuses}")

    assert_openai_error(response, 429, "token_budget_exceeded")
    assert_retry_after(response)
    assert statuses[:-1] == [200] * (len(statuses) - 1) and len(statuses) > 1, statuses

    # The refused request did not reach the model server, not even its headers.
    reached = demo_log.for_tenant(tenant.id)
    assert response.request_id not in {e["request_id"] for e in reached}, response
    assert len([e for e in reached if e["status"] == 200]) == len(statuses) - 1


def test_reservation_is_settled_to_reported_usage(gateway, tenants):
    """Identical requests reserve the same estimate, so between two of them the remaining
    tokens fall by what the first one used as the model reported it, less what the budget
    refilled meanwhile (limits refill continuously, budget/60 per second). A reservation that
    stayed unsettled would show as a fall of a whole estimate (prompt + max_tokens)."""
    tenant = tenants["settle"]
    refill_per_second = tenant.token_budget / 60
    samples = []
    for _ in range(5):
        sent = time.monotonic()
        response = gateway.chat(tenant.key, "The same prompt, again and again.", max_tokens=300)
        received = time.monotonic()
        assert response.status == 200, response
        used = response.json()["usage"]["total_tokens"]
        remaining = assert_ratelimit_headers(response, tenant)["remaining_tokens"]
        samples.append((sent, received, remaining, used))
        # Settlement runs in Envoy's log phase, just after the last byte went out.
        time.sleep(0.05)

    for (sent, _, before, used), (_, received, after, _) in itertools.pairwise(samples):
        refill = refill_per_second * (received - sent)
        drop = before - after
        # One token either way for rounding to whole tokens.
        assert used - refill - 1 <= drop <= used + 1, (
            f"remaining tokens fell by {drop}; the request used {used} "
            f"and at most {refill:.1f} refilled meanwhile"
        )
