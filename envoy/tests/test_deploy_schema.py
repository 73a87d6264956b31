"""The plugin configuration's JSON Schema (`schema/plugin-config.schema.json`): a valid schema,
in agreement with the filter on the shared probes, and satisfied by every plugin configuration
the repository ships or tests with. The other half, the schema against the filter's parser, is
`tests/schema.rs`.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml
from conftest import plugin_config as suite_plugin_config
from deploy_istio import STRING_VALUE_TYPE, WASM_TYPE
from deploy_schemas import PLUGIN_SCHEMA, ROOT, load_documents, plugin_config_errors, plugin_schema

import stack

PROBES = ROOT / "schema" / "plugin-config.probes.json"


def test_the_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(plugin_schema())


def _nodes(node, path="#"):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _nodes(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _nodes(value, f"{path}/{i}")


def test_defaults_and_examples_satisfy_their_own_field():
    schema = plugin_schema()
    registry_root = {"$defs": schema["$defs"]}
    for path, node in _nodes(schema):
        if "type" not in node and "$ref" not in node:
            continue
        sub = {**node, **registry_root}
        for value in ([node["default"]] if "default" in node else []) + node.get("examples", []):
            errors = list(jsonschema.Draft202012Validator(sub).iter_errors(value))
            assert not errors, f"{PLUGIN_SCHEMA.name} {path}: {value!r}: {errors[0].message}"


def _set(config: dict, path: list, value) -> dict:
    out = json.loads(json.dumps(config))
    target = out
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return out


def _full_example() -> dict:
    """A configuration with every field, the way tests/schema.rs builds it."""
    schema = plugin_schema()

    def build(node):
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
        if "default" in node or "examples" in node:
            return node.get("default", node.get("examples", [None])[0])
        if "oneOf" in node:
            return build(node["oneOf"][0])
        if node.get("type") == "array":
            return [build(node["items"])]
        return {
            k: build(v)
            for k, v in node["properties"].items()
            if v.get("not") != {} and "x-left-out-of-examples" not in v
        }

    return build(schema)


def test_the_schema_agrees_with_the_shared_probes():
    # tests/schema.rs puts the same values through the filter's parser.
    base = _full_example()
    assert not plugin_config_errors(base)
    disagreements = []
    for probe in json.loads(PROBES.read_text())["probes"]:
        valid = not plugin_config_errors(_set(base, probe["path"], probe["value"]))
        if valid != probe["valid"]:
            disagreements.append(f"{probe}: the schema says {'valid' if valid else 'invalid'}")
    assert not disagreements, "\n".join(disagreements)


def _inline(http_filter_config: dict) -> dict:
    configuration = http_filter_config["configuration"]
    assert configuration["@type"] == STRING_VALUE_TYPE
    return json.loads(configuration["value"])


def shipped_plugin_configs() -> dict[str, dict]:
    """Every plugin configuration in the repository's Envoy and Istio files."""
    found = {"envoy/demo-plugin.json": json.loads(stack.DEMO_PLUGIN_CONFIG.read_text())}
    envoy_yaml = yaml.safe_load(stack.ENVOY_TEMPLATE.read_text())
    found["envoy/envoy.yaml"] = _inline(
        stack.wasm_plugin(envoy_yaml["static_resources"]["listeners"][0])
    )
    for path in sorted((ROOT / "envoy" / "istio").glob("*.yaml")):
        for doc in load_documents(path):
            name = f"{path.relative_to(ROOT)} {doc['kind']}/{doc['metadata']['name']}"
            if doc["kind"] == "WasmPlugin":
                found[name] = doc["spec"]["pluginConfig"]
            for i, patch in enumerate(doc["spec"].get("configPatches", [])):
                typed = patch["patch"].get("value", {}).get("typed_config", {})
                if typed.get("@type") == WASM_TYPE:
                    found[f"{name} patch {i}"] = _inline(typed["config"])
    return found


def test_the_shipped_configs_are_found():
    names = " ".join(shipped_plugin_configs())
    assert "envoyfilter.yaml EnvoyFilter" in names and "wasmplugin.yaml WasmPlugin" in names


@pytest.mark.parametrize("name", sorted(shipped_plugin_configs()))
def test_shipped_plugin_config_satisfies_the_schema(name):
    errors = plugin_config_errors(shipped_plugin_configs()[name])
    assert not errors, f"{name}:\n" + "\n".join(errors)


def test_the_suites_plugin_config_satisfies_the_schema():
    errors = plugin_config_errors(suite_plugin_config())
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["tenants"][0].update(rate_limt=5), "rate_limt"),
        (lambda c: c["collector"].update(on_buffer_full="explode"), "explode"),
        (lambda c: c["collector"].pop("ingest_token"), "ingest_token"),
        (lambda c: c["metering"].update(max_request_body_bytes=512), "512"),
    ],
)
def test_the_schema_refuses_what_the_filter_refuses(change, expected):
    config = json.loads(stack.DEMO_PLUGIN_CONFIG.read_text())
    change(config)
    errors = plugin_config_errors(config)
    assert errors and expected in " ".join(errors), errors


def test_saml_needs_sso():
    config = json.loads(stack.DEMO_PLUGIN_CONFIG.read_text())
    config["tenants"][0]["saml"] = {
        "idp_metadata": "<EntityDescriptor/>",
        "sp_entity_id": "https://gateway.example/saml/metadata",
        "acs_url": "https://gateway.example/sso/saml/acs",
    }
    assert plugin_config_errors(config)
    config["sso"] = {"token_secret": "s" * 32}
    assert not plugin_config_errors(config)
    config["tenants"][0]["saml"]["acs_url"] = "https://gateway.example/elsewhere"
    assert plugin_config_errors(config)
