"""The PruneJob's state machine, pure: an observation in, the next step out.

reconcile.py reads the world (the PruneJob's status, the RayJob of its current attempt, the clock),
calls `decide`, and carries the step out (API calls, the status write, events). After a step that
changes what was observed (accepting the spec, patching the RayJob's suspend) it observes and decides
again. Every branch of the lifecycle is the one switch below, over explicit states, so each can be
tested without a cluster (tests/operator/test_machine.py); nothing here calls the API or reads a clock.

    not started ------------------------------------------------> Accept
    past spec.activeDeadlineSeconds from status.activeSince ----> Expire
    no attempt yet: queued for Kueue and suspended -------------> Report(Suspended), no RayJob yet
                    otherwise ----------------------------------> Start(1)
    the attempt's RayJob is gone: ended (status.rayJob) --------> settle(recorded outcome)
                                  not ended --------------------> Start(same attempt, recreated)
    queued for Kueue (spec.resources.queueName): Kueue owns the RayJob's suspend;
      spec.suspend and its Workload active ---------------------> SetWorkloadActive(false), marked ours
      resumed and the Workload inactive: ours ------------------> SetWorkloadActive(true)
                                         Kueue's own -----------> settle(Deactivated)
      held by Kueue (RayJob suspended) -------------------------> settle(Queued / Admitted, from the Workload)
    not queued: RayJob suspend != spec.suspend (not finished) --> SetSuspend
    not finished: runnable (not held or suspended), no activeSince --> SetActiveSince(now)
                  held or suspended, activeSince set -----------> SetActiveSince(None)
    running, its Ray pods not all run yet (RayClusterProvisioned):
      past spec.startDeadlineSeconds from KubeRay's startTime --> Finish(StartDeadlineExceeded), released
      otherwise ------------------------------------------------> Report(what the pods wait on), recheck
    otherwise: settle(observe_rayjob(RayJob))
      failed, retryable, attempts <= backoffLimit: suspended ---> HoldSuspended
                                                   not due -----> WaitRetry(until due)
                                                   due, RayJob still there -> WaitRetry(release)
                                                   due, RayJob gone ------> Retry(next attempt)
      failed otherwise, or succeeded ---------------------------> Finish
      running / pending / suspended ----------------------------> Report

A failed attempt's RayJob is always released (deleted, foreground: the object stays until its Ray
cluster's pods are gone), whatever KubeRay's deployment status says: KubeRay keeps a finished RayJob's
cluster for ttlSecondsAfterFinished, holding its GPUs. The next attempt's RayJob is created only once
the failed one is gone, so one PruneJob never holds two Ray clusters (nor, under Kueue, GPUs whose
quota was released).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from interlace.schema.status import Phase
from interlace_operator.status import (
    JDS_FINISHED,
    JDS_SUSPENDED,
    Outcome,
    cluster_provisioned,
    differs,
    observe_rayjob,
    outcome_from_mirror,
    parse_time,
    rayjob_mirror,
    rfc3339,
)


@dataclass(frozen=True)
class Observation:
    """What one reconcile pass saw. `attempts` already counts adopted RayJobs."""

    started: bool  # status.startTime is recorded (the CRD's rule has frozen the spec)
    attempts: int
    rayjob_name: str | None  # the current attempt's deterministic name (None: no attempt yet)
    rayjob: dict[str, Any] | None  # that RayJob as read (None: not created yet, or gone)
    recorded: dict[str, Any] | None  # status.rayJob: the last recorded state of an attempt
    stage: str | None  # status.stage, as the job reports it
    suspend: bool
    dry_run: bool
    backoff_limit: int
    deadline_seconds: int | None  # spec.activeDeadlineSeconds
    deadline: datetime | None  # status.activeSince + deadline_seconds (None while it is not running)
    retry_delay: float  # seconds after attempt `attempts` failed before the next one starts
    now: datetime
    queue: str | None = None  # spec.resources.queueName: Kueue admits the RayJob
    workload: dict[str, Any] | None = None  # the RayJob's Kueue Workload (None: not created yet)
    kueue_missing: str | None = None  # queued, but the cluster serves no Workload API: why
    kueue_retry: float = 30.0  # how soon to look again when Kueue is missing
    active_since: datetime | None = None  # status.activeSince
    start_deadline_seconds: int | None = None  # spec.startDeadlineSeconds
    pod_problems: tuple[str, ...] = ()  # why the attempt's pods do not run (status.pod_problems), if read


# While a queued RayJob waits for Kueue: how soon to look again for its Workload (Kueue creates it
# right after the RayJob) and at its conditions (their message says why it is not admitted yet: they
# change without a RayJob event).
KUEUE_NO_WORKLOAD_RECHECK = 2.0
KUEUE_QUEUED_RECHECK = 10.0
# On the Kueue Workloads the operator deactivates for spec.suspend: only those it reactivates (a
# Workload Kueue deactivated itself, e.g. at its requeuing limit, stays so and the status says why).
WORKLOAD_SUSPENDED_ANNOTATION = "interlace.dev/suspended"


# How soon to look again while an attempt's Ray pods are not all running yet: what they wait on
# changes without a RayJob event (an image pull, a Secret created), and the start deadline nears.
STARTING_RECHECK = 10.0

# How soon to look again while a failed attempt's RayJob is being deleted (its pods terminating) and
# the next attempt waits for it; the RayJob's deletion event usually comes first.
RELEASE_RECHECK = 2.0

# ---------------------------------------------------------------- steps


@dataclass(frozen=True)
class Accept:
    """Run the pre-flight checks, then record startTime (freezing the spec)."""


@dataclass(frozen=True)
class Start:
    """Create (or adopt) the RayJob of `attempt`. `recreated`: it existed and vanished unfinished."""

    attempt: int
    retry: bool = False
    recreated: bool = False


@dataclass(frozen=True)
class SetSuspend:
    """Patch the RayJob's spec.suspend to `want` (KubeRay deletes / recreates the Ray cluster)."""

    want: bool


