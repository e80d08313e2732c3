"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go's leaderelection does it.

Several operator replicas (the chart's `replicaCount` > 1) all run kopf: every replica watches
PruneJobs and RayJobs and keeps its queue of keys filled, but only the replica holding the Lease
starts its reconcile workers, so exactly one writes. When the leader dies, its Lease expires after
`leaseDurationSeconds` and a standby takes it over and starts its workers: it already has every
key queued, and reconciling is level-based (deterministic RayJob names, state in status), so the
new leader continues where the old one stopped without creating a second RayJob for any attempt.
A leader that shuts down cleanly releases the Lease, so a rolling update hands over at once.

The algorithm, as in client-go:

* the Lease records holderIdentity, leaseDurationSeconds, acquireTime, renewTime and
  leaseTransitions; every write is an update with the resourceVersion read, so two candidates
  cannot both win (the loser gets 409 Conflict);
* a candidate only takes a Lease held by someone else when the record has not changed for
  leaseDurationSeconds *as measured on its own monotonic clock* since it last saw it change:
  renewTime is never compared with the local wall clock, so clock skew between nodes is harmless;
* the leader renews every `retry_period`; if it cannot renew for `renew_deadline` (< lease
  duration) it stops leading before anybody else may take over, and the process exits so the pod
  restarts as a standby (a leader that lost the Lease must not keep writing).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

# What the operator's ServiceAccount needs, in the Lease's namespace only (a Role, not a ClusterRole).
LEASE_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
]


def _now_micro() -> str:
    """MicroTime as the API wants it (RFC 3339 with microseconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity(base: str = "") -> str:
    """`base` (POD_NAME when the Deployment passes it, the downward API), else the host name; plus a
    random suffix."""
    return f"{base or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str = "interlace-operator"
    identity: str = ""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.renew_deadline < self.lease_duration:
            raise ValueError("the renew deadline must be shorter than the lease duration")
        if not 0 < self.retry_period < self.renew_deadline:
            raise ValueError("the retry period must be positive and shorter than the renew deadline")


class LeaderElector:
    """Acquire, hold and release one Lease from a background thread.

    `on_started_leading` runs (in the elector's thread) once the Lease is ours; `on_stopped_leading`
    once we lost it (not after `release()`). `is_leader` can be read from any thread."""

    def __init__(
        self,
        api_client: Any,
        config: LeaseConfig,
        *,
        on_started_leading: Callable[[], None],
        on_stopped_leading: Callable[[], None],
    ) -> None:
        from kubernetes import client

        self.api = client.CoordinationV1Api(api_client)
        self.config = config
        self.identity = config.identity or default_identity()
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._leader = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # client-go's observedRecord/observedTime: when did the record last change, by OUR clock.
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self.transitions_seen = 0

    @property
    def is_leader(self) -> bool:
        return self._leader.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        cfg = self.config
        log.info("leader election: candidate %s for Lease %s/%s", self.identity, cfg.namespace, cfg.name)
        while not self._stop.is_set():
            if self._try_acquire_or_renew():
                break
            self._stop.wait(cfg.retry_period)
        if self._stop.is_set():
            return
        self._leader.set()
        log.info("leader election: %s is the leader (Lease %s/%s)", self.identity, cfg.namespace, cfg.name)
        try:
            self._on_started()
        except Exception:  # the callback must not kill the renew loop silently
            log.exception("leader election: on_started_leading failed")
        last_renew = time.monotonic()
        while not self._stop.wait(cfg.retry_period):
            if self._try_acquire_or_renew():
                last_renew = time.monotonic()
                continue
            if time.monotonic() - last_renew >= cfg.renew_deadline:
                self._leader.clear()
                log.error("leader election: %s could not renew Lease %s/%s for %.0fs: no longer the leader",
                          self.identity, cfg.namespace, cfg.name, cfg.renew_deadline)
                self._on_stopped()
                return

    def _try_acquire_or_renew(self) -> bool:
        """One attempt. True when we hold the Lease afterwards."""
        from kubernetes.client.exceptions import ApiException

        cfg = self.config
        now = time.monotonic()
        try:
            lease = self.api.read_namespaced_lease(cfg.name, cfg.namespace)
        except ApiException as err:
            if err.status != 404:
                log.warning("leader election: reading Lease %s/%s failed: %s", cfg.namespace, cfg.name, err.reason)
                return False
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": cfg.name, "namespace": cfg.namespace},
                "spec": self._spec(transitions=0, acquire=True),
            }
            try:
                self.api.create_namespaced_lease(cfg.namespace, body)
            except ApiException as create_err:
                if create_err.status != 409:
                    log.warning("leader election: creating Lease failed: %s", create_err.reason)
                return False
            self._observed, self._observed_at = None, now
            return True
        except Exception as err:  # connection errors: keep trying until the deadline
            log.warning("leader election: reading Lease %s/%s failed: %s", cfg.namespace, cfg.name, err)
            return False

        spec = lease.spec
        holder = spec.holder_identity or ""
        duration = float(spec.lease_duration_seconds or cfg.lease_duration)
        record = (holder, spec.renew_time, spec.acquire_time, spec.lease_transitions, duration)
        if record != self._observed:
            self._observed, self._observed_at = record, now
        mine = holder == self.identity
        if holder and not mine and now < self._observed_at + duration:
            return False  # held by a live leader
        transitions = int(spec.lease_transitions or 0) + (0 if mine else 1)
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": cfg.name, "namespace": cfg.namespace,
                         "resourceVersion": lease.metadata.resource_version},
            "spec": self._spec(transitions=transitions, acquire=not mine,
                               acquire_time=None if not mine else spec.acquire_time),
        }
        try:
            self.api.replace_namespaced_lease(cfg.name, cfg.namespace, body)
        except ApiException as err:
            if err.status != 409:
                log.warning("leader election: updating Lease failed: %s", err.reason)
            return False
        except Exception as err:
            log.warning("leader election: updating Lease failed: %s", err)
            return False
        if not mine:
            self.transitions_seen = transitions
            log.info("leader election: %s took over Lease %s/%s from %s", self.identity, cfg.namespace,
                     cfg.name, holder or "(released)")
        self._observed_at = now
        return True

    def _spec(self, *, transitions: int, acquire: bool, acquire_time: Any = None) -> dict[str, Any]:
        now = _now_micro()
        if acquire_time is not None and not isinstance(acquire_time, str):
            acquire_time = acquire_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.config.lease_duration)),
            "acquireTime": now if acquire else acquire_time or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    # ------------------------------------------------------------------ shutdown

    def release(self) -> None:
        """Stop the loop; if we lead, hand the Lease back at once (holder cleared, duration 1 s), so a
        standby takes over within its retry period instead of waiting for the Lease to expire."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if not self._leader.is_set():
            return
        self._leader.clear()
        cfg = self.config
        try:
            lease = self.api.read_namespaced_lease(cfg.name, cfg.namespace)
            if lease.spec.holder_identity != self.identity:
                return
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": cfg.name, "namespace": cfg.namespace,
                             "resourceVersion": lease.metadata.resource_version},
                "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _now_micro(),
                         "acquireTime": _now_micro(), "leaseTransitions": int(lease.spec.lease_transitions or 0)},
            }
            self.api.replace_namespaced_lease(cfg.name, cfg.namespace, body)
            log.info("leader election: %s released Lease %s/%s", self.identity, cfg.namespace, cfg.name)
        except Exception as err:  # best effort: the Lease expires anyway
            log.warning("leader election: releasing Lease %s/%s failed: %s", cfg.namespace, cfg.name, err)
