"""The finetune workers' micro-batches pack batches with images (interlace.stages.finetune.loop)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interlace.data.encode import collate, encode_sample
from interlace.models.packing import sample_positions
from interlace.schema.spec import ModelSpec
from interlace.stages.finetune import loop
from tests.fixtures import tiny
from tests.train.conftest import hand_plan, pattern_spec


@pytest.mark.parametrize("attn", ["sdpa", "flash_attention_2"])
def test_micro_batches_pack_images_with_the_models_own_positions(tmp_path: Path, attn: str) -> None:
    """A Qwen3-VL micro-batch of 4 samples with images is packed (no attention_mask, [4, rows, L]
    M-RoPE position ids from the model's config), exactly as collate packs it with the family's
    positions; sdpa packs into rows of at most maxLength, flash-attention-2 into one row (its varlen
    path isolates packed samples only in a batch of one row)."""
    model_dir = tiny.save_tiny("qwen3_vl", tmp_path / "m")
    model, proc = tiny.tiny_qwen3_vl()
    samples = tiny.tiny_samples(4)
    config = loop.WorkerConfig(
        model_dir=model_dir,
        model=ModelSpec(source="org/original", attn_implementation=attn),
        plan=hand_plan(),
        spec=pattern_spec(packing=True, per_device_batch_size=4, max_length=140),
        freeze_lm_head=True,
        total_steps=1,
        precision="fp32",
        fingerprint="x",
        final_model_dir=tmp_path / "f",
        resume_root=tmp_path,
        run_dir=tmp_path,
        samples=samples,
    )
    batch, n_tokens = next(loop._micro_batches(config, proc, 0, 1, skip=0))
    exs = [encode_sample(s, proc, max_length=140) for s in samples]
    assert n_tokens == sum(int(e["input_ids"].shape[0]) for e in exs)
    rows = 1 if attn == "flash_attention_2" else 2
    assert "attention_mask" not in batch and batch["position_ids"].shape[:2] == (4, rows)
    want = collate(exs, proc.tokenizer.pad_token_id, packing=True, max_length=None if rows == 1 else 140,
                   positions=sample_positions(model.config))  # fmt: skip
    assert set(batch) == set(want)
    for k, v in want.items():
        assert torch.equal(batch[k], v), k
