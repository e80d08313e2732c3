"""interlace.runtime.costs: the FLOP count behind the structural limit, and the GPU memory estimate."""

from __future__ import annotations

import pytest

from interlace.runtime.costs import (
    LOSS_CHUNK_TOKENS,
    DecoderShape,
    memory_estimate,
    parse_quantity,
    step_flops_per_token,
    structural_ratio,
)

# hidden 8, intermediate 16, 2 heads of 4 (q = kv = 8), vocab 10:
#   matmul params per layer = 8 * (2*8 + 2*8) + 3 * 8 * 16 = 640  -> forward 1280 FLOPs per token
#   attention forward at T = 4: 2 * 2 * 4 * 4 = 64;  lm_head forward 2 * 8 * 10 = 160
SHAPE = DecoderShape(num_layers=4, hidden=8, intermediate=16, heads=2, kv_heads=2, head_dim=4, vocab=10)


def test_flops_counted_per_layer_by_hand() -> None:
    assert SHAPE.layer_matmul_params == 640
    assert SHAPE.layer_forward_flops(4) == (1280.0, 64.0)
    # Interleaved, layer 2 trains, no checkpointing: lm_head fwd + input grad (320), forward of all 4
    # layers (4 x 1344), activation gradients for layers 2 and 3 (2 x (1280 + 128)), weight
    # gradients for layer 2 only (1280).
    inter = step_flops_per_token(SHAPE, num_layers=4, trainable=[2], seq_len=4, checkpointing=False)
    assert inter == 320 + 4 * 1344 + 2 * 1408 + 1280 == 9792
    full = step_flops_per_token(SHAPE, num_layers=4, trainable=range(4), seq_len=4, checkpointing=False)
    assert full == 320 + 4 * 1344 + 4 * 1408 + 4 * 1280 == 16448
    assert structural_ratio(SHAPE, num_layers=4, trainable=[2], seq_len=4, checkpointing=False) == inter / full
    # Checkpointing recomputes the forward of every layer the backward pass goes through.
    inter_ck = step_flops_per_token(SHAPE, num_layers=4, trainable=[2], seq_len=4, checkpointing=True)
    assert inter_ck == inter + 2 * 1344
    full_ck = step_flops_per_token(SHAPE, num_layers=4, trainable=range(4), seq_len=4, checkpointing=True)
    assert full_ck == full + 4 * 1344


def test_ratio_depends_on_the_lowest_trainable_layer() -> None:
    shape = DecoderShape(num_layers=27, hidden=4096, intermediate=12288, heads=32, kv_heads=8, head_dim=128,
                         vocab=151936)
    low = structural_ratio(shape, num_layers=27, trainable=[1, 13, 20], seq_len=4096, checkpointing=True)
    high = structural_ratio(shape, num_layers=27, trainable=[14, 20, 25], seq_len=4096, checkpointing=True)
    assert 0.3 < high < low < 1.0
    assert structural_ratio(shape, num_layers=27, trainable=range(27), seq_len=4096, checkpointing=True) == 1.0


def test_shape_from_a_vlm_config_dict() -> None:
    cfg = {"text_config": {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                           "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                           "vocab_size": 151936}}
    s = DecoderShape.from_config(cfg)
    assert (s.num_layers, s.hidden, s.head_dim, s.kv_heads, s.vocab) == (36, 2560, 128, 8, 151936)


def test_memory_estimate_parts() -> None:
    n = SHAPE.layer_matmul_params
    kw = {"total_params": 10_000, "num_layers": 4, "trainable": [2], "tokens_per_micro_batch": 100}
    est = memory_estimate(SHAPE, checkpointing=True, **kw)
    assert est.trainable_state == 12 * n  # fp32 weights + AdamW's two moments, through the whole step
    assert est.frozen_weights == (10_000 - n) * 2
    # The loss phase: bf16 logits and their gradient at every (labelled) token, one float32
    # cross-entropy chunk, the final hidden states and their labelled gather.
    assert est.logits == 100 * 10 * 4 + min(100, LOSS_CHUNK_TOKENS) * 10 * 18 + 100 * 8 * 4
    long = memory_estimate(SHAPE, checkpointing=True, **{**kw, "tokens_per_micro_batch": 4 * LOSS_CHUNK_TOKENS})
    assert long.logits == 4 * LOSS_CHUNK_TOKENS * (10 * 4 + 8 * 4) + LOSS_CHUNK_TOKENS * 10 * 18  # one chunk
    # The layer phase: the trainable gradients (fp32) and one checkpointed layer recomputed; the two
    # phases never overlap, so the total counts the larger.
    assert est.backward > 4 * n
    assert est.total == est.frozen_weights + est.trainable_state + est.activations + max(est.logits, est.backward)
    no_ckpt = memory_estimate(SHAPE, checkpointing=False, **kw)
    assert no_ckpt.activations > est.activations > 0 and no_ckpt.backward == 4 * n
    ddp = memory_estimate(SHAPE, checkpointing=True, world_size=2, **kw)
    assert ddp.trainable_state == 16 * n  # + the DDP gradient buckets
    fsdp = memory_estimate(SHAPE, checkpointing=True, world_size=2, sharded=True, **kw)
    # FSDP2: shards, plus the all-gathered parameters of the layer being computed and the prefetched next
    # and the root group (everything outside the 4 decoder layers), gathered from forward to backward
    outside = 10_000 - 4 * n
    assert fsdp.trainable_state == 6 * n
    assert fsdp.frozen_weights == est.frozen_weights / 2 + 2 * n * 2 + max(outside, 0) * 2 * (1 - 1 / 2)
    assert fsdp.backward == est.backward - 2 * n
    # A lower trainable layer means a longer backward: more activations kept.
    low = memory_estimate(SHAPE, checkpointing=True, **{**kw, "trainable": [0]})
    assert low.activations > est.activations
    # Distillation: the whole unpruned teacher on every worker (never sharded) and its logits.
    assert est.teacher == 0
    distill = memory_estimate(SHAPE, checkpointing=True, teacher_params=12_000, **kw)
    assert distill.teacher == 12_000 * 2 + 100 * 10 * (2 + 8)
    assert distill.total == est.total + distill.teacher
    fsdp_distill = memory_estimate(SHAPE, checkpointing=True, world_size=2, sharded=True, teacher_params=12_000, **kw)
    assert fsdp_distill.teacher == distill.teacher
    # distillation.topK: the teacher runs before training next to the student's weights and optimizer
    # state, not its activations; the peak is max(training, that pass): it adds what the pass needs above.
    pre = memory_estimate(SHAPE, checkpointing=True, teacher_params=12_000, teacher_precomputed=True, **kw)
    weights = est.frozen_weights + est.trainable_state
    teacher_pass = weights + 12_000 * 2 + 100 * 10 * (2 + 4)
    assert pre.teacher == pytest.approx(max(0.0, teacher_pass - est.total))
    assert pre.total == pytest.approx(max(est.total, teacher_pass)) and est.total <= pre.total < distill.total
    assert "precomputed before training" in pre.describe() or pre.teacher == 0
    small = memory_estimate(SHAPE, checkpointing=True, teacher_params=10, teacher_precomputed=True, **kw)
    assert small.teacher == 0 and small.total == est.total  # a small teacher fits in what training frees


@pytest.mark.parametrize(("q", "b"), [("80Gi", 80 * 2**30), ("141G", 141e9), ("81920Mi", 80 * 2**30), ("1024", 1024)])
def test_parse_quantity(q: str, b: float) -> None:
    assert parse_quantity(q) == b
