"""What Istio would make of the manifests in `envoy/istio/`, without Istio.

- `sidecar_bootstrap`: an Envoy configuration shaped like an Istio sidecar's inbound side: the
  `virtualInbound` listener with one filter chain per application port, its connection manager
  ending in the router, the `inbound|8000||` cluster to the application, and the cluster Istio
  builds for the collector's Kubernetes Service;
- `apply_envoy_filter`: applies an `EnvoyFilter`'s patches the way istiod does, for the
  operations the manifests use (MERGE on NETWORK_FILTER, INSERT_BEFORE / INSERT_AFTER on
  HTTP_FILTER, ADD on CLUSTER); anything else raises, so a new kind of patch cannot pass
  unchecked;
- `apply_wasm_plugin`: inserts the HTTP filter istiod derives from a `WasmPlugin` (as its
  ECDS resource, inlined here) at the position of its phase;
- `extract_plugin_wasm`: takes `plugin.wasm` out of an OCI image layout the way Istio's agent
  takes it out of a pulled image (the last layer, a gzip tar, the file named plugin.wasm);
- `envoy_filter_variant`, `wasm_plugin_variant`: the shipped manifests applied to the sidecar
  bootstrap for the model server's workload, with the filter file given;
- `loopback`: moves the listener and the clusters onto loopback ports so that the result can
  serve requests on this machine.

Matching follows istiod (pilot/pkg/networking/core/envoyfilter): the patch context, the
listener port (for the virtual inbound listener: the filter chain's destination port), the
network filter name and the HTTP filter name; patches apply in their order.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import yaml

ISTIO = Path(__file__).resolve().parents[2] / "envoy" / "istio"
HCM = "envoy.filters.network.http_connection_manager"
ROUTER = "envoy.filters.http.router"
RBAC = "envoy.filters.http.rbac"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
STRING_VALUE_TYPE = "type.googleapis.com/google.protobuf.StringValue"
VIRTUAL_INBOUND = "virtualInbound"
APP_PORT = 8000
INBOUND_CLUSTER = f"inbound|{APP_PORT}||"
COLLECTOR_HOST = "collector.inference-gate.svc.cluster.local"
COLLECTOR_SERVICE_CLUSTER = f"outbound|9000||{COLLECTOR_HOST}"
MODEL_LABELS = {"app": "model-server"}


def _typed(type_name: str, **fields) -> dict:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def sidecar_bootstrap() -> dict:
    """The inbound side of an Istio sidecar in front of a model server on port 8000.

    The HTTP filters stand for Istio's: RBAC (authorization; the AUTHN phase goes before it),
    fault and CORS, then the router. Paths are normalised as Istio's default does (no slash
    merging, escaped slashes kept); the manifests must add the rest.
    """
    hcm = _typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix=f"inbound_0.0.0.0_{APP_PORT}",
        normalize_path=True,
        route_config={
            "name": "inbound|http|8000",
            "virtual_hosts": [
                {
                    "name": "inbound|http|8000",
                    "domains": ["*"],
                    "routes": [
                        {
                            "name": "default",
                            "match": {"prefix": "/"},
                            # Istio's inbound routes have no timeout.
                            "route": {"cluster": INBOUND_CLUSTER, "timeout": "0s"},
                        }
                    ],
                }
            ],
        },
        http_filters=[
            {"name": RBAC, "typed_config": _typed("envoy.extensions.filters.http.rbac.v3.RBAC")},
            {
                "name": "envoy.filters.http.fault",
                "typed_config": _typed("envoy.extensions.filters.http.fault.v3.HTTPFault"),
            },
            {
                "name": "envoy.filters.http.cors",
                "typed_config": _typed("envoy.extensions.filters.http.cors.v3.Cors"),
            },
            {
                "name": ROUTER,
                "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
            },
        ],
    )
    return {
        "node": {"id": "sidecar~10.0.0.7~model-server-0.inference~inference.svc.cluster.local"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
        "static_resources": {
            "listeners": [
                {
                    "name": VIRTUAL_INBOUND,
                    "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
                    # Istio's default for its listeners.
                    "per_connection_buffer_limit_bytes": 32768,
                    "filter_chains": [
                        {
                            "name": f"0.0.0.0_{APP_PORT}",
                            "filter_chain_match": {"destination_port": APP_PORT},
                            "filters": [{"name": HCM, "typed_config": hcm}],
                        }
                    ],
                }
            ],
            "clusters": [
                _static_cluster(INBOUND_CLUSTER, "127.0.0.1", APP_PORT),
                # What Istio builds for the collector's Kubernetes Service.
                {
                    **_static_cluster(COLLECTOR_SERVICE_CLUSTER, COLLECTOR_HOST, 9000),
                    "type": "STRICT_DNS",
                    "connect_timeout": "10s",
                },
            ],
        },
    }


def _static_cluster(name: str, host: str, port: int) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
    }


# ---------------------------------------------------------------------------------------------
# Walking the configuration


def listeners(bootstrap: dict) -> list[dict]:
    return bootstrap["static_resources"]["listeners"]


def clusters(bootstrap: dict) -> dict[str, dict]:
    return {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}


def _context(listener: dict) -> str:
    # The bootstrap has the sidecar's inbound listener only.
    if listener["name"] != VIRTUAL_INBOUND:
        raise NotImplementedError(f"listener {listener['name']}: only {VIRTUAL_INBOUND}")
    return "SIDECAR_INBOUND"


def _chain_port(listener: dict, chain: dict) -> int | None:
    if listener["name"] == VIRTUAL_INBOUND:
        return chain.get("filter_chain_match", {}).get("destination_port")
    return listener["address"]["socket_address"]["port_value"]


def connection_managers(bootstrap: dict, port: int = APP_PORT) -> list[dict]:
    """The HCM configurations of the inbound filter chains for `port`."""
    found = []
    for listener in listeners(bootstrap):
        for chain in listener["filter_chains"]:
            if _chain_port(listener, chain) != port:
                continue
            found += [f["typed_config"] for f in chain["filters"] if f["name"] == HCM]
    return found


def http_filter_names(bootstrap: dict, port: int = APP_PORT) -> list[list[str]]:
    return [
        [f["name"] for f in hcm["http_filters"]] for hcm in connection_managers(bootstrap, port)
    ]


# ---------------------------------------------------------------------------------------------
# EnvoyFilter


class PatchError(AssertionError):
    """A patch this applier does not support, or that matched nothing."""


def selects(selector_labels: dict | None, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector_labels or {}).items())


def apply_envoy_filter(bootstrap: dict, envoy_filter: dict, labels: dict) -> dict[int, int]:
    """Applies the EnvoyFilter's patches to `bootstrap` (in place) for a proxy with `labels`.

    Returns how many places each patch (by index) changed; nothing if the filter does not
    select the proxy.
    """
    spec = envoy_filter["spec"]
    if spec.get("targetRefs"):
        raise PatchError("targetRefs (waypoints, gateways) is not simulated")
    applied = {i: 0 for i in range(len(spec["configPatches"]))}
    if not selects(spec.get("workloadSelector", {}).get("labels"), labels):
        return applied

    patches = list(enumerate(spec["configPatches"]))
    for kind in ("CLUSTER", "NETWORK_FILTER", "HTTP_FILTER"):
        for index, patch in patches:
            if patch["applyTo"] == kind:
                applied[index] += _apply_patch(bootstrap, patch)
    unknown = {p["applyTo"] for _, p in patches} - {"CLUSTER", "NETWORK_FILTER", "HTTP_FILTER"}
    if unknown:
        raise PatchError(f"applyTo {sorted(unknown)} is not simulated")
    return applied


def _apply_patch(bootstrap: dict, patch: dict) -> int:
    match, operation = patch.get("match", {}), patch["patch"]["operation"]
    value = patch["patch"].get("value")
    context = match.get("context", "ANY")

    if patch["applyTo"] == "CLUSTER":
        if operation != "ADD":
            raise PatchError(f"CLUSTER {operation} is not simulated")
        # istiod adds clusters with the outbound ones (sidecar) or the gateway's.
        if context not in ("SIDECAR_OUTBOUND", "ANY"):
            return 0
        if value["name"] in clusters(bootstrap):
            raise PatchError(f"cluster {value['name']} exists already")
        bootstrap["static_resources"]["clusters"].append(copy.deepcopy(value))
        return 1

    listener_match = match.get("listener", {})
    unsupported = set(listener_match) - {"portNumber", "filterChain", "name"}
    chain_match = listener_match.get("filterChain", {})
    unsupported |= set(chain_match) - {"filter", "name"}
    filter_match = chain_match.get("filter", {})
    unsupported |= set(filter_match) - {"name", "subFilter"}
    if unsupported:
        raise PatchError(f"match fields {sorted(unsupported)} are not simulated")

    changed = 0
    for listener in listeners(bootstrap):
        if context not in (_context(listener), "ANY"):
            continue
        if listener_match.get("name") not in (None, listener["name"]):
            continue
        for chain in listener["filter_chains"]:
            port = listener_match.get("portNumber")
            if port is not None and _chain_port(listener, chain) != port:
                continue
            if chain_match.get("name") not in (None, chain.get("name")):
                continue
            for network_filter in chain["filters"]:
                if filter_match.get("name") not in (None, network_filter["name"]):
                    continue
                changed += _patch_filter(patch, network_filter, filter_match, operation, value)
    return changed


def _patch_filter(patch, network_filter, filter_match, operation, value) -> int:
    if patch["applyTo"] == "NETWORK_FILTER":
        if operation != "MERGE":
            raise PatchError(f"NETWORK_FILTER {operation} is not simulated")
        if set(value) != {"typed_config"}:
            raise PatchError("a NETWORK_FILTER MERGE is simulated for typed_config only")
        merge_message(network_filter["typed_config"], value["typed_config"])
        return 1

    if network_filter["name"] != HCM:
        return 0
    filters = network_filter["typed_config"]["http_filters"]
    sub = filter_match.get("subFilter", {}).get("name")
    if operation not in ("INSERT_BEFORE", "INSERT_AFTER") or sub is None:
        raise PatchError(f"HTTP_FILTER {operation} (subFilter {sub}) is not simulated")
    # Like istiod: next to the first filter of that name; nothing if there is none.
    for i, http_filter in enumerate(filters):
        if http_filter["name"] == sub:
            filters.insert(i if operation == "INSERT_BEFORE" else i + 1, copy.deepcopy(value))
            return 1
    return 0


def merge_message(target: dict, patch: dict) -> None:
    """Protobuf merge, as istiod does for MERGE: fields set in `patch` replace scalars, merge
    into messages and append to lists."""
    if target.get("@type", patch.get("@type")) != patch.get("@type", target.get("@type")):
        raise PatchError(f"MERGE of {patch.get('@type')} into {target.get('@type')}")
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_message(target[key], value)
        elif isinstance(value, list) and isinstance(target.get(key), list):
            target[key].extend(copy.deepcopy(value))
        else:
            target[key] = copy.deepcopy(value)


# ---------------------------------------------------------------------------------------------
# WasmPlugin


def wasm_plugin_filter(plugin: dict, wasm_file: str | Path) -> dict:
    """The HTTP filter istiod builds for a WasmPlugin (pilot/pkg/model/extensions.go), with the
    module already fetched: Istio's agent replaces the remote code by the local file."""
    spec, meta = plugin["spec"], plugin["metadata"]
    name = f"{meta['namespace']}.{meta['name']}"
    config = {
        "name": name,
        "root_id": spec.get("pluginName", ""),
        "vm_config": {
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": str(wasm_file)}},
        },
        "failure_policy": {
            "FAIL_CLOSE": "FAIL_CLOSED",
            "FAIL_OPEN": "FAIL_OPEN",
            "FAIL_RELOAD": "FAIL_RELOAD",
        }[spec.get("failStrategy", "FAIL_CLOSE")],
    }
    if spec.get("pluginConfig"):
        # istiod: protojson of the Struct, wrapped in a StringValue.
        config["configuration"] = {
            "@type": STRING_VALUE_TYPE,
            "value": json.dumps(spec["pluginConfig"]),
        }
    return {"name": name, "typed_config": {"@type": WASM_TYPE, "config": config}}


