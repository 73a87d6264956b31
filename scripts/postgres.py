"""A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` into a temporary directory,
the server on a free loopback port, everything removed on exit. No system service is used or
touched. Standard library only.

    python3 scripts/postgres.py run -- cargo test --workspace

runs the command with `COLLECTOR_TEST_POSTGRES_URL` set to the cluster's URL, and stops the
cluster when the command ends. Without a usable PostgreSQL it prints why and runs the command
without the variable (the PostgreSQL tests then skip and say so), unless
`INFERENCE_GATE_REQUIRE_POSTGRES=1` is set (as CI does), which makes it fail instead.

The binaries are looked up on PATH, then in Debian's /usr/lib/postgresql/<version>/bin.
PostgreSQL refuses to run as root; as root the cluster runs as the `postgres` user (which
Debian's package creates), in a directory that user owns.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

URL_ENV = "COLLECTOR_TEST_POSTGRES_URL"
REQUIRE_ENV = "INFERENCE_GATE_REQUIRE_POSTGRES"

_PR_SET_PDEATHSIG = 1


class Unavailable(Exception):
    """PostgreSQL cannot be used here; the message says why."""


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """One PostgreSQL server in its own temporary directory, superuser `postgres`, trust
    authentication on loopback only."""

    def __init__(self, *, fsync: bool = True) -> None:
        self.initdb = find_binary("initdb")
        self.postgres = find_binary("postgres")
        if not self.initdb or not self.postgres:
            raise Unavailable(
                "PostgreSQL is not installed (no initdb/postgres on PATH or in "
                "/usr/lib/postgresql/*/bin); on Debian: apt-get install -y postgresql"
            )
        self.fsync = fsync
        self.user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable(
                    "running as root and there is no `postgres` user to run the server as"
                ) from None
        self.dir = Path(tempfile.mkdtemp(prefix="inference-gate-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self) -> None:
        # Runs in the child between fork and exec: drop to the cluster's user, then ask for
        # SIGTERM when the parent dies (a credential change clears that setting, so it comes
        # second), so that no server outlives a killed test run.
        if self.user is not None:
            os.setgroups([])
            os.setgid(self.user.pw_gid)
            os.setuid(self.user.pw_uid)
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))

    def start(self, timeout: float = 60.0) -> None:
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
            self.dir.chmod(0o700)
        init = subprocess.run(
            [
                self.initdb,
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            preexec_fn=self._as_owner,
            capture_output=True,
            text=True,
        )
        if init.returncode != 0:
            raise Unavailable(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")

        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.dir),
            "max_connections": "200",
            "fsync": "on" if self.fsync else "off",
            "logging_collector": "off",
        }
        argv = [self.postgres, "-D", str(self.data)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=self._as_owner,
            start_new_session=True,
        )
        log.close()

        deadline = time.monotonic() + timeout
        while not self._accepting():
            if self.process.poll() is not None:
                raise Unavailable(f"postgres exited at start: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise Unavailable(f"postgres did not start in {timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.1)

    def create_database(self, name: str) -> str:
        """A new, empty database on this cluster; returns its URL."""
        psql = find_binary("psql")
        if not psql:
            raise Unavailable("psql is not installed (Debian: postgresql-client)")
        subprocess.run(
            [
                psql,
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                f'CREATE DATABASE "{name}"',
            ],
            check=True,
            capture_output=True,
        )
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def version(self) -> str:
        assert self.postgres is not None
        out = subprocess.run([self.postgres, "--version"], capture_output=True, text=True)
        return out.stdout.strip()

    def _accepting(self) -> bool:
        # The server writes this line once it accepts connections.
        try:
            return b"ready to accept connections" in self.log.read_bytes()
        except FileNotFoundError:
            return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGINT: PostgreSQL's "fast" shutdown.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def run(command: list[str]) -> int:
    env = dict(os.environ)
    try:
        cluster = Cluster()
        cluster.start()
    except Unavailable as err:
        if required():
            print(f"postgres: {err} ({REQUIRE_ENV} is set, so this is an error)", file=sys.stderr)
            return 1
        print(f"postgres: SKIPPING the PostgreSQL tests: {err}", file=sys.stderr, flush=True)
        env.pop(URL_ENV, None)
        return subprocess.call(command, env=env)

    env[URL_ENV] = cluster.url
    print(f"postgres: throwaway cluster at {cluster.url} ({cluster.dir})", flush=True)
    try:
        return subprocess.call(command, env=env)
    finally:
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    run_parser = sub.add_parser("run", help="run a command with a throwaway cluster")
    run_parser.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("check", help="say whether a cluster can be started here")
    args = parser.parse_args()

    if args.action == "check":
        try:
            with Cluster() as cluster:
                print(f"postgres: OK ({cluster.postgres})")
            return 0
        except Unavailable as err:
            print(f"postgres: unavailable: {err}")
            return 1

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("run: a command is required")
    return run(command)


if __name__ == "__main__":
    sys.exit(main())
