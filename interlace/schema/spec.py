"""The PruneJob spec and status: the single source of truth.

These pydantic models are used by every part of the project:

* the CLI (`interlace run -f prunejob.yaml`) validates the same YAML the operator gets;
* the Ray job reads the spec from its RayJob (env INTERLACE_PRUNEJOB_SPEC) and writes
  `status.stage/progress/plan/results`;
* the operator validates and writes `status.phase/conditions/rayJob/...`;
* the CRD schema in manifests/ and charts/ is generated from them (``interlace.schema.crd``), and a test
  fails when the committed YAML drifts from what these models generate.

Field names are snake_case in Python and camelCase on the wire (YAML/JSON/Kubernetes).
Defaults reproduce the paper (arXiv 2511.19676): 1% of FineVision, AdamW lr 1e-5, cosine schedule,
warmup 0.03, clip 1.0, effective batch 32, one epoch, max length 8192, 50,176-pixel images.

Importing this module imports pydantic and the standard library only (an import-linter contract
checks it), so the operator image stays free of torch, transformers and ray.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from interlace.errors import InterlaceError
from interlace.schema import podpolicy
from interlace.schema.base import ApiModel as _Model
from interlace.schema.limits import max_drop
from interlace.schema.status import Condition, Phase, Progress, RayJobStatus

API_GROUP = "interlace.dev"
API_VERSION = "v1alpha1"
KIND = "PruneJob"
PLURAL = "prunejobs"
SINGULAR = "prunejob"
SHORT_NAMES = ["pj"]
CATEGORIES = ["ml"]




# ------------------------------------------------------------------------------- bounds of the spec
# Every bound a child object (RayJob, pods, Secrets, labels) or the job imposes, stated once here: the
# CRD schema is generated from these fields (patterns, maxLength, maximum, CEL rules in
# `x-kubernetes-validations`), so the API server, the CLI and the operator reject the same documents
# with the same field path. Types are strict (no "yes" for a bool, no "8" for an int) and numbers are
# finite, as in JSON.

INT32_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1  # numpy's seed range
# DNS-1123 subdomain: Secrets, PVCs, ServiceAccounts, PriorityClasses (at most 253 characters).
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# DNS-1035 label: the PruneJob's own name, from which the RayJob, RayCluster and Service names derive.
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# A label value (at most 63 characters), and a label key / toleration key (optional DNS prefix + name).
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
# A Kubernetes resource quantity without a sign (what controller-gen emits for resource.Quantity).
QUANTITY = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# Output URIs: a path or file:// (local mode only), pvc://<claim>/<path>, s3://<bucket>/<prefix>,
# hf://<org>/<name>; printable characters (spaces are fine in S3 keys and paths).
PRINTABLE = r"^[^\x00-\x1f]+$"  # local paths may have spaces, not control characters
OUTPUT_URI = PRINTABLE  # the scheme is a CEL rule (RE2 has no lookahead)
DURABLE_SCHEMES = ("s3", "pvc", "hf")
# A `..` path segment (escapes the claim mount, the bucket prefix or the output directory).
DOTDOT = r"(^|/)\.\.(/|$)"
NO_SPACE = r"^\S+$"
# A Hub repo id: <org>/<name> (the Hub's own rules: word characters, '-', '.').
HUB_REPO = r"^[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*$"


def _cel(rule: str, message: str, field_path: str | None = None) -> dict[str, Any]:
    """One CRD validation rule (a `x-kubernetes-validations` entry)."""
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


def _cel_regex(regex: str) -> str:
    """A regex inside a single-quoted CEL string literal (CEL has no `\\.` escape: double the backslashes)."""
    return regex.replace("\\", "\\\\")


def _check_quantity(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r} is neither an integer nor a Kubernetes quantity string (e.g. 8, 500m, 16Gi)")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if not re.fullmatch(QUANTITY[1:-1], value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 8, 500m, 16Gi)")
    return value


# cpu/memory: an int or a Kubernetes quantity string (`cpu: 8`, `500m`, `16Gi`; not `eight`, `64GB`).
Quantity = Annotated[
    int | str,
    PlainValidator(_check_quantity),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY,
            "x-kubernetes-validations": [_cel("type(self) == string || self >= 0", "must not be negative")],
        }
    ),
]
# Names of objects in the PruneJob's namespace the pods refer to.
ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN)]


# A credential typed into a field the operator copies into the RayJob, its pods and Events (read by
# anyone who may view the namespace): userinfo in a URI, a credential in a query string, a Hub token,
# an AWS access key id. Credentials are named (Secrets), never typed into the spec.
SECRET_IN_TEXT = (
    r"://[^/?#\s]+@|[?&](?i:token|access_token|api_key|apikey|password|secret|x-amz-credential|x-amz-signature"
    r"|x-amz-security-token|sig|signature)=|hf_[A-Za-z0-9]{34}|(AKIA|ASIA)[0-9A-Z]{16}"
)
SECRET_MESSAGE = (
    "holds a credential (a password or token in the URI, a Hub token hf_..., an AWS access key id): the spec "
    "is copied into the RayJob, its pods and Events, which anyone who may view the namespace reads; put it in "
    "a Secret and name that (spec.model.hfTokenSecret, spec.output.s3Secret, spec.output.hub.tokenSecret)"
)
_NO_SECRET_RULE = _cel(f"!self.matches('{_cel_regex(SECRET_IN_TEXT)}')", SECRET_MESSAGE)
# An image reference pinned by a tag or a digest. Without either the kubelet pulls :latest, which can
# change between the pods of one job and between its retries, and is pulled again at every start.
IMAGE_PINNED = r"(^|/)[^/:@]+:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(@sha256:[a-f0-9]{64})?$|@sha256:[a-f0-9]{64}$"
IMAGE_MESSAGE = (
    "names no tag or digest, so the kubelet pulls :latest, which can change between the job's pods and its "
    "retries; name a tag (<image>:<version>) or a digest (<image>@sha256:<hex>)"
)


def _no_secret(value: str | None) -> str | None:
    if value is not None and re.search(SECRET_IN_TEXT, value):
        raise ValueError(SECRET_MESSAGE)
    return value


def image_unpinned(image: str) -> bool:
    """True for an image reference with neither a tag nor a digest (implicit :latest)."""
    return re.search(IMAGE_PINNED, image) is None


def _pinned_image(value: str | None) -> str | None:
    if value is not None and image_unpinned(value):
        raise ValueError(IMAGE_MESSAGE)
    return value


def _no_dotdot(value: str | None) -> str | None:
    if value is not None and re.search(DOTDOT, value):
        raise ValueError(f"{value!r} has a '..' path segment")
    return value


# --------------------------------------------------------------------------------------------- spec


class _Spec(_Model):
    """Base of the spec models: strict types (no coercion) and finite numbers."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)


