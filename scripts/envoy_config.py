"""The stack's configuration: ports, the upstream, the plugin configuration, and the Envoy
configuration rendered from `envoy/envoy.yaml` for them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from processes import StackError, free_ports

ROOT = Path(__file__).resolve().parent.parent
ENVOY_TEMPLATE = ROOT / "envoy" / "envoy.yaml"
DEMO_PLUGIN_CONFIG = ROOT / "envoy" / "demo-plugin.json"
DEFAULT_WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "inference_gate.wasm"

# Demo values: for trying the gateway on one machine only, never for production.
DEMO_ADMIN_TOKEN = "demo-admin-token"
DEMO_INGEST_TOKEN = "demo-ingest-token"
DEMO_KEYS = {"acme": "demo-acme-key", "globex": "demo-globex-key"}

LISTENER_NAME = "inference"
INFERENCE_CLUSTER = "inference"
WASM_FILTER = "envoy.filters.http.wasm"
HCM_FILTER = "envoy.filters.network.http_connection_manager"


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Ports and the upstream


@dataclass(frozen=True)
class Ports:
    """Where each part listens; the defaults are the fixed ports of DESIGN.md's `make run`."""

    listener: int = 10000
    admin: int = 9901
    collector: int = 9000
    model: int = 8000

    @classmethod
    def free(cls) -> Ports:
        """Four loopback ports free right now (the tests' way to never meet `make run`)."""
        return cls(*free_ports(4))


@dataclass(frozen=True)
class Upstream:
    """The model server Envoy sends inference traffic to: an IP address or a host name, a port."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Upstream:
        """`host:port`, `[v6]:port` or `http://host:port`."""
        spec = text.strip()
        if spec.startswith("http://"):
            spec = spec[len("http://") :].rstrip("/")
        elif "://" in spec:
            raise StackError(f"upstream {text!r}: only plain http://host:port is supported")
        if "/" in spec:
            raise StackError(f"upstream {text!r}: give host:port, without a path")

        if spec.startswith("["):
            host, sep, port = spec[1:].partition("]:")
        else:
            host, sep, port = spec.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise StackError(f"upstream {text!r}: expected host:port, e.g. 127.0.0.1:8001")
        return cls(host, int(port))

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


# ---------------------------------------------------------------------------------------------
# The plugin configuration and the Envoy configuration


def load_plugin_config(path: str | os.PathLike) -> dict:
    try:
        config = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise StackError(f"plugin configuration {path}: no such file") from None
    except json.JSONDecodeError as err:
        raise StackError(f"plugin configuration {path}: not JSON: {err}") from None
    if not isinstance(config, dict):
        raise StackError(f"plugin configuration {path}: expected a JSON object")
    return config


def collector_settings(plugin_config: dict) -> tuple[str, str]:
    """The collector cluster name and ingest token the plugin configuration names."""
    collector = plugin_config.get("collector")
    if not isinstance(collector, dict):
        raise StackError("plugin configuration: `collector` (an object) is required")
    cluster, token = collector.get("cluster"), collector.get("ingest_token")
    if not isinstance(cluster, str) or not cluster:
        raise StackError("plugin configuration: `collector.cluster` is required")
    if not isinstance(token, str) or not token:
        raise StackError("plugin configuration: `collector.ingest_token` is required")
    if cluster == INFERENCE_CLUSTER:
        raise StackError(
            f"plugin configuration: `collector.cluster` cannot be {INFERENCE_CLUSTER!r}, "
            "the name of the model server's cluster"
        )
    return cluster, token


def render_envoy_config(
    *,
    ports: Ports,
    plugin_config: dict,
    upstream: Upstream | None = None,
    wasm_path: str | os.PathLike = DEFAULT_WASM,
    template: str | os.PathLike = ENVOY_TEMPLATE,
) -> dict:
    """`envoy/envoy.yaml` with the given ports, upstream, plugin configuration and filter.

    Without an upstream the inference cluster points at the demo model on `ports.model`. The
    collector cluster takes the name the plugin configuration gives it.
    """
    config = yaml.safe_load(Path(template).read_text())
    collector_cluster, _ = collector_settings(plugin_config)

    _socket_address(config["admin"]["address"])["port_value"] = ports.admin

    listener = _named(config["static_resources"]["listeners"], LISTENER_NAME, "listener")
    _socket_address(listener["address"])["port_value"] = ports.listener

    wasm = wasm_plugin(listener)
    wasm["vm_config"]["code"]["local"]["filename"] = str(Path(wasm_path).resolve())
    wasm["configuration"]["value"] = json.dumps(plugin_config, indent=2)

    clusters = config["static_resources"]["clusters"]
    inference = _named(clusters, INFERENCE_CLUSTER, "cluster")
    _point_cluster(inference, upstream or Upstream("127.0.0.1", ports.model))

    collector = _named(clusters, "collector", "cluster")
    collector["name"] = collector["load_assignment"]["cluster_name"] = collector_cluster
    _point_cluster(collector, Upstream("127.0.0.1", ports.collector))
    return config


def write_envoy_config(path: str | os.PathLike, config: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # It holds the ingest token: readable by its owner only, from the moment it exists.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def _named(items: list[dict], name: str, what: str) -> dict:
    for item in items:
        if item.get("name") == name:
            return item
    raise StackError(f"{ENVOY_TEMPLATE}: no {what} named {name!r}")


def _socket_address(address: dict) -> dict:
    return address["socket_address"]


def wasm_plugin(listener: dict) -> dict:
    for chain in listener["filter_chains"]:
        for network_filter in chain["filters"]:
            if network_filter["name"] != HCM_FILTER:
                continue
            for http_filter in network_filter["typed_config"]["http_filters"]:
                if http_filter["name"] == WASM_FILTER:
                    return http_filter["typed_config"]["config"]
    raise StackError(f"{ENVOY_TEMPLATE}: no {WASM_FILTER} filter on the listener")


def _point_cluster(cluster: dict, upstream: Upstream) -> None:
    # An address is used as it is; a name is resolved by Envoy, IPv4 first (a `localhost`
    # server often listens on 127.0.0.1 only).
    if upstream.is_ip:
        cluster["type"] = "STATIC"
        cluster.pop("dns_lookup_family", None)
    else:
        cluster["type"] = "STRICT_DNS"
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"] = {
        "socket_address": {"address": upstream.host, "port_value": upstream.port}
    }
