"""The filter's OCI image (`deploy/images/filter_oci_layout.py`, `make oci-filter`): a valid OCI
image layout whose digests and sizes match, whose one layer holds exactly the built filter as
`plugin.wasm` (what Istio's agent looks for), the same bytes on every build; and the
Dockerfiles that build the same images with a container engine.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import FILTER_WASM
from deploy_istio import extract_plugin_wasm
from deploy_schemas import ROOT

SCRIPT = ROOT / "deploy" / "images" / "filter_oci_layout.py"
TAG = "0.1.0-test"


def build_layout(out: Path, archive: Path | None = None) -> str:
    argv = [sys.executable, str(SCRIPT), "--wasm", str(FILTER_WASM), "--out", str(out)]
    argv += ["--tag", TAG] + (["--archive", str(archive)] if archive else [])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("oci") / "filter"
    build_layout(out, out.with_suffix(".tar"))
    return out


def blob(layout: Path, descriptor: dict) -> bytes:
    algorithm, hex_digest = descriptor["digest"].split(":")
    assert algorithm == "sha256"
    data = (layout / "blobs" / "sha256" / hex_digest).read_bytes()
    assert hashlib.sha256(data).hexdigest() == hex_digest, f"{descriptor['digest']}: wrong digest"
    assert len(data) == descriptor["size"], f"{descriptor['digest']}: wrong size"
    return data


def test_layout_digests_sizes_and_media_types(layout):
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    [descriptor] = index["manifests"]
    assert descriptor["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert descriptor["annotations"]["org.opencontainers.image.ref.name"] == TAG

    manifest = json.loads(blob(layout, descriptor))
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == descriptor["mediaType"]
    # The compat variant of the Wasm image spec, which Istio reads.
    assert manifest["annotations"]["module.wasm.image/variant"] == "compat"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    [layer] = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"

    config = json.loads(blob(layout, manifest["config"]))
    layer_tar = gzip.decompress(blob(layout, layer))
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()],
    }
    assert (config["architecture"], config["os"]) == ("wasm", "wasip1")

    # Nothing in the layout that the index does not reach.
    reachable = {d["digest"].split(":")[1] for d in (descriptor, manifest["config"], layer)}
    assert {p.name for p in (layout / "blobs" / "sha256").iterdir()} == reachable


def test_the_layer_holds_exactly_the_filter_as_plugin_wasm(layout):
    manifest_descriptor = json.loads((layout / "index.json").read_text())["manifests"][0]
    manifest = json.loads(blob(layout, manifest_descriptor))
    layer = gzip.decompress(blob(layout, manifest["layers"][0]))
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = tar.getmembers()
        assert [(m.name, m.isfile()) for m in members] == [("plugin.wasm", True)]
        extracted = tar.extractfile(members[0])
        assert extracted is not None
        assert extracted.read() == FILTER_WASM.read_bytes()
    # And read the way Istio's agent reads a pulled image.
    assert extract_plugin_wasm(layout, TAG) == FILTER_WASM.read_bytes()


def test_the_archive_holds_the_layout(layout):
    archive = layout.with_suffix(".tar")
    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    on_disk = {str(p.relative_to(layout)): p.read_bytes() for p in layout.rglob("*") if p.is_file()}
    assert files == on_disk


def test_the_image_is_reproducible(layout, tmp_path):
    again = tmp_path / "again"
    output = build_layout(again)
    assert (again / "index.json").read_bytes() == (layout / "index.json").read_bytes()
    digest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    # The digest the WasmPlugin's `sha256` pins, as the script prints it.
    assert digest.removeprefix("sha256:") in output


def test_the_script_refuses_a_file_that_is_not_wasm(tmp_path):
    bogus = tmp_path / "not.wasm"
    bogus.write_bytes(b"#!/bin/sh\n")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--wasm", str(bogus), "--out", str(tmp_path / "o")]
        + ["--tag", TAG],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "not a Wasm module" in result.stderr


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) of each line, continuations joined, comments dropped."""
    logical, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(ins.split(None, 1)[0].upper(), ins.split(None, 1)[1]) for ins in logical]


def test_the_filter_dockerfile_builds_the_same_image():
    steps = _instructions(ROOT / "deploy" / "images" / "filter.Dockerfile")
    assert steps[0] == ("FROM", "scratch")
    # One file-adding step, which puts plugin.wasm at the root: the one layer of the layout.
    adds = [args for ins, args in steps if ins in ("COPY", "ADD", "RUN")]
    assert adds == ["plugin.wasm /plugin.wasm"]


def test_the_collector_dockerfile_runs_as_non_root_from_a_small_base():
    steps = _instructions(ROOT / "deploy" / "images" / "collector.Dockerfile")
    froms = [args for ins, args in steps if ins == "FROM"]
    assert len(froms) == 2, "a build stage and a runtime stage"
    assert froms[-1].startswith("gcr.io/distroless/cc-debian12:nonroot")
    runtime = steps[[i for i, (ins, _) in enumerate(steps) if ins == "FROM"][-1] :]
    assert ("USER", "65532:65532") in runtime
    assert ("VOLUME", '["/data"]') in runtime
    env = dict(args.split("=", 1) for ins, args in runtime if ins == "ENV")
    assert env["COLLECTOR_DATABASE"].startswith("/data/")
    # The same Rust as the workspace promises to build with, and the locked dependencies.
    cargo = (ROOT / "Cargo.toml").read_text()
    msrv = cargo.split('rust-version = "', 1)[1].split('"', 1)[0]
    assert froms[0].startswith(f"rust:{msrv}-"), froms[0]
    build = " ".join(args for ins, args in steps if ins == "RUN")
    assert "--locked -p collector" in build


def test_the_dockerignore_keeps_build_outputs_out_of_the_context():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in ("target/", ".venv/", "data/", ".git/"):
        assert path in ignored
