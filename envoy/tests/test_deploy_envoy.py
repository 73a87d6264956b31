"""What every shipped Envoy configuration must get right around the filter, checked on the
standalone bootstrap and on what each Istio manifest produces: long timeouts for streamed
inference, short ones towards the collector, the admin interface on loopback, and a buffer
filter after the Wasm filter whose limit is above the filter's own.
"""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import FILTER_WASM
from deploy_istio import (
    connection_managers,
    envoy_filter_variant,
    plugin_config_of,
    wasm_filters,
    wasm_plugin_variant,
)

import stack

WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
BUFFER = "envoy.filters.http.buffer"
DEFAULT_MAX_REQUEST_BODY = 8 << 20


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)s", duration)
    assert match, f"{duration!r} is not a duration in seconds"
    return float(match.group(1))


def standalone() -> dict:
    return yaml.safe_load(stack.ENVOY_TEMPLATE.read_text())


def standalone_hcms(config: dict) -> list[dict]:
    return [
        f["typed_config"]
        for listener in config["static_resources"]["listeners"]
        for chain in listener["filter_chains"]
        for f in chain["filters"]
        if f["name"] == "envoy.filters.network.http_connection_manager"
    ]


def test_the_standalone_admin_listens_on_loopback_only():
    address = standalone()["admin"]["address"]["socket_address"]["address"]
    assert address in ("127.0.0.1", "::1")


def test_the_standalone_timeouts_suit_streaming_and_the_collector():
    config = standalone()
    [hcm] = standalone_hcms(config)
    # No route timeout: a completion may stream for many minutes.
    for host in hcm["route_config"]["virtual_hosts"]:
        for route in host["routes"]:
            assert seconds(route["route"]["timeout"]) == 0
    # But a stream on which nothing moves is closed in the end.
    assert 60 <= seconds(hcm["stream_idle_timeout"]) <= 3600

    plugin = stack.load_plugin_config(stack.DEMO_PLUGIN_CONFIG)
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert seconds(clusters[plugin["collector"]["cluster"]]["connect_timeout"]) <= 1
    assert plugin["collector"].get("timeout_ms", 5000) <= 10_000


def _buffer_and_body_limits(hcms: list[dict], plugin: dict) -> tuple[int, int]:
    [hcm] = hcms
    names = [f["name"] for f in hcm["http_filters"]]
    wasm_at = next(
        i for i, f in enumerate(hcm["http_filters"]) if f["typed_config"]["@type"] == WASM_TYPE
    )
    assert wasm_at < names.index(BUFFER) < names.index("envoy.filters.http.router")
    buffer = hcm["http_filters"][names.index(BUFFER)]["typed_config"]["max_request_bytes"]
    body = plugin.get("metering", {}).get("max_request_body_bytes", DEFAULT_MAX_REQUEST_BODY)
    return buffer, body


@pytest.mark.parametrize("name", ["envoy.yaml", "envoyfilter.yaml", "wasmplugin.yaml"])
def test_the_buffer_filter_lets_the_filter_answer_oversized_requests(name):
    if name == "envoy.yaml":
        config = standalone()
        plugin = stack.load_plugin_config(stack.DEMO_PLUGIN_CONFIG)
        hcms = standalone_hcms(config)
    else:
        variant = envoy_filter_variant if name == "envoyfilter.yaml" else wasm_plugin_variant
        config = variant(FILTER_WASM)
        plugin = plugin_config_of(config)
        hcms = connection_managers(config)
        assert len(wasm_filters(config)) == 1
    buffer, body = _buffer_and_body_limits(hcms, plugin)
    # Above the filter's limit, so that the filter's OpenAI-shaped 413 is the answer.
    assert buffer > body, f"{name}: buffer filter {buffer} <= max_request_body_bytes {body}"
