"""Every API shape metered exactly through the real Envoy: each metering fixture
(`tests/fixtures/metering/`) replayed by a model server that cuts it at random byte boundaries,
and the collector's billing record compared with the fixture's sidecar."""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor

from replay_model import Fixture, all_fixtures, load

# The default route of each shape.
PATHS = {
    "openai_chat": "/v1/chat/completions",
    "openai_completions": "/v1/completions",
    "openai_embeddings": "/v1/embeddings",
    "openai_responses": "/v1/responses",
    "anthropic_messages": "/v1/messages",
    "ollama_chat": "/api/chat",
    "ollama_generate": "/api/generate",
    "openai_invocations": "/invocations",
    "llamacpp_completion": "/completion",
    "generate": "/generate",
    "unmetered": "/v1/messages/count_tokens",
}
# Each fixture is replayed cut at random in these many different ways.
SEEDS = (11, 29)
DETAILS = ("cached_input_tokens", "cache_write_input_tokens", "reasoning_tokens")


def send(url: str, key: str, fixture: Fixture, seed: int) -> tuple[int, dict, bytes]:
    """POSTs the fixture's request; returns the status, headers and whatever body arrived
    (a stream cut by the server ends early, without an error here)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(
            "POST",
            PATHS[fixture.shape],
            body=json.dumps(fixture.meta["request"]),
            headers={
                "authorization": f"Bearer {key}",
                "content-type": "application/json",
                "x-replay-fixture": fixture.id,
                "x-replay-seed": str(seed),
            },
        )
        response = connection.getresponse()
        body = b""
        try:
            while chunk := response.read1(65536):
                body += chunk
        except (http.client.IncompleteRead, ConnectionError):
            pass
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


def test_every_shape_is_metered_exactly(
    replay_gateway, replay_collector, replay_server, replay_tenants
):
    tenant = replay_tenants["shapes"]
    fixtures = all_fixtures()
    assert {f.shape for f in fixtures} == set(PATHS), "a shape without fixtures"
    sent: dict[str, tuple[Fixture, int]] = {}
    problems = []

    # In parallel: a stream the server cut takes Envoy a second to close (its delayed close).
    cases = [(fixture, seed) for fixture in fixtures for seed in SEEDS]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda case: send(replay_gateway.url, tenant.key, *case), cases))
    for (fixture, seed), (status, headers, body) in zip(cases, answers, strict=True):
        what = f"{fixture.id} (seed {seed})"
        request_id = headers.get("x-request-id")
        if status != fixture.meta["status"] or not request_id:
            problems.append(f"{what}: status {status}, headers {headers}")
            continue
        sent[request_id] = (fixture, seed)
        want = fixture.client_sees()
        if want is not None and body != want:
            problems.append(f"{what}: the client got\n{body.decode(errors='replace')}")

        # What the model server got: the length Envoy sent matches the body, and an OpenAI
        # stream that did not ask for usage was made to.
        received = replay_server.received(request_id)
        # (The buffer filter after the Wasm filter sets the length of a rewritten body.)
        length = received.headers.get("content-length")
        if length is None or int(length) != len(received.body):
            problems.append(f"{what}: content-length {length}, body {len(received.body)}")
        upstream = json.loads(received.body)
        if fixture.shape in ("openai_chat", "openai_completions") and upstream.get("stream"):
            if upstream.get("stream_options", {}).get("include_usage") is not True:
                problems.append(f"{what}: the server was not asked for usage: {upstream}")
            rest = {k: v for k, v in upstream.items() if k != "stream_options"}
            client = {k: v for k, v in fixture.meta["request"].items() if k != "stream_options"}
            if rest != client:
                problems.append(f"{what}: the request was changed beyond stream_options")
    assert not problems, "\n".join(problems)

    billed = {rid for rid, (f, _) in sent.items() if f.meta["expect"] is not None}
    records = replay_collector.wait_billing(tenant.id, billed)
    for request_id, (fixture, seed) in sent.items():
        want = fixture.meta["expect"]
        record = records.get(request_id)
        what = f"{fixture.id} (seed {seed})"
        if want is None:
            assert record is None, f"{what}: billed although the server failed: {record}"
            continue
        got = {field: record.get(field) for field in want}
        assert got == want, f"{what}: {record}"
        assert record["api"] == fixture.shape, f"{what}: {record}"
        for detail in DETAILS:
            if detail not in want:
                assert record.get(detail) is None, f"{what}: {record}"

    # Nothing else was billed: one record per billed request.
    all_records = replay_collector.billing(tenant.id)
    assert len(all_records) == len(billed), [r["request_id"] for r in all_records]


def test_a_stream_cut_by_the_server_is_billed_an_estimate(
    replay_gateway, replay_collector, replay_tenants
):
    # The same as above for one fixture, on its own, so that a failure names the case (and
    # for another tenant, whose records the test above does not count).
    tenant = replay_tenants["shapes-sdk"]
    fixture = load("anthropic_messages/anthropic_stream_cut")
    status, headers, body = send(replay_gateway.url, tenant.key, fixture, 5)
    assert status == 200
    assert b"message_stop" not in body and body.startswith(b"event: message_start")
    request_id = headers["x-request-id"]
    record = replay_collector.wait_billing(tenant.id, {request_id})[request_id]
    assert record["usage_source"] == "estimated", record
    # The input was reported before the cut; the output is estimated from the text seen.
    assert (record["input_tokens"], record["output_tokens"]) == (1225, 7), record
