"""Benchmark: cost of the layer-similarity analysis against a plain no-grad forward pass.

    python bench/analysis.py [--family qwen3_vl|llama] [--samples 8] [--batch-size 4] [--reps 3]

On the same calibration batches of one model (default: a Qwen3-VL-shaped model with a 12-layer,
512-wide text decoder, ~40M parameters, random weights, images included), measured in one run:

* time: `interlace.stages.analyze.similarity.analyze` vs a plain `torch.no_grad()` forward of the full model
  (`model(**batch)`, logits included) and of the base model without the LM head (what the analysis
  runs). The three are interleaved batch by batch (plain, base, analysis on batch 1, then on batch 2,
  ...) so that load from other processes hits all three alike, and repeated; the minimum over
  repetitions (least disturbed) and the median are reported, in wall time and in process CPU time
  (which other processes on a shared machine disturb much less).
* peak memory: each mode runs in a FRESH child process (same seed, same batches) that samples its own
  resident set size (/proc/self/statm) every 0.5 ms from a background thread during the pass; the
  figure is peak RSS during the pass minus RSS just before it. tracemalloc cannot see torch's
  allocations, and ru_maxrss of a shared process would mix in the peaks of model construction and of
  earlier passes, hence one process per mode. On CUDA, torch.cuda.max_memory_allocated is used
  instead (exact).

Goal: analysis time / plain forward time <= 1.10. The ratios are printed last.

`--ray-workers N` (N >= 2) also measures the data-parallel analysis the pipeline runs when Ray is up
(interlace.stages.analyze.sharded.analyze_on_ray), side by side in the same run: 1 CPU Ray worker vs N on the
same calibration rows (the model saved to a temporary directory, the samples' text written as a
text dataset, so images are left out here), each timed end to end as the pipeline sees it (every
task loads the model and reads its shard), after one warm-up call that starts the worker processes.
Goal: N = 2 at least 1.6x faster than 1.
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
    from interlace.data.sample import Sample, Turn
    from interlace.stages.analyze.calibration import calibration_batches
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

    from interlace.stages.analyze.similarity import _base_model, analyze, move_batch

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
    run_mode(args.child, model, data[:1])  # warm-up: lazy imports and one-time inits are not counted
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
    ap.add_argument("--ray-workers", type=int, default=0, help="also time analyze_on_ray: 1 vs N workers")
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
    cuda = args.device.startswith("cuda")
    modes = ("plain", "base", "analysis")
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.reps):
        w = dict.fromkeys(modes, 0.0)
        c = dict.fromkeys(modes, 0.0)
        # Interleaved per batch, so that load from other processes hits the three modes alike.
        for b in data:
            for mode in modes:
                if cuda:
                    torch.cuda.synchronize()
                t0, p0 = time.perf_counter(), time.process_time()
                run_mode(mode, model, [b])
                if cuda:
                    torch.cuda.synchronize()
                w[mode] += time.perf_counter() - t0
                c[mode] += time.process_time() - p0
        for m in modes:
            wall[m].append(w[m])
            cpu[m].append(c[m])
        print(
            f"rep {r + 1}: " + ", ".join(f"{m} {w[m]:.2f}s wall / {c[m]:.2f}s cpu" for m in modes), flush=True
        )
    peaks: dict[str, int] = {}
    for mode in modes:
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

    def ratio(d: dict[str, list[float]], a: str, b: str, f: Any) -> float:
        return f(d[a]) / f(d[b])

    print()
    print(f"{'mode':<10}{'min wall':>11}{'median wall':>13}{'min cpu':>11}{'peak extra memory':>20}")
    for m in modes:
        print(
            f"{m:<10}{min(wall[m]):>10.3f}s{statistics.median(wall[m]):>12.3f}s{min(cpu[m]):>10.3f}s"
            f"{peaks[m] / 2**20:>17.1f} MiB"
        )
    print()
    print("time = min over repetitions (least disturbed by other load); median in brackets")
    for other, label in (
        ("plain", "plain forward (full model, logits)"),
        ("base", "base forward (no lm_head)"),
    ):
        print(
            f"time   analysis / {label:<36} wall {ratio(wall, 'analysis', other, min):.3f} "
            f"[{ratio(wall, 'analysis', other, statistics.median):.3f}]  cpu {ratio(cpu, 'analysis', other, min):.3f}"
            + ("   (goal <= 1.10)" if other == "plain" else "")
        )
    print(f"memory analysis / plain forward peak = {peaks['analysis'] / max(peaks['plain'], 1):.3f}")
    print(f"memory analysis / base forward peak  = {peaks['analysis'] / max(peaks['base'], 1):.3f}")
    if args.ray_workers >= 2:
        ray_speedup(model, proc, args)


def ray_speedup(model: Any, proc: Any, args: argparse.Namespace) -> None:
    """analyze_on_ray with 1 CPU worker vs args.ray_workers, same rows, interleaved repetitions."""
    import tempfile

    from interlace.runtime.placement import placement_of
    from interlace.runtime.ray_cluster import start_ray
    from interlace.schema.spec import DataSpec, ModelSpec
    from interlace.stages.analyze.sharded import analyze_on_ray

    with tempfile.TemporaryDirectory(prefix="bench-analysis-") as tmp:
        model.save_pretrained(tmp + "/model")
        proc.save_pretrained(tmp + "/model")
        rows = Path(tmp) / "rows.jsonl"
        texts = [" ".join(["the chart shows a red circle next to a blue square"] * (6 + 2 * (k % 4)))
                 for k in range(args.samples)]
        rows.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        spec = ModelSpec(source=tmp + "/model", dtype="float32")
        data = DataSpec(format="text", path=str(rows), fraction=1.0)
        kw = {"num_samples": args.samples, "batch_size": args.batch_size, "max_length": 1024}
        start_ray(local=True)
        analyze_on_ray(spec, data, placement=placement_of(args.ray_workers, 0), **kw)  # warm-up
        times: dict[int, list[float]] = {1: [], args.ray_workers: []}
        for _ in range(args.reps):
            for n in times:
                t0 = time.perf_counter()
                analyze_on_ray(spec, data, placement=placement_of(n, 0), **kw)
                times[n].append(time.perf_counter() - t0)
        one, many = min(times[1]), min(times[args.ray_workers])
        print()
        print(f"data-parallel analysis on Ray (text rows, {args.samples} samples, batch {args.batch_size}), "
              f"min over {args.reps}: 1 worker {one:.2f}s, {args.ray_workers} workers {many:.2f}s")
        print(f"speedup {args.ray_workers} workers / 1 = {one / many:.2f}x   (goal >= 1.6 for 2 workers)")


def find_layers(model: Any) -> Any:
    from interlace.models.load import find_parts

    return find_parts(model).layers


if __name__ == "__main__":
    main()