@dataclass(frozen=True)
class SetActiveSince:
    """Write status.activeSince: `since` when the PruneJob begins to run (or runs again after a
    suspension or an eviction), None when it stops being runnable (suspended, queued again)."""

    since: datetime | None


@dataclass(frozen=True)
class SetWorkloadActive:
    """Patch the Kueue Workload's spec.active to `want` (false: Kueue evicts the RayJob and releases its
    quota; true: Kueue queues it again), marking it WORKLOAD_SUSPENDED_ANNOTATION while deactivated.
    The operator never writes a queued RayJob's suspend: Kueue admits by un-suspending it and would
    undo any other write at once."""

    want: bool


@dataclass(frozen=True)
class _Write:
    """A step that writes `outcome` and `mirror` (status.rayJob) to status; `conflict_event`: KubeRay's
    two statuses disagree in a way not reported before; `release`: delete the attempt's RayJob after
    the write (it failed, and its Ray cluster holds GPUs until it is gone)."""

    outcome: Outcome
    mirror: dict[str, Any] | None
    conflict_event: bool = False
    release: bool = False


@dataclass(frozen=True)
class Report(_Write):
    """Still going: record progress; look again at the deadline, or after `recheck` seconds if sooner."""

    recheck: float | None = None


@dataclass(frozen=True)
class Finish(_Write):
    """Terminal: Succeeded or Failed, with completionTime."""


@dataclass(frozen=True)
class Expire(_Write):
    """Past spec.activeDeadlineSeconds: Failed (DeadlineExceeded); `release` deletes a live RayJob first."""


@dataclass(frozen=True)
class HoldSuspended(_Write):
    """An attempt failed while the user suspends the job: no retry until resumed."""


@dataclass(frozen=True)
class WaitRetry(_Write):
    """An attempt failed; the next one starts at `due` (exponential backoff)."""

    due: datetime = datetime.min


@dataclass(frozen=True)
class Retry(_Write):
    """An attempt failed and the backoff has passed: start `attempt` (the next one) now."""

    attempt: int = 0


Step = Accept | Start | SetSuspend | SetActiveSince | SetWorkloadActive | Report | Finish | Expire | HoldSuspended | WaitRetry | Retry


def _jds(rayjob: dict[str, Any] | None) -> str | None:
    return ((rayjob or {}).get("status") or {}).get("jobDeploymentStatus")


def decide(o: Observation) -> Step:
    """The next step for a PruneJob that is not terminal (see the module docstring)."""
    if not o.started:
        return Accept()
    if o.deadline is not None and o.now >= o.deadline:
        mirror = rayjob_mirror(o.rayjob, o.recorded, finished=True, now=o.now) if o.rayjob else o.recorded
        outcome = Outcome(
            Phase.FAILED.value, "DeadlineExceeded",
            f"the PruneJob ran longer than spec.activeDeadlineSeconds={o.deadline_seconds} (from status.activeSince, "
            "when it last began to run)",
            finished=True, failed=True,
        )
        return Expire(outcome, mirror, release=o.rayjob is not None)
    if o.attempts == 0:
        if o.queue and o.suspend:
            # No RayJob yet, so no Workload Kueue could admit before the operator deactivates it.
            return Report(Outcome(
                Phase.SUSPENDED.value, "Suspended",
                f"suspended before its first attempt: its RayJob is created for Kueue LocalQueue {o.queue} "
                "when spec.suspend is false",
            ), None)
        return Start(1)
    if o.rayjob is None:
        recorded = o.recorded or {}
        if recorded.get("name") == o.rayjob_name and recorded.get("endTime"):
            return _settle(o, outcome_from_mirror(recorded, stage=o.stage, dry_run=o.dry_run), recorded)
        return Start(o.attempts, recreated=True)
    held = bool((o.rayjob.get("spec") or {}).get("suspend"))
    queued: tuple[Outcome | None, float | None] = (None, None)
    if o.queue:
        if _jds(o.rayjob) not in JDS_FINISHED:
            kueue = _kueue(o, held)
            if isinstance(kueue, SetWorkloadActive):
                return kueue
            queued = kueue
    elif held != o.suspend and _jds(o.rayjob) not in JDS_FINISHED:
        return SetSuspend(o.suspend)
    if (active := _active_since(o, held)) is not None:
        return active
    outcome = observe_rayjob(o.rayjob, stage=o.stage, dry_run=o.dry_run)
    override, recheck = queued
    if override is not None and not outcome.finished:
        outcome = override
    mirror = rayjob_mirror(o.rayjob, o.recorded, finished=outcome.finished, now=o.now)
    if (not outcome.finished and not held and not o.suspend and o.start_deadline_seconds
            and not cluster_provisioned(o.rayjob)):
        return _starting(o, outcome, mirror, recheck)
    return _settle(o, outcome, mirror, recheck=recheck)


