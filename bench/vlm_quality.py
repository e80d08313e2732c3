"""VQA accuracy retention of a vision-language model that knows something, per strategy and ratio.

    python bench/vlm_quality.py                       # builtin:easyvqa-vl (trained first if not cached)
    python bench/vlm_quality.py --test-n 9673         # the whole easy-vqa test split

The model is builtin:easyvqa-vl, a 12-layer Qwen3-VL trained here from scratch on easy-vqa's train
split (interlace.builtin.easyvqa_vl). It is analysed once on calibration rows of builtin:easy-vqa;
for every ratio and strategy the same number of layers is planned from the same scores, the model is
pruned (DeepStack `protect` policy, the spec's default: layers 0-2, which receive the DeepStack
features, are never dropped; `--deepstack-policy position` is the reference's behaviour), its VQA accuracy on easy-vqa's test split measured by the
built-in evaluator (greedy short answer, exact match), then the plan's finetune layers are healed on
Ray Train exactly as `interlace run` does (interlace.stages.finetune.driver: next-token loss on
builtin:easy-vqa's answers, the same rows and steps for every strategy and ratio) and the accuracy is
measured again.

Two question sets are scored each time (one healing serves both): "all", `--test-n` questions evenly
spaced over the test split (every type), and "colour", every colour question of the split (1,280):
easy-vqa's yes/no and shape questions can mostly be answered from their wording, colour ones cannot,
so the colour set is the one that says whether the model still uses the image. `--types` replaces both
with one set of those types.

Retention = pruned accuracy / base accuracy. Chance levels are printed with the table: the uniform
guess over the 13 answers, the per-question-type majority answer (yes/no, shape, colour; from the
train split), and the best blind guess per question text (the train split's majority answer to the
exact question: what a model that ignores the image can reach at best).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STRATEGIES = ("interlace", "shortgpt", "consecutive", "random")
SHAPES = {"circle", "rectangle", "triangle"}


def qtype(answer: str) -> str:
    return "yes/no" if answer in ("yes", "no") else "shape" if answer in SHAPES else "colour"


def chance_levels(items: list[Any]) -> dict[str, float]:
    """Accuracy (percent) of the three answer-only baselines on `items`."""
    from interlace.builtin import easyvqa

    train = easyvqa.questions("train")
    by_type: dict[str, Counter[str]] = defaultdict(Counter)
    by_question: dict[str, Counter[str]] = defaultdict(Counter)
    for q, a, _ in train:
        by_type[qtype(a)][a] += 1
        by_question[q][a] += 1
    overall = Counter(a for _, a, _ in train).most_common(1)[0][0]
    n = len(items)

    def acc(guess: Any) -> float:
        return 100.0 * sum(guess(it) == it.answers[0] for it in items) / n

    return {
        "uniform over the 13 answers": 100.0 / len(easyvqa.answers()),
        "majority answer per question type": acc(lambda it: by_type[qtype(it.answers[0])].most_common(1)[0][0]),
        "blind: majority answer per question text": acc(
            lambda it: by_question[it.question].most_common(1)[0][0] if it.question in by_question else overall
        ),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:easyvqa-vl")
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.1, 0.2, 0.3])
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    ap.add_argument("--test-n", type=int, default=500, help="test questions, evenly spaced over the split")
    ap.add_argument("--types", nargs="+", choices=["yes/no", "shape", "colour"],
                    help="only these question types (colour: the questions a blind model cannot answer)")
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40, help="healing optimizer steps per pruned model")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--eval-batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random strategy")
    ap.add_argument("--deepstack-policy", choices=["protect", "position"], default="protect",
                    help="protect (the spec's default): the DeepStack receiving layers are never dropped")
    ap.add_argument("--no-heal", action="store_true", help="only the accuracy right after pruning")
    ap.add_argument("--json", type=Path, help="also write the table here")
    args = ap.parse_args(argv)

    import os

    os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")

    from interlace.builtin import vqa_set
    from interlace.data import load_samples
    from interlace.models.load import load_model
    from interlace.schema.spec import DataSpec, FinetuneSpec
    from interlace.stages.analyze.calibration import calibration_batches
    from interlace.stages.analyze.similarity import analyze
    from interlace.stages.evaluate.vqa import is_correct, load_vqa, score_vqa
    from interlace.stages.plan import select_layers
    from interlace.stages.prune import prune_model, save_model

    t_start = time.monotonic()
    if args.model.startswith("builtin:easyvqa-vl"):
        from interlace.models.builtin_vlm import ensure_built

        ensure_built(args.model)  # the explicit training step (once; then a cache look-up)
    base = load_model(args.model, dtype="float32", device="cpu")
    proc = base.processor
    L = base.parts.num_layers
    every = load_vqa(vqa_set("builtin:easy-vqa-test"))

    def spaced(pool: list[Any]) -> list[Any]:
        stride = max(1, len(pool) // args.test_n)
        return pool[::stride][: args.test_n]

    if args.types:
        sets = {"+".join(args.types): spaced([it for it in every if qtype(it.answers[0]) in args.types])}
    else:
        sets = {"all": spaced(every), "colour": [it for it in every if qtype(it.answers[0]) == "colour"]}
    chance = {name: chance_levels(items) for name, items in sets.items()}

    def acc(model: Any) -> dict[str, float]:
        return {
            name: score_vqa(model, proc, items, batch_size=args.eval_batch, max_new_tokens=3).accuracy
            for name, items in sets.items()
        }

    base_acc: dict[str, float] = {}
    per_type: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, items in sets.items():
        t0 = time.monotonic()
        base_score = score_vqa(base.model, proc, items, batch_size=args.eval_batch, max_new_tokens=3)
        base_acc[name] = base_score.accuracy
        print(f"{args.model}: {L} layers; base accuracy {base_acc[name]:.1f}% on {len(items)} test questions "
              f"({name}, {time.monotonic() - t0:.0f} s)", flush=True)
        if name == next(iter(sets)):
            for it, pred in zip(items, base_score.predictions, strict=True):
                t = per_type[qtype(it.answers[0])]
                t[0] += is_correct(it, pred)
                t[1] += 1
        for k, v in chance[name].items():
            print(f"  chance on {name}, {k}: {v:.1f}%", flush=True)
    for k, (c, n) in sorted(per_type.items()):
        print(f"  base, {k} questions of the first set: {100.0 * c / n:.1f}% of {n}", flush=True)

    cal = list(load_samples(DataSpec(path="builtin:easy-vqa", fraction=1.0, max_samples=args.calibration)))
    scores = analyze(base.model, calibration_batches(cal, proc, batch_size=8, max_length=96), show_progress=False)

    spec = FinetuneSpec(
        data=DataSpec(path="builtin:easy-vqa", fraction=1.0, max_samples=args.steps * args.batch * args.workers),
        learning_rate=args.lr,
        per_device_batch_size=args.batch,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        max_length=96,
        checkpoint_every_steps=args.steps,
        resume=False,
    )
    protected = base.parts.deepstack_layers if args.deepstack_policy == "protect" else []
    rows: list[dict[str, Any]] = []
    plans = {}

    def show(accs: dict[str, float]) -> str:
        return ", ".join(f"{name} {a:.1f}%" for name, a in accs.items())

    # Pass 1: every plan's accuracy right after surgery (cheap); pass 2: healing (the slow part), so
    # an interrupted run still has the whole pruned-only table.
    for ratio in args.ratios:
        n_drop = int(L * ratio)
        for strategy in args.strategies:
            plan = select_layers(
                scores, n_drop=n_drop, strategy=strategy, seed=args.seed, ratio=ratio, protected=protected
            )
            pruned = prune_model(copy.deepcopy(base.model), plan, deepstack_policy=args.deepstack_policy)
            before = acc(pruned)
            del pruned
            plans[(ratio, strategy)] = plan
            rows.append({
                "ratio": ratio,
                "strategy": strategy,
                "drop": plan.drop,
                "finetune": plan.finetune,
                "acc_pruned": before,
            })
            print(f"ratio {ratio} {strategy}: drop {plan.drop}, finetune {plan.finetune}: {show(before)}", flush=True)
    if not args.no_heal:
        from interlace.runtime.placement import placement_of
        from interlace.runtime.ray_cluster import start_ray
        from interlace.stages.finetune.driver import finetune

        start_ray(local=True)

        with tempfile.TemporaryDirectory(prefix="interlace-vlm-quality-") as tmp:
            for row in rows:
                ratio, strategy = row["ratio"], row["strategy"]
                plan = plans[(ratio, strategy)]
                out = Path(tmp) / f"{ratio}-{strategy}"
                pruned = prune_model(copy.deepcopy(base.model), plan, deepstack_policy=args.deepstack_policy)
                pruned_dir = save_model(pruned, proc, out / "pruned")
                del pruned
                gc.collect()
                t1 = time.monotonic()
                result = finetune(pruned_dir, plan, spec, output_dir=out, placement=placement_of(args.workers, 0))
                tuned = load_model(str(result.model_dir), dtype="float32", device="cpu").model
                after = acc(tuned)
                del tuned
                gc.collect()
                row.update(acc_healed=after, heal_seconds=round(time.monotonic() - t1, 1), final_loss=result.final_loss)
                print(f"ratio {ratio} {strategy}: pruned {show(row['acc_pruned'])} -> healed {show(after)} "
                      f"({row['heal_seconds']:.0f} s)", flush=True)
    if not args.no_heal:
        import ray

        ray.shutdown()

    print()
    for name, items in sets.items():
        print(f"base accuracy on {name} ({len(items)} easy-vqa test questions): {base_acc[name]:.1f}%; chance: "
              + "; ".join(f"{k} {v:.1f}%" for k, v in chance[name].items()))
    print(f"({args.model}, {L} layers, deepstack policy {args.deepstack_policy}; accuracy, and in brackets "
          "retention = accuracy / base accuracy)")
    head = " | ".join(f"{name}: pruned | {name}: healed" for name in sets)
    print(f"| ratio | strategy | dropped | healed layers | {head} |")
    print("|---|---|---|---|" + "---|---|" * len(sets))
    for r in rows:
        cells = []
        for name in sets:
            for key in ("acc_pruned", "acc_healed"):
                a = r.get(key, {}).get(name)
                cells.append("-" if a is None else f"{a:.1f}% ({a / base_acc[name]:.3f})" if base_acc[name] else f"{a:.1f}%")
        print(f"| {r['ratio']:.0%} | {r['strategy']} | {r['drop']} | {r['finetune']} | {' | '.join(cells)} |")
    print(f"(healing: {args.steps} steps, lr {args.lr}, batch {args.batch} x {args.workers} workers, "
          f"builtin:easy-vqa first {spec.data.max_samples} rows; total {time.monotonic() - t_start:.0f} s)")
    if args.json:
        body = {"base_acc": base_acc, "n": {k: len(v) for k, v in sets.items()}, "chance": chance, "per_type": dict(per_type), "rows": rows}
        args.json.write_text(json.dumps(body, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
