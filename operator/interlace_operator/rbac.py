"""The operator's own RBAC needs, as data.

The Helm chart and manifests/base/rbac.yaml render these rules (a packaging test compares them), and
tests/operator runs the operator under exactly these rules against the real API server, so a missing
verb fails a test instead of a production rollout.

Why each rule exists (cut to the verbs the operator's code calls, read from kube.py and kopf's
watches, plus the one the RBAC escalation check needs; the cluster tests show no other is needed):

* prunejobs get/list/watch: kopf watches PruneJobs; the reconciler re-reads one before acting.
* prunejobs/status patch: the operator writes phase, conditions, rayJob, attempts, times; get: only
  because the job's Role grants it (the escalation check: one may grant only what one holds).
* rayjobs get/list/watch/create/patch/delete: the KubeRay RayJob of each attempt (patch = suspend,
  delete = release a failed or overdue attempt's GPUs).
* workloads list/patch (kueue.x-k8s.io): with spec.resources.queueName, the operator reads the
  Kueue Workload of its RayJob (found by the kueue.x-k8s.io/job-uid label) for the queued status, and
  sets its spec.active to carry spec.suspend (Kueue would undo a suspend written on the RayJob).
  Without Kueue installed the rule grants nothing.
* prunejobs/finalizers update: the children's ownerReferences set blockOwnerDeletion, which the
  OwnerReferencesPermissionEnforcement admission plugin (OpenShift's default) only allows to a user
  who may update the owner's finalizers; the operator adds no finalizer.
* serviceaccounts get/create, roles and rolebindings get/create/update: the per-job identity, created
  or adopted (get after a 409), the Role's rules and the binding's subjects brought up to date (a
  ServiceAccount has no content the operator keeps up to date: no update).
  The job's Role grants get/patch on one PruneJob's status; Kubernetes only lets the operator create
  it because the operator holds those permissions itself (RBAC escalation check). No ConfigMaps: the
  spec travels inside the RayJob.
* networkpolicies get/create/update (networking.k8s.io): the NetworkPolicy of each job's Ray pods
  (INTERLACE_NETWORK_POLICY), created or adopted like the identity.
* events create (core; kopf's own posting is off, the operator posts each event once under a
  deterministic name and never patches one): what users see in `kubectl describe pj`; list: the Warning events of an attempt's RayJob and RayCluster while its pods do not run (a pod
  creation admission or a quota refused), quoted in the PruneJob's status.
* pods list: while an attempt's Ray pods do not all run, what they wait on (unschedulable, an image
  pull, a missing Secret), quoted in the status and in the StartDeadlineExceeded failure.
* customresourcedefinitions and namespaces list/watch: kopf's cluster observation (it notices a KubeRay
  CRD installed after the operator, and namespaces that appear); read-only.

Only where shared ServiceAccounts are allow-listed (INTERLACE_ALLOWED_SERVICE_ACCOUNTS; the chart adds
it when `jobPolicy.allowedServiceAccounts` is not empty), SHARED_ACCOUNT_RULES:

* secrets get/create: the per-job ServiceAccount's token Secret (`<pj>-job-token`), mounted into pods
  that run as a shared account, so their status writes still come from the per-job identity; get only
  to adopt it after a 409. Without the rule such a PruneJob fails its pre-flight (ChildRejected, the
  Secret named) before anything is created. Reading Secrets is a privilege worth not holding by
  default, hence the separate rule.
"""

from __future__ import annotations

from typing import Any

from interlace.schema.spec import API_GROUP, PLURAL

RULES: list[dict[str, list[str]]] = [
    {"apiGroups": [API_GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [API_GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch"]},
    {"apiGroups": [API_GROUP], "resources": [f"{PLURAL}/finalizers"], "verbs": ["update"]},
    {
        "apiGroups": ["ray.io"],
        "resources": ["rayjobs"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads"], "verbs": ["list", "patch"]},
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get", "create"]},
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["roles", "rolebindings"],
        "verbs": ["get", "create", "update"],
    },
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "create", "update"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "list"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
]


SHARED_ACCOUNT_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]},
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


def cluster_role(name: str = "interlace-operator", *, shared_accounts: bool = False) -> dict[str, Any]:
    """A ClusterRole with RULES (what manifests/ and the chart render), plus SHARED_ACCOUNT_RULES when
    shared ServiceAccounts are allow-listed."""
    rules = [*RULES, *(SHARED_ACCOUNT_RULES if shared_accounts else [])]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "interlace-operator"}},
        "rules": [dict(r) for r in rules],
    }


# Status fields only the operator writes (interlace.schema.spec.PruneJobStatus); the job writes the others.
OPERATOR_STATUS_FIELDS = (
    "phase", "conditions", "observedGeneration", "rayJob", "attempts", "startTime", "activeSince", "completionTime",
)
STATUS_POLICY_NAME = "interlace-operator-status-writers"  # <chart fullname>-status-writers
DEFAULT_OPERATOR_USER = "system:serviceaccount:interlace-system:interlace-operator"


def _unchanged(field: str) -> str:
    new, old = f"has(object.status) && has(object.status.{field})", f"has(oldObject.status) && has(oldObject.status.{field})"
    return f"(({new}) == ({old}) && (!({new}) || object.status.{field} == oldObject.status.{field}))"


def status_policy(
    operator_user: str = DEFAULT_OPERATOR_USER,
    namespace_selector: dict[str, Any] | None = None,
    name: str = STATUS_POLICY_NAME,
) -> list[dict[str, Any]]:
    """One writer per status field, enforced by the API server: a ValidatingAdmissionPolicy (and its
    binding) that refuses any change to an operator-owned status field by anyone but the operator's
    ServiceAccount. The job's token (any code in the Ray job holds it) can then write only stage,
    progress, plan and results, and its Role limits it to its own PruneJob; a forged
    `phase: Succeeded`, `attempts: 0` or `startTime` is refused. Rendered by manifests/base and the
    Helm chart (tests compare them). The binding covers the namespaces the operator watches
    (`namespace_selector`; None: every namespace), so operators watching different namespaces each
    keep their own policy."""
    expression = " && ".join(_unchanged(f) for f in OPERATOR_STATUS_FIELDS)
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "interlace-operator"}},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [API_GROUP],
                        "apiVersions": ["*"],
                        "operations": ["UPDATE"],
                        "resources": [f"{PLURAL}/status"],
                    }
                ]
            },
            "matchConditions": [
                {"name": "not-the-operator", "expression": f"request.userInfo.username != '{operator_user}'"}
            ],
            "validations": [
                {
                    "expression": expression,
                    "message": "status." + ", ".join(OPERATOR_STATUS_FIELDS) + " are written by the interlace "
                    "operator only; a job may write status.stage, progress, plan and results",
                    "reason": "Forbidden",
                }
            ],
        },
    }
    binding: dict[str, Any] = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "interlace-operator"}},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }
    if namespace_selector is not None:
        binding["spec"]["matchResources"] = {"namespaceSelector": namespace_selector}
    return [policy, binding]
