"""Prometheus metrics of the operator (served on INTERLACE_METRICS_PORT, default 9090).

* interlace_prunejobs{namespace, phase}: PruneJobs by phase, as last seen (a gauge computed at
  scrape time from one dict, so a job is counted in exactly one phase);
* interlace_prunejob_duration_seconds{outcome}: startTime -> completionTime of finished jobs;
* interlace_reconcile_errors_total{error}: reconciles that raised, by exception type;
* interlace_reconcile_duration_seconds: time per reconcile;
* interlace_rayjobs_created_total, interlace_prunejob_retries_total.

The default registry also carries process_resident_memory_bytes (the RSS the bench reports).
"""

from __future__ import annotations

import threading
from collections import Counter as _Tally
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

DURATION_BUCKETS = (60, 300, 900, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 16 * 3600, 48 * 3600, float("inf"))


class _PhaseCollector(Collector):
    def __init__(self, phases: dict[tuple[str, str], str], lock: threading.Lock) -> None:
        self._phases = phases
        self._lock = lock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            tally = _Tally((ns, phase) for (ns, _), phase in self._phases.items())
        family = GaugeMetricFamily("interlace_prunejobs", "PruneJobs by phase", labels=["namespace", "phase"])
        for (ns, phase), n in sorted(tally.items()):
            family.add_metric([ns, phase], n)
        yield family


class Metrics:
    """One instance per process (metrics register in the global registry)."""

    _instance: Metrics | None = None

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str], str] = {}
        REGISTRY.register(_PhaseCollector(self._phases, self._lock))
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

    @classmethod
    def get(cls) -> Metrics:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def set_phase(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            self._phases[(namespace, name)] = phase or "Unknown"

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop((namespace, name), None)

    def snapshot(self) -> dict[tuple[str, str], str]:
        with self._lock:
            return dict(self._phases)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Start the /metrics HTTP server in a daemon thread (no-op for port 0)."""
    if port:
        start_http_server(port, addr=addr)
