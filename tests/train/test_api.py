"""The Python API (interlace.api, re-exported by `interlace`): cheap import, the stages one by one on
a tiny model, the pipeline as one call, and the same validation and errors as the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import interlace
from interlace.cli import main
from interlace.errors import InterlaceError
from interlace.schema.spec import LayerPlan, PruneJob, Results, SpecError
from tests.train.conftest import pattern_samples, pattern_spec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.fixtures.tiny import save_tiny

    root = tmp_path_factory.mktemp("api")
    model = save_tiny("llama", root / "tiny-llama")
    texts = [f"{s.turns[0].text} {s.turns[1].text}" for s in pattern_samples(48)]
    (root / "data").mkdir()
    (root / "data" / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (root / "heldout").mkdir()
    (root / "heldout" / "heldout.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in texts[:8])
    )
    return {
        "model": model,
        "data": root / "data" / "train.jsonl",
        "heldout": root / "heldout" / "heldout.jsonl",
    }


def _text(path: Path) -> dict[str, object]:
    return {"format": "text", "path": str(path), "fraction": 1.0}


def test_import_interlace_is_cheap() -> None:
    code = (
        "import sys, interlace\n"
        "a = sorted(m for m in ('torch', 'transformers', 'ray', 'pydantic') if m in sys.modules)\n"
        "from interlace import analyze, plan, prune, finetune, evaluate, run, validate, PruneResult\n"
        "b = sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules)\n"
        "print(a, b, all(callable(f) for f in (analyze, plan, prune, finetune, evaluate, run, validate)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[] [] True"


def test_the_stages_one_by_one(tiny_setup: dict[str, Path], tmp_path: Path) -> None:
    from interlace import analyze, evaluate, plan, prune

    scores = analyze(
        tiny_setup["model"],
        _text(tiny_setup["data"]),
        samples=8,
        batch_size=4,
        max_length=64,
        output=tmp_path / "scores.json",
    )
    assert scores.num_layers == 8 and len(scores.scores[3]) == 5 and scores.meta["num_samples"] == 8
    assert json.loads((tmp_path / "scores.json").read_text())["num_layers"] == 8
    p = plan(scores, ratio=0.25, output=tmp_path / "plan.json")
    assert isinstance(p, LayerPlan) and len(p.drop) == 2
    again = plan(tmp_path / "scores.json", num_layers=2)  # from the file: the same layers
    assert (again.drop, again.finetune, again.anchor) == (p.drop, p.finetune, p.anchor)
    result = prune(tiny_setup["model"], plan=p, output=tmp_path / "pruned")
    assert isinstance(result, interlace.PruneResult) and result.processor_saved and not result.notes
    assert json.loads((tmp_path / "pruned" / "config.json").read_text())["num_hidden_layers"] == 6
    results = evaluate(
        tiny_setup["model"],
        result.model_dir,
        data=_text(tiny_setup["heldout"]),
        max_samples=8,
        speed=False,
        output=tmp_path / "results.json",
    )
    assert isinstance(results, Results) and [b.name for b in results.benchmarks] == ["perplexity"]
    assert results.benchmarks[0].base > 1 and results.benchmarks[0].pruned > 1
    assert Results.model_validate(json.loads((tmp_path / "results.json").read_text())) == results


def test_prune_runs_the_pipeline_in_one_call(tiny_setup: dict[str, Path], tmp_path: Path) -> None:
    result = interlace.prune(
        str(tiny_setup["model"]),
        num_layers=2,
        data=_text(tiny_setup["data"]),
        eval_data=_text(tiny_setup["heldout"]),
        finetune=False,
        output=tmp_path / "out",
        quiet=True,
        spec={
            "calibration": {"numSamples": 8, "batchSize": 4, "maxLength": 64},
            "evaluation": {"maxSamples": 8, "speed": False},
        },
    )
    out = tmp_path / "out"
    assert result.output_dir == out and result.model_dir == out / "model"
    assert len(result.plan.drop) == 2 and result.plan.num_layers == 8
    assert result.results is not None and (result.results.layers_before, result.results.layers_after) == (
        8,
        6,
    )
    assert result.model_uri == str(out / "model")
    assert [b.name for b in result.results.benchmarks] == ["perplexity"]
    for name in ("scores.json", "plan.json", "heatmap.png", "results.json", "progress.jsonl"):
        assert (out / name).is_file(), name
    assert json.loads((out / "model" / "config.json").read_text())["num_hidden_layers"] == 6
    doc = result.to_dict()
    assert doc["plan"]["drop"] == result.plan.drop and doc["results"]["layersAfter"] == 6


def test_run_takes_an_object_a_dict_or_a_path(tiny_setup: dict[str, Path], tmp_path: Path) -> None:
    import yaml

    doc = {
        "apiVersion": "interlace.dev/v1alpha1",
        "kind": "PruneJob",
        "metadata": {"name": "api"},
        "spec": {
            "dryRun": True,
            "resources": {"gpusPerWorker": 0},
            "model": {"source": str(tiny_setup["model"])},
            "pruning": {"numLayers": 2},
            "calibration": {
                "data": _text(tiny_setup["data"]),
                "numSamples": 4,
                "batchSize": 4,
                "maxLength": 64,
            },
        },
    }
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(doc))
    plans = []
    for job in (doc, f, PruneJob.model_validate(doc)):
        out = tmp_path / f"out-{len(plans)}"
        r = interlace.run(job, output=out, quiet=True)
        assert r.results is not None and r.results.layers_after == 6 and r.model_dir is None
        plans.append(r.plan)
    assert plans[0] == plans[1] == plans[2]


def test_run_names_every_bad_field_before_anything_heavy(tmp_path: Path) -> None:
    code = (
        "import sys, interlace\n"
        "try:\n"
        "    interlace.run({'spec': {'model': {'source': 'x/y'}, 'pruning': {'ratio': 1.5},"
        " 'finetune': {'learningRat': 1}}})\n"
        "except interlace.SpecError as err:\n"
        "    print(str(err).replace(chr(10), ' | '))\n"
        "print(sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    first, heavy = r.stdout.strip().splitlines()
    assert "spec.pruning.ratio" in first and "spec.finetune.learningRat" in first
    assert heavy == "[]"
    with pytest.raises(SpecError, match=r"spec\.pruning"):
        interlace.run({"spec": {"model": {"source": "x/y"}, "pruning": {}}})
    with pytest.raises(SpecError, match="no such file"):
        interlace.run(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("call", "cli", "api_msg", "cli_msg"),
    [
        ("analyze", ["--samples", "0"], "samples=0: need at least 1", "--samples 0: need at least 1"),
        (
            "analyze",
            ["--batch-size", "0"],
            "batch_size=0: need at least 1",
            "--batch-size 0: need at least 1",
        ),
        ("plan", ["--ratio", "0.05"], "drops no layer", "drops no layer"),
        (
            "plan",
            ["--ratio", "0.25", "--protect", "9"],
            "protect: layer(s) [9] outside 0..7",
            "--protect: layer(s) [9] outside 0..7",
        ),
        (
            "prune",
            [],
            "exists and is not empty; choose a new directory or pass overwrite=True",
            "pass --overwrite",
        ),
    ],
)
def test_same_checks_and_errors_as_the_cli(
    tiny_setup: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    call: str,
    cli: list[str],
    api_msg: str,
    cli_msg: str,
) -> None:
    scores = tmp_path / "scores.json"
    scores.write_text(
        json.dumps({"num_layers": 8, "scores": {"1": [0.5] * 7, "2": [0.4] * 6, "3": [0.3] * 5}})
    )
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(
        json.dumps(
            {
                "num_layers": 8,
                "strategy": "shortgpt",
                "drop": [3],
                "finetune": [4],
                "anchor": [],
                "frozen": [0, 1, 2, 5, 6, 7],
            }
        )
    )
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("x")
    model, data = str(tiny_setup["model"]), str(tiny_setup["data"])
    if call == "analyze":
        kw = {cli[0].lstrip("-").replace("-", "_"): int(cli[1])}
        with pytest.raises(InterlaceError) as info:
            interlace.analyze(model, _text(tiny_setup["data"]), **kw)
        argv = [
            "analyze",
            "--model",
            model,
            "--data",
            data,
            "--format",
            "text",
            "--output",
            str(tmp_path / "s.json"),
            *cli,
        ]
    elif call == "plan":
        protect = [int(cli[3])] if len(cli) > 2 else ()
        with pytest.raises(InterlaceError) as info:
            interlace.plan(scores, ratio=float(cli[1]), protect=protect)
        argv = ["plan", "--scores", str(scores), "--output", str(tmp_path / "p.json"), *cli]
    else:
        with pytest.raises(InterlaceError) as info:
            interlace.prune(model, plan=plan_file, output=full)
        argv = ["prune", "--model", model, "--plan", str(plan_file), "--output", str(full)]
    assert api_msg in str(info.value)
    assert main(argv) == 2
    assert cli_msg in capsys.readouterr().err


def test_prune_arguments_are_checked(tiny_setup: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InterlaceError, match="not both"):
        interlace.prune(tiny_setup["model"], plan={"num_layers": 8}, ratio=0.2, output=tmp_path)
    with pytest.raises(InterlaceError, match="give ratio or num_layers"):
        interlace.prune(tiny_setup["model"])
    with pytest.raises(InterlaceError, match=r"plan\.drop"):
        interlace.prune(
            tiny_setup["model"],
            plan={"num_layers": 8, "strategy": "tn", "drop": [9], "finetune": [], "anchor": [], "frozen": []},
            output=tmp_path / "o",
        )
    with pytest.raises(InterlaceError, match="exactly one of ratio and num_layers"):
        interlace.plan({"num_layers": 8}, ratio=0.2, num_layers=2)  # type: ignore[arg-type]


@pytest.mark.ray
@pytest.mark.slow
def test_finetune_stage(ray_session, tiny_setup: dict[str, Path], tmp_path: Path) -> None:
    from interlace import finetune
    from tests.train.conftest import hand_plan, save_pruned

    plan = hand_plan()
    pruned = save_pruned("llama", plan, tmp_path / "pruned")
    spec = pattern_spec(max_steps=2).model_dump()
    spec.pop("data")
    ft = finetune(pruned, plan, data=_text(tiny_setup["data"]), output=tmp_path / "ft", spec=spec)
    assert ft.steps == 2 == ft.total_steps and ft.final_loss is not None
    assert (ft.model_dir / "config.json").is_file()
    with pytest.raises(InterlaceError, match=r"finetune\.learning"):
        finetune(pruned, plan, output=tmp_path / "x", spec={"learningRate": -1})
