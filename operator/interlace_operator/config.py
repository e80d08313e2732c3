"""Operator settings, read once from the environment (the Deployment / Helm values set them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_RUNTIME_IMAGE = "ghcr.io/interlace-dev/interlace-runtime:0.1.0"


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{key}={raw!r} is not a number") from None


def _bool(env: Mapping[str, str], key: str) -> bool:
    raw = env.get(key, "").strip().lower()
    if raw in {"", "0", "false", "no", "off"}:
        return False
    if raw in {"1", "true", "yes", "on"}:
        return True
    raise ValueError(f"{key}={raw!r} is not a boolean (true/false)")


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the operator reads from its environment.

    * INTERLACE_RUNTIME_IMAGE: image of the Ray head/worker pods when spec.resources.image is unset.
    * INTERLACE_WATCH_NAMESPACES: comma-separated namespaces to watch; empty = the whole cluster.
    * INTERLACE_HEALTH_PORT (8080) / INTERLACE_METRICS_PORT (9090): kopf liveness, Prometheus;
      0 disables the endpoint (tests run several operators on one host).
    * INTERLACE_WORKERS (16): reconcile threads (the kubernetes client is synchronous; the work is
      waiting on the API server, not CPU).
    * INTERLACE_RETRY_BACKOFF_SECONDS (10) and INTERLACE_RETRY_BACKOFF_MAX_SECONDS (600): a failed
      attempt is retried after base * 2**(attempt-1) seconds, capped.
    * INTERLACE_WATCH_TIMEOUT_SECONDS (300): server-side watch timeout; the client gives up 30 s
      later, so a silently dead connection cannot hang the operator.
    * INTERLACE_LEADER_ELECTION (false): run as one of several replicas; only the holder of the
      Lease INTERLACE_LEADER_ELECTION_NAME (interlace-operator) in INTERLACE_LEADER_ELECTION_NAMESPACE
      (default POD_NAMESPACE) reconciles (see leader.py). INTERLACE_LEASE_DURATION_SECONDS (15),
      INTERLACE_LEASE_RENEW_DEADLINE_SECONDS (10), INTERLACE_LEASE_RETRY_PERIOD_SECONDS (2) as in
      client-go.
    """

    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    namespaces: tuple[str, ...] = ()
    health_port: int = 8080
    metrics_port: int = 9090
    workers: int = 16
    retry_backoff_seconds: float = 10.0
    retry_backoff_max_seconds: float = 600.0
    watch_timeout_seconds: float = 300.0
    component: str = "interlace-operator"
    extra_labels: dict[str, str] = field(default_factory=dict)
    leader_election: bool = False
    lease_namespace: str = ""
    lease_name: str = "interlace-operator"
    lease_duration_seconds: float = 15.0
    lease_renew_deadline_seconds: float = 10.0
    lease_retry_period_seconds: float = 2.0

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        namespaces = tuple(n.strip() for n in env.get("INTERLACE_WATCH_NAMESPACES", "").split(",") if n.strip())
        return cls(
            runtime_image=env.get("INTERLACE_RUNTIME_IMAGE", "").strip() or DEFAULT_RUNTIME_IMAGE,
            namespaces=namespaces,
            health_port=int(_float(env, "INTERLACE_HEALTH_PORT", 8080)),
            metrics_port=int(_float(env, "INTERLACE_METRICS_PORT", 9090)),
            workers=max(1, int(_float(env, "INTERLACE_WORKERS", 16))),
            retry_backoff_seconds=_float(env, "INTERLACE_RETRY_BACKOFF_SECONDS", 10.0),
            retry_backoff_max_seconds=_float(env, "INTERLACE_RETRY_BACKOFF_MAX_SECONDS", 600.0),
            watch_timeout_seconds=_float(env, "INTERLACE_WATCH_TIMEOUT_SECONDS", 300.0),
            leader_election=_bool(env, "INTERLACE_LEADER_ELECTION"),
            lease_namespace=(env.get("INTERLACE_LEADER_ELECTION_NAMESPACE", "").strip()
                             or env.get("POD_NAMESPACE", "").strip()),
            lease_name=env.get("INTERLACE_LEADER_ELECTION_NAME", "").strip() or "interlace-operator",
            lease_duration_seconds=_float(env, "INTERLACE_LEASE_DURATION_SECONDS", 15.0),
            lease_renew_deadline_seconds=_float(env, "INTERLACE_LEASE_RENEW_DEADLINE_SECONDS", 10.0),
            lease_retry_period_seconds=_float(env, "INTERLACE_LEASE_RETRY_PERIOD_SECONDS", 2.0),
        )

    def backoff(self, failed_attempt: int) -> float:
        """Seconds to wait after attempt number `failed_attempt` (1-based) failed."""
        return float(min(self.retry_backoff_max_seconds, self.retry_backoff_seconds * 2 ** (failed_attempt - 1)))
