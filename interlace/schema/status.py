"""The Kubernetes API shapes of a PruneJob's status: the phase, conditions (with observedGeneration),
the mirror of the RayJob's status, progress. The job's own result formats (LayerPlan, Results) and the
composed PruneJobStatus are in spec.py, next to the spec they answer. pydantic only."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from interlace.schema.base import ApiModel as _Model


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
