"""`interlace run -f prunejob.yaml`: bad input exits 2 naming the field; a tiny job writes every artifact."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from interlace.cli import main
from interlace.schema.spec import LayerPlan, Results
from tests.train.conftest import pattern_samples

REPO = Path(__file__).resolve().parents[2]


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A fresh process: the validation must happen before torch/Ray would even be imported."""
    code = (
        "import sys; from interlace.cli import main; rc = main(sys.argv[1:]); "
        "heavy = [m for m in ('torch', 'ray', 'transformers') if m in sys.modules]; "
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )


def _job(**spec: object) -> dict:
    base = {"model": {"source": "builtin:smollm2-135m"}, "pruning": {"ratio": 0.2}}
    base.update(spec)
    return {"apiVersion": "interlace.dev/v1alpha1", "kind": "PruneJob", "metadata": {"name": "t"}, "spec": base}


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (_job(pruning={"ratio": 1.5}), "spec.pruning.ratio"),
        (_job(finetune={"learningRat": 1e-4}), "spec.finetune.learningRat"),
        (_job(pruning={"ratio": 0.2, "numLayers": 3}), "spec.pruning"),
        ("spec: [unclosed", "not valid YAML"),
    ],
)
def test_bad_prunejob_exits_2_naming_the_field(tmp_path: Path, doc: object, field: str) -> None:
    f = tmp_path / "job.yaml"
    f.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    out = tmp_path / "out"
    proc = _run_cli("run", "-f", str(f), "--output", str(out), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert field in proc.stderr
    assert "interlace run: error:" in proc.stderr
    assert "HEAVY []" in proc.stdout  # rejected before torch, transformers or Ray were imported
    assert not out.exists()  # nothing written


def test_missing_file_exits_2(tmp_path: Path) -> None:
    proc = _run_cli("run", "-f", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert proc.returncode == 2 and "no such file" in proc.stderr


def _write_text_rows(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def _tiny_job(tmp_path: Path, **overrides: object) -> Path:
    """A PruneJob for the tiny Llama (8 layers) on local text shards; returns the YAML path."""
    from tests.fixtures.tiny import save_tiny

    model_dir = save_tiny("llama", tmp_path / "tiny-llama")
    texts = [f"{s.turns[0].text} {s.turns[1].text}" for s in pattern_samples(48)]
    train = _write_text_rows(tmp_path / "data" / "train.jsonl", texts)
    heldout = _write_text_rows(tmp_path / "heldout" / "heldout.jsonl", texts[:8])
    data = {"format": "text", "path": str(train), "fraction": 1.0}
    job = _job(
        model={"source": str(model_dir)},
        pruning={"numLayers": 2, "strategy": "interlace"},
        calibration={"data": data, "numSamples": 8, "batchSize": 4, "maxLength": 64},
        finetune={
            "data": data, "learningRate": 1e-3, "perDeviceBatchSize": 2, "gradientAccumulationSteps": 1,
            "maxSteps": 4, "maxLength": 64, "checkpointEverySteps": 2,
        },
        evaluation={
            "benchmarks": ["perplexity"], "data": {"format": "text", "path": str(heldout), "fraction": 1.0},
            "maxSamples": 8, "batchSize": 4, "speed": False,
        },
        resources={"workers": 1, "gpusPerWorker": 0},
    )
    job["spec"].update(overrides)
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(job))
    return f


def test_dry_run_stops_after_the_plan(tmp_path: Path) -> None:
    f = _tiny_job(tmp_path, dryRun=True)
    out = tmp_path / "out"
    old_umask = os.umask(0o022)
    try:
        assert main(["run", "-f", str(f), "--output", str(out)]) == 0
    finally:
        os.umask(old_umask)
    # readable by the other users of a shared volume (no mkstemp 0600 / mkdtemp 0700 left over)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in out.iterdir()} == {
        p.name: "0o644" for p in out.iterdir()
    }
    assert sorted(p.name for p in out.iterdir()) == [
        "data_plan.json", "heatmap.png", "plan.json", "progress.jsonl", "results.json", "scores.json",
    ]
    # the data plan: all 48 rows in a shuffled order, 8 calibration rows drawn from them
    dp = json.loads((out / "data_plan.json").read_text())
    assert dp["calibration"] == {"sameAsFinetune": True}
    ft = dp["finetune"]
    assert ft["numFinetune"] == 48 and sorted(ft["trainingIds"]) == sorted(f"data#{i}" for i in range(48))
    assert ft["trainingIds"] != [f"data#{i}" for i in range(48)]
    assert len(ft["calibrationIds"]) == 8 == ft["numCalibration"] and set(ft["calibrationIds"]) <= set(ft["trainingIds"])
    scores = json.loads((out / "scores.json").read_text())
    assert scores["num_layers"] == 8 and len(scores["scores"]["3"]) == 5
    results = Results.model_validate(json.loads((out / "results.json").read_text()))
    assert (results.layers_before, results.layers_after) == (8, 6)
    assert 0 < results.params_after < results.params_before
    assert results.benchmarks == []
    # `interlace plan` on the same scores writes the very same file, in the API's field names (status.plan)
    plan_cli = tmp_path / "plan-cli.json"
    args = ["plan", "--scores", str(out / "scores.json"), "--num-drop", "2", "--strategy", "interlace"]
    assert main([*args, "--output", str(plan_cli)]) == 0
    assert plan_cli.read_bytes() == (out / "plan.json").read_bytes()
    doc = json.loads(plan_cli.read_text())
    assert doc == LayerPlan.model_validate(doc).to_wire()
    assert {"numLayers", "drop", "finetune", "anchor", "frozen", "strategy"} <= set(doc)
    assert "num_layers" not in doc and plan_cli.read_text().endswith("}\n")


@pytest.mark.ray
@pytest.mark.slow
def test_run_tiny_job_end_to_end(
    ray_session, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    f = _tiny_job(tmp_path)
    out = tmp_path / "out"
    # No stage loads model weights in the driver: analysis, surgery, evaluation run as Ray tasks and
    # finetuning on Ray Train, all in other processes, where these patches do not reach.
    import transformers

    def no_weights_here(*args: object, **kwargs: object) -> None:
        raise AssertionError("the driver loaded model weights")

    monkeypatch.setattr("interlace.models.load.load_model", no_weights_here)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", no_weights_here)

    assert main(["run", "-f", str(f), "--output", str(out)]) == 0

    for name in ("scores.json", "plan.json", "heatmap.png", "results.json", "progress.jsonl"):
        assert (out / name).is_file(), name
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "model" / "config.json").is_file() and (out / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in (out / "checkpoints").glob("finetune-*/step-*"))[-1] == "step-00000004"
    plan = LayerPlan.model_validate(json.loads((out / "plan.json").read_text()))
    assert len(plan.drop) == 2 and plan.num_layers == 8
    # With Ray up, the analysis ran as Ray tasks (one shard per worker), merged in the driver.
    assert json.loads((out / "scores.json").read_text())["meta"]["shards"] == 1
    results = Results.model_validate(json.loads((out / "results.json").read_text()))
    assert (results.layers_before, results.layers_after) == (8, 6)
    assert results.params_after < results.params_before
    names = [b.name for b in results.benchmarks]
    assert names == ["perplexity", "perplexity before finetuning"]
    ppl, before = results.benchmarks
    assert ppl.base == before.base > 1 and ppl.pruned > 1 and before.pruned > 1
    assert results.relative_performance == pytest.approx(ppl.relative)
    assert results.output_uri == str(out / "model")
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 6
    events = [json.loads(line)["event"] for line in (out / "progress.jsonl").read_text().splitlines()]
    assert events.count("plan") == 1 and events[-1] == "results"
    stages = [
        json.loads(line)["data"]["stage"]
        for line in (out / "progress.jsonl").read_text().splitlines()
        if json.loads(line)["event"] == "stage"
    ]
    assert stages == ["Analyzing", "Planning", "Finetuning", "Evaluating", "Publishing"]
    captured = capsys.readouterr()
    assert "interlace run: summary" in captured.err + captured.out


@pytest.mark.parametrize("output", ["file://{tmp}/out", "s3://bucket/prefix"])
def test_a_cluster_run_without_shared_storage_stops_before_any_work(tmp_path: Path, output: str) -> None:
    """As the RayJob's driver (RAY_ADDRESS set), a work dir inside the head pod would leave the worker
    pods unable to read the pruned model: exit 2 naming the fields, nothing written, nothing loaded."""
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(_job(output={"uri": output.format(tmp=tmp_path)})))
    code = (
        "import sys; from interlace.cli import main; rc = main(sys.argv[1:]); "
        "heavy = [m for m in ('torch', 'ray', 'transformers') if m in sys.modules]; "
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "run", "-f", str(f)], cwd=tmp_path, capture_output=True, text=True,
        timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                          "RAY_ADDRESS": "10.0.0.1:6379", "INTERLACE_CACHE": str(tmp_path / "cache")},
    )
    assert proc.returncode == 2, proc.stderr
    assert "spec.output.uri" in proc.stderr and "spec.resources.pvcName" in proc.stderr
    assert "HEAVY []" in proc.stdout
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "runs").exists()


