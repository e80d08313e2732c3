"""The PruneJob's state machine, pure: an observation in, the next step out.

reconcile.py reads the world (the PruneJob's status, the RayJob of its current attempt, the clock),
calls `decide`, and carries the step out (API calls, the status write, events). After a step that
changes what was observed (accepting the spec, patching the RayJob's suspend) it observes and decides
again. Every branch of the lifecycle is the one switch below, over explicit states, so each can be
tested without a cluster (tests/operator/test_machine.py); nothing here calls the API or reads a clock.

    not started ------------------------------------------------> Accept
    past spec.activeDeadlineSeconds ----------------------------> Expire
    no attempt yet ---------------------------------------------> Start(1)
    the attempt's RayJob is gone: ended (status.rayJob) --------> settle(recorded outcome)
                                  not ended --------------------> Start(same attempt, recreated)
    RayJob suspend != spec.suspend (not finished) --------------> SetSuspend
    otherwise: settle(observe_rayjob(RayJob))
      failed, retryable, attempts <= backoffLimit: suspended ---> HoldSuspended
                                                   due ---------> Retry(next attempt)
                                                   not due -----> WaitRetry(until due)
      failed otherwise, or succeeded ---------------------------> Finish
      running / pending / suspended ----------------------------> Report
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from interlace.schema.spec import Phase
from interlace_operator.status import (
    JDS_FINISHED,
    Outcome,
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
    deadline: datetime | None  # startTime + deadline_seconds
    retry_delay: float  # seconds after attempt `attempts` failed before the next one starts
    now: datetime


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
class _Write:
    """A step that writes `outcome` and `mirror` (status.rayJob) to status; `conflict_event`: KubeRay's
    two statuses disagree in a way not reported before; `release`: delete the attempt's RayJob after
    the write (it failed but KubeRay has not torn it down, so it still holds GPUs)."""

    outcome: Outcome
    mirror: dict[str, Any] | None
    conflict_event: bool = False
    release: bool = False


@dataclass(frozen=True)
class Report(_Write):
    """Still going: record progress; look again at the deadline."""


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


Step = Accept | Start | SetSuspend | Report | Finish | Expire | HoldSuspended | WaitRetry | Retry


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
            f"the PruneJob ran longer than spec.activeDeadlineSeconds={o.deadline_seconds} (from status.startTime)",
            finished=True, failed=True,
        )
        return Expire(outcome, mirror, release=o.rayjob is not None and _jds(o.rayjob) not in JDS_FINISHED)
    if o.attempts == 0:
        return Start(1)
    if o.rayjob is None:
        recorded = o.recorded or {}
        if recorded.get("name") == o.rayjob_name and recorded.get("endTime"):
            return _settle(o, outcome_from_mirror(recorded, stage=o.stage, dry_run=o.dry_run), recorded)
        return Start(o.attempts, recreated=True)
    have = bool((o.rayjob.get("spec") or {}).get("suspend"))
    if have != o.suspend and _jds(o.rayjob) not in JDS_FINISHED:
        return SetSuspend(o.suspend)
    outcome = observe_rayjob(o.rayjob, stage=o.stage, dry_run=o.dry_run)
    return _settle(o, outcome, rayjob_mirror(o.rayjob, o.recorded, finished=outcome.finished, now=o.now))


def _settle(o: Observation, outcome: Outcome, mirror: dict[str, Any] | None) -> Step:
    """What an attempt's outcome means for the PruneJob: report, retry (now or later), or finish."""
    if o.suspend and not outcome.finished and outcome.phase != Phase.SUSPENDED.value:
        outcome = Outcome(Phase.SUSPENDED.value, "Suspending", "waiting for KubeRay to suspend the RayJob")
    elif not o.suspend and outcome.phase == Phase.SUSPENDED.value:
        outcome = Outcome(Phase.PENDING.value, "Resuming", "waiting for KubeRay to resume the RayJob")
    conflict = outcome.conflict and differs(o.recorded or {}, mirror or {})
    if not outcome.failed:
        step = Finish if outcome.phase == Phase.SUCCEEDED.value else Report
        return step(outcome, mirror, conflict_event=conflict)

    release = o.rayjob is not None and _jds(o.rayjob) not in JDS_FINISHED
    if outcome.retryable and o.attempts <= o.backoff_limit:
        if o.suspend:
            held = Outcome(Phase.SUSPENDED.value, "Suspended", "suspended between attempts")
            return HoldSuspended(held, mirror, conflict_event=conflict, release=release)
        ended = parse_time((mirror or {}).get("endTime")) or o.now
        due = ended + timedelta(seconds=o.retry_delay)
        if o.now >= due:
            return Retry(outcome, mirror, conflict_event=conflict, release=release, attempt=o.attempts + 1)
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