def apply_wasm_plugin(bootstrap: dict, plugin: dict, labels: dict, wasm_file: str | Path) -> int:
    """Inserts the plugin's filter where istiod puts its phase; returns the number of
    connection managers it went into."""
    spec = plugin["spec"]
    if spec.get("type", "HTTP") != "HTTP" or spec.get("phase") != "AUTHN":
        raise PatchError("only HTTP plugins in the AUTHN phase are simulated")
    if not selects(spec.get("selector", {}).get("matchLabels"), labels):
        return 0
    ports = set()
    for match in spec.get("match", []):
        if match.get("mode") != "SERVER":
            raise PatchError(f"match mode {match.get('mode')} is not simulated")
        ports |= {p["number"] for p in match.get("ports", [])}

    inserted = 0
    for listener in listeners(bootstrap):
        _context(listener)
        for chain in listener["filter_chains"]:
            if ports and _chain_port(listener, chain) not in ports:
                continue
            for network_filter in chain["filters"]:
                if network_filter["name"] != HCM:
                    continue
                filters = network_filter["typed_config"]["http_filters"]
                # AUTHN: before Istio's authentication and authorization filters.
                at = next(i for i, f in enumerate(filters) if f["name"] in (RBAC, ROUTER))
                filters.insert(at, wasm_plugin_filter(plugin, wasm_file))
                inserted += 1
    return inserted


