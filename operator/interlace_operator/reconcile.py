"""Level-based reconciliation of one PruneJob: read the world, decide, write, return when to look again.

Why level-based instead of kopf's create/update handlers: every decision is recomputed from what is in
the API server (the PruneJob's status and the RayJob of the current attempt), so a reconcile that
runs twice, or after the operator was killed half-way, does the same thing as one that ran once.
Nothing lives only in memory and kopf keeps no bookkeeping on the object (no progress annotations,
no finalizer, nothing under status).

The state lives in status (operator-written fields only: phase, conditions, observedGeneration,
rayJob, attempts, startTime, completionTime). Restart safety comes from deterministic names: attempt
n's RayJob is `<prunejob>-<n>`; before acting, the reconciler looks for attempt n+1 and adopts it if
a previous run created it but died before recording it. So there is never a second RayJob for an
attempt, and the retry budget (`attempts` vs `spec.backoffLimit`) survives restarts.

Order of a first reconcile: validate -> allow-lists and a server-side dry run of every child (what the
API server would refuse becomes a Failed condition, before anything is frozen) -> write startTime with
a resourceVersion precondition (from then on the CRD's CEL rule freezes the spec) -> ServiceAccount,
Role, RoleBinding (created, or adopted when this PruneJob's UID controls them) -> RayJob attempt 1,
which carries the spec -> status. Events are posted on transitions only, derived from the status
diff, so a restart does not repeat them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from interlace.schema.spec import (
    API_GROUP,
    API_VERSION,
    KIND,
    SpecError,
    parse_prunejob,
)
from interlace.schema.status import Phase
from interlace_operator import builders, names
from interlace_operator.config import OperatorConfig
from interlace_operator.kube import (
    ConflictError,
    Kube,
    KubeRayMissing,
    KueueMissing,
    NameTaken,
    Refused,
    Stale,
)
from interlace_operator.machine import (
    KUEUE_NO_WORKLOAD_RECHECK,
    WORKLOAD_SUSPENDED_ANNOTATION,
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
    Step,
    WaitRetry,
    decide,
)
from interlace_operator.metrics import Metrics
from interlace_operator.status import (
    JDS_FINISHED,
    TERMINAL_PHASES,
    Outcome,
    cluster_provisioned,
    condition_reason,
    desired_conditions,
    merge_conditions,
    observe_rayjob,
    parse_time,
    pod_problems,
    rfc3339,
    utcnow,
)
from interlace_operator.writer import Ctx, StatusWriter

log = logging.getLogger(__name__)

_AGAIN = object()  # _act: observe and decide again at once


class Requeue(Exception):
    """Reconcile again after `delay` seconds (e.g. a 409 from a concurrent writer)."""

    def __init__(self, delay: float, why: str) -> None:
        super().__init__(why)
        self.delay = delay


class Reconciler:
    def __init__(
        self,
        kube: Kube,
        config: OperatorConfig,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.kube = kube
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.writer = StatusWriter(kube, metrics, clock)
        # PruneJobs whose "did a previous run create an attempt it never recorded?" probe is done:
        # within one process every RayJob created is recorded before the next reconcile of the job.
        self._probed: set[tuple[str, str]] = set()
        # PruneJobs whose recorded state's events were replayed in this process (see _replay_events).
        self._replayed: set[tuple[str, str]] = set()
        self._children_pool = ThreadPoolExecutor(max_workers=max(4, config.workers), thread_name_prefix="children")

    def forget(self, namespace: str, name: str) -> None:
        self._probed.discard((namespace, name))
        self._replayed.discard((namespace, name))
        self.writer.forget(namespace, name)

    # ================================================================== entry point

    def reconcile(self, namespace: str, name: str) -> float | None:
        """One pass. Returns seconds until the next pass is needed (None: wait for an event)."""
        started = time.monotonic()
        try:
            return self._reconcile(namespace, name)
        finally:
            if self.metrics:
                self.metrics.reconcile_seconds.observe(time.monotonic() - started)

    def _reconcile(self, namespace: str, name: str) -> float | None:
        body = self.kube.get_prunejob(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.forget(namespace, name)
            if self.metrics:
                self.metrics.forget(namespace, name)
            return None  # garbage collection removes the children (owner references)
        status = dict(body.get("status") or {})
        if self.metrics:
            self.metrics.set_phase(namespace, name, status.get("phase"))
        first = (namespace, name) not in self._replayed
        self._replayed.add((namespace, name))
        if status.get("phase") in TERMINAL_PHASES and not _fixed_invalid_spec(body, status):
            if first:
                self.writer.replay_terminal(body, status)
            return None

        now = self.clock()
        try:
            job = parse_prunejob(
                {
                    "apiVersion": f"{API_GROUP}/{API_VERSION}",
                    "kind": KIND,
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": body.get("spec"),
                },
                cluster=True,
            )
        except SpecError as err:
            ctx = Ctx(body, None, builders.Owner.from_body(body), status, now)  # type: ignore[arg-type]
            self.writer.finish(ctx, Outcome(Phase.FAILED.value, "InvalidSpec", str(err), finished=True, failed=True), None)
            return None
        ctx = Ctx(body, job, builders.Owner.from_body(body), status, now, first=first)
        try:
            return self._run(ctx)
        except (ConflictError, KubeRayMissing) as err:
            # ChildConflict: something else holds one of our deterministic names (reported, never
            # adopted). KubeRayMissing: no RayJob CRD. Both wait, with one event per episode.
            reason = "ChildConflict" if isinstance(err, ConflictError) else "KubeRayMissing"
            self.writer.write(ctx, Outcome(Phase.PENDING.value, reason, str(err)), None)
            self.writer.event(ctx, "Warning", reason, str(err))  # one per attempt and generation (its name)
            delay = 30.0 if isinstance(err, ConflictError) else self.config.kuberay_retry_seconds
            raise Requeue(delay, str(err)) from None

    def _run(self, ctx: Ctx) -> float | None:
        """Observe, decide (machine.decide: pure), act; again after a step that changes what is observed."""
        while True:
            obs = self._observe(ctx)
            result = self._act(ctx, obs, decide(obs))
            if result is not _AGAIN:
                return result  # type: ignore[return-value]

    def _act(self, ctx: Ctx, obs: Observation, step: Step) -> float | object | None:
        """Carry out one step of the machine: the one dispatch over machine.Step. Returns when to look
        again (seconds, None: on the next event), or _AGAIN to observe and decide once more at once.

        A step that writes an outcome also does what goes with it: its events, a retry, and the
        release of a failed attempt's RayJob only after the failure is recorded (a crash loses nothing)."""
        namespace, name = ctx.owner.namespace, ctx.owner.name
        if isinstance(step, Report | Finish | HoldSuspended | WaitRetry | Retry) and step.conflict_event:
            self.writer.event(ctx, "Warning", "RayJobStatusConflict", step.outcome.message)

        def release() -> None:
            if getattr(step, "release", False) and obs.rayjob is not None:
                self.kube.delete_rayjob(namespace, obs.rayjob["metadata"]["name"])

        match step:
            case Accept():
                refused = self._preflight(ctx)
                if refused is not None:
                    self.writer.finish(ctx, refused, None)
                    return None
                self._accept(ctx)
                # RayJobs are only ever created after startTime is recorded: nothing to adopt yet.
                self._probed.add((namespace, name))
                return _AGAIN
            case Start(attempt=attempt, retry=retry, recreated=recreated):
                if recreated:
                    self.writer.event(ctx, "Warning", "RayJobMissing",
                                      f"RayJob {obs.rayjob_name} disappeared before it finished; recreating it")
                return self._start_attempt(ctx, attempt, retry=retry)
            case SetSuspend(want=want):
                assert obs.rayjob is not None
                rj = obs.rayjob["metadata"]["name"]
                self.writer.record_rayjob(self.kube.patch_rayjob(namespace, rj, {"spec": {"suspend": want}}))
                self.writer.event(
                    ctx, "Normal", "Suspending" if want else "Resuming",
                    f"{'suspending' if want else 'resuming'} RayJob {rj}"
                    + (" (its Ray cluster is deleted)" if want else ""),
                )
                return _AGAIN
            case SetActiveSince(since=since):
                value = rfc3339(since) if since is not None else None
                self.writer.patch(ctx, {"activeSince": value})
                if value is None:
                    ctx.status.pop("activeSince", None)
                else:
                    ctx.status["activeSince"] = value
                return _AGAIN
            case SetWorkloadActive(want=want):
                assert obs.workload is not None and obs.rayjob is not None
                wl, rj = obs.workload["metadata"]["name"], obs.rayjob["metadata"]["name"]
                self.kube.patch_workload(obs.workload, {
                    "metadata": {"annotations": {WORKLOAD_SUSPENDED_ANNOTATION: None if want else "true"}},
                    "spec": {"active": want},
                })
                self.writer.event(
                    ctx, "Normal", "Resuming" if want else "Suspending",
                    f"reactivated Kueue Workload {wl}: Kueue queues RayJob {rj} again" if want else
                    f"deactivated Kueue Workload {wl}: Kueue evicts RayJob {rj} (its Ray cluster is deleted) "
                    "and releases its quota",
                )
                return _AGAIN
            case Expire():
                release()
                self.writer.finish(ctx, step.outcome, step.mirror, attempts=obs.attempts)
                return None
            case Report():
                self.writer.write(ctx, step.outcome, step.mirror, attempts=obs.attempts)
                ctx.recheck = step.recheck
                return self._next_check(ctx)
            case Finish():
                outcome = step.outcome
                if outcome.phase == Phase.SUCCEEDED.value:
                    # The condition message (and the event) name the plan, the output and the retention.
                    outcome = dataclasses.replace(outcome, message=self.writer.success_message(ctx, outcome))
                self.writer.finish(ctx, outcome, step.mirror, attempts=obs.attempts)
                release()
                return None
            case HoldSuspended():
                self.writer.write(ctx, step.outcome, step.mirror, attempts=obs.attempts)
                release()
                return None
            case WaitRetry():
                self.writer.write(ctx, step.outcome, step.mirror, attempts=obs.attempts)
                self.writer.event(ctx, "Warning", "AttemptFailed", step.outcome.message)  # one per attempt (its name)
                release()
                return max(0.05, (step.due - ctx.now).total_seconds())
            case Retry():
                release()
                result = self._start_attempt(ctx, step.attempt, retry=True)
                # posted once the new attempt is recorded; a rerun after a crash posts the same name
                self.writer.event(
                    ctx, "Normal", "Retrying",
                    f"started attempt {step.attempt} of {ctx.job.spec.backoff_limit + 1} after: {step.outcome.message}",
                    key=f"attempt-{step.attempt}",
                )
                return result
        raise AssertionError(f"unhandled step {step!r}")

    def _observe(self, ctx: Ctx) -> Observation:
        """Read what decide() needs: adopt attempts a crashed run created, the current RayJob."""
        status, job = ctx.status, ctx.job
        attempts = int(status.get("attempts") or 0)
        if status.get("startTime"):
            attempts = self._adopt_attempts(ctx, attempts)
        rj_name = names.rayjob_name(ctx.owner.name, attempts) if attempts else None
        current = self.kube.get_rayjob(ctx.owner.namespace, rj_name) if rj_name else None
        if current is not None:
            self.kube.check_owner(current, ctx.owner.uid, deleting_ok=True)
        queue = job.spec.resources.queue_name
        workload, kueue_missing = None, None
        held = bool(((current or {}).get("spec") or {}).get("suspend"))
        if (queue and current is not None and (held or job.spec.suspend)
                and (current.get("status") or {}).get("jobDeploymentStatus") not in JDS_FINISHED):
            try:
                workload = self.kube.workload_of(current)
            except KueueMissing as err:
                kueue_missing = str(err)
        problems: tuple[str, ...] = ()
        if (current is not None and job.spec.start_deadline_seconds and not held and not job.spec.suspend
                and (current.get("status") or {}).get("jobDeploymentStatus") not in JDS_FINISHED
                and not cluster_provisioned(current)):
            problems = self._pod_problems(ctx, current, attempts)
        if ctx.first and status.get("startTime") and not ctx.replayed:
            ctx.replayed = True
            self.writer.replay_events(ctx, attempts, current)
        return Observation(
            started=bool(status.get("startTime")),
            attempts=attempts,
            rayjob_name=rj_name,
            rayjob=current,
            recorded=status.get("rayJob"),
            stage=status.get("stage"),
            suspend=bool(job.spec.suspend),
            dry_run=job.spec.dry_run,
            backoff_limit=job.spec.backoff_limit,
            deadline_seconds=job.spec.active_deadline_seconds,
            deadline=self._deadline(ctx),
            active_since=parse_time(status.get("activeSince")),
            retry_delay=self.config.backoff(attempts) if attempts else 0.0,
            now=ctx.now,
            queue=queue,
            workload=workload,
            kueue_missing=kueue_missing,
            kueue_retry=self.config.kuberay_retry_seconds,
            start_deadline_seconds=job.spec.start_deadline_seconds,
            pod_problems=problems,
        )

    def _pod_problems(self, ctx: Ctx, rayjob: dict[str, Any], attempt: int) -> tuple[str, ...]:
        """What the attempt's pods (Ray pods of this attempt, the submitter) wait on, and the Warning
        events of its RayJob and RayCluster."""
        cluster = (rayjob.get("status") or {}).get("rayClusterName")
        involved = [rayjob["metadata"]["name"], *([cluster] if cluster else [])]
        selector = f"{names.LABEL_PRUNEJOB}={names.label_value(ctx.owner.name)}"
        pods, events = self.kube.pods_and_warnings(ctx.owner.namespace, selector, involved)
        mine = [p for p in pods
                if ((p.get("metadata") or {}).get("labels") or {}).get(names.LABEL_ATTEMPT, str(attempt)) == str(attempt)]
        return tuple(pod_problems(mine, events))

    # ================================================================== steps

    def _preflight(self, ctx: Ctx) -> Outcome | None:
        """Before the spec is frozen: the allow-lists, then every child created with server-side dry
        run (dryRun=All), so whatever the API server (schemas, admission, KubeRay's webhooks) would
        refuse becomes a Failed condition with the API's own message instead of a frozen spec whose
        RayJob never appears. Raises KubeRayMissing when the RayJob CRD is not installed."""
        problems = self.config.not_allowed(ctx.job.spec.resources)
        if problems:
            return Outcome(Phase.FAILED.value, "NotAllowed", "; ".join(problems), finished=True, failed=True)
        owner, job = ctx.owner, ctx.job
        deadline = job.spec.active_deadline_seconds
        children = [builders.role(owner), builders.service_account(owner)]
        if job.spec.resources.service_account_name:
            children.append(builders.status_token_secret(owner))
        if self.config.network_policy:
            children.append(self._network_policy(owner))
        # (no RoleBinding: its escalation check needs the Role to exist; its content is the operator's)
        children.append(
            builders.rayjob(job, owner, attempt=1, image=self.config.runtime_image, active_deadline_seconds=deadline)
        )
        for child in children:
            try:
                self.kube.dry_run_create(child)
            except NameTaken:
                continue  # create-or-adopt decides (ours, or a conflict)
            except Refused as err:
                return Outcome(
                    Phase.FAILED.value, "ChildRejected",
                    f"the API server refuses the {child['kind']} this spec makes: {err}",
                    finished=True, failed=True,
                )
        return None

    def _accept(self, ctx: Ctx) -> None:
        """Record startTime (freezing the spec via the CRD's CEL rule) before creating anything.

        The resourceVersion precondition makes this fail (Stale) if the spec changed since we read
        (and validated) it; the reconcile is then simply repeated with the new spec."""
        phase = Phase.SUSPENDED.value if ctx.job.spec.suspend else Phase.PENDING.value
        reason = "Suspended" if ctx.job.spec.suspend else "Accepted"
        message = "validated; creating the Ray job" if not ctx.job.spec.suspend else "created suspended"
        patch = {
            "phase": phase,
            "startTime": rfc3339(ctx.now),
            "completionTime": None,  # set if an earlier generation failed with InvalidSpec
            "observedGeneration": ctx.generation,
            "conditions": merge_conditions(
                ctx.status.get("conditions"),
                desired_conditions(phase, reason, message, ready=False),
                generation=ctx.generation,
                now=ctx.now,
            ),
        }
        try:
            self.writer.patch(ctx, patch, resource_version=ctx.body["metadata"]["resourceVersion"])
        except Stale:
            raise Requeue(0.2, "PruneJob changed while being accepted") from None
        ctx.status.update({k: v for k, v in patch.items() if v is not None})
        ctx.status.pop("completionTime", None)

    def _adopt_attempts(self, ctx: Ctx, attempts: int) -> int:
        """Count RayJobs that exist beyond status.attempts (created by a run that died before recording).
        Probed on the first reconcile of each PruneJob in this process only."""
        key = (ctx.owner.namespace, ctx.owner.name)
        if key in self._probed:
            return attempts
        while True:
            nxt = self.kube.get_rayjob(ctx.owner.namespace, names.rayjob_name(ctx.owner.name, attempts + 1))
            if nxt is None:
                self._probed.add(key)
                return attempts
            self.kube.check_owner(nxt, ctx.owner.uid, deleting_ok=True)
            attempts += 1
            log.info("adopted RayJob %s (attempt %d)", nxt["metadata"]["name"], attempts)

    def _deadline(self, ctx: Ctx) -> datetime | None:
        seconds = ctx.job.spec.active_deadline_seconds
        start = parse_time(ctx.status.get("activeSince"))
        if not seconds or start is None:
            return None
        return start + timedelta(seconds=seconds)

    def _network_policy(self, owner: builders.Owner) -> dict[str, Any]:
        peer = builders.Peer(pod_labels=self.config.kuberay_peer, namespace=self.config.kuberay_namespace)
        return builders.network_policy(owner, (peer,) if peer.pod_labels else ())

    def _ensure_children(self, ctx: Ctx) -> None:
        """The job's identity (ServiceAccount + Role + RoleBinding; with a shared ServiceAccount also
        the per-job account's token for the pods) and the NetworkPolicy of its Ray pods, before any
        RayJob (the spec travels in the RayJob)."""
        owner, job = ctx.owner, ctx.job
        wanted: list[tuple[dict[str, Any], tuple[str, ...]]] = [
            (builders.role(owner), ("rules",)),
            (builders.service_account(owner), ()),
        ]
        if self.config.network_policy:
            wanted.append((self._network_policy(owner), ("spec",)))
        # Independent objects: created in parallel (three round trips cost one). The RoleBinding
        # comes after its Role: the API server's escalation check reads the Role, and without the
        # `bind` verb the operator may only bind a Role that exists and whose rules it holds. The
        # token Secret comes after its ServiceAccount (the token controller deletes a token Secret
        # whose account does not exist).
        futures = [self._children_pool.submit(self.kube.ensure, body, owner.uid, keys) for body, keys in wanted]
        for future in futures:
            future.result()
        self.kube.ensure(builders.role_binding(owner), owner.uid, ("subjects",))
        if job.spec.resources.service_account_name:
            self.kube.ensure(builders.status_token_secret(owner), owner.uid, ())

    def _start_attempt(self, ctx: Ctx, attempt: int, *, retry: bool) -> float | None:
        """Create (or adopt) the RayJob of `attempt`, then record it in status."""
        owner, job = ctx.owner, ctx.job
        self._ensure_children(ctx)  # ConflictError: reported by _reconcile
        # KubeRay's own deadline for this RayJob: what is left of spec.activeDeadlineSeconds, all of it
        # when the clock has not started (status.activeSince: the first attempt, or a suspended job);
        # KubeRay counts it from its own start of the Ray cluster, so queue time is not spent.
        remaining = job.spec.active_deadline_seconds
        deadline = self._deadline(ctx)
        if deadline is not None:
            remaining = max(1, int((deadline - ctx.now).total_seconds()))
        body = builders.rayjob(
            job, owner, attempt=attempt, image=self.config.runtime_image, active_deadline_seconds=remaining
        )
        rj_name = body["metadata"]["name"]
        created = True
        try:
            rayjob = self.kube.create_rayjob(body)
            self.writer.record_rayjob(rayjob)
        except NameTaken:
            adopted = self.kube.get_rayjob(owner.namespace, rj_name)
            if adopted is None:
                raise Requeue(0.5, f"RayJob {rj_name} vanished while adopting it") from None
            self.kube.check_owner(adopted, owner.uid)
            rayjob = adopted
            created = False
        log.info("%s/%s: %s RayJob %s (attempt %d)", owner.namespace, owner.name,
                 "created" if created else "adopted", rj_name, attempt)
        if created and self.metrics:
            self.metrics.rayjobs_created.inc()
            if retry:
                self.metrics.retries.inc()
        if job.spec.resources.queue_name:
            ctx.recheck = KUEUE_NO_WORKLOAD_RECHECK  # to find its Workload (and carry spec.suspend to it)
        if job.spec.suspend:
            outcome = Outcome(Phase.SUSPENDED.value, "Suspended", f"RayJob {rj_name} created suspended")
        elif job.spec.resources.queue_name and (rayjob.get("spec") or {}).get("suspend"):
            outcome = Outcome(
                Phase.PENDING.value, "Queued",
                f"RayJob {rj_name} created suspended for Kueue LocalQueue {job.spec.resources.queue_name}; "
                "waiting for its Workload",
            )
        else:
            outcome = observe_rayjob(rayjob, stage=None, dry_run=job.spec.dry_run)
            if outcome.finished:  # an adopted attempt that already ended: settle on the next pass
                outcome = Outcome(Phase.PENDING.value, "ClusterInitializing", f"RayJob {rj_name} adopted")
        self.writer.write(ctx, outcome, self.writer.mirror(ctx, rayjob, finished=False), attempts=attempt)
        # After the attempt is recorded, also when adopted: a run killed between creating the RayJob
        # and this line never posted it, and the deterministic event name keeps it to one.
        self.writer.rayjob_created_event(ctx, attempt)
        return self._next_check(ctx)

    def _next_check(self, ctx: Ctx) -> float | None:
        """While running, look again at the deadline (events cover everything else), sooner when
        ctx.recheck asks (a queued job: its Workload's conditions change without a RayJob event)."""
        deadline = self._deadline(ctx)
        until = None if deadline is None else max(0.05, (deadline - ctx.now).total_seconds())
        if ctx.recheck is not None:
            until = ctx.recheck if until is None else min(until, ctx.recheck)
        return until

# Failures decided before the spec was frozen: the user may edit the spec and the job is looked at again.
PRE_START_FAILURES = ("InvalidSpec", "ChildRejected", "NotAllowed")


def _fixed_invalid_spec(body: dict[str, Any], status: dict[str, Any]) -> bool:
    """A job that failed before its start (invalid spec, a child the API server refuses, a request
    beyond the allow-lists) gets another look once its spec was edited (the spec is not frozen then:
    startTime is only written after all of that passed)."""
    return (
        status.get("phase") == Phase.FAILED.value
        and condition_reason(status, "Failed") in PRE_START_FAILURES
        and status.get("observedGeneration") != body["metadata"].get("generation")
        and not status.get("startTime")
    )
