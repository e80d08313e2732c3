"""The operator's own RBAC needs, as data.

The Helm chart and manifests/base/rbac.yaml render these rules (a packaging test compares them), and
tests/operator runs the operator under exactly these rules against the real API server, so a missing
verb fails a test instead of a production rollout.

Why each rule exists:

* prunejobs get/list/watch: kopf watches PruneJobs; the reconciler re-reads one before acting.
* prunejobs/status get/patch: the operator writes phase, conditions, rayJob, attempts, times.
* rayjobs get/list/watch/create/patch/delete: the KubeRay RayJob of each attempt (patch = suspend,
  delete = release a failed or overdue attempt's GPUs).
* configmaps, serviceaccounts, roles, rolebindings get/create/update: the per-job children, created or
  adopted. The job's Role grants get/patch on one PruneJob's status; Kubernetes only lets the operator
  create it because the operator holds those permissions itself (RBAC escalation check).
* events create/patch (core and events.k8s.io): what users see in `kubectl describe pj`.
* customresourcedefinitions and namespaces list/watch: kopf's cluster observation (it notices a KubeRay
  CRD installed after the operator, and namespaces that appear); read-only.
"""

from __future__ import annotations

from typing import Any

from interlace.spec import API_GROUP, PLURAL

RULES: list[dict[str, list[str]]] = [
    {"apiGroups": [API_GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [API_GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch"]},
    {
        "apiGroups": ["ray.io"],
        "resources": ["rayjobs"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["configmaps", "serviceaccounts"], "verbs": ["get", "create", "update"]},
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["roles", "rolebindings"],
        "verbs": ["get", "create", "update"],
    },
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
]


def job_role_rules(prunejob_name: str) -> list[dict[str, Any]]:
    """Rules of the per-job Role: the Ray job may read its own PruneJob and patch its own status."""
    return [
        {
            "apiGroups": [API_GROUP],
            "resources": [f"{PLURAL}/status"],
            "resourceNames": [prunejob_name],
            "verbs": ["get", "patch"],
        },
        {
            "apiGroups": [API_GROUP],
            "resources": [PLURAL],
            "resourceNames": [prunejob_name],
            "verbs": ["get"],
        },
    ]


def cluster_role(name: str = "interlace-operator") -> dict[str, Any]:
    """A ClusterRole with RULES (what manifests/ and the chart render)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "interlace-operator"}},
        "rules": [dict(r) for r in RULES],
    }
