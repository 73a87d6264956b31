"""The gateway's sections of `make bench`: what the filter costs in Envoy, beside the floor
(bare Envoy) and the alternatives (Lua, ext_authz), for plain requests and long streams,
with large tenant tables, with records flowing, and at start. `gateway.py` has the parts.

Each section is a function of the run's context and of `machine` (run.py's machine and
versions block), returning its Markdown. The sections that bear on issue 8's goals also leave
their deciding figures in a comment at the end of their Markdown (`figures`), which
`goals.py` reads back from BENCHMARKS.md to write the summary at its top.
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


def paired(values: list[float], floor: list[float]) -> float:
    """The median of the per-round ratios: each run beside the floor's run of the same round,
    minutes apart at most, so that what the rest of the machine does falls on both."""
    return med([v / f for v, f in zip(values, floor, strict=True)])


def figures(name: str, values: dict) -> str:
    """A section's deciding figures, for goals.py, as an HTML comment (not rendered)."""
    return f"<!-- figures {name}: {json.dumps(values, sort_keys=True)} -->"


NOISE = (
    "This machine is shared: other builds ran while these figures were taken (load average "
    "below), so single runs vary by tens of percent. Read the ratios, which pair each run with "
    "the floor's run of the same round, and the CPU per request, which other programs do not "
    "inflate as much as they do throughput and latency."
)


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


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
        filt = envoys["filter"]
        drained(filt)
        before = filter_counts(filt, servers)
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
        drained(filt)
        after = filter_counts(filt, servers)
    finally:
        g.stop_all([*envoys.values(), servers])
    counts = {k: after[k] - before[k] for k in after}

    bare = results["bare"]
    rows = [
        "| variant | requests/s | × bare | Envoy CPU per request | × bare | p50, 1 conn. | × bare "
        f"| added p50 | p99, 1 conn. | × bare | p99, {THROUGHPUT_CONNECTIONS} conn. | × bare |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in g.VARIANTS:
        r = results[v]
        rows.append(
            f"| {LABELS[v]} | {span(r.rps)} | {paired(r.rps, bare.rps):.2f} "
            f"| {span(r.cpu_us, '.1f')} µs | {paired(r.cpu_us, bare.cpu_us):.2f} "
            f"| {med(r.p50):.0f} µs | {paired(r.p50, bare.p50):.2f} "
            f"| {added(r.p50, bare.p50):+.0f} µs "
            f"| {med(r.p99):.0f} µs | {paired(r.p99, bare.p99):.2f} "
            f"| {med(r.loaded_p99) / 1000:.1f} ms "
            f"| {paired(r.loaded_p99, bare.loaded_p99):.2f} |"
        )

    f, keycheck = results["filter"], results["wasm_keycheck"]
    ratio = paired(f.rps, bare.rps)
    added_p50, added_p99 = added(f.p50, bare.p50), added(f.p99, bare.p99)
    added_cpu = added(f.cpu_us, bare.cpu_us)
    versus = {
        alt: {
            "rps": paired(f.rps, results[alt].rps),
            "cpu": paired(f.cpu_us, results[alt].cpu_us),
            "p50": paired(f.p50, results[alt].p50),
        }
        for alt in ("lua", "ext_authz", "wasm_keycheck")
    }
    faster = [a for a in ("lua", "ext_authz") if versus[a]["rps"] > 1 and versus[a]["p50"] < 1]
    goals = [
        f"- throughput with the filter ≥ 85% of bare Envoy: **{ratio:.0%}**, "
        + ("met" if ratio >= 0.85 else "not met"),
        f"- added p50 < 50 µs: **{added_p50:+.0f} µs** (p99 {added_p99:+.0f} µs), "
        + ("met" if added_p50 < 50 else "not met"),
        "- faster than Lua and ext_authz (throughput and p50): "
        + (
            "met"
            if len(faster) == 2
            else f"not met (faster than {', '.join(faster) if faster else 'neither'})"
        )
        + "; the filter's throughput is "
        + ", ".join(
            f"{versus[a]['rps']:.2f}× {LABELS[a].split(' (')[0]}'s" for a in ("lua", "ext_authz")
        )
        + ", its p50 "
        + ", ".join(f"{versus[a]['p50']:.2f}×" for a in ("lua", "ext_authz"))
        + ", its CPU per request "
        + ", ".join(f"{versus[a]['cpu']:.2f}×" for a in ("lua", "ext_authz")),
    ]
    records = (
        f"Records during the runs: {counts['queued']:,} queued by the filter (a billing record "
        f"and an audit entry per request: {counts['requests']:,} requests), "
        f"{counts['stored']:,} stored by the collector once the buffer had drained, "
        f"{counts['dropped']:,} dropped, {counts['failed']:,} batches failed."
    )
    summary = {
        "rps_ratio": ratio,
        "added_p50_us": added_p50,
        "added_p99_us": added_p99,
        "added_cpu_us": added_cpu,
        "bare_cpu_us": med(bare.cpu_us),
        "bare_rps": med(bare.rps),
        "filter_rps": med(f.rps),
        "keycheck_rps_ratio": paired(keycheck.rps, bare.rps),
        "keycheck_added_cpu_us": added(keycheck.cpu_us, bare.cpu_us),
        "versus": versus,
        "rounds": ctx.rounds,
        "seconds": ctx.seconds,
    }
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
            "requests served;",
            f"- **p50, p99, 1 conn.**: one connection, one request at a time, {ctx.seconds:g} s "
            "per run: the latency a request sees through an idle gateway; "
            f"**p99, {THROUGHPUT_CONNECTIONS} conn.**: the p99 of the throughput runs;",
            f"- {ctx.rounds} rounds; in each, every variant runs once (in a different order "
            "each round). A figure is the median of its runs (brackets: lowest and highest); "
            "a ratio (× bare) is the median over the rounds of the variant's run divided by "
            "bare Envoy's run of the same round, and *added* the median of the differences.",
            "",
            NOISE,
            "",
            *rows,
            "",
            f"The upstream alone (wrk straight to it, on the same CPU as wrk) answered "
            f"{upstream.rps:,.0f} requests/s, {upstream.rps / med(bare.rps):.1f}× bare Envoy: "
            f"it is not the bottleneck. {records}",
            "",
            "Goals (issue 8):",
            "",
            *goals,
            "",
            f"The filter adds {added_cpu:.0f} µs of Envoy CPU per request to bare Envoy's "
            f"{med(bare.cpu_us):.0f} µs. The minimal Proxy-Wasm filter, which only checks the "
            f"key, adds {added(keycheck.cpu_us, bare.cpu_us):.0f} µs "
            f"({paired(keycheck.rps, bare.rps):.0%} of bare throughput): that is the floor of "
            "any Proxy-Wasm filter in this Envoy. The buffer filter, which the filter needs "
            "before it, costs next to nothing on its own. The host calls section counts the "
            "crossings between Envoy and the VM the filter makes and prices them; the "
            "hot-path section breaks down the rest by stage of the request.",
            "",
            with_load(machine, ctx, versions, load_before),
            "",
            figures("gateway-overhead", summary),
        ]
    )