class Strategy(StrEnum):
    """Layer selection strategies. `interlace` is the paper's; the rest are its ablations/baselines, and
    `auto` a job's choice among them by probes (never a plan's)."""

    INTERLACE = "interlace"  # greedy non-overlapping triplets by pack-3, pair fallback by pack-2
    OA = "oa"  # as interlace, but always drop the first layer of a window and tune the second
    TN = "tn"  # single-layer ranking by pack-1, dropped layer paired with its successor
    RANDOM = "random"  # seeded random layers
    CONSECUTIVE = "consecutive"  # the most redundant consecutive block
    SHORTGPT = "shortgpt"  # ShortGPT Block Influence: lowest 1 - cos(h_i, h_{i+1})
    AUTO = "auto"  # a job's choice among spec.pruning.candidates by probes (never a plan's strategy)


# The strategies that plan layers (every one but auto, which picks among them).
PLANNING_STRATEGIES = tuple(s for s in Strategy if s is not Strategy.AUTO)
# spec.pruning.candidates when strategy is auto and none are listed.
DEFAULT_CANDIDATES = (Strategy.INTERLACE, Strategy.SHORTGPT, Strategy.CONSECUTIVE)


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


class ModelSpec(_Spec):
    """Where the unpruned model comes from."""

    source: Annotated[str, AfterValidator(_no_dotdot), AfterValidator(_no_secret)] = Field(
        description="Hugging Face Hub id (e.g. Qwen/Qwen3-VL-4B-Instruct), a local directory, "
        "or `builtin:smollm2-135m` (the embedded default, no hub needed).",
        min_length=1,
        max_length=1024,
        pattern=PRINTABLE,
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(f"!self.matches('{_cel_regex(DOTDOT)}')", "must not contain a '..' path segment"), _NO_SECRET_RULE,
            ]
        },
    )
    revision: str | None = Field(
        default=None, description="Hub revision (branch, tag or commit).", min_length=1, max_length=256,
        pattern=NO_SPACE,
    )
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
    hf_token_secret: ObjectName | None = Field(
        default=None,
        description="Name of a Secret with key HF_TOKEN for gated models (mounted as env, never logged).",
    )


class DataSpec(_Spec):
    """A conversation dataset: FineVision on the hub, local shards in its schema, or plain text."""

    format: Literal["finevision", "text"] = Field(
        default="finevision",
        description="finevision: rows with `images` and `texts` [{user, assistant}] turns; text: rows "
        "with `text` (plain text turned into a conversation), for text-only models.",
    )
    path: Annotated[str, AfterValidator(_no_dotdot), AfterValidator(_no_secret)] = Field(
        default="HuggingFaceM4/FineVision",
        min_length=1,
        max_length=1024,
        pattern=PRINTABLE,
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(f"!self.matches('{_cel_regex(DOTDOT)}')", "must not contain a '..' path segment"), _NO_SECRET_RULE,
            ]
        },
        description="Hub dataset id (finetuning and calibration read their planned rows from its parquet "
        "files by index, evaluation streams it), a local directory / glob of parquet or jsonl shards, "
        "`builtin:english` (real English text shipped with Debian packages) or `builtin:python-docs` "
        "(Python standard library docstrings, out-of-domain evaluation text).",
    )
    subsets: list[Annotated[str, Field(min_length=1, max_length=256, pattern=NO_SPACE)]] = Field(
        default_factory=list, description="Subset (config) names; empty = all subsets.", max_length=512
    )
    split: str = Field(default="train", min_length=1, max_length=256, pattern=NO_SPACE)
    fraction: float = Field(
        default=0.01, gt=0, le=1, description="Fraction of each subset to take (paper: 1%)."
    )
    max_samples: int | None = Field(
        default=None, ge=1, le=INT32_MAX, description="Hard cap on samples after the per-subset fraction."
    )
    sampling: Literal["first", "random"] = Field(
        default="first", description="first: the first rows of each subset (the paper); random: seeded."
    )
    seed: int = Field(default=0, ge=0, le=SEED_MAX)
    max_images: int = Field(default=3, ge=0, le=1024, description="Skip samples with more images than this.")
    max_turns: int = Field(
        default=3,
        ge=1,
        le=1024,
        description="Keep at most this many turns (a user message and its answer) per conversation. The "
        "reference caps 5 messages, which is 3 turns (2 when a system message counts).",
    )
    max_pixels: int = Field(
        default=50176, ge=784, le=INT32_MAX, description="Cap on pixels per image (paper: 50,176, about 224x224)."
    )


class CalibrationSpec(_Spec):
    """Samples for the layer-similarity analysis (the paper: first user turn, chat template)."""

    data: DataSpec | None = Field(
        default=None, description="Calibration data; default: the finetuning data."
    )
    num_samples: int = Field(default=256, ge=1, le=INT32_MAX, description="Calibration samples (paper: ~24K).")
    batch_size: int = Field(default=4, ge=1, le=4096)
    max_length: int = Field(default=2048, ge=16, le=1048576)


AMOUNT_MESSAGE = (
    "set exactly one of spec.pruning.ratio, spec.pruning.numLayers, spec.pruning.ratios and spec.pruning.target"
)


class TargetSpec(_Spec):
    """Find the largest drop that keeps a retention: probes of nested plans, then the full finetune."""

    min_retention: float = Field(
        gt=0,
        le=1,
        description="Retention to keep (pruned/base on spec.evaluation's benchmarks, 0.9 = 90%): the job "
        "drops as many layers as it can while each probe's retention after a short healing stays >= it.",
    )
    max_ratio: float = Field(default=0.5, gt=0, lt=1, description="Never drop more than this fraction of layers.")
    proxy_steps: int = Field(
        default=10,
        ge=0,
        le=100_000,
        description="Finetuning steps of each probe's short healing (0: probes are not healed). The chosen "
        "plan then gets the full finetune of spec.finetune.",
    )


class ProbeSpec(_Spec):
    """The probes of spec.pruning.strategy auto: each candidate's plan briefly healed and evaluated."""

    proxy_steps: int = Field(
        default=10,
        ge=0,
        le=100_000,
        description="Finetuning steps of each candidate's probe (0: probes are not healed), as "
        "spec.pruning.target.proxySteps. The winner then gets the full finetune of spec.finetune.",
    )
    tie_margin: float = Field(
        default=0.005,
        ge=0,
        le=1,
        description="Probe retentions within this much of the best (a fraction: 0.005 = 0.5 percentage "
        "points) are a tie, and a tie goes to interlace when it is among them.",
    )


