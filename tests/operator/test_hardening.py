"""Unit tests of the operator's hardening (no cluster): allow-lists, adoption by UID only, the
status-writer policy as shipped, and the RBAC it needs. The cluster side is test_hardening_cluster.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from interlace_operator.config import OperatorConfig
from interlace_operator.kube import ConflictError, Kube
from interlace_operator.rbac import OPERATOR_STATUS_FIELDS, RULES, status_policy

from interlace.schema.spec import PruneJobStatus, SpecError, parse_prunejob

REPO = Path(__file__).resolve().parents[2]


def _resources(**fields: Any) -> Any:
    spec = {"model": {"source": "a/b"}, "pruning": {"ratio": 0.2}, "output": {"uri": "s3://b/p"},
            "resources": {"pvcName": "work", **fields}}  # a work claim: a cluster PruneJob needs one
    return parse_prunejob({"spec": spec}, cluster=True).spec.resources


def test_default_allow_lists_allow_only_the_per_job_account_and_the_gpu_taint() -> None:
    cfg = OperatorConfig.from_env({})
    assert cfg.not_allowed(_resources()) == []
    assert cfg.not_allowed(_resources(tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}])) == []
    problems = cfg.not_allowed(
        _resources(
            serviceAccountName="namespace-admin",
            priorityClassName="system-cluster-critical",
            tolerations=[{"operator": "Exists"}, {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}],
        )
    )
    assert [p.split(":")[0] for p in problems] == [
        "spec.resources.serviceAccountName", "spec.resources.priorityClassName",
        "spec.resources.tolerations[0].key", "spec.resources.tolerations[1].key",
    ]
    assert "tolerates every taint" in problems[2]


def test_pod_overrides_cannot_get_around_the_allow_lists() -> None:
    """spec.resources.podTemplateOverrides reaches the same pod fields: the same allow-lists apply, and
    what reaches the node itself (hostPath, privileged, added capabilities) is refused, first by the
    spec models (Pod Security baseline: interlace/schema/podpolicy.py, so `interlace validate`, the
    CRD's reader and the operator agree), and again by the operator's own check (defence in depth)."""
    cfg = OperatorConfig.from_env({})
    where = "spec.resources.podTemplateOverrides[0].spec"
    node_reaching = {
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        "containers": [{"name": "ray-worker", "volumeMounts": [{"name": "root", "mountPath": "/host"}],
                        "securityContext": {"privileged": True}}],
    }
    with pytest.raises(SpecError) as refused:
        _resources(podTemplateOverrides=[{"targetGroups": ["workers"], "spec": node_reaching}])
    assert f"{where}.volumes[0].hostPath" in str(refused.value)
    assert f"{where}.containers[0].securityContext.privileged" in str(refused.value)

    overrides = [{
        "targetGroups": ["workers"],
        "spec": {"priorityClassName": "system-cluster-critical", "tolerations": [{"operator": "Exists"}]},
    }]
    problems = cfg.not_allowed(_resources(podTemplateOverrides=overrides))
    assert [p.split(":")[0] for p in problems] == [f"{where}.priorityClassName", f"{where}.tolerations[0].key"]

    # The operator's own check, on resources that skipped the models' validation (as an object written
    # before the policy existed would, or a bug in the models): it still refuses what reaches the node.
    ok = _resources(podTemplateOverrides=[{"targetGroups": ["workers"], "spec": {
        "volumes": [{"name": "root", "emptyDir": {}}], "containers": [{"name": "ray-worker"}]}}])
    o = ok.pod_template_overrides[0]
    assert o.spec is not None
    container = o.spec.containers[0].model_copy(update={"security_context": {"privileged": True}})
    spec = o.spec.model_copy(update={"volumes": [{"name": "root", "hostPath": {"path": "/"}}], "containers": [container]})
    unchecked = ok.model_copy(update={"pod_template_overrides": [o.model_copy(update={"spec": spec})]})
    assert [p.split(":")[0] for p in cfg.not_allowed(unchecked)] == [
        f"{where}.volumes[0].hostPath", f"{where}.containers[0].securityContext"]
    harmless = [{"targetGroups": ["head"], "spec": {"volumes": [{"name": "scratch", "emptyDir": {}}],
                                                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}}]
    assert cfg.not_allowed(_resources(podTemplateOverrides=harmless)) == []


def test_allow_lists_from_the_environment() -> None:
    cfg = OperatorConfig.from_env({
        "INTERLACE_ALLOWED_SERVICE_ACCOUNTS": "team-sa, other",
        "INTERLACE_ALLOWED_PRIORITY_CLASSES": "ml-high",
        "INTERLACE_ALLOWED_TOLERATION_KEYS": "",
    })
    assert cfg.allowed_service_accounts == ("team-sa", "other")
    assert cfg.not_allowed(_resources(serviceAccountName="team-sa", priorityClassName="ml-high")) == []
    # an empty list allows nothing, not the default
    assert cfg.not_allowed(_resources(tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}]))
    anything = OperatorConfig.from_env({"INTERLACE_ALLOWED_TOLERATION_KEYS": "*"})
    assert anything.not_allowed(_resources(tolerations=[{"operator": "Exists"}])) == []


@pytest.mark.parametrize(
    ("refs", "ok"),
    [
        ([{"uid": "mine", "controller": True}], True),
        ([{"uid": "old", "controller": True}], False),
        ([], False),  # an orphan with our labels (kubectl delete --cascade=orphan) is not ours
        ([{"uid": "mine", "controller": False}], False),
    ],
)
def test_adoption_needs_our_uid_as_controller(refs: list[dict[str, Any]], ok: bool) -> None:
    obj = {
        "kind": "RayJob",
        "metadata": {"name": "x-1", "ownerReferences": refs,
                     "labels": {"app.kubernetes.io/managed-by": "interlace-operator"}},
    }
    if ok:
        Kube.check_owner(obj, "mine")
    else:
        with pytest.raises(ConflictError, match="not controlled by this PruneJob"):
            Kube.check_owner(obj, "mine")


def test_operator_rbac_has_finalizers_and_no_configmaps() -> None:
    def grants(resource: str) -> set[str]:
        return {v for r in RULES if resource in r["resources"] for v in r["verbs"]}

    assert grants("prunejobs/finalizers") == {"update"}  # OwnerReferencesPermissionEnforcement
    assert grants("configmaps") == set()  # the spec travels in the RayJob
    assert "bind" not in grants("roles") and "escalate" not in grants("roles")
    assert not any("*" in r["verbs"] or "*" in r["resources"] for r in RULES)


def test_status_policy_covers_every_operator_field_and_is_what_ships() -> None:
    owned = {"phase", "conditions", "observedGeneration", "rayJob", "attempts", "startTime", "activeSince", "completionTime"}
    assert set(OPERATOR_STATUS_FIELDS) == owned
    job_fields = {"stage", "progress", "plan", "results"}
    assert {f.alias or n for n, f in PruneJobStatus.model_fields.items()} == owned | job_fields
    policy, binding = status_policy()
    expression = policy["spec"]["validations"][0]["expression"]
    for field in owned:
        assert f"object.status.{field} == oldObject.status.{field}" in expression
    for field in job_fields:
        assert field not in expression
    shipped = [d for d in yaml.safe_load_all((REPO / "manifests/base/status-policy.yaml").read_text()) if d]
    assert shipped == [policy, binding]
    assert "status-policy.yaml" in (REPO / "manifests/base/kustomization.yaml").read_text()
    chart = (REPO / "charts/interlace-operator/templates/status-policy.yaml").read_text()
    assert expression.split(" && ")[0] in chart.replace("\n      ", " ")


def test_event_replay_only_for_recently_written_status() -> None:
    from interlace_operator.status import parse_time
    from interlace_operator.writer import _status_written_since

    body = {"metadata": {"managedFields": [
        {"manager": "interlace-operator", "subresource": "status", "time": "2026-12-01T21:00:00Z"},
        {"manager": "kubectl", "time": "2099-01-01T00:00:00Z"},  # a spec/metadata write does not count
    ]}}
    assert _status_written_since(body, parse_time("2026-12-01T20:30:00Z"))
    assert not _status_written_since(body, parse_time("2026-12-01T21:30:00Z"))
    assert _status_written_since({"metadata": {}}, parse_time("2026-12-01T21:30:00Z"))  # unknown: replay
