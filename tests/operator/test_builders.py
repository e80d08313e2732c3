"""Pure builders: the children of a PruneJob are fully determined by its spec and identity."""

from __future__ import annotations

import shlex
import subprocess
import sys
from typing import Any

import pytest
import yaml
from interlace_operator import builders, names
from interlace_operator.config import OperatorConfig
from interlace_operator.rbac import RULES, SHARED_ACCOUNT_RULES

from interlace.schema.spec import load_prunejob, parse_prunejob

OWNER = builders.Owner(name="qwen-20", namespace="ml", uid="1234-5678")


def job(*, work_claim: str | None = None, **spec_overrides: Any):
    spec: dict[str, Any] = {
        "model": {"source": "Qwen/Qwen3-VL-4B-Instruct"},
        "pruning": {"ratio": 0.2},
        "output": {"uri": "s3://bucket/runs/qwen 20"},
        "resources": {
            "workers": 2,
            "gpusPerWorker": 4,
            "cpu": "16",
            "memory": "128Gi",
            "nodeSelector": {"interlace.dev/node-pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "ml-high",
            "queueName": "team-a",
        },
    }
    if work_claim:  # what a cluster PruneJob with an s3:// output needs (shared_work_dir_error)
        spec["resources"]["pvcName"] = work_claim
    spec.update(spec_overrides)
    return parse_prunejob({"apiVersion": "interlace.dev/v1alpha1", "kind": "PruneJob", "spec": spec})


def test_rayjob_resources_scheduling_and_labels() -> None:
    j = job()
    rj = builders.rayjob(j, OWNER, attempt=3, image="img:1", active_deadline_seconds=3600)
    meta, spec = rj["metadata"], rj["spec"]
    assert rj["apiVersion"] == "ray.io/v1" and rj["kind"] == "RayJob"
    assert meta["name"] == "qwen-20-3"
    assert meta["labels"][names.LABEL_PRUNEJOB] == "qwen-20"
    assert meta["labels"][names.LABEL_ATTEMPT] == "3"
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    (ref,) = meta["ownerReferences"]
    assert ref == {
        "apiVersion": "interlace.dev/v1alpha1", "kind": "PruneJob", "name": "qwen-20", "uid": "1234-5678",
        "controller": True, "blockOwnerDeletion": True,
    }
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] == 600
    assert spec["activeDeadlineSeconds"] == 3600
    # queued for Kueue: created suspended (Kueue admits it by un-suspending it); KubeRay manages it
    assert spec["backoffLimit"] == 0 and spec["suspend"] is True
    assert "managedBy" not in spec
    assert spec["entrypoint"] == "interlace run -f env:INTERLACE_PRUNEJOB_SPEC --output 's3://bucket/runs/qwen 20'"

    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    pod = group["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["image"] == "img:1"
    assert worker["resources"]["limits"] == {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "4"}
    assert pod["nodeSelector"] == {"interlace.dev/node-pool": "gpu"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "ml-high"
    assert pod["serviceAccountName"] == "qwen-20-job"

    head_pod = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (head,) = head_pod["containers"]
    for container, pod_spec in ((head, head_pod), (worker, pod)):
        assert {"name": builders.ENV_PRUNEJOB, "value": "ml/qwen-20"} in container["env"]
        spec_env = next(e["value"] for e in container["env"] if e["name"] == builders.ENV_SPEC)
        assert yaml.safe_load(spec_env)["spec"]["pruning"] == j.spec.pruning.to_wire()
        assert "volumes" not in pod_spec  # no ConfigMap: the spec travels in the RayJob
    assert yaml.safe_load(spec["runtimeEnvYAML"]) == {"env_vars": {"INTERLACE_PRUNEJOB": "ml/qwen-20"}}


def _groups(rj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    cluster = rj["spec"]["rayClusterSpec"]
    (group,) = cluster["workerGroupSpecs"]
    return cluster["headGroupSpec"], group


def test_rayjob_requests_the_gpus_the_spec_asks_for() -> None:
    """workers x gpusPerWorker GPUs on the worker pods, advertised to Ray; the head small, GPU-less."""
    head_group, group = _groups(builders.rayjob(job(), OWNER, attempt=1, image="img:1"))
    (worker,) = group["template"]["spec"]["containers"]
    assert group["replicas"] == 2 and worker["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert group["rayStartParams"]["num-gpus"] == "4"  # Ray schedules 8 one-GPU Train workers here
    # Default head: documented small resources, no GPU, not pinned to the GPU pool.
    (head,) = head_group["template"]["spec"]["containers"]
    assert head["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
    assert head_group["rayStartParams"]["num-gpus"] == "0"
    assert "nodeSelector" not in head_group["template"]["spec"]


def test_rayjob_head_gpu_is_possible_through_the_spec() -> None:
    res = {"workers": 1, "gpusPerWorker": 2, "headGpus": 1, "headCpu": "4", "headMemory": "32Gi",
           "nodeSelector": {"pool": "gpu"}}
    head_group, group = _groups(builders.rayjob(job(resources=res), OWNER, attempt=1, image="img:1"))
    (head,) = head_group["template"]["spec"]["containers"]
    assert head["resources"]["limits"] == {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert head_group["rayStartParams"]["num-gpus"] == "1"
    assert head_group["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}  # lands on a GPU node
    assert group["rayStartParams"]["num-gpus"] == "2"


def test_rayjob_cpu_only_spec_requests_no_gpu_anywhere() -> None:
    head_group, group = _groups(
        builders.rayjob(job(resources={"workers": 3, "gpusPerWorker": 0}), OWNER, attempt=1, image="i")
    )
    for g in (head_group, group):
        (c,) = g["template"]["spec"]["containers"]
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
        assert g["rayStartParams"]["num-gpus"] == "0"
    assert group["replicas"] == 3


def test_every_ray_cluster_has_token_authentication_on_the_images_ray() -> None:
    import tomllib
    from pathlib import Path

    cluster = builders.rayjob(job(), OWNER, attempt=1, image="i")["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    # KubeRay refuses token auth without a rayVersion >= 2.52; it must be the image's own Ray
    pins = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    every = [*pins.get("dependencies", []), *(d for ds in pins.get("optional-dependencies", {}).values() for d in ds)]
    ray_pins = {d.split("==")[1] for d in every if d.startswith("ray[")}
    assert ray_pins == {cluster["rayVersion"]}
    assert tuple(int(x) for x in cluster["rayVersion"].split(".")) >= (2, 52, 0)


def test_rayjob_without_queue_not_suspended_and_managed_by_passed_through() -> None:
    assert builders.rayjob(job(resources={}), OWNER, attempt=1, image="i")["spec"]["suspend"] is False


@pytest.mark.parametrize("managed_by", ["ray.io/kuberay-operator"])
def test_rayjob_managed_by_passed_through(managed_by: str) -> None:
    j = job(resources={"queueName": "team-a", "managedBy": managed_by})
    assert builders.rayjob(j, OWNER, attempt=1, image="i")["spec"]["managedBy"] == managed_by


def test_rayjob_defaults_image_cpu_workers_and_secrets() -> None:
    j = job(
        resources={"gpusPerWorker": 0, "image": "mine:2", "pvcName": "cache"},
        model={"source": "org/gated", "hfTokenSecret": "hf"},
        output={"uri": "s3://b/p", "s3Secret": "s3-creds"},
        suspend=True,
    )
    rj = builders.rayjob(j, OWNER, attempt=1, image="default:1")
    assert "activeDeadlineSeconds" not in rj["spec"]
    assert rj["spec"]["suspend"] is True
    assert "kueue.x-k8s.io/queue-name" not in rj["metadata"]["labels"]
    worker = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["image"] == "mine:2"
    assert "nvidia.com/gpu" not in worker["resources"]["limits"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN", "optional": False}}} in worker["env"]
    assert worker["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert {"name": "data", "mountPath": "/data"} in worker["volumeMounts"]
    # An s3:// output's work files (pruned model, checkpoints) go to the claim every Ray pod mounts.
    head = rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    for container in (head, worker):
        assert {"name": "INTERLACE_WORK_DIR", "value": "/data/.interlace-work"} in container["env"]
    no_claim = builders.rayjob(job(), OWNER, attempt=1, image="default:1")
    head = no_claim["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert all(e["name"] != "INTERLACE_WORK_DIR" for e in head["env"])


def test_the_job_submitter_is_small_and_runs_the_job_image() -> None:
    rj = builders.rayjob(job(), OWNER, attempt=1, image="img:1")
    (c,) = rj["spec"]["submitterPodTemplate"]["spec"]["containers"]
    assert c["image"] == "img:1" and "command" not in c  # KubeRay supplies `ray job submit ...`
    assert c["resources"]["requests"] == {"cpu": "50m", "memory": "128Mi"}


def test_the_head_takes_no_ray_work() -> None:
    """The head runs the driver; Ray Train workers and tasks must land on the worker pods."""
    rj = builders.rayjob(job(), OWNER, attempt=1, image="img:1")
    params = rj["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
    assert params["num-cpus"] == "0" and params["num-gpus"] == "0"


def test_the_rayjob_carries_a_loadable_prunejob(monkeypatch: pytest.MonkeyPatch) -> None:
    j = job(work_claim="work")
    rj = builders.rayjob(j, OWNER, attempt=1, image="img:1")
    argv = shlex.split(rj["spec"]["entrypoint"])
    assert argv[:4] == ["interlace", "run", "-f", f"env:{builders.ENV_SPEC}"]
    head = rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    for e in head["env"]:
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    loaded = load_prunejob(argv[3], cluster=True)  # exactly what `interlace run -f` does in the pod
    assert loaded.metadata.name == "qwen-20" and loaded.metadata.namespace == "ml"
    assert loaded.spec == j.spec


def test_job_identity_can_patch_only_its_own_status() -> None:
    role = builders.role(OWNER)
    assert role["rules"] == [
        {"apiGroups": ["interlace.dev"], "resources": ["prunejobs/status"], "resourceNames": ["qwen-20"],
         "verbs": ["get", "patch"]},
        {"apiGroups": ["interlace.dev"], "resources": ["prunejobs"], "resourceNames": ["qwen-20"], "verbs": ["get"]},
    ]
    rb = builders.role_binding(OWNER)
    assert rb["roleRef"]["name"] == role["metadata"]["name"]
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "qwen-20-job", "namespace": "ml"}]
    # A shared (allow-listed) ServiceAccount runs the pods; the Role stays bound to the per-job one,
    # whose token the pods get as a file (head and workers, where the job's code runs).
    custom = job(resources={"serviceAccountName": "team-sa"})
    assert builders.job_service_account_name(custom, OWNER) == "team-sa"
    secret = builders.status_token_secret(OWNER)
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["annotations"] == {"kubernetes.io/service-account.name": "qwen-20-job"}
    assert secret["metadata"]["ownerReferences"] == [OWNER.reference()]
    cluster = builders.rayjob(custom, OWNER, attempt=1, image="img:1")["spec"]["rayClusterSpec"]
    for pod in (cluster["headGroupSpec"]["template"]["spec"], cluster["workerGroupSpecs"][0]["template"]["spec"]):
        assert pod["serviceAccountName"] == "team-sa"
        vol = next(v for v in pod["volumes"] if v["name"] == builders.STATUS_TOKEN_VOLUME)
        assert vol["secret"]["secretName"] == secret["metadata"]["name"]
        ray = pod["containers"][0]
        assert {"name": builders.STATUS_TOKEN_VOLUME, "mountPath": builders.STATUS_TOKEN_DIR,
                "readOnly": True} in ray["volumeMounts"]
        assert {"name": builders.ENV_STATUS_TOKEN_DIR, "value": builders.STATUS_TOKEN_DIR} in ray["env"]
    own = builders.rayjob(job(), OWNER, attempt=1, image="img:1")["spec"]["rayClusterSpec"]
    head = own["headGroupSpec"]["template"]["spec"]
    assert all(v["name"] != builders.STATUS_TOKEN_VOLUME for v in head.get("volumes", []))
    assert all(e["name"] != builders.ENV_STATUS_TOKEN_DIR for e in head["containers"][0]["env"])


def test_operator_rbac_covers_what_it_creates() -> None:
    """The operator may only grant what it holds (RBAC escalation check): its rules must include the
    job Role's verbs on prunejobs and prunejobs/status, and every child kind it creates."""
    def allowed(group: str, resource: str, verb: str) -> bool:
        return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in RULES)

    for rule in builders.role(OWNER)["rules"]:
        for res in rule["resources"]:
            for verb in rule["verbs"]:
                assert allowed("interlace.dev", res, verb), (res, verb)
    for group, res in [("", "serviceaccounts"), ("rbac.authorization.k8s.io", "roles"),
                       ("rbac.authorization.k8s.io", "rolebindings"), ("ray.io", "rayjobs"), ("", "events"),
                       ("networking.k8s.io", "networkpolicies")]:
        assert allowed(group, res, "create"), res
    assert not allowed("", "secrets", "get")  # only with shared accounts allow-listed
    assert {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]} in SHARED_ACCOUNT_RULES


def test_the_network_policy_admits_the_jobs_own_pods_and_kuberay_to_the_dashboard_only() -> None:
    """The policy selects exactly the labels the RayJob gives its head and worker pods; it admits the
    job's own pods (the other Ray pods, the submitter: same namespace, same prunejob label) on every
    port and KubeRay's operator pods only on 8265; nothing else (no namespaceSelector on the job rule)."""
    config = OperatorConfig.from_env({"INTERLACE_KUBERAY_NAMESPACE": "ray-system"})
    peer = builders.Peer(pod_labels=config.kuberay_peer, namespace=config.kuberay_namespace)
    policy = builders.network_policy(OWNER, (peer,))
    rayjob = builders.rayjob(job(work_claim="work"), OWNER, attempt=1, image="img:1")
    cluster = rayjob["spec"]["rayClusterSpec"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for template in (cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]):
        assert selector.items() <= template["metadata"]["labels"].items()
    submitter = rayjob["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    own, kuberay = policy["spec"]["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": {names.LABEL_PRUNEJOB: "qwen-20"}}}]}
    assert own["from"][0]["podSelector"]["matchLabels"].items() <= submitter.items()
    assert kuberay == {
        "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
                  "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ray-system"}}}],
        "ports": [{"protocol": "TCP", "port": 8265}],
    }
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    with pytest.raises(ValueError, match="INTERLACE_KUBERAY_POD_LABELS"):
        OperatorConfig.from_env({"INTERLACE_KUBERAY_POD_LABELS": "app.kubernetes.io/name"})


@pytest.mark.parametrize("length", [20, 47, 63, 120, 253])
def test_names_fit_limits_and_stay_unique(length: int) -> None:
    base = ("a" * (length - 1)) + "b"
    other = ("a" * (length - 1)) + "c"
    rj = names.rayjob_name(base, 12)
    assert len(rj) <= names.RAYJOB_NAME_MAX and rj.endswith("-12")
    assert rj != names.rayjob_name(other, 12)
    assert names.rayjob_name(base, 12) == rj  # deterministic
    assert len(names.label_value(base)) <= 63
    assert len(names.job_account_name(base)) <= 253


def test_backoff_is_exponential_and_capped() -> None:
    cfg = OperatorConfig(retry_backoff_seconds=10, retry_backoff_max_seconds=60)
    assert [cfg.backoff(n) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]
    env = OperatorConfig.from_env({"INTERLACE_WATCH_NAMESPACES": " a, b ,", "INTERLACE_METRICS_PORT": "0"})
    assert env.namespaces == ("a", "b") and not env.clusterwide and env.metrics_port == 0
    assert OperatorConfig.from_env({}).clusterwide


def test_operator_never_imports_ml_stack() -> None:
    """The operator image has no torch: importing the whole operator must not pull it in."""
    code = (
        "import sys, interlace_operator.handlers, interlace_operator.__main__, interlace_operator.reconcile;"
        "bad = [m for m in ('torch', 'transformers', 'ray', 'torchvision', 'datasets', 'accelerate')"
        " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def _token_env(rj: dict[str, Any]) -> dict[str, dict[str, str]]:
    """{env name: secretKeyRef} of the token variables, checked identical on head and workers."""
    spec = rj["spec"]["rayClusterSpec"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    worker = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    found = []
    for c in (head, worker):
        found.append({e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e})
    assert found[0] == found[1]
    return found[0]


def _ref(name: str) -> dict[str, Any]:
    return {"name": name, "key": "HF_TOKEN", "optional": False}


@pytest.mark.parametrize(
    ("model", "output", "expected"),
    [
        # hf:// without spec.output.hub: the default token Secret, for download and for publishing
        ({}, {"uri": "hf://my-org/pruned"}, {"HF_TOKEN": "hf-token", "INTERLACE_HUB_TOKEN": "hf-token"}),
        # a read token for a gated model and a write token for the output: both are mounted
        (
            {"hfTokenSecret": "hf-read"},
            {"uri": "s3://b/p", "hub": {"repo": "my-org/pruned", "tokenSecret": "hf-write"}},
            {"HF_TOKEN": "hf-read", "INTERLACE_HUB_TOKEN": "hf-write"},
        ),
        ({"hfTokenSecret": "hf-read"}, {"uri": "s3://b/p"}, {"HF_TOKEN": "hf-read"}),
        ({}, {"uri": "s3://b/p", "hub": {"repo": "o/r"}}, {"HF_TOKEN": "hf-token", "INTERLACE_HUB_TOKEN": "hf-token"}),
        ({}, {"uri": "s3://b/p"}, {}),
    ],
)
def test_every_output_scheme_gets_its_credentials(model: dict, output: dict, expected: dict) -> None:
    j = job(model={"source": "org/gated", **model}, output=output)
    rj = builders.rayjob(j, OWNER, attempt=1, image="img:1")
    assert _token_env(rj) == {k: _ref(v) for k, v in expected.items()}


def test_s3_and_pvc_outputs_get_keys_and_the_claim() -> None:
    rj = builders.rayjob(job(output={"uri": "s3://b/p", "s3Secret": "s3-creds"}), OWNER, attempt=1, image="i")
    for c in _containers(rj):
        assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    rj = builders.rayjob(
        job(output={"uri": "pvc://models/runs/a"}, resources={"pvcName": "models"}), OWNER, attempt=1, image="i"
    )
    for c in _containers(rj):
        assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"] and "envFrom" not in c
    volumes = rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "models"}} in volumes


def _containers(rj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = rj["spec"]["rayClusterSpec"]
    return [
        spec["headGroupSpec"]["template"]["spec"]["containers"][0],
        spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0],
    ]