AUTO_NEEDS_EVALUATION_MESSAGE = (
    "spec.pruning.strategy: auto needs spec.evaluation.enabled: the candidates' probes are compared on "
    "their retention; enable evaluation or pick one strategy"
)
CANDIDATES_WITHOUT_AUTO_MESSAGE = (
    "spec.pruning.candidates: only read with spec.pruning.strategy: auto; set strategy: auto or remove candidates"
)
PROBE_WITHOUT_AUTO_MESSAGE = (
    "spec.pruning.probe: only read with spec.pruning.strategy: auto; set strategy: auto or remove probe"
)
AUTO_IN_CANDIDATES_MESSAGE = (
    "spec.pruning.candidates: auto is what chooses among the candidates, not one of them; list planning "
    "strategies (" + ", ".join(s.value for s in PLANNING_STRATEGIES) + ")"
)
AUTO_SWEEP_MESSAGE = (
    "spec.pruning.strategy: auto chooses one plan and cannot run a sweep (spec.pruning.ratios); set ratio, "
    "numLayers or target, or pick one strategy for the sweep"
)

AUTO_TARGET_MESSAGE = (
    "spec.pruning.strategy: auto with spec.pruning.target (candidates x drops) is not supported yet; set "
    "ratio or numLayers with auto, or pick one strategy for the target"
)


# The most decoder layers a spec can name (numLayers and protectedLayers stop at 1023): a ratio below
# 1/1024 drops floor(L x ratio) = 0 layers of every model.
MAX_DECODER_LAYERS = 1024
MIN_RATIO = 1 / MAX_DECODER_LAYERS
RATIO_FLOOR_MESSAGE = (
    f"drops no layer of any model (floor(L x ratio) = 0 for every L <= {MAX_DECODER_LAYERS} decoder layers); "
    f"use a ratio >= 1/{MAX_DECODER_LAYERS} = {MIN_RATIO:.6f}, or set spec.pruning.numLayers"
)


def _ratio_floor(value: float | None) -> float | None:
    if value is not None and value < MIN_RATIO:
        raise ValueError(RATIO_FLOOR_MESSAGE)
    return value


_RATIO_FLOOR_RULE = _cel(f"self >= {MIN_RATIO!r}", RATIO_FLOOR_MESSAGE)
# A fraction of the decoder layers: (0, 1), and at least one layer of some model.
Ratio = Annotated[
    float, Field(gt=0, lt=1, json_schema_extra={"x-kubernetes-validations": [_RATIO_FLOOR_RULE]}),
    AfterValidator(_ratio_floor),
]


class PruningSpec(_Spec):
    """How many layers to drop and how to pick them."""

    ratio: Ratio | None = Field(
        default=None,
        description="Fraction of decoder layers to drop: n = floor(L * ratio), at least 1/1024. Exactly one "
        "of ratio, numLayers, ratios and target.",
    )
    num_layers: int | None = Field(
        default=None, ge=1, le=1023,
        description="Number of decoder layers to drop. Exactly one of ratio, numLayers, ratios and target.",
    )
    ratios: list[Ratio] | None = Field(
        default=None,
        min_length=2,
        max_length=16,
        description="A ratio sweep: one analysis, then one pruned variant per ratio, finetuned "
        "concurrently on the job's Ray cluster and published under <output>/ratio-<r> (Hub: "
        "<repo>-ratio-<r>); status.results.variants holds the table. Exactly one of ratio, numLayers, "
        "ratios and target.",
    )
    strategy: Strategy = Field(
        default=Strategy.INTERLACE,
        strict=False,
        description="How layers are picked: interlace (the paper's), oa, tn, random, consecutive, shortgpt, "
        "or auto: one analysis, a plan per spec.pruning.candidates entry at the spec's amount, a short "
        "probe of each (spec.pruning.probe), then the full pipeline on the best probe (a tie within "
        "probe.tieMargin goes to interlace); status.results.auto holds the probe table.",
    )
    candidates: list[Annotated[Strategy, Field(strict=False)]] | None = Field(
        default=None,
        min_length=2,
        max_length=len(PLANNING_STRATEGIES),
        description="The strategies strategy auto chooses among (default: interlace, shortgpt, "
        "consecutive); at least 2, each once, not auto. Only with strategy auto.",
    )
    probe: ProbeSpec | None = Field(
        default=None,
        description="The probes of strategy auto (default: proxySteps 10, tieMargin 0.005). Only with "
        "strategy auto.",
    )
    protected_layers: list[Annotated[int, Field(ge=0, le=1023)]] = Field(
        default_factory=list, description="0-based decoder layers that are never dropped.", max_length=1024
    )
    seed: int = Field(default=0, ge=0, le=SEED_MAX, description="Seed for the random strategy.")
    deepstack_policy: DeepstackPolicy = Field(default=DeepstackPolicy.PROTECT, strict=False)
    freeze_lm_head: bool = Field(
        default=True,
        description="Keep lm_head frozen (the reference meant to, but left it trainable for untied "
        "embeddings).",
    )

    target: TargetSpec | None = Field(
        default=None,
        description="A retention target instead of an amount: one analysis, then a search over the nested "
        "plans it gives (each probe healed for proxySteps and evaluated), then the full finetune of the "
        "largest drop that met it. status.results.target shows every probe. Exactly one of ratio, "
        "numLayers, ratios and target.",
    )

    @model_validator(mode="after")
    def _exactly_one_amount(self) -> PruningSpec:
        given = [x for x in (self.ratio, self.num_layers, self.ratios, self.target) if x is not None]
        if len(given) != 1:
            raise ValueError(AMOUNT_MESSAGE)
        if self.ratios is not None and len(set(self.ratios)) != len(self.ratios):
            raise ValueError(f"spec.pruning.ratios {self.ratios} lists a ratio twice; list each once")
        auto = self.strategy == Strategy.AUTO
        if self.candidates is not None:
            if not auto:
                raise ValueError(CANDIDATES_WITHOUT_AUTO_MESSAGE)
            if Strategy.AUTO in self.candidates:
                raise ValueError(AUTO_IN_CANDIDATES_MESSAGE)
            twice = sorted({str(c) for c in self.candidates if self.candidates.count(c) > 1})
            if twice:
                raise ValueError(f"spec.pruning.candidates: lists {', '.join(twice)} twice; list each once")
        if self.probe is not None and not auto:
            raise ValueError(PROBE_WITHOUT_AUTO_MESSAGE)
        if auto and self.ratios is not None:
            raise ValueError(AUTO_SWEEP_MESSAGE)
        if auto and self.target is not None:
            raise ValueError(AUTO_TARGET_MESSAGE)
        return self

    @property
    def auto_candidates(self) -> list[Strategy]:
        """The strategies strategy auto chooses among (spec.pruning.candidates or the default)."""
        return list(self.candidates) if self.candidates is not None else list(DEFAULT_CANDIDATES)

    @property
    def auto_probe(self) -> ProbeSpec:
        """spec.pruning.probe or its defaults."""
        return self.probe if self.probe is not None else ProbeSpec()

    @property
    def is_sweep(self) -> bool:
        return self.ratios is not None

    def variants(self) -> list[PruningSpec]:
        """One single-amount PruningSpec per variant: itself, or one per ratio of a sweep."""
        if self.ratios is None:
            return [self]
        return [self.model_copy(update={"ratio": r, "ratios": None}) for r in self.ratios]

    def amount_field(self) -> str:
        """The field that sets how many layers go (for error messages)."""
        if self.ratios is not None:
            return "spec.pruning.ratios"
        if self.target is not None:
            return "spec.pruning.target"
        return "spec.pruning.ratio" if self.ratio is not None else "spec.pruning.numLayers"

    def layers_to_drop(self, num_layers: int) -> int:
        """n_drop for a model with `num_layers` decoder layers (floor(L * r) or numLayers).

        A sweep has one n per ratio: take them from variants()."""
        if self.ratios is not None:
            raise ValueError(
                "spec.pruning.ratios is a sweep: each ratio has its own number of layers (PruningSpec.variants())"
            )
        if self.target is not None:
            raise ValueError("spec.pruning.target: the number of layers is found by the job's probes")
        n = self.num_layers if self.num_layers is not None else math.floor(num_layers * float(self.ratio or 0))
        if n < 1:
            raise ValueError(
                f"spec.pruning.ratio={self.ratio} drops no layer of a {num_layers}-layer model; "
                f"use a ratio >= {1 / num_layers:.3f} or set numLayers"
            )
        if n > max_drop(num_layers):
            raise ValueError(
                f"spec.pruning drops {n} of {num_layers} layers; at most {max_drop(num_layers)} can go "
                "(the last layer is never a candidate and at least one other must remain)"
            )
        return n


