"""`builtin:easyvqa-vl`: a small Qwen3-VL model trained from scratch on easy-vqa, on CPU, once.

Why: every other vision model here is randomly initialised, so nothing measured what pruning does to a
model whose vision matters. This one has learnt to answer easy-vqa's questions (PyPI `easy-vqa`, see
interlace.builtin.easyvqa) from its images, well above the chance level of the answers.

The recipe (deterministic, fixed seeds; `RECIPES`):

* architecture: the real transformers `Qwen3VLForConditionalGeneration` (vision tower with DeepStack
  features into the first text layers, patch merger, M-RoPE text decoder), built from a config with
  small widths: 12 text layers of width 128, a 4-block vision tower of width 96 on 8x8 patches (a
  64x64 image is 8x8 patches, 16 tokens after the 2x2 merge);
* tokenizer: a byte-level BPE `Qwen2Tokenizer` trained here, offline, on easy-vqa's own questions and
  answers, the evaluator's instruction and the chat template's words, plus Qwen's special tokens and a
  ChatML template (the same construction as the tiny test models, on easy-vqa's text). Every answer
  is one token; nothing comes from the hub;
* processor: the real `Qwen3VLProcessor` with a `Qwen2VLImageProcessor` that keeps easy-vqa's images
  at 64x64;
* training: next-token loss on the answer tokens (and the end-of-turn token) of `builtin:easy-vqa`
  rows, encoded by interlace.data.encode exactly as finetuning encodes them, AdamW with linear warm-up
  and cosine decay, fp32 on CPU, `torch.manual_seed(seed)` for the weights and a seeded shuffle for
  the data order.

`builtin:easyvqa-vl-tiny` is the same recipe at toy size (2 text layers, a few steps, seconds): CI
builds it to prove the recipe and the loading path work; it is not expected to know anything.

This module is the recipe and the construction (tokenizer, processor, untrained model); it imports
nothing of the library above interlace.builtin. The training step is interlace.models.builtin_vlm
(it reads builtin:easy-vqa through interlace.data), run explicitly: `interlace builtin
builtin:easyvqa-vl` (or `interlace.models.builtin_vlm.ensure_built`); resolving the name only looks
the checkpoint up (interlace.builtin.easyvqa_vl_dir).

Cache: <cache>/models/<name>-<fingerprint>/ (fingerprint of the recipe, the easy-vqa data and the
transformers/torch versions), built under a lock with an atomic rename. The checkpoint carries
`interlace-builtin.json` with the recipe, the training time and the final loss.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IMAGE_SIDE = 64  # easy-vqa's images; the image processor keeps them at this size
PATCH = 8
MERGE = 2


@dataclass(frozen=True)
class Recipe:
    """Sizes and schedule of one build. Everything that changes the weights is in the fingerprint."""

    name: str
    layers: int = 12
    hidden: int = 128
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 384
    vision_hidden: int = 96
    vision_depth: int = 4
    vision_heads: int = 4
    deepstack: tuple[int, ...] = (1, 2, 3)
    steps: int = 600
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 40
    weight_decay: float = 0.01
    max_samples: int | None = None  # None: the whole train split
    seed: int = 0
    max_length: int = 96
    # torch threads while training. 1: on a small shared CPU, two threads of a model this small spend
    # more time waiting for each other than computing (measured: 0.85 s CPU a step with 1 thread,
    # 3-4x that with 2 on a busy 2-core machine). 0 = torch's default.
    threads: int = 1

    def fingerprint(self, data_fp: str) -> str:
        import torch
        import transformers

        body = dataclasses.asdict(self)
        body.pop("threads")  # does not change the result beyond float summation order
        text = json.dumps(
            {"recipe": body, "data": data_fp, "torch": torch.__version__, "transformers": transformers.__version__},
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:12]


RECIPES: dict[str, Recipe] = {
    "easyvqa-vl": Recipe(name="easyvqa-vl"),
    "easyvqa-vl-tiny": Recipe(
        name="easyvqa-vl-tiny",
        layers=2,
        hidden=32,
        heads=2,
        kv_heads=1,
        intermediate=64,
        vision_hidden=32,
        vision_depth=2,
        vision_heads=2,
        deepstack=(0,),
        steps=4,
        batch=4,
        warmup=1,
        max_samples=64,
    ),
}


# ------------------------------------------------------------------------------------- tokenizer


def _corpus() -> list[str]:
    from interlace.builtin import easyvqa

    data = easyvqa.package_dir()
    rows = [r for split in ("train", "test") for r in easyvqa.questions(split, data)]
    texts = [easyvqa.user_text(q) for q, _, _ in rows]
    texts += [a for _, a, _ in rows]  # the answers as the assistant turn starts them: one token each
    texts += ["user\n", "assistant\n", "system\n"]
    return texts


def build_tokenizer() -> Any:
    """Byte-level BPE trained on easy-vqa's text (deterministic), as a Qwen2Tokenizer with ChatML."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    # (left, right) pairs, as the tiny test tokenizers pass them; transformers' annotation says
    # list[str], but the tokenizers backend takes the pairs (and the strings would be re-split).
    merges: Any = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Qwen2Tokenizer(
        vocab=dict(model["vocab"]),
        merges=merges,
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 1024
    return tok


# ----------------------------------------------------------------------------------------- model


def build_processor(tok: Any) -> Any:
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    pixels = IMAGE_SIDE * IMAGE_SIDE
    image = Qwen2VLImageProcessor(
        patch_size=PATCH,
        merge_size=MERGE,
        temporal_patch_size=2,
        size={"shortest_edge": pixels, "longest_edge": pixels},
    )
    video = Qwen3VLVideoProcessor(
        patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2, size={"shortest_edge": pixels, "longest_edge": pixels}
    )
    return Qwen3VLProcessor(image_processor=image, tokenizer=tok, video_processor=video, chat_template=CHAT_TEMPLATE)


def build_model(recipe: Recipe, tok: Any) -> Any:
    """A freshly initialised Qwen3VLForConditionalGeneration of the recipe's size (seeded)."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    ids = {t: int(tok.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS}
    head_dim = recipe.hidden // recipe.heads
    half = head_dim // 2  # mrope_section (temporal, height, width) sums to head_dim / 2
    section = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    text = {
        "vocab_size": len(tok),
        "hidden_size": recipe.hidden,
        "intermediate_size": recipe.intermediate,
        "num_hidden_layers": recipe.layers,
        "num_attention_heads": recipe.heads,
        "num_key_value_heads": recipe.kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": 1024,
        "pad_token_id": ids["<|endoftext|>"],
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10_000.0,
            "mrope_section": section,
            "mrope_interleaved": True,
        },
    }
    grid = IMAGE_SIDE // PATCH
    vision = {
        "depth": recipe.vision_depth,
        "hidden_size": recipe.vision_hidden,
        "intermediate_size": 2 * recipe.vision_hidden,
        "num_heads": recipe.vision_heads,
        "patch_size": PATCH,
        "spatial_merge_size": MERGE,
        "temporal_patch_size": 2,
        "out_hidden_size": recipe.hidden,
        "num_position_embeddings": grid * grid,
        "deepstack_visual_indexes": list(recipe.deepstack),
    }
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(recipe.seed)
    model = Qwen3VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    return model
