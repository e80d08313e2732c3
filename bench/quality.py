"""Held-out perplexity retention of INTERLACE vs consecutive, random and ShortGPT plans.

    bash hack/in-venv.sh python bench/quality.py             # the embedded default, ~25 minutes on 2 cores

The embedded default (SmolLM2-135M-Instruct, 30 layers) is analysed once on calibration text
(builtin:english); every strategy then plans the same number of layers (20%) from the same scores,
the model is pruned, its held-out perplexity (builtin:english-heldout, assistant tokens) measured,
then the plan's finetune layers are trained on Ray Train exactly as `interlace run` does
(interlace.stages.finetune.driver, same data, same steps for every strategy) and perplexity is measured again.

Retention = base perplexity / pruned perplexity (1.0 = as good as the unpruned model). The paper's
ordering (INTERLACE best) is the expectation; the table reports what this run measures.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STRATEGIES = ("interlace", "consecutive", "random", "shortgpt")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--heldout", type=int, default=64)
    ap.add_argument("--train-samples", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=30, help="finetuning optimizer steps per strategy")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--accum", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random strategy")
    ap.add_argument(
        "--data-seed",
        type=int,
        help="finetune on a seeded random 1%% of builtin:english instead of its first rows (another data order)",
    )
    ap.add_argument("--json", type=Path, help="also write the table here")
    args = ap.parse_args(argv)

    import os

    os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")
    import ray

    from interlace.data import load_samples
    from interlace.models.load import load_model
    from interlace.runtime.placement import placement_of
    from interlace.runtime.ray_cluster import start_ray
    from interlace.schema.spec import DataSpec, FinetuneSpec
    from interlace.stages.analyze.calibration import calibration_batches
    from interlace.stages.analyze.similarity import analyze
    from interlace.stages.evaluate import perplexity
    from interlace.stages.finetune.driver import finetune
    from interlace.stages.plan import select_layers
    from interlace.stages.prune import prune_model, save_model

    t_start = time.monotonic()
    base = load_model(args.model, dtype="float32", device="cpu")
    proc = base.processor
    L = base.parts.num_layers
    n_drop = int(L * args.ratio)
    english = DataSpec(path="builtin:english", max_samples=args.calibration)
    heldout = list(
        load_samples(DataSpec(path="builtin:english-heldout", max_samples=args.heldout))
    )
    cal = list(load_samples(english))
    scores = analyze(
        base.model, calibration_batches(cal, proc, batch_size=8, max_length=args.max_length), show_progress=False
    )

    def ppl(model: object) -> float:
        return perplexity(model, proc, heldout, batch_size=8, max_length=args.max_length)

    base_ppl = ppl(base.model)
    print(f"{args.model}: {L} layers, drop {n_drop}; base held-out perplexity {base_ppl:.3f}", flush=True)

    spec = FinetuneSpec(
        data=DataSpec(path="builtin:english", max_samples=args.train_samples)
        if args.data_seed is None
        else DataSpec(path="builtin:english", max_samples=args.train_samples, sampling="random", seed=args.data_seed),
        learning_rate=args.lr,
        per_device_batch_size=args.batch,
        gradient_accumulation_steps=args.accum,
        max_steps=args.steps,
        max_length=args.max_length,
        checkpoint_every_steps=args.steps,
        resume=False,
    )
    start_ray(local=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="interlace-quality-") as tmp:
        for strategy in args.strategies:
            plan = select_layers(scores, n_drop=n_drop, strategy=strategy, seed=args.seed, ratio=args.ratio)
            pruned = prune_model(copy.deepcopy(base.model), plan, deepstack_policy="position")
            before = ppl(pruned)
            pruned_dir = save_model(pruned, proc, Path(tmp) / strategy / "pruned")
            del pruned
            gc.collect()
            t0 = time.monotonic()
            result = finetune(
                pruned_dir, plan, spec, output_dir=Path(tmp) / strategy, placement=placement_of(args.workers, 0)
            )
            tuned = load_model(str(result.model_dir), dtype="float32", device="cpu").model
            after = ppl(tuned)
            del tuned
            gc.collect()
            row = {
                "strategy": strategy,
                "drop": plan.drop,
                "finetune": plan.finetune,
                "ppl_pruned": before,
                "retention_pruned": base_ppl / before,
                "ppl_finetuned": after,
                "retention_finetuned": base_ppl / after,
                "finetune_seconds": time.monotonic() - t0,
                "final_loss": result.final_loss,
            }
            rows.append(row)
            print(
                f"{strategy}: drop {plan.drop}, finetune {plan.finetune}: ppl {before:.3f} -> {after:.3f}",
                flush=True,
            )
    ray.shutdown()

    print()
    print(f"base perplexity {base_ppl:.3f} ({args.model}, {len(heldout)} held-out samples)")
    print("| strategy | dropped | finetuned | ppl pruned | retention | ppl pruned+finetuned | retention |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['strategy']} | {r['drop']} | {r['finetune']} | {r['ppl_pruned']:.3f} | "
            f"{r['retention_pruned']:.3f} | {r['ppl_finetuned']:.3f} | {r['retention_finetuned']:.3f} |"
        )
    print(
        f"(finetuning: {args.steps} steps, lr {args.lr}, batch {args.batch} x accum {args.accum} x "
        f"{args.workers} workers, max length {args.max_length}, "
        f"data {'first rows' if args.data_seed is None else f'random rows, seed {args.data_seed}'}; "
        f"total {time.monotonic() - t_start:.0f} s)"
    )
    if args.json:
        args.json.write_text(json.dumps({"base_ppl": base_ppl, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
