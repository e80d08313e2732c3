"""`interlace analyze`: pack-1/2/3 layer similarity scores of a model on calibration data.

    interlace analyze --model DIR --data PATH --samples N --batch-size B --output scores.json
                      [--heatmap scores.png] [--max-length 2048] [--format finevision|text]

Writes `{"num_layers": L, "scores": {"1": [...], "2": [...], "3": [...]}, "meta": {...}}` (atomically).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "analyze",
        help="layer similarity scores (pack-1/2/3 cosine) on calibration data",
        description="Run the model on calibration samples (first user turn, chat template) and write the "
        "pack-k cosine similarity of every window of k consecutive decoder layers.",
    )
    p.add_argument("--model", required=True, help="model directory, hub id or builtin:<name>")
    p.add_argument(
        "--data", required=True, help="calibration data: directory/glob of shards, hub id or builtin:english"
    )
    p.add_argument(
        "--format",
        choices=("finevision", "text"),
        default="finevision",
        help="row schema of --data (default finevision)",
    )
    p.add_argument("--samples", type=int, default=256, help="number of calibration samples (default 256)")
    p.add_argument("--batch-size", type=int, default=4, help="batch size (default 4)")
    p.add_argument("--max-length", type=int, default=2048, help="max tokens per sample (default 2048)")
    p.add_argument("--max-window", type=int, default=3, help="largest window size k (default 3)")
    p.add_argument("--output", required=True, type=Path, help="scores JSON to write")
    p.add_argument("--heatmap", type=Path, help="also write a heatmap PNG here")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    p.add_argument("--json", action="store_true", help="print a machine-readable summary (JSON) on stdout")
    return p


def run(args: argparse.Namespace) -> int:
    from interlace.api import analyze
    from interlace.cli.jsonout import print_json, stdout_to_stderr

    with stdout_to_stderr(args.json):
        scores = analyze(
            args.model,
            args.data,
            samples=args.samples,
            batch_size=args.batch_size,
            max_length=args.max_length,
            max_window=args.max_window,
            data_format=args.format,
            output=args.output,
            heatmap=args.heatmap,
            device=args.device,
            dtype=args.dtype,
            _cli=True,
        )
    if args.json:
        print_json(
            {
                "output": str(args.output),
                "heatmap": str(args.heatmap) if args.heatmap else None,
                "numLayers": scores.num_layers,
                "numSamples": scores.meta.get("num_samples"),
                "numTokens": scores.meta.get("num_tokens"),
                "scores": {str(k): v for k, v in sorted(scores.scores.items())},
            }
        )
    print(
        f"analyzed {scores.meta['num_samples']} samples ({scores.meta['num_tokens']} tokens) of "
        f"{scores.num_layers} layers -> {args.output}",
        file=sys.stderr,
    )
    return 0