def test_the_run_refusal_is_the_start_checks_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`interlace run` on a Ray cluster refuses with exactly the message `interlace validate --cluster`
    and the operator's InvalidSpec give (one rule: shared_work_dir_error), dry runs included; a set
    pvcName without INTERLACE_WORK_DIR is the run's own case, named by its variable."""
    from interlace.errors import InterlaceError
    from interlace.pipeline.job import require_shared_work_dir
    from interlace.schema.spec import SHARED_WORK_DIR_MESSAGE, parse_prunejob, shared_work_dir_error

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.delenv("INTERLACE_WORK_DIR", raising=False)
    for dry in (False, True):
        job = parse_prunejob(_job(output={"uri": "s3://bucket/prefix"}, dryRun=dry))
        assert shared_work_dir_error(job.spec) == SHARED_WORK_DIR_MESSAGE
        with pytest.raises(InterlaceError) as err:
            require_shared_work_dir(job, tmp_path / "out", local=False)
        assert str(err.value) == shared_work_dir_error(job.spec)
    require_shared_work_dir(job, tmp_path / "out", local=True)  # one machine: nothing to share

    claim = parse_prunejob(_job(output={"uri": "hf://org/name"}, resources={"pvcName": "work"}))
    assert shared_work_dir_error(claim.spec) is None
    with pytest.raises(InterlaceError, match="INTERLACE_WORK_DIR"):
        require_shared_work_dir(claim, tmp_path / "out", local=False)
    monkeypatch.setenv("INTERLACE_WORK_DIR", str(tmp_path / "work"))
    require_shared_work_dir(claim, tmp_path / "out", local=False)
    require_shared_work_dir(parse_prunejob(_job(output={"uri": "pvc://work/out"}, resources={"pvcName": "work"})),
                             tmp_path / "out", local=False)


