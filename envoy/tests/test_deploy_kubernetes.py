"""The collector's Kubernetes manifests (`deploy/kubernetes/`): valid against the Kubernetes API
schemas (strict: no unknown field), consistent with each other (selectors, ports, Secrets,
volumes), hardened as promised, and accepted by the real collector binary.

Each variant is what `kubectl apply -k deploy/kubernetes/<variant>` applies; the kustomizations
only list resources, which `kustomize_build` below follows.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import COLLECTOR_BIN
from deploy_istio import COLLECTOR_HOST, COLLECTOR_SERVICE_CLUSTER
from deploy_schemas import KUBERNETES_VERSIONS, ROOT, kubernetes_errors, load_documents

import stack

KUBERNETES = ROOT / "deploy" / "kubernetes"
VARIANTS = ("sqlite", "postgres")
NAMESPACE = "inference-gate"


def kustomize_build(directory: Path) -> list[dict]:
    """The objects of a kustomization that only lists resources (files or directories)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    extra = set(kustomization) - {"apiVersion", "kind", "resources"}
    assert not extra, f"{directory}: {extra} would need a real kustomize to check"
    objects = []
    for resource in kustomization["resources"]:
        path = (directory / resource).resolve()
        if path.is_dir():
            objects += kustomize_build(path)
        else:
            # kustomize loads files from the kustomization's own directory only.
            assert path.parent == directory.resolve(), f"{directory}: {resource} is outside"
            objects += load_documents(path)
    return objects


def variant(name: str) -> list[dict]:
    return kustomize_build(KUBERNETES / name)


def secret_examples() -> list[dict]:
    return load_documents(KUBERNETES / "secret.example.yaml")


def one(objects: list[dict], kind: str) -> dict:
    [found] = [o for o in objects if o["kind"] == kind]
    return found


def kustomize_files(directory: Path) -> set[Path]:
    """Every file a kustomization reads, its own included."""
    files = {directory / "kustomization.yaml"}
    for resource in yaml.safe_load(files.copy().pop().read_text())["resources"]:
        path = (directory / resource).resolve()
        files |= kustomize_files(path) if path.is_dir() else {path}
    return files


def test_every_manifest_is_listed_by_a_kustomization():
    listed = set().union(*(kustomize_files(KUBERNETES / n) for n in VARIANTS))
    shipped = {p.resolve() for p in KUBERNETES.rglob("*.yaml")}
    assert shipped - listed == {(KUBERNETES / "secret.example.yaml").resolve()}
    names = {(o["kind"], o["metadata"]["name"]) for n in VARIANTS for o in variant(n)}
    assert ("Namespace", NAMESPACE) in names and ("Service", "collector") in names


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", [*VARIANTS, "secret.example"])
def test_manifests_are_valid_against_the_kubernetes_schemas(name, version):
    objects = secret_examples() if name == "secret.example" else variant(name)
    errors = [e for o in objects for e in kubernetes_errors(o, version)]
    assert not errors, "\n".join(errors)


