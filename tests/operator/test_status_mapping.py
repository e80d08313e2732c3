"""KubeRay's two status strings -> one PruneJob outcome; conditions per API conventions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from interlace_operator.status import (
    camel_reason,
    desired_conditions,
    merge_conditions,
    observe_rayjob,
    rayjob_mirror,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rj(js: str | None = None, jds: str | None = None, **status) -> dict:
    st = {k: v for k, v in {"jobStatus": js, "jobDeploymentStatus": jds, **status}.items() if v is not None}
    return {"metadata": {"name": "pj-1"}, "status": st}


@pytest.mark.parametrize(
    ("js", "jds", "phase", "reason", "failed", "retryable", "conflict"),
    [
        (None, None, "Pending", "ClusterInitializing", False, False, False),
        (None, "Initializing", "Pending", "ClusterInitializing", False, False, False),
        ("PENDING", "Running", "Pending", "JobSubmitted", False, False, False),
        ("RUNNING", "Running", "Pending", "JobRunning", False, False, False),
        ("SUCCEEDED", "Complete", "Succeeded", "Succeeded", False, False, False),
        ("FAILED", "Failed", "Failed", "RayJobFailed", True, True, False),
        ("FAILED", "Complete", "Failed", "JobFailed", True, True, False),
        # The disagreements KubeRay users report: the failing side wins, and it is called a conflict.
        ("RUNNING", "Failed", "Failed", "RayJobFailed", True, True, True),
        ("FAILED", "Running", "Failed", "JobFailed", True, True, True),
        (None, "Complete", "Failed", "StatusConflict", True, True, True),
        ("STOPPED", "Running", "Failed", "JobStopped", True, False, True),
        ("PENDING", "ValidationFailed", "Failed", "ValidationFailed", True, False, True),
        (None, "Suspending", "Suspended", "Suspending", False, False, False),
        (None, "Suspended", "Suspended", "Suspended", False, False, False),
        (None, "Retrying", "Pending", "KubeRayRetrying", False, False, False),
    ],
)
def test_both_status_fields_are_reconciled(js, jds, phase, reason, failed, retryable, conflict) -> None:
    out = observe_rayjob(rj(js, jds))
    assert (out.phase, out.reason, out.failed, out.retryable, out.conflict) == (
        phase, reason, failed, retryable, conflict
    )
    assert out.message
    assert out.finished == (phase in ("Succeeded", "Failed"))


def test_kuberay_reason_and_deadline_are_not_retried() -> None:
    out = observe_rayjob(rj("RUNNING", "Failed", reason="DeadlineExceeded", message="deadline passed"))
    assert out.reason == "DeadlineExceeded" and not out.retryable
    assert "deadline passed" in out.message and "jobStatus=RUNNING" in out.message
    assert observe_rayjob(rj("FAILED", "Failed", reason="AppFailed")).retryable


def test_stage_is_folded_into_phase_only_while_running() -> None:
    assert observe_rayjob(rj("RUNNING", "Running"), stage="Finetuning").phase == "Finetuning"
    assert observe_rayjob(rj("RUNNING", "Running"), stage="Finetuning").ready
    # a stage left over from an earlier attempt does not leak into a starting one
    assert observe_rayjob(rj("PENDING", "Initializing"), stage="Finetuning").phase == "Pending"
    assert observe_rayjob(rj("SUCCEEDED", "Complete"), stage="Publishing").phase == "Succeeded"


def test_dry_run_success_reason() -> None:
    out = observe_rayjob(rj("SUCCEEDED", "Complete"), dry_run=True)
    assert out.phase == "Succeeded" and out.reason == "DryRunCompleted" and "status.plan" in out.message


def test_initializing_message_explains_what_is_missing() -> None:
    out = observe_rayjob(
        rj(None, "Initializing", rayClusterName="pj-1-abcde",
           rayClusterStatus={"state": "", "desiredWorkerReplicas": 2, "readyWorkerReplicas": 1})
    )
    assert "pj-1-abcde" in out.message and "1/2 workers ready" in out.message


def test_conditions_transition_times_only_move_on_status_change() -> None:
    c1 = merge_conditions(None, desired_conditions("Pending", "ClusterInitializing", "waiting", ready=False),
                          generation=1, now=T0)
    assert [c["type"] for c in c1] == ["Ready", "Running", "Succeeded", "Failed", "Suspended", "Stalled"]
    assert all(c["lastTransitionTime"] == "2026-01-01T00:00:00Z" and c["observedGeneration"] == 1 for c in c1)

    t1 = T0 + timedelta(minutes=5)
    c2 = merge_conditions(c1, desired_conditions("Finetuning", "JobRunning", "stage", ready=True),
                          generation=1, now=t1)
    by = {c["type"]: c for c in c2}
    assert by["Running"]["status"] == "True" and by["Running"]["lastTransitionTime"] == "2026-01-01T00:05:00Z"
    assert by["Ready"]["status"] == "False" and by["Ready"]["reason"] == "JobRunning"  # Ready = finished well
    assert by["Succeeded"]["status"] == "False" and by["Succeeded"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert by["Succeeded"]["reason"] == "Finetuning"  # reason moves, transition time does not

    c3 = merge_conditions(c2, desired_conditions("Failed", "DeadlineExceeded", "too slow", ready=False),
                          generation=2, now=t1 + timedelta(minutes=1))
    by = {c["type"]: c for c in c3}
    assert by["Failed"]["status"] == "True" and by["Failed"]["reason"] == "DeadlineExceeded"
    assert by["Succeeded"]["status"] == "False" and by["Succeeded"]["reason"] == "DeadlineExceeded"
    assert by["Failed"]["observedGeneration"] == 2
    assert by["Stalled"]["status"] == "True" and by["Stalled"]["reason"] == "DeadlineExceeded"  # kstatus: Failed
    assert by["Ready"]["status"] == "False" and by["Running"]["status"] == "False"


def test_ready_is_true_only_after_success() -> None:
    """Flux's kstatus reads Ready=True as Current: a PruneJob is Current once it succeeded, not while
    it runs (like a Job) and not after a failure (Stalled=True: kstatus Failed)."""
    done = {c["type"]: c for c in merge_conditions(
        None, desired_conditions("Succeeded", "DryRunCompleted", "plan in status.plan", ready=False),
        generation=3, now=T0)}
    assert done["Ready"] | {"status": "True", "reason": "DryRunCompleted"} == done["Ready"]
    assert done["Ready"]["message"] == "plan in status.plan" and done["Ready"]["observedGeneration"] == 3
    assert done["Succeeded"]["status"] == "True"
    assert {t: c["status"] for t, c in done.items() if t not in {"Ready", "Succeeded"}} == dict.fromkeys(
        ["Running", "Failed", "Suspended", "Stalled"], "False")
    for phase, reason in [("Pending", "ClusterInitializing"), ("Finetuning", "JobRunning"),
                          ("Suspended", "Suspended"), ("Failed", "JobFailed")]:
        conds = desired_conditions(phase, reason, "m", ready=phase == "Finetuning")
        assert conds["Ready"] == ("False", reason, "m"), phase
        assert conds["Stalled"][0] == ("True" if phase == "Failed" else "False"), phase


def test_mirror_keeps_both_fields_and_records_end_time() -> None:
    first = rayjob_mirror(rj("FAILED", "Running"), None, finished=True, now=T0)
    assert first["jobStatus"] == "FAILED" and first["jobDeploymentStatus"] == "Running"
    assert first["endTime"] == "2026-01-01T00:00:00Z"
    # later passes keep the first observed end (the retry backoff counts from it)
    again = rayjob_mirror(rj("FAILED", "Failed"), first, finished=True, now=T0 + timedelta(hours=1))
    assert again["endTime"] == "2026-01-01T00:00:00Z"
    kuberay = rayjob_mirror(rj("FAILED", "Failed", endTime="2025-12-31T23:00:00Z"), first, finished=True, now=T0)
    assert kuberay["endTime"] == "2025-12-31T23:00:00Z"
    running = rayjob_mirror(rj("RUNNING", "Running"), None, finished=False, now=T0)
    assert running["endTime"] is None and running["reason"] is None  # None deletes stale keys in a merge patch


def test_camel_reason() -> None:
    assert camel_reason("DeadlineExceeded", "X") == "DeadlineExceeded"
    assert camel_reason("submission failed: k8s job", "X") == "SubmissionFailedK8sJob"
    assert camel_reason("", "Default") == "Default"
    assert camel_reason("42 things", "Default") == "Default"


def test_pod_problems_name_what_the_pods_wait_on_and_nothing_else() -> None:
    from interlace_operator.status import pod_problems

    pods = [
        {"metadata": {"name": "h"}, "status": {"phase": "Pending", "containerStatuses": [
            {"name": "ray-head", "state": {"waiting": {"reason": "CreateContainerConfigError",
                                                       "message": 'secret "hf-token" not found'}}}]}},
        {"metadata": {"name": "w"}, "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}},
        {"metadata": {"name": "i"}, "status": {"initContainerStatuses": [
            {"name": "wait-gcs-ready", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "x:1"}}}]}},
        # the normal wait of a starting container, and a pod going away: not problems
        {"metadata": {"name": "ok"}, "status": {"containerStatuses": [
            {"name": "ray-worker", "state": {"waiting": {"reason": "ContainerCreating"}}}]}},
        {"metadata": {"name": "gone", "deletionTimestamp": "2026-12-07T00:00:00Z"}, "status": {"conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}},
    ]
    events = [
        {"type": "Warning", "reason": "FailedToCreateWorkerPod", "involvedObject": {"kind": "RayCluster", "name": "rc"},
         "message": 'pods "rc-w" is forbidden: exceeded quota: gpu, requested: nvidia.com/gpu=8'},
        {"type": "Normal", "reason": "Created", "involvedObject": {"kind": "RayCluster", "name": "rc"}, "message": "x"},
    ]
    got = pod_problems(pods, events)
    assert got == [
        'pod h container ray-head: CreateContainerConfigError: secret "hf-token" not found',
        "pod w is not scheduled (Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.)",
        "pod i container wait-gcs-ready: ImagePullBackOff: x:1",
        'RayCluster rc: FailedToCreateWorkerPod: pods "rc-w" is forbidden: exceeded quota: gpu, requested: nvidia.com/gpu=8',
    ]
    many = [{"metadata": {"name": f"p{i}"}, "status": {"conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "m" * 1000}]}} for i in range(12)]
    clipped = pod_problems(many, [])
    assert len(clipped) == 9 and clipped[-1] == "and 4 more" and all(len(t) <= 300 for t in clipped)


def test_a_job_that_refused_its_inputs_is_not_retried_and_a_transient_failure_is() -> None:
    from interlace_operator.status import observe_rayjob

    def failed(code: int) -> dict:
        msg = (f"Job entrypoint command failed with exit code {code}, last available logs (truncated to 20,000 "
               "chars):\ninterlace run: error: spec.model.source: 'acme/nope' is not on the Hub")
        return {"metadata": {"name": "pj-1"},
                "status": {"jobStatus": "FAILED", "jobDeploymentStatus": "Failed", "message": msg}}

    refused = observe_rayjob({**failed(2), "status": {**failed(2)["status"], "jobDeploymentStatus": "Running"}})
    assert refused.reason == "InputRefused" and not refused.retryable and "acme/nope" in refused.message
    for code in (1, 75, 137):  # a crash, a TransientError (the network, the Hub), an OOM kill
        out = observe_rayjob({**failed(code), "status": {**failed(code)["status"], "jobDeploymentStatus": "Running"}})
        assert out.reason == "JobFailed" and out.retryable, (code, out)
