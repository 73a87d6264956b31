"""`retry-after` is the real wait: the same request is refused just before it, and passes after.

Limits refill continuously, so a tenant that has just spent its minute's allowance of N
requests (or tokens) waits about 60/N seconds; the tenants here make that 2 seconds at most.
"""

from __future__ import annotations

import time

from support import assert_openai_error, assert_retry_after


def exhaust(send, code: str, attempts: int):
    """Send until refused with `code`; the refusal and when it arrived."""
    for _ in range(attempts):
        response = send()
        if response.status == 429:
            arrived = time.monotonic()
            assert_openai_error(response, 429, code)
            return response, arrived
        assert response.status == 200, response
    raise AssertionError(f"still no 429 after {attempts} requests")


def assert_real_wait(send, refusal, arrived: float) -> None:
    wait = assert_retry_after(refusal)

    # retry-after is the wait rounded up to whole seconds: a second less is too early (the
    # 0.2 s margin covers the time the answer took to arrive). A refused request costs nothing.
    if wait >= 2:
        time.sleep(max(0.0, arrived + wait - 1.2 - time.monotonic()))
        early = send()
        assert early.status == 429, f"retry-after {wait}s, but it passed {wait - 1.2:.1f}s in"

    time.sleep(max(0.0, arrived + wait - time.monotonic()))
    late = send()
    assert late.status == 200, f"retry-after was {wait}s, yet refused after that: {late}"


def test_retry_after_requests_is_the_real_wait(gateway, tenants):
    tenant = tenants["retry-requests"]  # 30 per minute: one every 2 seconds

    def send():
        return gateway.chat(tenant.key, "Hi", max_tokens=5)

    refusal, arrived = exhaust(send, "rate_limit_exceeded", tenant.rate_limit + 10)
    assert_real_wait(send, refusal, arrived)


def test_retry_after_tokens_is_the_real_wait(gateway, tenants):
    tenant = tenants["retry-tokens"]  # 360 tokens per minute, ~12 a request: 30 requests

    def send():
        return gateway.chat(tenant.key, "Hi", max_tokens=5)

    refusal, arrived = exhaust(send, "token_budget_exceeded", 80)
    assert_real_wait(send, refusal, arrived)
