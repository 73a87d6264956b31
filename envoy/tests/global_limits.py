"""A test bed for global mode: a throwaway Redis, the rate-limit test server (Envoy's
ShouldRateLimit over Limitador's Redis storage, `ratelimit-test-server/`), the collector, the
demo model, and Envoys with the filter in global mode, each with the shipped rate-limit
cluster (`envoy/ratelimit/cluster.yaml`) pointed at the test server.

Redis comes from Debian's `redis-server` (`apt-get install redis-server`); without it the
global-mode tests say they are skipped, unless INFERENCE_GATE_REQUIRE_REDIS=1 (CI) makes that
a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
from pathlib import Path

import yaml

import stack

ROOT = stack.ROOT
CLUSTER_TEMPLATE = ROOT / "envoy" / "ratelimit" / "cluster.yaml"
INGEST_TOKEN = "global-ingest-token-0123"
ADMIN_TOKEN = "global-admin-token-0123"
DOMAIN = "inference-gate"


class Unavailable(Exception):
    """Redis is not installed here."""


def redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise Unavailable("redis-server not found (Debian: apt-get install redis-server)")
    return path


def redis_required() -> bool:
    return os.environ.get("INFERENCE_GATE_REQUIRE_REDIS") == "1"


def limitador_limits(tenants: dict[str, tuple[int, int]]) -> str:
    """Limitador's limits file (the format of envoy/ratelimit/limitador-limits.yaml) for
    tenant id -> (requests per minute, tokens per minute)."""
    limits = [
        {
            "namespace": DOMAIN,
            "name": f"{tenant}-{kind}",
            "max_value": value,
            "seconds": 60,
            "conditions": [
                f"descriptors[0].tenant == '{tenant}'",
                f"descriptors[0].limit == '{kind}'",
            ],
            "variables": [],
        }
        for tenant, (requests, tokens) in tenants.items()
        for kind, value in (("requests", requests), ("tokens", tokens))
    ]
    return yaml.safe_dump(limits, sort_keys=False)


class Redis:
    """redis-server on a free loopback port, nothing saved to disk."""

    def __init__(self, workdir: Path) -> None:
        (self.port,) = stack.free_ports(1)
        self.child = stack.Child(
            "redis",
            [
                redis_server(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            log_path=workdir / "redis.log",
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.child.start()
        stack.wait_until(lambda: _accepts(self.port), what="redis", timeout=20, watch=[self.child])

    def stop(self) -> None:
        self.child.stop()


class RateLimitServer:
    """The test server: ShouldRateLimit over gRPC, counting in Redis with Limitador."""

    def __init__(self, binary: Path, workdir: Path, redis: Redis, limits: str) -> None:
        (self.port,) = stack.free_ports(1)
        limits_file = workdir / "limits.yaml"
        limits_file.write_text(limits)
        self.child = stack.Child(
            "ratelimit",
            [
                binary,
                "--listen",
                f"127.0.0.1:{self.port}",
                "--redis",
                redis.url,
                "--limits",
                limits_file,
            ],
            log_path=workdir / "ratelimit.log",
        )

    def start(self) -> None:
        self.child.start()
        stack.wait_until(
            lambda: _accepts(self.port),
            what="the rate-limit test server",
            timeout=20,
            watch=[self.child],
        )

    def stop(self) -> None:
        self.child.stop()


class Silent:
    """A TCP server that accepts connections and never answers: a service that hangs."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.port = self.socket.getsockname()[1]
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.held.append(connection)

    def stop(self) -> None:
        self.socket.close()
        for connection in self.held:
            connection.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def plugin_config(tenants: dict[str, tuple[str, int, int]], service: dict) -> dict:
    """Tenant id -> (key, requests per minute, tokens per minute), in global mode."""
    return {
        "tenants": [
            {
                "id": tenant,
                "api_key_sha256": [stack.sha256_hex(key)],
                "rate_limit": requests,
                "token_budget": tokens,
            }
            for tenant, (key, requests, tokens) in tenants.items()
        ],
        "collector": {
            "cluster": "collector",
            "ingest_token": INGEST_TOKEN,
            "flush_interval_ms": 200,
            "timeout_ms": 2000,
        },
        "metering": {"default_max_tokens": 64},
        "limits": {"mode": "global", "service": {"cluster": "ratelimit", **service}},
    }


class Envoy:
    """One Envoy (2 workers) with the filter, the bootstrap of envoy/envoy.yaml and the shipped
    rate-limit cluster pointed at `ratelimit_port`."""

    def __init__(
        self,
        name: str,
        bin_path: Path,
        wasm: Path,
        workdir: Path,
        *,
        plugin: dict,
        collector_port: int,
        model_port: int,
        ratelimit_port: int,
    ) -> None:
        self.listener_port, self.admin_port = stack.free_ports(2)
        workdir.mkdir(parents=True, exist_ok=True)
        ports = stack.Ports(
            listener=self.listener_port,
            admin=self.admin_port,
            collector=collector_port,
            model=model_port,
        )
        config = stack.render_envoy_config(ports=ports, plugin_config=plugin, wasm_path=wasm)
        cluster = yaml.safe_load(CLUSTER_TEMPLATE.read_text())
        cluster["type"] = "STATIC"
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"] = {
            "address": "127.0.0.1",
            "port_value": ratelimit_port,
        }
        config["static_resources"]["clusters"].append(cluster)
        stack.write_envoy_config(workdir / "envoy.yaml", config)
        self.child = stack.Child(
            name,
            [
                bin_path,
                "-c",
                workdir / "envoy.yaml",
                "--concurrency",
                "2",
                "--disable-hot-restart",
                "--log-level",
                "warning",
                "--component-log-level",
                "wasm:info",
            ],
            log_path=workdir / "envoy.log",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener_port}"

    def start(self) -> None:
        self.child.start()

    def wait(self) -> None:
        stack.wait_until(
            lambda: stack.answers(f"{self.url}/healthz"),
            what=f"{self.child.name} with the filter",
            timeout=60,
            watch=[self.child],
        )

    def stop(self) -> None:
        self.child.stop()

    def gate(self) -> dict[str, int]:
        """The filter's own stats, without the `wasmcustom.inference_gate.` prefix."""
        status, _, body = stack.http_request(
            "GET", f"http://127.0.0.1:{self.admin_port}/stats?filter=inference_gate"
        )
        assert status == 200, body
        prefix = "wasmcustom.inference_gate."
        values = {}
        for line in body.decode().splitlines():
            name, _, value = line.partition(": ")
            if name.startswith(prefix) and re.fullmatch(r"\d+", value.strip()):
                values[name[len(prefix) :]] = int(value)
        return values
