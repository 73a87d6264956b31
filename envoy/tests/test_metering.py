"""What the collector bills equals what the model reported, request by request."""

from __future__ import annotations

import http.client
import json

import pytest

from support import CHAT, MODEL, assert_openai_error, assert_ratelimit_headers, poll

LONG = " ".join(f"word{i}, and more;" for i in range(600))

# (path kind, body fields): chat and completions, streamed with usage and not, n > 1,
# max_tokens caps, small and large prompts.
REQUESTS = [
    ("chat", {"messages": [{"role": "user", "content": "Hi!"}]}),
    (
        "chat",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": LONG},
            ]
        },
    ),
    (
        "chat",
        {
            "messages": [{"role": "user", "content": "Stream it, please."}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    (
        "chat",
        {
            "messages": [{"role": "user", "content": "Two streamed answers."}],
            "n": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    ("chat", {"messages": [{"role": "user", "content": "Two plain answers, please."}], "n": 2}),
    ("chat", {"messages": [{"role": "user", "content": "Cut me short."}], "max_tokens": 5}),
    (
        "chat",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Parts, "},
                        {"type": "text", "text": "two of them."},
                    ],
                }
            ],
            "max_completion_tokens": 7,
        },
    ),
    ("chat", {"model": "another-model", "messages": [{"role": "user", "content": "Other model?"}]}),
    ("completions", {"prompt": "Once upon a time"}),
    (
        "completions",
        {
            "prompt": LONG,
            "max_tokens": 40,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    ("completions", {"prompt": "Three of them", "n": 3, "max_tokens": 30}),
    ("completions", {"prompt": ["First prompt.", "Second, longer prompt here."], "max_tokens": 20}),
]

API = {"chat": "openai_chat", "completions": "openai_completions"}


def send(gateway, key: str, kind: str, fields: dict):
    body = {"model": MODEL, **fields}
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    return gateway.request("POST", path, key=key, body=body)


def test_billing_equals_reported_usage_per_request(gateway, collector, demo_log, tenants):
    tenant = tenants["metering"]
    sent = {}
    for kind, fields in REQUESTS:
        response = send(gateway, tenant.key, kind, fields)
        assert response.status == 200, (kind, fields, response)
        assert_ratelimit_headers(response, tenant)
        if fields.get("stream"):
            assert b"data: [DONE]" in response.body, "the stream must pass through whole"
        assert response.request_id, response
        sent[response.request_id] = (kind, fields)

    logged = {rid: demo_log.by_request_id(rid) for rid in sent}
    records = collector.wait_billing(tenant.id, set(sent))

    for request_id, (kind, fields) in sent.items():
        record, reported = records[request_id], logged[request_id]
        expected = {
            "tenant_id": tenant.id,
            "input_tokens": reported["prompt_tokens"],
            "output_tokens": reported["completion_tokens"],
            "usage_source": "reported",
            "model": fields.get("model", MODEL),
            "api": API[kind],
        }
        got = {field: record.get(field) for field in expected}
        assert got == expected, f"request {request_id} ({kind} {list(fields)}): {record}"

    all_records = collector.billing(tenant.id)
    assert len({r["id"] for r in all_records}) == len(all_records), "record ids must be unique"
    assert len(all_records) == len(sent), "one billing record per request"

    usage = collector.usage(tenant.id)
    assert usage["tenant_id"] == tenant.id
    assert usage["requests"] == len(sent)
    assert usage["input_tokens"] == sum(e["prompt_tokens"] for e in logged.values())
    assert usage["output_tokens"] == sum(e["completion_tokens"] for e in logged.values())


def test_large_request_body_is_buffered_and_metered(gateway, collector, demo_log, tenants):
    """A prompt larger than Envoy's default 1 MiB buffer: the filter reads it whole before
    forwarding, then meters it like any other."""
    tenant = tenants["bigbody"]
    prompt = "lorem ipsum " * (1536 * 1024 // 12)
    response = gateway.chat(tenant.key, prompt, max_tokens=10)
    assert response.status == 200, response
    reported = demo_log.by_request_id(response.request_id)
    record = collector.wait_billing(tenant.id, {response.request_id})[response.request_id]
    assert (record["input_tokens"], record["output_tokens"]) == (
        reported["prompt_tokens"],
        reported["completion_tokens"],
    )


def test_body_of_several_mib_is_served_and_metered(gateway, collector, demo_log, tenants):
    """4 MiB, four times Envoy's default buffer, gets through whole and is metered exactly."""
    tenant = tenants["bigbody"]
    prompt = "lorem ipsum " * (4 * 1024 * 1024 // 12)
    response = gateway.chat(tenant.key, prompt, max_tokens=10)
    assert response.status == 200, response
    reported = demo_log.by_request_id(response.request_id)
    record = collector.wait_billing(tenant.id, {response.request_id})[response.request_id]
    assert (record["input_tokens"], record["output_tokens"]) == (
        reported["prompt_tokens"],
        reported["completion_tokens"],
    )


def test_stream_without_usage_is_billed_exactly(gateway, collector, demo_log, tenants):
    """No `include_usage`: the gateway asks the model for usage itself, bills it exactly, and
    the client gets the stream it asked for, without the usage chunk."""
    tenant = tenants["nousage"]
    response = gateway.chat(tenant.key, "Stream without usage, please.", stream=True)
    assert response.status == 200, response
    events = [line for line in response.body.split(b"\n\n") if line]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert all(c["choices"] and "usage" not in c for c in chunks), chunks
    served = demo_log.by_request_id(response.request_id)
    assert served["include_usage"] is True, served

    record = collector.wait_billing(tenant.id, {response.request_id})[response.request_id]
    assert record["usage_source"] == "reported", record
    assert (record["input_tokens"], record["output_tokens"]) == (
        served["prompt_tokens"],
        served["completion_tokens"],
    )


def test_upstream_5xx_with_usage_is_billed(gateway, collector, demo_log, tenants):
    tenant = tenants["upstream5xx"]
    response = gateway.chat(tenant.key, "Fail, but count me.", headers={"x-demo-status": "500"})
    assert response.status == 500, response
    reported = demo_log.by_request_id(response.request_id)
    assert reported["status"] == 500

    record = collector.wait_billing(tenant.id, {response.request_id})[response.request_id]
    assert record["usage_source"] == "reported", record
    assert (record["input_tokens"], record["output_tokens"]) == (
        reported["prompt_tokens"],
        reported["completion_tokens"],
    )
    entry = collector.wait_audit(tenant.id, {response.request_id})[response.request_id]
    assert entry["status_code"] == 500, entry
    assert entry["result"] == "error", entry


def test_usage_counts_arrive_within_seconds(gateway, collector, tenants):
    """The issue's promise: exact usage readable from /v1/usage within a few seconds."""
    tenant = tenants["upstream5xx"]
    before = collector.usage(tenant.id)
    response = gateway.chat(tenant.key, "One more for the usage endpoint.")
    assert response.status == 200
    usage = response.json()["usage"]
    poll(
        lambda: collector.usage(tenant.id),
        lambda now: now["requests"] == before["requests"] + 1,
        what="the request in /v1/usage",
        timeout=5,
    )
    after = collector.usage(tenant.id)
    assert after["input_tokens"] - before["input_tokens"] == usage["prompt_tokens"]
    assert after["output_tokens"] - before["output_tokens"] == usage["completion_tokens"]


def test_client_hanging_up_mid_stream_is_billed_an_estimate(gateway, collector, demo_log, tenants):
    """The model never gets to report usage when the client leaves mid-stream; the tokens it
    used are billed all the same, as an estimate (DESIGN: usage is never silently lost)."""
    tenant = tenants["hangup"]
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "A long, long streamed answer, please."}],
        # Many choices make a stream that runs for seconds (one event per word and choice).
        "n": 64,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    host, port = gateway.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps(body),
        headers={"Authorization": f"Bearer {tenant.key}", "content-type": "application/json"},
    )
    response = connection.getresponse()
    assert response.status == 200
    request_id = response.getheader("x-request-id")
    # Each of the 64 choices opens with an event that holds no text; leave once some text came.
    seen = response.read1(4096)
    assert seen.startswith(b"data: ")
    while seen.count(b"data: ") < 80:
        seen += response.read1(4096)
    connection.sock.shutdown(2)
    connection.close()

    reported = demo_log.by_request_id(request_id)
    record = collector.wait_billing(tenant.id, {request_id})[request_id]
    assert record["usage_source"] == "estimated", record
    assert record["input_tokens"] > 0, record
    assert 0 < record["output_tokens"] < reported["completion_tokens"], (record, reported)


@pytest.mark.parametrize("path", ["/v1//chat/completions", "/v1/chat/%63ompletions"])
def test_a_disguised_path_is_metered_as_what_the_model_server_sees(
    gateway, collector, demo_log, tenants, path
):
    # Model servers route `/v1/chat/%63ompletions` to chat completions; Envoy normalises
    # the path first, so the filter meters what the model server serves.
    tenant = tenants["basic"]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "disguised"}]}
    response = gateway.request("POST", path, key=tenant.key, body=body)
    assert response.status == 200, response
    seen = demo_log.by_request_id(response.request_id)
    assert seen["path"] == CHAT, seen
    record = collector.wait_billing(tenant.id, {response.request_id})[response.request_id]
    assert record["api"] == "openai_chat", record
    assert record["usage_source"] == "reported", record
    assert (record["input_tokens"], record["output_tokens"]) == (
        seen["prompt_tokens"],
        seen["completion_tokens"],
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "demo-model", "stream": true, "temperature": NaN, "messages": []}',
        b'{"model": "demo-model", "stream": true, "\\ud800": 1, "messages": []}',
        b'{"model": "demo-model", "stream": true, "top_p": 1e999, "messages": []}',
        b'{"model": "demo-model", "stream": true, "messages": [], "x": '
        + b"[" * 200
        + b"]" * 200
        + b"}",
    ],
    ids=["nan", "lone-surrogate", "1e999", "deep"],
)
def test_a_body_the_filter_cannot_read_is_refused_before_the_model(
    gateway, collector, demo_log, tenants, body
):
    """Python servers take these, serde_json does not: the gateway could neither ask such a
    stream for its usage nor size it, so it refuses it and the model never sees it."""
    assert json.loads(body) is not None  # Python reads it
    tenant = tenants["basic"]
    response = gateway.request("POST", CHAT, key=tenant.key, body=body)
    error = assert_openai_error(response, 400, "invalid_json")
    assert error["type"] == "invalid_request_error", error
    assert "demo-model" not in error["message"] and "messages" not in error["message"], error
    request_id = response.request_id
    assert request_id, response
    entry = collector.wait_audit(tenant.id, {request_id})[request_id]
    assert (entry["status_code"], entry["result"]) == (400, "error"), entry
    assert not [e for e in demo_log.entries() if e.get("request_id") == request_id]
    assert request_id not in {r["request_id"] for r in collector.billing(tenant.id)}
