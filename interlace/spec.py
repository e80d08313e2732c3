"""The PruneJob spec and status: the single source of truth.

These pydantic models are used by every part of the project:

* the CLI (`interlace run -f prunejob.yaml`) validates the same YAML the operator gets;
* the Ray job reads the spec from a ConfigMap and writes `status.stage/progress/plan/results`;
* the operator validates and writes `status.phase/conditions/rayJob/...`;
* the CRD schema in manifests/ and charts/ is generated from them (``interlace.crd``), and a test
  fails when the committed YAML drifts from what these models generate.

Field names are snake_case in Python and camelCase on the wire (YAML/JSON/Kubernetes).
Defaults reproduce the paper (arXiv 2511.19676): 1% of FineVision, AdamW lr 1e-5, cosine schedule,
warmup 0.03, clip 1.0, effective batch 32, one epoch, max length 8192, 50,176-pixel images.

Importing this module imports pydantic and the standard library only (an import-linter contract
checks it), so the operator image stays free of torch, transformers and ray.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic.functional_validators import AfterValidator

from interlace.errors import InterlaceError

API_GROUP = "interlace.dev"
API_VERSION = "v1alpha1"
KIND = "PruneJob"
PLURAL = "prunejobs"
SINGULAR = "prunejob"
SHORT_NAMES = ["pj"]
CATEGORIES = ["ml"]


class _Model(BaseModel):
    """Base: camelCase aliases on the wire, unknown fields rejected (typos are errors, not silence)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
        use_enum_values=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """JSON-ready dict with camelCase keys and no unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --------------------------------------------------------------------------------------------- spec


class Strategy(StrEnum):
    """Layer selection strategies. `interlace` is the paper's; the rest are its ablations/baselines."""

    INTERLACE = "interlace"  # greedy non-overlapping triplets by pack-3, pair fallback by pack-2
    OA = "oa"  # as interlace, but always drop the first layer of a window and tune the second
    TN = "tn"  # single-layer ranking by pack-1, dropped layer paired with its successor
    RANDOM = "random"  # seeded random layers
    CONSECUTIVE = "consecutive"  # the most redundant consecutive block
    SHORTGPT = "shortgpt"  # ShortGPT Block Influence: lowest 1 - cos(h_i, h_{i+1})


class DeepstackPolicy(StrEnum):
    """What happens to Qwen3-VL DeepStack visual injections when early layers are pruned.

    * ``protect`` (default): the decoder layers that receive DeepStack features (positions
      0..len(deepstack_visual_indexes)-1) are never dropped, so after surgery the features are still
      added after exactly the same original layers.
    * ``position``: what the reference code does: nothing; whatever layers end up at positions
      0..n-1 after surgery receive the features.
    """

    PROTECT = "protect"
    POSITION = "position"


class Precision(StrEnum):
    AUTO = "auto"  # bf16 on GPU, fp32 on CPU
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class ModelSpec(_Model):
    """Where the unpruned model comes from."""

    source: str = Field(
        description="Hugging Face Hub id (e.g. Qwen/Qwen3-VL-4B-Instruct), a local directory, "
        "or `builtin:smollm2-135m` (the embedded default, no hub needed).",
        min_length=1,
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="Weights dtype for loading. auto = bfloat16 on GPU, float32 on CPU."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        default="sdpa",
        description="Attention kernel. sdpa (default) uses PyTorch's own flash kernel on GPUs. "
        "flash_attention_2 needs GPUs and the flash-attn package in the runtime image; the job "
        "checks both before any work.",
    )
    trust_remote_code: bool = Field(default=False, description="Allow model code from the hub repo.")
    hf_token_secret: str | None = Field(
        default=None,
        description="Name of a Secret with key HF_TOKEN for gated models (mounted as env, never logged).",
    )


