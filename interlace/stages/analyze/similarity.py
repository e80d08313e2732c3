"""Layer-similarity analysis: pack-1/2/3 cosine scores (method section 1).

score_k[i] = mean over samples of ( mean over the sample's non-padding tokens of
             cos(x_i, y_{i+k-1}) ), for k = 1..max_window and i = 0..L-k-1,

where x_i is the hidden state that decoder layer i receives as input and y_j the hidden state that
decoder layer j returns (cosine over the hidden dimension, per token, computed in float32).

How this maps onto the paper's h[0..L] (see docs/method.md for the full discussion):

* x_0 = h[0] = the input embeddings with image features scattered in (what layer 0 receives).
* For models without DeepStack x_{i+1} == y_i, so score_k[i] = cos(h[i], h[i+k]) exactly as in the paper.
* Qwen3-VL DeepStack adds visual features to the residual stream at image positions after the first
  len(deepstack) layers. Those additions are not done by any layer, so we measure what the layers
  themselves do: the start of a window is the state the layer receives (after earlier additions),
  the end is the layer's own output (before the addition that follows it). transformers 4.57's
  hidden_states included the additions, 5.x's do not: our definition is independent of either.
* The final norm never enters: with L-k windows per size k (as in the reference) the last layer is
  never the end of a window, so y_{L-1} (and the normed last hidden state) is not used.

Implementation: forward pre-hooks/hooks on the decoder layers, a ring of the last max_window layer
inputs (normalised, float32), and per-(k, i) running sums on the model's device; no
`output_hidden_states`, so at most max_window + 1 extra hidden states are alive at any time. The base model (without lm_head) is run, under
torch.inference_mode, with use_cache=False.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from interlace.errors import InterlaceError
from interlace.models.load import ModelParts, find_parts
from interlace.stages.analyze.scores import LayerScores

__all__ = ["AnalysisSums", "LayerScores", "analysis_sums", "analyze", "move_batch"]

ProgressFn = Callable[[int, int | None], None]  # (samples done, total samples or None)


def move_batch(batch: dict[str, Any], device: Any, dtype: Any) -> dict[str, Any]:
    """Tensors to the model's device; floating tensors (pixel values) to the model's dtype."""
    import torch

    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
        out[k] = v
    return out


def _base_model(model: Any) -> Any:
    """The model without its LM head (the logits are not needed for the analysis)."""
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    return base if base is not None and base is not model else model


class _Accumulator:
    """The hooks and running sums of one analysis run.

    Each hidden state is normalised once (float32, unit length per token); a window's cosine is then a
    single dot product. The ring holds the normalised inputs of the last max_window layers; when a
    layer receives exactly the tensor the previous layer returned (no DeepStack addition in between),
    its normalised output is reused.
    """

    def __init__(self, num_layers: int, max_window: int, device: Any) -> None:
        import torch

        self.L = num_layers
        self.K = max_window
        self.sums = torch.zeros(max_window, num_layers, dtype=torch.float64, device=device)
        self.ring: dict[int, Any] = {}
        self.last_out: Any = None  # the tensor the previous layer returned
        self.last_out_n: Any = None  # ... normalised
        self.mask: Any = None  # (B, T) float32, 1 for real tokens
        self.denom: Any = None  # (B,) tokens per sample (clamped >= 1)
        self.valid: Any = None  # (B,) 1.0 for samples with at least one token

    @staticmethod
    def _unit(h: Any) -> Any:
        import torch.nn.functional as F

        return F.normalize(h.float(), dim=-1, eps=1e-12)

    def begin(self, attention_mask: Any) -> None:
        import torch

        m = attention_mask.to(torch.float32)
        self.mask = m
        counts = m.sum(dim=1)
        self.valid = (counts > 0).to(torch.float64)
        self.denom = counts.clamp(min=1.0)
        self.ring.clear()
        self.last_out = self.last_out_n = None

    def end(self) -> None:
        self.ring.clear()
        self.last_out = self.last_out_n = None
        self.mask = self.denom = self.valid = None

    def pre_hook(self, i: int) -> Callable[..., None]:
        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            h = args[0] if args else kwargs.get("hidden_states")
            if h is None:
                raise InterlaceError(f"decoder layer {i} was called without hidden states")
            self.ring[i] = self.last_out_n if h is self.last_out else self._unit(h)
            self.ring.pop(i - self.K, None)

        return hook

    def post_hook(self, j: int) -> Callable[..., None]:
        import torch

        def hook(_module: Any, _args: Any, output: Any) -> None:
            y = output[0] if isinstance(output, tuple | list) else output
            if y.shape[:2] != self.mask.shape:
                raise InterlaceError(
                    f"hidden states of layer {j} have shape {tuple(y.shape)} but the attention mask is "
                    f"{tuple(self.mask.shape)}; the analysis needs one hidden state per input token"
                )
            yn = self._unit(y)
            for k in range(1, self.K + 1):
                i = j - k + 1
                if i < 0 or i > self.L - k - 1:
                    continue
                cos = torch.einsum("btd,btd->bt", self.ring[i], yn)  # (B, T)
                per_sample = (cos * self.mask).sum(dim=1) / self.denom
                self.sums[k - 1, i] += (per_sample.to(torch.float64) * self.valid).sum()
            self.last_out, self.last_out_n = y, yn

        return hook


@dataclass
class AnalysisSums:
    """The running sums of an analysis: what data-parallel workers return and the driver merges.

    sums[k-1][i] is the sum over samples of the per-sample mean cosine of window (k, i); the scores are
    sums / num_samples. Plain lists (float64 values), so they travel between Ray processes as they are.
    """

    num_layers: int
    max_window: int
    sums: list[list[float]]
    num_samples: int
    num_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def merge(cls, parts: Iterable[AnalysisSums]) -> AnalysisSums:
        """Sum shards scored on disjoint samples (same model, same max_window)."""
        parts = list(parts)
        if not parts:
            raise InterlaceError("no analysis shards to merge")
        first = parts[0]
        for p in parts[1:]:
            if (p.num_layers, p.max_window) != (first.num_layers, first.max_window):
                raise InterlaceError("analysis shards come from different models or window sizes")
        sums = [
            [sum(p.sums[k][i] for p in parts) for i in range(first.num_layers)] for k in range(first.max_window)
        ]
        return cls(
            num_layers=first.num_layers,
            max_window=first.max_window,
            sums=sums,
            num_samples=sum(p.num_samples for p in parts),
            num_tokens=sum(p.num_tokens for p in parts),
            meta={**first.meta, "shards": len(parts)},
        )

    def to_scores(self) -> LayerScores:
        if self.num_samples == 0:
            raise InterlaceError("no calibration samples with tokens were analysed (empty data?)")
        L, n = self.num_layers, self.num_samples
        scores = {k: [float(v / n) for v in self.sums[k - 1][: L - k]] for k in range(1, self.max_window + 1)}
        for k, vals in scores.items():
            bad = [i for i, v in enumerate(vals) if v != v]
            if bad:
                raise InterlaceError(
                    f"pack-{k} scores are NaN at windows {bad}: the model produced NaN hidden states "
                    "(try dtype float32)"
                )
        meta = {**self.meta, "num_samples": n, "num_tokens": self.num_tokens, "max_window": self.max_window}
        return LayerScores(num_layers=L, scores=scores, meta=meta)


def analyze(
    model: Any,
    batches: Iterable[dict[str, Any]],
    *,
    max_window: int = 3,
    progress: ProgressFn | None = None,
    parts: ModelParts | None = None,
    total_samples: int | None = None,
    show_progress: bool | None = None,
) -> LayerScores:
    """Pack-k similarity scores of `model` over `batches` (dicts with input_ids, attention_mask, ...).

    `progress(samples_done, total_samples)` is called after every batch (for status reporters);
    a tqdm bar is shown on a terminal (`show_progress=None`), always (True) or never (False).
    """
    return analysis_sums(
        model,
        batches,
        max_window=max_window,
        progress=progress,
        parts=parts,
        total_samples=total_samples,
        show_progress=show_progress,
    ).to_scores()


def analysis_sums(
    model: Any,
    batches: Iterable[dict[str, Any]],
    *,
    max_window: int = 3,
    progress: ProgressFn | None = None,
    parts: ModelParts | None = None,
    total_samples: int | None = None,
    show_progress: bool | None = None,
) -> AnalysisSums:
    """The running sums behind `analyze` (see AnalysisSums), for one shard of the calibration set."""
    import torch
    from tqdm.auto import tqdm

    parts = parts or find_parts(model)
    L = len(parts.layers)
    if L < 2:
        raise InterlaceError(f"the model has {L} decoder layer(s); the analysis needs at least 2")
    if not 1 <= max_window <= L - 1:
        raise InterlaceError(f"max_window must be in 1..{L - 1}, got {max_window}")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    acc = _Accumulator(L, max_window, device)
    base = _base_model(model)

    handles = []
    for idx, layer in enumerate(parts.layers):
        if idx <= L - 2:  # the last layer never starts or ends a window
            handles.append(layer.register_forward_pre_hook(acc.pre_hook(idx), with_kwargs=True))
            handles.append(layer.register_forward_hook(acc.post_hook(idx)))

    was_training = model.training
    model.eval()
    n_samples = 0
    n_tokens = 0
    bar = tqdm(
        total=total_samples,
        desc="analysis",
        unit="sample",
        disable=(not show_progress) if show_progress is not None else None,
    )
    try:
        with torch.inference_mode():
            for batch in batches:
                if "attention_mask" not in batch or "input_ids" not in batch:
                    raise InterlaceError("calibration batches need input_ids and attention_mask")
                b = move_batch(batch, device, dtype)
                acc.begin(b["attention_mask"])
                b["use_cache"] = False
                base(**b)
                bsz = int(b["attention_mask"].shape[0])
                n_samples += int(acc.valid.sum().item())
                n_tokens += int(b["attention_mask"].sum().item())
                acc.end()
                bar.update(bsz)
                if progress is not None:
                    progress(n_samples, total_samples)
    finally:
        for h in handles:
            h.remove()
        acc.end()
        bar.close()
        model.train(was_training)

    meta = {
        "family": parts.family,
        "definition": "scores[k][i] = mean over samples of the mean over non-padding tokens of "
        "cos(input of decoder layer i, output of decoder layer i+k-1)",
        "deepstack_layers": list(parts.deepstack_layers),
    }
    return AnalysisSums(
        num_layers=L,
        max_window=max_window,
        sums=acc.sums.cpu().tolist(),
        num_samples=n_samples,
        num_tokens=n_tokens,
        meta=meta,
    )
