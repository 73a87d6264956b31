"""The README's Deploy section: the files and make targets it names exist, and its commands
that fill in the Istio manifests (sed on the placeholders, then the schema check) work on the
shipped files, leaving no placeholder behind.
"""

from __future__ import annotations

import hashlib
import re
import subprocess

import pytest
from deploy_schemas import ROOT, istio_errors, load_documents, plugin_config_errors

README = ROOT / "README.md"


def deploy_section() -> str:
    text = README.read_text()
    start = text.index("\n## Deploy\n")
    return text[start : text.index("\n## ", start + 1)]


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", deploy_section(), flags=re.S)


def test_the_files_it_names_exist():
    names = set(re.findall(r"\((envoy/[^)#]+|deploy/[^)#]+|schema/[^)#]+)\)", deploy_section()))
    names |= set(re.findall(r"`((?:envoy|deploy|schema)/[\w./-]+)`", deploy_section()))
    assert len(names) > 8
    missing = [n for n in sorted(names) if not (ROOT / n).exists()]
    assert not missing, missing


def test_the_make_targets_it_names_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"make ([a-z][\w-]+)", deploy_section())):
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), target


@pytest.mark.parametrize("manifest", ["wasmplugin", "envoyfilter"])
def test_its_commands_fill_in_the_manifest(manifest, tmp_path):
    # The block that writes <manifest>.local.yaml, run as printed, from a directory that
    # looks like the repository.
    [block] = [b for b in shell_blocks() if f"> {manifest}.local.yaml" in b]
    lines = block.replace("\\\n", " ").splitlines()
    sed = next(line for line in lines if line.startswith("sed "))
    for name in ("envoy", "schema", ".venv"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {
        "PATH": "/usr/bin:/bin",
        "REGISTRY": "registry.test/acme-corp",
        "ACME_KEY": "the-acme-key",
        "INGEST_TOKEN": "ingest-token-from-the-secret",
    }
    subprocess.run(["bash", "-c", sed], cwd=tmp_path, env=env, check=True, timeout=30)
    filled = (tmp_path / f"{manifest}.local.yaml").read_text()

    assert "REPLACE-WITH" not in filled
    assert "0" * 64 not in filled
    assert hashlib.sha256(b"the-acme-key").hexdigest() in filled
    assert "ingest-token-from-the-secret" in filled
    if manifest == "wasmplugin":
        assert "oci://registry.test/acme-corp/filter:" in filled
        # The README's schema check, as printed.
        [check] = [b for b in shell_blocks() if "jsonschema.validate" in b]
        start = check.index(".venv/bin/python")
        check = check[start : check.index("wasmplugin.local.yaml\n", start)]
        result = subprocess.run(
            ["bash", "-c", check + "wasmplugin.local.yaml"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0 and "ok" in result.stdout, result.stderr

    documents = load_documents(tmp_path / f"{manifest}.local.yaml")
    for doc in documents:
        assert not istio_errors(doc)
    if manifest == "wasmplugin":
        assert not plugin_config_errors(documents[0]["spec"]["pluginConfig"])
