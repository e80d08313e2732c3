"""`interlace evaluate`: score a pruned model against its base on the same benchmarks.

    interlace evaluate --base DIR --pruned DIR --benchmarks perplexity set.jsonl ... \\
        [--data PATH] [--max-samples N] [--batch-size N] [--max-new-tokens N] [--no-speed] \\
        --output results.json

Writes the Results (camelCase, as in PruneJob status.results) to --output atomically and prints them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate",
        help="compare a pruned model with its base (quality, relative performance, speed)",
        description="Score base and pruned model on the same benchmarks: 'perplexity' (needs --data), "
        "or paths to local VQA sets (parquet/jsonl with image, question, choices, answer). "
        "Relative performance = mean over benchmarks of pruned/base, in percent.",
    )
    p.add_argument("--base", required=True, help="unpruned model: directory, hub id or builtin:<name>")
    p.add_argument("--pruned", required=True, help="pruned model directory")
    p.add_argument("--benchmarks", nargs="+", required=True, metavar="BENCHMARK")
    p.add_argument("--data", help="held-out conversations for perplexity (parquet/jsonl shards or builtin:english)")
    p.add_argument("--data-format", choices=("finevision", "text"), default=None,
                   help="format of --data (default: text for builtin:english, else finevision)")
    p.add_argument("--max-samples", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--max-length", type=int, default=2048, help="token cap per perplexity sample")
    p.add_argument("--no-speed", action="store_true", help="skip the prefill/decode speed report")
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", required=True, type=Path, help="results JSON to write")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary (JSON) on stdout")
    return p


def run(args: argparse.Namespace) -> int:
    from interlace.api import evaluate
    from interlace.cli.jsonout import print_json, stdout_to_stderr

    with stdout_to_stderr(args.json):
        results = evaluate(
            args.base,
            args.pruned,
            benchmarks=args.benchmarks,
            data=args.data,
            data_format=args.data_format,
            max_samples=args.max_samples,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            max_length=args.max_length,
            speed=not args.no_speed,
            device=args.device,
            output=args.output,
            _cli=True,
        )
    print_json(results.to_wire())  # stdout is the results JSON, with or without --json
    return 0