class DataSpec(_Model):
    """A conversation dataset: FineVision on the hub, local shards in its schema, or plain text."""

    format: Literal["finevision", "text"] = Field(
        default="finevision",
        description="finevision: rows with `images` and `texts` [{user, assistant}] turns; text: rows "
        "with `text` (plain text turned into a conversation), for text-only models.",
    )
    path: str = Field(
        default="HuggingFaceM4/FineVision",
        description="Hub dataset id (streamed), a local directory / glob of parquet or jsonl shards, "
        "or `builtin:english` (real English text shipped with Debian packages).",
    )
    subsets: list[str] = Field(
        default_factory=list, description="Subset (config) names; empty = all subsets."
    )
    split: str = Field(default="train")
    fraction: float = Field(
        default=0.01, gt=0, le=1, description="Fraction of each subset to take (paper: 1%)."
    )
    max_samples: int | None = Field(
        default=None, ge=1, description="Hard cap on samples after the per-subset fraction."
    )
    sampling: Literal["first", "random"] = Field(
        default="first", description="first: the first rows of each subset (the paper); random: seeded."
    )
    seed: int = Field(default=0, ge=0)
    max_images: int = Field(default=3, ge=0, description="Skip samples with more images than this.")
    max_turns: int = Field(default=5, ge=1, description="Truncate conversations to this many turns.")
    max_pixels: int = Field(
        default=50176, ge=784, description="Cap on pixels per image (paper: 50,176, about 224x224)."
    )


class CalibrationSpec(_Model):
    """Samples for the layer-similarity analysis (the paper: first user turn, chat template)."""

    data: DataSpec | None = Field(
        default=None, description="Calibration data; default: the finetuning data."
    )
    num_samples: int = Field(default=256, ge=1, description="Calibration samples (paper: ~24K).")
    batch_size: int = Field(default=4, ge=1)
    max_length: int = Field(default=2048, ge=16)


class PruningSpec(_Model):
    """How many layers to drop and how to pick them."""

    ratio: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Fraction of decoder layers to drop: n = floor(L * ratio). Exactly one of ratio "
        "and numLayers.",
    )
    num_layers: int | None = Field(
        default=None, ge=1, description="Number of decoder layers to drop. Exactly one of ratio and numLayers."
    )
    strategy: Strategy = Field(default=Strategy.INTERLACE)
    protected_layers: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, description="0-based decoder layers that are never dropped."
    )
    seed: int = Field(default=0, ge=0, description="Seed for the random strategy.")
    deepstack_policy: DeepstackPolicy = Field(default=DeepstackPolicy.PROTECT)
    freeze_lm_head: bool = Field(
        default=True,
        description="Keep lm_head frozen (the reference meant to, but left it trainable for untied "
        "embeddings).",
    )

    @model_validator(mode="after")
    def _exactly_one_amount(self) -> PruningSpec:
        if (self.ratio is None) == (self.num_layers is None):
            raise ValueError("set exactly one of spec.pruning.ratio and spec.pruning.numLayers")
        return self

    def layers_to_drop(self, num_layers: int) -> int:
        """n_drop for a model with `num_layers` decoder layers (floor(L * r) or numLayers)."""
        n = self.num_layers if self.num_layers is not None else math.floor(num_layers * float(self.ratio or 0))
        if n < 1:
            raise ValueError(
                f"spec.pruning.ratio={self.ratio} drops no layer of a {num_layers}-layer model; "
                f"use a ratio >= {1 / num_layers:.3f} or set numLayers"
            )
        if n >= num_layers:
            raise ValueError(
                f"spec.pruning drops {n} of {num_layers} layers; at least one layer must remain"
            )
        return n


