"""The Argo CD health check for PruneJobs, run in real Lua interpreters against sample objects.

Argo CD runs health scripts in gopher-lua, a Lua 5.1 implementation, so the script is executed in
lupa's Lua 5.1 (and LuaJIT, also 5.1 semantics, plus Lua 5.4 to catch 5.1-only constructs that a
future Argo CD might reject). Every phase of interlace.schema.status.Phase and every condition type the
operator writes is covered; the sample statuses are validated with the real pydantic status model
first, so they are objects the operator could actually write.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from interlace.schema.spec import PruneJobStatus
from interlace.schema.status import Phase

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "manifests" / "gitops" / "argocd-health.lua"
CM_PATCH = REPO / "manifests" / "gitops" / "argocd-cm-patch.yaml"
HEALTH_KEY = "resource.customizations.health.interlace.dev_PruneJob"
RUNTIMES = ["lupa.lua51", "lupa.luajit21", "lupa.lua54"]
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def _to_lua(lua: Any, value: Any) -> Any:
    """Python JSON-like data -> Lua tables (lists become 1-based sequences, like Argo CD's decoder)."""
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def run_health(obj: dict[str, Any], runtime: str = "lupa.lua51") -> dict[str, str]:
    mod = importlib.import_module(runtime)
    lua = mod.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = _to_lua(lua, obj)
    result = lua.execute(SCRIPT.read_text())
    out = {"status": result["status"], "message": result["message"]}
    assert out["status"] in ARGO_STATUSES, out
    assert isinstance(out["message"], str), out
    return out


def cond(ctype: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-11-23T12:00:00Z",
        "observedGeneration": 1,
    }


def prunejob(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "interlace.dev/v1alpha1",
        "kind": "PruneJob",
        "metadata": {"name": "qwen3-vl-4b-20", "namespace": "ml", "generation": generation},
        "spec": {"model": {"source": "Qwen/Qwen3-VL-4B-Instruct"}, "pruning": {"ratio": 0.2}},
    }
    if status is not None:
        PruneJobStatus.model_validate(status)  # a status the operator could really write
        obj["status"] = status
    return obj


def running(phase: str, **progress: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": 1,
        "conditions": [
            cond("Ready", "False", "Running" if phase != "Pending" else "Pending", f"{phase} in progress"),
            cond("Running", "True" if phase != "Pending" else "False", "Running"),
            cond("Succeeded", "False", "Running"),
            cond("Failed", "False", "Running"),
            cond("Suspended", "False", "NotSuspended"),
            cond("Stalled", "False", "Running"),
        ],
    }
    if phase in {p.value for p in (Phase.ANALYZING, Phase.PLANNING, Phase.FINETUNING)}:
        status["stage"] = phase
    if progress:
        status["progress"] = progress
    return status


IN_PROGRESS = ["Pending", "Analyzing", "Planning", "Finetuning", "Evaluating", "Publishing"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_script_runs_in_every_lua(runtime: str) -> None:
    out = run_health(prunejob(running("Finetuning", percent=42.7, step=100, totalSteps=300)), runtime)
    assert out == {"status": "Progressing", "message": "Finetuning (42%, step 100/300): Running: Finetuning in progress"}


@pytest.mark.parametrize("phase", IN_PROGRESS)
def test_in_progress_phases_are_progressing(phase: str) -> None:
    out = run_health(prunejob(running(phase)))
    assert out["status"] == "Progressing"
    assert out["message"].startswith(phase)


def test_every_phase_is_mapped() -> None:
    """A new Phase added to interlace.schema.spec without a mapping here fails this test."""
    expected = {p: "Progressing" for p in IN_PROGRESS}
    expected |= {"Succeeded": "Healthy", "Failed": "Degraded", "Suspended": "Suspended"}
    assert set(expected) == {p.value for p in Phase}
    for phase, health in expected.items():
        # phase only, no conditions yet (an operator that wrote the phase first)
        assert run_health(prunejob({"phase": phase, "observedGeneration": 1}))["status"] == health, phase


def test_succeeded_condition_is_healthy() -> None:
    status = {
        "phase": "Succeeded",
        "observedGeneration": 1,
        "conditions": [
            cond("Ready", "True", "Succeeded", "model published"),
            cond("Succeeded", "True", "Succeeded", "model published to s3://bucket/run"),
            cond("Failed", "False", "Succeeded"),
        ],
        "results": {"relativePerformance": 88.0, "layersBefore": 36, "layersAfter": 29},
    }
    out = run_health(prunejob(status))
    assert out == {"status": "Healthy", "message": "Succeeded: model published to s3://bucket/run"}


def test_dry_run_plan_is_healthy() -> None:
    status = {
        "phase": "Succeeded",
        "observedGeneration": 1,
        "conditions": [cond("Succeeded", "True", "DryRunPlanned", "plan in status.plan")],
    }
    assert run_health(prunejob(status)) == {"status": "Healthy", "message": "DryRunPlanned: plan in status.plan"}


def test_failed_condition_is_degraded_with_reason() -> None:
    status = {
        "phase": "Failed",
        "observedGeneration": 1,
        "conditions": [
            cond("Ready", "False", "BackoffLimitExceeded", "3 attempts failed"),
            cond("Failed", "True", "BackoffLimitExceeded", "3 attempts failed; last: CUDA OOM"),
        ],
    }
    out = run_health(prunejob(status))
    assert out == {"status": "Degraded", "message": "BackoffLimitExceeded: 3 attempts failed; last: CUDA OOM"}


def test_invalid_spec_is_degraded() -> None:
    status = {"phase": "Failed", "observedGeneration": 1, "conditions": [cond("Failed", "True", "InvalidSpec")]}
    assert run_health(prunejob(status)) == {"status": "Degraded", "message": "InvalidSpec"}


def test_failed_wins_over_succeeded() -> None:
    status = {
        "phase": "Failed",
        "observedGeneration": 1,
        "conditions": [cond("Succeeded", "True", "Succeeded"), cond("Failed", "True", "PublishFailed", "403")],
    }
    assert run_health(prunejob(status))["status"] == "Degraded"


def test_suspended_condition() -> None:
    status = {
        "phase": "Suspended",
        "observedGeneration": 1,
        "conditions": [cond("Suspended", "True", "SuspendedByUser", "spec.suspend is true")],
    }
    assert run_health(prunejob(status)) == {"status": "Suspended", "message": "SuspendedByUser: spec.suspend is true"}


def test_conditions_beat_a_stale_phase() -> None:
    """Conditions are the source of truth: a False Failed condition is not Degraded whatever the phase."""
    status = {
        "phase": "Failed",
        "observedGeneration": 1,
        "conditions": [cond("Failed", "False", "Retrying"), cond("Succeeded", "False", "Retrying")],
    }
    assert run_health(prunejob(status))["status"] == "Unknown"
    status["phase"] = "Analyzing"
    assert run_health(prunejob(status))["status"] == "Progressing"


def test_no_status_yet_is_progressing() -> None:
    out = run_health(prunejob(None))
    assert out["status"] == "Progressing"
    assert "operator" in out["message"]


def test_empty_status_is_progressing() -> None:
    assert run_health(prunejob({}))["status"] == "Progressing"


def test_unobserved_generation_is_progressing_even_after_success() -> None:
    status = {"phase": "Succeeded", "observedGeneration": 1, "conditions": [cond("Succeeded", "True", "Succeeded")]}
    out = run_health(prunejob(status, generation=2))
    assert out == {"status": "Progressing", "message": "Waiting for the operator to observe generation 2"}


def test_unknown_phase_is_unknown() -> None:
    obj = prunejob(None)
    obj["status"] = {"phase": "Exploded", "observedGeneration": 1}
    assert run_health(obj) == {"status": "Unknown", "message": "Unknown PruneJob phase Exploded"}


def test_argocd_cm_patch_embeds_the_script_verbatim() -> None:
    doc = yaml.safe_load(CM_PATCH.read_text())
    assert doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "argocd-cm"
    assert doc["data"][HEALTH_KEY] == SCRIPT.read_text()


def test_gitops_doc_embeds_the_script() -> None:
    doc = (REPO / "docs" / "gitops.md").read_text()
    assert HEALTH_KEY in doc
    assert "manifests/gitops/argocd-health.lua" in doc
    assert "healthCheckExprs" in doc  # Flux readiness
    assert "Stalled" in doc and "kstatus" in doc  # Flux's default check, without healthCheckExprs


# ---------------------------------------------- statuses written by the operator's own status logic


def _operator_status(phase: str, reason: str, message: str, *, ready: bool = False) -> dict[str, Any]:
    from datetime import UTC, datetime

    from interlace_operator.status import desired_conditions, merge_conditions

    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    conditions = merge_conditions(
        None, desired_conditions(phase, reason, message, ready=ready), generation=1, now=now
    )
    return {"phase": phase, "observedGeneration": 1, "conditions": conditions}


def _rayjob(js: str = "", jds: str = "", reason: str = "", message: str = "") -> dict[str, Any]:
    return {"metadata": {"name": "qwen3-vl-4b-20-a1"},
            "status": {"jobStatus": js, "jobDeploymentStatus": jds, "reason": reason, "message": message}}


# (RayJob status, stage the job reported, dry run) -> Argo CD health, through interlace_operator.status
OPERATOR_CASES = [
    (_rayjob(), None, False, "Progressing"),  # ClusterInitializing
    (_rayjob(jds="Initializing"), None, False, "Progressing"),
    (_rayjob(jds="Running"), None, False, "Progressing"),  # JobSubmitted
    (_rayjob(js="RUNNING", jds="Running"), None, False, "Progressing"),  # JobRunning, no stage yet
    (_rayjob(js="RUNNING", jds="Running"), "Finetuning", False, "Progressing"),
    (_rayjob(js="RUNNING", jds="Running"), "Publishing", False, "Progressing"),
    (_rayjob(jds="Retrying"), None, False, "Progressing"),  # KubeRayRetrying
    (_rayjob(js="SUCCEEDED", jds="Complete"), None, False, "Healthy"),
    (_rayjob(js="SUCCEEDED", jds="Complete"), None, True, "Healthy"),  # DryRunCompleted
    (_rayjob(js="FAILED", jds="Complete"), None, False, "Degraded"),  # JobFailed
    (_rayjob(js="STOPPED", jds="Complete"), None, False, "Degraded"),  # JobStopped
    (_rayjob(js="RUNNING", jds="Failed", reason="AppFailed", message="head OOM"), None, False, "Degraded"),
    (_rayjob(jds="ValidationFailed", reason="ValidationFailed", message="bad spec"), None, False, "Degraded"),
    (_rayjob(js="RUNNING", jds="Complete"), None, False, "Degraded"),  # StatusConflict
    (_rayjob(jds="Suspending"), None, False, "Suspended"),
    (_rayjob(jds="Suspended"), None, False, "Suspended"),
]


@pytest.mark.parametrize(("rayjob", "stage", "dry_run", "health"), OPERATOR_CASES)
def test_health_of_operator_outcomes(rayjob: dict[str, Any], stage: str | None, dry_run: bool, health: str) -> None:
    """Statuses built by interlace_operator.status from KubeRay states map to the right health."""
    from interlace_operator.status import observe_rayjob

    outcome = observe_rayjob(rayjob, stage=stage, dry_run=dry_run)
    status = _operator_status(outcome.phase, outcome.reason, outcome.message, ready=outcome.ready)
    out = run_health(prunejob(status))
    assert out["status"] == health, (outcome, out)
    reasons = {c["reason"] for c in status["conditions"]}
    assert any(r in out["message"] for r in reasons - {"Pending", "Succeeded", "Failed", "Suspended"}) or (
        health != "Progressing"
    ), out


@pytest.mark.parametrize(
    ("phase", "reason", "health"),
    [
        ("Pending", "Accepted", "Progressing"),
        ("Pending", "BackoffRetry", "Progressing"),
        ("Pending", "Resuming", "Progressing"),
        ("Pending", "ChildConflict", "Progressing"),
        ("Failed", "InvalidSpec", "Degraded"),
        ("Failed", "DeadlineExceeded", "Degraded"),
        ("Failed", "BackoffLimitExceeded", "Degraded"),
        ("Suspended", "Suspended", "Suspended"),
    ],
)
def test_health_of_operator_reasons(phase: str, reason: str, health: str) -> None:
    out = run_health(prunejob(_operator_status(phase, reason, f"{reason} happened")))
    assert out["status"] == health
    assert reason in out["message"]


# ------------------------------------------------- Flux's default health check (kstatus), no CEL needed


def kstatus(obj: dict[str, Any]) -> str:
    """What Flux's kustomize-controller makes of a custom resource without healthCheckExprs: kstatus's
    generic rules (sigs.k8s.io/cli-utils pkg/kstatus/status/generic.go: an unobserved generation is
    InProgress, Reconciling=True is InProgress, Stalled=True is Failed), then the Ready condition
    Flux requires of custom resources (True: Current, False or missing: InProgress). A transcription
    of the rules the docs and the code describe, to check the conditions the operator writes."""
    st = obj.get("status") or {}
    gen, observed = obj["metadata"].get("generation"), st.get("observedGeneration")
    if gen is not None and observed is not None and observed != gen:
        return "InProgress"
    conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
    if conds.get("Reconciling") == "True":
        return "InProgress"
    if conds.get("Stalled") == "True":
        return "Failed"
    return "Current" if conds.get("Ready") == "True" else "InProgress"


KSTATUS_CASES = [
    (_rayjob(), None, False, "InProgress"),
    (_rayjob(js="RUNNING", jds="Running"), "Finetuning", False, "InProgress"),  # running is not done
    (_rayjob(jds="Retrying"), None, False, "InProgress"),
    (_rayjob(js="SUCCEEDED", jds="Complete"), None, False, "Current"),
    (_rayjob(js="SUCCEEDED", jds="Complete"), None, True, "Current"),  # dry-run plan
    (_rayjob(js="FAILED", jds="Complete"), None, False, "Failed"),
    (_rayjob(jds="ValidationFailed", reason="ValidationFailed", message="bad spec"), None, False, "Failed"),
    (_rayjob(jds="Suspended"), None, False, "InProgress"),  # suspended: Flux keeps waiting
]


@pytest.mark.parametrize(("rayjob", "stage", "dry_run", "expected"), KSTATUS_CASES)
def test_flux_default_health_of_operator_outcomes(rayjob: dict[str, Any], stage: str | None, dry_run: bool,
                                                  expected: str) -> None:
    """Ready=True after success (Current), Stalled=True after a final failure (Failed): a Flux
    Kustomization with `wait: true` and no healthCheckExprs waits for the outcome of a PruneJob."""
    from interlace_operator.status import observe_rayjob

    outcome = observe_rayjob(rayjob, stage=stage, dry_run=dry_run)
    status = _operator_status(outcome.phase, outcome.reason, outcome.message, ready=outcome.ready)
    assert kstatus(prunejob(status)) == expected, (outcome, status["conditions"])
    assert kstatus(prunejob(status, generation=2)) == "InProgress"  # a new spec not yet observed


def test_running_condition_while_the_ray_job_runs() -> None:
    from interlace_operator.status import observe_rayjob

    outcome = observe_rayjob(_rayjob(js="RUNNING", jds="Running"), stage="Analyzing")
    conds = {c["type"]: c for c in _operator_status(outcome.phase, outcome.reason, outcome.message,
                                                    ready=outcome.ready)["conditions"]}
    assert conds["Running"]["status"] == "True" and conds["Ready"]["status"] == "False"
    assert conds["Ready"]["reason"] == "JobRunning"
