"""ClusterRoles for the people who use PruneJobs (not for the operator: that is rbac.py).

Both are aggregated into Kubernetes' built-in user-facing roles with the aggregation labels, so an
admin grants nothing new: whoever holds `edit` (or `admin`) in a namespace can create, change and
delete PruneJobs there, whoever holds `view` can read them. The chart (templates/user-roles.yaml) and
the kustomize base (manifests/base/user-roles.yaml) carry exactly these rules; tests compare them and
check the aggregation with `kubectl auth can-i` on a real API server.

`prunejobs/status` is read-only for users: only the operator and the job's own identity write it.
"""

from __future__ import annotations

from typing import Any

from interlace.schema.spec import API_GROUP, PLURAL

EDITOR = "interlace-prunejob-editor"
VIEWER = "interlace-prunejob-viewer"
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-{}"

EDITOR_RULES: list[dict[str, Any]] = [
    {"apiGroups": [API_GROUP], "resources": [PLURAL],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]},
    {"apiGroups": [API_GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "list", "watch"]},
]
VIEWER_RULES: list[dict[str, Any]] = [
    {"apiGroups": [API_GROUP], "resources": [PLURAL, f"{PLURAL}/status"], "verbs": ["get", "list", "watch"]},
]

# editor -> edit and admin; viewer -> view (which `edit` and `admin` include through their own
# aggregation, but the label on `edit` is a cluster detail: say it explicitly).
AGGREGATE_TO = {EDITOR: ("admin", "edit"), VIEWER: ("admin", "edit", "view")}


def cluster_roles() -> list[dict[str, Any]]:
    """The two ClusterRoles as objects (names and rules as the chart and the manifests have them)."""
    out = []
    for name, rules in ((EDITOR, EDITOR_RULES), (VIEWER, VIEWER_RULES)):
        labels = {AGGREGATE.format(role): "true" for role in AGGREGATE_TO[name]}
        out.append({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name, "labels": labels},
            "rules": [dict(r) for r in rules],
        })
    return out
