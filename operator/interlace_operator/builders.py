"""Pure builders of a PruneJob's children: ServiceAccount, Role, RoleBinding, NetworkPolicy, RayJob.

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

from interlace.schema import podpolicy
from interlace.schema.spec import (
    API_GROUP,
    API_VERSION,
    KIND,
    RAY_CONTAINERS,
    HubOutput,
    PodTemplateOverride,
    PruneJob,
)
from interlace_operator import names
from interlace_operator.rbac import job_role_rules

DATA_MOUNT_DIR = "/data"
ENV_PRUNEJOB = "INTERLACE_PRUNEJOB"
# The token publishing to the Hub uses (interlace.stages.publish.hub.hub_token reads it before HF_TOKEN).
HUB_TOKEN_ENV = "INTERLACE_HUB_TOKEN"
ENV_SPEC = "INTERLACE_PRUNEJOB_SPEC"  # the validated PruneJob document (YAML) the job runs
GPU_RESOURCE = "nvidia.com/gpu"
WORKER_GROUP = "gpu-workers"
SUBMITTER_RESOURCES = {"cpu": "50m", "memory": "128Mi"}
# The Ray of the runtime image (pyproject's ray pin; tests/packaging checks they agree). KubeRay needs
# it to turn on token authentication (Ray >= 2.52).
RAY_VERSION = "2.60.0"
# Ray's token authentication on every Ray cluster: KubeRay generates a random token into a Secret
# named after the RayCluster (owned by it) and gives it, with RAY_AUTH_MODE=token, to the head, the
# workers, their wait-gcs-ready init containers and the submitter; the GCS (6379), the dashboard and
# job API (8265) and the client server (10001) then refuse a request without it. Only pods that mount
# that Secret (or a user who may read Secrets in the namespace) can submit code to the cluster.
RAY_AUTH = {"mode": "token"}
# Where the per-job identity's token is mounted when the pods run as a shared ServiceAccount
# (interlace.runtime.kube reads INTERLACE_STATUS_TOKEN_DIR: token, ca.crt).
STATUS_TOKEN_DIR = "/var/run/secrets/interlace.dev/status"
ENV_STATUS_TOKEN_DIR = "INTERLACE_STATUS_TOKEN_DIR"
STATUS_TOKEN_VOLUME = "status-token"
SHM_VOLUME = "dshm"
SHM_MOUNT_PATH = "/dev/shm"


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


def role_binding(owner: Owner) -> dict[str, Any]:
    """The job's Role bound to the per-job ServiceAccount only, also when the pods run as a shared
    one (those get the per-job account's token as a file: status_token_secret)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(owner, names.job_account_name(owner.name), "job-identity"),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": names.job_account_name(owner.name),
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": names.job_account_name(owner.name), "namespace": owner.namespace}
        ],
    }


def status_token_secret(owner: Owner) -> dict[str, Any]:
    """A token of the per-job ServiceAccount, for pods that run as an allow-listed shared one.

    Status writes always come from the per-job identity: its Role reaches this one PruneJob, so code in
    one job cannot write another's status even when both run as the same ServiceAccount (for cloud
    credentials, say). Kubernetes' token controller fills the Secret (token, ca.crt, namespace) and
    invalidates the token when the Secret goes, with its PruneJob (owner reference)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/service-account-token",
        "metadata": {
            **_meta(owner, names.status_token_name(owner.name), "job-identity"),
            "annotations": {"kubernetes.io/service-account.name": names.job_account_name(owner.name)},
        },
    }


@dataclass(frozen=True)
class Peer:
    """Pods outside the PruneJob that may reach its Ray head's dashboard and job API (8265): KubeRay's
    operator, which reads the job's state there. namespace "" = any namespace."""

    pod_labels: tuple[tuple[str, str], ...]
    namespace: str = ""


# Ports a Peer may reach on the head: the dashboard and job API, which KubeRay polls for the RayJob's
# state (and where `ray job submit` of the submitter goes, a pod of the job itself).
PEER_PORTS = (8265,)