def added(values: list[float], floor: list[float]) -> float:
    """The median of the per-round differences to the floor."""
    return med([v - f for v, f in zip(values, floor, strict=True)])


def drained(envoy: g.Envoy) -> None:
    """Waits for the filter's record buffer to empty (every queued record sent)."""
    wait_until(
        lambda: envoy.stat("wasmcustom.inference_gate.buffer.records") == 0,
        what="the filter's record buffer to drain",
        timeout=60,
    )


def filter_counts(envoy: g.Envoy, servers: g.Servers) -> dict[str, int]:
    """The filter's record counters and the collector's stored count, to compare."""
    stat = "wasmcustom.inference_gate."
    return {
        "requests": envoy.stat(stat + "requests.success") or 0,
        "queued": envoy.stat(stat + "records.queued") or 0,
        "dropped": envoy.stat(stat + "records.dropped") or 0,
        "failed": envoy.stat(stat + "batches.failed") or 0,
        "stored": servers.collector_ingested(),
    }


# ---------------------------------------------------------------------------------------------
# Section 2: streaming

STREAM_LENGTHS = (1_000, 10_000, 100_000)
# Growth of the VM memory from 10k- to 100k-event streams still counted as flat: the memory
# follows the largest chunk Envoy hands over, which varies a little from run to run.
FLAT_MEMORY = 0.10
# One stream this long, through the filter alone, for its memory (about 3 s).
LONG_STREAM = 1_000_000
STRIPPED_SHORT = "after 10,000-event streams that did not ask for usage"
STRIPPED_LONG = f"after one {LONG_STREAM:,}-event stream that did not ask for usage"


