"""Operator settings, read once from the environment (the Deployment / Helm values set them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_RUNTIME_IMAGE = "ghcr.io/interlace-dev/interlace-runtime:0.1.0"
DEFAULT_TOLERATION_KEY = "nvidia.com/gpu"


def _list(env: Mapping[str, str], key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    if key not in env:
        return default
    return tuple(v.strip() for v in env[key].split(",") if v.strip())


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
    * INTERLACE_KUBERAY_RETRY_SECONDS (30): how often a PruneJob waiting for the RayJob CRD looks again.
    * What a PruneJob may ask for on its pods (the operator creates them with its own rights, so a
      user who may create PruneJobs but not pods gets no more than this; empty = nothing):
      INTERLACE_ALLOWED_SERVICE_ACCOUNTS (spec.resources.serviceAccountName; default none: the
      per-job ServiceAccount the operator creates), INTERLACE_ALLOWED_PRIORITY_CLASSES
      (spec.resources.priorityClassName; default none), INTERLACE_ALLOWED_TOLERATION_KEYS
      (spec.resources.tolerations[].key; default nvidia.com/gpu; `*` allows any key, including the
      key-less tolerate-everything). Comma-separated.
    """

    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    namespaces: tuple[str, ...] = ()
    health_port: int = 8080
    metrics_port: int = 9090
    workers: int = 16
    retry_backoff_seconds: float = 10.0
    retry_backoff_max_seconds: float = 600.0
    watch_timeout_seconds: float = 300.0
    kuberay_retry_seconds: float = 30.0
    allowed_service_accounts: tuple[str, ...] = ()
    allowed_priority_classes: tuple[str, ...] = ()
    allowed_toleration_keys: tuple[str, ...] = (DEFAULT_TOLERATION_KEY,)
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
            kuberay_retry_seconds=_float(env, "INTERLACE_KUBERAY_RETRY_SECONDS", 30.0),
            allowed_service_accounts=_list(env, "INTERLACE_ALLOWED_SERVICE_ACCOUNTS"),
            allowed_priority_classes=_list(env, "INTERLACE_ALLOWED_PRIORITY_CLASSES"),
            allowed_toleration_keys=_list(env, "INTERLACE_ALLOWED_TOLERATION_KEYS", (DEFAULT_TOLERATION_KEY,)),
        )

    def not_allowed(self, resources: Any) -> list[str]:
        """What spec.resources asks for beyond the allow-lists (one message per field)."""
        problems = []
        sa = resources.service_account_name
        if sa is not None and sa not in self.allowed_service_accounts:
            problems.append(
                f"spec.resources.serviceAccountName: {sa!r} is not allowed by the operator "
                f"(allowed: {', '.join(self.allowed_service_accounts) or 'none; the per-job ServiceAccount is used'})"
            )
        pc = resources.priority_class_name
        if pc is not None and pc not in self.allowed_priority_classes:
            problems.append(
                f"spec.resources.priorityClassName: {pc!r} is not allowed by the operator "
                f"(allowed: {', '.join(self.allowed_priority_classes) or 'none'})"
            )
        tolerations = [(f"spec.resources.tolerations[{i}]", t) for i, t in enumerate(resources.tolerations)]
        # Pod overrides reach the same pod fields: the same allow-lists apply to them, and what would
        # let a PruneJob's pods reach the node (hostPath, privileged, added capabilities) is refused.
        for j, o in enumerate(getattr(resources, "pod_template_overrides", None) or []):
            where = f"spec.resources.podTemplateOverrides[{j}].spec"
            if o.spec is None:
                continue
            opc = o.spec.priority_class_name
            if opc is not None and opc not in self.allowed_priority_classes:
                problems.append(
                    f"{where}.priorityClassName: {opc!r} is not allowed by the operator "
                    f"(allowed: {', '.join(self.allowed_priority_classes) or 'none'})"
                )
            tolerations += [(f"{where}.tolerations[{i}]", t) for i, t in enumerate(o.spec.tolerations)]
            for i, v in enumerate(o.spec.volumes):
                if "hostPath" in v:
                    problems.append(f"{where}.volumes[{i}].hostPath: host paths are not allowed by the operator")
            for i, c in enumerate(o.spec.containers):
                sc = c.security_context or {}
                if sc.get("privileged") or (sc.get("capabilities") or {}).get("add"):
                    problems.append(
                        f"{where}.containers[{i}].securityContext: privileged containers and added "
                        "capabilities are not allowed by the operator"
                    )
        if "*" not in self.allowed_toleration_keys:
            for where, t in tolerations:
                if t.key is None or t.key not in self.allowed_toleration_keys:
                    what = "a toleration without a key (tolerates every taint)" if t.key is None else repr(t.key)
                    problems.append(
                        f"{where}.key: {what} is not allowed by the operator "
                        f"(allowed keys: {', '.join(self.allowed_toleration_keys) or 'none'})"
                    )
        return problems

    def backoff(self, failed_attempt: int) -> float:
        """Seconds to wait after attempt number `failed_attempt` (1-based) failed."""
        return float(min(self.retry_backoff_max_seconds, self.retry_backoff_seconds * 2 ** (failed_attempt - 1)))
