"""One-shot GPU benchmark: Qwen3-VL-8B and Qwen3-VL-4B from their configs, random weights, bf16.

    python3 bench/gpu.py                        # on a GPU host, from a checkout of this repository
    python3 bench/gpu.py --device cpu --tiny    # the same code on CPU with tiny configs (CI runs this)

Needs python3 with torch >= 2.11, transformers >= 5.17, accelerate, pillow and pydantic: no Ray, no
hub, no package registry (the configs below are transcribed from the published config.json files;
the weights are random; the tokenizer is a byte-level stand-in with Qwen's special-token ids, the image
processor is the released one's settings). pydantic is needed because the library's training step
(interlace.stages.finetune.step) and data package (interlace.data) import interlace.schema.spec. It
imports from this repository interlace.models.load, interlace.stages.analyze.similarity,
interlace.stages.plan.interlace_layers, interlace.stages.prune, interlace.stages.finetune.freeze,
interlace.stages.finetune.step, interlace.data.encode / rows and interlace.runtime.costs. On one
H100/H200 both models take a few minutes (budget: 8).

For each model, side by side:

* analysis (interlace.stages.analyze.similarity.analyze: the pack-1/2/3 hooks) / a plain forward of the same batches
  (random text ids);
* a plan: INTERLACE windows on those (random-weight) scores, DeepStack layers protected, the
  examples' ratios (8B 25 %, 4B 20 %); the model is pruned in place with interlace.stages.prune;
* pruned / base prefill and decode throughput (tokens per second, generate with a KV cache, random text ids);
* the finetune step the Ray Train loop runs (interlace/stages/finetune/loop.py): the library's
  `_wrap`, `accumulate_gradients` and `apply_gradients` (AdamW, cosine schedule, clipping), under a
  real process group of world size 1 (NCCL on a GPU, gloo on CPU; TCP store on localhost), the model
  under DistributedDataParallel so that the gradient all-reduce runs (see `wrap_for_collectives`).
  Micro-batches are conversations with images (the examples' maxImages 3 at maxPixels 50,176, random
  noise, seeded), encoded by the library's own interlace.data.encode.encode_sample / collate through a
  real Qwen3VLProcessor, so pixel_values / image_grid_thw and the (frozen) vision tower are in every
  timed step; rows fill maxLength (8,192 on a GPU). INTERLACE (interlace.stages.finetune.freeze.prepare_student:
  only the plan's finetune layers train, fp32 master weights, backward stops at the lowest of them,
  checkpointing from there up) vs full finetune of the same pruned model (every decoder layer trains;
  embeddings, norm, lm_head frozen in both; fp32 trainables unless they would not fit the GPU by the
  interlace.runtime.costs estimate, then bf16): median step time, the step's loss, peak GPU memory,
  tokens/s, MFU (text-decoder FLOPs only: the frozen vision tower's forward is not counted), the
  collectives one step issued (torch.profiler), and the structural FLOP limit of the step-time ratio
  (interlace.runtime.costs.structural_ratio) next to the measured one.

The GPU is identified (`identify_gpu`: name, memory, SM count, power limit) to pick its dense bf16
peak for MFU: H100 SXM 989, H100 NVL 835, H100 PCIe 756, H200 (SXM) 989, H200 NVL 835 TFLOP/s. An
H100 that is not positively identified as SXM or NVL gets no peak (MFU n/a) rather than SXM's.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
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

from interlace.builtin import easyvqa_vl as _easyvqa_vl  # noqa: E402 - after the path above

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
# Dense bf16 Tensor Core peaks, TFLOP/s: NVIDIA's H100 / H200 datasheets list BF16 "with sparsity"
# (H100 SXM 1,979, H100 NVL 1,671, H100 PCIe 1,513; H200 SXM 1,979, H200 NVL 1,671); dense is half.
# --peak-tflops overrides. Other parts by name only (A100 312, L40S 362, B200 2,250 dense).
PEAK_TFLOPS = {
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H200 SXM": 989.0,
    "H200 NVL": 835.0,
    "A100": 312.0,
    "L40S": 362.0,
    "B200": 2250.0,
}


def identify_gpu(name: str, total_memory: int | None = None, sm_count: int | None = None,
                 power_limit_w: float | None = None) -> tuple[str | None, str]:
    """(PEAK_TFLOPS key or None, why) for a CUDA device. H100s and H200s are told apart by name first
    ("PCIe", "NVL", "SXM"/"HBM3"), then by SM count (the PCIe H100 has 114, SXM and NVL 132), memory
    (H100 NVL 94 GB, H200 141 GB) and the board power limit (SXM 700 W; PCIe and NVL cards 350-600 W).
    A PCIe part is never taken for SXM: without positive evidence the answer is None (no MFU)."""
    n = name.upper()
    gib = total_memory / 2**30 if total_memory else None
    if "H200" in n:
        if "NVL" in n or (power_limit_w is not None and power_limit_w <= 650):
            return "H200 NVL", f"{name}: H200 NVL (name or power limit {power_limit_w} W)"
        return "H200 SXM", f"{name}: H200 (SXM unless NVL in the name or a power limit <= 650 W)"
    if "H100" in n:
        if "PCIE" in n or sm_count == 114:
            return "H100 PCIe", f"{name}: H100 PCIe (name or {sm_count} SMs)"
        if "NVL" in n or (gib is not None and 88 <= gib <= 100):
            return "H100 NVL", f"{name}: H100 NVL (name or {gib and round(gib)} GiB)"
        if "SXM" in n or "HBM3" in n:
            return "H100 SXM", f"{name}: H100 SXM (name)"
        if sm_count == 132 and power_limit_w is not None and power_limit_w >= 500:
            return "H100 SXM", f"{name}: H100 SXM ({sm_count} SMs, power limit {power_limit_w:.0f} W)"
        return None, f"{name}: an H100 of unknown form factor ({sm_count} SMs, power limit {power_limit_w} W): no peak"
    for key in ("A100", "L40S", "B200"):
        if key in n:
            return key, f"{name}: {key} (name)"
    return None, f"{name}: no known peak"


def power_limit_watts(index: int) -> float | None:
    """The board's maximum power limit from nvidia-smi (None when it cannot be read)."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "-i", str(index), "--query-gpu=power.max_limit",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
        return float(out.stdout.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


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
    train_batch: int  # conversations per micro-batch
    train_len: int  # maxLength: each conversation's text is sized to fill it
    train_steps: int  # timed optimizer steps (after one warm-up step, which is profiled)
    train_images: int = 3  # images per conversation (the examples' maxImages)
    max_pixels: int = 50176  # the examples' maxPixels (224 x 224)


# GPU: 2 conversations x 8,192 tokens, 3 images each, per step (the examples' perDeviceBatchSize is 4;
# 2 keeps the full finetune of the 8B inside 80 GB and both models inside the 8-minute budget).
GPU_SIZES = Sizes(4, 2048, 4, 4, 2048, 512, 64, 2, 8192, 3)
TINY_SIZES = Sizes(2, 64, 2, 2, 64, 16, 6, 2, 320, 2)


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


# ChatML as Qwen renders it: the library's own template for Qwen3-VL (interlace.builtin.easyvqa_vl imports only
# the standard library at module level, so the bare GPU host can import it).
CHAT_TEMPLATE = _easyvqa_vl.CHAT_TEMPLATE
# Qwen2/Qwen3's special-token ids (the released tokenizer's added tokens).
QWEN_SPECIAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}