def _starting(o: Observation, outcome: Outcome, mirror: dict[str, Any], recheck: float | None) -> Step:
    """An attempt whose Ray pods have not all run yet: say what they wait on; past
    spec.startDeadlineSeconds from KubeRay's start of the Ray cluster (reset when it is resumed;
    queue time does not count), fail for good and release the cluster."""
    assert o.rayjob is not None and o.start_deadline_seconds
    name = o.rayjob["metadata"]["name"]
    started = parse_time((o.rayjob.get("status") or {}).get("startTime"))
    if started is None:  # KubeRay has not started the Ray cluster yet
        return _settle(o, outcome, mirror, recheck=recheck)
    due = started + timedelta(seconds=o.start_deadline_seconds)
    waiting_on = "; ".join(o.pod_problems)
    if o.now >= due:
        failed = Outcome(
            Phase.FAILED.value, "StartDeadlineExceeded",
            f"the Ray pods of RayJob {name} were not all running {o.start_deadline_seconds}s "
            f"(spec.startDeadlineSeconds) after KubeRay started its Ray cluster at {rfc3339(started)}: "
            f"{waiting_on or 'no pod said why (kubectl describe raycluster, pods)'}; the Ray cluster is "
            "deleted and the PruneJob is not retried (a retry would wait on the same cause)",
            finished=True, failed=True,
        )
        return Finish(failed, rayjob_mirror(o.rayjob, o.recorded, finished=True, now=o.now), release=True)
    if waiting_on:
        outcome = dataclasses.replace(
            outcome, message=f"{outcome.message}; the Ray pods wait on: {waiting_on} (spec.startDeadlineSeconds "
            f"fails the attempt at {rfc3339(due)})",
        )
    until = max(0.05, (due - o.now).total_seconds())
    return _settle(o, outcome, mirror, recheck=min(x for x in (recheck, until, STARTING_RECHECK) if x is not None))


def _active_since(o: Observation, held: bool) -> SetActiveSince | None:
    """status.activeSince follows whether the attempt may run: set when its RayJob is neither held
    (suspended, or queued for Kueue) nor being suspended, cleared when it is again."""
    jds = _jds(o.rayjob)
    if jds in JDS_FINISHED:
        return None
    runnable = not held and not o.suspend and jds not in JDS_SUSPENDED
    if runnable and o.active_since is None:
        return SetActiveSince(o.now)
    if not runnable and o.active_since is not None:
        return SetActiveSince(None)
    return None


