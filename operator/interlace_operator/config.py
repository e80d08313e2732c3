"""Operator settings: one pydantic-settings class, read once from the environment (the Deployment /
Helm values set the variables; docs/environment.md is their table and a test keeps the two equal)."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Annotated, Any

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_RUNTIME_IMAGE = "ghcr.io/interlace-dev/interlace-runtime:0.1.0"
DEFAULT_TOLERATION_KEY = "nvidia.com/gpu"

# from_env(mapping) reads only the given mapping (tests, several operators in one process): while it
# builds the settings, the process environment is not a source.
_ENVIRON_OFF: ContextVar[bool] = ContextVar("interlace_operator_environ_off", default=False)

CommaList = Annotated[tuple[str, ...], NoDecode]


class OperatorConfig(BaseSettings):
    """Everything the operator reads from its environment; each field is the variable
    `INTERLACE_<FIELD>` unless it names another one (docs/environment.md has the table).

    * runtime_image: image of the Ray head/worker pods when spec.resources.image is unset.
    * watch_namespaces: comma-separated namespaces to watch; empty = the whole cluster.
    * health_port (8080) / metrics_port (9090): kopf liveness, Prometheus; 0 disables the endpoint
      (tests run several operators on one host).
    * workers (16): reconcile threads (the kubernetes client is synchronous; the work is waiting on
      the API server, not CPU).
    * retry_backoff_seconds (10) and retry_backoff_max_seconds (600): a failed attempt is retried
      after base * 2**(attempt-1) seconds, capped.
    * watch_timeout_seconds (300): server-side watch timeout; the client gives up 30 s later, so a
      silently dead connection cannot hang the operator.
    * leader_election (false): run as one of several replicas; only the holder of the Lease
      INTERLACE_LEADER_ELECTION_NAME in INTERLACE_LEADER_ELECTION_NAMESPACE (default POD_NAMESPACE)
      reconciles (see leader.py); lease_* timings as in client-go.
    * kuberay_retry_seconds (30): how often a PruneJob waiting for the RayJob CRD looks again.
    * What a PruneJob may ask for on its pods (the operator creates them with its own rights, so a
      user who may create PruneJobs but not pods gets no more than this; empty = nothing):
      allowed_service_accounts (spec.resources.serviceAccountName; default none: the per-job
      ServiceAccount the operator creates), allowed_priority_classes (spec.resources.priorityClassName;
      default none), allowed_toleration_keys (spec.resources.tolerations[].key; default
      nvidia.com/gpu; `*` allows any key, including the key-less tolerate-everything). Comma-separated.
    * network_policy (true): give every PruneJob a NetworkPolicy that admits to its Ray pods only its
      own pods and KubeRay (builders.network_policy); false where the platform owns the policies.
      kuberay_pod_labels (`app.kubernetes.io/name=kuberay-operator`, KubeRay's chart) and
      kuberay_namespace (empty = any namespace) name the KubeRay operator's pods, which poll the head's
      dashboard (8265).
    """

    model_config = SettingsConfigDict(env_prefix="INTERLACE_", frozen=True, extra="ignore", populate_by_name=True)

    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    namespaces: CommaList = Field((), validation_alias="INTERLACE_WATCH_NAMESPACES")
    health_port: int = Field(8080, ge=0, le=65535)
    metrics_port: int = Field(9090, ge=0, le=65535)
    workers: int = Field(16, ge=1)
    retry_backoff_seconds: float = Field(10.0, gt=0)
    retry_backoff_max_seconds: float = Field(600.0, gt=0)
    watch_timeout_seconds: float = Field(300.0, gt=0)
    kuberay_retry_seconds: float = Field(30.0, gt=0)
    allowed_service_accounts: CommaList = ()
    allowed_priority_classes: CommaList = ()
    allowed_toleration_keys: CommaList = (DEFAULT_TOLERATION_KEY,)
    network_policy: bool = True
    kuberay_pod_labels: CommaList = ("app.kubernetes.io/name=kuberay-operator",)
    kuberay_namespace: str = ""
    leader_election: bool = False
    lease_namespace: str = Field(
        "", validation_alias=AliasChoices("INTERLACE_LEADER_ELECTION_NAMESPACE", "POD_NAMESPACE")
    )
    lease_name: str = Field("interlace-operator", validation_alias="INTERLACE_LEADER_ELECTION_NAME")
    lease_duration_seconds: float = Field(15.0, gt=0)
    lease_renew_deadline_seconds: float = Field(10.0, gt=0)
    lease_retry_period_seconds: float = Field(2.0, gt=0)
    log_level: str = "INFO"
    pod_name: str = Field("", validation_alias="POD_NAME")
    kubeconfig: str = Field("", validation_alias="KUBECONFIG")
    kubernetes_service_host: str = Field("", validation_alias="KUBERNETES_SERVICE_HOST")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,) if _ENVIRON_OFF.get() else (init_settings, env_settings)

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_default(cls, value: Any, info: Any) -> Any:
        """An empty or blank variable means "not set" (Helm renders unset values as ""); for the
        allow-lists an empty value means "nothing allowed", so they keep it."""
        if isinstance(value, str) and not value.strip() and not info.field_name.startswith("allowed_"):
            return cls.model_fields[info.field_name].default
        return value.strip() if isinstance(value, str) else value

    @field_validator("namespaces", "allowed_service_accounts", "allowed_priority_classes",
                     "allowed_toleration_keys", "kuberay_pod_labels", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    @field_validator("kuberay_pod_labels")
    @classmethod
    def _labels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [v for v in value if v.count("=") != 1 or not all(v.split("="))]
        if bad:
            raise ValueError(f"INTERLACE_KUBERAY_POD_LABELS: {bad} are not key=value pairs (comma-separated)")
        return value

    @property
    def kuberay_peer(self) -> tuple[tuple[str, str], ...]:
        """kuberay_pod_labels as (key, value) pairs."""
        return tuple((v.split("=")[0], v.split("=")[1]) for v in self.kuberay_pod_labels)

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def in_cluster(self) -> bool:
        """Use the Pod's ServiceAccount (as client-go does: in a Pod, and no KUBECONFIG given)."""
        return bool(self.kubernetes_service_host) and not self.kubeconfig

    @property
    def identity(self) -> str:
        """kopf's peering identity and the Lease holder's base name: POD_NAME, else the host name."""
        return self.pod_name or socket.gethostname()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """The settings from `env` (default: os.environ); a bad value raises ValueError naming the
        variable and what it must be."""
        try:
            if env is None:
                return cls()
            values: dict[str, str] = {}
            for f in cls.model_fields:
                for n in env_names(cls, f):
                    if n in env and f not in values:
                        values[f] = env[n]
            token = _ENVIRON_OFF.set(True)
            try:
                return cls.model_validate(values)
            finally:
                _ENVIRON_OFF.reset(token)
        except ValidationError as err:
            raise ValueError("; ".join(_explain(cls, e) for e in err.errors())) from None

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


def env_names(cls: type[BaseSettings], field: str) -> list[str]:
    """The environment variables a settings field is read from, the first one set wins (its aliases,
    else prefix + name). The operator's and the library's settings classes both use it."""
    alias = cls.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return [str(c) for c in alias.choices]
    if isinstance(alias, str):
        return [alias]
    return [f"{cls.model_config.get('env_prefix', '')}{field}".upper()]


def _explain(cls: type[BaseSettings], error: Any) -> str:
    loc = str(error["loc"][0]) if error.get("loc") else ""
    name = loc if loc.isupper() else env_names(cls, loc)[0] if loc in cls.model_fields else loc
    value = error.get("input")
    what = {"bool_parsing": "is not a boolean (true/false)",
            "float_parsing": "is not a number", "int_parsing": "is not a whole number"}.get(
        error["type"], str(error["msg"]).lower())
    return f"{name}={value!r} {what}"