def bench_processor(config: Any) -> Any:
    """A real Qwen3VLProcessor built offline: the image processor with the released
    preprocessor_config.json settings (patch 16, merge 2, temporal 2, mean/std 0.5, shortest_edge
    65,536 and longest_edge 16,777,216 pixels) and a byte-level Qwen2Tokenizer stand-in (the 256 byte
    symbols, no merges: one token per ASCII character) whose special tokens carry the config's ids, so
    the processor expands image placeholders into the tokens the model looks for."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer, Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    vocab_size = int(config.text_config.vocab_size)
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    specials = dict(QWEN_SPECIAL_IDS) if vocab_size > 151656 else {
        "<|endoftext|>": vocab_size - 8, "<|im_start|>": vocab_size - 7, "<|im_end|>": vocab_size - 6}
    specials.update({
        "<|vision_start|>": int(config.vision_start_token_id), "<|vision_end|>": int(config.vision_end_token_id),
        "<|image_pad|>": int(config.image_token_id), "<|video_pad|>": int(config.video_token_id),
    })
    vocab.update(specials)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>", eos_token="<|im_end|>",
                         pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": list(specials)})
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 1 << 20
    size = {"shortest_edge": 65536, "longest_edge": 16777216}
    image = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, size=size,
                                  image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    video = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,
                                  size={"shortest_edge": 4096, "longest_edge": 25165824})
    return Qwen3VLProcessor(image_processor=image, tokenizer=tok, video_processor=video, chat_template=CHAT_TEMPLATE)


def synthetic_samples(n: int, *, images: int, max_pixels: int, length: int, seed: int) -> list[Any]:
    """`n` conversations (interlace.data.sample.Sample), each with `images` random-noise PIL images
    (640 x 480, capped to max_pixels by the loaders' own interlace.data.rows.cap_pixels) shown with a
    short question, and an assistant answer of random words long enough to fill `length` tokens."""
    import random

    import numpy as np
    from PIL import Image

    from interlace.data.rows import cap_pixels
    from interlace.data.sample import Sample, Turn

    rng = random.Random(seed)
    gen = np.random.default_rng(seed)
    words = ["the", "image", "shows", "a", "red", "circle", "blue", "square", "next", "to", "green",
             "triangle", "on", "white", "background", "and", "text", "reads", "chart", "of", "sales"]
    out = []
    for i in range(n):
        pics = [cap_pixels(Image.fromarray(gen.integers(0, 256, (480, 640, 3), dtype=np.uint8)), max_pixels)
                for _ in range(images)]
        answer: list[str] = []
        while sum(len(w) + 1 for w in answer) < length:
            answer.append(rng.choice(words))
        out.append(Sample(turns=[Turn("user", "Describe the images in detail."), Turn("assistant", " ".join(answer))],
                          images=pics, source=f"bench-{seed}-{i}"))
    return out


def train_batch(processor: Any, sizes: Sizes, seed: int) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """One micro-batch as the training loop's `_micro_batches` makes it: encode_sample per
    conversation (truncated to maxLength from the right), collate (packing asked for, as the examples
    do; batches with images fall back to padding). Returns (batch, real tokens, what is in it)."""
    from interlace.data.chat import tokenizer_of
    from interlace.data.encode import IGNORE_INDEX, collate, encode_sample

    samples = synthetic_samples(sizes.train_batch, images=sizes.train_images, max_pixels=sizes.max_pixels,
                                length=sizes.train_len, seed=seed)
    examples = [encode_sample(s, processor, max_length=sizes.train_len) for s in samples]
    tok = tokenizer_of(processor)
    batch = collate(examples, tok.pad_token_id, packing=True, max_length=sizes.train_len)
    n_tokens = sum(int(ex["input_ids"].shape[0]) for ex in examples)
    image_id = int(processor.image_token_id)
    info = {
        "rows": int(batch["input_ids"].shape[0]),
        "row_tokens": int(batch["input_ids"].shape[1]),
        "labelled_tokens": int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()),
        "image_tokens": int((batch["input_ids"] == image_id).sum()),
        "images": int(batch["image_grid_thw"].shape[0]),
        "image_size": list(samples[0].images[0].size),
        "image_grid_thw": batch["image_grid_thw"][0].tolist(),
        "pixel_values_shape": list(batch["pixel_values"].shape),
    }
    return batch, n_tokens, info


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
    """Make `model` trainable as INTERLACE (plan: the library's interlace.stages.finetune.freeze.prepare_student,
    exactly as every training worker calls it) or as a full finetune (None: every decoder layer
    trains, trainables in `master`, checkpointing from layer 0 up); returns the trainable positions."""
    from interlace.models.load import find_parts
    from interlace.stages.finetune.freeze import enable_checkpointing, prepare_student

    if plan is not None:
        return list(prepare_student(model, plan, freeze_lm_head=True, gradient_checkpointing=checkpointing).positions)
    parts = find_parts(model)
    model.requires_grad_(False)
    parts.layers.requires_grad_(True)
    positions = list(range(len(parts.layers)))
    for p in model.parameters():
        if p.requires_grad and p.dtype != master:
            p.data = p.data.to(master)
    enable_checkpointing(model, 0 if checkpointing else len(parts.layers))
    model.train()
    return positions


def wrap_for_collectives(model: Any, device: Any, amp_dtype: Any) -> tuple[Any, bool]:
    """The library's `_wrap` (ddp), at this process group's world size. At world 1 it returns the bare
    model, so nothing would reach NCCL; the bench then wraps it in DistributedDataParallel with the
    arguments `_wrap` uses for world > 1, so the gradient all-reduce of a real run is in the step.
    Returns (wrapped, whether the bench did the wrapping).

    TODO(step.py): `_wrap(..., always_wrap=True)` (DDP even at world 1) would make this the library's
    own call; until then this is the bench's, labelled as such in the output."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from interlace.stages.finetune.step import _wrap

    wrapped = _wrap(model, "ddp", device, amp_dtype, dist.get_world_size())
    if wrapped is not model:
        return wrapped, False
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None), True


