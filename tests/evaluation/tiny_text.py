"""Tiny, fully offline text models for the evaluation tests.

A word-level tokenizer (built with the `tokenizers` library, wrapped in transformers' fast tokenizer)
with a small chat template, and a real `LlamaForCausalLM` from a config. `memorise` trains such a model
until it answers given prompts with given answers, so that a test knows what the model will say
without trusting the code under test.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|> {{ m.content }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def words_of(texts: Iterable[str]) -> list[str]:
    """Every word and punctuation mark in `texts` (as the pre-tokenizer splits them)."""
    out: dict[str, None] = {}
    for t in texts:
        for w in re.findall(r"\w+|[^\w\s]", t):
            out[w] = None
    return list(out)


def make_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    letters = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    vocab_words = SPECIALS + [w for w in dict.fromkeys(letters + words_of(texts)) if w not in SPECIALS]
    vocab = {w: i for i, w in enumerate(vocab_words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=SPECIALS[4:],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_llama(vocab_size: int, *, layers: int = 2, hidden: int = 64, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


def memorise(
    model: LlamaForCausalLM,
    tok: PreTrainedTokenizerFast,
    pairs: Sequence[tuple[str, str]],
    *,
    steps: int = 300,
    lr: float = 3e-3,
) -> None:
    """Train `model` so that after each prompt text (already chat-formatted) it says the answer + EOS."""
    seqs, labels = [], []
    for prompt, answer in pairs:
        p = tok(prompt, add_special_tokens=False).input_ids
        a = [*tok(" " + answer, add_special_tokens=False).input_ids, tok.eos_token_id]
        seqs.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    lab = torch.tensor([s + [-100] * (width - len(s)) for s in labels])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(s) for s in seqs])[:, None]).long()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        opt.zero_grad()
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        loss.backward()
        opt.step()
    model.eval()


@torch.no_grad()
def greedy_answer(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, prompt: str, max_new: int = 8) -> str:
    """Independent reference: unpadded prompt, plain forward passes, argmax, no `generate`, no batching."""
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    out: list[int] = []
    for _ in range(max_new):
        nxt = int(model(input_ids=ids).logits[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return tok.decode(out, skip_special_tokens=True).strip()
