"""Interleaved finetuning vs finetuning every layer of the same pruned model: step time and memory.

    bash hack/in-venv.sh python bench/finetune.py            # the embedded SmolLM2-135M, 20% pruned
    bash hack/in-venv.sh python bench/finetune.py --distillation   # + the cost of distillation healing

One process, one run, side by side: the model is pruned by an INTERLACE plan (from a real analysis on
calibration text), then copied twice:

* interleaved: interlace.stages.finetune.freeze as training uses it (only the plan's finetune layers train, the
  backward pass stops below the lowest of them, checkpointing from there up);
* all layers: every decoder layer trains (embeddings, final norm and lm_head frozen in both, so the
  comparison is about the decoder), checkpointing on every layer.

Both take the same optimizer steps on the same batches (alternating, so machine load hits both
alike), through the same step functions the Ray Train workers run (interlace.stages.finetune.step). Reported:
median step time, and gradient + optimizer-state bytes measured from the tensors that exist after a
step (p.grad of trainable parameters before they are cleared, AdamW's exp_avg/exp_avg_sq).

Next to the measured time ratio it prints the structural limit for the plan
(interlace.runtime.costs.structural_ratio, shared with bench/gpu.py): forward + recomputation + backward
FLOPs counted per layer, activation gradients down to the lowest trainable layer, weight gradients
only for trainable ones. A compute-bound implementation reaches it; the goal is measured <= 1.05 x
the limit, and <= 0.50x memory. The limit depends on where the plan's lowest finetune layer sits:
for SmolLM2-135M at 20 % it is about 0.75x, so no implementation of this plan can reach 0.60x.

`--distillation` adds a third mode on the same batches: interleaved + distillation
(spec.finetune.distillation: the unpruned model as a frozen teacher, one extra forward per
micro-batch, the KL term on the trained tokens) and prints its step time, wall clock and process CPU
(the steadier figure on a shared machine), next to plain interleaved. `--top-k K` adds a fourth:
distillation.topK, the teacher's top-K run once before training (`teacher_top_k` per micro-batch,
timed apart and printed per step) and a step with no teacher forward.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--data", default="builtin:english", help="conversation data (FineVision schema)")
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--steps", type=int, default=6, help="measured optimizer steps per mode")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--calibration", type=int, default=32, help="calibration samples for the plan")
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument(
        "--distillation",
        action="store_true",
        help="also run interleaved + distillation (spec.finetune.distillation, the unpruned model as the "
        "teacher) on the same batches and print its step-time ratio to plain interleaved",
    )
    ap.add_argument(
        "--top-k", type=int, default=None,
        help="with --distillation: also run distillation.topK (the teacher precomputed before training)",
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    import torch
    from transformers import get_scheduler

    from interlace.data import load_samples
    from interlace.data.encode import collate, encode_sample
    from interlace.models.load import find_parts, load_model
    from interlace.schema.spec import DataSpec, DistillationSpec
    from interlace.stages.analyze.calibration import calibration_batches
    from interlace.stages.analyze.similarity import analyze
    from interlace.stages.finetune.freeze import apply_freezing, enable_checkpointing
    from interlace.stages.finetune.step import accumulate_gradients, apply_gradients, teacher_top_k
    from interlace.stages.plan import select_layers
    from interlace.stages.prune import prune_model

    torch.manual_seed(0)
    loaded = load_model(args.model, dtype="float32", device="cpu")
    model, proc = loaded.model, loaded.processor
    L = loaded.parts.num_layers
    n_drop = int(L * args.ratio)
    data = DataSpec(path=args.data, max_samples=args.calibration + 64)
    samples = list(load_samples(data))
    cal, train = samples[: args.calibration], samples[args.calibration :]
    scores = analyze(
        model,
        calibration_batches(cal, proc, batch_size=8, max_length=args.max_length),
        show_progress=False,
    )
    plan = select_layers(scores, n_drop=n_drop, strategy="interlace", ratio=args.ratio)
    teacher = None
    if args.distillation:  # the unpruned model, frozen, as the workers hold it
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
    distill = DistillationSpec(weight=0.5, temperature=2.0)
    if args.top_k is not None and teacher is None:
        ap.error("--top-k needs --distillation")
    distill_k = DistillationSpec(weight=0.5, temperature=2.0, top_k=args.top_k) if args.top_k else None
    prune_model(model, plan, deepstack_policy="position")
    print(f"model {args.model}: {L} -> {L - n_drop} layers; finetune {plan.finetune} (original indices)")

    tok = getattr(proc, "tokenizer", proc)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    need = args.batch * args.accum * (args.steps + 1)
    batches = []
    for k in range(need // args.batch):
        chunk = [train[(k * args.batch + j) % len(train)] for j in range(args.batch)]
        exs = [encode_sample(s, proc, max_length=args.max_length) for s in chunk]
        batches.append((collate(exs, pad), sum(int(e["input_ids"].shape[0]) for e in exs)))

    positions: dict[str, list[int]] = {}

    def prepare(mode: str) -> tuple[torch.nn.Module, list[torch.nn.Parameter], torch.optim.Optimizer, object]:
        m = copy.deepcopy(model)
        if mode.startswith("interleaved"):
            summary = apply_freezing(m, plan)
            positions[mode] = summary.positions
        else:
            m.requires_grad_(False)
            find_parts(m).layers.requires_grad_(True)
            positions[mode] = list(range(len(find_parts(m).layers)))
        lowest = positions[mode][0]
        if not args.no_checkpointing:
            enable_checkpointing(m, lowest)
        m.train()
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
        sched = get_scheduler("constant", opt)
        return m, params, opt, sched

    modes: tuple[str, ...] = ("interleaved", "all layers")
    if teacher is not None:
        modes = (*modes, "interleaved + distillation")
    top_k_targets: list[Any] = []
    precompute_cpu = 0.0
    if distill_k is not None and teacher is not None:
        modes = (*modes, "interleaved + distillation top-k")
        c0 = time.process_time()
        top_k_targets = [
            teacher_top_k(teacher, b, torch.device("cpu"), temperature=distill_k.temperature, k=args.top_k)
            for b, _ in batches
        ]
        precompute_cpu = (time.process_time() - c0) / (len(batches) / args.accum)  # per optimizer step
    state = {mode: prepare(mode) for mode in modes}
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}  # process CPU seconds: robust to a busy machine
    mem: dict[str, dict[str, int]] = {}
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    dev = torch.device("cpu")
    for step in range(args.steps + 1):  # step 0 warms up (allocations, caches); not timed
        group = batches[step * args.accum : (step + 1) * args.accum]
        for mode in modes if step % 2 == 0 else reversed(modes):
            m, params, opt, sched = state[mode]
            t0, c0 = time.perf_counter(), time.process_time()
            with_teacher = mode == "interleaved + distillation"
            with_top_k = mode == "interleaved + distillation top-k"
            accumulate_gradients(
                m,
                group,
                device=dev,
                amp_dtype=None,
                world=1,
                teacher=teacher if with_teacher else None,
                distillation=distill if with_teacher else distill_k if with_top_k else None,
                targets=top_k_targets[step * args.accum : (step + 1) * args.accum] if with_top_k else None,
            )
            grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
            apply_gradients(params, opt, sched, scaler, max_grad_norm=1.0)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if step > 0:
                times[mode].append(dt)
                cpu[mode].append(dc)
            opt_bytes = sum(
                t.numel() * t.element_size()
                for st in opt.state.values()
                for t in st.values()
                if torch.is_tensor(t) and t.dim() > 0
            )
            mem[mode] = {
                "trainable_params": sum(p.numel() for p in params),
                "grad_bytes": grad_bytes,
                "optimizer_bytes": opt_bytes,
            }

    t_i, t_a = statistics.median(times["interleaved"]), statistics.median(times["all layers"])
    m_i = mem["interleaved"]["grad_bytes"] + mem["interleaved"]["optimizer_bytes"]
    m_a = mem["all layers"]["grad_bytes"] + mem["all layers"]["optimizer_bytes"]
    print()
    print("| mode | trainable params | median step (s) | grad + optimizer (MiB) |")
    print("|---|---|---|---|")
    rows = [("interleaved", t_i, m_i), ("all layers", t_a, m_a)]
    t_d = t_k = None
    if teacher is not None:
        mode = "interleaved + distillation"
        t_d = statistics.median(times[mode])
        rows.append((mode, t_d, mem[mode]["grad_bytes"] + mem[mode]["optimizer_bytes"]))
    if distill_k is not None:
        mode = "interleaved + distillation top-k"
        t_k = statistics.median(times[mode])
        rows.append((mode, t_k, mem[mode]["grad_bytes"] + mem[mode]["optimizer_bytes"]))
    for mode, t, mb in rows:
        print(f"| {mode} | {mem[mode]['trainable_params']:,} | {t:.3f} | {mb / 2**20:.1f} |")
    print()
    from interlace.runtime.costs import DecoderShape, structural_ratio

    limit = structural_ratio(
        DecoderShape.from_config(model.config),
        num_layers=len(find_parts(model).layers),
        trainable=positions["interleaved"],
        seq_len=args.max_length,
        checkpointing=not args.no_checkpointing,
    )
    print(f"time ratio   {t_i / t_a:.3f}x  structural FLOP limit {limit:.3f}x "
          f"(finetune positions {positions['interleaved']}); measured / limit {t_i / t_a / limit:.3f} "
          "(goal <= 1.05)")
    print(f"memory ratio {m_i / m_a:.3f}x  (goal <= 0.50x)")
    if t_d is not None:
        teacher_mib = sum(p.numel() * p.element_size() for p in teacher.parameters()) / 2**20  # type: ignore[union-attr]
        c_i = statistics.median(cpu["interleaved"])
        c_d = statistics.median(cpu["interleaved + distillation"])
        print(
            f"distillation {t_d / t_i:.3f}x the interleaved step time ({t_d:.3f} s vs {t_i:.3f} s), "
            f"{c_d / c_i:.3f}x its CPU time ({c_d:.3f} s vs {c_i:.3f} s): one teacher forward, no backward; "
            f"weight {distill.weight}, temperature {distill.temperature}; the teacher holds "
            f"{teacher_mib:.0f} MiB of weights on every worker"
        )
    if t_k is not None:
        c_i = statistics.median(cpu["interleaved"])
        c_k = statistics.median(cpu["interleaved + distillation top-k"])
        held = sum(t.nbytes for t in top_k_targets) / (len(top_k_targets) / args.accum)
        print(
            f"distillation top-{args.top_k}: step {t_k / t_i:.3f}x the interleaved step time, {c_k / c_i:.3f}x its "
            f"CPU time ({c_k:.3f} s vs {c_i:.3f} s), no teacher forward in the step; the teacher's pass before "
            f"training costs {precompute_cpu:.3f} CPU s per optimizer step ({(c_k + precompute_cpu) / c_i:.3f}x "
            f"in all) and its targets take {held / 2**20:.2f} MiB of host memory per optimizer step"
        )
    print(
        f"({args.steps} measured steps per mode, batch {args.batch} x accum {args.accum}, "
        f"max length {args.max_length}, checkpointing {'off' if args.no_checkpointing else 'on'}, "
        f"{torch.get_num_threads()} threads)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "plan": plan.model_dump(mode="json"),
                    "median_step_seconds": {"interleaved": t_i, "all_layers": t_a, "distillation": t_d},
                    "memory": mem,
                    "time_ratio": t_i / t_a,
                    "structural_limit": limit,
                    "memory_ratio": m_i / m_a,
                    "distillation_time_ratio": t_d / t_i if t_d is not None else None,
                    "top_k_time_ratio": t_k / t_i if t_k is not None else None,
                    "top_k_precompute_cpu_seconds_per_step": precompute_cpu if t_k is not None else None,
                    "median_step_cpu_seconds": {m: statistics.median(v) for m, v in cpu.items()},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
