"""Pod overrides through the real stack: PruneJob -> operator -> RayJob accepted by the API server's
RayJob schema -> the real KubeRay builds the RayCluster -> pods (scheduled on the kwok GPU node) carry
the head's and the workers' own overrides, next to the operator's fields."""

from __future__ import annotations

import json
from typing import Any

import pytest

from interlace.schema import podpolicy
from tests.operator.conftest import RUNTIME_IMAGE, Cluster, prunejob, wait_for

pytestmark = pytest.mark.cluster

GPU_AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "interlace.dev/node-pool", "operator": "In", "values": ["gpu"]}]}]}}}
SPREAD = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
          "labelSelector": {"matchLabels": {"interlace.dev/prunejob": "ovr"}}}

OVERRIDES = [
    {"targetGroups": ["head", "workers"],
     "metadata": {"labels": {"team": "ml"}, "annotations": {"example.com/cost-center": "4711"}},
     "spec": {"imagePullSecrets": [{"name": "regcred"}],
              "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
              "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}],
              "containers": [
                  {"name": "ray-head", "env": [{"name": "ROLE", "value": "head"}],
                   "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
                  {"name": "ray-worker", "env": [{"name": "ROLE", "value": "worker"}],
                   "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                   "securityContext": {"allowPrivilegeEscalation": False}}]}},
    {"targetGroups": ["workers"], "shmSize": "4Gi",
     "metadata": {"annotations": {"example.com/gpu-profile": "training"}},
     "spec": {"affinity": GPU_AFFINITY, "topologySpreadConstraints": [SPREAD],
              "tolerations": [{"key": "example.com/dedicated", "operator": "Exists", "effect": "NoSchedule"}]}},
    {"targetGroups": ["head"], "shmSize": "512Mi", "metadata": {"annotations": {"example.com/role": "driver"}}},
]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_overrides_reach_the_rayjob_and_the_pods(cluster: Cluster, run_operator, control_plane) -> None:
    # The overrides' toleration key must be in the operator's allow-list like any other toleration.
    run_operator(INTERLACE_ALLOWED_TOLERATION_KEYS="nvidia.com/gpu,example.com/dedicated")
    cluster.work_claim()  # the pods mount it: bound before they can schedule
    body = prunejob("ovr", schedulable=True)
    body["spec"]["resources"]["podTemplateOverrides"] = OVERRIDES
    cluster.apply(body)
    rj = wait_for(lambda: cluster.get("rayjob", "ovr-1"), timeout=30, what="RayJob ovr-1")

    # The RayJob as the API server stored it (pruned to the RayJob CRD's schema: nothing was dropped).
    head_tpl = rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    worker_tpl = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]
    assert worker_tpl["spec"]["affinity"] == GPU_AFFINITY and "affinity" not in head_tpl["spec"]
    assert worker_tpl["spec"]["topologySpreadConstraints"] == [SPREAD]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "4Gi"}} in worker_tpl["spec"]["volumes"]

    rc_name = wait_for(lambda: (cluster.get("rayjob", "ovr-1").get("status") or {}).get("rayClusterName"),
                       timeout=60, what="KubeRay to create the RayCluster")
    pods = control_plane.wait_for_pods(cluster.ns, f"ray.io/cluster={rc_name}", count=2, timeout=90)
    by_type = {p["metadata"]["labels"]["ray.io/node-type"]: p for p in pods}
    head, worker = by_type["head"], by_type["worker"]

    for pod, role, shm in ((head, "head", "512Mi"), (worker, "worker", "4Gi")):
        spec = pod["spec"]
        (ray,) = [c for c in spec["containers"] if c["name"] == f"ray-{role}"]
        assert pod["metadata"]["labels"]["team"] == "ml"
        assert pod["metadata"]["labels"]["interlace.dev/prunejob"] == "ovr"  # the operator's label kept
        assert pod["metadata"]["annotations"]["example.com/cost-center"] == "4711"
        assert spec["imagePullSecrets"] == [{"name": "regcred"}]
        # the override merged over the operator's restricted defaults (interlace.schema.podpolicy)
        assert spec["securityContext"] == {**podpolicy.POD_SECURITY_CONTEXT, "fsGroup": 1000}
        assert spec["serviceAccountName"] == "ovr-job"
        assert ray["image"] == RUNTIME_IMAGE
        env = _env(ray)
        assert env["ROLE"] == role and env["INTERLACE_PRUNEJOB"] == f"{cluster.ns}/ovr"
        assert "INTERLACE_PRUNEJOB_SPEC" in env  # the validated spec, the operator's env var
        mounts = {m["mountPath"]: m["name"] for m in ray["volumeMounts"]}
        assert mounts["/scratch"] == "scratch"
        # our /dev/shm, not KubeRay's default (which is sized to the memory limit)
        assert mounts["/dev/shm"] == "dshm"
        vols = {v["name"]: v for v in spec["volumes"]}
        assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": shm}
        assert not [v for v in spec["volumes"] if v["name"] != "dshm" and (v.get("emptyDir") or {}).get(
            "medium") == "Memory"], "KubeRay added a second /dev/shm"
        assert spec.get("nodeName"), f"{role} pod not scheduled"

    assert worker["metadata"]["annotations"]["example.com/gpu-profile"] == "training"
    assert "example.com/gpu-profile" not in head["metadata"]["annotations"]
    assert head["metadata"]["annotations"]["example.com/role"] == "driver"
    assert worker["spec"]["affinity"] == GPU_AFFINITY and "affinity" not in head["spec"]
    assert worker["spec"]["topologySpreadConstraints"] == [SPREAD]
    assert {"key": "example.com/dedicated", "operator": "Exists", "effect": "NoSchedule"} in worker["spec"][
        "tolerations"]
    (wray,) = [c for c in worker["spec"]["containers"] if c["name"] == "ray-worker"]
    assert wray["securityContext"] == {**podpolicy.CONTAINER_SECURITY_CONTEXT, "allowPrivilegeEscalation": False}  # merged over the defaults
    assert wray["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_a_bad_override_fails_the_prunejob_with_the_field(cluster: Cluster, run_operator) -> None:
    """An override the CRD schema accepts but the spec models refuse (a reserved volume name) ends in
    Failed/InvalidSpec naming the field, and no RayJob is created."""
    run_operator()
    body = prunejob("badovr")
    body["spec"]["resources"]["podTemplateOverrides"] = [
        {"targetGroups": ["workers"], "spec": {"volumes": [{"name": "prunejob-spec", "emptyDir": {}}]}}]
    cluster.apply(body)
    st = cluster.wait_phase("badovr", "Failed")
    failed = cluster.condition("badovr", "Failed")
    assert failed["reason"] == "InvalidSpec" and "podTemplateOverrides" in failed["message"], failed
    assert cluster.get("rayjob", "badovr-1") is None
    assert st["conditions"]


def test_the_crd_rejects_an_unknown_override_field_at_admission(cluster: Cluster) -> None:
    body = prunejob("typo")
    body["spec"]["resources"]["podTemplateOverrides"] = [
        {"targetGroups": ["workers"], "spec": {"containers": [{"name": "ray-worker", "image": "evil:1"}]}}]
    proc = cluster.cp.kubectl("create", "-n", cluster.ns, "-f", "-", input=json.dumps(body),
                              check=False)
    assert proc.returncode != 0 and "image" in proc.stderr, proc.stderr
    body["spec"]["resources"]["podTemplateOverrides"] = [{"targetGroups": ["driver"]}]
    proc = cluster.cp.kubectl("create", "-n", cluster.ns, "-f", "-", input=json.dumps(body),
                              check=False)
    assert proc.returncode != 0 and "targetGroups" in proc.stderr, proc.stderr
