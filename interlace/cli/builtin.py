"""`interlace builtin NAME [NAME ...]`: build the named builtins into the cache, print their directories.

The explicit step for the models trained here (`builtin:easyvqa-vl`, minutes of CPU; `-tiny`, seconds):
a job or `load_model` only looks them up and refuses, naming this command, while they are not built.
Any other builtin (`builtin:smollm2-135m`, the data) is built the way its first use builds it.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "builtin",
        help="build builtin models and data into the cache (trains builtin:easyvqa-vl)",
        description="Build the named builtins into the interlace cache and print one directory per name. "
        "builtin:easyvqa-vl is trained here (CPU, minutes) and is only built by this command.",
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="e.g. builtin:easyvqa-vl, builtin:smollm2-135m")
    return p


def run(args: argparse.Namespace) -> int:
    from interlace import builtin
    from interlace.builtin.easyvqa_vl import RECIPES

    for name in args.names:
        key = name.strip()
        if key.removeprefix("builtin:") in RECIPES:
            from interlace.models.builtin_vlm import ensure_built

            path = ensure_built(key)
        else:
            path = builtin.resolve_source(key)
        print(f"{key}\t{path}")
    return 0
