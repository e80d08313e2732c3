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
    p.add_argument("--json", action="store_true", help="print a machine-readable summary (JSON) on stdout")
    return p


def run(args: argparse.Namespace) -> int:
    from interlace.api import prune
    from interlace.cli.jsonout import print_json, stdout_to_stderr

    with stdout_to_stderr(args.json):
        result = prune(
            args.model,
            plan=args.plan,
            output=args.output,
            deepstack_policy=args.deepstack_policy,
            dtype=args.dtype,
            overwrite=args.overwrite,
            _cli=True,
        )
    plan = result.plan
    for note in result.notes:
        print(f"interlace prune: note: {note}", file=sys.stderr)
    print(f"pruned {len(plan.drop)} of {plan.num_layers} layers ({plan.drop}) -> {args.output}", file=sys.stderr)
    if args.json:
        print_json(result.to_dict())
    return 0
