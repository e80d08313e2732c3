"""spec.resources.podTemplateOverrides: head and workers configured apart, merged into the RayJob's pod
templates with the operator's own fields kept (builders.apply_pod_overrides), bad overrides rejected."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from interlace_operator import builders, names

from interlace.schema import podpolicy
from interlace.schema.spec import SpecError, parse_prunejob

OWNER = builders.Owner(name="qwen-20", namespace="ml", uid="1234-5678")

AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "gpu.product", "operator": "In", "values": ["H100", "A100-80GB"]}]}]}}}
SPREAD = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
          "labelSelector": {"matchLabels": {"team": "ml"}}}
CACHE_VOLUME = {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf-cache"}}

OVERRIDES: list[dict[str, Any]] = [
    {   # both groups: a cache volume, its mount, env, pull secret, pod security context
        "targetGroups": ["head", "workers"],
        "metadata": {"labels": {"team": "ml"}, "annotations": {"example.com/cost-center": "42"}},
        "spec": {
            "volumes": [CACHE_VOLUME],
            "imagePullSecrets": [{"name": "regcred"}],
            "securityContext": {"runAsNonRoot": True, "fsGroup": 1000},
            "containers": [
                {"name": "ray-head", "env": [{"name": "HF_HOME", "value": "/cache"}],
                 "volumeMounts": [{"name": "hf-cache", "mountPath": "/cache"}]},
                {"name": "ray-worker", "env": [{"name": "HF_HOME", "value": "/cache"}],
                 "volumeMounts": [{"name": "hf-cache", "mountPath": "/cache", "readOnly": True}],
                 "securityContext": {"allowPrivilegeEscalation": False}},
            ],
        },
    },
    {   # workers only: placement and a big /dev/shm
        "targetGroups": ["workers"],
        "metadata": {"annotations": {"example.com/gpu-profile": "training"}},
        "spec": {
            "affinity": AFFINITY,
            "topologySpreadConstraints": [SPREAD],
            "nodeSelector": {"cloud.example.com/pool": "h100"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
            "priorityClassName": "ml-critical",
        },
        "shmSize": "32Gi",
    },
    {   # head only
        "targetGroups": ["head"],
        "spec": {"nodeSelector": {"node-role": "cpu"}, "initContainers": [
            {"name": "warm-cache", "image": "busybox:1.36", "command": ["true"]}]},
        "shmSize": "2Gi",
    },
]


def job(overrides: list[dict[str, Any]] | None = None, **spec_extra: Any):
    spec: dict[str, Any] = {
        "model": {"source": "Qwen/Qwen3-VL-4B-Instruct"},
        "pruning": {"ratio": 0.2},
        "resources": {
            "workers": 2, "gpusPerWorker": 1,
            "nodeSelector": {"interlace.dev/node-pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "ml-high",
            **({"podTemplateOverrides": overrides} if overrides is not None else {}),
        },
        **spec_extra,
    }
    return parse_prunejob({"apiVersion": "interlace.dev/v1alpha1", "kind": "PruneJob", "spec": spec})


def templates(rj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    cluster = rj["spec"]["rayClusterSpec"]
    return cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]


def test_head_and_workers_get_their_own_overrides() -> None:
    head, worker = templates(builders.rayjob(job(OVERRIDES), OWNER, attempt=1, image="img:1"))
    hp, wp = head["spec"], worker["spec"]
    (hc,), (wc,) = hp["containers"], wp["containers"]

    # shared: labels, annotations, volume + mount, env, pull secret, pod security context
    for tpl, pod, c in ((head, hp, hc), (worker, wp, wc)):
        assert tpl["metadata"]["labels"]["team"] == "ml"
        assert tpl["metadata"]["annotations"]["example.com/cost-center"] == "42"
        assert CACHE_VOLUME in pod["volumes"]
        assert {"name": "HF_HOME", "value": "/cache"} in c["env"]
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        # the override merged over the restricted defaults (interlace.schema.podpolicy)
        assert pod["securityContext"] == {**podpolicy.POD_SECURITY_CONTEXT, "fsGroup": 1000}
    assert {"name": "hf-cache", "mountPath": "/cache"} in hc["volumeMounts"]
    assert {"name": "hf-cache", "mountPath": "/cache", "readOnly": True} in wc["volumeMounts"]
    assert wc["securityContext"] == hc["securityContext"] == podpolicy.CONTAINER_SECURITY_CONTEXT

    # workers only
    assert wp["affinity"] == AFFINITY and "affinity" not in hp
    assert wp["topologySpreadConstraints"] == [SPREAD] and "topologySpreadConstraints" not in hp
    assert wp["nodeSelector"] == {"interlace.dev/node-pool": "gpu", "cloud.example.com/pool": "h100"}
    assert wp["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
    ]
    assert wp["priorityClassName"] == "ml-critical" and hp["priorityClassName"] == "ml-high"
    assert worker["metadata"]["annotations"]["example.com/gpu-profile"] == "training"
    assert "example.com/gpu-profile" not in head["metadata"]["annotations"]

    # head only
    assert hp["nodeSelector"] == {"node-role": "cpu"}
    assert hp["initContainers"] == [{"name": "warm-cache", "image": "busybox:1.36", "command": ["true"],
                                     "securityContext": podpolicy.CONTAINER_SECURITY_CONTEXT}]
    assert "initContainers" not in wp

    # /dev/shm per group
    for pod, c, size in ((hp, hc, "2Gi"), (wp, wc, "32Gi")):
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": size}} in pod["volumes"]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]


def test_the_operators_fields_are_kept() -> None:
    j = job(OVERRIDES, model={"source": "org/gated", "hfTokenSecret": "hf"})
    plain = builders.rayjob(job(), OWNER, attempt=1, image="img:1")
    rj = builders.rayjob(j, OWNER, attempt=1, image="img:1")
    for (tpl, plain_tpl), name in zip(zip(templates(rj), templates(plain), strict=True), ["ray-head", "ray-worker"],
                                      strict=True):
        pod, (c,) = tpl["spec"], tpl["spec"]["containers"]
        (pc,) = plain_tpl["spec"]["containers"]
        assert c["name"] == name and c["image"] == "img:1" and c["resources"] == pc["resources"]
        assert pod["serviceAccountName"] == "qwen-20-job"
        # The validated spec reaches the job in the operator's own env var, first, whatever the overrides add.
        assert c["env"][0] == {"name": builders.ENV_PRUNEJOB, "value": "ml/qwen-20"}
        assert c["env"][1]["name"] == pc["env"][1]["name"] == builders.ENV_SPEC
        for key, value in plain_tpl["metadata"]["labels"].items():
            assert tpl["metadata"]["labels"][key] == value
        assert "ports" not in c or c["ports"] == pc.get("ports")
    assert rj["metadata"] == plain["metadata"] and rj["spec"]["entrypoint"] == plain["spec"]["entrypoint"]


def test_user_env_never_replaces_the_operators() -> None:
    """HF_TOKEN comes from the token Secret when one is set: a user HF_TOKEN is dropped, not doubled."""
    sneaky = [{"targetGroups": ["workers"], "spec": {"containers": [
        {"name": "ray-worker", "env": [{"name": "HF_TOKEN", "value": "leaked"}, {"name": "X", "value": "1"}]}]}}]
    rj = builders.rayjob(job(sneaky, model={"source": "org/gated", "hfTokenSecret": "hf"}), OWNER, attempt=1,
                         image="img:1")
    (wc,) = templates(rj)[1]["spec"]["containers"]
    tokens = [e for e in wc["env"] if e["name"] == "HF_TOKEN"]
    assert tokens == [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN",
                                                                           "optional": False}}}]
    assert {"name": "X", "value": "1"} in wc["env"]
    # without a token Secret the user's own HF_TOKEN is simply theirs
    (wc,) = templates(builders.rayjob(job(sneaky), OWNER, attempt=1, image="img:1"))[1]["spec"]["containers"]
    assert {"name": "HF_TOKEN", "value": "leaked"} in wc["env"]


def test_no_overrides_changes_nothing_and_input_is_not_mutated() -> None:
    assert builders.rayjob(job([]), OWNER, attempt=1, image="i") == builders.rayjob(job(), OWNER, attempt=1, image="i")
    j = job(OVERRIDES)
    before = copy.deepcopy(j.spec.to_wire())
    first = builders.rayjob(j, OWNER, attempt=1, image="i")
    assert builders.rayjob(j, OWNER, attempt=1, image="i") == first  # deterministic, no shared state
    assert j.spec.to_wire() == before


def test_later_overrides_win_for_single_values() -> None:
    two = [{"targetGroups": ["workers"], "spec": {"affinity": AFFINITY, "schedulerName": "a"}, "shmSize": "1Gi"},
           {"targetGroups": ["workers"], "spec": {"affinity": {"podAntiAffinity": {}}, "schedulerName": "b"},
            "shmSize": "8Gi"}]
    wp = templates(builders.rayjob(job(two), OWNER, attempt=1, image="i"))[1]["spec"]
    assert wp["affinity"] == {"podAntiAffinity": {}} and wp["schedulerName"] == "b"
    shm = [v for v in wp["volumes"] if v["name"] == "dshm"]
    assert shm == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}]
    assert [m for m in wp["containers"][0]["volumeMounts"] if m["name"] == "dshm"] == [
        {"name": "dshm", "mountPath": "/dev/shm"}]


def test_the_spec_with_overrides_round_trips_through_the_rayjob(tmp_path) -> None:
    from interlace.schema.spec import load_prunejob

    j = job(OVERRIDES)
    rj = builders.rayjob(j, OWNER, attempt=1, image="img:1")
    head = rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    path = tmp_path / "prunejob.yaml"
    path.write_text(next(e["value"] for e in head["env"] if e["name"] == builders.ENV_SPEC))
    assert load_prunejob(path).spec == j.spec


BAD = [
    ([{"targetGroups": []}], "targetGroups"),
    ([{"targetGroups": ["driver"]}], "targetGroups"),
    ([{"targetGroups": ["head", "head"]}], "duplicates"),
    ([{"targetGroups": ["head"], "spec": {"containers": [{"name": "ray-worker"}]}}], "not in targetGroups"),
    ([{"targetGroups": ["head"], "spec": {"containers": [{"name": "sidecar"}]}}], "ray-head"),
    ([{"targetGroups": ["head"], "spec": {"containers": [{"name": "ray-head", "image": "evil:1"}]}}], "image"),
    ([{"targetGroups": ["head"], "spec": {"containers": [{"name": "ray-head", "command": ["sh"]}]}}], "command"),
    ([{"targetGroups": ["head"], "spec": {"serviceAccountName": "root-sa"}}], "serviceAccountName"),
    ([{"targetGroups": ["head"], "spec": {"volumes": [{"name": "prunejob-spec", "emptyDir": {}}]}}], "operator"),
    ([{"targetGroups": ["head"], "spec": {"containers": [
        {"name": "ray-head", "volumeMounts": [{"name": "x", "mountPath": "/etc/interlace"}]}]}}], "operator"),
    ([{"targetGroups": ["head"], "spec": {"containers": [
        {"name": "ray-head", "volumeMounts": [{"name": "x", "mountPath": "/dev/shm/"}]}]}}], "shmSize"),
    ([{"targetGroups": ["head"], "spec": {"containers": [
        {"name": "ray-head", "volumeMounts": [{"name": "nowhere", "mountPath": "/x"}]}]}}], "nowhere"),
    ([{"targetGroups": ["workers"], "spec": {"volumes": [{"name": "v", "emptyDir": {}}]}},
      {"targetGroups": ["workers"], "spec": {"volumes": [{"name": "v", "emptyDir": {}}]}}], "same volume name"),
    ([{"targetGroups": ["head"], "spec": {"containers": [
        {"name": "ray-head", "env": [{"name": "INTERLACE_PRUNEJOB", "value": "other/job"}]}]}}], "INTERLACE_PRUNEJOB"),
    ([{"targetGroups": ["head"], "spec": {"containers": [{"name": "ray-head", "env": [{"value": "x"}]}]}}], "name"),
    ([{"targetGroups": ["head"], "metadata": {"labels": {"interlace.dev/prunejob": "other"}}}], "reserved"),
    ([{"targetGroups": ["head"], "metadata": {"labels": {"ray.io/node-type": "worker"}}}], "reserved"),
    ([{"targetGroups": ["head"], "shmSize": "64GB"}], "shmSize"),
    ([{"targetGroups": ["head"], "spec": {"initContainers": [{"name": "ray-head", "image": "x"}]}}], "Ray container"),
    ([{"targetGroups": ["head"], "spec": {"imagePullSecrets": [{"name": "Bad_Name"}]}}], "imagePullSecrets"),
    ([{"targetGroups": ["head"], "spec": {"initContainers": [{"name": "warm", "image": "busybox"}]}}], "no tag or digest"),
    ([{"targetGroups": ["head"], "spec": {"containers": [
        {"name": "ray-head", "env": [{"name": "HF_TOKEN", "value": "hf_" + "aB3" * 11 + "x"}]}]}}], "secretKeyRef"),
    ([{"targetGroups": ["workers"], "spec": {"containers": [
        {"name": "ray-worker", "env": [{"name": "AWS_ACCESS_KEY_ID", "value": "AKIAIOSFODNN7EXAMPLE"}]}]}}], "secretKeyRef"),
]


@pytest.mark.parametrize(("overrides", "fragment"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_overrides_are_rejected_with_the_field(overrides: list[dict[str, Any]], fragment: str) -> None:
    with pytest.raises(SpecError) as err:
        job(overrides)
    text = str(err.value)
    assert "spec.resources.podTemplateOverrides" in text, text
    assert fragment in text, text


def test_labels_of_the_operator_stay_on_the_pods() -> None:
    head, worker = templates(builders.rayjob(job(OVERRIDES), OWNER, attempt=4, image="i"))
    for tpl in (head, worker):
        assert tpl["metadata"]["labels"][names.LABEL_PRUNEJOB] == "qwen-20"
        assert tpl["metadata"]["labels"][names.LABEL_ATTEMPT] == "4"
