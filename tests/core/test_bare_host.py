"""The pieces bench/gpu.py uses work without pydantic and Ray (a bare GPU host), and agree with the
spec-backed versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from interlace.schema.spec import DeepstackPolicy
from interlace.stages.analyze.scores import LayerScores
from interlace.stages.plan import interlace_layers, select_layers
from interlace.stages.prune import DEEPSTACK_POLICIES

REPO = Path(__file__).resolve().parents[2]
# Make `import pydantic` / `import ray` fail in the child, as on a host that lacks them.
BLOCK = "import sys; sys.modules['pydantic'] = None; sys.modules['ray'] = None; "


def test_deepstack_policies_match_the_spec_enum() -> None:
    assert tuple(p.value for p in DeepstackPolicy) == DEEPSTACK_POLICIES


def test_interlace_layers_equals_select_layers() -> None:
    L = 12
    s1 = [0.1 * ((7 * i) % 11) for i in range(L - 1)]
    s2 = [0.1 * ((5 * i) % 9) for i in range(L - 2)]
    s3 = [0.1 * ((3 * i) % 8) for i in range(L - 3)]
    scores = LayerScores(num_layers=L, scores={1: s1, 2: s2, 3: s3})
    for n_drop, protected in ((3, ()), (2, (0, 1, 2))):
        plan = select_layers(scores, n_drop=n_drop, strategy="interlace", protected=protected)
        assert interlace_layers(scores, n_drop=n_drop, protected=protected) == (plan.drop, plan.finetune, plan.anchor)


def test_library_imports_without_pydantic_or_ray() -> None:
    code = BLOCK + (
        "import interlace.stages.analyze.similarity, interlace.runtime.costs, interlace.stages.finetune.freeze, interlace.models.load, "
        "interlace.stages.plan, interlace.stages.prune; print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


def test_bench_gpu_tiny_runs_without_pydantic_or_ray(tmp_path: Path) -> None:
    """`python bench/gpu.py --tiny`: the same code as on a GPU, on CPU with tiny configs."""
    out = tmp_path / "gpu.json"
    code = BLOCK + (
        "import runpy; sys.argv = ['bench/gpu.py', '--tiny', '--json', sys.argv[1]]; "
        "runpy.run_path('bench/gpu.py', run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for label in ("analysis / plain forward", "prefill speedup pruned / base", "decode speedup pruned / base",
                  "step time ratio INTERLACE / full", "structural FLOP limit of that ratio",
                  "INTERLACE: tokens/s", "full finetune: MFU", "INTERLACE: peak GPU memory"):
        assert label in proc.stdout, label
    results = json.loads(out.read_text())
    assert [r["model"] for r in results] == ["tiny-8B-shape", "tiny-4B-shape"]
    for r, n_drop in zip(results, (3, 2), strict=True):
        assert len(r["plan"]["drop"]) == n_drop
        assert not set(r["plan"]["drop"]) & {0, 1, 2}  # DeepStack receivers protected
        assert r["analysis_s"] > 0 and r["plain_forward_s"] > 0
        inter, full = r["finetune"]["interlace"], r["finetune"]["full"]
        assert inter["step_s"] > 0 and full["step_s"] > 0
        assert inter["trainable_params"] < full["trainable_params"]
        assert inter["grad_optimizer_bytes"] < full["grad_optimizer_bytes"]
        assert 0 < r["structural_limit"] < 1
        assert r["params"]["pruned"] < r["params"]["base"]
        assert all(v > 0 for side in r["speed"].values() for v in side.values())
