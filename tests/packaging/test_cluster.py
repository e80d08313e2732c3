"""The chart and the kustomize overlays against the real control plane (tests/cluster/testbed.py).

* `helm template` output passes the API server's validation (server-side dry run), both modes;
* `helm install` creates every object; the operator pod reaches Running on the kwok GPU node, in a
  namespace that enforces the `restricted` Pod Security Standard (so the hardening is checked by the
  API server's own admission, not by a test's opinion);
* SubjectAccessReviews for `system:serviceaccount:...` (what `kubectl auth can-i --as` asks) prove the RBAC: every verb of
  interlace_operator.rbac.RULES is allowed where it should be, and a table of verbs the operator must
  not have is denied; the operator's ServiceAccount (its real token) can create the per-PruneJob Role
  (RBAC's escalation check passes) but not a Role granting more than it holds;
* `kubectl apply --server-side -k manifests/overlays/...` works and the operator pod runs;
* the archive `helm package` makes (what CI publishes) installs, upgrades and uninstalls like the
  chart directory.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.testbed import free_port
from tests.packaging.tools import (
    APP_VERSION,
    CHART,
    MANIFESTS,
    normalize,
    operator_rules,
    split_rules,
    template,
)

pytestmark = pytest.mark.cluster

RESTRICTED = "pod-security.kubernetes.io/enforce=restricted"
CRD_NAME = "prunejobs.interlace.dev"

# Verbs the operator must NOT have (anywhere). Each is something a compromised operator could abuse.
DENIED_NAMESPACED = [
    ("create", "prunejobs.interlace.dev", ""),
    ("delete", "prunejobs.interlace.dev", ""),
    ("update", "prunejobs.interlace.dev", "status"),
    ("get", "secrets", ""),
    ("list", "secrets", ""),
    ("create", "pods", ""),
    ("delete", "pods", ""),
    ("create", "pods", "exec"),
    ("delete", "configmaps", ""),
    ("delete", "serviceaccounts", ""),
    ("create", "serviceaccounts", "token"),
    ("delete", "roles.rbac.authorization.k8s.io", ""),
    ("bind", "roles.rbac.authorization.k8s.io", ""),
    ("escalate", "roles.rbac.authorization.k8s.io", ""),
    ("update", "rayjobs.ray.io", ""),
    ("create", "rayclusters.ray.io", ""),
    ("create", "deployments.apps", ""),
    ("impersonate", "serviceaccounts", ""),
]
DENIED_CLUSTER = [
    ("get", "nodes", ""),
    ("create", "namespaces", ""),
    ("delete", "namespaces", ""),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("create", "clusterroles.rbac.authorization.k8s.io", ""),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", ""),
]


def resource_name(group: str, resource: str) -> tuple[str, str]:
    """('prunejobs/status', 'interlace.dev') -> ('prunejobs.interlace.dev', 'status')."""
    base, _, sub = resource.partition("/")
    return (f"{base}.{group}" if group else base), sub


def allowed_table(rules: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [
        (verb, *resource_name(group, res))
        for r in rules
        for group in r["apiGroups"]
        for res in r["resources"]
        for verb in r["verbs"]
    ]


def can_i(cp: Any, sa: str, verb: str, resource: str, sub: str, namespace: str | None) -> bool:
    """The API server's own RBAC decision for a ServiceAccount (a SubjectAccessReview with the groups
    the apiserver gives it), like `kubectl auth can-i --as`, but without kubectl's discovery: a
    resource whose CRD is not installed (Kueue's workloads) is asked about as it is, not as an
    unknown core resource."""
    plural, _, group = resource.partition(".")
    ns = sa.split(":")[2]
    attrs: dict[str, str] = {"verb": verb, "resource": plural, "group": group, "subresource": sub}
    if namespace:
        attrs["namespace"] = namespace
    review = cp.create({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": sa,
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
            "resourceAttributes": attrs,
        },
    })
    return bool(review["status"].get("allowed"))


def check_table(cp: Any, sa: str, rows: list[tuple[str, str, str, str | None, bool]]) -> None:
    """rows: (verb, resource, subresource, namespace or None for cluster-wide, expected)."""
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda r: can_i(cp, sa, r[0], r[1], r[2], r[3]), rows))
    wrong = [
        f"{'ALLOWED' if got else 'DENIED'} but expected {'allowed' if row[4] else 'denied'}: "
        f"{row[0]} {row[1]}{'/' + row[2] if row[2] else ''} in {row[3] or 'all namespaces'}"
        for row, got in zip(rows, answers, strict=True)
        if got != row[4]
    ]
    assert not wrong, "\n".join(wrong)


def adopt_crd(cp: Any, release: str, namespace: str) -> None:
    """Let this release own the existing cluster-wide singletons (the CRD, the users' ClusterRoles:
    another test may have applied them), as Helm documents."""
    for kind, name in [("crd", CRD_NAME), ("clusterrole", "interlace-prunejob-editor"),
                       ("clusterrole", "interlace-prunejob-viewer")]:
        if not cp.kubectl("get", kind, name, "--ignore-not-found", "-o", "name").stdout.strip():
            continue
        cp.kubectl("label", kind, name, "--overwrite", "app.kubernetes.io/managed-by=Helm")
        cp.kubectl("annotate", kind, name, "--overwrite", f"meta.helm.sh/release-name={release}",
                   f"meta.helm.sh/release-namespace={namespace}")


@pytest.fixture
def other_namespace(control_plane: Any) -> Iterator[str]:
    ns = control_plane.create_namespace(prefix="pkg-other")
    yield ns
    control_plane.delete_namespace(ns)


def helm_install(cp: Any, release: str, namespace: str, *set_args: str) -> None:
    adopt_crd(cp, release, namespace)
    cp.helm("install", release, str(CHART), "--namespace", namespace, *set_args, "--timeout", "120s", timeout=180)


# ---------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_helm_template_passes_server_side_dry_run(control_plane: Any, namespace: str, mode: str) -> None:
    values = {"watchNamespaces": [namespace]} if mode == "namespaced" else None
    objs = template(values, release=f"dry-{secrets.token_hex(3)}", namespace=namespace)
    doc = {"apiVersion": "v1", "kind": "List", "items": objs}
    proc = control_plane.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=interlace-dry-run", "--dry-run=server",
        "-f", "-", "-o", "json", input=json.dumps(doc),
    )
    applied = json.loads(proc.stdout)
    got = sorted(o["kind"] for o in applied.get("items", [applied]))
    assert got == sorted(o["kind"] for o in objs)


def test_helm_install_cluster_wide(control_plane: Any, namespace: str, other_namespace: str) -> None:
    cp = control_plane
    cp.kubectl("label", "namespace", namespace, RESTRICTED)
    release = f"pkg-{secrets.token_hex(3)}"
    helm_install(cp, release, namespace)
    try:
        fullname = f"{release}-interlace-operator"
        for kind, name, ns in [
            ("crd", CRD_NAME, None),
            ("serviceaccount", fullname, namespace),
            ("clusterrole", fullname, None),
            ("clusterrolebinding", fullname, None),
            ("deployment", fullname, namespace),
            ("service", f"{fullname}-metrics", namespace),
        ]:
            args = ["get", kind, name, "-o", "name"] + (["-n", ns] if ns else [])
            assert cp.kubectl(*args).stdout.strip(), (kind, name)
        pods = cp.wait_for_pods(namespace, f"app.kubernetes.io/instance={release}", count=1, timeout=120)
        assert pods[0]["spec"]["nodeName"].startswith("kwok-")
        stored = cp.kubectl_json("get", "clusterrole", fullname)
        assert normalize(stored["rules"]) == normalize(operator_rules())

        sa = f"system:serviceaccount:{namespace}:{fullname}"
        namespaced, cluster = split_rules()
        rows = [(v, r, s, other_namespace, True) for v, r, s in allowed_table(namespaced)]
        rows += [(v, r, s, None, True) for v, r, s in allowed_table(cluster)]
        rows += [(v, r, s, other_namespace, False) for v, r, s in DENIED_NAMESPACED]
        rows += [(v, r, s, None, False) for v, r, s in DENIED_CLUSTER]
        check_table(cp, sa, rows)

        # The real token of the operator's ServiceAccount can create the per-PruneJob Role and its
        # binding (RBAC escalation check: it holds every permission it grants) but no more.
        from interlace_operator.rbac import job_role_rules

        kubeconfig = cp.service_account_kubeconfig(namespace, fullname)
        job_role = {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "job-x", "namespace": other_namespace}, "rules": job_role_rules("job-x"),
        }
        cp.kubectl("create", "-f", "-", kubeconfig=kubeconfig, input=json.dumps(job_role))
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "job-x", "namespace": other_namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "job-x"},
            "subjects": [{"kind": "ServiceAccount", "name": "job-x", "namespace": other_namespace}],
        }
        cp.kubectl("create", "-f", "-", kubeconfig=kubeconfig, input=json.dumps(binding))
        greedy = dict(job_role, metadata={"name": "greedy", "namespace": other_namespace},
                      rules=[{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}])
        proc = cp.kubectl("create", "-f", "-", kubeconfig=kubeconfig, input=json.dumps(greedy), check=False)
        assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), proc.stderr
    finally:
        cp.helm("uninstall", release, "--namespace", namespace, check=False, timeout=90)
    # resource-policy keep: the CRD (and every PruneJob) survives an uninstall
    assert cp.kubectl("get", "crd", CRD_NAME, "-o", "name").stdout.strip()
    assert not cp.kubectl("get", "clusterrole", f"{release}-interlace-operator", "--ignore-not-found",
                          "-o", "name").stdout.strip()


def test_helm_install_namespaced(control_plane: Any, namespace: str, other_namespace: str, tmp_path: Path) -> None:
    cp = control_plane
    release = f"pkg-{secrets.token_hex(3)}"
    # The operator lives in `namespace` and watches only `namespace`; `other_namespace` is out of reach.
    # The CRD is installed separately here (crds.install=false), as a cluster admin would.
    ensure_crd(cp)
    helm_install(cp, release, namespace, "--set", f"watchNamespaces={{{namespace}}}", "--set", "crds.install=false")
    try:
        fullname = f"{release}-interlace-operator"
        cp.wait_for_pods(namespace, f"app.kubernetes.io/instance={release}", count=1, timeout=120)
        deployment = cp.kubectl_json("get", "deployment", fullname, "-n", namespace)
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["INTERLACE_WATCH_NAMESPACES"] == namespace

        sa = f"system:serviceaccount:{namespace}:{fullname}"
        namespaced, cluster = split_rules()
        rows = [(v, r, s, namespace, True) for v, r, s in allowed_table(namespaced)]
        # outside the watched namespace: nothing (one verb per resource is enough to show it)
        seen: set[tuple[str, str]] = set()
        for v, r, s in allowed_table(namespaced):
            if (r, s) not in seen:
                seen.add((r, s))
                rows.append((v, r, s, other_namespace, False))
        rows += [(v, r, s, None, True) for v, r, s in allowed_table(cluster)]
        rows += [(v, r, s, namespace, False) for v, r, s in DENIED_NAMESPACED]
        rows += [(v, r, s, None, False) for v, r, s in DENIED_CLUSTER]
        check_table(cp, sa, rows)

        # Enough in practice: the real operator, as this ServiceAccount (its own token), handles a
        # PruneJob in the watched namespace with only the namespaced chart's grants.
        run_operator_as(cp, namespace, fullname, tmp_path)
    finally:
        cp.helm("uninstall", release, "--namespace", namespace, check=False, timeout=90)


def ensure_crd(cp: Any) -> None:
    crd = MANIFESTS / "base" / "crd.yaml"
    cp.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=interlace-packaging", "-f", str(crd))
    cp.wait_crds_established(CRD_NAME, timeout=60)


def run_operator_as(cp: Any, namespace: str, service_account: str, tmp_path: Path) -> None:
    """Run `python -m interlace_operator` outside the cluster with the ServiceAccount's token (kwok pods
    run nothing), apply the 4B example PruneJob, and wait until the operator created its RayJob and
    wrote the PruneJob's status. Any 403 in the operator's log fails the test."""
    kubeconfig = cp.service_account_kubeconfig(namespace, service_account)
    health = free_port()
    env = dict(os.environ)
    env.pop("KUBERNETES_SERVICE_HOST", None)
    env.update(
        KUBECONFIG=str(kubeconfig),
        INTERLACE_WATCH_NAMESPACES=namespace,
        INTERLACE_HEALTH_PORT=str(health),
        INTERLACE_METRICS_PORT=str(free_port()),
        INTERLACE_RUNTIME_IMAGE="registry.test/interlace-runtime:test",
    )
    log_path = tmp_path / "operator.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "interlace_operator"], stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    example = MANIFESTS / "examples" / "qwen3-vl-4b-20.yaml"
    try:
        cp.wait_for(lambda: _healthz(health, proc, log_path), timeout=90, what="operator /healthz")
        cp.kubectl("apply", "-n", namespace, "-f", str(example))

        def handled() -> bool:
            pj = cp.kubectl_json("get", "prunejob", "qwen3-vl-4b-20", "-n", namespace)
            rayjobs = cp.kubectl_json("get", "rayjobs", "-n", namespace)["items"]
            st = pj.get("status") or {}
            return bool(st.get("phase") and st.get("conditions") and rayjobs)

        try:
            cp.wait_for(handled, timeout=90, what="the operator to create the RayJob and write status")
        except TimeoutError as e:
            raise AssertionError(f"{e}\noperator log:\n{log_path.read_text(errors='replace')[-4000:]}") from None
        cp.kubectl("delete", "-n", namespace, "-f", str(example), "--wait=true", "--timeout=60s", timeout=70)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    text = log_path.read_text(errors="replace")
    forbidden = [ln for ln in text.splitlines() if "Forbidden" in ln or " 403" in ln or "(403)" in ln]
    assert not forbidden, "\n".join(forbidden[:20])


def _healthz(port: int, proc: subprocess.Popen[bytes], log_path: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"operator exited {proc.returncode}:\n{log_path.read_text(errors='replace')[-4000:]}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.parametrize(("overlay", "ns"), [("cluster-wide", "interlace-system"), ("namespaced", "interlace")])
def test_kubectl_apply_k_overlay(control_plane: Any, overlay: str, ns: str) -> None:
    cp = control_plane
    path = str(MANIFESTS / "overlays" / overlay)
    try:
        cp.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=interlace-kustomize", "-k", path,
                   timeout=120)
        cp.wait_crds_established(CRD_NAME, timeout=60)
        pods = cp.wait_for_pods(ns, "app.kubernetes.io/name=interlace-operator", count=1, timeout=120)
        assert pods[0]["status"]["phase"] == "Running"
        stored = cp.kubectl_json("get", "clusterrole", "interlace-operator")
        namespaced, cluster = split_rules()
        want = operator_rules() if overlay == "cluster-wide" else cluster
        assert normalize(stored["rules"]) == normalize(want)
        if overlay == "namespaced":
            role = cp.kubectl_json("get", "role", "interlace-operator", "-n", ns)
            assert normalize(role["rules"]) == normalize(namespaced)
        # a second apply is a no-op (idempotent GitOps)
        proc = cp.kubectl("apply", "--server-side", "--field-manager=interlace-kustomize", "-k", path, timeout=120)
        assert "serverside-applied" in proc.stdout
    finally:
        cp.kubectl("delete", "clusterrolebinding,clusterrole", "interlace-operator", "--ignore-not-found",
                   "--wait=false", check=False)
        cp.kubectl("delete", "clusterrole", "interlace-prunejob-editor", "interlace-prunejob-viewer",
                   "--ignore-not-found", "--wait=false", check=False)
        # cluster-scoped too: left behind, it would refuse other operators' status writes
        cp.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy",
                   "interlace-operator-status-writers", "--ignore-not-found", "--wait=false", check=False)
        cp.delete_namespace(ns)


def test_bad_values_fail_helm_install(control_plane: Any, namespace: str) -> None:
    """helm install (against the real API server) stops at the values schema, before creating anything."""
    for bad, path in [("replicaCount=-3", "/replicaCount"), ("replicas=2", "replicas"),
                      ("metrics.enabled=maybe", "/metrics/enabled")]:
        proc = control_plane.helm("install", "bad", str(CHART), "--namespace", namespace, "--set", bad, check=False)
        assert proc.returncode != 0, bad
        assert "values don't meet the specifications of the schema" in proc.stderr and path in proc.stderr, proc.stderr
    assert not control_plane.helm("list", "--namespace", namespace, "-q").stdout.strip()


def test_notes_render(control_plane: Any, namespace: str) -> None:
    # crds.install=false: a dry run still refuses a CRD owned by another release (or kubectl)
    base = ("install", "interlace", str(CHART), "--namespace", namespace, "--dry-run=client", "--set",
            "crds.install=false")
    notes = control_plane.helm(*base).stdout.split("NOTES:", 1)[1]
    assert "ghcr.io/interlace-dev/interlace-operator:" in notes
    assert "kubectl wait pj/" in notes and "every namespace" in notes
    assert "not managed by this release" in notes
    proc = control_plane.helm(*base, "--set", f"watchNamespaces={{{namespace}}}")
    assert f"PruneJobs in {namespace} only" in proc.stdout.split("NOTES:", 1)[1]


def test_helm_install_from_the_packaged_archive(control_plane: Any, namespace: str, tmp_path: Path) -> None:
    """What a user of the published chart does: `helm package` (CI's artifact), then `helm install` and
    `helm upgrade` from the .tgz alone (no clone), with nameOverride; the operator pod runs."""
    cp = control_plane
    cp.helm("package", str(CHART), "--destination", str(tmp_path))
    archive = tmp_path / f"interlace-operator-{APP_VERSION}.tgz"
    assert archive.is_file()
    shown = cp.helm("show", "chart", str(archive)).stdout
    assert f"version: {APP_VERSION}" in shown and "name: interlace-operator" in shown
    release = f"tgz-{secrets.token_hex(3)}"
    adopt_crd(cp, release, namespace)
    cp.helm("install", release, str(archive), "--namespace", namespace, "--set", "nameOverride=pruner",
            "--wait", "--timeout", "120s", timeout=180)
    try:
        fullname = f"{release}-pruner"
        deployment = cp.kubectl_json("get", "deployment", fullname, "-n", namespace)
        assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "pruner"
        pods = cp.wait_for_pods(namespace, "app.kubernetes.io/name=pruner", count=1, timeout=120)
        assert pods[0]["status"]["phase"] == "Running"
        assert cp.kubectl("get", "clusterrole", fullname, "-o", "name").stdout.strip()
        listed = json.loads(cp.helm("list", "--namespace", namespace, "-o", "json").stdout)
        assert [(r["name"], r["chart"], r["status"]) for r in listed] == [
            (release, f"interlace-operator-{APP_VERSION}", "deployed")]
        cp.helm("upgrade", release, str(archive), "--namespace", namespace, "--reuse-values",
                "--set", "metrics.service.port=9191", "--wait", "--timeout", "120s", timeout=180)
        svc = cp.kubectl_json("get", "service", f"{fullname}-metrics", "-n", namespace)
        assert svc["spec"]["ports"][0]["port"] == 9191
        # the schema travels in the archive: the contradiction is refused by the API-side install too
        proc = cp.helm("upgrade", release, str(archive), "--namespace", namespace, "--reuse-values", "--set",
                       "metrics.enabled=false", "--set", "metrics.serviceMonitor.enabled=true", check=False)
        assert proc.returncode != 0 and "/metrics/serviceMonitor/enabled" in proc.stderr, proc.stderr
    finally:
        cp.helm("uninstall", release, "--namespace", namespace, check=False, timeout=90)