def network_policy(owner: Owner, peers: tuple[Peer, ...]) -> dict[str, Any]:
    """Ingress to the job's Ray pods (head and workers: the GCS 6379, the dashboard and job API 8265,
    the client server 10001, the object store and worker ports) only from the job's own pods (the
    other Ray pods and KubeRay's submitter of this PruneJob, same namespace, by the operator's
    `interlace.dev/prunejob` label, which pod overrides cannot change) and from `peers` to PEER_PORTS.
    Egress is left open (the job reads the Hub or S3 and writes its status through the API server).
    Policies add up: a platform that scrapes Ray's metrics adds its own policy for that port."""
    job_pods = {names.LABEL_PRUNEJOB: names.label_value(owner.name)}
    ray_pods = {**job_pods, names.LABEL_COMPONENT: "ray"}
    ingress: list[dict[str, Any]] = [{"from": [{"podSelector": {"matchLabels": job_pods}}]}]
    for peer in peers:
        selector: dict[str, Any] = {
            "podSelector": {"matchLabels": dict(peer.pod_labels)},
            "namespaceSelector": (
                {"matchLabels": {"kubernetes.io/metadata.name": peer.namespace}} if peer.namespace else {}
            ),
        }
        ingress.append({"from": [selector], "ports": [{"protocol": "TCP", "port": p} for p in PEER_PORTS]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(owner, names.network_policy_name(owner.name), "network-policy"),
        "spec": {"podSelector": {"matchLabels": ray_pods}, "policyTypes": ["Ingress"], "ingress": ingress},
    }


def job_service_account_name(job: PruneJob, owner: Owner) -> str:
    """The user's ServiceAccount if spec.resources.serviceAccountName is set, else the one we create."""
    return job.spec.resources.service_account_name or names.job_account_name(owner.name)


def entrypoint(job: PruneJob) -> str:
    """The same command as local mode, reading the spec from the RayJob's own env (`-f env:NAME`)."""
    return shlex.join(["interlace", "run", "-f", f"env:{ENV_SPEC}", "--output", job.spec.output.uri])


def hub_token_secret(job: PruneJob) -> str | None:
    """The Secret with the token publishing to the Hub uses: spec.output.hub.tokenSecret, or its default
    when spec.output.uri is hf:// without spec.output.hub (publishing then goes to that repo)."""
    out = job.spec.output
    if out.hub is not None:
        return out.hub.token_secret
    if out.uri.strip().startswith("hf://"):
        return HubOutput.model_fields["token_secret"].default
    return None


def _secret_env(name: str, secret: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": "HF_TOKEN", "optional": False}}}


def _env(job: PruneJob, owner: Owner) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Environment of the Ray containers: the PruneJob's identity, its validated spec, and secrets as
    references.

    Every output scheme gets what it needs: HF_TOKEN (model download: spec.model.hfTokenSecret, else
    the publishing token, which can read too) and HUB_TOKEN_ENV (publishing: the Hub output's Secret,
    also for a bare hf:// uri), so a job with a read token for a gated model and a write token for
    its output has both; s3:// gets spec.output.s3Secret's keys as env; pvc:// gets the claim mounted
    (_volumes)."""
    env: list[dict[str, Any]] = [
        {"name": ENV_PRUNEJOB, "value": f"{owner.namespace}/{owner.name}"},
        {"name": ENV_SPEC, "value": prunejob_document(job, owner)},
    ]
    publish_secret = hub_token_secret(job)
    read_secret = job.spec.model.hf_token_secret or publish_secret
    if read_secret:
        env.append(_secret_env("HF_TOKEN", read_secret))
    if publish_secret:
        env.append(_secret_env(HUB_TOKEN_ENV, publish_secret))
    if job.spec.resources.pvc_name:
        # Work files of remote (s3://, hf://) outputs go to the claim every Ray pod mounts, not into
        # the head's container (shared_work_dir_error: a cluster PruneJob needs this claim or a pvc://
        # output; the operator refuses one without as InvalidSpec, interlace.pipeline.job checks again).
        env.append({"name": "INTERLACE_WORK_DIR", "value": f"{DATA_MOUNT_DIR}/.interlace-work"})
    if job.spec.resources.service_account_name:
        env.append({"name": ENV_STATUS_TOKEN_DIR, "value": STATUS_TOKEN_DIR})
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
    if job.spec.resources.service_account_name:
        volumes.append({"name": STATUS_TOKEN_VOLUME, "secret": {"secretName": names.status_token_name(owner.name)}})
        mounts.append({"name": STATUS_TOKEN_VOLUME, "mountPath": STATUS_TOKEN_DIR, "readOnly": True})
    return volumes, mounts


def _restricted_container(c: dict[str, Any]) -> dict[str, Any]:
    """A user's container (an init container) with the policy's defaults under its securityContext."""
    return {**c, "securityContext": podpolicy.merged(podpolicy.CONTAINER_SECURITY_CONTEXT, c.get("securityContext"))}


def apply_pod_overrides(template: dict[str, Any], group: str, overrides: list[PodTemplateOverride]) -> None:
    """Merge spec.resources.podTemplateOverrides aimed at `group` (head or workers) into a pod template,
    in order. Maps merge (the override's keys win), lists append, single objects (affinity, the
    security contexts) and scalars are replaced by a later override. What the operator set for
    itself stays: its labels, the Ray container's name, image, command, resources, the spec mount and
    the ServiceAccount are not in the override models at all, and env names the operator sets
    (INTERLACE_PRUNEJOB, HF_TOKEN) keep the operator's value."""
    meta = template.setdefault("metadata", {})
    pod = template["spec"]
    ray_name = RAY_CONTAINERS[group]
    (ray,) = [c for c in pod["containers"] if c["name"] == ray_name]
    own_labels = dict(meta.get("labels") or {})
    own_env = {e["name"] for e in ray.get("env", [])}
    for o in overrides:
        if group not in o.target_groups:
            continue
        if o.metadata:
            if o.metadata.labels:
                meta["labels"] = {**(meta.get("labels") or {}), **o.metadata.labels, **own_labels}
            if o.metadata.annotations:
                meta["annotations"] = {**(meta.get("annotations") or {}), **o.metadata.annotations}
        if o.spec:
            ps = o.spec
            if ps.security_context is not None:
                pod["securityContext"] = podpolicy.merged(podpolicy.POD_SECURITY_CONTEXT, ps.security_context)
            for key, value in (("affinity", ps.affinity),
                               ("priorityClassName", ps.priority_class_name),
                               ("schedulerName", ps.scheduler_name), ("runtimeClassName", ps.runtime_class_name),
                               ("terminationGracePeriodSeconds", ps.termination_grace_period_seconds)):
                if value is not None:
                    pod[key] = value
            for key, items in (("topologySpreadConstraints", ps.topology_spread_constraints),
                               ("volumes", ps.volumes),
                               ("imagePullSecrets", [r.to_wire() for r in ps.image_pull_secrets]),
                               ("tolerations", [t.to_wire() for t in ps.tolerations]),
                               ("initContainers", [_restricted_container(c) for c in ps.init_containers])):
                if items:
                    pod[key] = [*pod.get(key, []), *(dict(i) for i in items)]
            if ps.node_selector:
                pod["nodeSelector"] = {**pod.get("nodeSelector", {}), **ps.node_selector}
            for c in ps.containers:
                if c.name != ray_name:
                    continue
                env = [dict(e) for e in c.env if e["name"] not in own_env]
                for key, items in (("env", env), ("envFrom", c.env_from), ("volumeMounts", c.volume_mounts)):
                    if items:
                        ray[key] = [*ray.get(key, []), *(dict(i) for i in items)]
                if c.security_context is not None:
                    ray["securityContext"] = podpolicy.merged(podpolicy.CONTAINER_SECURITY_CONTEXT,
                                                              c.security_context)
        if o.shm_size:
            # A memory-backed /dev/shm of this size; KubeRay adds its own (sized to the memory limit)
            # only when the Ray container has no /dev/shm mount.
            pod["volumes"] = [v for v in pod.get("volumes", []) if v["name"] != SHM_VOLUME]
            pod["volumes"].append({"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": o.shm_size}})
            if not any(m["name"] == SHM_VOLUME for m in ray.get("volumeMounts", [])):
                ray.setdefault("volumeMounts", []).append({"name": SHM_VOLUME, "mountPath": SHM_MOUNT_PATH})


def rayjob(
    job: PruneJob,
    owner: Owner,
    *,
    attempt: int,
    image: str,
    active_deadline_seconds: int | None = None,
) -> dict[str, Any]:
    """The KubeRay RayJob of one attempt: a small head (runs the driver) and the worker group.

    * Placement follows spec.resources: each worker pod gets gpusPerWorker GPUs (and tells Ray so
      with num-gpus), the head gets headGpus (default 0: 2 CPU, 8 Gi, no GPU; the driver only
      orchestrates Ray Train, which starts one process per worker GPU).

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
            "securityContext": podpolicy.merged(podpolicy.CONTAINER_SECURITY_CONTEXT, None),
        }
        if mounts:
            c["volumeMounts"] = [dict(m) for m in mounts]
        if env_from:
            c["envFrom"] = [dict(e) for e in env_from]
        return c

    def pod_spec(containers: list[dict[str, Any]], *, gpu: bool) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "serviceAccountName": sa,
            "securityContext": podpolicy.merged(podpolicy.POD_SECURITY_CONTEXT, None),
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

    head = container("ray-head", res.head_cpu, res.head_memory, res.head_gpus)
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
        # The submitter only runs `ray job submit` and follows the driver's log: KubeRay's default
        # template asks for half a CPU (and it can keep a small cluster's last slot from the Ray pods).
        # No command: KubeRay fills in its own.
        "submitterPodTemplate": {
            "metadata": {"labels": names.labels(owner.name, "submitter")},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": podpolicy.merged(podpolicy.POD_SECURITY_CONTEXT, None),
                "containers": [
                    {
                        "name": "ray-job-submitter",
                        "image": image,
                        "resources": {"requests": dict(SUBMITTER_RESOURCES), "limits": {"memory": "512Mi"}},
                        "securityContext": podpolicy.merged(podpolicy.CONTAINER_SECURITY_CONTEXT, None),
                    }
                ],
            },
        },
        "runtimeEnvYAML": yaml.safe_dump({"env_vars": {ENV_PRUNEJOB: f"{owner.namespace}/{owner.name}"}}),
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": job.spec.ttl_seconds_after_finished,
        "backoffLimit": 0,
        # Queued for Kueue: created suspended, Kueue admits it by un-suspending it (and the operator
        # never writes suspend again; spec.suspend goes to the Workload's spec.active instead).
        "suspend": bool(job.spec.suspend or res.queue_name),
        "rayClusterSpec": {
            "rayVersion": RAY_VERSION,
            "authOptions": dict(RAY_AUTH),
            "headGroupSpec": {
                # The head advertises exactly the GPUs the spec gives it (0 by default). Without GPUs
                # it takes no Ray work at all (num-cpus 0): it runs the driver, which only
                # orchestrates, and Ray's control processes; Ray Train workers and the stages' tasks
                # go to the worker pods.
                "rayStartParams": {
                    "dashboard-host": "0.0.0.0",
                    "num-gpus": str(res.head_gpus),
                    **({} if res.head_gpus > 0 else {"num-cpus": "0"}),
                },
                "template": {
                    "metadata": {"labels": dict(pod_labels)},
                    "spec": pod_spec([head], gpu=res.head_gpus > 0),
                },
            },
            "workerGroupSpecs": [
                {
                    "groupName": WORKER_GROUP,
                    "replicas": res.workers,
                    "minReplicas": res.workers,
                    "maxReplicas": res.workers,
                    "rayStartParams": {"num-gpus": str(res.gpus_per_worker)},
                    "template": {
                        "metadata": {"labels": dict(pod_labels)},
                        "spec": pod_spec([worker], gpu=True),
                    },
                }
            ],
        },
    }
    overrides = res.pod_template_overrides
    if overrides:
        cluster = spec["rayClusterSpec"]
        apply_pod_overrides(cluster["headGroupSpec"]["template"], "head", overrides)
        apply_pod_overrides(cluster["workerGroupSpecs"][0]["template"], "workers", overrides)
    if res.managed_by:
        spec["managedBy"] = res.managed_by
    if active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = max(1, int(active_deadline_seconds))
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": meta, "spec": spec}
