"""A test bed for the fault tests: the real collector (SQLite or PostgreSQL), the demo model, and
Envoys with the filter whose collector cluster points at a fault-injecting proxy in front of the
collector. Plus steady traffic, Envoy's stats, and the exactly-once check.

The proxy is test code only: the collector has no fault switch. It passes requests through,
or answers `500` without asking the collector (`fail`), or asks the collector and answers `500`
all the same (`fail_after`: the batch is stored, the filter believes it is not, and resends it).
It remembers the id of every record in a batch the collector acknowledged, so a test can check
that nothing acknowledged is missing.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml
from support import CHAT, MODEL, poll

import stack

INGEST_TOKEN = "fault-ingest-token-0123"
ADMIN_TOKEN = "fault-admin-token-0123"


# ---------------------------------------------------------------------------------------------
# The fault-injecting proxy


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.acked_ids: set[str] = set()
        self.answered: Counter[int] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, answer = proxy._handle(
                    self.command, self.path, dict(self.headers.items()), body
                )
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        ingest = method == "POST" and path.startswith("/v1/records")
        mode = self.mode
        if ingest and mode == "fail":
            return self._answer(500, b'{"error":{"message":"injected fault","code":"fault"}}')
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=10)
            forwarded = {
                k: v for k, v in headers.items() if k.lower() not in ("connection", "host")
            }
            connection.request(method, path, body=body or None, headers=forwarded)
            response = connection.getresponse()
            answer = response.read()
            status = response.status
            content_type = response.getheader("content-type", "application/json")
            connection.close()
        except OSError:
            # The collector is down or was killed mid-request: what Envoy would answer.
            return self._answer(503, b'{"error":{"message":"collector unreachable"}}')
        if ingest and status == 200:
            ids = {record["id"] for record in json.loads(body)["records"]}
            with self._lock:
                self.acked_ids |= ids if mode != "fail_after" else set()
        if ingest and mode == "fail_after":
            return self._answer(500, b'{"error":{"message":"injected fault after storing"}}')
        return self._answer(status, answer, content_type)

    def _answer(
        self, status: int, body: bytes, content_type: str = "application/json"
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        with self._lock:
            self.answered[status] += 1
        return status, [("content-type", content_type)], body


# ---------------------------------------------------------------------------------------------
# Envoy with the filter


def fault_tenants() -> dict[str, str]:
    """Tenant id -> key; generous limits, so that only the faults decide the outcome."""
    return {name: f"sk-fault-{name}-0123456789abcdef" for name in ("steady", "kill", "flaky")}


def plugin_config(**collector: object) -> dict:
    return {
        "tenants": [
            {
                "id": tenant,
                "api_key_sha256": [stack.sha256_hex(key)],
                "rate_limit": 100_000,
                "token_budget": 100_000_000,
            }
            for tenant, key in fault_tenants().items()
        ],
        "collector": {
            "cluster": "collector",
            "ingest_token": INGEST_TOKEN,
            "flush_interval_ms": 100,
            "batch_size": 20,
            "timeout_ms": 2000,
            # Retries come back quickly once the collector does, so the tests stay short.
            "max_backoff_ms": 500,
            **collector,
        },
        "metering": {"default_max_tokens": 64},
    }


class Envoy:
    """One Envoy with the filter. With `lds`, its listener comes from a file that `reload`
    rewrites, which makes Envoy replace the listener (and the filter's configuration) live."""

    def __init__(
        self,
        bin_path: Path,
        wasm: Path,
        workdir: Path,
        *,
        plugin: dict,
        collector_port: int,
        model_port: int,
        lds: bool = False,
    ) -> None:
        self.listener_port, self.admin_port = stack.free_ports(2)
        self.wasm = wasm
        self.workdir = workdir
        self.collector_port = collector_port
        self.model_port = model_port
        self.lds_path = workdir / "lds.yaml" if lds else None
        workdir.mkdir(parents=True, exist_ok=True)

        config, listener = self._render(plugin)
        if self.lds_path is not None:
            # The node names are required by Envoy for any dynamic resource.
            config["node"] = {"id": "fault-tests", "cluster": "fault-tests"}
            config["dynamic_resources"] = {
                "lds_config": {
                    "path_config_source": {"path": str(self.lds_path)},
                    "resource_api_version": "V3",
                }
            }
            self._write_lds(listener)
        else:
            config["static_resources"]["listeners"] = [listener]
        stack.write_envoy_config(workdir / "envoy.yaml", config)
        self.child = stack.Child(
            "envoy",
            [
                bin_path,
                "-c",
                workdir / "envoy.yaml",
                "--concurrency",
                "2",
                "--disable-hot-restart",
                # A replaced listener drains for a second, not Envoy's default ten minutes.
                "--drain-time-s",
                "1",
                "--log-level",
                "warning",
                "--component-log-level",
                "wasm:info",
            ],
            log_path=workdir / "envoy.log",
        )

    def _render(self, plugin: dict, vm_configuration: str | None = None) -> tuple[dict, dict]:
        ports = stack.Ports(
            listener=self.listener_port,
            admin=self.admin_port,
            collector=self.collector_port,
            model=self.model_port,
        )
        config = stack.render_envoy_config(ports=ports, plugin_config=plugin, wasm_path=self.wasm)
        listener = config["static_resources"].pop("listeners")[0]
        if vm_configuration is not None:
            # Part of the VM's identity: a new value makes Envoy start new VMs.
            stack.wasm_plugin(listener)["vm_config"]["configuration"] = {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": vm_configuration,
            }
        return config, listener

    def _write_lds(self, listener: dict) -> None:
        assert self.lds_path is not None
        listener = {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **listener}
        # Envoy watches the file for a rename over it, so write aside and move in place.
        staging = self.lds_path.with_suffix(".tmp")
        staging.write_text(yaml.safe_dump({"resources": [listener]}, sort_keys=False))
        os.rename(staging, self.lds_path)

    def reload(self, plugin: dict, vm_configuration: str | None = None) -> None:
        """Serves a new listener configuration and waits until Envoy has applied it."""
        before = self.stats()["listener_manager.lds.update_success"]
        self._write_lds(self._render(plugin, vm_configuration)[1])
        poll(
            lambda: self.stats()["listener_manager.lds.update_success"],
            lambda n: n > before,
            what="Envoy to apply the new listener",
            timeout=20,
        )
        stack.wait_until(
            lambda: stack.answers(f"{self.url}/healthz"),
            what="the filter after the reload",
            timeout=20,
            watch=[self.child],
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> None:
        self.child.start()
        stack.wait_until(
            lambda: stack.answers(f"{self.url}/healthz"),
            what="Envoy with the filter",
            timeout=60,
            watch=[self.child],
        )

    def stop(self) -> None:
        self.child.stop()

    def stats(self) -> dict[str, int]:
        """Every counter and gauge, by name (`wasmcustom.inference_gate.*` for the filter's)."""
        status, _, body = stack.http_request("GET", f"{self.admin_url}/stats")
        assert status == 200, body
        values = {}
        for line in body.decode().splitlines():
            name, _, value = line.partition(": ")
            if re.fullmatch(r"-?\d+", value.strip()):
                values[name] = int(value)
        return values

    def gate(self) -> dict[str, int]:
        """The filter's own stats, without the `wasmcustom.inference_gate.` prefix."""
        prefix = "wasmcustom.inference_gate."
        return {k[len(prefix) :]: v for k, v in self.stats().items() if k.startswith(prefix)}

    def prometheus(self) -> str:
        status, _, body = stack.http_request("GET", f"{self.admin_url}/stats/prometheus")
        assert status == 200, body
        return body.decode()

    def chat(self, key: str, content: str = "Hello") -> tuple[int, str | None]:
        """One chat completion; the status and the request id Envoy gave it."""
        status, headers = self.chat_headers(key, content)
        return status, headers.get("x-request-id")

    def chat_headers(self, key: str, content: str = "Hello") -> tuple[int, dict[str, str]]:
        status, headers, _ = stack.http_request(
            "POST",
            self.url + CHAT,
            headers={"Authorization": f"Bearer {key}"},
            body={"model": MODEL, "messages": [{"role": "user", "content": content}]},
            timeout=30,
        )
        return status, headers


# ---------------------------------------------------------------------------------------------
# The bed: collector, model, proxy, and Envoys on demand


class Bed:
    def __init__(
        self,
        workdir: Path,
        *,
        envoy_bin: Path,
        collector_bin: Path,
        demo_model_bin: Path,
        wasm: Path,
        database: str,
    ) -> None:
        self.workdir = workdir
        self.envoy_bin = envoy_bin
        self.wasm = wasm
        self.database = database
        collector_port, model_port = stack.free_ports(2)
        self.collector_port = collector_port
        self.model_port = model_port
        self.collector = stack.Child(
            "collector",
            [
                collector_bin,
                "serve",
                "--listen",
                f"127.0.0.1:{collector_port}",
                "--database",
                database,
            ],
            env={
                "COLLECTOR_ADMIN_TOKEN": ADMIN_TOKEN,
                "COLLECTOR_INGEST_TOKEN": INGEST_TOKEN,
                "RUST_LOG": "warn",
            },
            log_path=workdir / "collector.log",
        )
        self.model = stack.Child(
            "demo-model",
            [demo_model_bin, "--listen", f"127.0.0.1:{model_port}"],
            log_path=workdir / "demo-model.log",
        )
        self.proxy = FaultProxy(collector_port)
        self.envoys: list[Envoy] = []

    @property
    def collector_url(self) -> str:
        return f"http://127.0.0.1:{self.collector_port}"

    def start(self) -> None:
        self.proxy.start()
        self.model.start()
        self.start_collector()
        stack.wait_until(
            lambda: stack.answers(f"http://127.0.0.1:{self.model_port}/v1/models"),
            what="the demo model",
            timeout=30,
            watch=[self.model],
        )

    def start_collector(self) -> None:
        self.collector.start()
        stack.wait_until(
            lambda: stack.answers(f"{self.collector_url}/healthz"),
            what="the collector",
            timeout=30,
            watch=[self.collector],
        )

    def kill_collector(self) -> None:
        """SIGKILL: no chance to finish a request or close the database."""
        assert self.collector.process is not None
        self.collector.process.kill()
        self.collector.stop()

    def envoy(self, name: str, plugin: dict, *, lds: bool = False) -> Envoy:
        envoy = Envoy(
            self.envoy_bin,
            self.wasm,
            self.workdir / name,
            plugin=plugin,
            collector_port=self.proxy.port,
            model_port=self.model_port,
            lds=lds,
        )
        self.envoys.append(envoy)
        envoy.start()
        return envoy

    def stop(self) -> None:
        for envoy in self.envoys:
            envoy.stop()
        self.collector.stop()
        self.model.stop()
        self.proxy.stop()

    def logs(self) -> str:
        children = [self.collector, self.model] + [e.child for e in self.envoys]
        return "".join(f"\n----- {c.name} -----\n{c.tail(30)}\n" for c in children)

    # The collector's view, read directly (not through the proxy).

    def get(self, path: str) -> dict:
        status, _, body = stack.http_request(
            "GET", self.collector_url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def billing(self, tenant: str) -> list[dict]:
        return self.get(f"/v1/billing?tenant_id={tenant}&limit=10000")["records"]

    def audit(self) -> list[dict]:
        return self.get("/v1/audit?limit=10000")["entries"]

    def metrics(self) -> str:
        status, _, body = stack.http_request("GET", self.collector_url + "/metrics")
        assert status == 200, body
        return body.decode()


# ---------------------------------------------------------------------------------------------
# Traffic and the exactly-once check


@dataclass
class Sent:
    """What a traffic run sent: request id -> status, and the tenant of the good requests."""

    tenant: str
    statuses: dict[str, int] = field(default_factory=dict)

    def ok(self) -> set[str]:
        return {rid for rid, status in self.statuses.items() if status == 200}

    def add(self, status: int, request_id: str | None) -> None:
        assert request_id, f"no x-request-id on a {status} answer"
        self.statuses[request_id] = status


class Traffic:
    """Steady requests from a background thread until `stop`: mostly good ones, every fifth
    with an unknown key (a 401 that is audited but not billed)."""

    def __init__(self, envoy: Envoy, tenant: str, key: str, interval: float = 0.02) -> None:
        self.envoy = envoy
        self.key = key
        self.interval = interval
        self.sent = Sent(tenant)
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                key = self.key if n % 5 else "sk-fault-nobody-0123456789"
                self.sent.add(*self.envoy.chat(key, f"steady {n}"))
                n += 1
                time.sleep(self.interval)
        except BaseException as err:  # reported by stop()
            self.errors.append(err)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self.errors, self.errors


def wait_exactly_once(bed: Bed, sent: Sent, timeout: float = 60.0) -> tuple[Counter, Counter]:
    """Waits until every request's records are stored, then checks that each request that
    succeeded has exactly one billing record and each request exactly one audit entry."""

    def counts() -> tuple[Counter, Counter]:
        billing = Counter(
            r["request_id"] for r in bed.billing(sent.tenant) if r["request_id"] in sent.statuses
        )
        audit = Counter(e["request_id"] for e in bed.audit() if e["request_id"] in sent.statuses)
        return billing, audit

    billing, audit = poll(
        counts,
        lambda c: set(c[0]) >= sent.ok() and set(c[1]) >= set(sent.statuses),
        what=f"the records of {len(sent.statuses)} requests",
        timeout=timeout,
        interval=0.5,
    )
    assert set(billing) == sent.ok(), "billing for a request that did not succeed"
    assert all(n == 1 for n in billing.values()), f"billed twice: {billing.most_common(3)}"
    assert all(n == 1 for n in audit.values()), f"audited twice: {audit.most_common(3)}"
    return billing, audit