class DistillationSpec(_Spec):
    """Distillation healing: the unpruned model (spec.model) is a frozen teacher on the finetuning
    workers; the loss is (1 - weight) x next-token cross-entropy + weight x T^2 x KL(teacher || student)
    on temperature-T softened logits, over the trained (assistant) tokens only. With topK the teacher
    runs once before training instead of next to it (see top_k)."""

    weight: float = Field(
        default=0.5, gt=0, le=1, description="Share of the KL term in the loss, in (0, 1]; 1 = distillation only."
    )
    temperature: float = Field(
        default=2.0, gt=0, le=1000, description="Softmax temperature of teacher and student logits (> 0)."
    )
    top_k: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description=(
            "Precompute the teacher when GPU memory is short: before training, every worker runs the "
            "unpruned model once over the micro-batches it will train on, keeps the top-k softened "
            "log-probabilities of each trained token in host memory and frees the teacher, so the teacher "
            "never sits next to the student's activations and logits; the KL then runs over those k tokens "
            "(the teacher renormalised over them). Absent: the teacher stays on every worker, KL over the "
            "whole vocabulary."
        ),
    )


FP16_FSDP_MESSAGE = "fp16 under FSDP needs a sharded gradient scaler, which the finetune loop does not have; use bf16 or auto"


