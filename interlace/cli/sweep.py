"""`interlace sweep -f prunejob.yaml --ratios 0.1,0.15,0.2`: one analysis, one pruned variant per ratio.

The PruneJob's own ratio/numLayers is replaced by each ratio; each variant is finetuned, evaluated
and published under `<output>/ratio-<r>` (interlace.pipeline.sweep). Prints the table of variants (or, with
--json, the sweep summary that `<output>/sweep.json` also holds).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from interlace.errors import InterlaceError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "sweep",
        help="prune at several ratios with one analysis (a variant per ratio)",
        description="Analyze the model once, then plan, prune, finetune, evaluate and publish one "
        "variant per ratio of --ratios, each under <output>/ratio-<r>.",
    )
    p.add_argument("-f", "--file", required=True, type=Path, help="PruneJob YAML")
    p.add_argument("--ratios", required=True, help="comma-separated ratios, e.g. 0.1,0.15,0.2,0.25")
    p.add_argument("--local", action="store_true", help="always start a private local Ray cluster")
    p.add_argument("--output", help="output directory or URI (overrides spec.output.uri)")
    p.add_argument("--workers", type=int, help="Ray Train workers (overrides spec.resources.workers)")
    p.add_argument("--max-steps", type=int, help="stop each variant's finetuning after N optimizer steps")
    p.add_argument("--json", action="store_true", help="print the sweep summary (JSON) on stdout")
    return p


def parse_ratios(text: str) -> list[float]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(float(part))
        except ValueError:
            raise InterlaceError(f"--ratios {text!r}: {part!r} is not a number (use e.g. 0.1,0.2)") from None
    from interlace.pipeline.sweep import check_ratios

    return check_ratios(out, where="--ratios")


def run(args: argparse.Namespace) -> int:
    from interlace.api import sweep
    from interlace.cli.jsonout import print_json, stdout_to_stderr

    ratios = parse_ratios(args.ratios)
    with stdout_to_stderr(args.json):
        result = sweep(
            args.file,
            ratios,
            output=args.output,
            workers=args.workers,
            max_steps=args.max_steps,
            local=args.local,
        )
    if args.json:
        print_json(result.to_dict())
    else:
        from rich.console import Console

        Console(stderr=True).print(result.table())
    return 0
