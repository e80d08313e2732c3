"""Perplexity retention of INTERLACE vs consecutive, random and ShortGPT plans, out of domain and in domain,
as mean and spread over seeds, healed by next-token loss and by distillation, at equal finetuning
budget and at equal wall time.

    bash hack/in-venv.sh python bench/quality.py --arms next-token distill --equal-time   # the full run
    bash hack/in-venv.sh python bench/quality.py --arms next-token distill --equal-time --steps 8 \
        --heldout 16 --calibration 32 --workers 1 --train-samples 256 --max-length 64      # docs/method.md's

The embedded default (SmolLM2-135M-Instruct, 30 layers) is analysed once on calibration text
(builtin:english); every strategy then plans the same number of layers (20%) from the same scores,
the model is pruned, and its perplexity is measured on two held-out sets (assistant tokens):

* out of domain (the headline): builtin:python-docs, Python standard library docstrings, text of
  another kind that nothing here trains on: what the pruned and healed model KEPT;
* in domain: builtin:english-heldout, held-out rows of the finetuning corpus: this one also rewards
  adapting to that corpus (it went above 100% after finetuning in the first version of this bench).

Then, for every seed and every arm, the plan's finetune layers are trained on Ray Train exactly as
`interlace run` does (interlace.stages.finetune.driver) and both perplexities are measured again.
A seed sets the data order (a seeded random `--train-samples` rows of builtin:english, the same rows
for every strategy and arm of that seed) and, for the random strategy, the plan seed. Every run has
the same budget: the same steps, batch, workers, max length and rows. Retention = 100 * base
perplexity / perplexity (100% = as good as the unpruned model); the table gives its mean, sample
standard deviation and range over the seeds.

Arms: how the finetune heals (ARMS, `--arms`). Each is a name plus FinetuneSpec fields (camelCase, as
in YAML) merged over the common spec, so an arm that heals differently (e.g. distillation from the
unpruned model: `--arms next-token distill`) is one more ARMS entry; every strategy and seed runs once
per arm, with the same budget.

Equal wall time (`--equal-time`): an arm that costs more per step (distillation runs a teacher
forward) gets the same steps above; with this flag every arm after the first also runs once more with
the steps that fit in the first arm's time: round(steps x t_first / t_arm), where t is the median
seconds per optimizer step measured inside the training loop (Ray Train start-up and model loading
excluded) over every run of that arm in this same run, side by side on one machine. Those rows are
the arm "<name> @ equal time" with their own step count.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STRATEGIES = ("interlace", "consecutive", "random", "shortgpt")
OOD_DATA = "builtin:python-docs"
IN_DOMAIN_DATA = "builtin:english-heldout"
TRAIN_DATA = "builtin:english"


@dataclass(frozen=True)
class Arm:
    """One way to heal: FinetuneSpec fields (wire names) merged over the bench's common finetune spec."""

    name: str
    finetune: dict[str, Any] = field(default_factory=dict)
    help: str = ""


