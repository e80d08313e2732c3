"""Perplexity on held-out conversations, counting only the assistant's tokens.

Why assistant-only: the finetuning loss is computed on assistant tokens (interlace.data.encode labels
everything else -100), so the perplexity of the same tokens is the quantity finetuning optimises and
is comparable between the base and the pruned model on the same samples. Images and user turns are
context, not targets.

The value is a token-level (micro) average: exp(sum of token NLLs / number of target tokens) over all
samples, so batching and padding cannot change it (the tests check it against an unbatched reference).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

from interlace.data.sample import Sample
from interlace.errors import InterlaceError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def _nll_sum(model: Any, batch: dict[str, Any]) -> tuple[float, int]:
    """Summed next-token NLL (float64) and number of target tokens of one padded batch."""
    import torch
    import torch.nn.functional as F

    labels = batch.pop("labels")
    out = model(**batch, use_cache=False)
    logits = out.logits
    total, count = 0.0, 0
    for row in range(logits.shape[0]):  # one row at a time: [L, vocab] in fp32 instead of [B, L, vocab]
        targets = labels[row, 1:]
        keep = targets != IGNORE_INDEX
        if not bool(keep.any()):
            continue
        lg = logits[row, :-1][keep].float()
        total += float(F.cross_entropy(lg, targets[keep], reduction="sum", ignore_index=IGNORE_INDEX).double())
        count += int(keep.sum())
    del out, logits
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return total, count


def perplexity(
    model: Any,
    processor: Any,
    samples: Iterable[Sample],
    *,
    batch_size: int = 4,
    max_length: int = 2048,
) -> float:
    """exp(mean NLL of the assistant tokens) of `model` on `samples` (encoded with the model's template).

    Samples that cannot be encoded for this model (e.g. images for a text-only model) are skipped, as in
    finetuning; if no sample has an assistant token left, InterlaceError says so.
    """
    import torch

    from interlace.data.chat import tokenizer_of
    from interlace.data.encode import collate, encode_samples
    from interlace.data.stats import DataStats
    from interlace.stages.evaluate.prompt import model_device

    if batch_size < 1:
        raise InterlaceError(f"perplexity: batch_size={batch_size}; use a batch size >= 1")
    tok = tokenizer_of(processor)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = model_device(model)
    stats = DataStats()
    total, count, n = 0.0, 0, 0
    pending: list[dict[str, Any]] = []
    was_training = model.training
    model.eval()

    def flush() -> None:
        nonlocal total, count
        batch: dict[str, Any] = collate(pending, pad_id)
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        t, c = _nll_sum(model, batch)
        total += t
        count += c
        pending.clear()

    try:
        with torch.inference_mode():
            for ex in encode_samples(samples, processor, max_length=max_length, stats=stats):
                pending.append(ex)
                n += 1
                if len(pending) == batch_size:
                    flush()
            if pending:
                flush()
    finally:
        model.train(was_training)
    if stats.skipped:
        log.info("perplexity: skipped samples %s", dict(stats.skipped))
    if count == 0:
        raise InterlaceError(
            "perplexity: no sample has an assistant token to score "
            f"(skipped: {dict(stats.skipped) or 'none'}); the evaluation data needs assistant turns "
            "the model can encode (spec.evaluation.data)"
        )
    log.debug("perplexity over %d samples, %d tokens", n, count)
    return math.exp(total / count)
