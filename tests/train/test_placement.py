"""Placement follows spec.resources: Ray Train asks for what the spec asks, and missing GPUs fail early."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from interlace.cli import main
from interlace.errors import InterlaceError
from interlace.runtime.placement import check_accelerators, placement_of, train_placement
from interlace.schema.spec import ResourcesSpec
from interlace.stages.finetune.driver import ray_train_configs
from tests.train.test_run_cli import _run_cli, _tiny_job


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_one_ray_train_worker_per_gpu_with_nccl() -> None:
    placement = train_placement(ResourcesSpec(workers=2, gpus_per_worker=4))
    assert placement.use_gpu and placement.num_workers == 8 and placement.backend == "nccl"
    assert placement.resources_per_worker == {"CPU": 1.0, "GPU": 1.0}
    scaling, torch_config = ray_train_configs(placement)
    assert scaling.num_workers == 8 and scaling.use_gpu is True
    assert scaling.resources_per_worker == {"CPU": 1.0, "GPU": 1.0}
    assert torch_config.backend == "nccl"


def test_cpu_spec_gives_gloo_cpu_workers() -> None:
    placement = train_placement(ResourcesSpec(workers=3, gpus_per_worker=0))
    assert not placement.use_gpu and placement.num_workers == 3 and placement.backend == "gloo"
    scaling, torch_config = ray_train_configs(placement)
    assert scaling.num_workers == 3 and scaling.use_gpu is False
    assert scaling.resources_per_worker == {"CPU": 1.0}
    assert torch_config.backend == "gloo"


def test_zero_workers_is_refused() -> None:
    with pytest.raises(InterlaceError, match=r"spec\.resources\.workers"):
        placement_of(0, 1)


@pytest.mark.skipif(_cuda(), reason="this machine has a GPU")
def test_gpu_spec_without_ray_on_a_gpu_less_machine_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if "ray" in sys.modules:  # an earlier test's Ray session: this check is about a driver without Ray
        monkeypatch.setattr(sys.modules["ray"], "is_initialized", lambda: False)
    with pytest.raises(InterlaceError, match=r"spec\.resources asks for 2 GPU\(s\).*this machine .* has 0"):
        check_accelerators(ResourcesSpec(workers=1, gpus_per_worker=2))
    check_accelerators(ResourcesSpec(workers=1, gpus_per_worker=0))  # CPU: nothing to check


@pytest.mark.skipif(_cuda(), reason="this machine has a GPU")
def test_cli_dry_run_asking_for_a_gpu_exits_2_before_any_work(tmp_path: Path) -> None:
    f = _tiny_job(tmp_path, dryRun=True)
    doc = yaml.safe_load(f.read_text())
    doc["spec"]["resources"]["gpusPerWorker"] = 1
    f.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    proc = _run_cli("run", "-f", str(f), "--output", str(out), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "interlace run: error: spec.resources asks for 1 GPU(s)" in proc.stderr
    assert not (out / "scores.json").exists()  # no analysis happened


@pytest.mark.ray
@pytest.mark.skipif(_cuda(), reason="this machine has a GPU")
def test_cli_run_asking_for_a_gpu_on_a_gpu_less_ray_cluster_exits_2(
    ray_session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole run (finetune enabled, Ray connected) checks the Ray cluster's GPU total first."""
    f = _tiny_job(tmp_path)
    doc = yaml.safe_load(f.read_text())
    doc["spec"]["resources"]["gpusPerWorker"] = 1
    f.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    assert main(["run", "-f", str(f), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "spec.resources asks for 1 GPU(s)" in err and "the Ray cluster has 0" in err
    assert not (out / "scores.json").exists() and not (out / "checkpoints").exists()


def test_cli_flash_attention_2_on_cpu_workers_exits_2_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = _tiny_job(tmp_path, dryRun=True)
    doc = yaml.safe_load(f.read_text())
    doc["spec"]["model"]["attnImplementation"] = "flash_attention_2"
    f.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    assert main(["run", "-f", str(f), "--output", str(out)]) == 2
    assert "spec.model.attnImplementation: flash_attention_2 runs on GPUs only" in capsys.readouterr().err
    assert not (out / "scores.json").exists()
