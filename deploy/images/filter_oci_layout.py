#!/usr/bin/env python3
"""Builds the filter's OCI image without a container engine: an OCI image layout (a directory
and the same as a tar archive) holding the image that `deploy/images/filter.Dockerfile` builds.

The image is the "compat" variant of the Wasm image specification, the format Istio's
WasmPlugin pulls (Istio also reads Docker images and the "oci" variant with the
application/vnd.module.wasm.content.layer.v1+wasm layer; compat is what a `FROM scratch`
Dockerfile produces, so both ways give the same kind of image):

- one layer, application/vnd.oci.image.layer.v1.tar+gzip, whose tar holds `plugin.wasm`;
- an OCI image config (architecture `wasm`, os `wasip1`) listing that layer's diff id;
- an OCI image manifest with the annotation `module.wasm.image/variant: compat`;
- `index.json` naming the manifest with the tag (`org.opencontainers.image.ref.name`).

The output is reproducible: no timestamps, owners or modes other than fixed ones, so the same
filter gives the same manifest digest (the value for the WasmPlugin's `sha256`).

    filter_oci_layout.py --wasm target/wasm32-wasip1/release/inference_gate.wasm \
        --out target/oci/filter --tag 0.1.0

Push it with skopeo (`skopeo copy oci:target/oci/filter:0.1.0 docker://REGISTRY/filter:0.1.0`)
or any tool that reads an OCI layout or archive (`oci-archive:target/oci/filter.tar:0.1.0`).
Standard library only.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

LAYER_FILE = "plugin.wasm"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
VARIANT_ANNOTATION = "module.wasm.image/variant"
REF_NAME = "org.opencontainers.image.ref.name"
EPOCH = "1970-01-01T00:00:00Z"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(wasm: bytes) -> bytes:
    """A tar with `plugin.wasm` alone, with fixed metadata (root-owned, 0444, time 0)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(LAYER_FILE)
        info.size, info.mode, info.mtime = len(wasm), 0o444, 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(wasm))
    return out.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    # mtime 0 and no file name: the same input gives the same bytes.
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=9, filename="") as gz:
        gz.write(data)
    return out.getvalue()


def canonical(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def build(wasm: bytes, tag: str, version: str) -> tuple[dict[str, bytes], bytes]:
    """The blobs by digest, and `index.json`."""
    tar = layer_tar(wasm)
    layer = gzip_bytes(tar)
    config = canonical(
        {
            "architecture": "wasm",
            "os": "wasip1",
            "created": EPOCH,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
            "history": [
                {"created": EPOCH, "created_by": f"COPY {LAYER_FILE} / (filter {version})"}
            ],
        }
    )
    manifest = canonical(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": LAYER_TYPE, "digest": sha256(layer), "size": len(layer)}],
            "annotations": {
                VARIANT_ANNOTATION: "compat",
                "org.opencontainers.image.title": "inference-gate",
                "org.opencontainers.image.description": "inference-gate Proxy-Wasm filter",
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.licenses": "Apache-2.0",
            },
        }
    )
    index = canonical(
        {
            "schemaVersion": 2,
            "mediaType": INDEX_TYPE,
            "manifests": [
                {
                    "mediaType": MANIFEST_TYPE,
                    "digest": sha256(manifest),
                    "size": len(manifest),
                    "annotations": {REF_NAME: tag},
                }
            ],
        }
    )
    blobs = {sha256(blob): blob for blob in (layer, config, manifest)}
    return blobs, index


def write_layout(out: Path, blobs: dict[str, bytes], index: bytes) -> None:
    if out.exists():
        shutil.rmtree(out)
    (out / "blobs" / "sha256").mkdir(parents=True)
    (out / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    (out / "index.json").write_bytes(index)
    for digest, blob in blobs.items():
        (out / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(blob)


def write_archive(layout: Path, archive: Path) -> None:
    """The layout as a tar (an `oci-archive`), entries sorted, fixed metadata."""
    with tarfile.open(archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(layout.rglob("*")):
            info = tar.gettarinfo(path, arcname=str(path.relative_to(layout)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_dir():
                tar.addfile(info)
            else:
                with path.open("rb") as data:
                    tar.addfile(info, data)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wasm", type=Path, required=True, help="the built filter")
    parser.add_argument("--out", type=Path, required=True, help="OCI layout directory to write")
    parser.add_argument("--tag", required=True, help="the image tag, e.g. 0.1.0")
    parser.add_argument("--archive", type=Path, help="also write the layout as this tar file")
    parser.add_argument("--version", help="version annotation (default: the tag)")
    args = parser.parse_args(argv)

    try:
        wasm = args.wasm.read_bytes()
    except OSError as err:
        print(f"filter_oci_layout: cannot read the filter: {err} (make wasm)", file=sys.stderr)
        return 2
    if not wasm.startswith(b"\0asm"):
        print(f"filter_oci_layout: {args.wasm} is not a Wasm module", file=sys.stderr)
        return 2

    blobs, index = build(wasm, args.tag, args.version or args.tag)
    write_layout(args.out, blobs, index)
    if args.archive:
        write_archive(args.out, args.archive)

    manifest_digest = json.loads(index)["manifests"][0]["digest"]
    print(f"OCI image layout {args.out} (tag {args.tag})")
    if args.archive:
        print(f"OCI archive      {args.archive}")
    print(f"manifest digest  {manifest_digest}")
    print(
        f"push:            skopeo copy oci:{args.out}:{args.tag} docker://REGISTRY/filter:{args.tag}"
    )
    print(f"pin in the WasmPlugin: sha256: {manifest_digest.removeprefix('sha256:')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