def test_the_schema_check_is_strict():
    deployment = one(variant("sqlite"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnly"] = True
    [error] = kubernetes_errors(deployment, KUBERNETES_VERSIONS[-1])
    assert "'readOnly' was unexpected" in error


@pytest.mark.parametrize("name", VARIANTS)
def test_everything_is_in_the_namespace_the_variant_creates(name):
    objects = variant(name)
    namespace = one(objects, "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for o in objects + secret_examples():
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == NAMESPACE, o["metadata"]


def _container(deployment: dict) -> dict:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("name", VARIANTS)
def test_the_pod_is_hardened_probed_and_sized(name):
    deployment = one(variant(name), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False

    container = _container(deployment)
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert not security.get("privileged")

    requests = container["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]
    assert container["resources"]["limits"]["memory"]

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        assert check["path"] == "/healthz"
        assert check["port"] in ports
    # A restart is a slower verdict than leaving the Service.
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]
    assert (
        liveness["periodSeconds"] * liveness["failureThreshold"]
        > readiness["periodSeconds"] * readiness["failureThreshold"]
    )
    # The collector's own shutdown grace (30 s) fits in Kubernetes'.
    assert pod["terminationGracePeriodSeconds"] > 30


@pytest.mark.parametrize("name", VARIANTS)
def test_selectors_ports_secrets_and_volumes_agree(name):
    objects = variant(name)
    deployment, service = one(objects, "Deployment"), one(objects, "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()

    container = _container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    [service_port] = service["spec"]["ports"]
    assert service_port["targetPort"] in ports
    assert service_port["name"].startswith("http"), "Istio reads the protocol from the name"

    # Tokens and the database URL come from Secrets shaped like the example.
    secrets = {s["metadata"]["name"]: set(s["stringData"]) for s in secret_examples()}
    env = _env(container)
    for variable in ("COLLECTOR_ADMIN_TOKEN", "COLLECTOR_INGEST_TOKEN"):
        ref = env[variable]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]], ref
    for item in env.values():
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        assert ref is None or ref["key"] in secrets[ref["name"]], ref
    assert not any("token" in arg for arg in container["args"]), "tokens stay off the command line"

    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"].get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    assert set(mounts.values()) <= set(volumes)
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    for volume in volumes.values():
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in claims


def test_sqlite_runs_one_replica_on_its_volume():
    objects = variant("sqlite")
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    # Never two pods on one SQLite file, not even during an update.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    claim = one(objects, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]

    container = _container(deployment)
    database = _env(container)["COLLECTOR_DATABASE"]["value"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    [data] = [n for n, v in volumes.items() if "persistentVolumeClaim" in v]
    # The database (and its WAL beside it) on the claim: the only writable place but /tmp.
    assert Path(database).parent == Path(mounts[data])
    assert deployment["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 65532


def test_postgres_runs_several_replicas_without_a_volume():
    objects = variant("postgres")
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    database = _env(_container(deployment))["COLLECTOR_DATABASE"]
    assert database["valueFrom"]["secretKeyRef"] == {"name": "collector-database", "key": "url"}
    [url] = [
        s["stringData"]["url"]
        for s in secret_examples()
        if s["metadata"]["name"] == "collector-database"
    ]
    assert url.startswith("postgres://")
    budget = one(objects, "PodDisruptionBudget")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize("name", VARIANTS)
def test_the_collector_binary_knows_every_flag_and_variable(name):
    container = _container(one(variant(name), "Deployment"))
    help_text = subprocess.run(
        [str(COLLECTOR_BIN), *container["args"][:1], "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    for arg in container["args"][1:]:
        if arg.startswith("--"):
            assert f"{arg} <" in help_text, f"collector serve has no {arg}"
    for variable in _env(container):
        if variable.startswith("COLLECTOR_"):
            assert f"[env: {variable}" in help_text, f"collector serve does not read {variable}"


def test_the_sqlite_deployment_starts_the_real_collector(tmp_path):
    """Its arguments and environment (tokens and paths replaced) start a healthy collector."""
    container = _container(one(variant("sqlite"), "Deployment"))
    [port] = stack.free_ports(1)
    args = [a.replace("0.0.0.0:9000", f"127.0.0.1:{port}") for a in container["args"]]
    env = {name: item.get("value", "") for name, item in _env(container).items() if "value" in item}
    env["COLLECTOR_DATABASE"] = str(tmp_path / Path(env["COLLECTOR_DATABASE"]).relative_to("/"))
    env["COLLECTOR_ADMIN_TOKEN"] = "admin-token-for-this-test"
    env["COLLECTOR_INGEST_TOKEN"] = "ingest-token-for-this-test"
    collector = stack.Child(
        "collector", [COLLECTOR_BIN, *args], env=env, log_path=tmp_path / "collector.log"
    )
    collector.start()
    try:
        stack.wait_until(
            lambda: stack.answers(f"http://127.0.0.1:{port}/healthz"),
            what="the collector started as the Deployment starts it",
            timeout=30,
            watch=[collector],
        )
        assert Path(env["COLLECTOR_DATABASE"]).exists()
    finally:
        collector.stop()


def test_the_istio_manifests_point_at_this_service():
    service = one(variant("sqlite"), "Service")
    [port] = service["spec"]["ports"]
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert host == COLLECTOR_HOST
    assert f"outbound|{port['port']}||{host}" == COLLECTOR_SERVICE_CLUSTER

    istio = ROOT / "envoy" / "istio"
    [plugin, _] = load_documents(istio / "wasmplugin.yaml")
    assert plugin["spec"]["pluginConfig"]["collector"]["cluster"] == COLLECTOR_SERVICE_CLUSTER
    [envoy_filter] = load_documents(istio / "envoyfilter.yaml")
    [cluster] = [
        p["patch"]["value"]
        for p in envoy_filter["spec"]["configPatches"]
        if p["applyTo"] == "CLUSTER"
    ]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": host, "port_value": port["port"]}


def test_no_real_secret_is_shipped():
    for secret in secret_examples():
        for value in secret["stringData"].values():
            assert "REPLACE-WITH" in value, "example Secrets hold placeholders only"
