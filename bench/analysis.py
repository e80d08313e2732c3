"""Benchmark: cost of the layer-similarity analysis against a plain no-grad forward pass.

    python bench/analysis.py [--family qwen3_vl|llama] [--samples 8] [--batch-size 4] [--reps 3]

On the same calibration batches of one model (default: a Qwen3-VL-shaped model with a 12-layer,
512-wide text decoder, ~40M parameters, random weights, images included), measured in one run:

* time: `interlace.analysis.analyze` vs a plain `torch.no_grad()` forward of the full model
  (`model(**batch)`, logits included) and of the base model without the LM head (what the analysis
  runs). Repetitions are interleaved (plain, base, analysis, plain, base, analysis, ...) so that load
  from other processes hits all three alike; the median of the repetitions is reported.
* peak memory: each mode runs in a FRESH child process (same seed, same batches) that samples its own
  resident set size (/proc/self/statm) every 0.5 ms from a background thread during the pass; the
  figure is peak RSS during the pass minus RSS just before it. tracemalloc cannot see torch's
  allocations, and ru_maxrss of a shared process would mix in the peaks of model construction and of
  earlier passes, hence one process per mode. On CUDA, torch.cuda.max_memory_allocated is used
  instead (exact).

Goal: analysis time / plain forward time <= 1.10. The ratios are printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# ------------------------------------------------------------------------------------- model + data


def build(family: str, seed: int) -> tuple[Any, Any]:
    from tests.fixtures import tiny

    if family == "qwen3_vl":
        return tiny.tiny_qwen3_vl(
            seed,
            hidden=512,
            layers=12,
            heads=8,
            kv_heads=4,
            intermediate=1536,
            vision_hidden=128,
            vision_depth=4,
        )
    if family == "llama":
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        tok = tiny.tiny_tokenizer()
        cfg = LlamaConfig(
            **tiny._text_kwargs(
                tok,
                hidden_size=512,
                num_hidden_layers=12,
                num_attention_heads=8,
                num_key_value_heads=4,
                intermediate_size=1536,
            )
        )
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg).eval(), tok
    raise SystemExit(f"unknown family {family}")


def batches(processor: Any, samples: int, batch_size: int, images: bool) -> list[dict[str, Any]]:
    from interlace.calibration import calibration_batches
    from interlace.sample import Sample, Turn
    from tests.fixtures.tiny import tiny_images

    imgs = tiny_images(8, seed=3)
    words = [
        "the",
        "chart",
        "shows",
        "a",
        "red",
        "circle",
        "next",
        "to",
        "a",
        "blue",
        "square",
        "and",
        "a",
        "green",
        "triangle",
        "on",
        "white",
        "paper",
        "please",
        "describe",
        "every",
        "shape",
        "and",
        "its",
        "color",
        "in",
        "detail",
    ]
    out = []
    for k in range(samples):
        n_words = 60 + 25 * (k % 4)  # varied lengths -> padding
        text = " ".join(words[(k + j) % len(words)] for j in range(n_words))
        out.append(Sample(turns=[Turn("user", text)], images=[imgs[k % 8]] if images else []))
    return list(calibration_batches(out, processor, batch_size=batch_size, max_length=1024))


# ------------------------------------------------------------------------------------------ passes


def run_mode(mode: str, model: Any, data: list[dict[str, Any]]) -> None:
    import torch

    from interlace.analysis import _base_model, analyze, move_batch

    param = next(model.parameters())
    if mode == "analysis":
        analyze(model, data, show_progress=False)
        return
    target = model if mode == "plain" else _base_model(model)
    with torch.no_grad():
        for b in data:
            target(**move_batch(b, param.device, param.dtype), use_cache=False)


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args: argparse.Namespace) -> None:
    """One mode in a fresh process: print {"peak": bytes} (peak extra memory of one pass)."""
    import torch

    torch.set_num_threads(args.threads)
    model, proc = build(args.family, args.seed)
    model.to(args.device)
    data = batches(proc, args.samples, args.batch_size, args.family != "llama")
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_mode(args.child, model, data)
        torch.cuda.synchronize()
        print(json.dumps({"peak": torch.cuda.max_memory_allocated() - base}))
        return
    import gc

    gc.collect()
    before = _rss()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    run_mode(args.child, model, data)
    stop.set()
    t.join()
    peak[0] = max(peak[0], _rss())
    print(json.dumps({"peak": peak[0] - before}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="qwen3_vl", choices=("qwen3_vl", "llama"))
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu")
    ap.add_argument("--child", choices=("plain", "base", "analysis"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    import torch

    torch.set_num_threads(args.threads)
    model, proc = build(args.family, args.seed)
    model.to(args.device)
    data = batches(proc, args.samples, args.batch_size, args.family != "llama")
    n_params = sum(p.numel() for p in model.parameters())
    tokens = sum(int(b["attention_mask"].sum()) for b in data)
    width = max(int(b["attention_mask"].shape[1]) for b in data)
    print(
        f"model: {type(model).__name__}, {n_params / 1e6:.1f}M parameters, "
        f"{len(find_layers(model))} decoder layers; data: {args.samples} samples, batch {args.batch_size}, "
        f"{tokens} tokens (longest batch {width}); device {args.device}, {args.threads} threads"
    )
    run_mode("plain", model, data[:1])  # warm-up (lazy inits, kernels)
    run_mode("analysis", model, data[:1])
    times: dict[str, list[float]] = {"plain": [], "base": [], "analysis": []}
    for r in range(args.reps):
        for mode in times:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            run_mode(mode, model, data)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[mode].append(time.perf_counter() - t0)
        print(f"rep {r + 1}: " + ", ".join(f"{m} {v[-1]:.2f}s" for m, v in times.items()), flush=True)
    med = {m: statistics.median(v) for m, v in times.items()}

    peaks: dict[str, int] = {}
    for mode in times:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--family",
            args.family,
            "--samples",
            str(args.samples),
            "--batch-size",
            str(args.batch_size),
            "--threads",
            str(args.threads),
            "--seed",
            str(args.seed),
            "--device",
            args.device,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
        peaks[mode] = json.loads(out.stdout.strip().splitlines()[-1])["peak"]

    print()
    print(f"{'mode':<10}{'median time':>14}{'peak extra memory':>20}")
    for m in times:
        print(f"{m:<10}{med[m]:>13.3f}s{peaks[m] / 2**20:>17.1f} MiB")
    print()
    print(
        f"time   analysis / plain forward (full model, logits)   = {med['analysis'] / med['plain']:.3f}  (goal <= 1.10)"
    )
    print(f"time   analysis / base forward (no lm_head, same work) = {med['analysis'] / med['base']:.3f}")
    print(
        f"memory analysis / plain forward peak                   = {peaks['analysis'] / max(peaks['plain'], 1):.3f}"
    )
    print(
        f"memory analysis / base forward peak                    = {peaks['analysis'] / max(peaks['base'], 1):.3f}"
    )


def find_layers(model: Any) -> Any:
    from interlace.models import find_parts

    return find_parts(model).layers


if __name__ == "__main__":
    main()
