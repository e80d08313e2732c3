"""The Helm chart, rendered by the pinned helm: lint, objects, hardening, RBAC = interlace_operator.rbac,
images = appVersion, ServiceMonitor switch, and bad values rejected by values.schema.json.

No cluster here (tests/packaging/test_cluster.py installs the chart into the real control plane).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.packaging.tools import (
    APP_VERSION,
    CHART,
    by_kind,
    helm,
    normalize,
    one,
    operator_objs,
    operator_rules,
    render,
    rules_yaml,
    split_rules,
    template,
)

SCHEMA_ERROR = "values don't meet the specifications of the schema"
NAMESPACED = {"watchNamespaces": ["team-a", "team-b"]}


@pytest.fixture(scope="module")
def default_objs() -> list[dict[str, Any]]:
    return template()


def container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def env(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container(objs)["env"]}


# ------------------------------------------------------------------------------------------- lint


@pytest.mark.parametrize("values", [None, NAMESPACED, {"crds": {"install": False}, "metrics": {"enabled": False}}])
def test_helm_lint_strict_clean(values: dict[str, Any] | None) -> None:
    proc = render(values, "--strict", command="lint")
    assert "0 chart(s) failed" in proc.stdout, proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_chart_metadata() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == "interlace-operator"
    assert meta["appVersion"] == meta["version"]  # images follow appVersion; the two move together
    from importlib.metadata import version

    assert version("interlace-operator") == meta["appVersion"], "appVersion must be the package version"


# ---------------------------------------------------------------------------------------- objects


def test_default_objects(default_objs: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in default_objs)
    assert kinds == sorted(
        ["CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service",
         "ClusterRole", "ClusterRole",  # the users' editor/viewer roles (test_user_roles.py)
         "Role", "RoleBinding",  # leader election: leases in the release namespace (test_ha_packaging.py)
         "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    )
    for o in default_objs:
        labels = o["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "interlace", o["kind"]
        if o["kind"] != "CustomResourceDefinition":
            assert o["metadata"]["name"].startswith("interlace"), o["metadata"]["name"]
            assert labels["app.kubernetes.io/managed-by"] == "Helm"
            assert labels["app.kubernetes.io/version"] == APP_VERSION


def test_crd_is_the_generated_one(default_objs: list[dict[str, Any]]) -> None:
    crd = one(default_objs, "CustomResourceDefinition")
    generated = next(
        d for d in yaml.safe_load_all((CHART.parents[1] / "manifests/base/crd.yaml").read_text()) if d
    )
    assert crd["spec"] == generated["spec"]
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_crds_install_false_skips_the_crd() -> None:
    objs = template({"crds": {"install": False}})
    assert not by_kind(objs, "CustomResourceDefinition")
    assert one(objs, "Deployment")


def test_deployment_is_hardened(default_objs: list[dict[str, Any]]) -> None:
    dep = one(default_objs, "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 1
    # leader election (the default): a new pod starts as a standby before the old one stops
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    single = one(template({"leaderElection": {"enabled": False}}), "Deployment")["spec"]
    assert single["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(default_objs)
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert "memory" in c["resources"]["limits"]
    # /tmp is the only writable path
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/tmp"]
    assert pod["serviceAccountName"] == one(default_objs, "ServiceAccount")["metadata"]["name"]


def test_probes_on_kopf_health_endpoint(default_objs: list[dict[str, Any]]) -> None:
    c = container(default_objs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    for probe in ("livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz" and ports[get["port"]] == 8080, probe
        assert c[probe]["periodSeconds"] >= 1


def test_metrics_service(default_objs: list[dict[str, Any]]) -> None:
    svc = one(default_objs, "Service")
    (port,) = svc["spec"]["ports"]
    assert port["port"] == 9090 and port["targetPort"] == "metrics"
    pod_labels = one(default_objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert not by_kind(template({"metrics": {"enabled": False}}), "Service")


def test_image_tags_follow_app_version(default_objs: list[dict[str, Any]]) -> None:
    assert container(default_objs)["image"] == f"ghcr.io/interlace-dev/interlace-operator:{APP_VERSION}"
    assert env(default_objs)["INTERLACE_RUNTIME_IMAGE"] == f"ghcr.io/interlace-dev/interlace-runtime:{APP_VERSION}"
    digest = "sha256:" + "a" * 64
    objs = template({"image": {"repository": "registry.example/op", "tag": "1.2.3"}, "runtimeImage": {
        "repository": "registry.example/rt", "digest": digest}})
    assert container(objs)["image"] == "registry.example/op:1.2.3"
    assert env(objs)["INTERLACE_RUNTIME_IMAGE"] == f"registry.example/rt@{digest}"


def test_values_reach_the_pod() -> None:
    objs = template({
        "extraEnv": [{"name": "KOPF_LOG", "value": "debug"}],
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "podLabels": {"team": "ml"},
        "priorityClassName": "system-cluster-critical",
    })
    pod = one(objs, "Deployment")["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "ml"
    assert pod["spec"]["nodeSelector"] == {"pool": "system"}
    assert pod["spec"]["tolerations"][0]["key"] == "dedicated"
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert env(objs)["KOPF_LOG"] == "debug"


# ---------------------------------------------------------------------------------------------- RBAC


def test_cluster_wide_rbac_is_exactly_the_operators_rules(default_objs: list[dict[str, Any]]) -> None:
    role = one(operator_objs(default_objs), "ClusterRole")
    want = normalize(operator_rules())
    assert normalize(role["rules"]) == want, "paste into templates/_rbac.tpl:\n" + rules_yaml(operator_rules())
    binding = one(default_objs, "ClusterRoleBinding")
    sa = one(default_objs, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "interlace-system"}]
    assert env(default_objs)["INTERLACE_WATCH_NAMESPACES"] == ""
    assert not by_kind(operator_objs(default_objs), "Role")


def test_secrets_are_granted_only_where_shared_service_accounts_are_allowed(
    default_objs: list[dict[str, Any]]
) -> None:
    """Reading Secrets is not held by default: only an allow-listed shared ServiceAccount needs the
    per-job token Secret (interlace_operator.rbac.SHARED_ACCOUNT_RULES)."""
    from interlace_operator.rbac import SHARED_ACCOUNT_RULES

    assert not any("secrets" in r["resources"] for r in one(operator_objs(default_objs), "ClusterRole")["rules"])
    objs = template({"jobPolicy": {"allowedServiceAccounts": ["team-sa"]}})
    role = one(operator_objs(objs), "ClusterRole")
    namespaced, cluster = split_rules()
    assert normalize(role["rules"]) == normalize([*namespaced, *SHARED_ACCOUNT_RULES, *cluster])
    assert env(objs)["INTERLACE_ALLOWED_SERVICE_ACCOUNTS"] == "team-sa"


def test_namespaced_rbac_grants_only_in_watched_namespaces() -> None:
    objs = template(NAMESPACED)
    namespaced, cluster = split_rules()
    roles = by_kind(operator_objs(objs), "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for r in roles:
        assert normalize(r["rules"]) == normalize(namespaced), rules_yaml(namespaced)
    bindings = by_kind(operator_objs(objs), "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["roleRef"]["kind"] == "Role"
        assert b["subjects"][0]["namespace"] == "interlace-system"
    # cluster-wide: only the read-only cluster-scoped rules, nothing on PruneJobs or RayJobs
    (cr,) = by_kind(operator_objs(objs), "ClusterRole")
    assert normalize(cr["rules"]) == normalize(cluster), rules_yaml(cluster)
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in cr["rules"])
    assert env(objs)["INTERLACE_WATCH_NAMESPACES"] == "team-a,team-b"


def test_rbac_create_false_renders_no_rbac() -> None:
    objs = template({"rbac": {"create": False}})
    assert not {o["kind"] for o in operator_objs(objs)} & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def test_existing_service_account() -> None:
    objs = template({"serviceAccount": {"create": False, "name": "platform-operator"}})
    assert not by_kind(objs, "ServiceAccount")
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "platform-operator"
    assert one(objs, "ClusterRoleBinding")["subjects"][0]["name"] == "platform-operator"
    proc = render({"serviceAccount": {"create": False}}, check=False)
    assert proc.returncode != 0 and "serviceAccount.name is required" in proc.stderr


# --------------------------------------------------------------------------------------- monitoring


def test_service_monitor_auto_follows_the_api() -> None:
    assert not by_kind(template(), "ServiceMonitor")
    objs = template(None, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
    sm = one(objs, "ServiceMonitor")
    svc = one(objs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["interlace-system"]}


def test_service_monitor_forced_on_and_off() -> None:
    forced = template({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    assert one(forced, "ServiceMonitor")["metadata"]["labels"]["release"] == "prom"
    off = template({"metrics": {"serviceMonitor": {"enabled": False}}}, "--api-versions",
                   "monitoring.coreos.com/v1/ServiceMonitor")
    assert not by_kind(off, "ServiceMonitor")
    # auto without metrics: nothing to scrape, nothing rendered (true is rejected by the schema, below)
    no_metrics = template({"metrics": {"enabled": False}}, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
    assert not by_kind(no_metrics, "ServiceMonitor") and not by_kind(no_metrics, "Service")


def test_service_monitor_honors_the_jobs_namespace_label() -> None:
    """interlace_prunejobs/interlace_prunejob_info carry the PruneJob's namespace: honorLabels keeps it."""
    sm = one(template({"metrics": {"serviceMonitor": {"enabled": True}}}), "ServiceMonitor")
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True