class FinetuneSpec(_Spec):
    """Interleaved finetuning: only the plan's finetune layers train. Paper defaults."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        _cel("!(has(self.precision) && self.precision == 'fp16' && has(self.parallelism) && self.parallelism == 'fsdp')",
             FP16_FSDP_MESSAGE, ".precision"),
    ]})

    enabled: bool = True
    data: DataSpec = Field(default_factory=DataSpec)
    learning_rate: float = Field(default=1e-5, gt=0, le=1)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0, le=10)
    max_grad_norm: float = Field(default=1.0, gt=0, le=1e6)
    per_device_batch_size: int = Field(default=16, ge=1, le=4096)
    gradient_accumulation_steps: int = Field(default=2, ge=1, le=4096)
    epochs: float = Field(default=1.0, gt=0, le=1000)
    max_steps: int | None = Field(
        default=None, ge=1, le=INT32_MAX, description="Stop after this many optimizer steps."
    )
    max_length: int = Field(default=8192, ge=16, le=1048576)
    precision: Precision = Field(default=Precision.AUTO, strict=False)
    gradient_checkpointing: bool = Field(
        default=True,
        description="Activation checkpointing on the decoder layers from the lowest trainable one up "
        "(less activation memory for one more forward of those layers).",
    )
    packing: bool = Field(default=True, description="Pack sequences up to maxLength.")
    parallelism: Literal["ddp", "fsdp"] = Field(default="ddp", description="DDP or FSDP2 across workers.")
    checkpoint_every_steps: int = Field(default=500, ge=1, le=INT32_MAX)
    resume: bool = Field(default=True, description="Resume from the newest checkpoint in the output.")
    max_failures: int = Field(default=2, ge=0, le=100, description="Worker failures Ray Train recovers from.")
    distillation: DistillationSpec | None = Field(
        default=None,
        description="Heal with distillation from the unpruned model as well as the next-token loss "
        "(absent = next-token loss only). The teacher's weights take GPU memory on every worker.",
    )

    @model_validator(mode="after")
    def _fp16_fsdp(self) -> FinetuneSpec:
        if self.precision == Precision.FP16 and self.parallelism == "fsdp":
            raise ValueError(f"spec.finetune.precision: {FP16_FSDP_MESSAGE}")
        return self


class EvaluationSpec(_Spec):
    """Evaluation of pruned vs unpruned model on the same samples."""

    enabled: bool = True
    benchmarks: list[
        Annotated[
            str,
            Field(
                min_length=1, max_length=1024, pattern=NO_SPACE,
                json_schema_extra={"x-kubernetes-validations": [_NO_SECRET_RULE]},
            ),
            AfterValidator(_no_secret),
        ]
    ] = Field(
        default_factory=lambda: ["perplexity"],
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Built-in: perplexity (held-out text), or a path/URI to a local VQA set "
        "(parquet/jsonl: image, question, choices, answer). Harness tasks: lmms-eval:<task>.",
    )
    data: DataSpec | None = Field(default=None, description="Held-out data for perplexity.")
    out_of_domain_data: DataSpec | None = Field(
        default=None,
        description="Held-out text of another kind than the finetuning data, never trained on (e.g. "
        "builtin:python-docs). With it, perplexity is scored on both: `perplexity (out of domain)` on this "
        "is the headline (relativePerformance, retention targets, sweeps) and `perplexity (in domain)` on "
        "`data` is reported beside it. Needs `perplexity` in benchmarks.",
    )
    max_samples: int = Field(default=128, ge=1, le=INT32_MAX)
    batch_size: int = Field(default=4, ge=1, le=4096)
    max_new_tokens: int = Field(default=16, ge=1, le=65536)
    speed: bool = Field(default=True, description="Measure prefill (TTFT) and decode speedup.")

    @field_validator("benchmarks")
    @classmethod
    def _each_once(cls, v: list[str]) -> list[str]:
        twice = sorted({b for b in v if v.count(b) > 1})
        if twice:
            raise ValueError(f"lists {', '.join(twice)} more than once; list each benchmark once")
        return v


class HubOutput(_Spec):
    repo: str = Field(
        min_length=3, max_length=200,
        description="Hub repo id, e.g. my-org/qwen3-vl-4b-interlace-20.",
        json_schema_extra={
            "pattern": HUB_REPO,
            "x-kubernetes-validations": [
                _cel("!self.contains('..') && !self.contains('--')", "must not contain '..' or '--'")
            ],
        },
    )
    private: bool = True
    token_secret: ObjectName = Field(default="hf-token", description="Secret with key HF_TOKEN.")

    @field_validator("repo")
    @classmethod
    def _repo_id(cls, v: str) -> str:
        if not re.fullmatch(HUB_REPO[1:-1], v) or ".." in v or "--" in v:
            raise ValueError(f"{v!r} is not a Hub repo id; use <user-or-org>/<name>")
        return v


class OutputSpec(_Spec):
    """Where the artifacts of the run go (scores.json, plan.json, heatmap.png, model/, results.json)."""

    uri: str = Field(
        default="file://./interlace-output",
        description="s3://<bucket>/<prefix>, pvc://<claim>/<path> (the claim must be "
        "spec.resources.pvcName), hf://<org>/<name>; `interlace run` also takes a path or file:// "
        "(a PruneJob in a cluster needs one of the durable schemes: a pod's filesystem is lost with it).",
        min_length=1,
        max_length=1024,
        pattern=OUTPUT_URI,
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(f"!self.matches('{_cel_regex(DOTDOT)}')", "must not contain a '..' path segment"),
                _NO_SECRET_RULE,
                _cel(
                    "!self.contains('://') || self.matches('^(file|pvc|s3|hf)://')",
                    "the scheme must be file://, pvc://, s3:// or hf://",
                ),
                _cel("!self.startsWith('s3://') || self.matches('^s3://[^/]+')", "s3:// needs a bucket: s3://<bucket>/<prefix>"),
                _cel("!self.startsWith('pvc://') || self.matches('^pvc://[^/]+')", "pvc:// needs a claim: pvc://<claim>/<path>"),
                _cel("!self.startsWith('hf://') || self.matches('^hf://[^/]+/[^/]+$')", "hf:// needs <org>/<name>"),
            ]
        },
    )
    s3_secret: ObjectName | None = Field(
        default=None, description="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_ENDPOINT_URL."
    )
    hub: HubOutput | None = None
    save_checkpoints: bool = True

    @field_validator("uri")
    @classmethod
    def _uri_shape(cls, v: str) -> str:
        _no_dotdot(v)
        _no_secret(v)
        scheme, sep, rest = v.partition("://")
        if sep and scheme not in ("file", "pvc", "s3", "hf"):
            raise ValueError(f"the scheme must be file://, pvc://, s3:// or hf:// (got {scheme}://)")
        if sep and scheme == "s3" and not rest.split("/")[0]:
            raise ValueError("s3:// needs a bucket: s3://<bucket>/<prefix>")
        if sep and scheme == "pvc" and not rest.split("/")[0]:
            raise ValueError("pvc:// needs a claim: pvc://<claim>/<path>")
        if sep and scheme == "hf" and not re.fullmatch(r"[^/]+/[^/]+", rest):
            raise ValueError("hf:// needs <org>/<name>")
        return v


_TOLERATION_RULES: list[JsonValue] = [
    _cel("!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
         "value must be empty when operator is Exists", ".value"),
    _cel("has(self.key) || (has(self.operator) && self.operator == 'Exists')",
         "a toleration without a key must have operator Exists", ".operator"),
    _cel("!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
         "tolerationSeconds needs effect NoExecute", ".tolerationSeconds"),
]


class Toleration(_Spec):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _TOLERATION_RULES})

    key: str | None = Field(default=None, max_length=316, pattern=LABEL_KEY)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(default=None, max_length=63, pattern=LABEL_VALUE)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0, le=INT32_MAX)

    @model_validator(mode="after")
    def _pod_rules(self) -> Toleration:
        # The pod validation KubeRay's pods would fail (after the RayJob exists, invisible to the user).
        if self.operator == "Exists" and self.value:
            raise ValueError("value must be empty when operator is Exists")
        if self.key is None and self.operator != "Exists":
            raise ValueError("a toleration without a key must have operator Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self


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
RESERVED_ENV = frozenset({"INTERLACE_PRUNEJOB", "INTERLACE_STATUS_TOKEN_DIR"})
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
            if isinstance(e.get("value"), str) and re.search(SECRET_IN_TEXT, e["value"]):
                raise ValueError(
                    f"env {e['name']}: the value {SECRET_MESSAGE}; or give the env entry "
                    "valueFrom.secretKeyRef"
                )
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
        reserved = sorted(RESERVED_VOLUMES.intersection(names))
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
            if image_unpinned(c["image"]):
                raise ValueError(f"init container {c['name']}: its image {IMAGE_MESSAGE}")
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


def pod_override_violations(overrides: list[PodTemplateOverride], level: str) -> list[str]:
    """Every Pod Security problem of the overrides (interlace.schema.podpolicy), one line each, named by
    its full field path under spec.resources."""
    p: list[str] = []
    for j, o in enumerate(overrides):
        where = f"spec.resources.podTemplateOverrides[{j}]"
        if o.metadata:
            p += podpolicy.annotation_violations(o.metadata.annotations, f"{where}.metadata.annotations")
        if o.spec is None:
            continue
        ws = f"{where}.spec"
        p += podpolicy.pod_security_context_violations(o.spec.security_context, f"{ws}.securityContext", level)
        for i, v in enumerate(o.spec.volumes):
            p += podpolicy.volume_violations(v, f"{ws}.volumes[{i}]", level)
        for i, ic in enumerate(o.spec.init_containers):
            p += podpolicy.container_violations(ic, f"{ws}.initContainers[{i}]", level)
        for i, c in enumerate(o.spec.containers):
            p += podpolicy.container_security_context_violations(
                c.security_context, f"{ws}.containers[{i}].securityContext", level
            )
    return p


_NODE_SELECTOR_RULE = _cel(
    f"self.all(k, k.size() <= 316 && k.matches('{_cel_regex(LABEL_KEY)}'))",
    "keys must be label keys ([prefix/]name)",
)


_MULTIKUEUE = "kueue.x-k8s.io/multikueue"
MULTIKUEUE_MESSAGE = (
    f"{_MULTIKUEUE} is not supported: MultiKueue copies only the RayJob to a worker cluster, where its pods "
    "would name the per-job ServiceAccount and report their status to a PruneJob, both of which exist only "
    "on this manager cluster; install the operator on the worker clusters and run the PruneJob there "
    "(spec.resources.queueName for their Kueue)"
)
_RESOURCES_RULES: list[JsonValue] = [
    _cel(f"!has(self.managedBy) || self.managedBy != '{_MULTIKUEUE}'", MULTIKUEUE_MESSAGE, ".managedBy"),
]


class ResourcesSpec(_Spec):
    """The Ray cluster KubeRay creates (ignored in local mode except `workers`/`gpusPerWorker`)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _RESOURCES_RULES})

    image: (
        Annotated[
            str,
            Field(
                min_length=1, max_length=512, pattern=NO_SPACE,
                json_schema_extra={"x-kubernetes-validations": [
                    _cel(f"self.matches('{_cel_regex(IMAGE_PINNED)}')", IMAGE_MESSAGE), _NO_SECRET_RULE,
                ]},
            ),
            AfterValidator(_pinned_image),
            AfterValidator(_no_secret),
        ]
        | None
    ) = Field(default=None, description="Runtime image, pinned by a tag or a digest; default from the operator.")
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
    cpu: Quantity = Field(default="8", description="CPU request/limit per worker pod (a quantity: 8, 500m).")
    memory: Quantity = Field(default="64Gi", description="Memory request/limit per worker pod (a quantity: 64Gi).")
    gpu_memory: Quantity = Field(
        default="80Gi",
        description="Memory of one worker GPU (e.g. 80Gi for an H100/A100-80GB, 141G for an H200). "
        "Before launch the job estimates what finetuning needs per GPU from the model config and "
        "refuses a plan that does not fit.",
    )
    head_cpu: Quantity = Field(default="2", description="CPU of the Ray head pod (runs the driver; a quantity).")
    head_memory: Quantity = Field(default="8Gi", description="Memory of the Ray head pod (a quantity).")
    head_gpus: int = Field(
        default=0,
        ge=0,
        le=16,
        description="GPUs of the Ray head pod, which runs the driver. 0 (default): the driver only "
        "orchestrates (it holds no model weights); the GPUs belong to the worker pods.",
    )
    node_selector: dict[
        Annotated[str, Field(max_length=316, pattern=LABEL_KEY)],
        Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)],
    ] = Field(
        default_factory=dict, max_length=64, json_schema_extra={"x-kubernetes-validations": [_NODE_SELECTOR_RULE]}
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64)
    priority_class_name: ObjectName | None = Field(
        default=None, description="PriorityClass of the Ray pods; must be in the operator's allow-list."
    )
    queue_name: str | None = Field(
        default=None, description="Kueue LocalQueue (sets kueue.x-k8s.io/queue-name on the RayJob).",
        min_length=1, max_length=63, pattern=DNS1123_SUBDOMAIN,
    )
    managed_by: Literal["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"] | None = Field(
        default=None,
        description="RayJob spec.managedBy: the controller that runs the RayJob. Default: KubeRay. "
        "kueue.x-k8s.io/multikueue is refused: the PruneJob's identity and status live on the cluster "
        "that runs the operator, not on a MultiKueue worker.",
    )
    pvc_name: ObjectName | None = Field(
        default=None, description="PersistentVolumeClaim mounted at /data (model cache, pvc:// output)."
    )
    service_account_name: ObjectName | None = Field(
        default=None,
        description="Use this ServiceAccount instead of the one the operator creates; must be in the "
        "operator's allow-list.",
    )
    pod_template_overrides: Annotated[list[PodTemplateOverride], AfterValidator(check_pod_overrides)] = Field(
        default_factory=list,
        description="Pod overrides for the Ray head and/or workers (affinity, topology spread, volumes, env, "
        "labels, annotations, securityContext, imagePullSecrets, /dev/shm size), applied in order.",
    )

    pod_security: Literal["restricted", "baseline"] = Field(
        default="restricted",
        description="Pod Security level every pod the operator creates meets (head, workers, submitter, "
        "init containers): restricted (default) or baseline. Baseline always holds; overrides that break "
        "the level are refused.",
    )

    @model_validator(mode="after")
    def _pod_security(self) -> ResourcesSpec:
        problems = pod_override_violations(self.pod_template_overrides, self.pod_security)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _no_multikueue(self) -> ResourcesSpec:
        if self.managed_by == _MULTIKUEUE:
            raise ValueError(f"spec.resources.managedBy: {MULTIKUEUE_MESSAGE}")
        return self


