"""The official openai Python SDK against the gateway."""

from __future__ import annotations

import openai
import pytest
from conftest import UNKNOWN_KEYS
from support import MODEL


@pytest.fixture
def client_for(gateway):
    clients = []

    def make(key: str) -> openai.OpenAI:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=30)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


MESSAGES = [{"role": "user", "content": "Hello from the SDK!"}]


def test_chat_completion_usage_matches_billing(client_for, collector, tenants):
    tenant = tenants["sdk"]
    raw = client_for(tenant.key).chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=50
    )
    completion = raw.parse()
    request_id = raw.headers.get("x-request-id")
    assert request_id, dict(raw.headers)
    assert raw.headers.get("x-ratelimit-limit-requests") == str(tenant.rate_limit)
    assert completion.choices[0].message.content

    record = collector.wait_billing(tenant.id, {request_id})[request_id]
    assert record["input_tokens"] == completion.usage.prompt_tokens
    assert record["output_tokens"] == completion.usage.completion_tokens
    assert record["model"] == MODEL


def test_streaming_with_usage(client_for, collector, tenants):
    tenant = tenants["sdk"]
    stream = client_for(tenant.key).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    request_id = stream.response.headers.get("x-request-id")
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert text and usage is not None, chunks[-1]

    record = collector.wait_billing(tenant.id, {request_id})[request_id]
    assert (record["input_tokens"], record["output_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )


def test_wrong_key_raises_authentication_error(client_for):
    with pytest.raises(openai.AuthenticationError) as caught:
        client_for(UNKNOWN_KEYS[1]).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"


def test_exhausted_tenant_raises_rate_limit_error(client_for, tenants):
    client = client_for(tenants["sdk-limited"].key)  # 1 request per minute
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.code == "rate_limit_exceeded"
    retry_after = caught.value.response.headers.get("retry-after")
    assert retry_after and 1 <= int(retry_after) <= 60


def test_streaming_without_usage_shows_none_and_is_billed_exactly(
    client_for, collector, demo_log, tenants
):
    """The client does not ask for usage: the gateway asks the model for it, bills it exactly,
    and the client still gets a stream without it."""
    tenant = tenants["sdk"]
    stream = client_for(tenant.key).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True
    )
    request_id = stream.response.headers.get("x-request-id")
    chunks = list(stream)
    assert chunks and all(c.choices for c in chunks), "a usage chunk reached the client"
    assert all(c.usage is None for c in chunks)
    assert all("usage" not in c.model_dump(exclude_unset=True) for c in chunks)

    served = demo_log.by_request_id(request_id)
    assert served["include_usage"] is True, served
    record = collector.wait_billing(tenant.id, {request_id})[request_id]
    assert record["usage_source"] == "reported", record
    assert (record["input_tokens"], record["output_tokens"]) == (
        served["prompt_tokens"],
        served["completion_tokens"],
    )