# ---------------------------------------------------------------------------------------- names


def test_name_override_renames_objects_and_the_name_label() -> None:
    objs = template({"nameOverride": "pruner", "metrics": {"serviceMonitor": {"enabled": True}}})
    dep = one(objs, "Deployment")
    assert dep["metadata"]["name"] == "interlace-pruner"
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/name"] == "pruner"
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    svc = one(objs, "Service")
    assert svc["metadata"]["name"] == "interlace-pruner-metrics"
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    sm = one(objs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding"):
        assert one(operator_objs(objs), kind)["metadata"]["name"] == "interlace-pruner", kind
    assert one(objs, "ClusterRoleBinding")["subjects"][0]["name"] == "interlace-pruner"
    # a release whose name already contains the name is not doubled; fullnameOverride wins over both
    assert one(template({"nameOverride": "pruner"}, release="pruner-prod"), "Deployment")["metadata"]["name"] == \
        "pruner-prod"
    both = template({"nameOverride": "pruner", "fullnameOverride": "ops"})
    assert one(both, "Deployment")["metadata"]["name"] == "ops"
    assert one(both, "Deployment")["metadata"]["labels"]["app.kubernetes.io/name"] == "pruner"


# ----------------------------------------------------------------------------------- values schema


BAD_VALUES = [
    # (values, the schema path helm names, a fragment of the schema's message)
    ({"replicaCount": -1}, "/replicaCount", "minimum"),
    ({"replicaCount": 11}, "/replicaCount", "maximum"),
    ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "/replicaCount", "maximum"),
    ({"leaderElection": {"enabled": True, "leaseSeconds": 15}}, "/leaderElection", "leaseSeconds"),
    ({"replicaCount": "one"}, "/replicaCount", "integer"),
    ({"replicas": 1}, "", "replicas"),
    ({"image": {"tags": "1.0"}}, "/image", "tags"),
    ({"metrics": {"enabled": "yes"}}, "/metrics/enabled", "boolean"),
    ({"metrics": {"serviceMonitor": {"enabled": "maybe"}}}, "/metrics/serviceMonitor/enabled", "auto"),
    ({"watchNamespaces": "team-a"}, "/watchNamespaces", "array"),
    ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0", "pattern"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy", "IfNotPresent"),
    ({"resources": {"requests": {"cpu": "lots"}}}, "/resources/requests/cpu", ""),
    ({"crds": {"install": "true"}}, "/crds/install", "boolean"),
    ({"nameOverride": "Interlace_Op"}, "/nameOverride", "pattern"),
    ({"fullnameOverride": "x" * 60}, "/fullnameOverride", "maxLength"),
    # a ServiceMonitor forced on without the metrics Service it would scrape
    ({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}}, "/metrics/serviceMonitor/enabled", "auto"),
]