ARMS: dict[str, Arm] = {
    "next-token": Arm("next-token", {}, "next-token loss on the assistant tokens (the paper's healing)"),
    "distill": Arm(
        "distill", {"distillation": {"weight": 0.5, "temperature": 2.0}},
        "spec.finetune.distillation: half next-token loss, half T^2 KL to the unpruned model (T = 2)",
    ),
}


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (n - 1; 0 for one value), range and count of some values."""

    mean: float
    sd: float
    min: float
    max: float
    n: int

    def __str__(self) -> str:
        if self.n == 1:
            return f"{self.mean:.1f}"
        return f"{self.mean:.1f} ± {self.sd:.1f} [{self.min:.1f}, {self.max:.1f}]"


def mean_spread(values: Iterable[float]) -> Spread:
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_spread of no values")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"mean_spread: non-finite value in {vals}")
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return Spread(mean=statistics.fmean(vals), sd=sd, min=min(vals), max=max(vals), n=len(vals))


METRICS = ("ood_pruned", "ood_finetuned", "in_pruned", "in_finetuned")


def seconds_per_step(progress: Sequence[dict[str, Any]]) -> float | None:
    """Mean seconds per optimizer step inside the training loop, from the progress rank 0 sends.

    Each progress carries eta = per_step x (total - step), per_step measured from the loop's start
    (after model loading). The last one before the end gives the mean over all but the final step;
    None when the run had fewer than two steps (no eta to read)."""
    best: tuple[int, float] | None = None
    for p in progress:
        step, total, eta = p.get("step"), p.get("totalSteps"), p.get("etaSeconds")
        if step is None or total is None or eta is None or step >= total:
            continue
        if best is None or step > best[0]:
            best = (step, eta / (total - step))
    return None if best is None else best[1]


def equal_time_steps(steps: int, ref_seconds: float, arm_seconds: float) -> int:
    """Optimizer steps of an arm that take as long as `steps` steps of the reference arm (at least 1)."""
    if ref_seconds <= 0 or arm_seconds <= 0:
        raise ValueError(f"seconds per step must be > 0, got {ref_seconds} and {arm_seconds}")
    return max(1, round(steps * ref_seconds / arm_seconds))


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (strategy, arm), in first-seen order: a Spread over the seeds of every retention metric."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["strategy"], r["arm"]), []).append(r)
    out = []
    for (strategy, arm), rs in groups.items():
        agg: dict[str, Any] = {"strategy": strategy, "arm": arm, "seeds": [r["seed"] for r in rs],
                               "steps": sorted({r.get("steps", 0) for r in rs})}
        for m in METRICS:
            agg[m] = mean_spread(r[f"retention_{m}"] for r in rs)
        agg["drops"] = sorted({tuple(r["drop"]) for r in rs})
        out.append(agg)
    return out


def table(aggregated: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| strategy | arm | steps | seeds | out of domain: pruned | out of domain: pruned + finetuned "
        "| in domain: pruned | in domain: pruned + finetuned |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in aggregated:
        steps = ", ".join(str(s) for s in a.get("steps", []))
        lines.append(
            f"| {a['strategy']} | {a['arm']} | {steps} | {len(a['seeds'])} | {a['ood_pruned']} "
            f"| **{a['ood_finetuned']}** "
            f"| {a['in_pruned']} | {a['in_finetuned']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    ap.add_argument("--arms", nargs="+", default=["next-token"], choices=sorted(ARMS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                    help="data order (and the random strategy's plan seed); at least 3 for a spread")
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--heldout", type=int, default=64, help="samples of each evaluation set")
    ap.add_argument("--train-samples", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=30, help="finetuning optimizer steps per run")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--accum", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--equal-time", action="store_true",
                    help="also run every arm after the first at the first arm's wall time (see above)")
    ap.add_argument("--json", type=Path, help="also write every run and the aggregates here")
    args = ap.parse_args(argv)
    if args.equal_time and len(args.arms) < 2:
        ap.error("--equal-time compares arms: give at least two --arms (the first is the reference)")

    import copy
    import os

    os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")
    import ray

    from interlace.data import load_samples
    from interlace.models.load import load_model
    from interlace.runtime.placement import placement_of
    from interlace.runtime.progress import NullReporter
    from interlace.runtime.ray_cluster import start_ray
    from interlace.schema.spec import DataSpec, FinetuneSpec, ModelSpec
    from interlace.schema.status import Progress
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
    cal = list(load_samples(DataSpec(path=TRAIN_DATA, max_samples=args.calibration)))
    sets = {
        "ood": list(load_samples(DataSpec(path=OOD_DATA, fraction=1.0, max_samples=args.heldout))),
        "in": list(load_samples(DataSpec(path=IN_DOMAIN_DATA, max_samples=args.heldout))),
    }
    scores = analyze(
        base.model, calibration_batches(cal, proc, batch_size=8, max_length=args.max_length), show_progress=False
    )

    def ppl(model: object) -> dict[str, float]:
        return {k: perplexity(model, proc, s, batch_size=8, max_length=args.max_length) for k, s in sets.items()}

    base_ppl = ppl(base.model)
    print(f"{args.model}: {L} layers, drop {n_drop}; base perplexity out of domain {base_ppl['ood']:.3f}, "
          f"in domain {base_ppl['in']:.3f}", flush=True)

    def finetune_spec(seed: int, arm: Arm, steps: int) -> FinetuneSpec:
        common = FinetuneSpec(
            data=DataSpec(path=TRAIN_DATA, max_samples=args.train_samples, sampling="random", seed=seed),
            learning_rate=args.lr,
            per_device_batch_size=args.batch,
            gradient_accumulation_steps=args.accum,
            max_steps=steps,
            max_length=args.max_length,
            checkpoint_every_steps=steps,
            resume=False,
        )
        return FinetuneSpec.model_validate({**common.to_wire(), **arm.finetune})

    class ProgressLog(NullReporter):
        """Keeps the progress the workers send (wire form), to read the seconds per step from."""

        def __init__(self) -> None:
            self.items: list[dict[str, Any]] = []

        def progress(self, progress: Progress) -> None:
            self.items.append(progress.to_wire())

    start_ray(local=True)
    rows: list[dict[str, Any]] = []
    pruned_cache: dict[tuple[int, ...], dict[str, float]] = {}
    prepared: list[tuple[int, str, Any, dict[str, float]]] = []  # seed, strategy, plan, pruned perplexity

    def save_pruned(plan: Any, run_dir: Path) -> tuple[Path, dict[str, float]]:
        """Prune a copy of the base model by `plan` into run_dir/pruned; its perplexity (once per plan)."""
        pruned = prune_model(copy.deepcopy(base.model), plan, deepstack_policy="position")
        key = tuple(plan.drop)
        if key not in pruned_cache:  # the plan alone decides it: same plan, same numbers
            pruned_cache[key] = ppl(pruned)
        pruned_dir = save_model(pruned, proc, run_dir / "pruned")
        del pruned
        gc.collect()
        return pruned_dir, pruned_cache[key]

    def heal(seed: int, strategy: str, plan: Any, pruned_dir: Path, before: dict[str, float],
             arm: Arm, label: str, steps: int) -> None:
        log = ProgressLog()
        out = pruned_dir.parent / label.replace(" ", "-")
        t0 = time.monotonic()
        result = finetune(
            pruned_dir, plan, finetune_spec(seed, arm, steps), output_dir=out,
            model=ModelSpec(source=args.model), placement=placement_of(args.workers, 0), reporter=log,
        )
        seconds = time.monotonic() - t0
        tuned = load_model(str(result.model_dir), dtype="float32", device="cpu").model
        after = ppl(tuned)
        del tuned
        gc.collect()
        shutil.rmtree(out, ignore_errors=True)  # a model and a checkpoint per run: the disk would not hold them all
        row = {
            "strategy": strategy, "arm": label, "base_arm": arm.name, "seed": seed, "steps": steps,
            "drop": plan.drop, "finetune": plan.finetune, "finetune_seconds": seconds,
            "seconds_per_step": seconds_per_step(log.items), "final_loss": result.final_loss,
        }
        for dom in ("ood", "in"):
            row[f"ppl_{dom}_pruned"] = before[dom]
            row[f"ppl_{dom}_finetuned"] = after[dom]
            row[f"retention_{dom}_pruned"] = 100 * base_ppl[dom] / before[dom]
            row[f"retention_{dom}_finetuned"] = 100 * base_ppl[dom] / after[dom]
        rows.append(row)
        per_step = row["seconds_per_step"]
        print(
            f"seed {seed} {strategy} ({label}, {steps} steps): drop {plan.drop}; retention out of domain "
            f"{row['retention_ood_pruned']:.1f}% -> {row['retention_ood_finetuned']:.1f}%, in domain "
            f"{row['retention_in_pruned']:.1f}% -> {row['retention_in_finetuned']:.1f}% "
            f"({seconds:.0f} s finetuning, {per_step if per_step is None else round(per_step, 2)} s/step)",
            flush=True,
        )

    equal_time: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="interlace-quality-") as tmp:
        for seed in args.seeds:
            for strategy in args.strategies:
                plan = select_layers(scores, n_drop=n_drop, strategy=strategy, seed=seed, ratio=args.ratio)
                run_dir = Path(tmp) / f"{strategy}-seed{seed}"
                pruned_dir, before = save_pruned(plan, run_dir)
                prepared.append((seed, strategy, plan, before))
                for arm_name in args.arms:
                    heal(seed, strategy, plan, pruned_dir, before, ARMS[arm_name], arm_name, args.steps)
                shutil.rmtree(run_dir, ignore_errors=True)
        if args.equal_time:
            def median_step(arm_name: str) -> float:
                times = [r["seconds_per_step"] for r in rows
                         if r["arm"] == arm_name and r["seconds_per_step"] is not None]
                if not times:
                    raise SystemExit(f"--equal-time: no step time measured for arm {arm_name} (use --steps >= 2)")
                return statistics.median(times)

            ref = args.arms[0]
            t_ref = median_step(ref)
            for arm_name in args.arms[1:]:
                t_arm = median_step(arm_name)
                equal_time[arm_name] = equal_time_steps(args.steps, t_ref, t_arm)
                print(f"equal time: {arm_name} {t_arm:.2f} s/step vs {ref} {t_ref:.2f} "
                      f"s/step (medians over {len(args.seeds) * len(args.strategies)} runs each) -> "
                      f"{equal_time[arm_name]} steps in the time of {args.steps}", flush=True)
            for seed, strategy, plan, before in prepared:
                run_dir = Path(tmp) / f"{strategy}-seed{seed}"
                pruned_dir, _ = save_pruned(plan, run_dir)  # surgery is deterministic: the same pruned model
                for arm_name, steps in equal_time.items():
                    heal(seed, strategy, plan, pruned_dir, before, ARMS[arm_name], f"{arm_name} @ equal time", steps)
                shutil.rmtree(run_dir, ignore_errors=True)
    ray.shutdown()

    aggregated = aggregate(rows)
    print()
    print(f"base perplexity ({args.model}): out of domain ({OOD_DATA}, {len(sets['ood'])} samples) "
          f"{base_ppl['ood']:.3f}; in domain ({IN_DOMAIN_DATA}, {len(sets['in'])} samples) {base_ppl['in']:.3f}")
    print("retention %, mean ± sample sd [min, max] over seeds " + ", ".join(map(str, args.seeds)))
    print(table(aggregated))
    for a in aggregated:
        print(f"{a['strategy']} ({a['arm']}): dropped {', '.join(str(list(d)) for d in a['drops'])}")
    for arm_name, steps in equal_time.items():
        print(f"{arm_name} @ equal time: {steps} steps, the measured time of {args.steps} {args.arms[0]} steps")
    print(
        f"(finetuning per run: {args.steps} steps, lr {args.lr}, batch {args.batch} x accum {args.accum} x "
        f"{args.workers} workers, max length {args.max_length}, {args.train_samples} seeded random rows of "
        f"{TRAIN_DATA}; calibration {len(cal)} samples; total {time.monotonic() - t_start:.0f} s)"
    )
    if args.json:
        doc = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "base_ppl": base_ppl,
            "equal_time_steps": equal_time,
            "rows": rows,
            "aggregated": [
                {k: asdict(v) if isinstance(v, Spread) else v for k, v in a.items()} for a in aggregated
            ],
        }
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
