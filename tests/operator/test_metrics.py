"""interlace_prunejob_info: one series per PruneJob, computed at scrape time (no stale series)."""

from __future__ import annotations

import threading

from interlace_operator.metrics import _InfoCollector, job_info
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families


def _scrape(phases: dict, info: dict) -> list[dict[str, str]]:
    """The label sets of interlace_prunejob_info, as Prometheus would parse the exposition."""
    registry = CollectorRegistry()
    registry.register(_InfoCollector(phases, info, threading.Lock()))
    text = generate_latest(registry).decode()
    series = [s for f in text_string_to_metric_families(text) for s in f.samples]
    assert all(s.name == "interlace_prunejob_info" and s.value == 1.0 for s in series), series
    return [dict(s.labels) for s in series]


BODY = {
    "metadata": {"name": "qwen", "namespace": "ml"},
    "spec": {"model": {"source": "Qwen/Qwen3-VL-4B-Instruct"}, "pruning": {"ratio": 0.2, "strategy": "oa"},
             "resources": {"queueName": "gpu"}, "dryRun": True},
    "status": {"phase": "Finetuning", "rayJob": {"name": "qwen-2"}},
}


def test_info_labels_from_the_object() -> None:
    assert job_info(BODY) == {"model": "Qwen/Qwen3-VL-4B-Instruct", "strategy": "oa", "dry_run": "true",
                              "queue": "gpu", "rayjob": "qwen-2"}
    # defaults and a spec the operator would reject still give a series
    assert job_info({"spec": {"model": "not-a-mapping"}}) == {
        "model": "", "strategy": "interlace", "dry_run": "false", "queue": "", "rayjob": ""}


def test_one_series_per_job_with_its_current_phase() -> None:
    phases = {("ml", "qwen"): "Finetuning", ("ml", "other"): "Pending"}
    info = {("ml", "qwen"): job_info(BODY)}
    series = _scrape(phases, info)
    assert {"namespace": "ml", "prunejob": "qwen", "phase": "Finetuning", "model": "Qwen/Qwen3-VL-4B-Instruct",
            "strategy": "oa", "dry_run": "true", "queue": "gpu", "rayjob": "qwen-2"} in series
    # known phase, no watch event yet: a series with empty spec labels
    assert {"namespace": "ml", "prunejob": "other", "phase": "Pending", "model": "", "strategy": "",
            "dry_run": "", "queue": "", "rayjob": ""} in series
    phases[("ml", "qwen")] = "Succeeded"
    del phases[("ml", "other")]
    series = _scrape(phases, info)
    assert [(s["prunejob"], s["phase"]) for s in series] == [("qwen", "Succeeded")]  # no stale series
