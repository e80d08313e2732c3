"""FSDP2's load path (interlace.stages.finetune.shard) on a real 2-process gloo group, without Ray.

Each rank builds the pruned student on the meta device, prepares and wraps it, and only then loads
the weights: no parameter has storage before the load, afterwards each rank holds about half of
every parameter, only rank 0 read the checkpoint, and the result (every tensor, the buffers, the
loss of a batch) equals the whole-model path's. Tied-and-frozen (one shared parameter) and
tied-with-a-trainable-head (untied by prepare_student) embeddings are checked, and a Qwen3-VL.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from interlace.schema.spec import LayerPlan
from tests.train.conftest import save_pruned

WORLD = 2


def _tied_copy(model_dir: Path, out: Path) -> Path:
    """The pruned model with tied embeddings, stored as transformers stores them: the table once."""
    import json

    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    weights = load_file(str(out / "model.safetensors"))
    del weights["lm_head.weight"]
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _rank(rank: int, init: str, cases: list[tuple[Path, bool, str]], plan: LayerPlan) -> None:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.tensor import DTensor

    from interlace.models.load import find_parts, load_model
    from interlace.stages.finetune import shard
    from interlace.stages.finetune.freeze import prepare_student
    from interlace.stages.finetune.step import _wrap

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    cpu = torch.device("cpu")
    reads: list[Path] = []
    read = shard._full_state_dict
    shard._full_state_dict = lambda d, t, r: (reads.append(d), read(d, t, r))[1]  # type: ignore[assignment]
    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(0, 200, (2, 12))}
    batch["labels"] = batch["input_ids"].clone()
    try:
        for model_dir, freeze_head, dtype in cases:
            loaded = load_model(str(model_dir), dtype=dtype, empty=True)
            model = loaded.model
            assert all(p.is_meta for p in model.parameters())
            assert not any(b.is_meta for b in model.buffers())
            prepare_student(model, plan, freeze_lm_head=freeze_head, gradient_checkpointing=True)
            model = _wrap(model, "fsdp", cpu, None, WORLD)
            params = dict(model.named_parameters())
            assert all(isinstance(p, DTensor) and p.to_local().is_meta for p in params.values())

            reads.clear()
            shard.load_sharded(model, model_dir, cpu, dtype=dtype)
            assert reads == ([model_dir] if rank == 0 else [])
            full_numel = sum(p.numel() for p in params.values())
            local = sum(p.to_local().untyped_storage().nbytes() // p.element_size() for p in params.values())
            assert local <= 0.55 * full_numel, (local, full_numel)  # about 1/world of the model
            tied = model.config.tie_word_embeddings
            parts = find_parts(model)
            assert (parts.lm_head.weight is parts.embed_tokens.weight) == tied

            ref = load_model(str(model_dir), dtype=dtype).model
            prepare_student(ref, plan, freeze_lm_head=freeze_head, gradient_checkpointing=True)
            got = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
            want = ref.state_dict()
            assert got.keys() == want.keys()
            for k in want:
                assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
            for (n, b), (n_ref, b_ref) in zip(model.named_buffers(), ref.named_buffers(), strict=True):
                assert n == n_ref and torch.equal(b, b_ref), n
            if dtype == "float32":  # bf16 needs the loop's autocast; its tensors are checked above
                loss, loss_ref = model(**batch).loss, ref(**batch).loss
                torch.testing.assert_close(loss, loss_ref, rtol=0, atol=0)
    finally:
        dist.destroy_process_group()


def test_fsdp2_builds_on_meta_and_loads_each_rank_its_shard(pruned_llama, tmp_path: Path) -> None:
    model_dir, plan = pruned_llama
    tied = _tied_copy(model_dir, tmp_path / "tied")
    vlm = save_pruned("qwen3_vl", plan, tmp_path / "qwen3_vl")  # stored in the hub's older key layout
    # bf16: the frozen weights stay bf16, the trainable ones become fp32 master copies of bf16 values.
    cases = [
        (tied, True, "float32"),
        (tied, False, "bfloat16"),
        (vlm, True, "bfloat16"),
    ]
    mp.spawn(_rank, args=(f"file://{tmp_path / 'pg'}", cases, plan), nprocs=WORLD, join=True)


def test_load_sharded_refuses_meta_buffers(pruned_llama) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from interlace.errors import InterlaceError
    from interlace.stages.finetune.shard import load_sharded

    model_dir, _ = pruned_llama
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    with pytest.raises(InterlaceError, match="inv_freq"):
        load_sharded(model, model_dir, torch.device("cpu"), dtype="float32")
