"""Writing a PruneJob's status and events: the operator's half of "one writer per field".

The reconciler (reconcile.py) decides; this writes what it decided: the operator-owned status fields
(phase, conditions, observedGeneration, rayJob, attempts, completionTime; machine steps write
startTime and activeSince through `patch`) as JSON merge patches of what changed, and the Events
users see, each under a deterministic name, so a rerun after a crash or the replay on a restarted
operator's first reconcile posts nothing twice. It also remembers the resourceVersions it wrote, so
the handlers can drop the watch events of its own writes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from interlace.schema.spec import PruneJob, SpecError, parse_prunejob, retention_line
from interlace.schema.status import Phase
from interlace_operator import builders, names
from interlace_operator.kube import Kube
from interlace_operator.metrics import Metrics
from interlace_operator.status import (
    STAGE_VALUES,
    TERMINAL_PHASES,
    Outcome,
    condition_reason,
    desired_conditions,
    differs,
    merge_conditions,
    parse_time,
    rayjob_mirror,
    rfc3339,
    strip_none,
)

log = logging.getLogger(__name__)


@dataclass
class Ctx:
    """What one reconcile knows about its PruneJob."""

    body: dict[str, Any]
    job: PruneJob
    owner: builders.Owner
    status: dict[str, Any]
    now: datetime
    first: bool = False  # the first reconcile of this PruneJob in this process
    replayed: bool = False  # its events were replayed in this pass (see _replay_events)
    recheck: float | None = None  # look again after this many seconds at the latest (e.g. while queued)

    @property
    def generation(self) -> int | None:
        return self.body["metadata"].get("generation")


class StatusWriter:
    """The status writes and Events of every PruneJob this operator reconciles."""

    def __init__(self, kube: Kube, metrics: Metrics | None, clock: Callable[[], datetime]) -> None:
        self.kube = kube
        self.metrics = metrics
        self.clock = clock
        # resourceVersions this process wrote, by (kind, namespace, name): watch events carrying them
        # report our own writes, which need no reconcile (see handlers.py).
        self.own_versions: dict[tuple[str, str, str], str] = {}

    def is_own_write(self, kind: str, namespace: str, name: str | None, resource_version: str | None) -> bool:
        if name is None or resource_version is None:
            return False
        return self.own_versions.get((kind, namespace, name)) == resource_version

    def forget(self, namespace: str, name: str) -> None:
        self.own_versions.pop(("PruneJob", namespace, name), None)

    def patch(self, ctx: Ctx, patch: dict[str, Any], resource_version: str | None = None) -> None:
        result = self.kube.patch_prunejob_status(
            ctx.owner.namespace, ctx.owner.name, patch, resource_version=resource_version
        )
        rv = (result or {}).get("metadata", {}).get("resourceVersion")
        if rv:
            self.own_versions[("PruneJob", ctx.owner.namespace, ctx.owner.name)] = rv

    def record_rayjob(self, rayjob: dict[str, Any]) -> None:
        meta = rayjob.get("metadata", {})
        if meta.get("resourceVersion"):
            self.own_versions[("RayJob", meta["namespace"], meta["name"])] = meta["resourceVersion"]

    def rayjob_created_event(self, ctx: Ctx, attempt: int) -> None:
        job = ctx.job
        res = job.spec.resources
        gpus = f"{res.workers} worker(s) x {res.gpus_per_worker} GPU"
        rj_name = names.rayjob_name(ctx.owner.name, attempt)
        self.event(
            ctx, "Normal", "RayJobCreated",
            f"created RayJob {rj_name} (attempt {attempt} of {job.spec.backoff_limit + 1}, {gpus}; "
            f"{self.summary(job)})",
            key=f"attempt-{attempt}",
        )

    def mirror(self, ctx: Ctx, rayjob: dict[str, Any] | None, *, finished: bool) -> dict[str, Any] | None:
        if rayjob is None:
            return ctx.status.get("rayJob")
        return rayjob_mirror(rayjob, ctx.status.get("rayJob"), finished=finished, now=ctx.now)

    def finish(self, ctx: Ctx, outcome: Outcome, mirror: dict[str, Any] | None, attempts: int | None = None) -> None:
        start = parse_time(ctx.status.get("startTime")) or ctx.now
        self.write(ctx, outcome, mirror, attempts=attempts, completion=ctx.now)
        if self.metrics:
            self.metrics.durations.labels(outcome.phase.lower()).observe(max(0.0, (ctx.now - start).total_seconds()))

    def write(
        self,
        ctx: Ctx,
        outcome: Outcome,
        mirror: dict[str, Any] | None,
        *,
        attempts: int | None = None,
        completion: datetime | None = None,
    ) -> None:
        """Merge-patch the operator-owned status fields that changed, and post transition events."""
        old = dict(ctx.status)  # a snapshot: ctx.status is updated below
        new: dict[str, Any] = {
            "phase": outcome.phase,
            "observedGeneration": ctx.generation,
            "conditions": merge_conditions(
                old.get("conditions"),
                desired_conditions(outcome.phase, outcome.reason, outcome.message, ready=outcome.ready),
                generation=ctx.generation,
                now=ctx.now,
            ),
        }
        if attempts is not None:
            new["attempts"] = attempts
        if mirror is not None:
            new["rayJob"] = mirror
        if completion is not None and not old.get("completionTime"):
            new["completionTime"] = rfc3339(completion)
        patch = {k: v for k, v in new.items() if differs(old.get(k), v)}
        if patch:
            self.patch(ctx, patch)
            ctx.status.update({k: (strip_none(v) if k == "rayJob" else v) for k, v in patch.items()})
        if self.metrics:
            self.metrics.set_phase(ctx.owner.namespace, ctx.owner.name, outcome.phase)
        if old.get("phase") != outcome.phase or condition_reason(old, "Ready") != condition_reason(new, "Ready"):
            log.info(
                "%s/%s: %s -> %s (%s: %s)", ctx.owner.namespace, ctx.owner.name, old.get("phase"),
                outcome.phase, outcome.reason, outcome.message,
            )
            self.transition_event(ctx, old.get("phase"), outcome)

    def transition_event(self, ctx: Ctx, old_phase: str | None, outcome: Outcome) -> None:
        phase = outcome.phase
        if phase == Phase.SUCCEEDED.value:
            self.event(ctx, "Normal", outcome.reason, outcome.message)
        elif phase == Phase.FAILED.value:
            self.event(ctx, "Warning", outcome.reason, outcome.message)
        elif phase == Phase.SUSPENDED.value and old_phase != phase:
            self.event(ctx, "Normal", "Suspended", outcome.message)
        elif phase in STAGE_VALUES and old_phase != phase:
            self.event(ctx, "Normal", phase, f"stage {phase} started")
        elif phase == Phase.PENDING.value and outcome.reason in {"JobRunning", "JobSubmitted", "Queued", "Admitted"}:
            self.event(ctx, "Normal", outcome.reason, outcome.message)

    def success_message(self, ctx: Ctx, outcome: Outcome) -> str:
        results = ctx.status.get("results") or {}
        plan = ctx.status.get("plan") or {}
        bits = [outcome.message]
        if results.get("summary"):  # a ratio sweep (every variant) or a retention target (the verdict)
            bits.append(results["summary"])
            return "; ".join(bits)
        if plan.get("drop") is not None:
            bits.append(f"dropped layers {plan['drop']} of {plan.get('numLayers')}")
        if results.get("outputUri"):
            bits.append(f"output {results['outputUri']}")
        both = retention_line(results.get("retentionOutOfDomain"), results.get("retentionInDomain"))
        if both is not None:  # spec.evaluation.outOfDomainData: both perplexity retentions, labelled
            bits.append(both)
        elif results.get("relativePerformance") is not None:
            bits.append(f"retention {results['relativePerformance']:.1f}%")
        return "; ".join(bits)

    def event(self, ctx: Ctx, type_: str, reason: str, message: str, *, key: str | None = None) -> None:
        """Post an Event with a deterministic name: (PruneJob uid, reason, key), key defaulting to the
        recorded attempt and the generation. Posting it again (a rerun after a crash, the replay on
        the first reconcile of a process) hits AlreadyExists instead of making a duplicate."""
        if key is None:
            key = f"attempt-{ctx.status.get('attempts') or 0}/generation-{ctx.generation}"
        digest = hashlib.sha256(f"{ctx.owner.uid}|{reason}|{key}".encode()).hexdigest()[:16]
        self.kube.post_event(ctx.body, type_, reason, message, name=f"{ctx.owner.name}.{digest}")

    def replay_terminal(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        """_replay_events for a PruneJob that already finished."""
        try:
            job = parse_prunejob({"metadata": {"name": body["metadata"]["name"]}, "spec": body.get("spec")})
        except SpecError:
            return
        ctx = Ctx(body, job, builders.Owner.from_body(body), status, self.clock(), first=True)
        self.replay_events(ctx, int(status.get("attempts") or 0), None)

    def replay_events(self, ctx: Ctx, attempts: int, current: dict[str, Any] | None) -> None:
        """First reconcile of a PruneJob in this process: post again the events of the state recorded
        in status (its name makes each a no-op if the previous process posted it), so an operator
        killed between a status write and its event loses nothing. Only for PruneJobs whose status
        changed within REPLAY_WINDOW (a restart after a crash comes sooner; older PruneJobs would only
        cost AlreadyExists answers)."""
        status = ctx.status
        phase = status.get("phase")
        if not phase or not _status_written_since(ctx.body, ctx.now - REPLAY_WINDOW):
            return
        if attempts and (current is not None or phase in TERMINAL_PHASES):
            self.rayjob_created_event(ctx, attempts)
        ctype = {Phase.SUCCEEDED.value: "Succeeded", Phase.FAILED.value: "Failed"}.get(phase, "Ready")
        cond = next((c for c in status.get("conditions") or [] if c.get("type") == ctype), None)
        if cond and cond.get("reason"):
            self.transition_event(ctx, None, Outcome(phase, cond["reason"], cond.get("message") or ""))

    @staticmethod
    def summary(job: PruneJob) -> str:
        p = job.spec.pruning
        if p.ratios is not None:
            amount = "ratios " + ", ".join(f"{r:g}" for r in p.ratios)
        elif p.target is not None:
            amount = f"target retention {p.target.min_retention:g}, at most ratio {p.target.max_ratio:g}"
        else:
            amount = f"ratio {p.ratio}" if p.ratio is not None else f"{p.num_layers} layers"
        return f"{job.spec.model.source}, {p.strategy}, {amount}{', dry run' if job.spec.dry_run else ''}"


# How far back a restarted operator re-posts the events of the recorded state (see _replay_events).
REPLAY_WINDOW = timedelta(hours=1)


def _status_written_since(body: dict[str, Any], since: datetime) -> bool:
    """Whether the status subresource was written after `since` (managedFields times; no record: True)."""
    times = [
        t for m in body.get("metadata", {}).get("managedFields") or []
        if m.get("subresource") == "status" and (t := parse_time(m.get("time"))) is not None
    ]
    return not times or max(times) >= since
