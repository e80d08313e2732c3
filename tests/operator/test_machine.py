"""The PruneJob state machine (interlace_operator.machine.decide), branch by branch, without a cluster."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from interlace_operator.machine import (
    Accept,
    Expire,
    Finish,
    HoldSuspended,
    Observation,
    Report,
    Retry,
    SetActiveSince,
    SetSuspend,
    SetWorkloadActive,
    Start,
    WaitRetry,
    decide,
)
from interlace_operator.status import rfc3339

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def rayjob(js: str | None = None, jds: str | None = None, *, suspend: bool = False, name: str = "pj-1",
           end: datetime | None = None, **status: Any) -> dict[str, Any]:
    st = {"jobStatus": js, "jobDeploymentStatus": jds, **status}
    if end is not None:
        st["endTime"] = rfc3339(end)
    return {"metadata": {"name": name}, "spec": {"suspend": suspend}, "status": st}


def obs(**kw: Any) -> Observation:
    """An observation; status.activeSince as the operator keeps it (a minute ago while the attempt may
    run, unset while it is held or suspended) unless given."""
    base = Observation(
        started=True, attempts=1, rayjob_name="pj-1", rayjob=rayjob("RUNNING", "Running"), recorded=None,
        stage=None, suspend=False, dry_run=False, backoff_limit=2, deadline_seconds=None, deadline=None,
        retry_delay=10.0, now=NOW,
    )
    o = dataclasses.replace(base, **kw)
    if "active_since" not in kw:
        rj = o.rayjob or {}
        held = bool((rj.get("spec") or {}).get("suspend"))
        jds = (rj.get("status") or {}).get("jobDeploymentStatus")
        runnable = o.rayjob is not None and not held and not o.suspend and jds not in ("Suspending", "Suspended")
        o = dataclasses.replace(o, active_since=NOW - timedelta(minutes=1) if runnable else None)
    return o


def test_not_started_is_accepted_first() -> None:
    assert decide(obs(started=False, attempts=0, rayjob=None, rayjob_name=None)) == Accept()


def test_first_attempt_is_started_after_acceptance() -> None:
    assert decide(obs(attempts=0, rayjob=None, rayjob_name=None)) == Start(1)


def test_past_the_deadline_expires_and_releases_a_live_rayjob() -> None:
    step = decide(obs(deadline_seconds=60, deadline=NOW - timedelta(seconds=1)))
    assert isinstance(step, Expire) and step.release
    assert step.outcome.reason == "DeadlineExceeded" and "activeDeadlineSeconds=60" in step.outcome.message
    assert step.mirror is not None and step.mirror["endTime"] == rfc3339(NOW)
    # KubeRay marked it finished, but keeps its cluster for ttlSecondsAfterFinished: released too
    finished = decide(obs(deadline=NOW, rayjob=rayjob("FAILED", "Failed")))
    assert isinstance(finished, Expire) and finished.release
    gone = decide(obs(deadline=NOW, rayjob=None))
    assert isinstance(gone, Expire) and not gone.release
    assert isinstance(decide(obs(deadline=NOW + timedelta(seconds=1))), Report)


def test_a_vanished_rayjob_is_recreated_unless_it_had_ended() -> None:
    assert decide(obs(rayjob=None)) == Start(1, recreated=True)
    ended = {"name": "pj-1", "jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete",
             "endTime": rfc3339(NOW)}
    step = decide(obs(rayjob=None, recorded=ended))
    assert isinstance(step, Finish) and step.outcome.reason == "Succeeded" and step.mirror == ended
    # the record of an earlier attempt does not count for this one
    assert decide(obs(rayjob=None, recorded={**ended, "name": "pj-0"})) == Start(1, recreated=True)


def test_suspend_follows_the_spec_until_the_attempt_finished() -> None:
    assert decide(obs(suspend=True)) == SetSuspend(True)
    assert decide(obs(rayjob=rayjob(None, "Suspended", suspend=True))) == SetSuspend(False)
    step = decide(obs(suspend=True, rayjob=rayjob("SUCCEEDED", "Complete")))
    assert isinstance(step, Finish)  # a finished attempt is not suspended any more


def test_suspend_in_progress_and_resuming_are_reported() -> None:
    step = decide(obs(suspend=True, rayjob=rayjob("RUNNING", "Running", suspend=True)))
    assert isinstance(step, Report) and step.outcome.reason == "Suspending"
    step = decide(obs(rayjob=rayjob(None, "Suspended")))
    assert isinstance(step, Report) and step.outcome.reason == "Resuming"


def test_running_reports_the_stage() -> None:
    step = decide(obs(stage="Finetuning"))
    assert isinstance(step, Report) and step.outcome.phase == "Finetuning" and step.outcome.ready
    assert not step.release and not step.conflict_event


def test_a_failed_attempt_is_released_waits_for_its_backoff_then_retries_once_gone() -> None:
    failed = rayjob("FAILED", "Failed", end=NOW - timedelta(seconds=4))
    step = decide(obs(rayjob=failed, retry_delay=10.0))
    assert isinstance(step, WaitRetry) and step.due == NOW + timedelta(seconds=6)
    assert step.outcome.reason == "BackoffRetry" and "attempt 2 of 3" in step.outcome.message
    # KubeRay marked the deployment Failed but keeps its Ray cluster for ttlSecondsAfterFinished
    assert step.release
    # due, but the failed RayJob is still being deleted (its pods terminating): no second cluster yet
    later = NOW + timedelta(seconds=6)
    waiting = decide(obs(rayjob=failed, retry_delay=10.0, now=later))
    assert isinstance(waiting, WaitRetry) and waiting.release and waiting.outcome.reason == "ReleasingAttempt"
    assert waiting.due == later + timedelta(seconds=2) and "pj-1" in waiting.outcome.message
    # gone: the recorded end of the attempt settles it, and the next attempt starts
    gone = decide(obs(rayjob=None, recorded=step.mirror, retry_delay=10.0, now=later))
    assert isinstance(gone, Retry) and gone.attempt == 2 and not gone.release


def test_a_failed_attempt_kuberay_did_not_tear_down_is_released_before_the_retry() -> None:
    # the Ray job failed but KubeRay still reports the deployment Running: its pods hold the GPUs
    step = decide(obs(rayjob=rayjob("FAILED", "Running"), retry_delay=0.0))
    assert isinstance(step, WaitRetry) and step.release and step.conflict_event
    assert step.outcome.reason == "ReleasingAttempt"


def test_the_conflict_event_is_posted_once() -> None:
    rj = rayjob("FAILED", "Running")
    first = decide(obs(rayjob=rj, retry_delay=60.0))
    assert isinstance(first, WaitRetry) and first.conflict_event
    again = decide(obs(rayjob=rj, retry_delay=60.0, recorded=first.mirror))
    assert isinstance(again, WaitRetry) and not again.conflict_event


def test_the_retry_budget_is_spec_backoff_limit() -> None:
    # the Ray job failed (jobStatus FAILED; KubeRay's deployment Complete): JobFailed, retryable
    step = decide(obs(attempts=3, rayjob_name="pj-3", rayjob=rayjob("FAILED", "Complete", name="pj-3"),
                      backoff_limit=2))
    assert isinstance(step, Finish) and step.outcome.phase == "Failed"
    assert step.outcome.reason == "BackoffLimitExceeded" and "gave up after 3 attempts" in step.outcome.message
    once = decide(obs(rayjob=rayjob("FAILED", "Complete"), backoff_limit=0))
    assert isinstance(once, Finish) and once.outcome.reason == "JobFailed"


def test_a_failure_that_is_not_retryable_finishes_at_once() -> None:
    step = decide(obs(rayjob=rayjob(None, "ValidationFailed", reason="ValidationFailed")))
    assert isinstance(step, Finish) and step.outcome.failed


def test_a_failure_while_suspended_holds_without_retrying() -> None:
    step = decide(obs(suspend=True, rayjob=rayjob("FAILED", "Failed", suspend=True)))
    assert isinstance(step, HoldSuspended) and step.outcome.phase == "Suspended"


def test_success_and_dry_run_finish() -> None:
    assert decide(obs(rayjob=rayjob("SUCCEEDED", "Complete"))).outcome.reason == "Succeeded"  # type: ignore[union-attr]
    dry = decide(obs(dry_run=True, rayjob=rayjob("SUCCEEDED", "Complete")))
    assert isinstance(dry, Finish) and dry.outcome.reason == "DryRunCompleted"


# ---------------------------------------------------------------- Kueue (spec.resources.queueName)


def workload(*, active: bool = True, ours: bool = False, **conditions: tuple[str, str]) -> dict[str, Any]:
    conds = [{"type": t, "status": s, "message": m} for t, (s, m) in conditions.items()]
    meta: dict[str, Any] = {"name": "rayjob-pj-1-abc12"}
    if ours:
        meta["annotations"] = {"interlace.dev/suspended": "true"}
    return {"metadata": meta, "spec": {"active": active}, "status": {"conditions": conds}}


def test_queued_and_suspended_before_the_first_attempt_creates_nothing() -> None:
    step = decide(obs(attempts=0, rayjob=None, rayjob_name=None, queue="team-a", suspend=True))
    assert isinstance(step, Report) and step.outcome.phase == "Suspended" and "team-a" in step.outcome.message
    assert decide(obs(attempts=0, rayjob=None, rayjob_name=None, queue="team-a")) == Start(1)


def test_the_operator_never_unsuspends_a_rayjob_kueue_holds() -> None:
    held = rayjob(None, "Suspended", suspend=True)
    no_workload = decide(obs(queue="team-a", rayjob=held))
    assert isinstance(no_workload, Report) and no_workload.outcome.reason == "Queued"
    assert no_workload.recheck == 2.0  # Kueue creates the Workload right after the RayJob
    full = workload(QuotaReserved=("False", "couldn't assign flavors to pod set workers: insufficient "
                                            "unused quota for nvidia.com/gpu in flavor gpu, 4 more needed"))
    step = decide(obs(queue="team-a", rayjob=held, workload=full))
    assert isinstance(step, Report) and step.outcome.reason == "Queued" and step.outcome.phase == "Pending"
    assert "insufficient unused quota for nvidia.com/gpu" in step.outcome.message and step.recheck == 10.0
    admitted = decide(obs(queue="team-a", rayjob=held, workload=workload(Admitted=("True", "The workload is admitted"))))
    assert isinstance(admitted, Report) and admitted.outcome.reason == "Admitted"
    # without a queue the same RayJob would be resumed by the operator
    assert decide(obs(rayjob=held)) == SetSuspend(False)


def test_user_suspend_goes_to_the_workload_not_the_rayjob() -> None:
    running = rayjob("RUNNING", "Running")
    assert decide(obs(queue="team-a", suspend=True, rayjob=running, workload=workload())) == SetWorkloadActive(False)
    evicted = rayjob(None, "Suspended", suspend=True)
    assert decide(obs(queue="team-a", rayjob=evicted, workload=workload(active=False, ours=True))) == SetWorkloadActive(True)
    # a Workload Kueue deactivated itself (its requeuing limit) is not the operator's to reactivate
    kueues = decide(obs(queue="team-a", rayjob=evicted, workload=workload(
        active=False, Evicted=("True", "exceeded the maximum number of re-queuing retries"))))
    assert isinstance(kueues, Report) and kueues.outcome.reason == "Deactivated"
    assert "re-queuing" in kueues.outcome.message
    step = decide(obs(queue="team-a", suspend=True, rayjob=running, workload=workload(active=False, ours=True)))
    assert isinstance(step, Report) and step.outcome.reason == "Suspending" and "Kueue to evict" in step.outcome.message


def test_an_admitted_rayjob_reports_its_own_status() -> None:
    step = decide(obs(queue="team-a", stage="Analyzing", workload=workload(Admitted=("True", "ok"))))
    assert isinstance(step, Report) and step.outcome.phase == "Analyzing" and step.recheck is None


def test_kueue_missing_is_reported_and_looked_at_again() -> None:
    step = decide(obs(queue="team-a", rayjob=rayjob(None, "Suspended", suspend=True),
                      kueue_missing="no Workload API", kueue_retry=30.0))
    assert isinstance(step, Report) and step.outcome.reason == "KueueMissing" and step.recheck == 30.0


# ------------------------------------------------------------------ start deadline

PROVISIONED = {"conditions": [{"type": "RayClusterProvisioned", "status": "True"}]}
WAITING = ("pod pj-1-head container ray-head: CreateContainerConfigError: secret \"hf-token\" not found",)


def starting(started: datetime, **kw: Any) -> Observation:
    """An attempt whose Ray cluster KubeRay started at `started` and whose pods have not all run."""
    rj = rayjob("PENDING", "Initializing", startTime=rfc3339(started), rayClusterStatus={"conditions": []})
    return obs(rayjob=rj, start_deadline_seconds=600, **kw)


def test_an_attempt_whose_pods_never_run_fails_at_its_start_deadline_naming_why_and_is_released() -> None:
    step = decide(starting(NOW - timedelta(seconds=600), pod_problems=WAITING, backoff_limit=5))
    assert isinstance(step, Finish) and step.release
    assert step.outcome.reason == "StartDeadlineExceeded" and not step.outcome.retryable
    assert 'secret "hf-token" not found' in step.outcome.message and "startDeadlineSeconds" in step.outcome.message
    assert step.mirror is not None and step.mirror["endTime"] == rfc3339(NOW)


def test_before_its_start_deadline_the_status_says_what_the_pods_wait_on_and_looks_again() -> None:
    step = decide(starting(NOW - timedelta(seconds=595), pod_problems=WAITING))
    assert isinstance(step, Report) and 'secret "hf-token" not found' in step.outcome.message
    assert step.recheck is not None and abs(step.recheck - 5.0) < 1e-6  # at the deadline, not later
    early = decide(starting(NOW - timedelta(seconds=10)))
    assert isinstance(early, Report) and early.recheck == 10.0 and "wait on" not in early.outcome.message


def test_the_start_deadline_does_not_apply_once_the_pods_ran_or_while_held() -> None:
    long_ago = NOW - timedelta(hours=5)
    ran = rayjob("PENDING", "Initializing", startTime=rfc3339(long_ago), rayClusterStatus=PROVISIONED)
    assert isinstance(decide(obs(rayjob=ran, start_deadline_seconds=600)), Report)
    running = rayjob("RUNNING", "Running", startTime=rfc3339(long_ago))  # the Ray job runs: the pods did
    assert isinstance(decide(obs(rayjob=running, start_deadline_seconds=600)), Report)
    # queued for Kueue (suspended, KubeRay has not started it): queue time does not count
    queued = rayjob(None, "Suspended", suspend=True, startTime=rfc3339(long_ago))
    step = decide(obs(rayjob=queued, start_deadline_seconds=600, queue="team-a", suspend=False))
    assert not isinstance(step, Finish)
    # not started by KubeRay yet (no startTime): no clock
    assert isinstance(decide(obs(rayjob=rayjob("", "New"), start_deadline_seconds=600)), Report)


# ------------------------------------------------------------------ activeSince (the deadline's clock)


def test_active_since_is_set_when_the_attempt_may_run_and_cleared_while_held_or_suspended() -> None:
    assert decide(obs(active_since=None)) == SetActiveSince(NOW)
    # suspended by the user: cleared once KubeRay holds it (the suspend is written first)
    assert decide(obs(suspend=True, active_since=NOW)) == SetSuspend(True)
    held = rayjob(None, "Suspended", suspend=True)
    assert decide(obs(suspend=True, rayjob=held, active_since=NOW)) == SetActiveSince(None)
    # queued for Kueue (created suspended): no clock until Kueue admits it
    queued = rayjob(None, "Suspended", suspend=True)
    assert not isinstance(decide(obs(queue="team-a", rayjob=queued)), SetActiveSince)
    admitted = rayjob(None, "Initializing")
    assert decide(obs(queue="team-a", rayjob=admitted, active_since=None)) == SetActiveSince(NOW)
    # evicted by Kueue (held again): the clock stops
    assert decide(obs(queue="team-a", rayjob=queued, active_since=NOW)) == SetActiveSince(None)
    # a finished attempt keeps it (the deadline still bounds the retries that follow)
    assert isinstance(decide(obs(rayjob=rayjob("FAILED", "Failed"), active_since=NOW)), WaitRetry)
