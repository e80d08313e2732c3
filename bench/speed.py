"""Speed of a pruned model vs its base: time to first token (prefill) and decode tokens/s.

    bash hack/in-venv.sh python bench/speed.py                      # builtin SmolLM2-135M, 25 % pruned
    bash hack/in-venv.sh python bench/speed.py --model DIR --ratio 0.2 --repeats 5

One process, one run, side by side: the base model is loaded once, a copy is pruned with the project's
surgery (layers spread over the middle of the decoder; which ones does not matter for speed, all
decoder layers cost the same), and `interlace.stages.evaluate.speed.measure_speed` times both on the same
prompts with interleaved repetitions (base/pruned order alternating per prompt and repetition), batch
size 1, greedy. Prefill speedup = TTFT_base / TTFT_pruned; decode speedup = tps_pruned / tps_base.
Expected on CPU: both > 1, below the layer ratio L / (L - n) because embeddings, the LM head and the
`generate` loop are not pruned. The paper reports 1.18x TTFT for Qwen3-VL-8B at 25 % (on GPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

PROMPTS = [
    "Explain, step by step, how a layer-pruned language model can still answer questions about charts, "
    "tables and diagrams, and which kinds of questions are most likely to suffer when layers are removed. "
    "Give three concrete examples and say what a careful evaluation should measure.",
    "Summarise the following notes in two sentences: the team measured the time to first token and the "
    "decoding throughput of the original and the pruned model on the same prompts, alternating the order "
    "of the runs so that background load affected both alike, and reported the ratio of the medians.",
    "Write a short story about a robot that learns to sort coloured shapes on a table, including the "
    "moment it first confuses a red square with an orange one and how it corrects the mistake.",
]


def spread_plan(num_layers: int, n_drop: int):  # type: ignore[no-untyped-def]
    """Drop n layers spread over the middle of the decoder; finetune each one's successor."""
    from interlace.schema.spec import LayerPlan

    lo, hi = max(1, num_layers // 6), num_layers - 2
    step = (hi - lo) / n_drop
    drop = sorted({lo + int(i * step) for i in range(n_drop)})
    finetune = sorted({d + 1 for d in drop if d + 1 not in drop})
    frozen = [i for i in range(num_layers) if i not in drop and i not in finetune]
    return LayerPlan(num_layers=num_layers, strategy="random", drop=drop, finetune=finetune, anchor=[], frozen=frozen)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--ratio", type=float, default=0.25, help="fraction of decoder layers to drop")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 = steadiest on a busy box)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON only")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from interlace.models.load import load_model
    from interlace.stages.evaluate.speed import measure_speed
    from interlace.stages.prune import prune_model

    t0 = time.perf_counter()
    loaded = load_model(args.model, dtype="float32", device="cpu")
    n = loaded.parts.num_layers
    n_drop = max(1, math.floor(n * args.ratio))
    plan = spread_plan(n, n_drop)
    pruned = prune_model(copy.deepcopy(loaded.model), plan, deepstack_policy="position")
    setup = time.perf_counter() - t0
    rep = measure_speed(
        loaded.model, pruned, loaded.processor, PROMPTS, new_tokens=args.new_tokens, repeats=args.repeats, warmup=1
    )
    out = {
        "model": args.model,
        "layers_before": n,
        "layers_after": n - len(plan.drop),
        "dropped": plan.drop,
        "threads": args.threads,
        "setup_seconds": round(setup, 1),
        **rep.as_dict(),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"model {args.model}: {n} -> {n - len(plan.drop)} decoder layers (dropped {plan.drop})")
    print(f"{len(PROMPTS)} prompts, {args.new_tokens} new tokens, {args.repeats} interleaved repetitions, "
          f"{args.threads} thread(s)")
    print(f"prefill (TTFT, sum over prompts): base {rep.prefill_seconds_base * 1000:.1f} ms, "
          f"pruned {rep.prefill_seconds_pruned * 1000:.1f} ms")
    print(f"decode: base {rep.decode_tokens_per_second_base:.1f} tok/s, "
          f"pruned {rep.decode_tokens_per_second_pruned:.1f} tok/s")
    print(f"layer ratio L/(L-n) = {n / (n - len(plan.drop)):.3f} (upper bound for the decoder part)")
    print(f"prefill speedup {rep.prefill_speedup:.3f}x")
    print(f"decode speedup  {rep.decode_speedup:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
