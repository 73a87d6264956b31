"""Processes of the stack and how to wait for them: loopback ports, plain HTTP requests, and
`Child`, one process whose output goes to a log file and, for `make run`, to the console with
its name in front of every line. Standard library only.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path


class StackError(Exception):
    """Something the user must fix, or a child that did not come up; the message says which."""


# ---------------------------------------------------------------------------------------------
# Ports


def free_ports(count: int) -> list[int]:
    # Hold every socket until all are bound, so the kernel cannot hand out one port twice.
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


# ---------------------------------------------------------------------------------------------
# HTTP and waiting


def http_request(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | dict | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request; any status comes back (no exception for 4xx/5xx). Header names lowercased."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if isinstance(body, dict):
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, _lower(response.headers.items()), response.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, _lower(err.headers.items()), err.read()


def _lower(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in items}


def answers(url: str, *, status: int = 200, headers: dict[str, str] | None = None) -> bool:
    try:
        return http_request("GET", url, headers=headers, timeout=2.0)[0] == status
    except (OSError, ValueError):
        return False


def wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    watch: Iterable[Child] = (),
    interval: float = 0.1,
) -> None:
    """Poll `check` until it is true; fail early, with the child's log tail, if a child dies."""
    deadline = time.monotonic() + timeout
    watch = list(watch)
    while True:
        if check():
            return
        for child in watch:
            if child.returncode is not None:
                raise StackError(
                    f"{child.name} exited with status {child.returncode} while waiting for "
                    f"{what}; its last lines:\n{child.tail()}"
                )
        if time.monotonic() > deadline:
            tails = "".join(f"\n--- {c.name} ---\n{c.tail()}" for c in watch)
            raise StackError(f"timed out after {timeout:.0f}s waiting for {what}{tails}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# Child processes

_PR_SET_PDEATHSIG = 1
_echo_lock = threading.Lock()
try:
    # Looked up here, not in the forked child, which should do as little as possible.
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM when the process that started it dies, so a killed launcher
    # or test run leaves nothing behind. Elsewhere this is a no-op.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


class Child:
    """One process of the stack. Its stdout and stderr go, line by line, to `log_path` and, when
    `echo` is set, to this process's stdout with the child's name in front."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        echo: bool = False,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(arg) for arg in argv]
        self.log_path = Path(log_path)
        self.env = env
        self.echo = echo
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._tail: deque[str] = deque(maxlen=200)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def returncode(self) -> int | None:
        """None while running (or never started); the exit status once it has exited."""
        return self.process.poll() if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running:
            raise StackError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **(self.env or {}))
        try:
            # Its own session: a Ctrl-C in the terminal reaches the launcher only, which then
            # stops the children in order.
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as err:
            raise StackError(f"cannot start {self.name} ({self.argv[0]}): {err}") from None
        self._reader = threading.Thread(target=self._pump, name=f"{self.name}-output", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        prefix = f"[{self.name}] "
        with self.log_path.open("ab") as log:
            for raw in self.process.stdout:
                log.write(raw)
                log.flush()
                line = raw.decode(errors="replace").rstrip("\n")
                self._tail.append(line)
                if self.echo:
                    with _echo_lock:
                        print(prefix + line, flush=True)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; waits until the output is drained."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(list(self._tail)[-lines:])

    def output(self) -> str:
        """Everything the child printed so far (across restarts)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