def _kueue(o: Observation, held: bool) -> SetWorkloadActive | tuple[Outcome | None, float | None]:
    """A queued RayJob that is not finished: carry spec.suspend to its Workload, or say what its
    status is while Kueue holds it (None: Kueue admitted it, the RayJob's own status speaks) and how
    soon to look again."""
    assert o.rayjob is not None
    name, queue = o.rayjob["metadata"]["name"], o.queue
    if not held and not o.suspend:
        return None, None  # admitted and running: nothing to carry to the Workload, nothing to report
    if o.kueue_missing:
        return (None if o.suspend else Outcome(Phase.PENDING.value, "KueueMissing", o.kueue_missing)), o.kueue_retry
    if o.workload is None:
        if o.suspend:
            return None, KUEUE_NO_WORKLOAD_RECHECK
        return Outcome(
            Phase.PENDING.value, "Queued",
            f"RayJob {name} is suspended for Kueue LocalQueue {queue}; waiting for Kueue to create its Workload",
        ), KUEUE_NO_WORKLOAD_RECHECK
    wl_name = o.workload["metadata"]["name"]
    active = bool((o.workload.get("spec") or {}).get("active", True))
    ours = (o.workload["metadata"].get("annotations") or {}).get(WORKLOAD_SUSPENDED_ANNOTATION) == "true"
    conds = {c.get("type"): c for c in (o.workload.get("status") or {}).get("conditions") or []}
    if o.suspend and active:
        return SetWorkloadActive(False)
    if not o.suspend and not active:
        if ours:
            return SetWorkloadActive(True)
        evicted = conds.get("Evicted") or {}
        return Outcome(
            Phase.PENDING.value, "Deactivated",
            f"Kueue deactivated Workload {wl_name} ({evicted.get('reason') or 'spec.active is false'}: "
            f"{evicted.get('message') or 'no message'}); RayJob {name} does not run until the Workload's "
            "spec.active is true again",
        ), None
    if o.suspend or not held:
        return None, None
    admitted = conds.get("Admitted") or {}
    if admitted.get("status") == "True":
        return Outcome(
            Phase.PENDING.value, "Admitted",
            f"Kueue admitted Workload {wl_name} ({admitted.get('message') or 'quota reserved'}); "
            f"waiting for Kueue to start RayJob {name}",
        ), KUEUE_QUEUED_RECHECK
    why = next(
        (c.get("message") for t in ("Evicted", "QuotaReserved", "Admitted")
         if (c := conds.get(t)) and c.get("message") and (t != "Evicted" or c.get("status") == "True")),
        None,
    )
    return Outcome(
        Phase.PENDING.value, "Queued",
        f"queued in Kueue LocalQueue {queue} (Workload {wl_name}): {why or 'waiting for admission'}",
    ), KUEUE_QUEUED_RECHECK



def _settle(o: Observation, outcome: Outcome, mirror: dict[str, Any] | None, recheck: float | None = None) -> Step:
    """What an attempt's outcome means for the PruneJob: report, retry (now or later), or finish."""
    if o.suspend and not outcome.finished and outcome.phase != Phase.SUSPENDED.value:
        who = "Kueue to evict" if o.queue else "KubeRay to suspend"
        outcome = Outcome(Phase.SUSPENDED.value, "Suspending", f"waiting for {who} the RayJob")
    elif not o.suspend and outcome.phase == Phase.SUSPENDED.value:
        outcome = Outcome(Phase.PENDING.value, "Resuming", "waiting for KubeRay to resume the RayJob")
    conflict = outcome.conflict and differs(o.recorded or {}, mirror or {})
    if not outcome.failed:
        if outcome.phase == Phase.SUCCEEDED.value:
            return Finish(outcome, mirror, conflict_event=conflict)
        return Report(outcome, mirror, conflict_event=conflict, recheck=recheck)

    # Whatever KubeRay's deployment status says: a finished RayJob keeps its cluster (and GPUs) for
    # ttlSecondsAfterFinished.
    release = o.rayjob is not None
    if outcome.retryable and o.attempts <= o.backoff_limit:
        if o.suspend:
            held = Outcome(Phase.SUSPENDED.value, "Suspended", "suspended between attempts")
            return HoldSuspended(held, mirror, conflict_event=conflict, release=release)
        ended = parse_time((mirror or {}).get("endTime")) or o.now
        due = ended + timedelta(seconds=o.retry_delay)
        if o.now >= due and o.rayjob is None:
            return Retry(outcome, mirror, conflict_event=conflict, attempt=o.attempts + 1)
        if o.now >= due:
            assert o.rayjob is not None
            releasing = Outcome(
                Phase.PENDING.value, "ReleasingAttempt",
                f"attempt {o.attempts} failed ({outcome.reason}: {outcome.message}); attempt {o.attempts + 1} of "
                f"{o.backoff_limit + 1} starts once RayJob {o.rayjob['metadata']['name']} and its Ray cluster "
                "are deleted (they hold the failed attempt's GPUs until then)",
            )
            return WaitRetry(releasing, mirror, conflict_event=conflict, release=True,
                             due=o.now + timedelta(seconds=RELEASE_RECHECK))
        waiting = Outcome(
            Phase.PENDING.value, "BackoffRetry",
            f"attempt {o.attempts} failed ({outcome.reason}: {outcome.message}); attempt {o.attempts + 1} of "
            f"{o.backoff_limit + 1} starts at {rfc3339(due)}",
        )
        return WaitRetry(waiting, mirror, conflict_event=conflict, release=release, due=due)
    if o.attempts > 1:
        outcome = dataclasses.replace(
            outcome,
            reason=outcome.reason if outcome.reason != "JobFailed" else "BackoffLimitExceeded",
            message=f"{outcome.message}; gave up after {o.attempts} attempts (spec.backoffLimit={o.backoff_limit})",
        )
    return Finish(outcome, mirror, conflict_event=conflict, release=release)
