"""The retention target (spec.pruning.target): one analysis, probes of nested plans, the full run."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

import interlace
from interlace.errors import InterlaceError
from interlace.pipeline.target import bisect_largest
from interlace.schema.spec import SpecError, parse_prunejob
from tests.train.conftest import tiny_text_prunejob


def test_bisection_finds_the_largest_drop_that_meets() -> None:
    for most in range(1, 20):
        for limit in range(0, most + 1):
            calls: list[int] = []

            def meets(n: int, limit: int = limit, calls: list[int] = calls) -> bool:
                calls.append(n)
                return n <= limit

            assert bisect_largest(most, meets) == limit
            assert len(calls) <= (most + 1).bit_length() and len(set(calls)) == len(calls)


def test_target_is_one_amount_among_four() -> None:
    doc = {"spec": {"model": {"source": "m"}, "pruning": {"target": {"minRetention": 0.9}}}}
    job = parse_prunejob(doc)
    assert job.spec.pruning.target is not None
    assert (job.spec.pruning.target.max_ratio, job.spec.pruning.target.proxy_steps) == (0.5, 10)
    bad = copy.deepcopy(doc)
    bad["spec"]["pruning"]["ratio"] = 0.2
    with pytest.raises(SpecError, match=r"exactly one of .*spec.pruning.target"):
        parse_prunejob(bad)
    bad = copy.deepcopy(doc)
    bad["spec"]["pruning"]["target"]["minRetention"] = 1.5
    with pytest.raises(SpecError, match=r"spec.pruning.target.minRetention"):
        parse_prunejob(bad)


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return tiny_text_prunejob(tmp_path_factory.mktemp("target"), "target", {"target": {"minRetention": 0.01, "maxRatio": 0.5, "proxySteps": 0}})


def test_a_reachable_target_picks_the_largest_drop(tiny_job: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = interlace.run(tiny_job, output=out, quiet=True)
    assert isinstance(result, interlace.PruneResult) and result.results is not None
    t = result.results.target
    assert t is not None
    # 8 layers, maxRatio 0.5 -> 4, but INTERLACE's windows fit only 2 drops in 8 layers
    assert t.max_layers == 2 and t.layers_dropped == 2
    assert [p.layers_dropped for p in t.probes] == [1, 2] and all(p.meets for p in t.probes)
    assert t.met is True and t.final_retention == pytest.approx(result.results.relative_performance / 100)
    assert [p for p in out.rglob("scores.json") if not p.is_symlink()] == [out / "analysis" / "scores.json"]
    # nested plans: the 2-layer plan holds the 1-layer plan's layer
    p1 = json.loads((out / "probes" / "drop-1" / "plan.json").read_text())["drop"]
    p2 = json.loads((out / "probes" / "drop-2" / "plan.json").read_text())["drop"]
    assert set(p1) < set(p2) and json.loads((out / "plan.json").read_text())["drop"] == p2
    assert json.loads((out / "model" / "config.json").read_text())["num_hidden_layers"] == 6
    final = json.loads((out / "results.json").read_text())
    assert final["target"]["met"] is True and final["summary"].startswith("target 1%: -2 layers ")
    events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    shown = [e["data"]["target"]["probes"] for e in events if e["event"] == "results" and "target" in e["data"]]
    assert [len(p) for p in shown[:3]] == [0, 1, 2]  # status shows each probe as it happens


def test_a_dry_run_target_analyses_and_stops(tiny_job: dict[str, Any], tmp_path: Path) -> None:
    job = copy.deepcopy(tiny_job)
    job["spec"]["dryRun"] = True
    out = tmp_path / "dry"
    result = interlace.run(job, output=out, quiet=True)
    assert isinstance(result, interlace.PruneResult) and result.results is not None
    t = result.results.target
    assert t is not None and t.max_layers == 2 and t.probes == [] and t.layers_dropped is None
    assert (out / "analysis" / "scores.json").is_file() and not (out / "probes").exists()
    assert not (out / "model").exists() and "no probe ran" in (t.message or "")
    assert len(result.plan.drop) == 2  # plan.json: the largest plan of the family


@pytest.mark.slow
def test_an_unreachable_target_reports_the_miss(tmp_path: Path) -> None:
    """The embedded default (a real pretrained model): no drop keeps 99.9% of its held-out perplexity."""
    job = {
        "apiVersion": "interlace.dev/v1alpha1",
        "kind": "PruneJob",
        "metadata": {"name": "miss"},
        "spec": {
            "model": {"source": "builtin:smollm2-135m", "dtype": "float32"},
            "pruning": {"target": {"minRetention": 0.999, "maxRatio": 0.2, "proxySteps": 0}},
            "calibration": {"data": {"path": "builtin:english", "maxSamples": 16}, "numSamples": 16,
                            "batchSize": 8, "maxLength": 64},
            "finetune": {"enabled": False, "data": {"path": "builtin:english", "maxSamples": 16}},
            "evaluation": {"data": {"path": "builtin:english-heldout", "maxSamples": 16}, "maxSamples": 16,
                           "batchSize": 8, "speed": False},
            "resources": {"gpusPerWorker": 0},
        },
    }
    out = tmp_path / "miss"
    with pytest.raises(InterlaceError, match=r"spec.pruning.target.minRetention 0.999: no plan keeps 99.9%"):
        interlace.run(job, output=out, quiet=True)
    final = json.loads((out / "results.json").read_text())
    t = final["target"]
    assert t["met"] is False and t["probes"][-1]["layersDropped"] == 1 and not t["probes"][-1]["meets"]
    assert all(not p["meets"] for p in t["probes"]) and t["probes"][-1]["retention"] < 0.999
    assert not (out / "model").exists()  # nothing published for a target nobody met
