"""Prometheus metrics of the operator (served on INTERLACE_METRICS_PORT, default 9090).

* interlace_prunejobs{namespace, phase}: PruneJobs by phase, as last seen (a gauge computed at
  scrape time from one dict, so a job is counted in exactly one phase);
* interlace_prunejob_info{namespace, prunejob, phase, model, strategy, dry_run, queue, rayjob}: one
  series of value 1 per PruneJob (kube-state-metrics style: join it on namespace/prunejob, alert on
  phase); computed at scrape time, so a deleted job or an old phase leaves no stale series. The
  `namespace` label is the PruneJob's: the chart's ServiceMonitor sets honorLabels so Prometheus
  keeps it instead of renaming it to exported_namespace;
* interlace_prunejob_duration_seconds{outcome}: startTime -> completionTime of finished jobs;
* interlace_reconcile_errors_total{error}: reconciles that raised, by exception type;
* interlace_reconcile_duration_seconds: time per reconcile;
* interlace_rayjobs_created_total, interlace_prunejob_retries_total;
* interlace_leader: 1 on the replica that reconciles, 0 on a standby (leader election). A standby
  exports no per-job series, so summing over the operator's pods never counts a job twice.

The default registry also carries process_resident_memory_bytes (the RSS the bench reports).
"""

from __future__ import annotations

import threading
from collections import Counter as _Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

DURATION_BUCKETS = (60, 300, 900, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 16 * 3600, 48 * 3600, float("inf"))


class _PhaseCollector(Collector):
    def __init__(self, phases: dict[tuple[str, str], str], lock: threading.Lock) -> None:
        self._phases = phases
        self._lock = lock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            tally = _Tally((ns, phase) for (ns, _), phase in self._phases.items()) if _leading.is_set() else _Tally()
        family = GaugeMetricFamily("interlace_prunejobs", "PruneJobs by phase", labels=["namespace", "phase"])
        for (ns, phase), n in sorted(tally.items()):
            family.add_metric([ns, phase], n)
        yield family


# False on a standby replica (leader election, leader.py): per-job series come from the leader only.
_leading = threading.Event()
_leading.set()

INFO_LABELS = ("namespace", "prunejob", "phase", "model", "strategy", "dry_run", "queue", "rayjob")


def job_info(body: dict[str, Any]) -> dict[str, str]:
    """The info labels of a PruneJob that come from its spec and status (not phase: that is tracked
    apart, by the reconciler too). Reads the raw object, so an invalid spec still gets a series."""
    spec = body.get("spec") or {}
    status = body.get("status") or {}

    def part(key: str) -> dict[str, Any]:
        value = spec.get(key)
        return value if isinstance(value, dict) else {}

    return {
        "model": str(part("model").get("source") or ""),
        "strategy": str(part("pruning").get("strategy") or "interlace"),
        "dry_run": "true" if spec.get("dryRun") else "false",
        "queue": str(part("resources").get("queueName") or ""),
        "rayjob": str((status.get("rayJob") or {}).get("name") or ""),
    }


class _InfoCollector(Collector):
    def __init__(
        self, phases: dict[tuple[str, str], str], info: dict[tuple[str, str], dict[str, str]], lock: threading.Lock
    ) -> None:
        self._phases = phases
        self._info = info
        self._lock = lock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            rows = [(key, phase, dict(self._info.get(key, {}))) for key, phase in sorted(self._phases.items())]
        if not _leading.is_set():
            rows = []  # a standby replica: the leader reports the jobs (no double counting across pods)
        family = GaugeMetricFamily(
            "interlace_prunejob_info", "One series per PruneJob with its phase, model and current RayJob",
            labels=list(INFO_LABELS),
        )
        for (ns, name), phase, info in rows:
            labels = {"namespace": ns, "prunejob": name, "phase": phase, **info}
            family.add_metric([labels.get(k, "") for k in INFO_LABELS], 1)
        yield family


class Metrics:
    """One instance per process (metrics register in the global registry)."""

    _instance: Metrics | None = None

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}
        self._info: dict[tuple[str, str], dict[str, str]] = {}
        REGISTRY.register(_PhaseCollector(self._phases, self._lock))
        REGISTRY.register(_InfoCollector(self._phases, self._info, self._lock))
        self.durations = Histogram(
            "interlace_prunejob_duration_seconds",
            "Wall time from startTime to completionTime of finished PruneJobs",
            ["outcome"],
            buckets=DURATION_BUCKETS,
        )
        self.reconcile_errors = Counter(
            "interlace_reconcile_errors", "Reconciles that raised, by exception type", ["error"]
        )
        self.reconcile_seconds = Histogram("interlace_reconcile_duration_seconds", "Time per reconcile")
        self.rayjobs_created = Counter("interlace_rayjobs_created", "RayJobs created (one per attempt)")
        self.retries = Counter("interlace_prunejob_retries", "Attempts started after a failed attempt")
        self.leader = Gauge("interlace_leader", "1 on the replica that reconciles (holds the Lease), 0 on a standby")
        self.leader.set(1)

    @classmethod
    def get(cls) -> Metrics:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def set_phase(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            self._phases[(namespace, name)] = phase or "Unknown"

    def set_leader(self, leading: bool) -> None:
        if leading:
            _leading.set()
        else:
            _leading.clear()
        self.leader.set(1 if leading else 0)

    def set_info(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        """Labels of interlace_prunejob_info from the PruneJob as last seen (a watch event)."""
        info = job_info(body)
        with self._lock:
            self._info[(namespace, name)] = info

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop((namespace, name), None)
            self._info.pop((namespace, name), None)

    def snapshot(self) -> dict[tuple[str, str], str]:
        with self._lock:
            return dict(self._phases)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Start the /metrics HTTP server in a daemon thread (no-op for port 0)."""
    if port:
        start_http_server(port, addr=addr)
