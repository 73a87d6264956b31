"""A model server that replays the metering fixtures (`tests/fixtures/metering/`), for the Envoy
integration tests. Standard library only; it runs in a thread of the test process.

A request names its fixture in `x-replay-fixture: <shape>/<name>` and may give
`x-replay-seed: <int>`. The answer is the fixture's body with its status and content type, written
in pieces cut at random byte boundaries (seeded, so a failure reproduces): a JSON body with a
`content-length`, a stream with chunked transfer encoding. A fixture with `cut_before` stands for a
server that dies mid-stream: the body up to that point is sent, then the connection is dropped
without the end of the chunked body.

Every request is kept (path, the headers that matter, the body as received) for the tests to look
at by request id.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "metering"


@dataclass(frozen=True)
class Fixture:
    shape: str
    name: str
    meta: dict
    body: bytes
    """The body as the server sends it, cut where the sidecar says the server died."""

    @property
    def id(self) -> str:
        return f"{self.shape}/{self.name}"

    @property
    def cut(self) -> bool:
        return "cut_before" in self.meta

    @property
    def streamed(self) -> bool:
        return not self.meta["content_type"].startswith("application/json")

    def client_sees(self) -> bytes | None:
        """What the client must receive (None: not checked, for a stream cut short)."""
        if "client_sees" not in self.meta:
            return self.body
        name = self.meta["client_sees"]
        return None if name is None else (FIXTURES / self.shape / name).read_bytes()


def load(fixture_id: str) -> Fixture:
    shape, name = fixture_id.split("/", 1)
    meta = json.loads((FIXTURES / shape / f"{name}.meta.json").read_text())
    body = (FIXTURES / shape / meta["body"]).read_bytes()
    if "cut_before" in meta:
        body = body[: body.index(meta["cut_before"].encode())]
    return Fixture(shape, name, meta, body)


def all_fixtures() -> list[Fixture]:
    return [
        load(f"{meta.parent.name}/{meta.name.removesuffix('.meta.json')}")
        for meta in sorted(FIXTURES.glob("*/*.meta.json"))
    ]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


def pieces(body: bytes, rng: random.Random) -> list[bytes]:
    """The body cut at random byte boundaries, into up to 24 pieces."""
    if not body:
        return []
    count = min(len(body), rng.randint(2, 24))
    cuts = sorted(rng.sample(range(1, len(body)), count - 1))
    bounds = [0, *cuts, len(body)]
    return [body[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ReplayServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    # Trailers, if any, end with an empty line.
                    while self.rfile.readline().strip():
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def do_POST(self) -> None:  # noqa: N802 (the base's name)
        body = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.record(headers.get("x-request-id", ""), Received(self.path, headers, body))
        fixture_id = headers.get("x-replay-fixture")
        if not fixture_id:
            return self._plain(404, b'{"error": "no x-replay-fixture header"}')
        fixture = load(fixture_id)
        rng = random.Random(int(headers.get("x-replay-seed", "0")))
        self.send_response(fixture.meta["status"])
        self.send_header("content-type", fixture.meta["content_type"])
        if fixture.streamed or fixture.cut:
            self.send_header("transfer-encoding", "chunked")
        else:
            self.send_header("content-length", str(len(fixture.body)))
        self.end_headers()
        for piece in pieces(fixture.body, rng):
            if fixture.streamed or fixture.cut:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                self.wfile.write(piece)
            self.wfile.flush()
            # A pause between writes, so that Envoy reads the pieces apart more often than not.
            time.sleep(0.0002)
        if fixture.cut:
            # The server dies: no end of the chunked body, the connection drops.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fixture.streamed:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _plain(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (the base's name)
        self._plain(200, b'{"object": "list", "data": []}')


class ReplayServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self._lock = threading.Lock()
        self._received: dict[str, Received] = {}
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def record(self, request_id: str, received: Received) -> None:
        with self._lock:
            self._received[request_id] = received

    def received(self, request_id: str) -> Received:
        with self._lock:
            return self._received[request_id]

    def start(self) -> ReplayServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
