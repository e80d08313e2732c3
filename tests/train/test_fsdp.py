"""FSDP2 (`parallelism: fsdp`): what is refused before any worker starts.

FSDP2 on a real 2-worker Ray Train run (every decoder layer and the root sharded with `fully_shard`,
a worker killed mid-run, checked against DDP step by step and weight by weight) is
tests/train/test_distillation.py::test_distillation_under_fsdp2_resumes_after_a_worker_dies_and_matches_ddp:
one Ray Train run covers both (it was two, 74 s and 116 s in CI). Building the sharded student on
the meta device and loading each rank's shard is tests/train/test_fsdp_meta.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from interlace.errors import InterlaceError
from interlace.runtime.placement import placement_of
from interlace.schema.spec import FinetuneSpec
from interlace.stages.finetune.driver import finetune


def test_fsdp_with_fp16_is_refused_naming_the_field(pruned_llama, tmp_path: Path) -> None:
    model_dir, plan = pruned_llama
    from pydantic import ValidationError

    # the spec refuses it (so do the CRD and `interlace validate`) ...
    with pytest.raises(ValidationError, match=r"spec\.finetune\.precision: fp16 under FSDP"):
        FinetuneSpec(parallelism="fsdp", precision="fp16", max_steps=1)
    # ... and finetune() still does, on a spec that skipped validation, before any checkpoint
    spec = FinetuneSpec(parallelism="fsdp", max_steps=1).model_copy(update={"precision": "fp16"})
    with pytest.raises(InterlaceError, match="precision fp16"):
        finetune(model_dir, plan, spec, output_dir=tmp_path, placement=placement_of(1, 1))
    assert not (tmp_path / "checkpoints").exists()
