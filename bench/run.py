"""`make bench`: run the benchmarks and write their figures into BENCHMARKS.md.

Each benchmark is a section: a function that measures and returns its Markdown, including the
machine and versions it ran on. BENCHMARKS.md keeps each section between its own markers, so
running one section (`--section NAME`) rewrites that section alone and leaves the others as
they were. To add a benchmark, write a function and add it to SECTIONS.

    .venv/bin/python bench/run.py [--section NAME ...] [--seconds S] [--rounds N]

Every run is bounded: each measurement lasts `--seconds` (default 2), each figure is the median
of `--rounds` (default 3) measurements taken in turns with the ones it is compared to, and each
child process has a timeout. After the sections, the summary of issue 8's goals at the top of
BENCHMARKS.md is rewritten from the figures the sections left there (`goals.py`).
`bench/compare.py` measures two builds of the filter side by side, for a change to its hot path.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import postgres  # noqa: E402
from processes import Child, answers, free_ports, wait_until  # noqa: E402

import gateway_sections  # noqa: E402
import goals  # noqa: E402
import latency_global  # noqa: E402
import registry_scale  # noqa: E402

OUT = ROOT / "BENCHMARKS.md"
TITLE = (
    "# Benchmarks\n\n"
    "Figures written by `make bench` (bench/run.py); each section says how and where it ran.\n"
)
CHILD_TIMEOUT = 120


@dataclass
class Context:
    seconds: float
    rounds: int
    command: str
    workdir: Path
    cache: dict = field(default_factory=dict)

    def run(self, argv: list[str], **kwargs) -> str:
        done = subprocess.run(
            [str(a) for a in argv],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            cwd=ROOT,
            **kwargs,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(map(str, argv))} failed:\n{done.stderr[-2000:]}")
        return done.stdout


# ---------------------------------------------------------------------------------------------
# The machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) // 1024 // 1024} GiB"
    except OSError:
        pass
    return "unknown"


def machine(ctx: Context, versions: dict[str, str]) -> str:
    rustc = ctx.run(["rustc", "--version"]).strip()
    rows = {
        "command": f"`{ctx.command}`",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs (nproc), {cpu_model()}, {memory()} RAM, "
        f"{platform.system()} {platform.release()}",
        "rustc": rustc,
        **versions,
    }
    return "\n".join(f"- {name}: {value}" for name, value in rows.items())


# ---------------------------------------------------------------------------------------------
# Section: collector ingest

INGEST_TOKEN = "bench-ingest-token-0123"
ADMIN_TOKEN = "bench-admin-token-0123"
BATCHES = (1, 100, 1000)
SENDERS = 4


def collector_ingest(ctx: Context) -> str:
    """Records per second stored durably through `POST /v1/records`, beside the same rows
    handed straight to the store (the ceiling), on SQLite and PostgreSQL."""
    # Both built here, so that the figures are always those of the code in the tree.
    ctx.run(
        [
            "cargo",
            "build",
            "--quiet",
            "--release",
            "-p",
            "collector",
            "--bin",
            "collector",
            "--example",
            "ingest_bench",
        ]
    )
    bench = ROOT / "target" / "release" / "examples" / "ingest_bench"
    collector = ROOT / "target" / "release" / "collector"

    backends: list[tuple[str, Callable[[str], str]]] = []
    sqlite_dir = ctx.workdir / "sqlite"
    sqlite_dir.mkdir()
    backends.append(("SQLite", lambda name: str(sqlite_dir / f"{name}.db")))

    notes = []
    versions = {}
    cluster = None
    try:
        cluster = postgres.Cluster()
        cluster.start()
        versions["PostgreSQL"] = cluster.version()
        backends.append(("PostgreSQL", cluster.create_database))
    except postgres.Unavailable as err:
        if postgres.required():
            raise
        notes.append(f"PostgreSQL was not measured: {err}.")

    rows = []
    try:
        for label, fresh in backends:
            for batch in BATCHES:
                # Rounds alternate the two measurements, so that a disturbance from the rest
                # of the machine falls on both; each figure is the median of its rounds.
                ingests, ceilings = [], []
                for n in range(ctx.rounds):
                    ceiling = measure(ctx, bench, "store", fresh(f"ceiling_{batch}_{n}"), batch)
                    versions.setdefault(label, ceiling["database_version"])
                    ceilings.append(ceiling["records_per_second"])
                    database = fresh(f"ingest_{batch}_{n}")
                    ingests.append(measure_service(ctx, bench, collector, database, batch))
                ingest, ceiling = statistics.median(ingests), statistics.median(ceilings)
                rows.append((label, batch, ingests, ceilings))
                print(
                    f"  {label:10} batch {batch:5}: ingest {ingest:10.0f}/s "
                    f"{[round(x) for x in ingests]}, ceiling {ceiling:10.0f}/s "
                    f"{[round(x) for x in ceilings]}",
                    flush=True,
                )
    finally:
        if cluster is not None:
            cluster.stop()

    table = [
        "| database | batch | ingest, records/s | ceiling, records/s | ingest / ceiling |",
        "|---|---:|---:|---:|---:|",
    ]
    at_100 = []
    for label, batch, ingests, ceilings in rows:
        ingest, ceiling = statistics.median(ingests), statistics.median(ceilings)
        table.append(
            f"| {label} | {batch} | {spread(ingests)} | {spread(ceilings)} "
            f"| {ingest / ceiling:.2f} |"
        )
        if batch == 100:
            at_100.append(ingest / ceiling)
    verdict = (
        f"At batch 100 the service reaches {min(at_100):.0%} of its ceiling at worst "
        f"(target: at least 50%)."
        if at_100
        else ""
    )

    return "\n".join(
        [
            "## Collector ingest",
            "",
            "Billing records and audit entries (in turn, shaped like the filter's) stored by the "
            "collector, in records per second, for batches of 1, 100 and 1000 records, with "
            f"{SENDERS} senders at once (as {SENDERS} Envoys would, each with one batch in "
            f"flight). Each figure is the median of {ctx.rounds} runs of {ctx.seconds:g} s, "
            "the two kinds of run taking turns:",
            "",
            "- **ingest**: `POST /v1/records` to the release build of the collector over "
            "loopback HTTP/1.1 (keep-alive), each batch answered `200` only after its "
            "transaction committed: JSON parsing, validation, the HTTP stack and the commit;",
            "- **ceiling**: the same rows in the same batches handed to the collector's store "
            "in-process (`Store::insert_batch`: one transaction per batch, the same statements), "
            "on a fresh database of the same kind in the same run: what the database itself "
            "allows.",
            "",
            "Durability is the same on both sides: SQLite in WAL mode with `synchronous=FULL`; "
            "PostgreSQL (a throwaway local cluster, default settings: `fsync=on`, "
            "`synchronous_commit=on`). Every run starts on an empty database. The load "
            "generator is `collector/examples/ingest_bench.rs`. Each cell gives the median and, in "
            "brackets, the slowest and fastest run: on a shared machine a commit's `fsync` "
            "varies from run to run, and a ratio near or above 1 means the service adds "
            "nothing measurable to the database's own cost.",
            "",
            *table,
            "",
            verdict,
            *(["", *notes] if notes else []),
            "",
            machine(ctx, versions),
        ]
    )


def spread(values: list[float]) -> str:
    return (
        f"{statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"
        if len(values) > 1
        else f"{values[0]:,.0f}"
    )


def measure(ctx: Context, bench: Path, mode: str, database: str, batch: int, **extra) -> dict:
    argv = [
        bench,
        mode,
        "--database",
        database,
        "--batch",
        batch,
        "--senders",
        SENDERS,
        "--seconds",
        ctx.seconds,
    ]
    for name, value in extra.items():
        argv += [f"--{name}", value]
    return json.loads(ctx.run(argv).strip().splitlines()[-1])


def measure_service(ctx: Context, bench: Path, collector: Path, database: str, batch: int) -> float:
    (port,) = free_ports(1)
    child = Child(
        "collector",
        [collector, "serve", "--listen", f"127.0.0.1:{port}", "--database", database],
        env={
            "COLLECTOR_ADMIN_TOKEN": ADMIN_TOKEN,
            "COLLECTOR_INGEST_TOKEN": INGEST_TOKEN,
            "RUST_LOG": "warn",
        },
        log_path=ctx.workdir / "collector.log",
    )
    child.start()
    try:
        wait_until(
            lambda: answers(f"http://127.0.0.1:{port}/healthz"),
            what="the collector",
            timeout=30,
            watch=[child],
        )
        result = measure(
            ctx,
            bench,
            "http",
            database,
            batch,
            address=f"127.0.0.1:{port}",
            token=INGEST_TOKEN,
        )
    finally:
        child.stop()
    return result["records_per_second"]


# ---------------------------------------------------------------------------------------------
# BENCHMARKS.md, one independent section per benchmark

SECTIONS: dict[str, Callable[[Context], str]] = {
    # bench/gateway_sections.py: the filter's cost in Envoy beside bare Envoy and the
    # alternatives, streaming, tenant table scale, the record pipeline, size and start, host
    # calls.
    **{
        name: functools.partial(section, machine=machine)
        for name, section in gateway_sections.SECTIONS.items()
    },
    "collector-ingest": collector_ingest,
    # bench/latency_global.py: global mode's added latency per request.
    "global-limits": lambda ctx: latency_global.section(ctx, machine),
    # bench/registry_scale.py: the tenant registry at 100,000 tenants.
    "registry-scale": lambda ctx: registry_scale.section(ctx, machine),
}


def replace_section(text: str, name: str, body: str, *, first: bool = False) -> str:
    """`text` with section `name` replaced by `body`; a new section goes at the end, or
    before every other section if `first`."""
    begin, end = f"<!-- section: {name} -->", f"<!-- end of section: {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    if first and "<!-- section: " in text:
        at = text.index("<!-- section: ")
        return text[:at] + block + "\n\n" + text[at:]
    return text.rstrip() + "\n\n" + block + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--section", action="append", choices=sorted(SECTIONS), help="run only these sections"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per figure (median)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    command = "make bench" if not sys.argv[1:] else "bench/run.py " + shlex.join(sys.argv[1:])
    names = args.section or list(SECTIONS)
    text = args.out.read_text() if args.out.exists() else TITLE
    started = time.monotonic()
    for name in names:
        print(f"bench: {name}", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as workdir:
            ctx = Context(
                seconds=args.seconds, rounds=args.rounds, command=command, workdir=Path(workdir)
            )
            text = replace_section(text, name, SECTIONS[name](ctx))
        args.out.write_text(text)
    # The summary of issue 8's goals, from the figures the sections left in the file.
    everything = set(names) == set(SECTIONS)
    elapsed = time.monotonic() - started if everything else None
    text = replace_section(text, "goals", goals.summary(text, elapsed), first=True)
    args.out.write_text(text)
    print(
        f"bench: wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
