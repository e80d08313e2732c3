"""Speed report: time to first token (prefill) and decode tokens/s, pruned vs base, as ratios.

Why side by side in one process with interleaved repetitions: absolute timings on a shared machine
drift with load, clocks and caches; measuring both models on the same prompts, alternating which goes
first, and taking the ratio of medians cancels most of that drift. The paper reports the
time-to-first-token speedup (1.18x for Qwen3-VL-8B at 25 % pruning).

Both figures use `generate` (greedy, batch size 1, the serving case) so that they work for every
supported family, VLM position schemes included:

* prefill time = wall time of ``generate(max_new_tokens=1)``  (= time to first token);
* decode tokens/s = ``(N - 1) / (T(generate N tokens) - T(generate 1 token))`` with N forced by
  ``min_new_tokens``, so both models decode exactly the same number of tokens.

Speedups: ``prefill_speedup = TTFT_base / TTFT_pruned`` and ``decode_speedup = tps_pruned / tps_base``;
> 1 means the pruned model is faster.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from interlace.data.chat import tokenizer_of
from interlace.errors import InterlaceError
from interlace.stages.evaluate.prompt import encode_prompts, left_padding, model_device


@dataclass
class SpeedReport:
    """Medians over repetitions of per-prompt-set totals, and the ratios the status shows."""

    prefill_seconds_base: float  # summed over prompts, median over repetitions
    prefill_seconds_pruned: float
    decode_tokens_per_second_base: float
    decode_tokens_per_second_pruned: float
    prefill_speedup: float
    decode_speedup: float
    prompts: int
    new_tokens: int
    repeats: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def _time_generate(model: Any, inputs: dict[str, Any], tok: Any, n: int) -> float:
    import torch

    device = model_device(model)
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            **inputs,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            num_beams=1,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tok.pad_token_id,
        )
    _sync(device)
    return time.perf_counter() - start


def measure_speed(
    base: Any,
    pruned: Any,
    processor: Any,
    questions: Sequence[str],
    *,
    images: Sequence[Any | None] | None = None,
    new_tokens: int = 16,
    repeats: int = 3,
    warmup: int = 1,
) -> SpeedReport:
    """Measure both models on the same prompts (one per question, batch size 1); see the module doc."""
    if not questions:
        raise InterlaceError("speed report: no prompts to measure")
    if new_tokens < 2:
        raise InterlaceError(f"speed report: new_tokens={new_tokens}; decoding needs at least 2 tokens")
    if repeats < 1:
        raise InterlaceError(f"speed report: repeats={repeats}; use at least 1")
    imgs = list(images) if images is not None else [None] * len(questions)
    tok = tokenizer_of(processor)
    models = {"base": base, "pruned": pruned}
    with left_padding(processor):
        encoded = {
            name: [encode_prompts(processor, [q], [im], device=model_device(m)) for q, im in zip(questions, imgs, strict=True)]
            for name, m in models.items()
        }
        # Same token ids for both models: the comparison is only fair on identical inputs.
        for a, b in zip(encoded["base"], encoded["pruned"], strict=True):
            if not bool((a["input_ids"].cpu() == b["input_ids"].cpu()).all()):
                raise InterlaceError("speed report: base and pruned prompts differ")
        for _ in range(warmup):
            for name, m in models.items():
                _time_generate(m, encoded[name][0], tok, new_tokens)
        ttft: dict[str, list[float]] = {"base": [], "pruned": []}
        total: dict[str, list[float]] = {"base": [], "pruned": []}
        for r in range(repeats):
            sums = {k: [0.0, 0.0] for k in models}
            for i in range(len(questions)):
                order = ("base", "pruned") if (r + i) % 2 == 0 else ("pruned", "base")
                for name in order:
                    sums[name][0] += _time_generate(models[name], encoded[name][i], tok, 1)
                    sums[name][1] += _time_generate(models[name], encoded[name][i], tok, new_tokens)
            for name in models:
                ttft[name].append(sums[name][0])
                total[name].append(sums[name][1])

    def tps(name: str) -> float:
        decode = [t - f for t, f in zip(total[name], ttft[name], strict=True)]
        med = statistics.median(decode)
        if med <= 0:
            raise InterlaceError("speed report: decoding took no measurable time; use more new_tokens")
        return (new_tokens - 1) * len(questions) / med

    pre_b, pre_p = statistics.median(ttft["base"]), statistics.median(ttft["pruned"])
    tps_b, tps_p = tps("base"), tps("pruned")
    return SpeedReport(
        prefill_seconds_base=pre_b,
        prefill_seconds_pruned=pre_p,
        decode_tokens_per_second_base=tps_b,
        decode_tokens_per_second_pruned=tps_p,
        prefill_speedup=pre_b / pre_p,
        decode_speedup=tps_p / tps_b,
        prompts=len(questions),
        new_tokens=new_tokens,
        repeats=repeats,
    )