def long_stream(asked: bool) -> tuple:
    """The arguments of `Envoy.send_as_wrk` for one stream of `LONG_STREAM` events."""
    return g.key_of(3), {"x-bench-events": str(LONG_STREAM)}, stream_body(asked)


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

    def run(variant: str, asked: bool, n: int, seconds: float, key: str = "") -> None:
        load = g.wrk(
            envoys[variant].url,
            scripts[(n, asked)],
            connections=1,
            seconds=seconds,
            cpus=load_cpus,
            timeout_s=60,
        )
        check(load, f"{variant}, {n} events")
        times.setdefault((key or variant, asked, n), []).append(load.p50_us)

    def snapshot(label: str) -> None:
        memory.append(
            (
                label,
                g.wasm_memories(envoys["filter"].pid),
                g.rss_kib(envoys["filter"].pid),
                g.rss_kib(envoys["bare"].pid),
            )
        )

    try:
        servers.start()
        start_all(list(envoys.values()))
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
            for r in range(ctx.rounds):
                for variant in rotated(["bare", "filter"], r):
                    run(variant, True, n, seconds)
            snapshot(f"after {n:,}-event streams")
            print(
                f"  {n:>7,} events: bare {med(times[('bare', True, n)]) / 1000:.1f} ms, "
                f"filter {med(times[('filter', True, n)]) / 1000:.1f} ms",
                flush=True,
            )
        # One much longer stream, for the memory alone.
        assert envoys["filter"].send_as_wrk(*long_stream(True)) == 200
        snapshot(f"after one {LONG_STREAM:,}-event stream")
        # Last, so that the snapshots above compare streams of one kind: taking the usage
        # out of the stream needs each chunk whole, and a second buffer for its rewrite.
        for r in range(ctx.rounds):
            for variant, asked in rotated([("bare", True), ("filter", False)], r):
                run(variant, asked, 10_000, ctx.seconds, key=f"{variant}-beside-stripped")
        snapshot(STRIPPED_SHORT)
        assert envoys["filter"].send_as_wrk(*long_stream(False)) == 200
        snapshot(STRIPPED_LONG)
        estimated = envoys["filter"].stat("wasmcustom.inference_gate.usage.estimated")
    finally:
        g.stop_all([*envoys.values(), servers])

    rows = [
        "| events | upstream alone | bare Envoy | inference-gate | × bare | added per event |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    per_event = {}
    for n in STREAM_LENGTHS:
        bare_ms = [t / 1000 for t in times[("bare", True, n)]]
        filter_ms = [t / 1000 for t in times[("filter", True, n)]]
        per_event[n] = added(filter_ms, bare_ms) * 1000 / n
        rows.append(
            f"| {n:,} | {direct[n] / 1000:.1f} ms | {span(bare_ms, '.1f')} ms "
            f"| {span(filter_ms, '.1f')} ms "
            f"| {paired(filter_ms, bare_ms):.2f} | {per_event[n]:.2f} µs |"
        )
    stripped = times[("filter-beside-stripped", False, 10_000)]
    bare10 = times[("bare-beside-stripped", True, 10_000)]
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

    def largest(label: str) -> int:
        vms = next(m for name, m, _, _ in memory if name == label)
        return max((m.size_kib for m in vms), default=0)

    at_10k = largest("after 10,000-event streams")
    at_long = largest(f"after one {LONG_STREAM:,}-event stream")
    growth = (at_long - at_10k) / at_10k if at_10k else 0.0
    flat = growth <= FLAT_MEMORY
    stripped_short, stripped_long = largest(STRIPPED_SHORT), largest(STRIPPED_LONG)
    stripped_flat = stripped_long <= stripped_short * (1 + FLAT_MEMORY)
    verdict = (
        f"From 10,000-event streams to a {LONG_STREAM:,}-event one ({LONG_STREAM // 10_000}× "
        f"longer), the largest VM's linear memory went from {at_10k:,} to {at_long:,} KiB "
        f"({growth:+.0%}): "
        + (
            "flat with respect to the stream's length. The filter keeps the running usage and "
            "at most one incomplete event per stream, and reads each chunk Envoy hands over "
            "64 KiB at a time: from this fast upstream Envoy can hand the filter several MB "
            "at once, past its 1 MiB buffer limit (up to 4.3 MB in a trace of a "
            "100,000-event stream), which, read whole, grew the VM's memory with the longest "
            "streams."
            if flat
            else f"it grew by more than {FLAT_MEMORY:.0%}, so it is not flat (see the figures)."
        )
        + f" When the filter takes the usage chunk out of the stream, it reads each chunk "
        f"whole (and needs a second buffer for the rewrite): the largest VM went from "
        f"{stripped_short:,} KiB after the 10,000-event streams that did not ask for usage to "
        f"{stripped_long:,} KiB after a {LONG_STREAM:,}-event one"
        + (
            "."
            if stripped_flat
            else ": not flat. That memory follows the largest chunk Envoy hands over, which "
            "grows when the upstream writes faster than the client reads, and the longer the "
            "stream the likelier a large one; the README's limitations say what it takes to "
            "bound it."
        )
    )
    summary = {
        "per_event_us": {str(n): per_event[n] for n in STREAM_LENGTHS},
        "ratio": {
            str(n): paired(times[("filter", True, n)], times[("bare", True, n)])
            for n in STREAM_LENGTHS
        },
        "vm_kib_10k": at_10k,
        "vm_kib_long": at_long,
        "long_stream": LONG_STREAM,
        "vm_kib_stripped": [stripped_short, stripped_long],
        "stripped_flat": stripped_flat,
        "memory_flat": flat,
    }
    return "\n".join(
        [
            "## Streaming",
            "",
            "A chat completion streamed as server-sent events: the upstream writes each event "
            "(a 170-byte OpenAI chunk of one token) on its own as fast as it can, then the "
            "usage chunk and `[DONE]`; the client asked for usage "
            "(`stream_options.include_usage`). The figure is the time to the stream's last "
            "byte, one stream at a time (wrk, one connection; median over the streams of a "
            f"run, then median of {ctx.rounds} runs taking turns with bare Envoy, brackets: "
            "lowest and highest run). *Added per event* is the median over the rounds of "
            "(inference-gate − bare) / events: what reading every event for its usage costs, "
            "spread over the stream. Envoy delivers the events to the filter in the chunks it "
            "read them in (often several events per chunk). A negative figure means the "
            "stream reached the client sooner through the filter than through bare Envoy: "
            "most likely because, while the filter reads a chunk, more events arrive and are "
            "passed on together, so Envoy makes fewer, larger writes to the client than bare "
            "Envoy, which writes each event as it comes. The filter's own time per event is "
            "hidden in the upstream's pace.",
            "",
            NOISE,
            "",
            *rows,
            "",
            f"When the client does not ask for usage, the filter asks for it and takes the "
            f"usage chunk out of the stream (rewriting every chunk it passes on): a "
            f"10,000-event stream then takes {med(stripped) / 1000:.1f} ms, "
            f"{paired(stripped, bare10):.2f}× bare, "
            f"{added(stripped, bare10) / 10_000:.2f} µs per event. "
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
            verdict,
            "",
            with_load(machine, ctx, versions, load_before),
            "",
            figures("streaming", summary),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Section 3: tenant table scale

TENANT_COUNTS = (10, 10_000, 100_000)
# How much dearer a request may be with the largest table and still count as flat: within
# what this shared machine's noise allows.
FLAT_COST = 0.15


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
            f"| {n:,} | {span(r.rps)} | {paired(r.rps, base.rps):.2f} "
            f"| {span(r.cpu_us, '.1f')} µs | {paired(r.cpu_us, base.cpu_us):.2f} "
            f"| {med(r.p50):.0f} µs | {med(r.p99):.0f} µs |"
        )
    largest = results[TENANT_COUNTS[-1]]
    cpu_ratio = paired(largest.cpu_us, base.cpu_us)
    rps_ratio = paired(largest.rps, base.rps)
    flat = cpu_ratio <= 1 + FLAT_COST
    verdict = (
        f"With {TENANT_COUNTS[-1]:,} tenants a request costs {cpu_ratio:.2f}× the Envoy CPU "
        f"it costs with {TENANT_COUNTS[0]} ({rps_ratio:.2f}× the throughput): "
        + (
            "flat: the key table is a hash map on the key's digest."
            if flat
            else f"more than {FLAT_COST:.0%} dearer, so not flat."
        )
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
            f"{ctx.rounds} runs of {ctx.seconds:g} s (brackets: lowest and highest); ratios "
            "are medians of the per-round ratios.",
            "",
            NOISE,
            "",
            *cost_rows,
            "",
            verdict,
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
            "",
            figures(
                "tenant-scale",
                {
                    "cpu_ratio": cpu_ratio,
                    "rps_ratio": rps_ratio,
                    "flat": flat,
                    "largest": TENANT_COUNTS[-1],
                    "configure_ms": {
                        str(n): med(loaded[n]["configure_s"]) * 1000 for n in TENANT_COUNTS
                    },
                    "ready_s": {str(n): loaded[n]["ready_s"] for n in TENANT_COUNTS},
                    "vm_mib": {str(n): loaded[n]["vm_kib"] / 1024 for n in TENANT_COUNTS},
                },
            ),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Section 4: the record pipeline

PIPELINE_SECONDS = 6


def record_pipeline(ctx, machine: Machine) -> str:
    """Sustained requests per second with every record going to the collector, and the
    collector's CPU at that rate."""
    versions = prepare(ctx)
    load_before = g.load_average()
    envoy_cpus, load_cpus = g.cpu_split()
    servers = g.Servers(ctx.workdir, load_cpus)
    envoys = {v: g.Envoy(v, ctx.workdir, servers, envoy_cpus) for v in ("bare", "filter")}
    script = g.wrk_script(ctx.workdir, "chat", {"authorization": f"Bearer {g.key_of(3)}"})
    filt = envoys["filter"]
    stat = "wasmcustom.inference_gate."
    rps: dict[str, list[float]] = {"bare": [], "filter": []}
    requests, wall, collector_used, envoy_used = 0, 0.0, 0.0, 0.0
    stored_during, buffered_at_end, drain_s = 0, [], []

    def load(envoy: g.Envoy) -> g.Load:
        result = g.wrk(
            envoy.url,
            script,
            connections=THROUGHPUT_CONNECTIONS,
            seconds=PIPELINE_SECONDS,
            cpus=load_cpus,
        )
        check(result, envoy.name)
        return result

    try:
        servers.start()
        start_all(list(envoys.values()))
        for envoy in envoys.values():
            g.wrk(envoy.url, script, connections=THROUGHPUT_CONNECTIONS, seconds=1, cpus=load_cpus)
        drained(filt)
        before = filter_counts(filt, servers)
        for r in range(ctx.rounds):
            for variant in rotated(["bare", "filter"], r):
                if variant == "bare":
                    rps["bare"].append(load(envoys["bare"]).rps)
                    continue
                stored_before = servers.collector_ingested()
                collector_cpu = g.cpu_seconds(servers.collector.pid)
                envoy_cpu = g.cpu_seconds(filt.pid)
                started = time.monotonic()
                result = load(filt)
                wall += time.monotonic() - started
                collector_used += g.cpu_seconds(servers.collector.pid) - collector_cpu
                envoy_used += g.cpu_seconds(filt.pid) - envoy_cpu
                stored_during += servers.collector_ingested() - stored_before
                buffered_at_end.append(filt.stat(stat + "buffer.records") or 0)
                drain_started = time.monotonic()
                drained(filt)
                drain_s.append(time.monotonic() - drain_started)
                rps["filter"].append(result.rps)
                requests += result.requests
            print(
                f"  round {r + 1}: bare {rps['bare'][-1]:,.0f}/s, "
                f"filter {rps['filter'][-1]:,.0f}/s",
                flush=True,
            )
        after = filter_counts(filt, servers)
    finally:
        g.stop_all([*envoys.values(), servers])
    counts = {k: after[k] - before[k] for k in after}

    ratio = paired(rps["filter"], rps["bare"])
    records = counts["queued"]
    rows = [
        "| | figure |",
        "|---|---:|",
        f"| requests/s through the filter, {PIPELINE_SECONDS} s runs | {span(rps['filter'])}; "
        f"{ratio:.2f}× bare Envoy's {span(rps['bare'])} |",
        f"| records queued (billing + audit per request) | {records:,} ({records / wall:,.0f}/s) |",
        f"| records the collector stored while the load ran | {stored_during:,} "
        f"({stored_during / wall:,.0f}/s) |",
        f"| records still buffered in Envoy when the load stopped (each run) "
        f"| {', '.join(f'{b:,}' for b in buffered_at_end)} |",
        f"| time for the buffer to empty after the load stopped (each run) "
        f"| {', '.join(f'{d:.1f}' for d in drain_s)} s |",
        f"| records stored in all / dropped / failed batches | {counts['stored']:,} / "
        f"{counts['dropped']:,} / {counts['failed']:,} |",
        f"| collector CPU while the load ran | {collector_used / wall:.0%} of one core "
        f"({collector_used / max(stored_during, 1) * 1e6:.1f} µs per record stored) |",
        f"| Envoy CPU while the load ran (the flusher on its main thread included) "
        f"| {envoy_used / wall:.0%} of one core ({envoy_used / max(requests, 1) * 1e6:.0f} µs "
        "per request) |",
    ]
    kept_up = counts["stored"] == records and counts["dropped"] == 0 and counts["failed"] == 0
    verdict = (
        f"The collector kept up: every one of the {records:,} records queued was stored, "
        f"none dropped, at {records / wall:,.0f} records/s, using "
        f"{collector_used / wall:.0%} of a core."
        if kept_up
        else f"Records were lost or are missing: {records:,} queued, {counts['stored']:,} "
        f"stored, {counts['dropped']:,} dropped."
    )
    return "\n".join(
        [
            "## Record pipeline",
            "",
            "The request of the per-request section through the filter at full speed (wrk, "
            f"{THROUGHPUT_CONNECTIONS} connections), every request queuing a billing record "
            "and an audit entry that the filter's flusher sends to the collector (release "
            "build, SQLite in WAL mode with `synchronous=FULL`, the default settings: batches "
            f"of up to 500 records, one in flight). {ctx.rounds} rounds, in each a "
            f"{PIPELINE_SECONDS} s run through the filter and one through bare Envoy, taking "
            "turns; after each run through the filter, the time for its buffer to empty. CPU "
            "is user + system time from `/proc/<pid>/stat` over the filter's runs; *stored* "
            "counts `collector_records_ingested_total` on the collector's `/metrics`.",
            "",
            NOISE,
            "",
            *rows,
            "",
            verdict,
            "",
            with_load(machine, ctx, versions, load_before),
            "",
            figures(
                "record-pipeline",
                {
                    "rps": med(rps["filter"]),
                    "rps_ratio": ratio,
                    "records_per_s": records / wall,
                    "collector_core": collector_used / wall,
                    "collector_us_per_record": collector_used / max(stored_during, 1) * 1e6,
                    "kept_up": kept_up,
                },
            ),
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
            "",
            figures(
                "filter-size",
                {
                    "wasm_bytes": size,
                    "keycheck_bytes": keycheck,
                    "compile_ms": compile_s * 1000,
                    "thread_vm_ms": thread_s * 1000,
                    "ready_added_s": med(ready["filter"]) - med(ready["bare"]),
                },
            ),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Host calls per request


TRACED_EVENTS = 1_000


def host_calls(ctx, machine: Machine) -> str:
    """Every crossing between Envoy and the VM for one request, from Envoy's Wasm trace,
    beside the minimal Proxy-Wasm filter's; and what one host call costs in this Envoy."""
    versions = prepare(ctx)
    load_before = g.load_average()
    envoy_cpus, load_cpus = g.cpu_split()
    servers = g.Servers(ctx.workdir, load_cpus)
    traced = {
        v: g.Envoy(
            v, ctx.workdir, servers, envoy_cpus, name=f"trace-{v}", component_log_level="wasm:trace"
        )
        for v in ("filter", "wasm_keycheck")
    }
    try:
        servers.start()
        start_all(list(traced.values()))
        traces = {}
        for variant, envoy in traced.items():
            # One request to open the connections and send the first records batch, then the
            # requests counted.
            envoy.send_as_wrk(g.key_of(3))
            time.sleep(1.5)
            mark = len(envoy.child.output())
            assert envoy.send_as_wrk(g.key_of(3)) == 200
            time.sleep(0.3)
            traces[variant] = envoy.child.output()[mark:]
        filt = traced["filter"]
        mark = len(filt.child.output())
        filt.send_as_wrk(g.key_of(3), {"x-bench-events": str(TRACED_EVENTS)}, stream_body(True))
        time.sleep(0.3)
        stream_trace = filt.child.output()[mark:]
        g.stop_all(list(traced.values()))
        calibration = calibrate(ctx, servers, envoy_cpus, load_cpus)
    finally:
        g.stop_all([*traced.values(), servers])

    plain = Crossings(traces["filter"])
    floor = Crossings(traces["wasm_keycheck"])
    stream = Crossings(stream_trace)
    chunks = sum(1 for cb in stream.callbacks if cb.name == "proxy_on_response_body")
    absent, present = calibration["absent"], calibration["present"]
    extra_calls = plain.calls - floor.calls
    extra_memory = plain.memory - floor.memory
    estimate = extra_calls * absent + extra_memory * max(present - absent, 0.0)
    by_kind = ", ".join(
        f"`{name.removeprefix('proxy_')}` {k}" for name, k in plain.totals.most_common()
    )
    return "\n".join(
        [
            "## Host calls per request",
            "",
            "Every crossing between Envoy and the filter's VM for one request, read from "
            "Envoy's Wasm trace log (`--component-log-level wasm:trace`: the V8 runtime logs "
            "each call both ways). The request is the one of the per-request section (a "
            "plain chat completion answered `200`, with the headers wrk sends), on a warm "
            "gateway. Left out: the filter's own log calls, which exist only because the trace "
            "level is on; and the flusher's calls (on a timer, once per batch of up to 500 "
            "records, not per request). *Memory requests* are Envoy calling into the VM to "
            "allocate the memory a host call returns its value in.",
            "",
            "| callback (host → VM) | host calls | which | memory requests (host → VM) |",
            "|---|---:|---|---:|",
            *plain.rows,
            f"| **in all** | **{plain.calls}** | {by_kind} | **{plain.memory}** |",
            "",
            f"In all, {len(plain.callbacks)} callbacks into the VM, {plain.calls} host calls "
            f"and {plain.memory} memory requests: **{plain.crossings} crossings** for one "
            f"request. The minimal Proxy-Wasm key check makes {len(floor.callbacks)} "
            f"callbacks, {floor.calls} host calls and {plural(floor.memory, 'memory request')}: "
            f"{floor.crossings} crossings. A stream of {TRACED_EVENTS:,} events (asking for "
            f"usage), which Envoy passed to the filter in {chunks} chunks, took "
            f"{len(stream.callbacks)} callbacks, {stream.calls} host calls and "
            f"{stream.memory} memory requests: each chunk is one `on_response_body` callback "
            "and, per 64 KiB of it, one `get_buffer_bytes` and one memory request (when the "
            "filter takes the usage it asked for out of the stream, it reads the chunk whole "
            "instead, and calls `set_buffer_bytes` where the chunk changed).",
            "",
            "What a host call costs in this Envoy: the minimal key check made to read one "
            f"request header {CALIBRATION_READS} more times per request (`@reads` in its "
            "configuration), a header the request has (`:path`: a call and a memory request "
            "each) and one it does not (a call alone), beside the same filter without the "
            f"extra reads; Envoy CPU per request at full load as in the per-request section, "
            f"{ctx.rounds} rounds of {ctx.seconds:g} s taking turns, medians of the per-round "
            "differences:",
            "",
            "| | Envoy CPU per request | per extra read |",
            "|---|---:|---:|",
            f"| key check | {calibration['base_us']:.1f} µs | |",
            f"| + {CALIBRATION_READS} reads of a header that is absent "
            f"| {calibration['absent_us']:.1f} µs | {absent:.2f} µs |",
            f"| + {CALIBRATION_READS} reads of a header that is present "
            f"| {calibration['present_us']:.1f} µs | {present:.2f} µs |",
            "",
            f"At those prices, the {extra_calls} host calls and {extra_memory} memory requests "
            f"the filter makes beyond the minimal key check come to about {estimate:.0f} µs "
            "of Envoy CPU per request (its two extra callbacks, `on_queue_ready` on Envoy's "
            "main thread, not counted). The rest of what it adds (per-request section) is the "
            "work inside the VM and the Envoy side of what the host calls do; the hot-path "
            "section breaks it down by stage.",
            "",
            with_load(machine, ctx, versions, load_before),
            "",
            figures(
                "host-calls",
                {
                    "crossings": plain.crossings,
                    "calls": plain.calls,
                    "memory": plain.memory,
                    "callbacks": len(plain.callbacks),
                    "keycheck_crossings": floor.crossings,
                    "us_per_call": absent,
                    "us_per_value_call": present,
                    "priced_us": estimate,
                },
            ),
        ]
    )


class Crossings:
    """One request's callbacks, host calls and memory requests, from a Wasm trace."""

    def __init__(self, trace: str) -> None:
        contexts = g.request_callbacks(trace)
        if not contexts:
            raise RuntimeError("no request found in the Wasm trace")
        self.callbacks = contexts[max(contexts)]
        self.totals: Counter = Counter()
        self.rows = []
        for cb in self.callbacks:
            counts = Counter(cb.calls)
            self.totals.update(counts)
            calls = ", ".join(
                f"`{name.removeprefix('proxy_')}`" + (f" ×{k}" if k > 1 else "")
                for name, k in counts.items()
            )
            self.rows.append(
                f"| `{cb.name.removeprefix('proxy_')}` | {len(cb.calls)} | {calls or '-'} "
                f"| {cb.allocations} |"
            )
        self.calls = sum(self.totals.values())
        self.memory = sum(cb.allocations for cb in self.callbacks)
        self.crossings = len(self.callbacks) + self.calls + self.memory


# Enough reads that their cost stands well clear of the noise of a shared machine.
CALIBRATION_READS = 100


def calibrate(ctx, servers: g.Servers, envoy_cpus: list[int], load_cpus: list[int]) -> dict:
    """Envoy CPU per request of the minimal key check, and per extra header read."""
    extras = {
        "base": "",
        "absent": f"@reads {CALIBRATION_READS} x-bench-absent\n",
        "present": f"@reads {CALIBRATION_READS} :path\n",
    }
    envoys = {
        name: g.Envoy(
            "wasm_keycheck",
            ctx.workdir,
            servers,
            envoy_cpus,
            name=f"calibrate-{name}",
            keycheck_extra=extra,
        )
        for name, extra in extras.items()
    }
    script = g.wrk_script(ctx.workdir, "chat", {"authorization": f"Bearer {g.key_of(3)}"})
    results = {name: Measured() for name in envoys}
    try:
        start_all(list(envoys.values()))
        for envoy in envoys.values():
            g.wrk(envoy.url, script, connections=THROUGHPUT_CONNECTIONS, seconds=1, cpus=load_cpus)
        for n in range(ctx.rounds):
            for name in rotated(list(envoys), n):
                results[name].throughput(envoys[name], script, ctx, load_cpus)
    finally:
        g.stop_all(list(envoys.values()))
    base = results["base"].cpu_us
    return {
        "base_us": med(base),
        "absent_us": med(results["absent"].cpu_us),
        "present_us": med(results["present"].cpu_us),
        "absent": added(results["absent"].cpu_us, base) / CALIBRATION_READS,
        "present": added(results["present"].cpu_us, base) / CALIBRATION_READS,
    }


SECTIONS = {
    "gateway-overhead": gateway_overhead,
    "streaming": streaming,
    "tenant-scale": tenant_scale,
    "record-pipeline": record_pipeline,
    "filter-size": filter_size,
    "host-calls": host_calls,
}
