"""`make run`'s launcher (scripts/run.py) itself, on free ports so it never meets a real
`make run`: it starts the stack, prints what a user needs, serves, and stops cleanly."""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import COLLECTOR_BIN, DEMO_MODEL_BIN, ENVOY_BIN, FILTER_WASM, ROOT
from support import Collector, Gateway, poll

import stack

READY = "inference-gate is up"


class Launcher:
    def __init__(self, tmp_path: Path, ports: stack.Ports, *extra: str) -> None:
        self.ports = ports
        argv = [
            sys.executable,
            str(ROOT / "scripts" / "run.py"),
            "--listen-port",
            str(ports.listener),
            "--admin-port",
            str(ports.admin),
            "--collector-port",
            str(ports.collector),
            "--model-port",
            str(ports.model),
            "--data-dir",
            str(tmp_path / "data"),
            "--envoy",
            str(ENVOY_BIN),
            "--collector-bin",
            str(COLLECTOR_BIN),
            "--demo-model-bin",
            str(DEMO_MODEL_BIN),
            "--wasm",
            str(FILTER_WASM),
            *extra,
        ]
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line)
        self._queue.put(None)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if any(text in line for line in self.lines):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line with {text!r} within {timeout:.0f}s:\n{self.tail()}")
            try:
                if self._queue.get(timeout=remaining) is None:
                    raise AssertionError(f"the launcher exited before {text!r}:\n{self.tail()}")
            except queue.Empty:
                pass

    def tail(self, count: int = 60) -> str:
        return "\n".join(self.lines[-count:])

    def pid_of(self, name: str) -> int:
        match = re.search(rf"\b{re.escape(name)} pid (\d+)", self.output)
        assert match, f"no pid of {name} in the banner:\n{self.tail()}"
        return int(match.group(1))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def launch(tmp_path):
    started: list[Launcher] = []

    def start(*extra: str, ports: stack.Ports | None = None) -> Launcher:
        launcher = Launcher(tmp_path, ports or stack.Ports.free(), *extra)
        started.append(launcher)
        return launcher

    yield start
    for launcher in started:
        launcher.stop()


def ports_closed(*ports: int) -> bool:
    return not any(stack.port_in_use(port) for port in ports)


def test_launcher_runs_the_demo_and_stops_on_ctrl_c(launch):
    launcher = launch()
    launcher.wait_for_line(READY)
    ports = launcher.ports
    gateway = Gateway(f"http://127.0.0.1:{ports.listener}")

    # What it prints: the demo tenants, a ready curl line, the usage line, the SDK example.
    out = launcher.output
    assert re.search(r"acme\s+key demo-acme-key\s+60 requests/min, 20000 tokens/min", out), out
    assert re.search(r"globex\s+key demo-globex-key\s+5 requests/min, 2000 tokens/min", out), out
    assert f"curl -i http://127.0.0.1:{ports.listener}/v1/chat/completions" in out
    assert "/v1/usage?tenant_id=acme" in out and "Bearer demo-admin-token" in out
    assert (
        f'OpenAI(base_url="http://127.0.0.1:{ports.listener}/v1", api_key="demo-acme-key")' in out
    )

    # The printed curl line works as printed.
    curl = next(line.strip() for line in launcher.lines if line.strip().startswith("curl -i "))
    result = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=30)
    if result.returncode == 127:
        response = gateway.chat("demo-acme-key")
        assert response.status == 200, response
        assert response.headers["x-ratelimit-limit-requests"] == "60"
    else:
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("HTTP/1.1 200"), result.stdout
        assert "x-ratelimit-limit-requests: 60" in result.stdout.lower()

    assert gateway.chat("wrong-key").status == 401
    collector = Collector(f"http://127.0.0.1:{ports.collector}", stack.DEMO_ADMIN_TOKEN)
    poll(
        lambda: collector.usage("acme"),
        lambda u: u["requests"] == 1,
        what="acme's request in /v1/usage",
        timeout=10,
    )
    launcher.wait_for_line("[demo-model] POST /v1/chat/completions tenant=acme", timeout=5)

    launcher.process.send_signal(signal.SIGINT)
    assert launcher.process.wait(30) == 0, launcher.tail()
    assert "stopped." in launcher.output
    assert ports_closed(ports.listener, ports.admin, ports.collector, ports.model)


def test_launcher_with_upstream_and_plugin_config_stops_all_when_one_exits(launch, tmp_path):
    # The user's own model server (here a demo model the test runs itself) and the user's own
    # plugin configuration, with its own key, ingest token and collector cluster name.
    key, ingest_token = "sk-mine-" + secrets.token_hex(8), "ingest-" + secrets.token_hex(8)
    plugin = {
        "tenants": [
            {
                "id": "mine",
                "api_key_sha256": stack.sha256_hex(key),
                "rate_limit": 10,
                "token_budget": 10000,
            }
        ],
        "collector": {"cluster": "records", "ingest_token": ingest_token, "flush_interval_ms": 200},
    }
    plugin_path = tmp_path / "plugin.json"
    plugin_path.write_text(json.dumps(plugin))

    model_port = stack.free_ports(1)[0]
    model = stack.Child(
        "my-model",
        [DEMO_MODEL_BIN, "--listen", f"127.0.0.1:{model_port}"],
        log_path=tmp_path / "my-model.log",
    )
    model.start()
    try:
        stack.wait_until(
            lambda: stack.answers(f"http://127.0.0.1:{model_port}/v1/models"),
            what="the test's model server",
            timeout=30,
            watch=[model],
        )
        # A host name, not an address: Envoy resolves it (STRICT_DNS).
        launcher = launch(
            "--upstream", f"localhost:{model_port}", "--plugin-config", str(plugin_path)
        )
        launcher.wait_for_line(READY)
        out = launcher.output
        assert "(your upstream)" in out
        assert "demo-model pid" not in out, "no demo model with an upstream"
        assert re.search(r"mine\s+key \(yours\)\s+10 requests/min", out), out
        assert "Bearer YOUR-API-KEY" in out

        ports = launcher.ports
        response = Gateway(f"http://127.0.0.1:{ports.listener}").chat(key)
        assert response.status == 200, response
        # The model's output is read by a thread: give its line a moment to arrive.
        poll(
            model.output,
            lambda out: f"tenant=mine request_id={response.request_id}" in out,
            what="the request in the model's output",
            timeout=5,
        )

        # The collector was given the plugin's ingest token, so the records get in.
        collector = Collector(f"http://127.0.0.1:{ports.collector}", stack.DEMO_ADMIN_TOKEN)
        poll(
            lambda: collector.usage("mine"),
            lambda u: u["requests"] == 1,
            what="the request in /v1/usage",
            timeout=10,
        )

        # Envoy dies: the launcher says so, stops the collector and exits non-zero.
        os.kill(launcher.pid_of("envoy"), signal.SIGKILL)
        assert launcher.process.wait(30) != 0
        assert "envoy exited unexpectedly" in launcher.output, launcher.tail()
        assert ports_closed(ports.listener, ports.admin, ports.collector)
    finally:
        model.stop()
