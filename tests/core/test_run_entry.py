"""One entry runs a PruneJob (interlace.pipeline.job.run_job): `interlace run` and the Python API's
`interlace.run` / `interlace.sweep` take the same steps in the same order. No Ray, no model: Ray's start
and the first step that would load a model are replaced by recorders, so the real pipeline, sweep and
target code runs up to there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import interlace
from interlace.cli import main
from interlace.errors import InterlaceError
from interlace.schema.spec import parse_prunejob, shared_work_dir_error


class Stop(InterlaceError):
    """Where the recorded run stops: the pipeline's first model-dependent check."""


def _job(out: Path, **pruning: object) -> dict[str, Any]:
    return {
        "apiVersion": "interlace.dev/v1alpha1",
        "kind": "PruneJob",
        "metadata": {"name": "t"},
        "spec": {"model": {"source": "builtin:smollm2-135m"}, "pruning": pruning or {"ratio": 0.2},
                 "output": {"uri": str(out)}},
    }


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import interlace.pipeline.run as pipeline_run
    import interlace.runtime.placement as placement
    import interlace.runtime.ray_cluster as ray_cluster

    seen: list[str] = []

    def gpu_memory(spec: Any) -> None:
        seen.append("model")
        raise Stop("stop before the model")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(pipeline_run, "check_inputs", lambda spec: seen.append("check_inputs"))
    monkeypatch.setattr(ray_cluster, "start_ray", lambda **kw: seen.append(f"start_ray(local={kw.get('local')})"))
    monkeypatch.setattr(pipeline_run, "_check_gpu_memory", gpu_memory)
    monkeypatch.setattr(placement, "check_accelerators", lambda *a, **kw: None)
    return seen


@pytest.mark.parametrize(
    "pruning",
    [{"ratio": 0.2}, {"ratios": [0.1, 0.2]}, {"target": {"minRetention": 0.9}}],
    ids=["pipeline", "sweep", "target"],
)
def test_cli_and_api_check_the_inputs_once_then_start_ray(
    calls: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], pruning: dict[str, Any]
) -> None:
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(_job(tmp_path / "cli", **pruning)))
    assert main(["run", "-f", str(f)]) == 2
    assert "stop before the model" in capsys.readouterr().err
    assert calls == ["check_inputs", "start_ray(local=False)", "model"]
    assert (tmp_path / "cli" / "progress.jsonl").is_file()

    calls.clear()
    with pytest.raises(Stop):
        interlace.run(_job(tmp_path / "api", **pruning), quiet=True)
    assert calls == ["check_inputs", "start_ray(local=True)", "model"]
    assert (tmp_path / "api" / "progress.jsonl").is_file()


def test_api_sweep_takes_the_same_entry(calls: list[str], tmp_path: Path) -> None:
    with pytest.raises(Stop):
        interlace.sweep(_job(tmp_path / "out"), [0.1, 0.2], quiet=True)
    assert calls == ["check_inputs", "start_ray(local=True)", "model"]
    with pytest.raises(InterlaceError, match="ratios"):  # checked before anything runs
        interlace.sweep(_job(tmp_path / "out"), [1.5], quiet=True)
    assert calls == ["check_inputs", "start_ray(local=True)", "model"]


def test_the_api_on_a_ray_cluster_refuses_without_shared_storage(
    calls: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `interlace run` does: the refusal is the spec rule's message, before the inputs or Ray."""
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.delenv("INTERLACE_WORK_DIR", raising=False)
    doc = _job(tmp_path / "out")
    doc["spec"]["output"]["uri"] = "s3://bucket/prefix"
    with pytest.raises(InterlaceError) as err:
        interlace.run(doc, local=False, quiet=True)
    assert str(err.value) == shared_work_dir_error(parse_prunejob(doc).spec)
    assert calls == []
    with pytest.raises(Stop):  # local=True: one machine, nothing to share
        interlace.run(_job(tmp_path / "out"), local=True, quiet=True)


def test_overrides_are_named_as_each_door_names_them(
    calls: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(_job(tmp_path / "out")))
    assert main(["run", "-f", str(f), "--max-steps", "0"]) == 2
    assert "--max-steps 0: need at least 1" in capsys.readouterr().err
    with pytest.raises(InterlaceError, match=r"^workers=0: need at least 1$"):
        interlace.run(_job(tmp_path / "out"), workers=0, quiet=True)
    assert calls == []
    with pytest.raises(Stop):
        interlace.run(_job(tmp_path / "out"), output=tmp_path / "elsewhere", workers=2, max_steps=3, quiet=True)
    assert (tmp_path / "elsewhere" / "progress.jsonl").is_file() and not (tmp_path / "out").exists()


def test_a_resumed_plan_obeys_the_one_protected_layer_rule(tmp_path: Path) -> None:
    """plan.json of an earlier attempt (or staged by a sweep) is reused only if it drops no layer that
    interlace.stages.plan.protected_layers protects: protectedLayers and, under `protect`, DeepStack."""
    from types import SimpleNamespace

    from interlace.pipeline.run import _reusable_plan
    from interlace.stages.plan import protected_layers, save_plan

    doc = _job(tmp_path)
    spec = parse_prunejob(doc).spec
    plan = {"num_layers": 8, "strategy": str(spec.pruning.strategy), "drop": [1, 2], "finetune": [],
            "anchor": [], "frozen": [0, 3, 4, 5, 6, 7]}
    from interlace.schema.spec import LayerPlan

    save_plan(LayerPlan.model_validate(plan), tmp_path / "plan.json")
    (tmp_path / "scores.json").write_text("{}")
    deepstack = SimpleNamespace(deepstack_layers=[2])
    assert _reusable_plan(tmp_path, spec, 8, 2, protected_layers(spec.pruning, None, num_layers=8)) is not None
    assert _reusable_plan(tmp_path, spec, 8, 2, protected_layers(spec.pruning, deepstack, num_layers=8)) is None
    doc["spec"]["pruning"]["deepstackPolicy"] = "position"
    position = parse_prunejob(doc).spec
    assert _reusable_plan(tmp_path, position, 8, 2, protected_layers(position.pruning, deepstack, num_layers=8))
