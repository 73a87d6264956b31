"""Schemas the deployment files are checked against, and small helpers to read those files.

- `plugin_config_errors`: our plugin-configuration schema (`schema/plugin-config.schema.json`);
- `istio_errors`: the OpenAPI schema of an Istio custom resource, from the CRDs vendored in
  `envoy/istio/vendor/` (Istio 1.31). Checked as `kubectl apply` checks it, strictly: a field
  the schema does not have is an error, except under `x-kubernetes-preserve-unknown-fields`.
  The CEL rules (`x-kubernetes-validations`) that jsonschema cannot run are checked by the
  Python stand-ins below, one per rule; a rule that applies to a manifest and has no stand-in
  is an error, so a new rule in a newer CRD cannot pass unnoticed;
- `kubernetes_errors`: the Kubernetes API schema of a built-in object (the strict JSON schemas
  the `kubernetes-validate` package ships, generated from Kubernetes' OpenAPI).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_SCHEMA = ROOT / "schema" / "plugin-config.schema.json"
ISTIO_CRDS = ROOT / "envoy" / "istio" / "vendor" / "istio-crds.yaml"

# The oldest Kubernetes the manifests are meant for, and the newest the schemas cover.
KUBERNETES_VERSIONS = ("1.29", "1.37")

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


def load_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def messages(errors: Iterator[jsonschema.ValidationError]) -> list[str]:
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}" for e in errors]


# ---------------------------------------------------------------------------------------------
# Our plugin configuration


@functools.cache
def plugin_schema() -> dict:
    schema = json.loads(PLUGIN_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def plugin_config_errors(config: object) -> list[str]:
    validator = jsonschema.Draft202012Validator(plugin_schema())
    return messages(validator.iter_errors(config))


# ---------------------------------------------------------------------------------------------
# Istio custom resources


@functools.cache
def _crd_schemas() -> dict[tuple[str, str], dict]:
    """openAPIV3Schema by (apiVersion, kind)."""
    found = {}
    for crd in load_documents(ISTIO_CRDS):
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                found[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return found


def _strict(node: object) -> object:
    """The schema with `additionalProperties: false` wherever Kubernetes prunes or, with
    strict field validation, refuses unknown fields."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items()}
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _no_wildcard_key(labels: dict) -> bool:
    return all("*" not in key for key in labels)


def _url_scheme_ok(url: str) -> bool:
    scheme = urlparse(url).scheme if "://" in url else ""
    return scheme in ("", "http", "https", "oci", "file")


def _at_most_one(*fields: str) -> Callable[[dict], bool]:
    return lambda spec: sum(field in spec for field in fields) <= 1


# One stand-in per CEL rule message that can apply to the shipped manifests.
CEL_STAND_INS: dict[str, Callable[[object], bool]] = {
    "only one of targetRefs or selector can be set": _at_most_one(
        "selector", "targetRef", "targetRefs"
    ),
    "only one of targetRefs or workloadSelector can be set": _at_most_one(
        "workloadSelector", "targetRefs"
    ),
    "only one of WorkloadSelector or Endpoints can be set": _at_most_one(
        "workloadSelector", "endpoints"
    ),
    "wildcard not allowed in label key match": _no_wildcard_key,
    "key must not be empty": lambda labels: all(labels),
    "wildcard not allowed in label value match": lambda value: "*" not in value,
    "wildcard is not supported in selector": lambda value: "*" not in value,
    "url must have schema one of [http, https, file, oci]": _url_scheme_ok,
    "only support waypointMatch when context is WAYPOINT": lambda match: (
        ("waypoint" in match) == (match.get("context") == "WAYPOINT")
    ),
    "CIDR addresses are allowed only for NONE/STATIC resolution types": lambda spec: (
        not (
            any("/" in a for a in spec.get("addresses", []))
            and spec.get("resolution", "NONE") not in ("STATIC", "NONE")
        )
    ),
    "NONE mode cannot set endpoints": lambda spec: (
        spec.get("resolution", "NONE") != "NONE" or "endpoints" not in spec
    ),
    "DNS_ROUND_ROBIN mode cannot have multiple endpoints": lambda spec: (
        spec.get("resolution") != "DNS_ROUND_ROBIN" or len(spec.get("endpoints", [])) <= 1
    ),
    "hostname cannot be wildcard": lambda host: host != "*",
    "port number cannot be duplicated": lambda ports: (
        len({p.get("number") for p in ports}) == len(ports)
    ),
    "port must be between 1-65535": lambda port: 0 < port <= 65535,
}


def _cel_errors(schema: dict, value: object, path: str) -> list[str]:
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        check = CEL_STAND_INS.get(rule.get("message", ""))
        if check is None:
            errors.append(
                f"{path}: CEL rule without a stand-in in deploy_schemas.CEL_STAND_INS: "
                f"{rule.get('message')!r} ({rule.get('rule')})"
            )
        elif not check(value):
            errors.append(f"{path}: {rule['message']}")
    if isinstance(value, dict):
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                errors += _cel_errors(sub, item, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += _cel_errors(schema["items"], item, f"{path}[{i}]")
    return errors


def metadata_errors(doc: dict, *, namespaced: bool = True) -> list[str]:
    meta = doc.get("metadata", {})
    errors = []
    if not DNS_SUBDOMAIN.match(meta.get("name", "")):
        errors.append(f"metadata.name {meta.get('name')!r} is not a DNS subdomain")
    if namespaced and not DNS_LABEL.match(meta.get("namespace", "")):
        errors.append(f"metadata.namespace {meta.get('namespace')!r} is missing or invalid")
    return errors


def istio_errors(doc: dict) -> list[str]:
    """Every way `doc` fails its CRD's schema (empty when it is valid)."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    schema = _crd_schemas().get(key)
    if schema is None:
        return [f"no vendored CRD serves {key}"]
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    validator = jsonschema.Draft202012Validator(_strict(copy.deepcopy(schema)))
    return (
        metadata_errors(doc) + messages(validator.iter_errors(body)) + _cel_errors(schema, body, "")
    )


# ---------------------------------------------------------------------------------------------
# Kubernetes built-in objects


def kubernetes_errors(doc: dict, version: str) -> list[str]:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = "/".join(str(p) for p in err.path) or "(top)"
        name = f"{doc['kind']}/{doc['metadata'].get('name')}"
        return [f"{name} (Kubernetes {version}): {path}: {err.message}"]
    except kubernetes_validate.SchemaNotFoundError as err:
        return [err.message]
    return []
