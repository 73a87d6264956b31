"""The Istio manifests in `envoy/istio/`: valid against Istio's CRD schemas (vendored, 1.31),
and, once applied to a sidecar-shaped Envoy configuration the way istiod applies them, loaded
by the real Envoy and serving requests through the filter to the model server, with billing
records reaching the collector over the cluster the manifests name.

- the EnvoyFilter variant (`envoyfilter.yaml`): the filter from the build, where the ConfigMap
  mount puts it;
- the WasmPlugin variant (`wasmplugin.yaml`): the filter taken out of the OCI image that
  `make oci-filter` builds, as Istio's agent takes it out of a pulled image.
"""

from __future__ import annotations

import copy
import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import COLLECTOR_BIN, DEMO_MODEL_BIN, ENVOY_BIN, FILTER_WASM
from deploy_istio import (
    COLLECTOR_SERVICE_CLUSTER,
    ISTIO,
    MODEL_LABELS,
    ROUTER,
    apply_envoy_filter,
    apply_wasm_plugin,
    clusters,
    connection_managers,
    envoy_filter_doc,
    envoy_filter_variant,
    extract_plugin_wasm,
    http_filter_names,
    loopback,
    plugin_config_of,
    sidecar_bootstrap,
    wasm_filters,
    wasm_plugin_docs,
    wasm_plugin_variant,
)
from deploy_schemas import ISTIO_CRDS, ROOT, istio_errors, load_documents
from support import Collector, Gateway, Tenant, assert_openai_error, poll

import stack

SHARED_BUNDLE = ROOT.parent / "shared" / "vendor" / "istio" / "crd-all.gen.yaml"
OCI_SCRIPT = ROOT / "deploy" / "images" / "filter_oci_layout.py"
WASM_FILTER = "envoy.filters.http.wasm"
BUFFER = "envoy.filters.http.buffer"


def manifests() -> dict[str, dict]:
    return {
        f"{path.name} {doc['kind']}/{doc['metadata']['name']}": doc
        for path in sorted(ISTIO.glob("*.yaml"))
        for doc in load_documents(path)
    }


# ---------------------------------------------------------------------------------------------
# Against Istio's CRD schemas


def test_the_vendored_crds_are_istios():
    if not SHARED_BUNDLE.is_file():
        pytest.skip(f"{SHARED_BUNDLE} is not here to compare with")
    bundle = SHARED_BUNDLE.read_text()
    for document in ISTIO_CRDS.read_text().split("\n---\n"):
        assert document.strip() in bundle, "envoy/istio/vendor/istio-crds.yaml was edited"


@pytest.mark.parametrize("name", sorted(manifests()))
def test_manifest_is_valid_against_its_crd(name):
    errors = istio_errors(manifests()[name])
    assert not errors, f"{name}:\n" + "\n".join(errors)


def test_the_crd_check_is_strict():
    plugin, buffer = wasm_plugin_docs()
    plugin = copy.deepcopy(plugin)
    plugin["spec"]["imagePulPolicy"] = plugin["spec"].pop("imagePullPolicy")
    plugin["spec"]["phase"] = "AUTHENTICATION"
    plugin["spec"]["url"] = "ftp://registry.example.com/filter:1"
    errors = " ".join(istio_errors(plugin))
    assert "'imagePulPolicy' was unexpected" in errors
    assert "'AUTHENTICATION' is not one of" in errors
    assert "url must have schema one of" in errors

    buffer = copy.deepcopy(buffer)
    buffer["spec"]["configPatches"][0]["applyTo"] = "HTTP_FILTERS"
    assert "'HTTP_FILTERS' is not one of" in " ".join(istio_errors(buffer))


def test_the_manifests_select_the_model_server_only():
    plugin, buffer = wasm_plugin_docs()
    assert plugin["spec"]["selector"]["matchLabels"] == MODEL_LABELS
    for envoy_filter in (envoy_filter_doc(), buffer):
        assert envoy_filter["spec"]["workloadSelector"]["labels"] == MODEL_LABELS
    assert plugin["spec"]["phase"] == "AUTHN"
    assert plugin["spec"]["failStrategy"] == "FAIL_CLOSE"
    assert plugin["spec"]["url"].startswith("oci://")
    assert plugin["spec"]["imagePullPolicy"] in ("IfNotPresent", "Always")


# ---------------------------------------------------------------------------------------------
# The Envoy configuration they produce


