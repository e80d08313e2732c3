"""A ratio sweep in one job vs one job per ratio: wall time, side by side in one run.

    bash hack/in-venv.sh python bench/sweep.py                      # 3 ratios of the embedded default
    bash hack/in-venv.sh python bench/sweep.py --ratios 0.1,0.2 --max-steps 3

Both arms run the same PruneJob (examples/sweep.yaml: builtin SmolLM2-135M on builtin:english, a few
finetuning steps per variant, held-out perplexity), each as a user would, through the CLI in a fresh
process (`interlace run -f`, its own local Ray cluster):

* separate: one job per ratio (`spec.pruning.ratio: r`), run one after another;
* sweep: one job with `spec.pruning.ratios: [...]`: one analysis, the variants concurrent on one
  Ray cluster (interlace.pipeline.sweep).

The arms alternate (sweep, separate, sweep, ... with --repeat) so machine load hits both alike; the
ratio is sweep / separate wall time (goal <= 0.6x for 3 ratios). It also checks that the sweep's
variants dropped as many layers as the separate runs (same scores, same plans).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def run_job(doc: dict[str, Any], out: Path) -> float:
    f = out.with_suffix(".yaml")
    f.write_text(yaml.safe_dump(doc))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "interlace.cli", "run", "-f", str(f), "--output", str(out), "--local"],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    took = time.perf_counter() - t0
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-4000:])
        raise SystemExit(f"interlace run -f {f} failed ({r.returncode})")
    return took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratios", default="0.1,0.2,0.3")
    ap.add_argument("--max-steps", type=int, default=5, help="finetuning steps per variant")
    ap.add_argument("--repeat", type=int, default=1, help="alternating rounds of both arms")
    ap.add_argument("--job", type=Path, default=REPO / "examples" / "sweep.yaml")
    args = ap.parse_args(argv)
    ratios = [float(r) for r in args.ratios.split(",")]
    base = yaml.safe_load(args.job.read_text())
    base["spec"]["finetune"]["maxSteps"] = args.max_steps
    base["spec"]["finetune"]["checkpointEverySteps"] = args.max_steps

    sweep_times: list[float] = []
    separate_times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        root = Path(tmp)
        for k in range(args.repeat):
            doc = copy.deepcopy(base)
            doc["spec"]["pruning"] = {**doc["spec"]["pruning"], "ratios": ratios}
            out = root / f"sweep-{k}"
            sweep_times.append(run_job(doc, out))
            table = json.loads((out / "results.json").read_text())["variants"]
            print(f"round {k}: sweep of {len(ratios)} ratios: {sweep_times[-1]:.1f} s", flush=True)

            total = 0.0
            for r, row in zip(ratios, table, strict=True):
                doc = copy.deepcopy(base)
                pruning = {key: v for key, v in doc["spec"]["pruning"].items() if key != "ratios"}
                doc["spec"]["pruning"] = {**pruning, "ratio": r}
                one = root / f"separate-{k}-{r:g}"
                took = run_job(doc, one)
                total += took
                plan = json.loads((one / "plan.json").read_text())
                if len(plan["drop"]) != row["layersDropped"]:
                    raise SystemExit(f"ratio {r}: separate run dropped {plan['drop']}, sweep {row['layersDropped']}")
                print(
                    f"round {k}: ratio {r:g} alone: {took:.1f} s "
                    f"(retention {row['relativePerformance']:.1f}% in the sweep)", flush=True,
                )
            separate_times.append(total)

    s, p = statistics.median(sweep_times), statistics.median(separate_times)
    print(f"\nsweep of {len(ratios)} ratios ({args.max_steps} steps each), median of {args.repeat}:")
    print(f"  one job, ratios {ratios}:  {s:8.1f} s")
    print(f"  {len(ratios)} separate jobs:        {p:8.1f} s")
    print(f"  sweep / separate:        {s / p:8.2f}x   (goal <= 0.60x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