def extract_plugin_wasm(layout: Path, tag: str) -> bytes:
    """`plugin.wasm` from the image tagged `tag` in an OCI layout, as Istio's agent reads a
    pulled image of the compat variant (pkg/wasm/imagefetcher.go)."""

    def blob(digest: str) -> bytes:
        algorithm, hex_digest = digest.split(":")
        data = (layout / "blobs" / algorithm / hex_digest).read_bytes()
        assert hashlib.sha256(data).hexdigest() == hex_digest, f"blob {digest} is corrupt"
        return data

    index = json.loads((layout / "index.json").read_text())
    [descriptor] = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    manifest = json.loads(blob(descriptor["digest"]))
    layer = manifest["layers"][-1]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip", layer
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(layer["digest"])))) as tar:
        for member in tar:
            if Path(member.name).name == "plugin.wasm":
                extracted = tar.extractfile(member)
                assert extracted is not None
                return extracted.read()
    raise AssertionError("plugin.wasm not found in the image's last layer")


# ---------------------------------------------------------------------------------------------
# Running it here


def loopback(
    bootstrap: dict, *, listener_port: int, admin_port: int, model_port: int, collector_port: int
) -> dict:
    """A copy that listens on loopback ports and sends to local processes: the inbound
    listener on `listener_port` (its filter chain matched on that port, as a sidecar's is on
    the application port), the application cluster to the model, every other cluster to the
    collector."""
    config = copy.deepcopy(bootstrap)
    config["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=admin_port)
    for listener in listeners(config):
        listener["address"]["socket_address"].update(address="127.0.0.1", port_value=listener_port)
        for chain in listener["filter_chains"]:
            chain["filter_chain_match"]["destination_port"] = listener_port
    for name, cluster in clusters(config).items():
        port = model_port if name == INBOUND_CLUSTER else collector_port
        cluster["type"] = "STATIC"
        cluster.pop("dns_lookup_family", None)
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"].update(address="127.0.0.1", port_value=port)
    return config


def wasm_filters(bootstrap: dict) -> list[dict]:
    """The `config` of every Wasm HTTP filter in the configuration."""
    return [
        f["typed_config"]["config"]
        for hcm in connection_managers(bootstrap)
        for f in hcm["http_filters"]
        if f.get("typed_config", {}).get("@type") == WASM_TYPE
    ]


# ---------------------------------------------------------------------------------------------
# The shipped manifests, applied


def load_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def envoy_filter_doc() -> dict:
    [doc] = load_documents(ISTIO / "envoyfilter.yaml")
    return doc


def wasm_plugin_docs() -> tuple[dict, dict]:
    plugin, buffer = load_documents(ISTIO / "wasmplugin.yaml")
    assert (plugin["kind"], buffer["kind"]) == ("WasmPlugin", "EnvoyFilter")
    return plugin, buffer


def envoy_filter_variant(wasm_file: Path) -> dict:
    bootstrap = sidecar_bootstrap()
    applied = apply_envoy_filter(bootstrap, envoy_filter_doc(), MODEL_LABELS)
    assert all(applied.values()), f"patches that matched nothing: {applied}"
    [config] = wasm_filters(bootstrap)
    # Where the ConfigMap mount would put the filter.
    assert config["vm_config"]["code"]["local"]["filename"].endswith("/inference_gate.wasm")
    config["vm_config"]["code"]["local"]["filename"] = str(wasm_file)
    return bootstrap


def wasm_plugin_variant(wasm_file: Path) -> dict:
    bootstrap = sidecar_bootstrap()
    plugin, buffer = wasm_plugin_docs()
    assert apply_wasm_plugin(bootstrap, plugin, MODEL_LABELS, wasm_file) == 1
    applied = apply_envoy_filter(bootstrap, buffer, MODEL_LABELS)
    assert all(applied.values()), f"patches that matched nothing: {applied}"
    return bootstrap


def plugin_config_of(bootstrap: dict) -> dict:
    [config] = wasm_filters(bootstrap)
    return json.loads(config["configuration"]["value"])
