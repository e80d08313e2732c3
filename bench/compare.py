"""Run one benchmark script for the working tree and for an earlier git revision, side by side.

    python bench/compare.py --baseline REV [--rounds 2] -- bench/finetune.py --steps 6

Both versions run the SAME script name with the same arguments, each from its own tree (the
revision is unpacked with `git archive` into a temporary directory; the child's working directory
and PYTHONPATH point at that tree, so its own `interlace` is imported), alternating round by round
so machine load hits both alike. Each run writes its figures with `--json`; every numeric figure
the two have in common is printed with current / baseline (the median over the rounds).
Used for "no worse than before" checks after a restructuring (docs/architecture.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def checkout(rev: str) -> Path:
    out = Path(tempfile.mkdtemp(prefix="interlace-compare-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def flatten(d: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a JSON document as dotted keys."""
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, bool):
        pass
    elif isinstance(d, int | float):
        out[prefix.rstrip(".")] = float(d)
    return out


def run(tree: Path, script: list[str], label: str, i: int) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(prefix=f"interlace-compare-{label}-")) / "figures.json"
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{tree / 'operator'}")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, *script, "--json", str(out)], cwd=tree, env=env,
                          capture_output=True, text=True)
    wall = time.monotonic() - t0
    print(f"--- {label}, round {i + 1}: exit {proc.returncode}, {wall:.0f} s", flush=True)
    print("\n".join(proc.stdout.strip().splitlines()[-12:]), flush=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{label} failed")
    return flatten(json.loads(out.read_text()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, metavar="REV")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("script", nargs=argparse.REMAINDER, help="-- bench/<name>.py [its arguments]")
    args = ap.parse_args()
    script = [a for a in args.script if a != "--"] if args.script[:1] == ["--"] else args.script
    if not script:
        ap.error("give the benchmark after --")
    trees = {"baseline": checkout(args.baseline), "current": REPO}
    figures: dict[str, list[dict[str, float]]] = {"baseline": [], "current": []}
    for i in range(args.rounds):
        for label, tree in trees.items():
            figures[label].append(run(tree, script, label, i))
    common = sorted(set.intersection(*(set(f) for runs in figures.values() for f in runs)))
    print(f"\n{' '.join(script)}: current (working tree) vs baseline {args.baseline}, median of {args.rounds} "
          "alternating round(s)")
    print(f"{'figure':<48} {'baseline':>12} {'current':>12} {'current/baseline':>17}")
    for key in common:
        old = statistics.median(r[key] for r in figures["baseline"])
        cur = statistics.median(r[key] for r in figures["current"])
        ratio = f"{cur / old:.3f}x" if old else "-"
        print(f"{key:<48} {old:>12.4g} {cur:>12.4g} {ratio:>17}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
