"""`interlace plan`: choose the layers to drop/finetune from a scores JSON. Pure Python (no torch).

    interlace plan --scores scores.json --ratio R --strategy S [--protect 0,1] [--seed N] --output plan.json

plan.json: {"numLayers", "strategy", "ratio", "drop", "finetune", "anchor", "frozen", "windows",
"scoresSummary"} (as in status.plan; written by interlace.stages.plan.save_plan), 0-based original layer
indices, sorted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from interlace.errors import InterlaceError

STRATEGIES = ("interlace", "oa", "tn", "random", "consecutive", "shortgpt")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "plan",
        help="choose layers to drop and finetune from a scores JSON",
        description="Select decoder layers to drop (and the interleaved layers to finetune) from the "
        "scores `interlace analyze` wrote.",
    )
    p.add_argument("--scores", required=True, type=Path, help="scores JSON from `interlace analyze`")
    amount = p.add_mutually_exclusive_group(required=True)
    amount.add_argument("--ratio", type=float, help="fraction of layers to drop: n = floor(L * ratio)")
    amount.add_argument("--num-drop", type=int, help="number of layers to drop")
    p.add_argument(
        "--strategy", default="interlace", choices=STRATEGIES, help="selection strategy (default interlace)"
    )
    p.add_argument("--protect", default="", help="comma-separated 0-based layers never dropped, e.g. 0,1")
    p.add_argument(
        "--deepstack-policy",
        choices=("protect", "position"),
        default="protect",
        help="protect (default): also protect the Qwen3-VL DeepStack receiving layers listed in the scores",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random strategy (default 0)")
    p.add_argument("--output", required=True, type=Path, help="plan JSON to write")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary (JSON) on stdout")
    return p


def parse_layers(text: str, *, opt: str = "--protect") -> list[int]:
    out: list[int] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            v = int(part)
        except ValueError:
            raise InterlaceError(f"{opt} {text!r}: {part!r} is not a layer index (use e.g. 0,1)") from None
        if v < 0:
            raise InterlaceError(f"{opt} {text!r}: layer {v} is negative")
        out.append(v)
    return sorted(set(out))


def run(args: argparse.Namespace) -> int:
    from interlace.api import plan as make_plan

    if args.output.is_dir():
        raise InterlaceError(f"--output {args.output} is a directory; give a file path")
    plan = make_plan(
        args.scores,
        ratio=args.ratio,
        num_layers=args.num_drop,
        strategy=args.strategy,
        protect=parse_layers(args.protect),
        deepstack_policy=args.deepstack_policy,
        seed=args.seed,
        output=args.output,
        _cli=True,
    )
    print(
        f"{plan.strategy}: drop {plan.drop}, finetune {plan.finetune}, anchor {plan.anchor} "
        f"({len(plan.drop)}/{plan.num_layers} layers) -> {args.output}",
        file=sys.stderr,
    )
    if args.json:
        from interlace.cli.jsonout import print_json

        print_json({"output": str(args.output), "plan": plan.to_wire()})
    return 0