class FinetuneSpec(_Model):
    """Interleaved finetuning: only the plan's finetune layers train. Paper defaults."""

    enabled: bool = True
    data: DataSpec = Field(default_factory=DataSpec)
    learning_rate: float = Field(default=1e-5, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    per_device_batch_size: int = Field(default=16, ge=1)
    gradient_accumulation_steps: int = Field(default=2, ge=1)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many optimizer steps.")
    max_length: int = Field(default=8192, ge=16)
    precision: Precision = Precision.AUTO
    gradient_checkpointing: bool = Field(
        default=True,
        description="Activation checkpointing on the decoder layers from the lowest trainable one up "
        "(less activation memory for one more forward of those layers).",
    )
    packing: bool = Field(default=True, description="Pack sequences up to maxLength.")
    parallelism: Literal["ddp", "fsdp"] = Field(default="ddp", description="DDP or FSDP2 across workers.")
    checkpoint_every_steps: int = Field(default=500, ge=1)
    resume: bool = Field(default=True, description="Resume from the newest checkpoint in the output.")
    max_failures: int = Field(default=2, ge=0, description="Worker failures Ray Train recovers from.")


class EvaluationSpec(_Model):
    """Evaluation of pruned vs unpruned model on the same samples."""

    enabled: bool = True
    benchmarks: list[str] = Field(
        default_factory=lambda: ["perplexity"],
        description="Built-in: perplexity (held-out text), or a path/URI to a local VQA set "
        "(parquet/jsonl: image, question, choices, answer). Harness tasks: lmms-eval:<task>.",
    )
    data: DataSpec | None = Field(default=None, description="Held-out data for perplexity.")
    max_samples: int = Field(default=128, ge=1)
    batch_size: int = Field(default=4, ge=1)
    max_new_tokens: int = Field(default=16, ge=1)
    speed: bool = Field(default=True, description="Measure prefill (TTFT) and decode speedup.")


class HubOutput(_Model):
    repo: str = Field(min_length=3, description="Hub repo id, e.g. my-org/qwen3-vl-4b-interlace-20.")
    private: bool = True
    token_secret: str = Field(default="hf-token", description="Secret with key HF_TOKEN.")


class OutputSpec(_Model):
    """Where the artifacts of the run go (scores.json, plan.json, heatmap.png, model/, results.json)."""

    uri: str = Field(
        default="file://./interlace-output",
        description="file:///path, a path, pvc://<claim>/<path> (mounted), or s3://bucket/prefix.",
    )
    s3_secret: str | None = Field(
        default=None, description="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_ENDPOINT_URL."
    )
    hub: HubOutput | None = None
    save_checkpoints: bool = True


class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


# ------------------------------------------------------------- pod overrides (head / workers)
# KubeRay users write whole pod templates, Kubeflow Trainer users `podTemplateOverrides`; a PruneJob
# takes a list like Trainer's, each entry aimed at the Ray head, the GPU workers or both, merged into
# the RayJob's pod templates by interlace_operator.builders. What the operator must control is not in
# these models, so it cannot be overridden: container names, image (spec.resources.image is the
# way), command and args, the spec ConfigMap mount, the ServiceAccount (spec.resources.
# serviceAccountName), the resources (spec.resources). Kubernetes objects (affinity, volumes,
# securityContext, ...) are passed through as written; the API server checks them against the
# RayJob's pod template schema when the operator creates the RayJob.

POD_TARGETS = ("head", "workers")
# The names the operator gives the Ray containers, volumes and mounts: overrides may not reuse them.
RAY_CONTAINERS = {"head": "ray-head", "workers": "ray-worker"}
RESERVED_VOLUMES = frozenset({"prunejob-spec", "data", "dshm"})
RESERVED_MOUNT_PATHS = frozenset({"/etc/interlace", "/data", "/dev/shm"})
RESERVED_ENV = frozenset({"INTERLACE_PRUNEJOB"})
RESERVED_LABEL_PREFIXES = ("interlace.dev/", "ray.io/", "app.kubernetes.io/", "kueue.x-k8s.io/")
# Kubernetes' resource.Quantity syntax (the pattern of int-or-string quantities in its OpenAPI).
_QUANTITY = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)"
             r"|(\.[0-9]+))))?$")
_K8S_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

KubeObject = dict[str, Any]