def test_the_envoy_filter_puts_the_filter_then_the_buffer_before_the_router():
    bootstrap = envoy_filter_variant(FILTER_WASM)
    [names] = http_filter_names(bootstrap)
    assert names[-3:] == ["inference-gate", BUFFER, ROUTER]
    [config] = wasm_filters(bootstrap)
    assert config["fail_open"] is False

    [hcm] = connection_managers(bootstrap)
    assert hcm["normalize_path"] and hcm["merge_slashes"]
    assert hcm["path_with_escaped_slashes_action"] == "UNESCAPE_AND_FORWARD"
    assert hcm["common_http_protocol_options"]["headers_with_underscores_action"] == "DROP_HEADER"

    # The collector cluster the plugin sends to is the one the manifest adds.
    collector = plugin_config_of(bootstrap)["collector"]["cluster"]
    assert collector in clusters(bootstrap)
    assert clusters(bootstrap)[collector]["connect_timeout"] in ("0.5s", "1s")


def test_the_wasm_plugin_goes_in_its_phase_and_the_buffer_before_the_router():
    bootstrap = wasm_plugin_variant(FILTER_WASM)
    [names] = http_filter_names(bootstrap)
    plugin, _ = wasm_plugin_docs()
    wasm_name = f"{plugin['metadata']['namespace']}.{plugin['metadata']['name']}"
    # AUTHN: before Istio's authorization (RBAC); the buffer after it, at the router.
    assert names.index(wasm_name) < names.index("envoy.filters.http.rbac")
    assert names[-2:] == [BUFFER, ROUTER]
    [config] = wasm_filters(bootstrap)
    assert config["failure_policy"] == "FAIL_CLOSED"
    assert config["root_id"] == "inference-gate"
    collector = plugin_config_of(bootstrap)["collector"]["cluster"]
    assert collector == COLLECTOR_SERVICE_CLUSTER and collector in clusters(bootstrap)


def test_the_manifests_leave_other_workloads_alone():
    other = {"app": "billing-ui"}
    untouched = sidecar_bootstrap()
    bootstrap = sidecar_bootstrap()
    assert not any(apply_envoy_filter(bootstrap, envoy_filter_doc(), other).values())
    plugin, buffer = wasm_plugin_docs()
    assert apply_wasm_plugin(bootstrap, plugin, other, FILTER_WASM) == 0
    assert not any(apply_envoy_filter(bootstrap, buffer, other).values())
    assert bootstrap == untouched


