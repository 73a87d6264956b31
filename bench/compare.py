"""Two builds of the filter side by side: the figures to record for a change to its hot path.

    .venv/bin/python bench/compare.py BEFORE.wasm AFTER.wasm [--rounds N] [--seconds S]

For each build: the crossings of one request (as in the host calls section) and of one long
stream's memory, then the two Envoys (and bare Envoy) taking turns under the per-request
section's load, round after round. Prints Markdown to paste into BENCHMARKS.md's log of
hot-path changes; it writes nothing itself. Build BEFORE from the tree without the change
(a copy of the tree, with its own CARGO_TARGET_DIR).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import gateway as g  # noqa: E402
import gateway_sections as s  # noqa: E402


def envoy_of(wasm: Path, name: str, workdir: Path, servers: g.Servers, cpus: list[int], **kw):
    # envoy_config reads the module's path when the Envoy's configuration is written.
    g.WASM = wasm
    return g.Envoy("filter", workdir, servers, cpus, name=name, **kw)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    builds = {"before": args.before.resolve(), "after": args.after.resolve()}
    workdir = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    ctx = argparse.Namespace(seconds=args.seconds, rounds=args.rounds)
    g.ensure_wrk()
    envoy_cpus, load_cpus = g.cpu_split()
    servers = g.Servers(workdir, load_cpus)
    crossings: dict[str, s.Crossings] = {}
    memory: dict[str, int] = {}
    results = {name: s.Measured() for name in ("bare", *builds)}
    try:
        servers.start()
        for name, wasm in builds.items():
            envoy = envoy_of(
                wasm,
                f"trace-{name}",
                workdir,
                servers,
                envoy_cpus,
                component_log_level="wasm:trace",
            )
            try:
                envoy.start()
                envoy.send_as_wrk(g.key_of(3))
                time.sleep(1.5)
                mark = len(envoy.child.output())
                assert envoy.send_as_wrk(g.key_of(3)) == 200
                time.sleep(0.3)
                crossings[name] = s.Crossings(envoy.child.output()[mark:])
            finally:
                envoy.stop()
            envoy = envoy_of(wasm, f"memory-{name}", workdir, servers, envoy_cpus)
            try:
                envoy.start()
                assert envoy.send_as_wrk(*s.long_stream(True)) == 200
                memory[name] = max(m.size_kib for m in g.wasm_memories(envoy.pid))
            finally:
                envoy.stop()

        envoys = {"bare": g.Envoy("bare", workdir, servers, envoy_cpus)}
        for name, wasm in builds.items():
            envoys[name] = envoy_of(wasm, name, workdir, servers, envoy_cpus)
        script = g.wrk_script(workdir, "chat", {"authorization": f"Bearer {g.key_of(3)}"})
        try:
            s.start_all(list(envoys.values()))
            for envoy in envoys.values():
                g.wrk(envoy.url, script, connections=32, seconds=1, cpus=load_cpus)
            for n in range(args.rounds):
                for name in s.rotated(list(envoys), n):
                    results[name].throughput(envoys[name], script, ctx, load_cpus)
                for name in s.rotated(list(envoys), n):
                    results[name].latency(envoys[name], script, ctx, load_cpus)
                print(
                    f"  round {n + 1}: "
                    + ", ".join(f"{k} {r.cpu_us[-1]:.0f} µs" for k, r in results.items()),
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            g.stop_all(list(envoys.values()))
    finally:
        servers.stop()

    bare = results["bare"]
    before, after = results["before"], results["after"]
    rows = [
        "| | before | after |",
        "|---|---:|---:|",
        "| crossings per request (callbacks + host calls + memory requests) | "
        + " | ".join(
            f"{c.crossings} ({len(c.callbacks)} + {c.calls} + {c.memory})"
            for c in crossings.values()
        )
        + " |",
        "| Envoy CPU per request | "
        + " | ".join(f"{s.span(r.cpu_us, '.1f')} µs" for r in (before, after))
        + " |",
        "| added to bare Envoy's CPU per request (median of per-round differences) | "
        + " | ".join(f"{s.added(r.cpu_us, bare.cpu_us):.1f} µs" for r in (before, after))
        + " |",
        "| throughput, × bare | "
        + " | ".join(f"{s.paired(r.rps, bare.rps):.2f}" for r in (before, after))
        + " |",
        "| added p50, one connection | "
        + " | ".join(f"{s.added(r.p50, bare.p50):+.0f} µs" for r in (before, after))
        + " |",
        f"| largest VM's linear memory after one {s.LONG_STREAM:,}-event stream | "
        + " | ".join(f"{memory[n]:,} KiB" for n in builds)
        + " |",
    ]
    print(
        "\n".join(
            [
                f"{args.rounds} rounds of {args.seconds:g} s, bare Envoy and the two builds "
                "taking turns; after / before, CPU per request: "
                f"{s.paired(after.cpu_us, before.cpu_us):.2f} (median of the per-round ratios).",
                "",
                *rows,
            ]
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
