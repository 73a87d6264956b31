"""The official anthropic and openai SDKs against the gateway, on the replayed fixtures: each
client reads its answer as usual, and the collector holds exactly the usage the server reported."""

from __future__ import annotations

import anthropic
import openai
import pytest

FIXTURE = "x-replay-fixture"
MESSAGES = [{"role": "user", "content": "Hello from the SDK!"}]


@pytest.fixture
def anthropic_client(replay_gateway, replay_tenants):
    client = anthropic.Anthropic(
        base_url=replay_gateway.url,
        api_key=replay_tenants["shapes-sdk"].key,
        max_retries=0,
        timeout=30,
    )
    yield client
    client.close()


@pytest.fixture
def openai_client(replay_gateway, replay_tenants):
    client = openai.OpenAI(
        base_url=f"{replay_gateway.url}/v1",
        api_key=replay_tenants["shapes-sdk"].key,
        max_retries=0,
        timeout=30,
    )
    yield client
    client.close()


def billed(collector, tenants, request_id: str) -> dict:
    return collector.wait_billing(tenants["shapes-sdk"].id, {request_id})[request_id]


def test_anthropic_message(anthropic_client, replay_collector, replay_tenants):
    raw = anthropic_client.messages.with_raw_response.create(
        model="claude-test",
        max_tokens=1024,
        messages=MESSAGES,
        extra_headers={FIXTURE: "anthropic_messages/anthropic_plain"},
    )
    message = raw.parse()
    assert message.content[0].text.startswith("The novel explores")
    usage = message.usage
    record = billed(replay_collector, replay_tenants, raw.headers["x-request-id"])
    assert record["api"] == "anthropic_messages"
    # Every input token, the cache read included; the read also apart.
    assert record["input_tokens"] == (
        usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    )
    assert record["cached_input_tokens"] == usage.cache_read_input_tokens
    assert record["cache_write_input_tokens"] == usage.cache_creation_input_tokens
    assert record["output_tokens"] == usage.output_tokens
    assert record["usage_source"] == "reported"


def test_anthropic_stream(anthropic_client, replay_collector, replay_tenants):
    with anthropic_client.messages.stream(
        model="claude-test",
        max_tokens=1024,
        messages=MESSAGES,
        extra_headers={FIXTURE: "anthropic_messages/anthropic_stream"},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    assert text == "Hello! I'm Claude, how can I help?"
    record = billed(replay_collector, replay_tenants, request_id)
    usage = final.usage
    assert record["input_tokens"] == usage.input_tokens + usage.cache_creation_input_tokens
    assert record["cache_write_input_tokens"] == usage.cache_creation_input_tokens
    assert record["output_tokens"] == usage.output_tokens == 15
    assert record["usage_source"] == "reported"


def test_anthropic_stream_with_tool_use(anthropic_client, replay_collector, replay_tenants):
    with anthropic_client.messages.stream(
        model="claude-test",
        max_tokens=2048,
        messages=MESSAGES,
        extra_headers={FIXTURE: "anthropic_messages/anthropic_tool_stream"},
    ) as stream:
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    tool = [block for block in final.content if block.type == "tool_use"][0]
    assert tool.input == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    record = billed(replay_collector, replay_tenants, request_id)
    assert (record["input_tokens"], record["output_tokens"]) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )


def test_openai_responses(openai_client, replay_collector, replay_tenants):
    raw = openai_client.responses.with_raw_response.create(
        model="gpt-4.1",
        input="Tell me a three sentence bedtime story about a unicorn.",
        extra_headers={FIXTURE: "openai_responses/openai_plain"},
    )
    response = raw.parse()
    assert response.output_text.startswith("In a peaceful grove")
    record = billed(replay_collector, replay_tenants, raw.headers["x-request-id"])
    assert record["api"] == "openai_responses"
    assert (record["input_tokens"], record["output_tokens"]) == (
        response.usage.input_tokens,
        response.usage.output_tokens,
    )


def test_openai_responses_stream(openai_client, replay_collector, replay_tenants):
    stream = openai_client.responses.create(
        model="gpt-4.1",
        input="Tell me a one sentence bedtime story about a unicorn.",
        stream=True,
        extra_headers={FIXTURE: "openai_responses/openai_stream"},
    )
    request_id = stream.response.headers["x-request-id"]
    events = list(stream)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text.startswith("In a peaceful grove")
    completed = events[-1]
    assert completed.type == "response.completed"
    record = billed(replay_collector, replay_tenants, request_id)
    assert (record["input_tokens"], record["output_tokens"]) == (
        completed.response.usage.input_tokens,
        completed.response.usage.output_tokens,
    )


@pytest.mark.parametrize("server", ["openai_stream_usage", "vllm_stream_usage", "tgi_stream_usage"])
def test_openai_chat_stream_without_usage(openai_client, replay_collector, replay_tenants, server):
    """The server reports usage because the gateway asked; the client, which did not, sees none."""
    stream = openai_client.chat.completions.create(
        model="m",
        messages=MESSAGES,
        stream=True,
        extra_headers={FIXTURE: f"openai_chat/{server}"},
    )
    request_id = stream.response.headers["x-request-id"]
    chunks = list(stream)
    assert chunks and all(c.choices for c in chunks)
    assert all("usage" not in c.model_dump(exclude_unset=True) for c in chunks)
    record = billed(replay_collector, replay_tenants, request_id)
    assert record["usage_source"] == "reported", record
