"""`python bench/data.py --quick`: the loader bench runs end to end on CPU (a few FineVision-schema rows,
the byte-level stand-in processor, 2 DataLoader workers) and prints its side-by-side figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_data_quick() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/data.py", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "same micro-batches as in-process: yes" in out, out
    for label in (
        "samples/s per core",
        "-> 15 workers",
        "typical (9 trainable of 27",
        "bound (forward only",
        "ratio loader / GPU",
        "padding  mean",
        "packing  mean",
    ):
        assert label in out, label
    ratios = [float(x) for x in re.findall(r"vs (?:typical|bound)\s+([0-9.]+)x", out)]
    assert len(ratios) == 2 and all(r > 0 for r in ratios), out
    shares = [float(x) for x in re.findall(r"(?:padding|packing)  mean ([0-9.]+)", out)]
    assert len(shares) == 2 and all(0 <= s < 1 for s in shares), out