def envoy_validate(config: dict, path: Path) -> subprocess.CompletedProcess:
    stack.write_envoy_config(path, config)
    return subprocess.run(
        [str(ENVOY_BIN), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def image_wasm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The filter as Istio's agent gets it: out of the OCI image `make oci-filter` builds."""
    work = tmp_path_factory.mktemp("image")
    result = subprocess.run(
        [sys.executable, str(OCI_SCRIPT), "--wasm", str(FILTER_WASM), "--out", str(work / "oci")]
        + ["--tag", "test"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    wasm = work / "plugin.wasm"
    wasm.write_bytes(extract_plugin_wasm(work / "oci", "test"))
    return wasm


@pytest.fixture(params=["envoyfilter", "wasmplugin"])
def variant(request, image_wasm) -> tuple[str, dict]:
    if request.param == "envoyfilter":
        return request.param, envoy_filter_variant(FILTER_WASM.resolve())
    return request.param, wasm_plugin_variant(image_wasm)


def test_the_produced_config_loads_in_envoy(variant, tmp_path):
    # Validation loads the filter with its plugin configuration, which it must accept.
    name, config = variant
    result = envoy_validate(config, tmp_path / f"{name}.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_refuses_a_wasm_plugin_with_a_misspelt_field(image_wasm, tmp_path):
    plugin, buffer = wasm_plugin_docs()
    plugin["spec"]["pluginConfig"]["collector"]["flush_interval"] = 500
    bootstrap = sidecar_bootstrap()
    apply_wasm_plugin(bootstrap, plugin, MODEL_LABELS, image_wasm)
    result = envoy_validate(bootstrap, tmp_path / "bad.yaml")
    assert result.returncode != 0
    assert "flush_interval" in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# Serving through it


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory):
    """The collector and the demo model, for both variants."""
    work = tmp_path_factory.mktemp("istio-backends")
    collector_port, model_port = stack.free_ports(2)
    tokens = {
        "COLLECTOR_ADMIN_TOKEN": "admin-" + secrets.token_hex(12),
        "COLLECTOR_INGEST_TOKEN": "ingest-" + secrets.token_hex(12),
    }
    collector = stack.Child(
        "collector",
        [COLLECTOR_BIN, "serve", "--listen", f"127.0.0.1:{collector_port}"]
        + ["--database", work / "collector.db"],
        env=tokens,
        log_path=work / "collector.log",
    )
    model = stack.Child(
        "demo-model",
        [DEMO_MODEL_BIN, "--listen", f"127.0.0.1:{model_port}"],
        log_path=work / "demo-model.log",
    )
    children = [collector, model]
    try:
        for child in children:
            child.start()
        stack.wait_until(
            lambda: stack.answers(f"http://127.0.0.1:{collector_port}/healthz"),
            what="the collector",
            timeout=30,
            watch=children,
        )
        stack.wait_until(
            lambda: stack.answers(f"http://127.0.0.1:{model_port}/v1/models"),
            what="the demo model",
            timeout=30,
            watch=children,
        )
        yield {
            "collector_port": collector_port,
            "model_port": model_port,
            "ingest_token": tokens["COLLECTOR_INGEST_TOKEN"],
            "collector": Collector(
                f"http://127.0.0.1:{collector_port}", tokens["COLLECTOR_ADMIN_TOKEN"]
            ),
        }
    finally:
        for child in reversed(children):
            child.stop()


def with_test_tenant(bootstrap: dict, tenant: Tenant, ingest_token: str) -> dict:
    """The manifest's plugin configuration plus a tenant whose key the test knows, and the
    collector's real ingest token instead of the placeholder."""
    config = copy.deepcopy(bootstrap)
    [wasm] = wasm_filters(config)
    plugin = json.loads(wasm["configuration"]["value"])
    plugin["tenants"].append(tenant.plugin_entry())
    plugin["collector"]["ingest_token"] = ingest_token
    wasm["configuration"]["value"] = json.dumps(plugin)
    return config


def test_a_request_goes_through_the_filter_to_the_model(variant, backends, tmp_path):
    name, bootstrap = variant
    tenant = Tenant(f"istio-{name}", "sk-" + secrets.token_hex(16), 1000, 10_000_000)
    listener_port, admin_port = stack.free_ports(2)
    config = loopback(
        with_test_tenant(bootstrap, tenant, backends["ingest_token"]),
        listener_port=listener_port,
        admin_port=admin_port,
        model_port=backends["model_port"],
        collector_port=backends["collector_port"],
    )
    config_path = tmp_path / "envoy.yaml"
    stack.write_envoy_config(config_path, config)
    envoy = stack.Child(
        "envoy",
        [ENVOY_BIN, "-c", config_path, "--concurrency", "2", "--disable-hot-restart"]
        + ["--log-level", "warning"],
        log_path=tmp_path / "envoy.log",
    )
    gateway = Gateway(f"http://127.0.0.1:{listener_port}")
    envoy.start()
    try:
        stack.wait_until(
            lambda: stack.answers(f"{gateway.url}/healthz"),
            what=f"Envoy with the {name} configuration (GET /healthz, answered by the filter)",
            timeout=60,
            watch=[envoy],
        )

        assert_openai_error(gateway.chat(None), 401, "missing_api_key")

        sent = []
        ok = gateway.chat(tenant.key)
        assert ok.status == 200, ok
        assert ok.headers["x-ratelimit-limit-requests"] == str(tenant.rate_limit)
        sent.append(ok)
        # Normalised as the manifests ask: metered as the chat completion it is.
        disguised = gateway.request(
            "POST",
            "/v1//chat/%63ompletions",
            key=tenant.key,
            body={"model": "demo-model", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert disguised.status == 200, disguised
        sent.append(disguised)
        # A prompt ten times Istio's 32 KiB listener buffer: the buffer filter lets the
        # filter hold it whole.
        big = gateway.chat(tenant.key, "word " * 64 * 1024)
        assert big.status == 200, big
        sent.append(big)

        # The records reach the collector over the cluster the manifest names.
        records = poll(
            lambda: backends["collector"].billing(tenant.id),
            lambda got: len(got) >= len(sent),
            what=f"{len(sent)} billing records of {tenant.id}",
            timeout=20,
        )
        assert [r["api"] for r in records] == ["openai_chat"] * len(sent), records
        assert all(r["usage_source"] == "reported" for r in records), records
    except BaseException:
        print(f"--- envoy ({name}) ---\n{envoy.tail(60)}")
        raise
    finally:
        envoy.stop()


def test_the_hcm_is_the_one_patched():
    # A guard for the applier itself: a patch naming another network filter matches nothing.
    doc = envoy_filter_doc()
    doc["spec"]["configPatches"][0]["match"]["listener"]["filterChain"]["filter"]["name"] = (
        "envoy.filters.network.tcp_proxy"
    )
    applied = apply_envoy_filter(sidecar_bootstrap(), doc, MODEL_LABELS)
    assert applied[0] == 0 and all(applied[i] for i in range(1, len(applied)))


def test_the_images_named_are_this_version():
    # A release bumps Cargo.toml's version: the manifests must then name the new images.
    cargo = (ROOT / "Cargo.toml").read_text()
    version = cargo.split("\n[package]", 1)[1].split('version = "', 1)[1].split('"', 1)[0]
    plugin, _ = wasm_plugin_docs()
    assert plugin["spec"]["url"].endswith(f"/filter:{version}")
    for variant in ("sqlite", "postgres"):
        [deployment] = [
            d
            for d in load_documents(ROOT / "deploy" / "kubernetes" / variant / "deployment.yaml")
            if d["kind"] == "Deployment"
        ]
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"].endswith(f"/collector:{version}"), variant
