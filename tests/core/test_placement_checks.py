"""Checks before any GPU hour: attention kernel, and the per-GPU memory estimate against gpuMemory."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from interlace.errors import InterlaceError
from interlace.runtime.placement import check_attention, check_memory, count_params, finetune_memory
from interlace.schema.spec import PruneJobSpec

REPO = Path(__file__).resolve().parents[2]


def qwen3_vl_config(name: str) -> Any:
    """The Qwen3-VL-8B / -4B configs bench/gpu.py builds (transcribed from the published ones)."""
    mod = sys.modules.get("bench_gpu")
    if mod is None:
        spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "bench" / "gpu.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bench_gpu"] = mod
        spec.loader.exec_module(mod)
    return mod.qwen3_vl_config(mod.MODELS[name])


def _spec(**over: Any) -> PruneJobSpec:
    doc: dict[str, Any] = {"model": {"source": "Qwen/Qwen3-VL-8B-Instruct"}, "pruning": {"ratio": 0.25},
                           "finetune": {"perDeviceBatchSize": 4, "gradientAccumulationSteps": 8}}
    for key, value in over.items():
        doc[key] = {**doc.get(key, {}), **value}
    return PruneJobSpec.model_validate(doc)


def test_sdpa_is_the_default_and_always_accepted() -> None:
    spec = _spec()
    assert spec.model.attn_implementation == "sdpa"
    check_attention(spec)
    check_attention(_spec(resources={"gpusPerWorker": 0}))


def test_flash_attention_2_on_cpu_workers_is_refused() -> None:
    from pydantic import ValidationError

    # the spec refuses it first (so do the CRD and `interlace validate`) ...
    with pytest.raises(ValidationError, match=r"spec\.model\.attnImplementation: flash_attention_2 runs on GPUs only"):
        _spec(model={"attnImplementation": "flash_attention_2"}, resources={"gpusPerWorker": 0})
    # ... and the job's own start check still does, on a spec that skipped validation
    spec = _spec(model={"attnImplementation": "flash_attention_2"})
    cpu = spec.model_copy(update={"resources": spec.resources.model_copy(update={"gpus_per_worker": 0})})
    with pytest.raises(InterlaceError, match=r"spec\.model\.attnImplementation: flash_attention_2 runs on GPUs only"):
        check_attention(cpu)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed here")
def test_flash_attention_2_without_flash_attn_is_refused() -> None:
    with pytest.raises(InterlaceError, match=r"spec\.model\.attnImplementation: .*flash-attn package.*use sdpa"):
        check_attention(_spec(model={"attnImplementation": "flash_attention_2"}))


def test_memory_estimate_counts_the_real_8b_and_refuses_what_cannot_fit() -> None:
    config = qwen3_vl_config("Qwen3-VL-8B")
    n = count_params(config)
    assert 8.7e9 < n < 8.8e9  # "8.77B parameters", as published
    spec = _spec()
    est = check_memory(spec, config, total_params=n)
    assert est is not None and 40 * 2**30 < est.total < 80 * 2**30
    # The plan's real positions (lowest trainable layer higher up) need less than the worst case.
    planned = finetune_memory(spec, config, positions=[10, 14, 20], total_params=n)
    assert planned.total < est.total
    with pytest.raises(InterlaceError, match=r"finetuning needs about [0-9.]+ GiB \(.*\) per GPU .*spec\.resources\.gpuMemory is 40Gi"):
        check_memory(_spec(resources={"gpuMemory": "40Gi"}), config, total_params=n)
    # No gradient checkpointing keeps every layer's activations: far more.
    no_ckpt = finetune_memory(_spec(finetune={"gradientCheckpointing": False}), config, total_params=n)
    assert no_ckpt.activations > 5 * est.activations
    # Distillation holds the unpruned 8B teacher on every GPU as well: about 16 GiB more, named.
    distill = finetune_memory(_spec(finetune={"distillation": {}}), config, total_params=n)
    assert distill.teacher > n * 2 and distill.total == pytest.approx(est.total + distill.teacher)
    assert "distillation teacher" in distill.describe()
    with pytest.raises(InterlaceError, match=r"distillation teacher .*set spec\.finetune\.distillation\.topK"):
        check_memory(_spec(finetune={"distillation": {}}, resources={"gpuMemory": "60Gi"}), config, total_params=n)
    # topK precomputes the teacher before training: the same 8B job then fits where it did not.
    topk = finetune_memory(_spec(finetune={"distillation": {"topK": 64}}), config, total_params=n)
    assert est.total <= topk.total < distill.total - 16 * 2**30
    with pytest.raises(InterlaceError, match="distillation teacher"):
        check_memory(_spec(finetune={"distillation": {}}, resources={"gpuMemory": "96Gi"}), config, total_params=n)
    assert check_memory(
        _spec(finetune={"distillation": {"topK": 64}}, resources={"gpuMemory": "96Gi"}), config, total_params=n
    ) is not None
    # CPU workers, dry runs and disabled finetuning are not checked.
    assert check_memory(_spec(resources={"gpusPerWorker": 0}), config, total_params=n) is None
    assert check_memory(_spec(finetune={"enabled": False}), config, total_params=n) is None


def test_gpu_memory_must_be_a_quantity() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        _spec(resources={"gpuMemory": "eighty"})