@pytest.mark.ray
@pytest.mark.slow
def test_run_reports_out_of_domain_and_in_domain_retention(
    ray_session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """spec.evaluation.outOfDomainData: both perplexities, labelled, in results.json (status.results), the
    model card and the last line `interlace run` prints; the headline is the out-of-domain one."""
    f = _tiny_job(tmp_path)
    doc = yaml.safe_load(f.read_text())
    other = ["Return the number of items in a container, counted once.", "Open the file and return a stream."] * 4
    ood = _write_text_rows(tmp_path / "ood" / "docs.jsonl", other)
    doc["spec"]["evaluation"]["outOfDomainData"] = {"format": "text", "path": str(ood), "fraction": 1.0}
    doc["spec"]["finetune"]["maxSteps"] = 2
    f.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    assert main(["run", "-f", str(f), "--output", str(out)]) == 0

    results = Results.model_validate(json.loads((out / "results.json").read_text()))
    assert [(b.name, b.domain) for b in results.benchmarks] == [
        ("perplexity (out of domain)", "out"),
        ("perplexity (in domain)", "in"),
        ("perplexity (out of domain) before finetuning", None),
        ("perplexity (in domain) before finetuning", None),
    ]
    out_b, in_b, out_before, in_before = results.benchmarks
    assert out_b.base == out_before.base and in_b.base == in_before.base and out_b.base != in_b.base
    assert results.retention_out_of_domain == pytest.approx(out_b.relative)
    assert results.retention_in_domain == pytest.approx(in_b.relative)
    assert results.relative_performance == pytest.approx(out_b.relative)  # the headline: out of domain
    wire = json.loads((out / "results.json").read_text())  # status.results carries the same camelCase keys
    assert wire["retentionOutOfDomain"] == pytest.approx(out_b.relative)
    assert wire["retentionInDomain"] == pytest.approx(in_b.relative)
    line = (
        f"retention (out of domain) {results.retention_out_of_domain:.1f}%, "
        f"in domain {results.retention_in_domain:.1f}%"
    )
    printed = capsys.readouterr()
    assert (printed.out + printed.err).rstrip().splitlines()[-1].strip() == line
    assert line in (out / "model" / "README.md").read_text()
