"""One-shot GPU benchmark: Qwen3-VL-8B and Qwen3-VL-4B from their configs, random weights, bf16.

    python3 bench/gpu.py                 # on a GPU host, from a checkout of this repository
    python3 bench/gpu.py --tiny          # the same code on CPU with tiny configs (CI runs this)

Needs only python3 with torch >= 2.11, transformers >= 5.17 and accelerate: no Ray, no pydantic, no
hub, no package registry (the configs below are transcribed from the published config.json files;
the weights are random). It imports from this repository the library pieces that need neither
pydantic nor Ray: interlace.models.load, interlace.stages.analyze.similarity, interlace.stages.plan.interlace_layers,
interlace.stages.prune, interlace.stages.finetune.freeze and interlace.runtime.costs. On one H100/H200 both models take a few
minutes (budget: 8).

For each model, side by side:

* analysis (interlace.stages.analyze.similarity.analyze: the pack-1/2/3 hooks) / a plain forward of the same batches;
* a plan: INTERLACE windows on those (random-weight) scores, DeepStack layers protected, the
  examples' ratios (8B 25 %, 4B 20 %); the model is pruned in place with interlace.stages.prune;
* pruned / base prefill and decode throughput (tokens per second, generate with a KV cache);
* INTERLACE finetune step (interlace.stages.finetune.freeze: only the plan's finetune layers train, backward stops
  at the lowest of them, checkpointing from there up) vs full finetune of the same pruned model
  (every decoder layer trains; embeddings, norm, lm_head frozen in both), the library's precision
  scheme (frozen weights bf16, trainable fp32 master weights, bf16 autocast, AdamW) unless the full
  finetune would not fit the GPU (interlace.runtime.costs estimate), then bf16 trainables in both modes:
  median step time, peak GPU memory, tokens/s, MFU, and the structural FLOP limit of the step-time
  ratio (interlace.runtime.costs.structural_ratio) next to the measured one.

Inputs are random token ids (text only: the vision tower is frozen and not pruned, so images would
add the same cost to both sides).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Transcribed from Qwen/Qwen3-VL-8B-Instruct and Qwen/Qwen3-VL-4B-Instruct config.json.
QWEN3_VL_TOKENS = {
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
}
MODELS: dict[str, dict[str, Any]] = {
    "Qwen3-VL-8B": {
        "ratio": 0.25,
        "tie": False,
        "text": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936},
        "vision": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                   "out_hidden_size": 4096, "deepstack_visual_indexes": [8, 16, 24]},
        "mrope_section": [24, 20, 20],
    },
    "Qwen3-VL-4B": {
        "ratio": 0.2,
        "tie": True,
        "text": {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936},
        "vision": {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
                   "out_hidden_size": 2560, "deepstack_visual_indexes": [5, 11, 17]},
        "mrope_section": [24, 20, 20],
    },
}
# --tiny: the same families at toy sizes (12 layers so that plans are not trivial).
TINY_MODELS: dict[str, dict[str, Any]] = {
    "tiny-8B-shape": {
        "ratio": 0.25,
        "tie": False,
        "text": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 12,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1024},
        "vision": {"depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                   "out_hidden_size": 64, "deepstack_visual_indexes": [0, 1, 2]},
        "mrope_section": [2, 3, 3],
    },
    "tiny-4B-shape": {
        "ratio": 0.2,
        "tie": True,
        "text": {"hidden_size": 48, "intermediate_size": 160, "num_hidden_layers": 12,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1024},
        "vision": {"depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                   "out_hidden_size": 48, "deepstack_visual_indexes": [0, 1, 2]},
        "mrope_section": [2, 3, 3],
    },
}
# Dense bf16 peak, TFLOP/s, by device name (SXM parts); --peak-tflops overrides.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "B200": 2250.0}


@dataclasses.dataclass
class Plan:
    """The fields of interlace.schema.spec.LayerPlan, as a plain dataclass (no pydantic on a bare host)."""

    num_layers: int
    strategy: str
    ratio: float | None
    drop: list[int]
    finetune: list[int]
    anchor: list[int]
    frozen: list[int]
    windows: list[list[int]] = dataclasses.field(default_factory=list)
    scores_summary: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Sizes:
    analysis_batch: int
    analysis_len: int
    analysis_batches: int
    prefill_batch: int
    prefill_len: int
    decode_prompt: int
    decode_tokens: int
    train_batch: int
    train_len: int
    train_steps: int


GPU_SIZES = Sizes(4, 2048, 4, 4, 2048, 512, 64, 2, 4096, 5)
TINY_SIZES = Sizes(2, 64, 2, 2, 64, 16, 6, 2, 64, 2)


def qwen3_vl_config(spec: dict[str, Any], *, tiny: bool = False) -> Any:
    """The transformers Qwen3VLConfig of one entry of MODELS / TINY_MODELS."""
    from transformers import Qwen3VLConfig

    vocab = spec["text"]["vocab_size"]
    tokens = QWEN3_VL_TOKENS if not tiny else {k: vocab - 4 + i for i, k in enumerate(QWEN3_VL_TOKENS)}
    text = dict(spec["text"])
    text.update(
        hidden_act="silu",
        rms_norm_eps=1e-6,
        max_position_embeddings=262144,
        attention_bias=False,
        tie_word_embeddings=spec["tie"],
        pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                         "mrope_section": spec["mrope_section"], "mrope_interleaved": True},
    )
    vision = dict(spec["vision"])
    vision.update(patch_size=16, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                  hidden_act="gelu_pytorch_tanh", num_position_embeddings=2304 if not tiny else 64)
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=spec["tie"], **tokens)


def build(name: str, spec: dict[str, Any], *, tiny: bool, device: Any, dtype: Any) -> Any:
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    config = qwen3_vl_config(spec, tiny=tiny)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    return model.eval()


class Clock:
    """Wall time of a block, synchronising the GPU around it."""

    def __init__(self, device: Any) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    @contextlib.contextmanager
    def time(self, out: list[float]) -> Any:
        self.sync()
        t0 = time.perf_counter()
        yield
        self.sync()
        out.append(time.perf_counter() - t0)


def random_ids(batch: int, length: int, vocab_limit: int, device: Any, seed: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab_limit, (batch, length), generator=g).to(device)


def analysis_vs_forward(model: Any, sizes: Sizes, limit: int, clock: Clock) -> tuple[Any, float, float]:
    """(scores, analysis seconds, plain forward seconds) over the same batches; one warm-up each."""
    import torch

    from interlace.stages.analyze.similarity import analyze

    dev = next(model.parameters()).device
    batches = []
    for k in range(sizes.analysis_batches):
        ids = random_ids(sizes.analysis_batch, sizes.analysis_len, limit, dev, seed=k)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    base = model.model  # analysis runs the model without lm_head; so does the plain forward
    with torch.inference_mode():
        base(**batches[0], use_cache=False)
    analyze(model, batches[:1], show_progress=False)
    t_plain: list[float] = []
    with clock.time(t_plain), torch.inference_mode():
        for b in batches:
            base(**b, use_cache=False)
    t_an: list[float] = []
    with clock.time(t_an):
        scores = analyze(model, batches, show_progress=False)
    return scores, t_an[0], t_plain[0]


def serving_speed(model: Any, sizes: Sizes, limit: int, clock: Clock) -> dict[str, float]:
    """Prefill tokens/s (one forward, last logits only) and decode tokens/s (generate, KV cache)."""
    import torch

    dev = next(model.parameters()).device
    ids = random_ids(sizes.prefill_batch, sizes.prefill_len, limit, dev, seed=100)
    prompt = random_ids(sizes.prefill_batch, sizes.decode_prompt, limit, dev, seed=101)
    n_new = sizes.decode_tokens
    with torch.inference_mode():
        model(input_ids=ids[:, :64], logits_to_keep=1)  # warm-up
        model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        t_pre: list[float] = []
        for _ in range(3):
            with clock.time(t_pre):
                model(input_ids=ids, logits_to_keep=1)
        t_p1: list[float] = []
        t_gen: list[float] = []
        for _ in range(3):
            with clock.time(t_p1):
                model.generate(prompt, max_new_tokens=1, min_new_tokens=1, do_sample=False)
            with clock.time(t_gen):
                model.generate(prompt, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
    decode_s = max(statistics.median(t_gen) - statistics.median(t_p1), 1e-9)
    return {
        "prefill_tokens_per_s": ids.numel() / statistics.median(t_pre),
        "decode_tokens_per_s": sizes.prefill_batch * (n_new - 1) / decode_s,
    }


def train_mode(model: Any, plan: Plan | None, *, master: Any, checkpointing: bool) -> list[int]:
    """Make `model` trainable as INTERLACE (plan) or full finetune (None); returns trainable positions."""
    from interlace.models.load import find_parts
    from interlace.stages.finetune.freeze import apply_freezing, enable_checkpointing

    parts = find_parts(model)
    if plan is not None:
        positions = apply_freezing(model, plan, freeze_lm_head=True).positions
    else:
        model.requires_grad_(False)
        parts.layers.requires_grad_(True)
        positions = list(range(len(parts.layers)))
    for p in model.parameters():
        if p.requires_grad and p.dtype != master:
            p.data = p.data.to(master)
    enable_checkpointing(model, positions[0] if checkpointing else len(parts.layers))
    model.train()
    return positions


def finetune_steps(model: Any, sizes: Sizes, limit: int, clock: Clock, *, autocast: Any) -> dict[str, Any]:
    """Median step time, peak memory and grad + optimizer bytes of AdamW steps on random tokens."""
    import torch
    import torch.nn.functional as F

    dev = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    ids = random_ids(sizes.train_batch, sizes.train_len, limit, dev, seed=7)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times: list[float] = []
    grad_bytes = 0
    for step in range(sizes.train_steps + 1):  # step 0 warms up, not timed
        sink: list[float] = []
        with clock.time(sink):
            ctx = torch.autocast(dev.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
            with ctx:
                logits = model(input_ids=ids, use_cache=False).logits
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
            del logits
            loss.backward()
            grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        if step > 0:
            times.append(sink[0])
    opt_bytes = sum(
        t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
        if torch.is_tensor(t) and t.dim() > 0
    )
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
    del opt
    for p in params:
        p.grad = None
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "step_s": statistics.median(times),
        "peak_bytes": peak,
        "grad_optimizer_bytes": grad_bytes + opt_bytes,
        "trainable_params": sum(p.numel() for p in params),
        "tokens_per_step": ids.numel(),
    }


def bench_model(name: str, spec: dict[str, Any], args: argparse.Namespace, device: Any) -> dict[str, Any]:
    import torch

    from interlace.models.load import find_parts
    from interlace.runtime.costs import DecoderShape, memory_estimate, step_flops_per_token, structural_ratio
    from interlace.stages.finetune.freeze import finetune_positions
    from interlace.stages.plan import interlace_layers
    from interlace.stages.prune import prune_model

    sizes = TINY_SIZES if args.tiny else GPU_SIZES
    gpu = device.type == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32
    clock = Clock(device)
    t0 = time.perf_counter()
    model = build(name, spec, tiny=args.tiny, device=device, dtype=dtype)
    limit = min(QWEN3_VL_TOKENS["vision_start_token_id"], spec["text"]["vocab_size"] - 4)
    out: dict[str, Any] = {"model": name, "device": str(device), "dtype": str(dtype).removeprefix("torch.")}
    out["build_s"] = time.perf_counter() - t0

    # 1. analysis vs a plain forward
    scores, t_an, t_plain = analysis_vs_forward(model, sizes, limit, clock)
    out["analysis_s"], out["plain_forward_s"] = t_an, t_plain

    # 2. plan: INTERLACE windows, DeepStack layers protected (the default deepstackPolicy)
    parts = find_parts(model)
    L = len(parts.layers)
    n_drop = math.floor(L * spec["ratio"])
    drop, tune, anchor = interlace_layers(scores, n_drop=n_drop, protected=parts.deepstack_layers)
    if len(drop) < n_drop:
        raise SystemExit(f"{name}: INTERLACE windows found only {len(drop)} of {n_drop} layers to drop")
    taken = set(drop) | set(tune) | set(anchor)
    plan = Plan(L, "interlace", spec["ratio"], drop, tune, anchor, [i for i in range(L) if i not in taken])
    out["plan"] = dataclasses.asdict(plan)

    # 3. serving speed, base then pruned (surgery in place: no second copy of the weights)
    base_speed = serving_speed(model, sizes, limit, clock)
    total_params_base = sum(p.numel() for p in model.parameters())
    prune_model(model, plan, deepstack_policy="protect")
    pruned_speed = serving_speed(model, sizes, limit, clock)
    out["speed"] = {"base": base_speed, "pruned": pruned_speed}
    total_params = sum(p.numel() for p in model.parameters())
    out["params"] = {"base": total_params_base, "pruned": total_params}

    # 4. finetune: INTERLACE vs full, same pruned model, same batches
    shape = DecoderShape.from_config(model.config)
    kept = L - n_drop
    positions_i = finetune_positions(plan)  # the finetune layers' positions in the pruned stack
    tokens = sizes.train_batch * sizes.train_len
    ckpt = not args.no_checkpointing
    est = {
        mode: memory_estimate(shape, total_params=total_params, num_layers=kept, trainable=pos,
                              tokens_per_micro_batch=tokens, checkpointing=ckpt,
                              weight_bytes=2 if gpu else 4)
        for mode, pos in (("interlace", positions_i), ("full", range(kept)))
    }
    master = torch.float32
    if gpu and est["full"].total > 0.92 * torch.cuda.get_device_properties(device).total_memory:
        master = torch.bfloat16  # fp32 masters for every layer would not fit: bf16 in both modes
    out["trainable_dtype"] = str(master).removeprefix("torch.")
    autocast = torch.bfloat16 if gpu else None
    runs: dict[str, Any] = {}
    for mode, p in (("interlace", plan), ("full", None)):
        positions = train_mode(model, p, master=master, checkpointing=ckpt)
        try:
            runs[mode] = finetune_steps(model, sizes, limit, clock, autocast=autocast)
        except torch.OutOfMemoryError as err:
            runs[mode] = {"error": f"out of memory: {str(err).splitlines()[0]}"}
        runs[mode]["positions"] = positions
        runs[mode]["estimate_bytes"] = est[mode].total
        runs[mode]["estimate"] = est[mode].describe()
        flops_model = step_flops_per_token(shape, num_layers=kept, trainable=positions,
                                           seq_len=sizes.train_len, checkpointing=False)
        runs[mode]["model_flops_per_token"] = flops_model
    out["finetune"] = runs
    out["structural_limit"] = structural_ratio(shape, num_layers=kept, trainable=positions_i,
                                               seq_len=sizes.train_len, checkpointing=ckpt)
    peak = args.peak_tflops or (next((v for k, v in PEAK_TFLOPS.items() if k in torch.cuda.get_device_name(device)),
                                     None) if gpu else None)
    for r in runs.values():
        if "step_s" in r:
            r["tokens_per_s"] = r["tokens_per_step"] / r["step_s"]
            r["mfu"] = r["model_flops_per_token"] * r["tokens_per_s"] / (peak * 1e12) if peak else None
    out["peak_tflops"] = peak
    out["seconds"] = time.perf_counter() - t0
    del model
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
    return out


def _fmt(v: Any, spec: str = ".3f", unit: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{unit}"


def _bytes(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v / 2**30:.1f} GiB" if v >= 2**30 else f"{v / 2**20:.2f} MiB"


def report(results: list[dict[str, Any]]) -> str:
    """The side-by-side table (one column per model)."""
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, fn: Any) -> None:
        cells = []
        for r in results:
            try:
                cells.append(fn(r))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("n/a")
        rows.append((label, cells))

    def ft(r: dict[str, Any], mode: str, key: str) -> Any:
        return r["finetune"][mode][key]

    row("layers (base -> pruned)", lambda r: f"{r['plan']['num_layers']} -> "
        f"{r['plan']['num_layers'] - len(r['plan']['drop'])}")
    row("plan: drop / finetune", lambda r: f"{r['plan']['drop']} / {r['plan']['finetune']}")
    row("analysis / plain forward", lambda r: f"{r['analysis_s'] / r['plain_forward_s']:.3f}x "
        f"({r['analysis_s']:.3f} s / {r['plain_forward_s']:.3f} s)")
    for kind in ("prefill", "decode"):
        row(f"{kind} tokens/s base -> pruned", lambda r, k=kind: (
            f"{r['speed']['base'][f'{k}_tokens_per_s']:,.0f} -> {r['speed']['pruned'][f'{k}_tokens_per_s']:,.0f}"))
        row(f"{kind} speedup pruned / base", lambda r, k=kind: (
            f"{r['speed']['pruned'][f'{k}_tokens_per_s'] / r['speed']['base'][f'{k}_tokens_per_s']:.3f}x"))
    row("trainable dtype", lambda r: r["trainable_dtype"])
    for mode, label in (("interlace", "INTERLACE"), ("full", "full finetune")):
        row(f"{label}: step s", lambda r, m=mode: ft(r, m, "error") if "error" in r["finetune"][m]
            else f"{ft(r, m, 'step_s'):.3f}")
        row(f"{label}: tokens/s", lambda r, m=mode: f"{ft(r, m, 'tokens_per_s'):,.0f}")
        row(f"{label}: MFU", lambda r, m=mode: _fmt(ft(r, m, "mfu") and 100 * ft(r, m, "mfu"), ".1f", " %"))
        row(f"{label}: peak GPU memory", lambda r, m=mode: _bytes(ft(r, m, "peak_bytes")))
        row(f"{label}: estimated memory", lambda r, m=mode: _bytes(ft(r, m, "estimate_bytes")))
        row(f"{label}: grad + AdamW state", lambda r, m=mode: _bytes(ft(r, m, "grad_optimizer_bytes")))
    row("step time ratio INTERLACE / full", lambda r: f"{ft(r, 'interlace', 'step_s') / ft(r, 'full', 'step_s'):.3f}x")
    row("structural FLOP limit of that ratio", lambda r: f"{r['structural_limit']:.3f}x")
    row("measured / limit", lambda r: f"{ft(r, 'interlace', 'step_s') / ft(r, 'full', 'step_s') / r['structural_limit']:.3f}")
    row("peak memory ratio INTERLACE / full", lambda r: f"{ft(r, 'interlace', 'peak_bytes') / ft(r, 'full', 'peak_bytes'):.3f}x")
    row("grad + AdamW ratio INTERLACE / full", lambda r: (
        f"{ft(r, 'interlace', 'grad_optimizer_bytes') / ft(r, 'full', 'grad_optimizer_bytes'):.3f}x"))
    row("seconds for this model", lambda r: f"{r['seconds']:.0f}")

    header = ["", *[r["model"] for r in results]]
    width = [max(len(str(x)) for x in col) for col in zip(header, *[[lab, *c] for lab, c in rows], strict=True)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, width, strict=True))]
    lines.append("-+-".join("-" * w for w in width))
    for label, cells in rows:
        lines.append(" | ".join(x.ljust(w) for x, w in zip([label, *cells], width, strict=True)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny configs on CPU (the CI check)")
    ap.add_argument("--models", nargs="*", help="subset of the model names")
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU, for MFU")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    args = ap.parse_args(argv)

    import torch

    if args.tiny:
        device = torch.device("cpu")
        models = TINY_MODELS
        torch.set_num_threads(1)  # toy matmuls: threads only add contention on a shared CI machine
    else:
        if not torch.cuda.is_available():
            print("bench/gpu.py: no CUDA device; run with --tiny for the CPU check", file=sys.stderr)
            return 2
        device = torch.device("cuda", torch.cuda.current_device())
        models = MODELS
    names = args.models or list(models)
    started = time.perf_counter()
    import transformers

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"bench/gpu.py on {where}: torch {torch.__version__}, transformers {transformers.__version__}, "
          f"checkpointing {'off' if args.no_checkpointing else 'on'}", flush=True)
    results = []
    for name in names:
        print(f"  {name} ...", flush=True)
        results.append(bench_model(name, models[name], args, device))
    print()
    print(report(results))
    print(f"\ntotal {time.perf_counter() - started:.0f} s; random weights, random token ids; "
          "structural limit: interlace.runtime.costs (forward + recomputation + backward FLOPs per layer)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