FLASH_WITHOUT_GPUS_MESSAGE = (
    "flash_attention_2 runs on GPUs only and spec.resources.gpusPerWorker is 0; use sdpa (PyTorch's own "
    "kernels, on every device) or give the workers GPUs"
)
_SPEC_RULES: list[JsonValue] = [
    _cel(
        "!has(self.model.attnImplementation) || self.model.attnImplementation != 'flash_attention_2' || "
        "!has(self.resources) || !has(self.resources.gpusPerWorker) || self.resources.gpusPerWorker > 0",
        FLASH_WITHOUT_GPUS_MESSAGE,
        ".model.attnImplementation",
    ),
    _cel(
        "!self.output.uri.startsWith('pvc://') || (has(self.resources.pvcName) && "
        "self.output.uri.split('/')[2] == self.resources.pvcName)",
        "spec.output.uri: a pvc:// output needs spec.resources.pvcName set to the same claim",
        ".output.uri",
    ),
    _cel(
        "!has(self.pruning.strategy) || self.pruning.strategy != 'auto' || !has(self.evaluation) || "
        "!has(self.evaluation.enabled) || self.evaluation.enabled",
        AUTO_NEEDS_EVALUATION_MESSAGE,
        ".pruning.strategy",
    ),
]

# spec.pruning's cross-field rules of strategy auto (interlace.schema.crd adds them beside the amount rule).
AUTO_RULES: list[dict[str, Any]] = [
    _cel("!has(self.candidates) || (has(self.strategy) && self.strategy == 'auto')",
         CANDIDATES_WITHOUT_AUTO_MESSAGE, ".candidates"),
    _cel("!has(self.candidates) || self.candidates.all(c, c != 'auto')", AUTO_IN_CANDIDATES_MESSAGE, ".candidates"),
    _cel("!has(self.probe) || (has(self.strategy) && self.strategy == 'auto')", PROBE_WITHOUT_AUTO_MESSAGE, ".probe"),
    _cel("!has(self.ratios) || !has(self.strategy) || self.strategy != 'auto'", AUTO_SWEEP_MESSAGE, ".strategy"),
    _cel("!has(self.target) || !has(self.strategy) || self.strategy != 'auto'", AUTO_TARGET_MESSAGE, ".strategy"),
]


