"""Pure builders of a PruneJob's children: ServiceAccount, Role, RoleBinding, RayJob.

Each returns a plain dict (what `kubectl apply` would send), computed only from the validated spec and
the PruneJob's identity, so the same PruneJob always yields the same children; unit tests check them
without a cluster, and the cluster tests check that KubeRay accepts them.

Every child carries an owner reference with controller=true (garbage collection deletes it with the
PruneJob; no finalizer is needed because nothing outside Kubernetes has to be cleaned up).

The validated spec travels inside the RayJob (env INTERLACE_PRUNEJOB_SPEC of the Ray containers), an
object only the operator writes: no side channel (such as a ConfigMap anyone with configmap rights in
the namespace could edit or delete) between the frozen spec and the job that runs it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

import yaml

from interlace.spec import API_GROUP, API_VERSION, KIND, PruneJob
from interlace_operator import names
from interlace_operator.rbac import job_role_rules

DATA_MOUNT_DIR = "/data"
ENV_PRUNEJOB = "INTERLACE_PRUNEJOB"
ENV_SPEC = "INTERLACE_PRUNEJOB_SPEC"  # the validated PruneJob document (YAML) the job runs
GPU_RESOURCE = "nvidia.com/gpu"
WORKER_GROUP = "gpu-workers"


@dataclass(frozen=True)
class Owner:
    """Identity of the PruneJob that owns the children."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def _meta(owner: Owner, name: str, component: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    labels = names.labels(owner.name, component)
    labels.update(extra_labels or {})
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels,
        "ownerReferences": [owner.reference()],
    }


def prunejob_document(job: PruneJob, owner: Owner) -> str:
    """The YAML the Ray job reads with `interlace run -f`: the validated spec with defaults filled in."""
    doc = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": owner.name, "namespace": owner.namespace},
        "spec": job.spec.to_wire(),
    }
    return yaml.safe_dump(doc, sort_keys=False)


def service_account(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(owner, names.job_account_name(owner.name), "job-identity"),
    }


def role(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(owner, names.job_account_name(owner.name), "job-identity"),
        "rules": job_role_rules(owner.name),
    }


def role_binding(owner: Owner, service_account_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(owner, names.job_account_name(owner.name), "job-identity"),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": names.job_account_name(owner.name),
        },
        "subjects": [{"kind": "ServiceAccount", "name": service_account_name, "namespace": owner.namespace}],
    }


def job_service_account_name(job: PruneJob, owner: Owner) -> str:
    """The user's ServiceAccount if spec.resources.serviceAccountName is set, else the one we create."""
    return job.spec.resources.service_account_name or names.job_account_name(owner.name)


def entrypoint(job: PruneJob) -> str:
    """The same command as local mode, reading the spec from the RayJob's own env (`-f env:NAME`)."""
    return shlex.join(["interlace", "run", "-f", f"env:{ENV_SPEC}", "--output", job.spec.output.uri])


def _env(job: PruneJob, owner: Owner) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Environment of the Ray containers: the PruneJob's identity and secrets as references."""
    env: list[dict[str, Any]] = [
        {"name": ENV_PRUNEJOB, "value": f"{owner.namespace}/{owner.name}"},
        {"name": ENV_SPEC, "value": prunejob_document(job, owner)},
    ]
    token_secret = job.spec.model.hf_token_secret or (job.spec.output.hub.token_secret if job.spec.output.hub else None)
    if token_secret:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": token_secret, "key": "HF_TOKEN", "optional": False}},
            }
        )
    env_from: list[dict[str, Any]] = []
    if job.spec.output.s3_secret:
        env_from.append({"secretRef": {"name": job.spec.output.s3_secret}})
    return env, env_from


def _volumes(job: PruneJob, owner: Owner) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if job.spec.resources.pvc_name:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": job.spec.resources.pvc_name}})
        mounts.append({"name": "data", "mountPath": DATA_MOUNT_DIR})
    return volumes, mounts


