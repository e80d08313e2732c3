"""Data loader throughput against the rate a GPU consumes samples, and the padding share of tokens.

    python bench/data.py              # ~1-2 minutes on 2 cores
    python bench/data.py --quick      # seconds (16 small rows): the smoke test tests/core/test_bench_data.py runs

Rows: FineVision-schema parquet shards written to a temp dir (two subsets, `images` as {bytes, path}
structs, `texts` as {user, assistant} turns, the ratings columns), with random images of realistic
sizes (photos, screenshots, charts and document scans from 336 x 336 to 1,700 x 2,200; smooth
random fields plus noise, JPEG for most, PNG for a quarter), 0-3 images and 1-4 turns per row, read
with the 8B example's data settings (manifests/examples/qwen3-vl-8b-25.yaml: maxImages 3, maxTurns 3,
maxPixels 50,176, perDeviceBatchSize 4, maxLength 8,192, packing).

The loader is the training loop's own (interlace.stages.finetune.batches.plan_micro_batches over a
data plan of those shards): rows read by index, images decoded and capped, encode_sample, collate.
The processor is a real Qwen3VLProcessor: Qwen/Qwen3-VL-8B-Instruct's own when it is in the HF cache
(offline), else the released image-processor settings (bench/gpu.py's bench_processor) with
SmolLM2-135M-Instruct's byte-level BPE tokenizer (builtin:smollm2-135m, when cached: a real BPE, so
token counts are close to Qwen's for English) plus Qwen's vision tokens, else bench/gpu.py's
byte-level stand-in (one token per character: text token counts are inflated). It prints which.

Printed side by side:
* loader: samples/s in the training process with one torch thread (num_workers 0: per CPU core;
  also per CPU-second of the process), the share of that time spent reading + decoding vs encoding +
  collating, and samples/s with `--workers` DataLoader worker processes on this machine; the total
  for the example's spec: per-core rate x its loader workers (spec.resources.cpu per GPU minus one,
  interlace.stages.finetune.batches.loader_workers), a linear extrapolation;
* GPU: samples/s one H100 SXM (989 dense bf16 TFLOP/s) consumes in the 8B example, from
  interlace.runtime.costs.step_flops_per_token (bench/gpu.py's FLOP model: text decoder only, the
  frozen vision tower not counted, so the GPU is, if anything, made faster) on the measured
  micro-batches' padded shapes: "typical" = the pruned 27 layers with 9 trainable positions every
  third from position 2, checkpointing, at MFU 0.4; "bound" = a forward pass alone at MFU 1.0, which
  no plan and no kernel can beat;
* the ratio loader / GPU per Ray Train worker (one GPU; goal >= 2x);
* padding share per micro-batch (interlace.data.encode.padding_share: padding tokens / all
  positions), with padding (`collate(..., packing=False)`) and with packing as training packs them
  (`collate(..., packing=True, max_length=maxLength, positions=...)`, the 8B config's per-sample
  M-RoPE positions from interlace.models.packing).
"""

from __future__ import annotations

import argparse
import io
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

EXAMPLE = REPO / "manifests" / "examples" / "qwen3-vl-8b-25.yaml"
H100_SXM_TFLOPS = 989.0
# (width, height) of FineVision-like images: photos, screenshots, charts, document scans.
IMAGE_SIZES = [(640, 480), (1024, 768), (800, 600), (1280, 720), (512, 512), (336, 336), (1700, 2200),
               (1024, 1366), (960, 540), (448, 640)]
WORDS = ("the", "image", "shows", "a", "chart", "of", "sales", "by", "region", "with", "bars", "for",
         "each", "quarter", "and", "legend", "on", "right", "side", "where", "blue", "line", "rises",
         "while", "red", "falls", "what", "is", "value", "in", "march", "answer", "table", "document",
         "page", "title", "figure", "text", "reads", "person", "standing", "next", "to", "car",
         "street", "building")
RATINGS = ("relevance", "image_correspondence", "visual_dependency", "formatting")


def example_spec() -> Any:
    import yaml

    from interlace.schema.spec import PruneJobSpec

    return PruneJobSpec.model_validate(yaml.safe_load(EXAMPLE.read_text())["spec"])