class PruneJobSpec(_Spec):
    """spec of a PruneJob."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _SPEC_RULES})

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
    active_deadline_seconds: int | None = Field(
        default=None, ge=60, le=INT32_MAX,
        description="Fail the PruneJob this long after it last began to run (status.activeSince: queue time "
        "and suspensions do not count, as for a Job; retries and their backoff do).",
    )
    ttl_seconds_after_finished: int = Field(
        default=600, ge=0, le=INT32_MAX, description="Delete the Ray cluster this long after the job finishes."
    )
    start_deadline_seconds: int = Field(
        default=1800, ge=30, le=INT32_MAX,
        description="Fail an attempt whose Ray pods are not all running and ready this long after KubeRay "
        "started its Ray cluster (queue time and suspensions do not count): an image that cannot be "
        "pulled, a missing Secret, pods no node can take, pods admission or a quota refuses. The "
        "PruneJob fails naming what its pods wait on, its Ray cluster is deleted (the GPUs it holds are "
        "released), and it is not retried (a retry would wait on the same cause).",
    )

    @model_validator(mode="after")
    def _flash_needs_gpus(self) -> PruneJobSpec:
        if self.model.attn_implementation == "flash_attention_2" and self.resources.gpus_per_worker == 0:
            raise ValueError(f"spec.model.attnImplementation: {FLASH_WITHOUT_GPUS_MESSAGE}")
        return self

    @model_validator(mode="after")
    def _auto_needs_evaluation(self) -> PruneJobSpec:
        if self.pruning.strategy == Strategy.AUTO and not self.evaluation.enabled:
            raise ValueError(AUTO_NEEDS_EVALUATION_MESSAGE)
        return self

    @model_validator(mode="after")
    def _pvc_output(self) -> PruneJobSpec:
        uri = self.output.uri
        if uri.startswith("pvc://") and uri[len("pvc://"):].split("/")[0] != self.resources.pvc_name:
            raise ValueError("spec.output.uri: a pvc:// output needs spec.resources.pvcName set to the same claim")
        return self

    @field_validator("pruning")
    @classmethod
    def _protected_sorted(cls, v: PruningSpec) -> PruningSpec:
        if len(set(v.protected_layers)) != len(v.protected_layers):
            raise ValueError("spec.pruning.protectedLayers has duplicates")
        return v


# ------------------------------------------------------------------------------------------- status



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
        if self.strategy == Strategy.AUTO:
            raise ValueError("plan.strategy: auto chooses among strategies; a plan names the one that planned it")
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


def retention_line(out_of_domain: float | None, in_domain: float | None) -> str | None:
    """The headline of a run with spec.evaluation.outOfDomainData, both retentions labelled."""

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.1f}%"

    if out_of_domain is None and in_domain is None:
        return None
    return f"retention (out of domain) {pct(out_of_domain)}, in domain {pct(in_domain)}"


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
    domain: Literal["in", "out"] | None = Field(
        default=None,
        description="Perplexity with spec.evaluation.outOfDomainData: `out` (the headline) or `in` (the "
        "finetuning domain, left out of relativePerformance).",
    )


class VariantResult(_Model):
    """One row of a ratio sweep's table (status.results.variants)."""

    ratio: float
    state: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    message: str | None = None
    layers_dropped: int | None = None
    layers_after: int | None = None
    params_after: int | None = None
    relative_performance: float | None = Field(default=None, description="Mean pruned/base, percent.")
    prefill_speedup: float | None = None
    decode_speedup: float | None = None
    output_uri: str | None = None


class ProbeResult(_Model):
    """One probe of a retention target: a plan of the nested family, briefly healed and evaluated."""

    layers_dropped: int
    retention: float | None = Field(default=None, description="Proxy retention, a fraction (0.9 = 90%).")
    meets: bool | None = None


class TargetResult(_Model):
    """status.results.target: the search of spec.pruning.target and how the chosen plan did."""

    min_retention: float
    max_layers: int = Field(description="The most layers maxRatio allows to drop.")
    probes: list[ProbeResult] = Field(default_factory=list)
    layers_dropped: int | None = Field(default=None, description="The chosen plan (largest drop that met it).")
    final_retention: float | None = Field(default=None, description="After the full finetune, a fraction.")
    met: bool | None = Field(default=None, description="final retention >= minRetention; false is a miss.")
    message: str | None = None


class CandidateResult(_Model):
    """One row of strategy auto's probe table (status.results.auto.candidates)."""

    strategy: Strategy
    state: Literal["Pending", "Planned", "CannotPlan", "Running", "Probed", "Failed"] = Field(
        default="Pending",
        description="Planned: a dry run's plan; CannotPlan: the strategy cannot drop that many layers here "
        "(reason says why); Probed: its probe's retention is in; Failed: its probe failed (reason).",
    )
    layers_dropped: int | None = None
    drop: list[int] = Field(default_factory=list, description="The layers its plan drops (original indices).")
    retention: float | None = Field(default=None, description="Probe retention, a fraction (0.9 = 90%).")
    chosen: bool = False
    reason: str | None = Field(default=None, description="Why it won, or how it compared with the winner.")


class AutoResult(_Model):
    """status.results.auto: strategy auto's candidates, their probes, the winner and why."""

    proxy_steps: int
    tie_margin: float = Field(description="Probe retentions this close to the best tie (a fraction).")
    candidates: list[CandidateResult] = Field(default_factory=list)
    winner: Strategy | None = None
    reason: str | None = Field(default=None, description="Why the winner won.")
    final_retention: float | None = Field(default=None, description="The winner after the full finetune, a fraction.")


class Results(_Model):
    output_uri: str | None = None
    hub_url: str | None = None
    layers_before: int | None = None
    layers_after: int | None = None
    params_before: int | None = None
    params_after: int | None = None
    relative_performance: float | None = Field(
        default=None,
        description="Mean pruned/base over the benchmarks, percent; with an out-of-domain perplexity, the "
        "in-domain one is left out (it rewards adapting to the finetuning corpus).",
    )
    retention_out_of_domain: float | None = Field(
        default=None, description="Perplexity retention (base/pruned, percent) on spec.evaluation.outOfDomainData."
    )
    retention_in_domain: float | None = Field(
        default=None, description="Perplexity retention (percent) on held-out text of the finetuning domain."
    )
    benchmarks: list[BenchmarkResult] = Field(default_factory=list)
    prefill_speedup: float | None = None
    decode_speedup: float | None = None
    variants: list[VariantResult] | None = Field(
        default=None, description="A ratio sweep's variants, one row per spec.pruning.ratios entry."
    )
    target: TargetResult | None = None
    auto: AutoResult | None = Field(default=None, description="Strategy auto's probe table and winner.")
    summary: str | None = Field(
        default=None,
        description="A sweep's variants, a target's search or strategy auto's probes in one line, e.g. "
        "`0.1: 97.2%, 0.2: 93.7%` (kubectl column).",
    )

    def retention_line(self) -> str | None:
        """`retention (out of domain) 93.1%, in domain 104.2%` (None without the labelled perplexities)."""
        return retention_line(self.retention_out_of_domain, self.retention_in_domain)