class PodMetadataOverride(_Model):
    """Labels and annotations added to the pods (not the operator's own label keys)."""

    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _not_reserved(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k in v if k.startswith(RESERVED_LABEL_PREFIXES))
        if bad:
            raise ValueError(f"labels {bad} are set by the operator or KubeRay (reserved prefixes "
                             f"{', '.join(RESERVED_LABEL_PREFIXES)})")
        return v


class LocalObjectReference(_Model):
    name: str = Field(min_length=1, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class ContainerOverride(_Model):
    """Additions to the Ray container of a group, selected by its name: `ray-head` or `ray-worker`."""

    name: Literal["ray-head", "ray-worker"] = Field(description="ray-head (head group) or ray-worker (workers).")
    env: list[KubeObject] = Field(default_factory=list, description="EnvVar objects, added after the operator's.")
    env_from: list[KubeObject] = Field(default_factory=list, description="EnvFromSource objects.")
    volume_mounts: list[KubeObject] = Field(
        default_factory=list, description="VolumeMount objects (of volumes in spec.volumes)."
    )
    security_context: KubeObject | None = Field(default=None, description="The container's SecurityContext.")

    @field_validator("env")
    @classmethod
    def _env(cls, v: list[KubeObject]) -> list[KubeObject]:
        for e in v:
            if not isinstance(e.get("name"), str) or not e["name"]:
                raise ValueError("every env entry needs a name")
            if e["name"] in RESERVED_ENV:
                raise ValueError(f"env {e['name']} is set by the operator")
        return v

    @field_validator("volume_mounts")
    @classmethod
    def _mounts(cls, v: list[KubeObject]) -> list[KubeObject]:
        for m in v:
            if not isinstance(m.get("name"), str) or not isinstance(m.get("mountPath"), str):
                raise ValueError("every volumeMount needs a name and a mountPath")
            if m["name"] in RESERVED_VOLUMES or m["mountPath"].rstrip("/") in RESERVED_MOUNT_PATHS:
                raise ValueError(f"volumeMount {m['name']} at {m['mountPath']}: the volumes "
                                 f"{sorted(RESERVED_VOLUMES)} and paths {sorted(RESERVED_MOUNT_PATHS)} are the "
                                 "operator's (use shmSize for /dev/shm)")
        return v


class PodSpecOverride(_Model):
    """Pod spec fields merged into the Ray pods: maps merge (the override's keys win), lists append."""

    affinity: KubeObject | None = Field(default=None, description="Affinity (node, pod, anti-affinity).")
    topology_spread_constraints: list[KubeObject] = Field(default_factory=list)
    volumes: list[KubeObject] = Field(default_factory=list, description="Volume objects, added to the operator's.")
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    security_context: KubeObject | None = Field(default=None, description="The pod's PodSecurityContext.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Merged over spec.resources.nodeSelector (which applies to workers)."
    )
    tolerations: list[Toleration] = Field(default_factory=list, description="Added to spec.resources.tolerations.")
    priority_class_name: str | None = Field(default=None, description="Wins over spec.resources.priorityClassName.")
    scheduler_name: str | None = None
    runtime_class_name: str | None = None
    termination_grace_period_seconds: int | None = Field(default=None, ge=0)
    init_containers: list[KubeObject] = Field(
        default_factory=list, description="Container objects run before the Ray container (name and image required)."
    )
    containers: list[ContainerOverride] = Field(
        default_factory=list, description="Overrides of the Ray container, by name (no new containers)."
    )

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, v: list[KubeObject]) -> list[KubeObject]:
        names = [vol.get("name") for vol in v]
        if not all(isinstance(n, str) and n for n in names):
            raise ValueError("every volume needs a name")
        reserved = sorted(set(names) & RESERVED_VOLUMES)
        if reserved:
            raise ValueError(f"volume names {reserved} are the operator's")
        if len(set(names)) != len(names):
            raise ValueError("duplicate volume names")
        return v

    @field_validator("init_containers")
    @classmethod
    def _init_containers(cls, v: list[KubeObject]) -> list[KubeObject]:
        for c in v:
            if not isinstance(c.get("name"), str) or not isinstance(c.get("image"), str):
                raise ValueError("every init container needs a name and an image")
            if c["name"] in RAY_CONTAINERS.values():
                raise ValueError(f"init container name {c['name']} is a Ray container's")
        return v


