"""The ratio sweep: one analysis, one variant per ratio, a table of variants (interlace.pipeline.sweep)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import interlace
from interlace.cli import main
from interlace.errors import InterlaceError
from interlace.pipeline.sweep import variant_uri
from tests.train.conftest import pattern_samples

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tests.fixtures.tiny import save_tiny

    root = tmp_path_factory.mktemp("sweep")
    texts = [f"{s.turns[0].text} {s.turns[1].text}" for s in pattern_samples(32)]
    data = root / "data" / "train.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    text = {"format": "text", "path": str(data), "fraction": 1.0}
    job = {
        "apiVersion": "interlace.dev/v1alpha1",
        "kind": "PruneJob",
        "metadata": {"name": "sweep"},
        "spec": {
            "model": {"source": str(save_tiny("llama", root / "llama"))},
            "pruning": {"ratio": 0.25},
            "calibration": {"data": text, "numSamples": 8, "batchSize": 4, "maxLength": 64},
            "finetune": {"enabled": False, "data": text},
            "evaluation": {"data": text, "maxSamples": 4, "speed": False},
            "resources": {"gpusPerWorker": 0},
        },
    }
    return {"job": job, "root": root}


def test_one_analysis_one_variant_per_ratio(tiny: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = interlace.sweep(tiny["job"], [0.125, 0.25], output=out, quiet=True)
    real_scores = [p for p in out.rglob("scores.json") if not p.is_symlink()]
    assert real_scores == [out / "analysis" / "scores.json"]
    assert [(v.ratio, v.layers_dropped, v.layers_after) for v in result.variants] == [
        (0.125, 1, 7),
        (0.25, 2, 6),
    ]
    for v in result.variants:
        vdir = out / f"ratio-{v.ratio:g}"
        assert v.output_dir == vdir and v.output == str(vdir / "model")
        plan = json.loads((vdir / "plan.json").read_text())
        assert len(plan["drop"]) == v.layers_dropped and plan["ratio"] == v.ratio
        cfg = json.loads((vdir / "model" / "config.json").read_text())
        assert cfg["num_hidden_layers"] == v.layers_after
        assert v.retention is not None and v.retention > 0 and v.params_after is not None
        assert json.loads((vdir / "results.json").read_text())["relativePerformance"] == v.retention
    assert result.variants[1].params_after < result.variants[0].params_after < result.params_before
    table = json.loads((out / "sweep.json").read_text())
    assert [row["ratio"] for row in table["variants"]] == [0.125, 0.25] and table["layersBefore"] == 8
    # One analysis: the pipeline planned from scores once (the dry run) and reused the sweep's plan
    # (no analysis) for every variant, as its own stage messages say.
    events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    planning = [
        e["data"].get("message", "")
        for e in events
        if e["event"] == "stage" and e["data"]["stage"] == "Planning"
    ]
    # (a variant's stage messages name its ratio)
    assert sorted(m.split(": ", 1)[0] for m in planning if m.endswith("(spec.finetune.resume)")) == [
        "ratio 0.125",
        "ratio 0.25",
    ]
    assert sum(1 for m in planning if "reusing plan.json" in m) == 2
    assert sum(1 for m in planning if m.startswith("interlace: drop")) == 1
    # status.plan is the analysis's plan; each variant's plan stays in its directory (checked above)
    assert sum(1 for e in events if e["event"] == "plan") == 1
    # status.results: the table of variants, as the operator's status shows it
    final = json.loads((out / "results.json").read_text())
    assert [(r["ratio"], r["state"], r["layersDropped"]) for r in final["variants"]] == [
        (0.125, "Succeeded", 1),
        (0.25, "Succeeded", 2),
    ]
    assert final["variants"][0]["relativePerformance"] == result.variants[0].retention
    assert final["summary"] == ", ".join(f"{v.ratio:g}: {v.retention:.1f}%" for v in result.variants)
    assert final["layersBefore"] == 8 and final["paramsBefore"] == result.params_before
    assert [r["paramsAfter"] for r in final["variants"]] == [v.params_after for v in result.variants]
    sent = [e["data"] for e in events if e["event"] == "results" and "variants" in e["data"]]
    states = [[r["state"] for r in d["variants"]] for d in sent]
    assert states[0] == ["Running", "Pending"] and states[-1] == ["Succeeded", "Succeeded"]


def _job_with_ratios(tiny: dict[str, Any], ratios: list[float], **spec: Any) -> dict[str, Any]:
    import copy

    job = copy.deepcopy(tiny["job"])
    job["spec"]["pruning"] = {"ratios": ratios}
    job["spec"].update(spec)
    return job


def test_run_with_spec_pruning_ratios_is_a_sweep(tiny: dict[str, Any], tmp_path: Path) -> None:
    """`interlace run -f` of a PruneJob with spec.pruning.ratios (what the operator's RayJob runs)."""
    import yaml

    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(_job_with_ratios(tiny, [0.25, 0.125])))
    out = tmp_path / "o"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run(
        [sys.executable, "-m", "interlace.cli", "run", "-f", str(f), "--output", str(out), "--json"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert [(v["ratio"], v["layersAfter"]) for v in doc["variants"]] == [(0.25, 6), (0.125, 7)]
    assert [p for p in out.rglob("scores.json") if not p.is_symlink()] == [out / "analysis" / "scores.json"]
    final = json.loads((out / "results.json").read_text())
    assert [v["state"] for v in final["variants"]] == ["Succeeded", "Succeeded"]
    assert final["summary"].startswith("0.25: ") and ", 0.125: " in final["summary"]


def test_dry_run_sweep_plans_every_ratio(tiny: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "dry"
    result = interlace.run(_job_with_ratios(tiny, [0.25, 0.125], dryRun=True), output=out, quiet=True)
    assert not hasattr(result, "model_dir")  # a SweepResult: nothing pruned, no variant finetuned
    final = json.loads((out / "results.json").read_text())
    drops = [len(json.loads((out / f"ratio-{r:g}" / "plan.json").read_text())["drop"]) for r in (0.25, 0.125)]
    assert drops == [2, 1] == [v["layersDropped"] for v in final["variants"]]
    assert [v["state"] for v in final["variants"]] == ["Succeeded"] * 2
    assert final["variants"][0]["paramsAfter"] < final["variants"][1]["paramsAfter"] < final["paramsBefore"]
    assert not list(out.glob("ratio-*/model")) and "relativePerformance" not in final["variants"][0]


def test_a_failed_variant_fails_the_sweep_after_the_others(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One variant's failure is recorded in its row; the other variants still finish and publish."""
    import interlace.pipeline.run as pipeline

    real = pipeline.run_pipeline

    def flaky(job: Any, **kw: Any) -> Any:
        if job.spec.pruning.ratio == 0.25 and not job.spec.dry_run:
            raise RuntimeError("disk full")
        return real(job, **kw)

    monkeypatch.setattr(pipeline, "run_pipeline", flaky)
    out = tmp_path / "f"
    with pytest.raises(InterlaceError, match=r"1 of 2 variants failed \(ratios\[1\]=0.25\).*disk full"):
        interlace.sweep(tiny["job"], [0.125, 0.25], output=out, quiet=True)
    final = json.loads((out / "results.json").read_text())
    assert [v["state"] for v in final["variants"]] == ["Succeeded", "Failed"]
    assert "disk full" in final["variants"][1]["message"] and (out / "ratio-0.125" / "model").is_dir()
    assert final["summary"].endswith("0.25: Failed")


def test_sweep_cli_prints_the_variants_json(tiny: dict[str, Any], tmp_path: Path) -> None:
    import yaml

    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(tiny["job"]))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "interlace.cli",
            "sweep",
            "-f",
            str(f),
            "--ratios",
            "0.125,0.25",
            "--output",
            str(tmp_path / "o"),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert [(v["ratio"], v["layersAfter"]) for v in doc["variants"]] == [(0.125, 7), (0.25, 6)]


def test_bad_ratios(tiny: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InterlaceError, match=r"ratios\[1\]: 1.5 is not in \(0, 1\)"):
        interlace.sweep(tiny["job"], [0.2, 1.5], output=tmp_path / "x")
    with pytest.raises(InterlaceError, match="twice"):
        interlace.sweep(tiny["job"], [0.2, 0.2], output=tmp_path / "x")
    with pytest.raises(InterlaceError, match=r"ratios\[0\]: .*0\.05 drops no layer"):
        interlace.sweep(tiny["job"], [0.05], output=tmp_path / "x", quiet=True)
    assert main(["sweep", "-f", "nope.yaml", "--ratios", "0.1,x"]) == 2
    assert "--ratios" in capsys.readouterr().err


def test_variant_outputs() -> None:
    assert variant_uri("s3://b/runs/a", 0.15) == "s3://b/runs/a/ratio-0.15"
    assert variant_uri("pvc://models/runs/", 0.2) == "pvc://models/runs/ratio-0.2"
    assert variant_uri("hf://my-org/smollm2-pruned", 0.1) == "hf://my-org/smollm2-pruned-ratio-0.1"
    assert variant_uri("./out", 0.25) == "./out/ratio-0.25"


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_finetunes_each_variant(ray_session: Any, tiny: dict[str, Any], tmp_path: Path) -> None:
    import copy

    job = copy.deepcopy(tiny["job"])
    job["spec"]["finetune"].update(
        enabled=True,
        perDeviceBatchSize=2,
        gradientAccumulationSteps=1,
        maxSteps=2,
        maxLength=64,
        checkpointEverySteps=2,
        learningRate=1e-3,
    )
    job["spec"]["resources"] = {"workers": 1, "gpusPerWorker": 0}
    out = tmp_path / "out"
    result = interlace.sweep(job, [0.125, 0.25], output=out, quiet=True)
    for v in result.variants:
        vdir = out / f"ratio-{v.ratio:g}"
        assert sorted(p.name for p in (vdir / "checkpoints").glob("finetune-*/step-*"))[-1] == "step-00000002"
        names = [b.name for b in v.results.benchmarks]
        assert names == ["perplexity", "perplexity before finetuning"]
        assert json.loads((vdir / "model" / "config.json").read_text())["num_hidden_layers"] == v.layers_after
    # Concurrent on the one Ray cluster: both variants start at once, so the second variant's
    # finetuning starts before the first one's ends; concurrency() says how many runs fit side by side.
    import ray

    from interlace.api import load_job
    from interlace.pipeline.sweep import concurrency

    width = concurrency(load_job(job), 2)
    assert width == min(2, int(ray.cluster_resources()["CPU"]))
    events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]

    def when(stage: str, ratio: float) -> float:
        return next(
            e["time"] for e in events
            if e["event"] == "stage" and e["data"]["stage"] == stage
            and e["data"]["message"].startswith(f"ratio {ratio:g}: ")
        )

    starts = [when("Finetuning", r) for r in (0.125, 0.25)]
    ends = [when("Evaluating", r) for r in (0.125, 0.25)]
    assert max(starts) < min(ends), (starts, ends)  # all variants start at once; Ray interleaves them
