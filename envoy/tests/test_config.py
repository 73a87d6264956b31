"""The shipped Envoy bootstrap and demo plugin configuration, and how the launcher renders them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ENVOY_BIN, FILTER_WASM, ROOT

import stack


def inline_plugin_config(config: dict) -> dict:
    return json.loads(
        stack.wasm_plugin(config["static_resources"]["listeners"][0])["configuration"]["value"]
    )


def test_envoy_yaml_carries_the_demo_plugin_config():
    config = yaml.safe_load(stack.ENVOY_TEMPLATE.read_text())
    assert inline_plugin_config(config) == json.loads(stack.DEMO_PLUGIN_CONFIG.read_text())


def test_demo_plugin_config_has_the_demo_tenants():
    config = json.loads(stack.DEMO_PLUGIN_CONFIG.read_text())
    tenants = {t["id"]: t for t in config["tenants"]}
    assert set(tenants) == {"acme", "globex"}
    assert tenants["acme"]["api_key_sha256"] == [stack.sha256_hex("demo-acme-key")]
    assert (tenants["acme"]["rate_limit"], tenants["acme"]["token_budget"]) == (60, 20000)
    assert tenants["globex"]["api_key_sha256"] == [stack.sha256_hex("demo-globex-key")]
    assert (tenants["globex"]["rate_limit"], tenants["globex"]["token_budget"]) == (5, 2000)
    assert config["collector"]["cluster"] == "collector"
    assert config["collector"]["ingest_token"] == stack.DEMO_INGEST_TOKEN


def test_envoy_yaml_is_the_make_run_layout():
    config = yaml.safe_load(stack.ENVOY_TEMPLATE.read_text())
    assert config["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 9901,
    }
    listener = config["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 10000}
    assert listener["per_connection_buffer_limit_bytes"] >= 8 * 1024 * 1024

    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters = [f["name"] for f in hcm["http_filters"]]
    # The buffer filter holds the headers from the router until the filter has read the body.
    assert filters == [
        "envoy.filters.http.wasm",
        "envoy.filters.http.buffer",
        "envoy.filters.http.router",
    ]
    route = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert route == [{"match": {"prefix": "/"}, "route": {"cluster": "inference", "timeout": "0s"}}]
    assert hcm["stream_idle_timeout"]

    wasm = stack.wasm_plugin(listener)
    assert wasm["root_id"] == wasm["vm_config"]["vm_id"] == "inference-gate"
    assert wasm["vm_config"]["runtime"] == "envoy.wasm.runtime.v8"
    assert wasm["fail_open"] is False
    assert wasm["vm_config"]["code"]["local"]["filename"] == (
        "target/wasm32-wasip1/release/inference_gate.wasm"
    )

    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    endpoint = lambda c: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]  # noqa: E731
    assert endpoint(clusters["inference"])["address"]["socket_address"]["port_value"] == 8000
    assert endpoint(clusters["collector"])["address"]["socket_address"]["port_value"] == 9000


@pytest.mark.parametrize(
    ("text", "host", "port", "is_ip"),
    [
        ("127.0.0.1:8001", "127.0.0.1", 8001, True),
        ("http://localhost:8001/", "localhost", 8001, False),
        ("[::1]:9000", "::1", 9000, True),
        ("vllm.internal:80", "vllm.internal", 80, False),
    ],
)
def test_upstream_parse(text, host, port, is_ip):
    upstream = stack.Upstream.parse(text)
    assert (upstream.host, upstream.port, upstream.is_ip) == (host, port, is_ip)


@pytest.mark.parametrize(
    "text", ["localhost", "https://api.example:443", "host:0", "host:x", ":80"]
)
def test_upstream_parse_rejects(text):
    with pytest.raises(stack.StackError):
        stack.Upstream.parse(text)


def test_render_sets_ports_upstream_and_plugin_config():
    ports = stack.Ports(20000, 20001, 20002, 20003)
    plugin = {"tenants": [], "collector": {"cluster": "records", "ingest_token": "t"}}
    config = stack.render_envoy_config(
        ports=ports, plugin_config=plugin, upstream=stack.Upstream.parse("model.local:8080")
    )
    assert config["admin"]["address"]["socket_address"]["port_value"] == 20001
    listener = config["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"]["port_value"] == 20000
    assert inline_plugin_config(config) == plugin
    assert Path(stack.wasm_plugin(listener)["vm_config"]["code"]["local"]["filename"]).is_absolute()

    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert set(clusters) == {"inference", "records"}
    inference = clusters["inference"]
    assert inference["type"] == "STRICT_DNS"
    address = inference["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "model.local", "port_value": 8080}
    assert clusters["records"]["type"] == "STATIC"
    assert clusters["records"]["load_assignment"]["cluster_name"] == "records"

    demo = stack.render_envoy_config(ports=ports, plugin_config=plugin)
    inference = {c["name"]: c for c in demo["static_resources"]["clusters"]}["inference"]
    assert inference["type"] == "STATIC"
    address = inference["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "127.0.0.1", "port_value": 20003}


def _validate(config_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ENVOY_BIN), "--mode", "validate", "-c", str(config_path), "--disable-hot-restart"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_envoy_validates_the_shipped_config():
    # Validation loads the filter too, so this also checks that the plugin accepts the demo
    # configuration. The relative path of the filter is the one in the repository.
    if FILTER_WASM.resolve() != stack.DEFAULT_WASM.resolve():
        pytest.skip("FILTER_WASM is not the repository's build; the shipped config names that")
    result = _validate(stack.ENVOY_TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_rejects_a_plugin_config_with_an_unknown_field(tmp_path):
    plugin = json.loads(stack.DEMO_PLUGIN_CONFIG.read_text())
    plugin["tenants"][0]["rate_limt"] = 5
    config = stack.render_envoy_config(
        ports=stack.Ports(), plugin_config=plugin, wasm_path=FILTER_WASM
    )
    result = _validate(stack.write_envoy_config(tmp_path / "envoy.yaml", config))
    assert result.returncode != 0, "a misspelt field must fail the plugin at load"
    assert "rate_limt" in result.stdout + result.stderr, "the error must name the field"