class PodTemplateOverride(_Model):
    """One override, like Kubeflow Trainer's podTemplateOverrides: for the head, the workers, or both."""

    target_groups: list[Literal["head", "workers"]] = Field(
        min_length=1, description="Which pods: head (Ray head, runs the driver), workers (GPU workers), or both."
    )
    metadata: PodMetadataOverride | None = None
    spec: PodSpecOverride | None = None
    shm_size: str | None = Field(
        default=None,
        pattern=_QUANTITY,
        description="Size of /dev/shm (a memory-backed emptyDir, e.g. 16Gi) in the Ray container; default: "
        "KubeRay's, the container's memory limit.",
    )

    @model_validator(mode="after")
    def _containers_in_targets(self) -> PodTemplateOverride:
        if len(set(self.target_groups)) != len(self.target_groups):
            raise ValueError("targetGroups has duplicates")
        wanted = {RAY_CONTAINERS[t] for t in self.target_groups}
        for c in self.spec.containers if self.spec else []:
            if c.name not in wanted:
                raise ValueError(f"container {c.name} is not in targetGroups {self.target_groups}")
        return self


def check_pod_overrides(overrides: list[PodTemplateOverride]) -> list[PodTemplateOverride]:
    """Across all overrides of a group: every volumeMount names a volume given to that group, and no
    volume name is given twice (the API server would reject the pod only when KubeRay creates it)."""
    for group in POD_TARGETS:
        mine = [o for o in overrides if group in o.target_groups]
        volumes = [v["name"] for o in mine if o.spec for v in o.spec.volumes]
        if len(set(volumes)) != len(volumes):
            raise ValueError(f"the {group} pods get the same volume name twice: {sorted(volumes)}")
        for o in mine:
            for c in o.spec.containers if o.spec else []:
                if c.name != RAY_CONTAINERS[group]:
                    continue
                missing = sorted({m["name"] for m in c.volume_mounts} - set(volumes))
                if missing:
                    raise ValueError(f"container {c.name} mounts {missing}, which no override's spec.volumes "
                                     f"gives the {group} pods")
    return overrides


