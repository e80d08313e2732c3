"""The training step's loss reads logits only where labels are, chunk by chunk, and means the same.

`token_losses` asks the model for logits at the labelled positions only (transformers'
`logits_to_keep` mask) and sums the cross-entropy in float32 chunks (`cross_entropy_sum`). Checked
against the plain formula on the full [batch, length, vocab] logits, in value and in gradient, on a
batch whose rows have different labelled spans and padding, with a chunk smaller than the batch's
trained tokens so that several chunks (and a ragged last one) run.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from interlace.stages.finetune import step
from tests.train.test_distillation import _batches


@pytest.fixture(scope="module")
def model_and_batch() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    from tests.fixtures.tiny import tiny

    model, proc = tiny("llama")
    batch = _batches(proc, n=1, batch=2)[0][0]
    labels = batch["labels"].clone()
    labels[0, : labels.shape[1] // 2] = -100  # the rows train different spans
    return model.float().train(), {**batch, "labels": labels}


def _reference(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits[:, :-1]
    target = batch["labels"][:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), reduction="sum")


def test_labelled_only_chunked_loss_equals_the_full_logits_formula_in_value_and_gradient(
    model_and_batch: tuple[torch.nn.Module, dict[str, torch.Tensor]], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, batch = model_and_batch
    trained = int((batch["labels"][:, 1:] != -100).sum())
    monkeypatch.setattr(step, "LOSS_CHUNK_TOKENS", 7)  # several chunks and a ragged last one
    assert trained > 2 * 7 and trained % 7

    ours = copy.deepcopy(model)
    ce, kl = step.token_losses(ours, batch, torch.device("cpu"))
    ce.backward()
    ref = _reference(model, batch)
    ref.backward()

    assert kl is None
    torch.testing.assert_close(ce, ref, rtol=1e-5, atol=1e-4)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads  # the comparison compares something
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_model_is_asked_for_logits_at_the_labelled_positions_only(
    model_and_batch: tuple[torch.nn.Module, dict[str, torch.Tensor]],
) -> None:
    model, batch = model_and_batch
    head = model.get_output_embeddings()
    seen: list[torch.Size] = []
    handle = head.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    try:
        step.token_losses(model, batch, torch.device("cpu"))
    finally:
        handle.remove()
    trained = int((batch["labels"][:, 1:] != -100).sum())
    assert seen == [torch.Size([trained, head.out_features])]
    assert trained < batch["input_ids"].numel()
