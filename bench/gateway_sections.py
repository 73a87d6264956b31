"""The gateway's sections of `make bench`: what the filter costs in Envoy, beside the floor
(bare Envoy) and the alternatives (Lua, ext_authz), for plain requests and long streams,
with large tenant tables, with records flowing, and at start. `gateway.py` has the parts.

Each section is a function of the run's context and of `machine` (run.py's machine and
versions block), returning its Markdown.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import gateway as g
from processes import wait_until

Machine = Callable[..., str]
THROUGHPUT_CONNECTIONS = 32


# ---------------------------------------------------------------------------------------------
# Shared by the sections


def prepare(ctx) -> dict[str, str]:
    """Builds what the sections run (each a no-op when up to date) and returns the versions
    to print."""
    if "versions" in ctx.cache:
        return ctx.cache["versions"]
    g.ensure_wrk()
    ctx.run(["cargo", "build", "--quiet", "--release", "-p", "collector", "-p", "bench-servers"])
    ctx.run(
        ["cargo", "build", "--quiet", "--release", "--target", "wasm32-wasip1"]
        + ["-p", "inference-gate"]
    )
    ctx.run(
        [
            "cargo",
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-wasip1",
            "--manifest-path",
            g.ROOT / "bench" / "keycheck-filter" / "Cargo.toml",
            "--target-dir",
            g.ROOT / "target" / "bench-wasm",
        ]
    )
    envoy = ctx.run([g.ENVOY, "--version"]).strip().split("version:")[-1].strip()
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    envoy_cpus, load_cpus = g.cpu_split()
    ctx.cache["versions"] = {
        "Envoy": envoy,
        "wrk": wrk.strip() or "wrk",
        "CPUs": f"Envoy (1 worker) pinned to CPU {cpu_list(envoy_cpus)}; wrk, the upstream, the "
        f"ext_authz service and the collector pinned to CPU {cpu_list(load_cpus)} (`taskset`)",
    }
    return ctx.cache["versions"]


def cpu_list(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))


def med(values: list[float]) -> float:
    return statistics.median(values)


def span(values: list[float], fmt: str = ",.0f") -> str:
    """The median and, in brackets, the lowest and highest run."""
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{med(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def rotated(items: list, n: int) -> list:
    """`items` starting at a different one each round, so that no variant always runs first
    (or just after the same other)."""
    k = n % len(items)
    return items[k:] + items[:k]


def with_load(machine: Machine, ctx, versions: dict[str, str], before: str) -> str:
    return machine(
        ctx, {**versions, "load average (1/5/15 min)": f"{before} before, {g.load_average()} after"}
    )


def check(load: g.Load, what: str) -> None:
    if load.errors or load.requests == 0:
        raise RuntimeError(f"{what}: {load.errors} errors in {load.requests} requests")


class Measured:
    """wrk runs against one Envoy, with the Envoy's CPU time per request."""

    def __init__(self) -> None:
        self.rps: list[float] = []
        self.cpu_us: list[float] = []
        self.p50: list[float] = []
        self.p99: list[float] = []
        self.loaded_p99: list[float] = []

    def throughput(self, envoy: g.Envoy, script: Path, ctx, cpus: list[int]) -> None:
        before = g.cpu_seconds(envoy.pid)
        load = g.wrk(
            envoy.url, script, connections=THROUGHPUT_CONNECTIONS, seconds=ctx.seconds, cpus=cpus
        )
        used = g.cpu_seconds(envoy.pid) - before
        check(load, f"{envoy.name} under load")
        self.rps.append(load.rps)
        self.cpu_us.append(used / load.requests * 1e6)
        self.loaded_p99.append(load.p99_us)

    def latency(self, envoy: g.Envoy, script: Path, ctx, cpus: list[int]) -> None:
        load = g.wrk(envoy.url, script, connections=1, seconds=ctx.seconds, cpus=cpus)
        check(load, f"{envoy.name}, one connection")
        self.p50.append(load.p50_us)
        self.p99.append(load.p99_us)


def start_all(envoys: list[g.Envoy]) -> None:
    for envoy in envoys:
        envoy.start()


# ---------------------------------------------------------------------------------------------
# Section 1: per-request overhead

LABELS = {
    "bare": "bare Envoy (router only)",
    "buffer": "buffer filter only",
    "filter": "**inference-gate** (+ buffer filter, records to the collector)",
    "wasm_keycheck": "minimal Proxy-Wasm key check",
    "lua": "Lua key check",
    "ext_authz": "ext_authz (HTTP) key check",
}


