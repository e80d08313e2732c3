"""Pure status logic: KubeRay RayJob status -> PruneJob phase, conditions and the rayJob mirror.

KubeRay reports two strings that can disagree (`jobStatus` from the Ray job, `jobDeploymentStatus` from
the operator's state machine; users report e.g. RUNNING next to Failed). This module decides one
outcome from both, always in the direction that releases resources and tells the truth:

* a failed deployment (Failed, ValidationFailed) fails the attempt whatever jobStatus says;
* a FAILED or STOPPED Ray job fails the attempt even while the deployment still says Running;
* SUCCEEDED wins unless the deployment failed;
* a finished deployment (Complete) without a finished Ray job is reported as a conflict and fails
  the attempt (it is retried like any other failure);
* while the Ray job runs, the stage the job reports itself (`status.stage`) becomes the phase.

Conditions follow the Kubernetes API conventions: Ready, Running, Succeeded, Failed, Suspended and
Stalled, each always present, CamelCase reasons, `lastTransitionTime` that changes only when `status`
changes, and `observedGeneration`. They are chosen so that generic tools read a PruneJob right
without a custom health check (docs/gitops.md):

* Ready=True once the PruneJob finished successfully (reason Succeeded or DryRunCompleted), False
  otherwise with the current reason: kstatus (Flux's default health check) reads Ready=True as
  Current and Ready=False as InProgress, like a finished Job;
* Stalled=True once the PruneJob failed for good: kstatus reads it as Failed, so a Flux sync stops
  waiting at once instead of timing out;
* Running=True while the Ray job runs (what `kubectl wait --for=condition=Running` waits for);
* Succeeded/Failed/Suspended as their names say (`kubectl wait --for=condition=Succeeded`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from interlace.errors import EXIT_REFUSED
from interlace.schema.status import STAGES, Phase

TERMINAL_PHASES = frozenset({Phase.SUCCEEDED.value, Phase.FAILED.value})
STAGE_VALUES = frozenset(p.value for p in STAGES)
CONDITION_TYPES = ("Ready", "Running", "Succeeded", "Failed", "Suspended", "Stalled")

# KubeRay values.
JDS_FAILED = frozenset({"Failed", "ValidationFailed"})
JDS_FINISHED = frozenset({"Complete", "Failed", "ValidationFailed"})
JDS_SUSPENDED = frozenset({"Suspending", "Suspended"})

# Failures that another attempt cannot fix.
NOT_RETRYABLE = frozenset({
    "DeadlineExceeded", "ValidationFailed", "JobStopped", "InvalidSpec", "StartDeadlineExceeded", "InputRefused",
})
# The job's exit status in Ray's message for a failed entrypoint ("Job entrypoint command failed with
# exit code N, ..."): EXIT_REFUSED (2) is `interlace run` refusing its inputs (interlace.errors: the
# spec, a model id that is not on the Hub, data, an output), which another attempt meets again; 75 (a
# TransientError: the network, the Hub) and a crash are retried.
EXIT_CODE = re.compile(r"failed with exit code (\d+)")

# Why a pod does not run, as the kubelet says it in a container's waiting state: what a user must fix
# (an image, a Secret or ConfigMap, a command), not the normal wait of a starting container.
POD_WAITING_PROBLEMS = frozenset({
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError",
    "CreateContainerError", "RunContainerError", "CrashLoopBackOff", "PreCreateHookError", "PostStartHookError",
})
PROBLEM_TEXT_MAX = 300  # characters of one pod's or event's message in the PruneJob's status
PROBLEMS_MAX = 8


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def camel_reason(text: str | None, default: str) -> str:
    """A CamelCase condition reason (the CRD's pattern) from free text such as a KubeRay reason."""
    if not text:
        return default
    words = re.findall(r"[A-Za-z0-9]+", text)
    reason = "".join(w[:1].upper() + w[1:] for w in words)
    if not reason or not reason[0].isalpha():
        return default
    return reason[:128]


@dataclass(frozen=True)
class Outcome:
    """What one RayJob attempt amounts to, from the PruneJob's point of view."""

    phase: str
    reason: str
    message: str
    ready: bool = False
    finished: bool = False
    failed: bool = False
    retryable: bool = False
    conflict: bool = False


def observe_rayjob(rayjob: dict[str, Any], *, stage: str | None = None, dry_run: bool = False) -> Outcome:
    """Map a RayJob (as returned by the API server) to an Outcome. Pure; see the module docstring."""
    name = rayjob.get("metadata", {}).get("name", "?")
    st = rayjob.get("status") or {}
    js = st.get("jobStatus") or ""
    jds = st.get("jobDeploymentStatus") or ""
    kuberay_reason = st.get("reason") or ""
    kuberay_message = st.get("message") or ""
    pair = f"jobStatus={js or '-'}, jobDeploymentStatus={jds or '-'}"

    if jds in JDS_FAILED:
        reason = camel_reason(kuberay_reason, "RayJobFailed" if jds == "Failed" else "ValidationFailed")
        conflict = js in {"RUNNING", "PENDING", "SUCCEEDED"}
        msg = kuberay_message or f"RayJob {name} failed"
        if conflict:
            msg += f" (KubeRay reports {pair}; the deployment failure wins)"
        return Outcome(
            Phase.FAILED.value, reason, msg, finished=True, failed=True,
            retryable=reason not in NOT_RETRYABLE and jds != "ValidationFailed", conflict=conflict,
        )
    if js in {"FAILED", "STOPPED"}:
        reason = "JobFailed" if js == "FAILED" else "JobStopped"
        code = EXIT_CODE.search(kuberay_message)
        if js == "FAILED" and code is not None and int(code.group(1)) == EXIT_REFUSED:
            reason = "InputRefused"
        conflict = jds not in JDS_FINISHED
        msg = kuberay_message or f"the Ray job of RayJob {name} ended with {js}"
        if reason == "InputRefused":
            msg = f"the job refused its inputs (exit {EXIT_REFUSED}; not retried, another attempt meets them again): {msg}"
        if conflict:
            msg += f" (KubeRay reports {pair}; the Ray job's own status wins)"
        return Outcome(
            Phase.FAILED.value, reason, msg, finished=True, failed=True,
            retryable=reason not in NOT_RETRYABLE, conflict=conflict,
        )
    if js == "SUCCEEDED":
        reason = "DryRunCompleted" if dry_run else "Succeeded"
        msg = "dry run finished: the plan is in status.plan" if dry_run else f"RayJob {name} succeeded"
        return Outcome(Phase.SUCCEEDED.value, reason, msg, finished=True, conflict=jds not in {"Complete", "Running"})
    if jds == "Complete":
        return Outcome(
            Phase.FAILED.value, "StatusConflict",
            f"RayJob {name} is Complete but its Ray job did not finish ({pair})",
            finished=True, failed=True, retryable=True, conflict=True,
        )
    if jds in JDS_SUSPENDED:
        return Outcome(Phase.SUSPENDED.value, jds, f"RayJob {name} is {jds.lower()}; its Ray cluster is deleted")
    if jds == "Retrying":
        return Outcome(Phase.PENDING.value, "KubeRayRetrying", kuberay_message or f"KubeRay is retrying RayJob {name}")
    if js == "RUNNING":
        if stage in STAGE_VALUES:
            return Outcome(stage, "JobRunning", f"the Ray job reports stage {stage}", ready=True)
        return Outcome(
            Phase.PENDING.value, "JobRunning", "the Ray job is running; waiting for its first stage report",
            ready=True,
        )
    if jds == "Running":
        return Outcome(
            Phase.PENDING.value, "JobSubmitted",
            f"the Ray cluster of RayJob {name} is ready; the job is submitted ({pair})",
        )
    return Outcome(Phase.PENDING.value, "ClusterInitializing", _initializing_message(name, st))


def _initializing_message(name: str, st: dict[str, Any]) -> str:
    """Why a RayJob is still starting, from the RayCluster status KubeRay embeds (not a bare 'Initializing')."""
    cluster = st.get("rayClusterName") or "(not created yet)"
    cs = st.get("rayClusterStatus") or {}
    parts = [f"waiting for Ray cluster {cluster} of RayJob {name}"]
    desired = cs.get("desiredWorkerReplicas")
    if desired is not None:
        parts.append(f"{cs.get('readyWorkerReplicas', 0)}/{desired} workers ready")
    if cs.get("state"):
        parts.append(f"cluster state {cs['state']}")
    if cs.get("reason"):
        parts.append(str(cs["reason"]))
    return "; ".join(parts)


def outcome_from_mirror(mirror: dict[str, Any], *, stage: str | None, dry_run: bool) -> Outcome:
    """Outcome of an attempt whose RayJob is gone, from the status mirror kept in the PruneJob."""
    return observe_rayjob(
        {
            "metadata": {"name": mirror.get("name", "?")},
            "status": {
                "jobStatus": mirror.get("jobStatus"),
                "jobDeploymentStatus": mirror.get("jobDeploymentStatus"),
                "reason": mirror.get("reason"),
                "message": mirror.get("message"),
            },
        },
        stage=stage,
        dry_run=dry_run,
    )


def rayjob_mirror(
    rayjob: dict[str, Any], previous: dict[str, Any] | None, *, finished: bool, now: datetime
) -> dict[str, Any]:
    """status.rayJob: both KubeRay status fields and their context, every key present (None deletes
    a stale key in a merge patch). endTime falls back to when the operator first saw the attempt end."""
    name = rayjob["metadata"]["name"]
    st = rayjob.get("status") or {}
    prev = previous if previous and previous.get("name") == name else {}
    end = st.get("endTime") or prev.get("endTime")
    if finished and not end:
        end = rfc3339(now)
    mirror = {
        "name": name,
        "jobStatus": st.get("jobStatus") or None,
        "jobDeploymentStatus": st.get("jobDeploymentStatus") or None,
        "reason": st.get("reason") or None,
        "message": st.get("message") or None,
        "dashboardUrl": st.get("dashboardURL") or None,
        "startTime": st.get("startTime") or prev.get("startTime"),
        "endTime": end if finished or st.get("endTime") else None,
    }
    return mirror


def desired_conditions(phase: str, reason: str, message: str, *, ready: bool) -> dict[str, tuple[str, str, str]]:
    """type -> (status, reason, message) for every type of CONDITION_TYPES (see the module docstring).

    `ready` is Outcome.ready: the Ray job is running (the Running condition). Ready always carries the
    current reason and message, True or False, so it says what the PruneJob is waiting for."""

    def flag(active: bool) -> tuple[str, str, str]:
        return ("True", reason, message) if active else ("False", phase, "")

    succeeded = phase == Phase.SUCCEEDED.value
    failed = phase == Phase.FAILED.value
    return {
        "Ready": ("True", reason, message) if succeeded else ("False", reason, message),
        "Running": ("True", reason, message) if ready else ("False", reason, message),
        "Succeeded": flag(succeeded) if not failed else ("False", reason, message),
        "Failed": flag(failed),
        "Suspended": flag(phase == Phase.SUSPENDED.value),
        "Stalled": flag(failed),
    }


def merge_conditions(
    old: list[dict[str, Any]] | None,
    desired: dict[str, tuple[str, str, str]],
    *,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """New conditions list; lastTransitionTime is kept unless the condition's status changed."""
    by_type = {c.get("type"): c for c in old or []}
    out = []
    for ctype in CONDITION_TYPES:
        status, reason, message = desired[ctype]
        prev = by_type.get(ctype)
        ltt = prev.get("lastTransitionTime") if prev and prev.get("status") == status else None
        cond: dict[str, Any] = {
            "type": ctype,
            "status": status,
            "reason": camel_reason(reason, ctype),
            "message": message[:32768],
            "lastTransitionTime": ltt or rfc3339(now),
        }
        if generation is not None:
            cond["observedGeneration"] = generation
        out.append(cond)
    return out


def strip_none(d: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (d or {}).items() if v is not None}


def differs(old: Any, new: Any) -> bool:
    """Whether a status value changed (None-valued keys of a dict do not count: a merge patch drops them)."""
    if isinstance(new, dict) and isinstance(old, dict):
        return strip_none(old) != strip_none(new)
    return bool(old != new)


def cluster_provisioned(rayjob: dict[str, Any]) -> bool:
    """The attempt's Ray pods all ran: KubeRay's RayClusterProvisioned condition (True once every Ray
    pod of the cluster was running and ready for the first time; it stays True), or the Ray job is
    already running or over."""
    st = rayjob.get("status") or {}
    if st.get("jobStatus") in {"RUNNING", "SUCCEEDED", "FAILED", "STOPPED"}:
        return True
    conds = (st.get("rayClusterStatus") or {}).get("conditions") or []
    return any(c.get("type") == "RayClusterProvisioned" and c.get("status") == "True" for c in conds)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= PROBLEM_TEXT_MAX else text[: PROBLEM_TEXT_MAX - 3] + "..."


def pod_problems(pods: list[dict[str, Any]], events: list[dict[str, Any]]) -> list[str]:
    """What keeps an attempt's pods from running, in the words of the scheduler, the kubelet and the
    controllers: unschedulable pods, containers waiting on an image, a Secret or a crash loop, and the
    Warning events of the attempt's RayJob and RayCluster (KubeRay posts a pod creation that admission
    or a quota refused there). Pure; the pods and events as the API server returns them."""
    out: list[str] = []
    for p in pods:
        meta, st = p.get("metadata") or {}, p.get("status") or {}
        if meta.get("deletionTimestamp"):
            continue
        name = meta.get("name", "?")
        for c in st.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                out.append(_clip(f"pod {name} is not scheduled ({c.get('reason') or 'Pending'}: {c.get('message') or ''})"))
        for cs in [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in POD_WAITING_PROBLEMS:
                text = f"pod {name} container {cs.get('name', '?')}: {waiting['reason']}"
                if waiting.get("message"):
                    text += f": {waiting['message']}"
                out.append(_clip(text))
    for e in events:
        if e.get("type") != "Warning":
            continue
        obj = e.get("involvedObject") or e.get("regarding") or {}
        out.append(_clip(f"{obj.get('kind', '?')} {obj.get('name', '?')}: {e.get('reason') or 'Warning'}: "
                         f"{e.get('message') or e.get('note') or ''}"))
    unique = list(dict.fromkeys(out))
    if len(unique) > PROBLEMS_MAX:
        unique = [*unique[:PROBLEMS_MAX], f"and {len(unique) - PROBLEMS_MAX} more"]
    return unique


def condition_reason(status: dict[str, Any], ctype: str) -> str | None:
    """The reason of the condition of type `ctype` in a status, if any."""
    for c in status.get("conditions") or []:
        if c.get("type") == ctype:
            return c.get("reason")
    return None
