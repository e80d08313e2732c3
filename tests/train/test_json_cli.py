"""`--json` on analyze / plan / prune / evaluate / run: stdout is exactly one JSON document (checked in
a fresh process, where library output would otherwise land on stdout), the rest goes to stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from interlace.cli import main
from tests.train.conftest import pattern_samples

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, timeout: int = 300) -> Any:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", RAY_AUTH_MODE="disabled")
    r = subprocess.run(
        [sys.executable, "-m", "interlace.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)  # fails if anything but the one document is on stdout


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.fixtures.tiny import save_tiny

    root = tmp_path_factory.mktemp("json")
    texts = [f"{s.turns[0].text} {s.turns[1].text}" for s in pattern_samples(32)]
    data = root / "data" / "train.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return {"model": save_tiny("llama", root / "llama"), "data": data, "root": root}


def test_analyze_plan_prune_evaluate_json(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scores = tmp_path / "scores.json"
    doc = _cli(
        "analyze",
        "--model",
        str(setup["model"]),
        "--data",
        str(setup["data"]),
        "--format",
        "text",
        "--samples",
        "4",
        "--batch-size",
        "4",
        "--max-length",
        "64",
        "--output",
        str(scores),
        "--json",
    )
    assert doc["output"] == str(scores) and doc["numLayers"] == 8 and doc["numSamples"] == 4
    assert doc["scores"] == json.loads(scores.read_text())["scores"]

    plan = tmp_path / "plan.json"
    assert main(["plan", "--scores", str(scores), "--num-drop", "2", "--output", str(plan), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["output"] == str(plan) and len(doc["plan"]["drop"]) == 2
    assert doc["plan"]["numLayers"] == 8  # camelCase, as in PruneJob status.plan

    out = tmp_path / "pruned"
    doc = _cli("prune", "--model", str(setup["model"]), "--plan", str(plan), "--output", str(out), "--json")
    assert doc["modelDir"] == str(out) and doc["processorSaved"] is True
    assert doc["plan"]["drop"] == json.loads(plan.read_text())["drop"]

    results = tmp_path / "results.json"
    args = [
        "evaluate",
        "--base",
        str(setup["model"]),
        "--pruned",
        str(out),
        "--benchmarks",
        "perplexity",
        "--data",
        str(setup["data"]),
        "--data-format",
        "text",
        "--max-samples",
        "4",
        "--no-speed",
        "--output",
        str(results),
        "--json",
    ]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(results.read_text()) and doc["benchmarks"][0]["name"] == "perplexity"


def _job(setup: dict[str, Path], **spec: Any) -> Path:
    data = {"format": "text", "path": str(setup["data"]), "fraction": 1.0}
    doc = {
        "apiVersion": "interlace.dev/v1alpha1",
        "kind": "PruneJob",
        "metadata": {"name": "j"},
        "spec": {
            "model": {"source": str(setup["model"])},
            "pruning": {"numLayers": 2},
            "calibration": {"data": data, "numSamples": 4, "batchSize": 4, "maxLength": 64},
            "finetune": {
                "data": data,
                "perDeviceBatchSize": 2,
                "gradientAccumulationSteps": 1,
                "maxSteps": 2,
                "maxLength": 64,
                "checkpointEverySteps": 2,
                "learningRate": 1e-3,
            },
            "evaluation": {"data": data, "maxSamples": 4, "speed": False},
            "resources": {"workers": 1, "gpusPerWorker": 0},
            **spec,
        },
    }
    f = setup["root"] / f"job-{len(list(setup['root'].glob('job-*')))}.yaml"
    f.write_text(yaml.safe_dump(doc))
    return f


def test_run_json_dry_run(setup: dict[str, Path], tmp_path: Path) -> None:
    doc = _cli("run", "-f", str(_job(setup, dryRun=True)), "--output", str(tmp_path / "out"), "--json")
    assert doc["outputDir"] == str(tmp_path / "out") and doc["modelDir"] is None
    assert doc["results"]["layersBefore"] == 8 and doc["results"]["layersAfter"] == 6
    assert len(doc["plan"]["drop"]) == 2


@pytest.mark.ray
@pytest.mark.slow
def test_run_json_with_ray_workers_keeps_stdout_clean(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    doc = _cli("run", "-f", str(_job(setup)), "--output", str(out), "--local", "--json", timeout=600)
    assert doc["modelDir"] == str(out / "model") and doc["modelUri"] == str(out / "model")
    assert [b["name"] for b in doc["results"]["benchmarks"]] == [
        "perplexity",
        "perplexity before finetuning",
    ]