def gateway_overhead(ctx, machine: Machine) -> str:
    """Throughput, latency and Envoy CPU per request, each variant beside bare Envoy."""
    versions = prepare(ctx)
    load_before = g.load_average()
    envoy_cpus, load_cpus = g.cpu_split()
    servers = g.Servers(ctx.workdir, load_cpus)
    envoys = {v: g.Envoy(v, ctx.workdir, servers, envoy_cpus) for v in g.VARIANTS}
    script = g.wrk_script(ctx.workdir, "chat", {"authorization": f"Bearer {g.key_of(3)}"})
    results = {v: Measured() for v in g.VARIANTS}
    try:
        servers.start()
        start_all(list(envoys.values()))
        for envoy in envoys.values():
            status, _ = envoy.probe(g.key_of(3))
            assert status == 200, f"{envoy.name}: {status}"
            # Warm-up: connections, the JIT's tiers, the first records batch.
            g.wrk(envoy.url, script, connections=THROUGHPUT_CONNECTIONS, seconds=1, cpus=load_cpus)

        upstream = g.wrk(
            f"http://127.0.0.1:{servers.upstream_port}{g.CHAT_PATH}",
            script,
            connections=THROUGHPUT_CONNECTIONS,
            seconds=ctx.seconds,
            cpus=load_cpus,
        )
        ingested_before = servers.collector_ingested()
        for n in range(ctx.rounds):
            for variant in rotated(list(g.VARIANTS), n):
                results[variant].throughput(envoys[variant], script, ctx, load_cpus)
            for variant in rotated(list(g.VARIANTS), n):
                results[variant].latency(envoys[variant], script, ctx, load_cpus)
            print(
                f"  round {n + 1}: "
                + ", ".join(f"{v} {results[v].rps[-1]:,.0f}/s" for v in g.VARIANTS),
                flush=True,
            )
        wait_until(
            lambda: envoys["filter"].stat("wasmcustom.inference_gate.buffer.records") == 0,
            what="the filter's record buffer to drain",
            timeout=30,
        )
        ingested = servers.collector_ingested() - ingested_before
        filter_requests = envoys["filter"].stat("wasmcustom.inference_gate.requests.success")
    finally:
        g.stop_all([*envoys.values(), servers])

    bare = results["bare"]
    rows = [
        "| variant | requests/s | × bare | Envoy CPU per request | × bare | p50, 1 conn. | × bare "
        f"| added p50 | p99, 1 conn. | × bare | p99, {THROUGHPUT_CONNECTIONS} conn. | × bare |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in g.VARIANTS:
        r = results[v]
        rows.append(
            f"| {LABELS[v]} | {span(r.rps)} | {med(r.rps) / med(bare.rps):.2f} "
            f"| {span(r.cpu_us, '.1f')} µs | {med(r.cpu_us) / med(bare.cpu_us):.2f} "
            f"| {med(r.p50):.0f} µs | {med(r.p50) / med(bare.p50):.2f} "
            f"| {med(r.p50) - med(bare.p50):+.0f} µs "
            f"| {med(r.p99):.0f} µs | {med(r.p99) / med(bare.p99):.2f} "
            f"| {med(r.loaded_p99) / 1000:.1f} ms "
            f"| {med(r.loaded_p99) / med(bare.loaded_p99):.2f} |"
        )

    f = results["filter"]
    ratio = med(f.rps) / med(bare.rps)
    added_p50 = med(f.p50) - med(bare.p50)
    added_cpu = med(f.cpu_us) - med(bare.cpu_us)
    beats = [
        alt
        for alt in ("lua", "ext_authz")
        if med(f.rps) > med(results[alt].rps) and med(f.p50) < med(results[alt].p50)
    ]
    goals = [
        f"- throughput with the filter ≥ 85% of bare Envoy: **{ratio:.0%}**, "
        + ("met" if ratio >= 0.85 else "not met"),
        f"- added p50 < 50 µs: **{added_p50:+.0f} µs**, "
        + ("met" if added_p50 < 50 else "not met"),
        "- faster than Lua and ext_authz (throughput and p50): "
        + (
            "met"
            if len(beats) == 2
            else f"not met (faster than {', '.join(beats) if beats else 'neither'})"
        ),
    ]
    keycheck = results["wasm_keycheck"]
    return "\n".join(
        [
            "## Per-request overhead",
            "",
            "One small chat completion (`POST /v1/chat/completions`, 110-byte JSON body, "
            "`Authorization: Bearer <key>`), answered by a fast upstream with a 285-byte "
            "OpenAI-shaped reply with `usage` (`bench-servers upstream`, "
            "bench/servers/), through Envoy in each variant. Every variant is the Envoy "
            "configuration of `make run` (envoy/envoy.yaml) without its access log, with "
            "only its HTTP filters changed; the filter variant is as shipped (inference-gate, "
            "then the buffer filter), with 10 tenants whose limits are never reached and "
            "every request's billing record and audit entry sent to a running collector "
            "(SQLite). The Lua, minimal Proxy-Wasm and ext_authz variants only check the key "
            "against a table of the same 10 keys, drop it and set `x-tenant-id`; the ext_authz "
            "service is `bench-servers authz` (one thread, hyper).",
            "",
            f"- **requests/s** and **Envoy CPU per request**: wrk, 1 thread, "
            f"{THROUGHPUT_CONNECTIONS} keep-alive connections, {ctx.seconds:g} s per run; the "
            "CPU is the Envoy process's user + system time over the run (/proc) divided by the "
            "requests served: it does not count time other programs on the machine took from "
            "Envoy, so it is the steadiest figure on a shared machine;",
            f"- **p50, p99, 1 conn.**: one connection, one request at a time, {ctx.seconds:g} s "
            "per run: the latency a request sees through an idle gateway; "
            f"**p99, {THROUGHPUT_CONNECTIONS} conn.**: the p99 of the throughput runs;",
            f"- each figure is the median of {ctx.rounds} runs (brackets: lowest and highest); "
            "the variants take turns within each round, in a different order each round; "
            "ratios are to bare Envoy in the same run.",
            "",
            *rows,
            "",
            f"The upstream alone (wrk straight to it, on the same CPU as wrk) answered "
            f"{upstream.rps:,.0f} requests/s, {upstream.rps / med(bare.rps):.1f}× bare Envoy: "
            f"it is not the bottleneck. The collector stored {ingested:,} records during the "
            f"runs ({filter_requests:,} requests through the filter in all, two records each: "
            "every record queued was sent once the runs ended).",
            "",
            "Goals (issue 8):",
            "",
            *goals,
            "",
            f"The filter adds {added_cpu:.0f} µs of Envoy CPU per request to bare Envoy's "
            f"{med(bare.cpu_us):.0f} µs. A Proxy-Wasm filter that only checks the key adds "
            f"{med(keycheck.cpu_us) - med(bare.cpu_us):.0f} µs "
            f"({med(keycheck.rps) / med(bare.rps):.0%} of bare throughput): most of what a "
            "Proxy-Wasm filter costs in Envoy is crossing between Envoy and the VM (each "
            "callback and each host call), not the work done inside the VM; see the host "
            "calls section.",
            "",
            with_load(machine, ctx, versions, load_before),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Section 2: streaming

STREAM_LENGTHS = (1_000, 10_000, 100_000)


def stream_body(ask_for_usage: bool) -> str:
    body = {
        "model": "bench-model",
        "messages": [{"role": "user", "content": "Count to a hundred thousand."}],
        "stream": True,
    }
    if ask_for_usage:
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body, separators=(",", ":"))


def streaming(ctx, machine: Machine) -> str:
    """Stream time through the filter and through bare Envoy, and the filter's memory, for
    streams of 1k, 10k and 100k events."""
    versions = prepare(ctx)
    load_before = g.load_average()
    envoy_cpus, load_cpus = g.cpu_split()
    servers = g.Servers(ctx.workdir, load_cpus)
    envoys = {v: g.Envoy(v, ctx.workdir, servers, envoy_cpus) for v in ("bare", "filter")}
    auth = {"authorization": f"Bearer {g.key_of(3)}"}
    scripts = {
        (n, asked): g.wrk_script(
            ctx.workdir,
            f"stream-{n}-{asked}",
            {**auth, "x-bench-events": str(n)},
            stream_body(asked),
        )
        for n in STREAM_LENGTHS
        for asked in (True, False)
    }
    times: dict[tuple, list[float]] = {}
    memory: list[tuple[str, list[g.LinearMemory], int, int]] = []
    try:
        servers.start()
        start_all(list(envoys.values()))

        def snapshot(label: str) -> None:
            memory.append(
                (
                    label,
                    g.wasm_memories(envoys["filter"].pid),
                    g.rss_kib(envoys["filter"].pid),
                    g.rss_kib(envoys["bare"].pid),
                )
            )

        for envoy in envoys.values():
            g.wrk(envoy.url, scripts[(1_000, True)], connections=1, seconds=1, cpus=load_cpus)
        snapshot("after 1 s of 1,000-event streams (warm-up)")
        direct = {}
        for n in STREAM_LENGTHS:
            seconds = ctx.seconds if n < 100_000 else 2 * ctx.seconds
            direct[n] = g.wrk(
                f"http://127.0.0.1:{servers.upstream_port}{g.CHAT_PATH}",
                scripts[(n, True)],
                connections=1,
                seconds=seconds,
                cpus=load_cpus,
                timeout_s=60,
            ).p50_us
            runs = [("bare", True), ("filter", True)]
            if n == 10_000:
                runs.append(("filter", False))
            for r in range(ctx.rounds):
                for variant, asked in rotated(runs, r):
                    load = g.wrk(
                        envoys[variant].url,
                        scripts[(n, asked)],
                        connections=1,
                        seconds=seconds,
                        cpus=load_cpus,
                        timeout_s=60,
                    )
                    check(load, f"{variant}, {n} events")
                    times.setdefault((variant, asked, n), []).append(load.p50_us)
            snapshot(f"after {n:,}-event streams")
            print(
                f"  {n:>7,} events: bare {med(times[('bare', True, n)]) / 1000:.1f} ms, "
                f"filter {med(times[('filter', True, n)]) / 1000:.1f} ms",
                flush=True,
            )
        estimated = envoys["filter"].stat("wasmcustom.inference_gate.usage.estimated")
    finally:
        g.stop_all([*envoys.values(), servers])

    rows = [
        "| events | upstream alone | bare Envoy | inference-gate | × bare | added per event |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n in STREAM_LENGTHS:
        bare_ms = [t / 1000 for t in times[("bare", True, n)]]
        filter_ms = [t / 1000 for t in times[("filter", True, n)]]
        bare, filt = med(bare_ms) * 1000, med(filter_ms) * 1000
        rows.append(
            f"| {n:,} | {direct[n] / 1000:.1f} ms | {span(bare_ms, '.1f')} ms "
            f"| {span(filter_ms, '.1f')} ms "
            f"| {filt / bare:.2f} | {(filt - bare) / n:.2f} µs |"
        )
    injected = med(times[("filter", False, 10_000)])
    bare10 = med(times[("bare", True, 10_000)])
    mem_rows = [
        "| when | VM linear memory (largest VM) | resident in the VMs | Envoy RSS, filter "
        "| Envoy RSS, bare |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, vms, rss_filter, rss_bare in memory:
        mem_rows.append(
            f"| {label} | {max((m.size_kib for m in vms), default=0):,} KiB "
            f"| {sum(m.rss_kib for m in vms):,} KiB | {rss_filter / 1024:,.1f} MiB "
            f"| {rss_bare / 1024:,.1f} MiB |"
        )
    sizes = {max((m.size_kib for m in vms), default=0) for _, vms, _, _ in memory}
    flat = (
        "The VMs' linear memory did not grow from 1,000 to 100,000 events: memory per stream "
        "is bounded, as designed."
        if len(sizes) == 1
        else "The VMs' linear memory grew between the snapshots above (see the figures)."
    )
    return "\n".join(
        [
            "## Streaming",
            "",
            "A chat completion streamed as server-sent events: the upstream writes each event "
            "(a 170-byte OpenAI chunk of one token) on its own as fast as it can, then the "
            "usage chunk and `[DONE]`; the client asked for usage "
            "(`stream_options.include_usage`). The figure is the time to the stream's last "
            "byte, one stream at a time (wrk, one connection; median over the streams of a "
            f"run, then median of {ctx.rounds} runs taking turns, brackets: lowest and highest "
            "run). *Added per event* is (inference-gate − bare) / events: what reading every "
            "event for its usage costs, spread over the stream. Envoy delivers the events to "
            "the filter in the chunks it read them in (often several events per chunk).",
            "",
            *rows,
            "",
            f"When the client does not ask for usage, the filter asks for it and takes the "
            f"usage chunk out of the stream (rewriting every chunk it passes on): a "
            f"10,000-event stream then takes {injected / 1000:.1f} ms, "
            f"{injected / bare10:.2f}× bare, {(injected - bare10) / 10_000:.2f} µs per event. "
            f"Streams billed from an estimate instead of the reported usage: {estimated} "
            "(every stream was read to its usage chunk).",
            "",
            "Memory: the size and resident part of each Wasm VM's linear memory, read from "
            "`/proc/<envoy>/smaps` (Envoy exposes no Wasm memory stat: V8 reserves each "
            "linear memory with a multi-GiB guard region, and the memory is the writable "
            "mapping just below it; a linear memory never shrinks, so its size is the most "
            "the VM ever needed), and the whole Envoy's RSS, after the streams of each length:",
            "",
            *mem_rows,
            "",
            flat,
            "",
            with_load(machine, ctx, versions, load_before),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Section 3: tenant table scale

TENANT_COUNTS = (10, 10_000, 100_000)


def configure_times(log: str) -> list[float]:
    """Seconds from each per-thread VM's creation to the end of its `on_configure` (the
    filter's `configured tenants=` line), from Envoy's log at `wasm:debug`."""
    created: dict[str, float] = {}
    spans = []
    for line in log.splitlines():
        parts = line.split("]", 2)
        if len(parts) < 3:
            continue
        stamp, tid = parts[0].lstrip("["), parts[1].lstrip("[")
        if "Thread-Local Wasm created" in line:
            created[tid] = parse_stamp(stamp)
        elif "configured tenants=" in line and tid in created:
            spans.append(parse_stamp(stamp) - created.pop(tid))
    return spans


def parse_stamp(stamp: str) -> float:
    day, clock = stamp.split(" ")
    h, m, s = clock.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def tenant_scale(ctx, machine: Machine) -> str:
    """Request cost with 10, 10,000 and 100,000 tenants, and the time and memory to load them."""
    versions = prepare(ctx)
    load_before = g.load_average()
    envoy_cpus, load_cpus = g.cpu_split()
    servers = g.Servers(ctx.workdir, load_cpus)
    envoys: dict[int, g.Envoy] = {}
    config_bytes: dict[int, int] = {}
    results = {n: Measured() for n in TENANT_COUNTS}
    loaded: dict[int, dict] = {}
    scripts = {
        n: g.wrk_script(ctx.workdir, f"tenants-{n}", {"authorization": f"Bearer {g.key_of(n - 1)}"})
        for n in TENANT_COUNTS
    }
    try:
        servers.start()
        for n in TENANT_COUNTS:
            plugin = g.plugin_config(n)
            config_bytes[n] = len(json.dumps(plugin))
            envoy = g.Envoy(
                "filter",
                ctx.workdir,
                servers,
                envoy_cpus,
                plugin=plugin,
                tenants=n,
                name=f"tenants-{n}",
                component_log_level="wasm:debug",
            )
            envoys[n] = envoy
            envoy.start(timeout=300)
            wait_until(
                lambda envoy=envoy: len(configure_times(envoy.child.output())) >= 2,
                what="the filter's configuration on every thread",
                timeout=120,
            )
            status, _ = envoy.probe(g.key_of(n - 1))
            assert status == 200, f"{n} tenants: {status}"
            vms = g.wasm_memories(envoy.pid)
            loaded[n] = {
                "ready_s": envoy.ready_s,
                "configure_s": configure_times(envoy.child.output()),
                "rss_kib": g.rss_kib(envoy.pid),
                "vm_kib": max((m.size_kib for m in vms), default=0),
                "vms": len(vms),
            }
            g.wrk(
                envoy.url, scripts[n], connections=THROUGHPUT_CONNECTIONS, seconds=1, cpus=load_cpus
            )
        for r in range(ctx.rounds):
            for n in rotated(list(TENANT_COUNTS), r):
                results[n].throughput(envoys[n], scripts[n], ctx, load_cpus)
            for n in rotated(list(TENANT_COUNTS), r):
                results[n].latency(envoys[n], scripts[n], ctx, load_cpus)
    finally:
        g.stop_all([*envoys.values(), servers])

    base = results[TENANT_COUNTS[0]]
    cost_rows = [
        "| tenants | requests/s | × 10 tenants | Envoy CPU per request | × 10 tenants "
        "| p50, 1 conn. | p99, 1 conn. |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in TENANT_COUNTS:
        r = results[n]
        cost_rows.append(
            f"| {n:,} | {span(r.rps)} | {med(r.rps) / med(base.rps):.2f} "
            f"| {span(r.cpu_us, '.1f')} µs | {med(r.cpu_us) / med(base.cpu_us):.2f} "
            f"| {med(r.p50):.0f} µs | {med(r.p99):.0f} µs |"
        )
    load_rows = [
        "| tenants | plugin configuration | Envoy start to ready | VM start + `on_configure`, "
        "per VM | VM linear memory | Envoy RSS |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    base_load = loaded[TENANT_COUNTS[0]]
    for n in TENANT_COUNTS:
        d = loaded[n]
        configure = d["configure_s"]
        vm_more = (d["vm_kib"] - base_load["vm_kib"]) / 1024
        rss_more = (d["rss_kib"] - base_load["rss_kib"]) / 1024
        load_rows.append(
            f"| {n:,} | {config_bytes[n] / 1e6:.2f} MB | {d['ready_s']:.2f} s "
            f"| {med(configure) * 1000:,.0f} ms ({len(configure)} VMs) "
            f"| {d['vm_kib'] / 1024:,.1f} MiB (+{vm_more:,.1f}) "
            f"| {d['rss_kib'] / 1024:,.0f} MiB (+{rss_more:,.0f}) |"
        )
    return "\n".join(
        [
            "## Tenant table scale",
            "",
            "The filter with 10, 10,000 and 100,000 static tenants (one key each), otherwise "
            "as in the per-request section (same request, same Envoy settings, records to the "
            "collector); the key used is the last tenant's. The three Envoys run side by side "
            "and take turns; medians of "
            f"{ctx.rounds} runs of {ctx.seconds:g} s (brackets: lowest and highest).",
            "",
            *cost_rows,
            "",
            "Loading each configuration: *Envoy start to ready* is from starting the process "
            "to its admin `/ready` (Envoy reading its own configuration, the plugin "
            "configuration inside it, included); *VM start + `on_configure`* is from Envoy's "
            "`Thread-Local Wasm created` log line to the filter's `configured tenants=` line on "
            "the same thread (parsing and validating the configuration, building the key table, "
            "creating each tenant's limit state in shared data), the median over the VMs "
            "Envoy starts (one per worker and those of the main thread); memory is the "
            "largest VM's linear memory and Envoy's RSS after the first request (in brackets: "
            "more than with 10 tenants).",
            "",
            *load_rows,
            "",
            with_load(machine, ctx, versions, load_before),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Section 4: the record pipeline

PIPELINE_SECONDS = 10


def record_pipeline(ctx, machine: Machine) -> str:
    """Sustained requests per second with every record going to the collector, and the
    collector's CPU at that rate."""
    versions = prepare(ctx)
    load_before = g.load_average()
    envoy_cpus, load_cpus = g.cpu_split()
    servers = g.Servers(ctx.workdir, load_cpus)
    envoys = {v: g.Envoy(v, ctx.workdir, servers, envoy_cpus) for v in ("bare", "filter")}
    script = g.wrk_script(ctx.workdir, "chat", {"authorization": f"Bearer {g.key_of(3)}"})
    try:
        servers.start()
        start_all(list(envoys.values()))
        for envoy in envoys.values():
            g.wrk(envoy.url, script, connections=THROUGHPUT_CONNECTIONS, seconds=1, cpus=load_cpus)
        bare = g.wrk(
            envoys["bare"].url,
            script,
            connections=THROUGHPUT_CONNECTIONS,
            seconds=PIPELINE_SECONDS,
            cpus=load_cpus,
        )
        check(bare, "bare Envoy")

        filt = envoys["filter"]
        stat = "wasmcustom.inference_gate."
        wait_until(lambda: filt.stat(stat + "buffer.records") == 0, what="drain", timeout=30)
        stored_before = servers.collector_ingested()
        sent_before = filt.stat(stat + "records.sent") or 0
        collector_cpu = g.cpu_seconds(servers.collector.pid)
        envoy_cpu = g.cpu_seconds(filt.pid)
        started = time.monotonic()
        load = g.wrk(
            filt.url,
            script,
            connections=THROUGHPUT_CONNECTIONS,
            seconds=PIPELINE_SECONDS,
            cpus=load_cpus,
        )
        wall = time.monotonic() - started
        collector_used = g.cpu_seconds(servers.collector.pid) - collector_cpu
        envoy_used = g.cpu_seconds(filt.pid) - envoy_cpu
        stored_during = servers.collector_ingested() - stored_before
        buffered_at_end = filt.stat(stat + "buffer.records") or 0
        check(load, "the filter")
        drain_started = time.monotonic()
        wait_until(lambda: filt.stat(stat + "buffer.records") == 0, what="drain", timeout=60)
        drain_s = time.monotonic() - drain_started
        stored = servers.collector_ingested() - stored_before
        sent = (filt.stat(stat + "records.sent") or 0) - sent_before
        dropped = filt.stat(stat + "records.dropped") or 0
        failed = filt.stat(stat + "batches.failed") or 0
    finally:
        g.stop_all([*envoys.values(), servers])

    records = 2 * load.requests
    rows = [
        "| | figure |",
        "|---|---:|",
        f"| requests/s through the filter, sustained over {PIPELINE_SECONDS} s | "
        f"{load.rps:,.0f} ({load.rps / bare.rps:.2f}× bare Envoy's {bare.rps:,.0f}) |",
        f"| records queued (billing + audit per request) | {records:,} ({records / wall:,.0f}/s) |",
        f"| records the collector stored during the run | {stored_during:,} "
        f"({stored_during / wall:,.0f}/s) |",
        f"| records still buffered in Envoy when the load stopped | {buffered_at_end:,} |",
        f"| time for the buffer to empty after the load stopped | {drain_s:.1f} s |",
        f"| records stored in all / sent / dropped / failed batches | {stored:,} / {sent:,} / "
        f"{dropped} / {failed} |",
        f"| collector CPU during the run | {collector_used / wall:.0%} of one core "
        f"({collector_used / max(stored_during, 1) * 1e6:.1f} µs per record stored) |",
        f"| Envoy CPU during the run (the flusher on its main thread included) "
        f"| {envoy_used / wall:.0%} of one core |",
    ]
    return "\n".join(
        [
            "## Record pipeline",
            "",
            "The request of the per-request section through the filter at full speed for "
            f"{PIPELINE_SECONDS} s (wrk, {THROUGHPUT_CONNECTIONS} connections), every request "
            "queuing a billing record and an audit entry that the filter's flusher sends to "
            "the collector (release build, SQLite in WAL mode with `synchronous=FULL`, the "
            "default settings: batches of up to 500 records, one in flight); bare Envoy for "
            f"the same {PIPELINE_SECONDS} s just before. CPU is user + system time from "
            "`/proc/<pid>/stat` over the run; *stored* counts "
            "`collector_records_ingested_total` on the collector's `/metrics`.",
            "",
            *rows,
            "",
            with_load(machine, ctx, versions, load_before),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Section 5: filter size and VM start

START_RUNS = 3


def vm_start_times(log: str) -> dict[str, float]:
    """From a `wasm:trace` start-up log: compiling the module and starting the first VM
    (`Base Wasm created` to its `_initialize` returning), and each per-thread VM's start to
    the end of its `on_configure`."""
    events = []
    for line in log.splitlines():
        parts = line.split("]", 3)
        if len(parts) < 4:
            continue
        events.append((parse_stamp(parts[0].lstrip("[")), parts[1].lstrip("["), parts[3]))
    base = next((t for t, _, text in events if "Base Wasm created" in text), None)
    first_init = next((t for t, _, text in events if "[host<-vm] _initialize return" in text), None)
    created: dict[str, float] = {}
    thread_vms = []
    for t, tid, text in events:
        if "Thread-Local Wasm created" in text:
            created[tid] = t
        elif "[host<-vm] proxy_on_configure return" in text and tid in created:
            thread_vms.append(t - created.pop(tid))
    return {
        "compile_s": (first_init - base) if base is not None and first_init else float("nan"),
        "thread_vm_s": med(thread_vms) if thread_vms else float("nan"),
    }


def filter_size(ctx, machine: Machine) -> str:
    """The release `.wasm`'s size, and how long Envoy takes to start the filter's VMs."""
    versions = prepare(ctx)
    load_before = g.load_average()
    envoy_cpus, load_cpus = g.cpu_split()
    servers = g.Servers(ctx.workdir, load_cpus)
    ready: dict[str, list[float]] = {"bare": [], "filter": []}
    starts: list[dict[str, float]] = []
    try:
        servers.start()
        for n in range(START_RUNS):
            for variant in rotated(["bare", "filter"], n):
                envoy = g.Envoy(
                    variant,
                    ctx.workdir,
                    servers,
                    envoy_cpus,
                    name=f"start-{variant}-{n}",
                    component_log_level="wasm:trace" if variant == "filter" else None,
                )
                try:
                    envoy.start()
                    ready[variant].append(envoy.ready_s)
                    if variant == "filter":
                        wait_until(
                            lambda envoy=envoy: (
                                "[host<-vm] proxy_on_configure return" in envoy.child.output()
                            ),
                            what="on_configure",
                            timeout=30,
                        )
                        starts.append(vm_start_times(envoy.child.output()))
                finally:
                    envoy.stop()
    finally:
        servers.stop()

    size = g.WASM.stat().st_size
    keycheck = g.KEYCHECK_WASM.stat().st_size
    compile_s = med([s["compile_s"] for s in starts])
    thread_s = med([s["thread_vm_s"] for s in starts])
    rows = [
        "| | figure |",
        "|---|---:|",
        f"| `inference_gate.wasm`, release profile (`lto`, `opt-level = 3`, `strip`) | "
        f"{size:,} bytes ({size / 1024 / 1024:.2f} MiB) |",
        f"| for scale: the minimal Proxy-Wasm key check, same profile | {keycheck:,} bytes |",
        f"| Envoy start to ready, bare | {span(ready['bare'], '.2f')} s |",
        f"| Envoy start to ready, with the filter | {span(ready['filter'], '.2f')} s "
        f"(+{med(ready['filter']) - med(ready['bare']):.2f} s) |",
        f"| compiling the module and starting the first VM (`Base Wasm created` to its "
        f"`_initialize` returning) | {compile_s * 1000:,.0f} ms |",
        "| each further VM, one per worker and those of the main thread (`Thread-Local Wasm "
        f"created` to `on_configure` returning, 10 tenants) | {thread_s * 1000:,.1f} ms |",
    ]
    return "\n".join(
        [
            "## Filter size and VM start",
            "",
            f"Envoy started {START_RUNS} times with the filter (10 tenants, one worker, Wasm "
            "log at trace for the timestamps) and as many times bare, taking turns; medians "
            "(brackets: lowest and highest). The VM times come from Envoy's own log lines "
            "(microsecond timestamps). V8 compiles the module once per process; every further "
            "VM (a reload, a new worker) instantiates the compiled module.",
            "",
            *rows,
            "",
            with_load(machine, ctx, versions, load_before),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Host calls per request


TRACED_EVENTS = 1_000


def host_calls(ctx, machine: Machine) -> str:
    """Every host call the filter makes for one request, from Envoy's Wasm trace."""
    versions = prepare(ctx)
    envoy_cpus, load_cpus = g.cpu_split()
    servers = g.Servers(ctx.workdir, load_cpus)
    envoy = g.Envoy(
        "filter", ctx.workdir, servers, envoy_cpus, name="trace", component_log_level="wasm:trace"
    )
    try:
        servers.start()
        envoy.start()
        # One request to open the connections and send the first records batch, then the
        # requests counted.
        envoy.probe(g.key_of(3))
        time.sleep(1.5)
        mark = len(envoy.child.output())
        envoy.probe(g.key_of(3))
        time.sleep(0.3)
        mark_stream = len(envoy.child.output())
        envoy.probe(g.key_of(3), {"x-bench-events": str(TRACED_EVENTS)}, stream_body(True))
        time.sleep(0.3)
        output = envoy.child.output()
    finally:
        g.stop_all([envoy, servers])

    def tables(trace: str) -> tuple[list[str], Counter, int, list[g.Callback]]:
        contexts = g.request_callbacks(trace)
        if not contexts:
            raise RuntimeError("no request found in the Wasm trace")
        callbacks = contexts[max(contexts)]
        rows, totals = [], Counter()
        allocations = 0
        for cb in callbacks:
            counts = Counter(cb.calls)
            totals.update(counts)
            allocations += cb.allocations
            calls = ", ".join(
                f"`{name.removeprefix('proxy_')}`" + (f" ×{k}" if k > 1 else "")
                for name, k in counts.items()
            )
            rows.append(
                f"| `{cb.name.removeprefix('proxy_')}` | {len(cb.calls)} | {calls or '-'} "
                f"| {cb.allocations} |"
            )
        return rows, totals, allocations, callbacks

    plain_rows, plain_totals, plain_allocs, plain_callbacks = tables(output[mark:mark_stream])
    _, stream_totals, stream_allocs, stream_callbacks = tables(output[mark_stream:])
    chunks = sum(1 for cb in stream_callbacks if cb.name == "proxy_on_response_body")
    header = [
        "| callback (host → VM) | host calls | which | memory requests (host → VM) |",
        "|---|---:|---|---:|",
    ]
    total = sum(plain_totals.values())
    by_kind = ", ".join(
        f"`{name.removeprefix('proxy_')}` {k}" for name, k in plain_totals.most_common()
    )
    return "\n".join(
        [
            "## Host calls per request",
            "",
            "Every crossing between Envoy and the filter's VM for one request, read from "
            "Envoy's Wasm trace log (`--component-log-level wasm:trace`: the V8 runtime logs "
            "each call both ways). The request is the one of the per-request section (a "
            "plain chat completion answered `200`), on a warm gateway. Left out: the filter's "
            "own log calls, which exist only because the trace level is on; and the flusher's "
            "calls (on a timer, once per batch of up to 500 records, not per request).",
            "",
            *header,
            *plain_rows,
            f"| **in all** | **{total}** | {by_kind} | **{plain_allocs}** |",
            "",
            f"In all, {len(plain_callbacks)} callbacks into the VM, {total} host calls and "
            f"{plain_allocs} memory requests: {len(plain_callbacks) + total + plain_allocs} "
            f"crossings for one request. A stream of {TRACED_EVENTS:,} events (asking for "
            f"usage), which Envoy passed to the filter in {chunks} chunks, took "
            f"{len(stream_callbacks)} callbacks, {sum(stream_totals.values())} host calls and "
            f"{stream_allocs} memory requests: each chunk is one `on_response_body` callback, "
            "one `get_buffer_bytes` and one memory request (and, when the filter takes the "
            "usage it asked for out of the stream, one `set_buffer_bytes` where the chunk "
            "changed).",
            "",
            machine(ctx, versions),
        ]
    )


SECTIONS = {
    "gateway-overhead": gateway_overhead,
    "streaming": streaming,
    "tenant-scale": tenant_scale,
    "record-pipeline": record_pipeline,
    "filter-size": filter_size,
    "host-calls": host_calls,
}
