"""Section `registry-scale` of `make bench`: the tenant registry at 100,000 tenants.

- the snapshot's size: the JSON the collector serves, and the binary form the filter keeps in
  shared data;
- the collector's time to serve it: a new version (read from SQLite and serialised), the same
  version again (cached), and an unchanged one (`304`);
- the filter's time to take it in: natively (`examples/registry_scale.rs`: parse, encode, decode,
  build the directory, look keys up) and inside Envoy's V8, from the filter's own log lines: the
  syncer reading and publishing a snapshot, and each worker following it;
- end to end in Envoy: a change made over the API until it is in force on the gateway, and the
  latency of requests sent meanwhile (a worker rebuilding its directory serves nothing else).

The registry is filled with `collector/examples/registry_import.rs` (one transaction); the
tenants have one key each and no allow-list, like most tenants would.
"""

from __future__ import annotations

import http.client
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import stack  # noqa: E402

BUILD_TIMEOUT = 1800
TENANTS = 100_000
INGEST_TOKEN = "bench-ingest-token-0123"
ADMIN_TOKEN = "bench-admin-token-0123"
INTERVAL_MS = 1000
CHANGES = 5
RELEASE = ROOT / "target" / "release"
BODY = json.dumps(
    {"model": "demo-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
).encode()

IN_FORCE = re.compile(
    r"tenant registry version (\d+) in force: (\d+) tenants, (\d+) bytes, "
    r"read in (\d+) ms, applied in (\d+) ms"
)
FOLLOWED = re.compile(
    r"registry version (\d+) followed: (\d+) registry tenants, "
    r"read from shared data in (\d+) ms, built in (\d+) ms"
)


def key_of(i: int) -> str:
    """The throwaway key registry_import gives tenant i."""
    return f"bench-registry-key-{i}"


def tenant_of(i: int) -> str:
    return f"tenant-{i:06d}"


def section(ctx, machine: Callable[[object, dict[str, str]], str]) -> str:
    build()
    workdir = ctx.workdir
    database = workdir / "registry.db"
    imported = json.loads(
        ctx.run(
            [
                RELEASE / "examples" / "registry_import",
                "--database",
                database,
                "--tenants",
                str(TENANTS),
            ]
        )
    )
    print(f"  {TENANTS:,} tenants imported in {imported['seconds']:.1f} s", flush=True)

    serving, body = collector_serving(ctx, database)
    snapshot_path = workdir / "snapshot.json"
    snapshot_path.write_bytes(body)
    keys = [key_of(i) for i in (0, TENANTS // 2, TENANTS - 1)]
    native = json.loads(ctx.run([RELEASE / "examples" / "registry_scale", snapshot_path, *keys]))
    if native["keys_found"] != len(keys):
        raise RuntimeError(f"the native run found {native['keys_found']} of {len(keys)} keys")
    envoy = in_envoy(ctx, database)
    return markdown(ctx, machine, serving, body, native, envoy)


def build() -> None:
    # Built here, so that the figures are those of the code in the tree.
    for argv in (
        ["-p", "collector", "--bin", "collector", "--example", "registry_import"],
        ["-p", "demo-model"],
        ["-p", "inference-gate", "--example", "registry_scale"],
        ["-p", "inference-gate", "--target", "wasm32-wasip1"],
    ):
        subprocess.run(
            ["cargo", "build", "--quiet", "--release", *argv],
            cwd=ROOT,
            check=True,
            timeout=BUILD_TIMEOUT,
        )


# ---------------------------------------------------------------------------------------------
# The collector alone


def collector_serving(ctx, database: Path) -> tuple[dict[str, list[float]], bytes]:
    """Seconds to answer the snapshot, by kind, over `ctx.rounds` new versions (at least 3)."""
    port = stack.free_ports(1)[0]
    collector = stack.Child(
        "collector",
        [RELEASE / "collector", "serve", "--listen", f"127.0.0.1:{port}", "--database", database],
        env={"COLLECTOR_ADMIN_TOKEN": ADMIN_TOKEN, "COLLECTOR_INGEST_TOKEN": INGEST_TOKEN},
        log_path=ctx.workdir / "collector-alone.log",
    )
    times: dict[str, list[float]] = {"new": [], "cached": [], "unchanged": []}
    body = b""
    collector.start()
    try:
        url = f"http://127.0.0.1:{port}"
        stack.wait_until(
            lambda: stack.answers(f"{url}/healthz"),
            what="the collector",
            timeout=30,
            watch=[collector],
        )
        # The tenants the Envoy part sends many requests for: no 429 to muddle the figures.
        for i in (1, TENANTS // 2):
            patch(url, tenant_of(i), {"rate_limit": 10**9, "token_budget": 10**12})
        for round_ in range(max(ctx.rounds, 3)):
            # A change makes a new version, which the next snapshot request renders anew.
            patch(url, tenant_of(0), {"rate_limit": 600 + round_ + 1})
            seconds, status, headers, body = timed_get(port)
            assert status == 200, status
            times["new"].append(seconds)
            seconds, status, _, _ = timed_get(port)
            times["cached"].append(seconds)
            seconds, status, _, _ = timed_get(port, {"If-None-Match": headers["etag"]})
            assert status == 304, status
            times["unchanged"].append(seconds)
    finally:
        collector.stop()
    return times, body


def timed_get(port: int, extra: dict[str, str] | None = None):
    """One snapshot request on a new connection, read to its last byte."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {INGEST_TOKEN}", **(extra or {})}
    try:
        started = time.perf_counter()
        connection.request("GET", "/v1/tenants/snapshot", headers=headers)
        response = connection.getresponse()
        body = response.read()
        seconds = time.perf_counter() - started
        return seconds, response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


def patch(url: str, tenant: str, fields: dict) -> None:
    status, _, body = stack.http_request(
        "PATCH",
        f"{url}/v1/tenants/{tenant}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        body=fields,
    )
    if status != 200:
        raise RuntimeError(f"PATCH {tenant}: {status} {body[:200]!r}")


# ---------------------------------------------------------------------------------------------
# Envoy with the filter, following the registry


def in_envoy(ctx, database: Path) -> dict:
    plugin = {
        "tenants": [],
        "collector": {"cluster": "collector", "ingest_token": INGEST_TOKEN},
        "registry": {"interval_ms": INTERVAL_MS, "timeout_ms": 10_000},
    }
    gate = stack.Stack(
        workdir=ctx.workdir / "stack",
        plugin_config=plugin,
        ports=stack.Ports.free(),
        envoy_bin=ROOT / ".venv" / "bin" / "envoy",
        collector_bin=RELEASE / "collector",
        demo_model_bin=RELEASE / "demo-model",
        database=database,
        admin_token=ADMIN_TOKEN,
        concurrency=2,
        # The workers' "followed" lines are at debug.
        envoy_args=["--log-level", "warning", "--component-log-level", "wasm:debug"],
    )
    gate.start(timeout=60)
    try:
        started = time.monotonic()
        wait_status(gate, key_of(TENANTS - 1), 200, timeout=60)
        first = time.monotonic() - started

        # Requests of another tenant all along: a worker that rebuilds its directory serves
        # nothing meanwhile.
        quiet = stream(gate, key_of(1), seconds=ctx.seconds)
        changes: list[float] = []
        loaded: list[float] = []
        stop = threading.Event()
        thread = threading.Thread(target=lambda: loaded.extend(stream(gate, key_of(1), stop=stop)))
        thread.start()
        try:
            for n in range(CHANGES):
                suspend = n % 2 == 0
                changed = time.monotonic()
                patch(gate.collector_url, tenant_of(TENANTS // 2), {"suspended": suspend})
                wait_status(gate, key_of(TENANTS // 2), 403 if suspend else 200, timeout=30)
                changes.append(time.monotonic() - changed)
                # Past the next poll, so that each change is a version of its own.
                time.sleep(INTERVAL_MS / 1000 + 0.5)
        finally:
            stop.set()
            thread.join(timeout=30)
        log = gate.envoy.output()
    finally:
        gate.stop()

    in_force = [tuple(map(int, m)) for m in IN_FORCE.findall(log)]
    followed = [tuple(map(int, m)) for m in FOLLOWED.findall(log)]
    full = [f for f in in_force if f[1] == TENANTS]
    if len(full) < 1 + CHANGES // 2 or not followed:
        raise RuntimeError(f"too few registry log lines in Envoy's log: {in_force} {followed}")
    return {
        "first_seconds": first,
        "bytes": full[0][2],
        "first": full[0],
        "later": full[1:],
        "followed_first": [f for f in followed if f[0] == full[0][0]],
        "followed_later": [f for f in followed if f[0] != full[0][0] and f[1] == TENANTS],
        "changes": changes,
        "quiet": quiet,
        "loaded": loaded,
    }


def wait_status(gate: stack.Stack, key: str, status: int, timeout: float, runs: int = 10) -> None:
    """Until `runs` requests in a row, each on a new connection, get `status`: the change is
    in force on every worker."""
    deadline = time.monotonic() + timeout
    in_a_row = 0
    while in_a_row < runs:
        in_a_row = in_a_row + 1 if chat(gate, key)[0] == status else 0
        time.sleep(0.005)
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {status} {runs} times in a row within {timeout:.0f}s")


def chat(gate: stack.Stack, key: str) -> tuple[int, float]:
    """Status and seconds of one request on a new connection (so either worker may take it)."""
    connection = http.client.HTTPConnection("127.0.0.1", gate.ports.listener, timeout=30)
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    try:
        started = time.perf_counter()
        connection.request("POST", "/v1/chat/completions", body=BODY, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    finally:
        connection.close()


def stream(
    gate: stack.Stack, key: str, seconds: float | None = None, stop: threading.Event | None = None
) -> list[float]:
    """Latencies of requests sent one after another, for `seconds` or until `stop`."""
    out = []
    deadline = time.monotonic() + (seconds or 0)
    while (stop is not None and not stop.is_set()) or (
        stop is None and time.monotonic() < deadline
    ):
        status, elapsed = chat(gate, key)
        if status != 200:
            raise RuntimeError(f"a request during the changes got {status}")
        out.append(elapsed)
    return out


# ---------------------------------------------------------------------------------------------
# The section


def markdown(ctx, machine, serving: dict, body: bytes, native: dict, envoy: dict) -> str:
    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:,.1f}"

    def median_ms(values: list[int]) -> str:
        return f"{statistics.median(values):,.0f}" if values else "-"

    first, later = envoy["first"], envoy["later"]
    followed_first = [read + built for _, _, read, built in envoy["followed_first"]]
    followed_read = [read for _, _, read, _ in envoy["followed_later"]]
    followed_built = [built for _, _, _, built in envoy["followed_later"]]
    quiet, loaded = envoy["quiet"], envoy["loaded"]
    version = envoy_version(ctx)
    rounds = len(serving["new"])
    print(
        f"  snapshot {len(body):,} bytes; collector {ms(serving['new'])} ms new, "
        f"{ms(serving['cached'])} ms cached; filter in Envoy reads one in {first[3]} ms",
        flush=True,
    )
    rows = [
        ("snapshot as the collector serves it (JSON)", f"{len(body):,} bytes", ""),
        (
            "the same in shared data (binary form)",
            f"{native['binary_bytes']:,} bytes",
            "what each worker copies out when the registry changes",
        ),
        (
            "collector: a new version, read from SQLite and serialised",
            f"{ms(serving['new'])} ms",
            f"median of {rounds}, to the last byte on loopback",
        ),
        ("collector: the same version again (kept in memory)", f"{ms(serving['cached'])} ms", ""),
        (
            "collector: unchanged (`If-None-Match`, `304`)",
            f"{ms(serving['unchanged'])} ms",
            "what every poll costs while nothing changes",
        ),
        ("filter, native: parse and check the JSON", f"{native['parse_ms']:.1f} ms", ""),
        (
            "filter, native: write / read the binary form",
            f"{native['encode_ms']:.1f} / {native['decode_ms']:.1f} ms",
            "",
        ),
        ("filter, native: build the directory (key table)", f"{native['build_ms']:.1f} ms", ""),
        (
            "filter in Envoy: syncer, first snapshot",
            f"{first[3]:,} ms + {first[4]:,} ms",
            "parse, create 100,000 tenants' limit state, publish; then its own directory",
        ),
        (
            "filter in Envoy: syncer, a changed snapshot",
            f"{median_ms([f[3] for f in later])} ms + {median_ms([f[4] for f in later])} ms",
            f"median of {len(later)}; limit state exists already",
        ),
        (
            "filter in Envoy: each other worker follows it",
            f"{median_ms(followed_read)} ms + {median_ms(followed_built)} ms",
            f"read from shared data + build, median of {len(followed_read)} "
            f"(first snapshot: {median_ms(followed_first)} ms in all)",
        ),
        (
            "Envoy: start to the first snapshot in force",
            f"{envoy['first_seconds']:.2f} s",
            f"the first poll comes after one tick; `interval_ms` {INTERVAL_MS}",
        ),
        (
            "Envoy: a change over the API until it is in force",
            f"{statistics.median(envoy['changes']):.2f} s",
            f"median of {len(envoy['changes'])}, at most "
            f"{max(envoy['changes']):.2f} s; `interval_ms` {INTERVAL_MS}",
        ),
        (
            "key lookup, 100,000 tenants / 10 tenants",
            f"{native['lookup_first_key_ns']:.0f} / "
            f"{native['lookup_first_key_in_10_tenants_ns']:.0f} ns",
            "natively, SHA-256 of the key included: O(1)",
        ),
        (
            "requests meanwhile: median / slowest",
            f"{ms(loaded)} / {max(loaded) * 1000:,.0f} ms",
            f"{len(loaded):,} requests of another tenant during the changes; without changes "
            f"{ms(quiet)} / {max(quiet) * 1000:,.0f} ms",
        ),
    ]
    return "\n".join(
        [
            "## Tenant registry at 100,000 tenants",
            "",
            f"A registry of {TENANTS:,} tenants (one key each, ids `tenant-000000` ...) in the "
            "collector's SQLite database (`collector/examples/registry_import.rs`), served by "
            "the release build of the collector, and followed by the release build of the "
            "filter in Envoy (2 workers) polling every "
            f"{INTERVAL_MS} ms. Each change suspends or restores one tenant, which makes a new "
            "version of the whole snapshot: every change costs the figures below once per "
            "Envoy (the syncer) and once per worker (following it). Native figures: "
            "`examples/registry_scale.rs`, median of 5 runs; Envoy figures: the filter's own "
            "log lines (`tenant registry version N in force ...` and, at debug, `registry "
            "version N followed ...`), in whole milliseconds.",
            "",
            "| what | figure | notes |",
            "|---|---:|---|",
            *(f"| {what} | {figure} | {notes} |" for what, figure, notes in rows),
            "",
            "In short: while nothing changes, each poll costs the collector a `304` "
            f"({ms(serving['unchanged'])} ms); a change costs each Envoy one transfer of "
            f"{len(body) / 1e6:.1f} MB and the syncer "
            f"{median_ms([f[3] + f[4] for f in later])} ms, and pauses each other worker for "
            f"{median_ms([r + b for _, _, r, b in envoy['followed_later']])} ms (it serves "
            "nothing meanwhile: the slowest request above). A key lookup costs the same with "
            "100,000 tenants as with 10.",
            "",
            machine(ctx, {"Envoy": version}),
        ]
    )


def envoy_version(ctx) -> str:
    text = ctx.run([ROOT / ".venv" / "bin" / "envoy", "--version"]).strip()
    return text.split("version:", 1)[-1].strip().split("/")[1] if "/" in text else text
