"""`interlace plan`: choose the layers to drop/finetune from a scores JSON. Pure Python (no torch).

    interlace plan --scores scores.json --ratio R --strategy S [--protect 0,1] [--seed N] --output plan.json

plan.json: {"num_layers", "strategy", "ratio", "drop", "finetune", "anchor", "frozen", "windows",
"scores_summary"}, 0-based original layer indices, sorted.
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
    from interlace.selection import LayerScores, n_drop_for_ratio, save_plan, select_layers

    if args.output.is_dir():
        raise InterlaceError(f"--output {args.output} is a directory; give a file path")
    if args.seed < 0:
        raise InterlaceError(f"--seed {args.seed}: must be >= 0")
    protect = parse_layers(args.protect)
    scores = LayerScores.load(args.scores)
    L = scores.num_layers
    bad = [i for i in protect if i >= L]
    if bad:
        raise InterlaceError(f"--protect: layer(s) {bad} outside 0..{L - 1}")
    if args.deepstack_policy == "protect":
        protect = sorted(set(protect) | set(scores.meta.get("deepstack_layers") or []))
    if args.ratio is not None:
        n_drop = n_drop_for_ratio(L, args.ratio)
    else:
        if args.num_drop < 1 or args.num_drop > L - 2:
            raise InterlaceError(f"--num-drop {args.num_drop}: must be in 1..{L - 2} for {L} layers")
        n_drop = args.num_drop
    plan = select_layers(
        scores, n_drop=n_drop, strategy=args.strategy, protected=protect, seed=args.seed, ratio=args.ratio
    )
    save_plan(plan, args.output)
    print(
        f"{plan.strategy}: drop {plan.drop}, finetune {plan.finetune}, anchor {plan.anchor} "
        f"({len(plan.drop)}/{L} layers) -> {args.output}",
        file=sys.stderr,
    )
    return 0