def random_image(rng: random.Random, gen: Any, sizes: list[tuple[int, int]]) -> bytes:
    """A realistic-size image: a smooth random field (upsampled low-res noise) plus fine noise."""
    import numpy as np
    from PIL import Image

    w, h = rng.choice(sizes)
    low = Image.fromarray(gen.integers(0, 256, (max(2, h // 64), max(2, w // 64), 3), dtype=np.uint8))
    base = np.asarray(low.resize((w, h), Image.BILINEAR), dtype=np.int16)
    pixels = np.clip(base + gen.integers(-12, 13, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    if rng.random() < 0.25:
        Image.fromarray(pixels).save(buf, format="PNG")
    else:
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def write_shards(root: Path, rows: int, *, seed: int = 0, small: bool = False) -> None:
    """FineVision-schema parquet shards: two subsets, two files each, row groups of 32 rows. `small`:
    images of at most 640 x 480 only (--quick)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng, gen = random.Random(seed), np.random.default_rng(seed)
    sizes = [wh for wh in IMAGE_SIZES if wh[0] * wh[1] <= 640 * 480] if small else IMAGE_SIZES
    for s, name in enumerate(("charts_like", "photos_like")):
        n = rows // 2 + (rows % 2 if s == 0 else 0)
        out = []
        for i in range(n):
            turns = [{"user": f"[{name}#{i}] " + sentence(rng, 8, 40) + "?", "assistant": sentence(rng, 3, 180)}
                     for _ in range(rng.choice((1, 1, 2, 3, 4)))]
            images = [{"bytes": random_image(rng, gen, sizes), "path": None} for _ in range(rng.choice((0, 1, 1, 1, 2, 3)))]
            row: dict[str, Any] = {"images": images, "texts": turns, "source": name}
            for r in RATINGS:
                row[f"{r}_ratings"] = [rng.randint(1, 5) for _ in turns]
                row[f"{r}_min"] = min(row[f"{r}_ratings"])
            out.append(row)
        (root / name).mkdir(parents=True)
        half = (n + 1) // 2
        for k, part in enumerate((out[:half], out[half:])):
            pq.write_table(pa.Table.from_pylist(part), root / name / f"train-{k:05d}-of-00002.parquet",
                           row_group_size=32)


def processor(quick: bool) -> tuple[Any, str]:
    """A real Qwen3VLProcessor (see the module docstring) and what its tokenizer is."""
    import gpu
    from transformers import Qwen3VLConfig

    if not quick:
        try:
            from transformers import AutoProcessor

            p = AutoProcessor.from_pretrained("Qwen/Qwen3-VL-8B-Instruct", local_files_only=True)
            return p, "Qwen/Qwen3-VL-8B-Instruct's own processor (HF cache)"
        except Exception:  # not in the cache: the stand-ins below
            pass
        smol = Path.home() / ".cache" / "interlace" / "models" / "smollm2-135m-instruct"
        if (smol / "tokenizer.json").is_file():
            from transformers import AutoTokenizer, Qwen3VLProcessor

            tok = AutoTokenizer.from_pretrained(smol)
            vision = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
            tok.add_special_tokens({"additional_special_tokens": vision})
            tok.chat_template = gpu.CHAT_TEMPLATE
            ref = gpu.bench_processor(gpu.qwen3_vl_config(gpu.MODELS["Qwen3-VL-8B"]))
            p = Qwen3VLProcessor(image_processor=ref.image_processor, tokenizer=tok,
                                 video_processor=ref.video_processor, chat_template=gpu.CHAT_TEMPLATE)
            return p, "Qwen3VLProcessor: released image-processor settings + SmolLM2-135M's BPE tokenizer"
    config: Qwen3VLConfig = gpu.qwen3_vl_config(gpu.MODELS["Qwen3-VL-8B"])
    return gpu.bench_processor(config), "Qwen3VLProcessor: released image-processor settings + byte-level stand-in"


def gpu_rates(spec: Any, shapes: list[tuple[int, int]]) -> dict[str, float]:
    """Samples/s one H100 SXM consumes on micro-batches of `shapes` (rows, padded length), each
    micro-batch holding spec.perDeviceBatchSize samples (see the module docstring)."""
    import gpu

    from interlace.runtime.costs import DecoderShape, step_flops_per_token

    shape = DecoderShape.from_config(gpu.qwen3_vl_config(gpu.MODELS["Qwen3-VL-8B"]))
    kept = shape.num_layers - math.floor(shape.num_layers * float(spec.pruning.ratio))
    trainable = range(2, kept, 3)  # 9 of the 27 kept positions, INTERLACE-like
    peak = H100_SXM_TFLOPS * 1e12
    seconds = {"typical": 0.0, "bound": 0.0}
    for rows, length in shapes:
        tokens = rows * length
        flops = step_flops_per_token(shape, num_layers=kept, trainable=trainable, seq_len=length,
                                     checkpointing=spec.finetune.gradient_checkpointing)
        lin, att = shape.layer_forward_flops(length)
        forward = kept * (lin + att) + shape.head_flops
        seconds["typical"] += tokens * flops / (0.4 * peak)
        seconds["bound"] += tokens * forward / peak
    samples = len(shapes) * spec.finetune.per_device_batch_size
    return {k: samples / v for k, v in seconds.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few rows, the byte-level stand-in: a smoke test")
    ap.add_argument("--rows", type=int, default=None, help="rows written (default 320, --quick 16)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers measured on this machine")
    args = ap.parse_args(argv)

    import torch

    from interlace.data.chat import tokenizer_of
    from interlace.data.dataplan import build_plan
    from interlace.data.encode import collate, padding_share
    from interlace.models.packing import sample_positions
    from interlace.runtime.placement import loader_cpus
    from interlace.stages.finetune.batches import (
        Packing,
        RankMicroBatches,
        encode_slice,
        loader_workers,
        plan_micro_batches,
    )

    torch.set_num_threads(1)  # one core, as a DataLoader worker has
    job = example_spec()
    rows = args.rows or (16 if args.quick else 320)
    proc, what = processor(args.quick)
    tok = tokenizer_of(proc)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    B, max_length = job.finetune.per_device_batch_size, job.finetune.max_length
    import gpu

    positions = sample_positions(gpu.qwen3_vl_config(gpu.MODELS["Qwen3-VL-8B"]))
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        t0 = time.perf_counter()
        write_shards(Path(tmp), rows, small=args.quick)
        data = job.finetune.data.model_copy(update={"path": tmp, "fraction": 1.0})
        spec = job.finetune.model_copy(update={"data": data})
        plan = build_plan(data)
        n_batches = plan.num_finetune // B
        print(f"{rows} FineVision-schema rows written in {time.perf_counter() - t0:.1f} s; processor: {what}")

        # 1. in the training process, one thread: read + decode, then encode + collate, timed apart
        ds = RankMicroBatches(spec, plan, proc, 0, 1, skip=0, packing=Packing(positions, max_length))
        read_s = encode_s = 0.0
        cpu0 = time.process_time()
        shapes, pad_shares, pack_shares, inline = [], [], [], []
        for i in range(n_batches):
            t = time.perf_counter()
            samples = ds.samples(i)
            read_s += time.perf_counter() - t
            t = time.perf_counter()
            examples = encode_slice(samples, proc, max_length=max_length, warn=False)
            if not examples:
                continue
            # as training collates (interlace.stages.finetune.loop: the spec's packing, M-RoPE per sample)
            batch = collate(examples, pad_id, packing=spec.packing, max_length=max_length, positions=positions)
            encode_s += time.perf_counter() - t
            padded = collate(examples, pad_id, packing=False)
            packed = batch if spec.packing else collate(
                examples, pad_id, packing=True, max_length=max_length, positions=positions)
            inline.append(batch["input_ids"])
            shapes.append((int(packed["input_ids"].shape[0]), int(packed["input_ids"].shape[-1])))
            pad_shares.append(padding_share(padded))
            pack_shares.append(padding_share(packed))
        cpu = time.process_time() - cpu0
        samples_done = n_batches * B
        per_core = samples_done / (read_s + encode_s)

        # 2. the loader itself with worker processes (the order is the in-process one, see the tests)
        t = time.perf_counter()
        it = plan_micro_batches(spec, plan, proc, 0, 1, skip=0, num_workers=args.workers,
                                packing=Packing(positions, max_length))
        from_workers = [next(it)[0]["input_ids"] for _ in range(n_batches)]
        it.close()
        workers_rate = samples_done / (time.perf_counter() - t)

    cpus = loader_cpus(job.resources)
    spec_workers = loader_workers(cpus, available=10**6)  # the pod's CPUs, not this machine's
    total = per_core * spec_workers
    gpu = gpu_rates(job, shapes)
    print()
    print(f"loader (rows {samples_done}, micro-batches of {B}, maxPixels {data.max_pixels}, maxLength {max_length})")
    print(f"  in-process, 1 thread           {per_core:8.1f} samples/s per core  "
          f"({samples_done / cpu:.1f} per CPU-second; read+decode {100 * read_s / (read_s + encode_s):.0f}%, "
          f"encode+collate {100 * encode_s / (read_s + encode_s):.0f}%)")
    same = len(inline) == len(from_workers) and all(map(torch.equal, inline, from_workers))
    print(f"  {args.workers} DataLoader workers here     {workers_rate:8.1f} samples/s (wall, this machine; "
          f"same micro-batches as in-process: {'yes' if same else 'NO'})")
    print(f"  spec: cpu {job.resources.cpu} / {job.resources.gpus_per_worker} GPU -> {spec_workers} workers "
          f"{total:8.1f} samples/s (per-core x workers)")
    print(f"GPU: Qwen3-VL-8B example on one H100 SXM ({H100_SXM_TFLOPS:.0f} TFLOP/s), measured micro-batch shapes "
          f"(mean {statistics.mean(r * n for r, n in shapes):.0f} positions)")
    print(f"  typical (9 trainable of 27, checkpointing, MFU 0.4) {gpu['typical']:8.1f} samples/s")
    print(f"  bound (forward only, MFU 1.0)                       {gpu['bound']:8.1f} samples/s")
    print("ratio loader / GPU per Ray Train worker (goal >= 2x)")
    print(f"  vs typical {total / gpu['typical']:6.1f}x    vs bound {total / gpu['bound']:6.1f}x    "
          f"(one core alone: {per_core / gpu['typical']:.2f}x / {per_core / gpu['bound']:.2f}x)")
    print("padding share of positions per micro-batch (padding tokens / all positions)")
    print(f"  padding  mean {statistics.mean(pad_shares):.3f}  median {statistics.median(pad_shares):.3f}  "
          f"max {max(pad_shares):.3f}")
    print(f"  packing  mean {statistics.mean(pack_shares):.3f}  median {statistics.median(pack_shares):.3f}  "
          f"max {max(pack_shares):.3f}  (rows of at most maxLength {max_length}, M-RoPE per sample; goal <= 0.05)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