class PruneJobStatus(_Model):
    """status of a PruneJob. Writers: operator = phase, conditions, observedGeneration, rayJob,
    attempts, startTime, activeSince, completionTime; job = stage, progress, plan, results."""

    phase: Phase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    ray_job: RayJobStatus | None = None
    attempts: int | None = None
    start_time: str | None = None
    active_since: str | None = Field(
        default=None,
        description="When the PruneJob last began to run: its RayJob created and not suspended (under Kueue: "
        "admitted), or resumed after spec.suspend or an eviction. spec.activeDeadlineSeconds counts from here; "
        "unset while it is queued or suspended.",
    )
    completion_time: str | None = None
    stage: Phase | None = None
    progress: Progress | None = None
    plan: LayerPlan | None = None
    results: Results | None = None


class ObjectMeta(BaseModel):
    """metadata of a PruneJob document: Kubernetes' ObjectMeta fields, none other (the API server refuses
    an unknown one under strict field validation, as kubectl sends it; so does `interlace validate`)."""

    model_config = ConfigDict(extra="forbid", strict=True, alias_generator=to_camel, populate_by_name=True)
    # A DNS-1035 label: the RayJob, RayCluster and Service names derive from it (KubeRay refuses
    # others), and the operator's child names fit every limit for any name of at most 63 characters.
    name: str = Field(default="local", min_length=1, max_length=63, pattern=DNS1035_LABEL)
    namespace: str | None = Field(default=None, max_length=63)
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    # Written by the API server (a document read back with kubectl get -o yaml carries them).
    generate_name: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    deletion_grace_period_seconds: int | None = None
    finalizers: list[str] | None = None
    owner_references: list[dict[str, Any]] | None = None
    managed_fields: list[dict[str, Any]] | None = None
    self_link: str | None = None


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
        loc = ""
        for p in e["loc"]:
            if str(p).startswith("function-after"):
                continue
            # list indices as Kubernetes writes them: spec.resources.tolerations[0].key
            loc += f"[{p}]" if isinstance(p, int) else (f".{p}" if loc else str(p))
        loc = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "document"
        # A model validator that names deeper fields itself ("Value error, <loc>.x[0].y: ...", one line
        # each, as the Pod Security policy does): those paths, as they are.
        inner = e["msg"].removeprefix("Value error, ").splitlines()
        if e["msg"].startswith("Value error, ") and all(line.startswith(loc) for line in inner):
            lines += inner
            continue
        lines.append(f"{loc}: {e['msg']}")
    return "\n".join(lines)


DURABLE_OUTPUT_MESSAGE = (
    "a PruneJob in a cluster needs a durable output: s3://<bucket>/<prefix>, pvc://<claim>/<path> or "
    "hf://<org>/<name> (a path or file:// would be lost with the Ray head pod)"
)


SHARED_WORK_DIR_MESSAGE = (
    "a PruneJob on a Ray cluster writes files every Ray pod must read (the pruned model the workers "
    "finetune, their checkpoints), and an s3:// or hf:// spec.output.uri is only uploaded at the end, "
    "so it needs shared storage for them: set spec.output.uri: pvc://<claim>/<path> with "
    "spec.resources.pvcName: <claim>, or keep the s3:// / hf:// output and set spec.resources.pvcName "
    "to a ReadWriteMany claim for the work files"
)


def shared_work_dir_error(spec: PruneJobSpec) -> str | None:
    """SHARED_WORK_DIR_MESSAGE when a PruneJob on a Ray cluster of several pods has nowhere every pod
    can read the stages' files: its output is not on a claim (pvc://) and spec.resources.pvcName (the
    claim the operator mounts as INTERLACE_WORK_DIR) is unset. None when it has. The one rule behind
    `interlace validate --cluster`, the operator's InvalidSpec and `interlace run`'s refusal."""
    if spec.output.uri.startswith("pvc://") or spec.resources.pvc_name:
        return None
    return SHARED_WORK_DIR_MESSAGE


def cluster_spec_errors(spec: PruneJobSpec) -> list[str]:
    """What a PruneJob run by the operator needs beyond a local `interlace run` (the CRD states the
    same rules; the operator and `interlace run` inside the RayJob check them again)."""
    errors = []
    if spec.output.uri.partition("://")[0] not in DURABLE_SCHEMES or "://" not in spec.output.uri:
        errors.append(f"spec.output.uri: {DURABLE_OUTPUT_MESSAGE}")
    elif (shared := shared_work_dir_error(spec)) is not None:
        errors.append(f"spec.resources.pvcName: {shared}")
    return errors


def parse_prunejob(doc: dict[str, Any], *, cluster: bool = False) -> PruneJob:
    """Validate a PruneJob document (a dict from YAML). Raises SpecError naming the fields.
    `cluster`: also apply the rules of a PruneJob the operator runs (`cluster_spec_errors`)."""
    if not isinstance(doc, dict):
        raise SpecError("document: expected a PruneJob mapping (apiVersion, kind, metadata, spec)")
    try:
        job = PruneJob.model_validate(doc)
    except ValidationError as err:
        raise SpecError(format_validation_error(err)) from None
    if cluster:
        errors = cluster_spec_errors(job.spec)
        if errors:
            raise SpecError("\n".join(errors))
    return job


def load_prunejob(path: str | Path, *, cluster: bool = False) -> PruneJob:
    """Read and validate a PruneJob YAML file (the first document of kind PruneJob). `env:NAME` reads
    the document from environment variable NAME (how the operator's RayJob hands over the spec)."""
    import os

    import yaml

    p = Path(path)
    if str(path).startswith("env:"):
        text = os.environ.get(str(path)[len("env:"):])
        if text is None:
            raise SpecError(f"{path}: the environment variable is not set")
    elif not p.is_file():
        raise SpecError(f"{p}: no such file (pass the PruneJob YAML with -f)")
    else:
        text = p.read_text()
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise SpecError(f"{p}: not valid YAML: {err}") from None
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind", "PruneJob") == "PruneJob"]
    if not jobs:
        raise SpecError(f"{p}: no document of kind PruneJob")
    return parse_prunejob(jobs[0], cluster=cluster)