class ResourcesSpec(_Model):
    """The Ray cluster KubeRay creates (ignored in local mode except `workers`/`gpusPerWorker`)."""

    image: str | None = Field(default=None, description="Runtime image; default from the operator.")
    workers: int = Field(
        default=1, ge=1, le=256, description="Ray worker pods (each with gpusPerWorker GPUs)."
    )
    gpus_per_worker: int = Field(
        default=1,
        ge=0,
        le=16,
        description="GPUs per worker pod. > 0: the stages run on GPUs, with one Ray Train process per "
        "GPU (workers x gpusPerWorker processes, NCCL); the job fails before any work if the Ray "
        "cluster has fewer GPUs. 0: CPU workers (gloo, fp32).",
    )
    cpu: str = Field(default="8", description="CPU request/limit per worker pod.")
    memory: str = Field(default="64Gi", description="Memory request/limit per worker pod.")
    gpu_memory: str = Field(
        default="80Gi",
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|K|M|G|T|P)?$",
        description="Memory of one worker GPU (e.g. 80Gi for an H100/A100-80GB, 141G for an H200). "
        "Before launch the job estimates what finetuning needs per GPU from the model config and "
        "refuses a plan that does not fit.",
    )
    head_cpu: str = Field(default="2", description="CPU of the Ray head pod (runs the driver).")
    head_memory: str = Field(default="8Gi", description="Memory of the Ray head pod.")
    head_gpus: int = Field(
        default=0,
        ge=0,
        le=16,
        description="GPUs of the Ray head pod, which runs the driver. 0 (default): the driver only "
        "orchestrates (it holds no model weights); the GPUs belong to the worker pods.",
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    priority_class_name: str | None = None
    queue_name: str | None = Field(
        default=None, description="Kueue LocalQueue (sets kueue.x-k8s.io/queue-name on the RayJob)."
    )
    pvc_name: str | None = Field(
        default=None, description="PersistentVolumeClaim mounted at /data (model cache, pvc:// output)."
    )
    service_account_name: str | None = Field(
        default=None, description="Use this ServiceAccount instead of the one the operator creates."
    )
    pod_template_overrides: Annotated[list[PodTemplateOverride], AfterValidator(check_pod_overrides)] = Field(
        default_factory=list,
        description="Pod overrides for the Ray head and/or workers (affinity, topology spread, volumes, env, "
        "labels, annotations, securityContext, imagePullSecrets, /dev/shm size), applied in order.",
    )


class PruneJobSpec(_Model):
    """spec of a PruneJob."""

    model: ModelSpec
    pruning: PruningSpec
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    dry_run: bool = Field(default=False, description="Stop after the plan; show it in status.")
    suspend: bool = Field(default=False, description="Suspend (deletes the Ray cluster); false resumes.")
    backoff_limit: int = Field(default=2, ge=0, le=20, description="Retries of a failed run.")
    active_deadline_seconds: int | None = Field(default=None, ge=60)
    ttl_seconds_after_finished: int = Field(
        default=600, ge=0, description="Delete the Ray cluster this long after the job finishes."
    )

    @field_validator("pruning")
    @classmethod
    def _protected_sorted(cls, v: PruningSpec) -> PruningSpec:
        if len(set(v.protected_layers)) != len(v.protected_layers):
            raise ValueError("spec.pruning.protectedLayers has duplicates")
        return v


# ------------------------------------------------------------------------------------------- status


class Phase(StrEnum):
    PENDING = "Pending"
    ANALYZING = "Analyzing"
    PLANNING = "Planning"
    FINETUNING = "Finetuning"
    EVALUATING = "Evaluating"
    PUBLISHING = "Publishing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


# The stages the job itself reports (a subset of phases, in pipeline order).
STAGES: tuple[Phase, ...] = (
    Phase.ANALYZING,
    Phase.PLANNING,
    Phase.FINETUNING,
    Phase.EVALUATING,
    Phase.PUBLISHING,
)


class Condition(_Model):
    """A Kubernetes API convention condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class RayJobStatus(_Model):
    name: str
    job_status: str | None = Field(default=None, description="KubeRay status.jobStatus, mirrored.")
    job_deployment_status: str | None = Field(
        default=None, description="KubeRay status.jobDeploymentStatus, mirrored."
    )
    reason: str | None = None
    message: str | None = None
    dashboard_url: str | None = None
    start_time: str | None = Field(default=None, description="KubeRay status.startTime, mirrored.")
    end_time: str | None = Field(
        default=None,
        description="When this attempt ended (KubeRay status.endTime, else when the operator saw it "
        "end); the next attempt's backoff counts from here, so it survives operator restarts.",
    )


class Metric(_Model):
    name: str
    value: float


class Progress(_Model):
    """Pushed by the job (Kubeflow Trainer v2 style)."""

    percent: float = Field(default=0.0, ge=0, le=100)
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    message: str | None = None
    metrics: list[Metric] = Field(default_factory=list)
    last_update_time: str | None = None


class LayerPlan(_Model):
    """The chosen layers. All indices are 0-based ORIGINAL decoder layer indices, sorted."""

    num_layers: int = Field(ge=1)
    strategy: Strategy
    ratio: float | None = None
    drop: list[int]
    finetune: list[int]
    anchor: list[int]
    frozen: list[int]
    windows: list[list[int]] = Field(
        default_factory=list, description="Accepted windows (triplets/pairs) in acceptance order."
    )
    scores_summary: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> LayerPlan:
        n = self.num_layers
        groups = {"drop": self.drop, "finetune": self.finetune, "anchor": self.anchor, "frozen": self.frozen}
        seen: dict[int, str] = {}
        for name, idx in groups.items():
            if idx != sorted(idx):
                raise ValueError(f"plan.{name} must be sorted")
            for i in idx:
                if not 0 <= i < n:
                    raise ValueError(f"plan.{name} has layer {i}, outside 0..{n - 1}")
                if i in seen:
                    raise ValueError(f"layer {i} is in both plan.{seen[i]} and plan.{name}")
                seen[i] = name
        if len(seen) != n:
            missing = sorted(set(range(n)) - set(seen))
            raise ValueError(f"plan does not place layers {missing} in drop/finetune/anchor/frozen")
        if len(self.drop) >= n:
            raise ValueError("plan drops every layer")
        return self


class BenchmarkResult(_Model):
    name: str
    base: float
    pruned: float
    relative: float | None = Field(
        default=None,
        description="pruned vs base in percent (base/pruned for perplexity); null when the base score "
        "is 0 (ratio undefined, left out of relativePerformance).",
    )
    metric: str = "accuracy"


class Results(_Model):
    output_uri: str | None = None
    hub_url: str | None = None
    layers_before: int | None = None
    layers_after: int | None = None
    params_before: int | None = None
    params_after: int | None = None
    relative_performance: float | None = Field(default=None, description="Mean pruned/base, percent.")
    benchmarks: list[BenchmarkResult] = Field(default_factory=list)
    prefill_speedup: float | None = None
    decode_speedup: float | None = None


class PruneJobStatus(_Model):
    """status of a PruneJob. Writers: operator = phase, conditions, observedGeneration, rayJob,
    attempts, startTime, completionTime; job = stage, progress, plan, results."""

    phase: Phase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    ray_job: RayJobStatus | None = None
    attempts: int | None = None
    start_time: str | None = None
    completion_time: str | None = None
    stage: Phase | None = None
    progress: Progress | None = None
    plan: LayerPlan | None = None
    results: Results | None = None


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = "local"
    namespace: str | None = None


class PruneJob(BaseModel):
    """A whole PruneJob document, as applied with kubectl or read by `interlace run -f`."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    api_version: Literal["interlace.dev/v1alpha1"] = "interlace.dev/v1alpha1"
    kind: Literal["PruneJob"] = "PruneJob"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: PruneJobSpec
    status: PruneJobStatus | None = None


# --------------------------------------------------------------------------------------- loading


class SpecError(InterlaceError):
    """A PruneJob document failed validation. The message names each field and the fix."""


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One line per problem: `spec.pruning.ratio: Input should be less than 1`."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        loc = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "document"
        lines.append(f"{loc}: {e['msg']}")
    return "\n".join(lines)


def parse_prunejob(doc: dict[str, Any]) -> PruneJob:
    """Validate a PruneJob document (a dict from YAML). Raises SpecError naming the fields."""
    if not isinstance(doc, dict):
        raise SpecError("document: expected a PruneJob mapping (apiVersion, kind, metadata, spec)")
    try:
        return PruneJob.model_validate(doc)
    except ValidationError as err:
        raise SpecError(format_validation_error(err)) from None


def load_prunejob(path: str | Path) -> PruneJob:
    """Read and validate a PruneJob YAML file (the first document of kind PruneJob)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{p}: no such file (pass the PruneJob YAML with -f)")
    try:
        docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
    except yaml.YAMLError as err:
        raise SpecError(f"{p}: not valid YAML: {err}") from None
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind", "PruneJob") == "PruneJob"]
    if not jobs:
        raise SpecError(f"{p}: no document of kind PruneJob")
    return parse_prunejob(jobs[0])