@pytest.mark.parametrize(("values", "path", "fragment"), BAD_VALUES, ids=[json.dumps(v[0]) for v in BAD_VALUES])
def test_bad_values_fail_with_the_schema_message(values: dict[str, Any], path: str, fragment: str) -> None:
    proc = render(values, check=False)
    assert proc.returncode != 0, f"{values} was accepted"
    err = proc.stderr
    assert SCHEMA_ERROR in err, err
    assert re.search(rf"at '{re.escape(path)}'", err), err
    assert fragment in err, err


# --------------------------------------------------------------------------------------------- docs


def _leaf_keys(d: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v and path not in {"resources", "podSecurityContext", "securityContext",
                                                      "livenessProbe", "readinessProbe"}:
            keys += _leaf_keys(v, path + ".")
        else:
            keys.append(path)
    return keys


def test_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    missing = [k for k in _leaf_keys(values) if f"`{k}`" not in readme]
    assert not missing, f"README.md does not document {missing}"


def test_schema_covers_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values) <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_no_template_uses_an_undefined_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for tpl in (CHART / "templates").iterdir():
        for ref in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", tpl.read_text()):
            node: Any = values
            for part in ref.split("."):
                assert isinstance(node, dict) and part in node, f"{tpl.name}: .Values.{ref} is not in values.yaml"
                node = node[part]


def test_chart_files_present() -> None:
    for name in ("Chart.yaml", "values.yaml", "values.schema.json", "README.md", ".helmignore",
                 "templates/NOTES.txt", "templates/crd.yaml"):
        assert (CHART / name).is_file(), name
    assert not (CHART / "crds").exists(), "CRDs in crds/ are never upgraded by helm: keep it a template"
    assert Path(CHART / "templates" / "servicemonitor.yaml").is_file()


def test_chart_packages(tmp_path: Path) -> None:
    """`helm package` produces an archive versioned like the chart, with the schema, NOTES and README."""
    import tarfile

    proc = helm("package", str(CHART), "--destination", str(tmp_path))
    archive = tmp_path / f"interlace-operator-{APP_VERSION}.tgz"
    assert archive.is_file(), proc.stdout
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for f in ("values.schema.json", "README.md", "templates/NOTES.txt", "templates/crd.yaml", "Chart.yaml"):
        assert f"interlace-operator/{f}" in names, f
