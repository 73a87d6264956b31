"""Start and stop an inference-gate stack: the collector, a model server and Envoy with the filter.

`scripts/run.py` (behind `make run`) and the integration tests in `envoy/tests/` both build on
this module, so the stack a user runs is the stack the tests check. Standard library plus PyYAML.

- `envoy_config`: ports, the upstream, the plugin configuration, and the Envoy configuration
  rendered from `envoy/envoy.yaml` for them;
- `processes`: loopback ports, HTTP probes, waiting with a deadline, and `Child`, one process
  with its output in a log file (and on the console for `make run`);
- here, `Stack`: the three children started in order, each waited for until it answers, and
  stopped together.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from envoy_config import (  # noqa: E402, F401 (re-exported for run.py and the tests)
    DEFAULT_WASM,
    DEMO_ADMIN_TOKEN,
    DEMO_INGEST_TOKEN,
    DEMO_KEYS,
    DEMO_PLUGIN_CONFIG,
    ENVOY_TEMPLATE,
    ROOT,
    Ports,
    Upstream,
    collector_settings,
    load_plugin_config,
    render_envoy_config,
    sha256_hex,
    wasm_plugin,
    write_envoy_config,
)
from processes import (  # noqa: E402, F401 (re-exported for run.py and the tests)
    Child,
    StackError,
    answers,
    free_ports,
    http_request,
    port_in_use,
    wait_until,
)


class Stack:
    """The collector, the demo model (unless an upstream is given) and Envoy with the filter.

    Every file it writes (rendered Envoy configuration, logs, and the database unless one is
    given) goes under `workdir`.
    """

    def __init__(
        self,
        *,
        workdir: str | os.PathLike,
        plugin_config: dict,
        ports: Ports | None = None,
        upstream: Upstream | None = None,
        envoy_bin: str | os.PathLike,
        collector_bin: str | os.PathLike,
        demo_model_bin: str | os.PathLike,
        wasm_path: str | os.PathLike = DEFAULT_WASM,
        database: str | os.PathLike | None = None,
        admin_token: str = DEMO_ADMIN_TOKEN,
        concurrency: int = 2,
        envoy_args: Iterable[str] = (),
        demo_model_args: Iterable[str] = (),
        demo_model_log: str | os.PathLike | None = None,
        echo: bool = False,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.ports = ports or Ports()
        self.upstream = upstream
        self.plugin_config = plugin_config
        self.admin_token = admin_token
        _, self.ingest_token = collector_settings(plugin_config)
        self.database = Path(database).resolve() if database else self.workdir / "collector.db"
        self.wasm_path = Path(wasm_path).resolve()
        self.demo_model_log = Path(demo_model_log).resolve() if demo_model_log else None

        for label, path in [
            ("Envoy", envoy_bin),
            ("collector", collector_bin),
            ("the filter", self.wasm_path),
        ] + ([] if upstream else [("demo model", demo_model_bin)]):
            if not Path(path).is_file():
                raise StackError(f"{label} not found at {path}: build it first (make build)")

        self.envoy_config_path = self.workdir / "envoy.yaml"
        logs = self.workdir / "logs"
        self.collector = Child(
            "collector",
            [
                collector_bin,
                "serve",
                "--listen",
                f"127.0.0.1:{self.ports.collector}",
                "--database",
                self.database,
            ],
            env={"COLLECTOR_ADMIN_TOKEN": admin_token, "COLLECTOR_INGEST_TOKEN": self.ingest_token},
            log_path=logs / "collector.log",
            echo=echo,
        )
        demo_argv = [demo_model_bin, "--listen", f"127.0.0.1:{self.ports.model}", *demo_model_args]
        if self.demo_model_log:
            demo_argv += ["--log-file", self.demo_model_log]
        self.model = None
        if not upstream:
            self.model = Child("demo-model", demo_argv, log_path=logs / "demo-model.log", echo=echo)
        self.envoy = Child(
            "envoy",
            [
                envoy_bin,
                "-c",
                self.envoy_config_path,
                "--concurrency",
                str(concurrency),
                # Several Envoys (make run and the tests) may run side by side.
                "--disable-hot-restart",
                # Access log lines show within half a second, not Envoy's default 10 s.
                "--file-flush-interval-msec",
                "500",
                *envoy_args,
            ],
            log_path=logs / "envoy.log",
            echo=echo,
        )

    @property
    def children(self) -> list[Child]:
        return [c for c in (self.collector, self.model, self.envoy) if c is not None]

    # URLs
    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.listener}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.admin}"

    @property
    def collector_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.collector}"

    @property
    def model_url(self) -> str:
        return (
            f"http://{self.upstream}" if self.upstream else f"http://127.0.0.1:{self.ports.model}"
        )

    def check_ports(self) -> None:
        """Fail with a clear message if a port we are about to listen on is taken."""
        wanted = [
            ("Envoy listener", self.ports.listener),
            ("Envoy admin", self.ports.admin),
            ("collector", self.ports.collector),
        ]
        if self.model:
            wanted.append(("demo model", self.ports.model))
        taken = [f"{what} port {port}" for what, port in wanted if port_in_use(port)]
        if taken:
            raise StackError(
                f"already in use: {', '.join(taken)} (another `make run`?); "
                "stop it or choose other ports"
            )

    def start(self, timeout: float = 60.0) -> None:
        """Start every child and wait until each answers; on failure stop them all and raise."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.database.parent.mkdir(parents=True, exist_ok=True)
        config = render_envoy_config(
            ports=self.ports,
            plugin_config=self.plugin_config,
            upstream=self.upstream,
            wasm_path=self.wasm_path,
        )
        write_envoy_config(self.envoy_config_path, config)
        try:
            for child in self.children:
                child.start()
            self.wait_collector(timeout)
            if self.model:
                wait_until(
                    lambda: answers(f"{self.model_url}/v1/models"),
                    what="the demo model (GET /v1/models)",
                    timeout=timeout,
                    watch=[self.model],
                )
            wait_until(
                lambda: answers(f"{self.admin_url}/ready"),
                what="Envoy (admin /ready)",
                timeout=timeout,
                watch=[self.envoy],
            )
            wait_until(
                lambda: answers(f"{self.gateway_url}/healthz"),
                what="the filter (GET /healthz through Envoy)",
                timeout=timeout,
                watch=[self.envoy],
            )
        except BaseException:
            self.stop()
            raise

    def wait_collector(self, timeout: float = 30.0) -> None:
        wait_until(
            lambda: answers(f"{self.collector_url}/healthz"),
            what="the collector (GET /healthz)",
            timeout=timeout,
            watch=[self.collector],
        )

    def restart_collector(self, timeout: float = 30.0) -> None:
        """Start the collector again, same port and database (after `collector.stop()`)."""
        self.collector.start()
        self.wait_collector(timeout)

    def exited(self) -> Child | None:
        """The first child that has exited, if any."""
        for child in self.children:
            if child.process is not None and child.returncode is not None:
                return child
        return None

    def stop(self) -> None:
        # Envoy first, so that no new traffic arrives while the others go.
        for child in reversed(self.children):
            child.stop()

    def log_tails(self, lines: int = 40) -> str:
        return "".join(
            f"\n----- {c.name} (pid {c.pid}, status {c.returncode}): last lines of {c.log_path}"
            f" -----\n{c.tail(lines)}\n"
            for c in self.children
        )

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def print_err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