def rayjob(
    job: PruneJob,
    owner: Owner,
    *,
    attempt: int,
    image: str,
    active_deadline_seconds: int | None = None,
) -> dict[str, Any]:
    """The KubeRay RayJob of one attempt: a CPU head (runs the driver) and a GPU worker group.

    * shutdownAfterJobFinishes=true with the spec's TTL: the Ray cluster (and its GPUs) goes away after
      the job ends; Kueue also requires it.
    * KubeRay's own backoffLimit stays 0: the operator retries with a NEW RayJob per attempt, so each
      attempt keeps its own status and the retry budget lives in the PruneJob's status.
    * The driver runs on the head, so the head gets the spec, the env and the ServiceAccount; the
      workers get them too (same image, same identity), which keeps the pod templates symmetrical.
    """
    res = job.spec.resources
    image = res.image or image
    env, env_from = _env(job, owner)
    volumes, mounts = _volumes(job, owner)
    sa = job_service_account_name(job, owner)
    pod_labels = names.labels(owner.name, "ray")
    pod_labels[names.LABEL_ATTEMPT] = str(attempt)

    def container(name: str, cpu: int | str, memory: int | str, gpus: int) -> dict[str, Any]:
        limits: dict[str, Any] = {"cpu": str(cpu), "memory": str(memory)}
        if gpus:
            limits[GPU_RESOURCE] = str(gpus)
        c: dict[str, Any] = {
            "name": name,
            "image": image,
            "env": [dict(e) for e in env],
            "resources": {"requests": dict(limits), "limits": dict(limits)},
        }
        if mounts:
            c["volumeMounts"] = [dict(m) for m in mounts]
        if env_from:
            c["envFrom"] = [dict(e) for e in env_from]
        return c

    def pod_spec(containers: list[dict[str, Any]], *, gpu: bool) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "serviceAccountName": sa,
            "containers": containers,
        }
        if volumes:
            spec["volumes"] = [dict(v) for v in volumes]
        if res.tolerations:
            spec["tolerations"] = [t.to_wire() for t in res.tolerations]
        if gpu and res.node_selector:
            spec["nodeSelector"] = dict(res.node_selector)
        if res.priority_class_name:
            spec["priorityClassName"] = res.priority_class_name
        return spec

    head = container("ray-head", res.head_cpu, res.head_memory, 0)
    head["ports"] = [
        {"containerPort": 6379, "name": "gcs-server"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
    ]
    worker = container("ray-worker", res.cpu, res.memory, res.gpus_per_worker)

    rj_labels = dict(pod_labels)
    rj_labels[names.LABEL_COMPONENT] = "rayjob"
    if res.queue_name:
        rj_labels[names.KUEUE_QUEUE_LABEL] = res.queue_name
    meta = _meta(owner, names.rayjob_name(owner.name, attempt), "rayjob", rj_labels)

    spec: dict[str, Any] = {
        "entrypoint": entrypoint(job),
        "runtimeEnvYAML": yaml.safe_dump({"env_vars": {ENV_PRUNEJOB: f"{owner.namespace}/{owner.name}"}}),
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": job.spec.ttl_seconds_after_finished,
        "backoffLimit": 0,
        "suspend": bool(job.spec.suspend),
        "rayClusterSpec": {
            "headGroupSpec": {
                # No GPU on the head: the GPUs belong to the Ray Train workers.
                "rayStartParams": {"dashboard-host": "0.0.0.0", "num-gpus": "0"},
                "template": {"metadata": {"labels": dict(pod_labels)}, "spec": pod_spec([head], gpu=False)},
            },
            "workerGroupSpecs": [
                {
                    "groupName": WORKER_GROUP,
                    "replicas": res.workers,
                    "minReplicas": res.workers,
                    "maxReplicas": res.workers,
                    "rayStartParams": {},
                    "template": {
                        "metadata": {"labels": dict(pod_labels)},
                        "spec": pod_spec([worker], gpu=True),
                    },
                }
            ],
        },
    }
    if active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = max(1, int(active_deadline_seconds))
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": meta, "spec": spec}