COLLECTIVE_NAMES = ("all_reduce", "allreduce", "all_gather", "allgather", "reduce_scatter", "broadcast")


def collectives_of(prof: Any) -> dict[str, int]:
    """Collective events torch.profiler recorded (backend-level names: nccl:all_reduce, gloo:all_reduce)."""
    counts: dict[str, int] = {}
    for e in prof.events():
        name = str(e.name)
        if (name.startswith(("nccl:", "gloo:")) and any(c in name.lower() for c in COLLECTIVE_NAMES)):
            counts[name] = counts.get(name, 0) + 1
    return counts


def finetune_steps(model: Any, batch: dict[str, Any], n_tokens: int, sizes: Sizes, clock: Clock, *,
                   amp_dtype: Any) -> dict[str, Any]:
    """The training loop's step (interlace/stages/finetune/loop.py) on one micro-batch per step: the
    library's accumulate_gradients + apply_gradients (AdamW lr 1e-5, cosine schedule, clip 1.0, the
    GradScaler off as for bf16), on the model as `wrap_for_collectives` wraps it. Step 0 warms up
    under torch.profiler (which collectives one step issues); the next `train_steps` are timed."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import get_scheduler

    from interlace.stages.finetune.step import accumulate_gradients, apply_gradients

    dev = next(model.parameters()).device
    wrapped, bench_wrapped = wrap_for_collectives(model, dev, amp_dtype)
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.0)
    scheduler = get_scheduler("cosine", opt, num_warmup_steps=1, num_training_steps=sizes.train_steps + 1)
    scaler = torch.amp.GradScaler(dev.type, enabled=False)
    group = [(batch, n_tokens)]
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times: list[float] = []
    losses: list[float] = []
    grad_bytes = 0
    collectives: dict[str, int] = {}
    for step in range(sizes.train_steps + 1):  # step 0 warms up (profiled), not timed
        sink: list[float] = []
        prof = profile(activities=[ProfilerActivity.CPU]) if step == 0 else contextlib.nullcontext()
        with prof, clock.time(sink):
            # reduce=True: the step's own two all-reduces go over NCCL even at world 1
            out = accumulate_gradients(wrapped, group, device=dev, amp_dtype=amp_dtype,
                                       world=torch.distributed.get_world_size(), scaler=scaler, reduce=True)
            grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in trainable if p.grad is not None)
            apply_gradients(trainable, opt, scheduler, scaler, max_grad_norm=1.0)
        if step == 0:
            collectives = collectives_of(prof)
        else:
            times.append(sink[0])
        losses.append(out.loss)
    opt_bytes = sum(
        t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
        if torch.is_tensor(t) and t.dim() > 0
    )
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
    del opt, scheduler, wrapped
    for p in trainable:
        p.grad = None
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "step_s": statistics.median(times),
        "step_times_s": times,
        "losses": losses,
        "loss": losses[-1],
        "peak_bytes": peak,
        "grad_optimizer_bytes": grad_bytes + opt_bytes,
        "trainable_params": sum(p.numel() for p in trainable),
        "tokens_per_step": n_tokens,
        "collectives_per_step": collectives,
        "ddp_wrapped_by": "bench (world 1; TODO _wrap always_wrap)" if bench_wrapped else "interlace _wrap",
        "step_reductions": "interlace accumulate_gradients (reduce=True)",
    }


def bench_model(name: str, spec: dict[str, Any], args: argparse.Namespace, device: Any) -> dict[str, Any]:
    import torch

    from interlace.models.load import find_parts
    from interlace.runtime.costs import DecoderShape, memory_estimate, step_flops_per_token, structural_ratio
    from interlace.stages.finetune.freeze import finetune_positions
    from interlace.stages.plan import interlace_layers
    from interlace.stages.prune import prune_model

    sizes = TINY_SIZES if args.tiny else GPU_SIZES
    if args.train_steps:
        sizes = dataclasses.replace(sizes, train_steps=args.train_steps)
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

    # 4. finetune: INTERLACE vs full, same pruned model, same micro-batch (images through the processor)
    processor = bench_processor(model.config)
    batch, n_tokens, out["train_batch"] = train_batch(processor, sizes, seed=7)
    shape = DecoderShape.from_config(model.config)
    kept = L - n_drop
    positions_i = finetune_positions(plan)  # the finetune layers' positions in the pruned stack
    tokens = out["train_batch"]["rows"] * out["train_batch"]["row_tokens"]
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
    out["trainable_dtype"] = {"interlace": "float32", "full": str(master).removeprefix("torch.")}
    amp_dtype = torch.bfloat16 if gpu else None
    runs: dict[str, Any] = {}
    for mode, p in (("interlace", plan), ("full", None)):
        positions = train_mode(model, p, master=master, checkpointing=ckpt)
        print(f"    finetune {mode}: {len(positions)} trainable layers ...", flush=True)
        try:
            runs[mode] = finetune_steps(model, batch, n_tokens, sizes, clock, amp_dtype=amp_dtype)
        except torch.OutOfMemoryError as err:
            runs[mode] = {"error": f"out of memory: {str(err).splitlines()[0]}"}
        if "error" in runs[mode]:  # outside the except block: its traceback no longer holds the step's frames
            for prm in model.parameters():
                prm.grad = None
            gc.collect()
            torch.cuda.empty_cache()
        runs[mode]["positions"] = positions
        runs[mode]["estimate_bytes"] = est[mode].total
        runs[mode]["estimate"] = est[mode].describe()
        flops_model = step_flops_per_token(shape, num_layers=kept, trainable=positions,
                                           seq_len=sizes.train_len, checkpointing=False)
        runs[mode]["model_flops_per_token"] = flops_model
    out["finetune"] = runs
    out["structural_limit"] = structural_ratio(shape, num_layers=kept, trainable=positions_i,
                                               seq_len=sizes.train_len, checkpointing=ckpt)
    peak = args.peak_tflops or (PEAK_TFLOPS.get(args.gpu_kind) if args.gpu_kind else None)
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
    row("micro-batch: rows x tokens (real)", lambda r: (
        f"{r['train_batch']['rows']} x {r['train_batch']['row_tokens']} ({r['finetune']['interlace']['tokens_per_step']})"))
    row("micro-batch: images (size, grid)", lambda r: (
        f"{r['train_batch']['images']} ({r['train_batch']['image_size'][0]}x{r['train_batch']['image_size'][1]}, "
        f"grid {r['train_batch']['image_grid_thw']}), {r['train_batch']['image_tokens']} image tokens"))
    row("micro-batch: labelled tokens", lambda r: f"{r['train_batch']['labelled_tokens']}")
    row("trainable dtype INTERLACE / full", lambda r: f"{r['trainable_dtype']['interlace']} / {r['trainable_dtype']['full']}")
    for mode, label in (("interlace", "INTERLACE"), ("full", "full finetune")):
        row(f"{label}: step s", lambda r, m=mode: ft(r, m, "error") if "error" in r["finetune"][m]
            else f"{ft(r, m, 'step_s'):.3f}")
        row(f"{label}: loss (last step)", lambda r, m=mode: f"{ft(r, m, 'loss'):.4f}")
        row(f"{label}: collectives in one step", lambda r, m=mode: ", ".join(
            f"{k} x{v}" for k, v in sorted(ft(r, m, "collectives_per_step").items())) or "none")
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


def init_process_group(device: Any) -> str:
    """A real process group of world size 1 (TCP store on localhost, a free port): NCCL for a CUDA
    device, gloo for the CPU, as Ray Train's TorchTrainer makes them. Returns the backend."""
    import torch
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    store = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, timeout=datetime.timedelta(seconds=120))
    kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, store=store, rank=0, world_size=1, **kwargs)
    return backend


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny configs (with --device cpu: the CI check)")
    ap.add_argument("--device", choices=("cuda", "cpu"), help="default: cpu with --tiny, else cuda")
    ap.add_argument("--models", nargs="*", help="subset of the model names")
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--train-steps", type=int, help="timed finetune steps per mode (default: 3 GPU, 2 tiny)")
    ap.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU, for MFU (else identified)")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    args = ap.parse_args(argv)

    import torch
    import torch.distributed as dist

    kind = args.device or ("cpu" if args.tiny else "cuda")
    if kind == "cpu":
        device = torch.device("cpu")
        torch.set_num_threads(1)  # toy matmuls: threads only add contention on a shared CI machine
    else:
        if not torch.cuda.is_available():
            print("bench/gpu.py: no CUDA device; run with --device cpu --tiny for the CPU check", file=sys.stderr)
            return 2
        device = torch.device("cuda", torch.cuda.current_device())
    models = TINY_MODELS if args.tiny else MODELS
    names = args.models or list(models)
    started = time.perf_counter()
    import transformers

    args.gpu_kind = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        power = power_limit_watts(device.index or 0)
        args.gpu_kind, why = identify_gpu(props.name, props.total_memory, props.multi_processor_count, power)
        where = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, " \
                f"power limit {_fmt(power, '.0f', ' W')}): {why}"
        peak = args.peak_tflops or PEAK_TFLOPS.get(args.gpu_kind or "")
        where += f"; dense bf16 peak {_fmt(peak, '.0f', ' TFLOP/s')}{' (--peak-tflops)' if args.peak_tflops else ''}"
    else:
        where = "CPU"
    backend = init_process_group(device)
    print(f"bench/gpu.py on {where}\n  torch {torch.__version__}, transformers {transformers.__version__}, "
          f"process group {backend} world {dist.get_world_size()}, "
          f"checkpointing {'off' if args.no_checkpointing else 'on'}", flush=True)
    results = []
    try:
        for name in names:
            print(f"  {name} ...", flush=True)
            results.append(bench_model(name, models[name], args, device))
    finally:
        dist.destroy_process_group()
    print()
    print(report(results))
    print(f"\ntotal {time.perf_counter() - started:.0f} s; random weights; analysis and serving on random token ids, "
          "finetune on conversations with random-noise images through the processor; structural limit: "
          "interlace.runtime.costs (forward + recomputation + backward FLOPs per layer). At world 1 the DDP "
          "wrapper and the step's two count/loss all-reduces are the bench's (TODO in bench/gpu.py), the rest "
          "is the library's step.")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
