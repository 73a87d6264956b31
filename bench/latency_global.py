"""Section `global-limits` of `make bench`: what global mode adds to each request's latency.

Two Envoys with the release build of the filter in front of the same demo model: one in local
mode, one in global mode asking the rate-limit test server (Limitador's Redis storage on a
throwaway Redis, `ratelimit-test-server/`) over loopback. One client sends chat completions one
after another on a kept-alive connection, taking turns between the two Envoys round by round;
the figures are the latencies it saw. Generous limits: every request is admitted, so global
mode makes its two calls each time.
"""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "envoy" / "tests"))

import global_limits as gl  # noqa: E402

import stack  # noqa: E402

BUILD_TIMEOUT = 1800
TENANT = "bench"
KEY = "sk-bench-global-0123456789abcdef"
BODY = json.dumps(
    {
        "model": "demo-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
    }
).encode()


def section(ctx, machine: Callable[[object, dict[str, str]], str]) -> str:
    # Built here, so that the figures are those of the code in the tree; not through
    # ctx.run, whose timeout is shorter than a first release build of the test server.
    subprocess.run(
        ["cargo", "build", "--quiet", "--release", "-p", "collector", "-p", "demo-model"]
        + ["-p", "ratelimit-test-server"],
        cwd=ROOT,
        check=True,
        timeout=BUILD_TIMEOUT,
    )
    release = ROOT / "target" / "release"
    workdir = ctx.workdir
    redis = gl.Redis(workdir)
    limits = gl.limitador_limits({TENANT: (1 << 30, 1 << 40)})
    server = gl.RateLimitServer(release / "ratelimit-test-server", workdir, redis, limits)
    collector_port, model_port = stack.free_ports(2)
    collector = stack.Child(
        "collector",
        [
            release / "collector",
            "serve",
            "--listen",
            f"127.0.0.1:{collector_port}",
            "--database",
            workdir / "collector.db",
        ],
        env={"COLLECTOR_ADMIN_TOKEN": gl.ADMIN_TOKEN, "COLLECTOR_INGEST_TOKEN": gl.INGEST_TOKEN},
        log_path=workdir / "collector.log",
    )
    model = stack.Child(
        "demo-model",
        [release / "demo-model", "--listen", f"127.0.0.1:{model_port}"],
        log_path=workdir / "demo-model.log",
    )
    tenants = {TENANT: (KEY, 1 << 30, 1 << 40)}
    service = {"timeout_ms": 1000, "failure_mode": "deny"}
    envoys = {}
    for mode in ("local", "global"):
        plugin = gl.plugin_config(tenants, service)
        if mode == "local":
            plugin["limits"] = {"mode": "local"}
        envoys[mode] = gl.Envoy(
            f"envoy-{mode}",
            ROOT / ".venv" / "bin" / "envoy",
            stack.DEFAULT_WASM,
            workdir / mode,
            plugin=plugin,
            collector_port=collector_port,
            model_port=model_port,
            ratelimit_port=server.port,
        )

    children = [redis, server, collector, model, *envoys.values()]
    latencies: dict[str, list[float]] = {"local": [], "global": []}
    try:
        redis.start()
        server.start()
        collector.start()
        model.start()
        for envoy in envoys.values():
            envoy.start()
        for envoy in envoys.values():
            envoy.wait()
        for envoy in envoys.values():
            measure(envoy.listener_port, 1.0)  # warm up: connections, JIT of the Wasm
        for _ in range(ctx.rounds):
            for mode, envoy in envoys.items():
                latencies[mode] += measure(envoy.listener_port, ctx.seconds)
        failures = envoys["global"].gate().get("limits.global_failures", 0)
    finally:
        for child in reversed(children):
            child.stop()

    def ms(values: list[float], q: int) -> float:
        """The q-th percentile, in milliseconds."""
        return statistics.quantiles(values, n=100)[q - 1] * 1000

    rows = []
    for mode in ("local", "global"):
        values = latencies[mode]
        rows.append(
            f"| {mode} | {len(values):,} | {statistics.median(values) * 1000:.2f} "
            f"| {ms(values, 90):.2f} | {ms(values, 99):.2f} |"
        )
    added = (statistics.median(latencies["global"]) - statistics.median(latencies["local"])) * 1000
    added_p99 = ms(latencies["global"], 99) - ms(latencies["local"], 99)
    print(f"  global mode adds {added:.2f} ms at the median, {added_p99:.2f} ms at p99", flush=True)
    return "\n".join(
        [
            "## Global mode: added latency per request",
            "",
            "What asking the fleet-wide rate-limit service adds to a request: chat completions "
            "sent one after another by one client on a kept-alive connection to an Envoy with "
            "the filter in local mode, and to one in global mode whose rate-limit service is "
            "the test server (`ratelimit-test-server`, release build: ShouldRateLimit over "
            "gRPC, Limitador's Redis storage) with a throwaway Redis, all on loopback; the same "
            "demo model behind both. Every request is admitted, so each one in global mode "
            f"waits for its two calls. {ctx.rounds} rounds of {ctx.seconds:g} s per mode, "
            "taking turns; latencies in milliseconds, as the client saw them.",
            "",
            "| mode | requests | median | p90 | p99 |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
            f"Global mode adds **{added:.2f} ms** per request at the median "
            f"({added_p99:.2f} ms at p99), with the service on the same machine; over a "
            "network, add its round trip. Calls that failed: "
            f"{failures} (any would have been refused: `failure_mode: deny`).",
            "",
            machine(ctx, {"Envoy": envoy_version(ctx), "Redis": redis_version(ctx)}),
        ]
    )


def measure(port: int, seconds: float) -> list[float]:
    """Latencies of requests sent one after another for `seconds`."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    out = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            connection.request("POST", "/v1/chat/completions", body=BODY, headers=headers)
            response = connection.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200:
                raise RuntimeError(f"the bench request got {response.status}")
            out.append(elapsed)
    finally:
        connection.close()
    return out


def envoy_version(ctx) -> str:
    text = ctx.run([ROOT / ".venv" / "bin" / "envoy", "--version"]).strip()
    return text.split("version:", 1)[-1].strip().split("/")[1] if "/" in text else text


def redis_version(ctx) -> str:
    return ctx.run([gl.redis_server(), "--version"]).split()[2].removeprefix("v=")
