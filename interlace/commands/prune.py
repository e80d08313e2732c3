"""`interlace prune`: apply a plan to a model and save the pruned HF checkpoint.

    interlace prune --model DIR --plan plan.json --output DIR [--deepstack-policy protect|position]

The output is written atomically (a sibling temp directory renamed at the end) and must not exist
or be empty, unless --overwrite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from interlace.errors import InterlaceError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "prune",
        help="remove the plan's layers from a model and save it",
        description="Remove the layers a plan drops, renumber the rest, and save a normal Hugging Face "
        "checkpoint (safetensors, config, processor/tokenizer files).",
    )
    p.add_argument("--model", required=True, help="model directory, hub id or builtin:<name>")
    p.add_argument("--plan", required=True, type=Path, help="plan JSON from `interlace plan`")
    p.add_argument("--output", required=True, type=Path, help="directory for the pruned checkpoint")
    p.add_argument("--deepstack-policy", choices=("protect", "position"), default="protect")
    p.add_argument(
        "--dtype",
        default="checkpoint",
        choices=("checkpoint", "bfloat16", "float16", "float32"),
        help="weights dtype of the output (default: as stored in the input checkpoint)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    return p


def run(args: argparse.Namespace) -> int:
    from interlace.selection import load_plan

    out: Path = args.output
    if out.exists() and not out.is_dir():
        raise InterlaceError(f"--output {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise InterlaceError(
            f"--output {out} exists and is not empty; choose a new directory or pass --overwrite"
        )
    plan = load_plan(args.plan)  # validated before the model is loaded

    from interlace.models import load_model
    from interlace.surgery import prune_model, save_model

    loaded = load_model(args.model, dtype=args.dtype, device="cpu")
    n = loaded.parts.num_layers
    if plan.num_layers != n:
        raise InterlaceError(
            f"--plan {args.plan} is for a {plan.num_layers}-layer model but {args.model} has {n} decoder layers"
        )
    prune_model(loaded.model, plan, deepstack_policy=args.deepstack_policy)
    save_model(loaded.model, loaded.processor, out, plan=plan, overwrite=args.overwrite)
    print(f"pruned {len(plan.drop)} of {n} layers ({plan.drop}) -> {out}", file=sys.stderr)
    return 0
