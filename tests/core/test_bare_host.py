"""bench/gpu.py runs on a bare GPU host (no Ray); the analysis, planning, surgery and freezing pieces
it uses also work without pydantic and agree with the spec-backed versions. (The library's training
step and data encoding, which the bench's finetune step calls, import interlace.schema.spec, so the
bench itself needs pydantic.)"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from interlace.schema.spec import DeepstackPolicy
from interlace.stages.analyze.scores import LayerScores
from interlace.stages.plan import interlace_layers, select_layers
from interlace.stages.prune import DEEPSTACK_POLICIES

REPO = Path(__file__).resolve().parents[2]
# Make `import pydantic` / `import ray` fail in the child, as on a host that lacks them.
BLOCK = "import sys; sys.modules['pydantic'] = None; sys.modules['ray'] = None; "
NO_RAY = "import sys; sys.modules['ray'] = None; "


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


def test_bench_gpu_tiny_runs_without_ray(tmp_path: Path) -> None:
    """`python bench/gpu.py --device cpu --tiny`: the same code as on a GPU (the library's finetune step
    under a world-1 process group, gloo instead of NCCL, micro-batches with images), tiny configs."""
    out = tmp_path / "gpu.json"
    code = NO_RAY + (
        "import runpy; sys.argv = ['bench/gpu.py', '--device', 'cpu', '--tiny', '--json', sys.argv[1]]; "
        "runpy.run_path('bench/gpu.py', run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "process group gloo world 1" in proc.stdout
    for label in ("analysis / plain forward", "prefill speedup pruned / base", "decode speedup pruned / base",
                  "step time ratio INTERLACE / full", "structural FLOP limit of that ratio",
                  "INTERLACE: tokens/s", "full finetune: MFU", "INTERLACE: peak GPU memory",
                  "INTERLACE: loss (last step)", "INTERLACE: collectives in one step", "micro-batch: images"):
        assert label in proc.stdout, label
    results = json.loads(out.read_text())
    assert [r["model"] for r in results] == ["tiny-8B-shape", "tiny-4B-shape"]
    for r, n_drop in zip(results, (3, 2), strict=True):
        assert len(r["plan"]["drop"]) == n_drop
        assert not set(r["plan"]["drop"]) & {0, 1, 2}  # DeepStack receivers protected
        assert r["analysis_s"] > 0 and r["plain_forward_s"] > 0
        batch = r["train_batch"]
        assert batch["images"] == 2 * 3 and batch["image_tokens"] > 0 and batch["labelled_tokens"] > 0
        assert batch["pixel_values_shape"][0] > 0  # the vision tower's input is in the step
        inter, full = r["finetune"]["interlace"], r["finetune"]["full"]
        for run in (inter, full):
            assert run["step_s"] > 0 and math.isfinite(run["loss"]) and run["loss"] > 0
            # the DDP gradient all-reduce and the step's two count/loss reductions reached gloo
            assert run["collectives_per_step"].get("gloo:all_reduce", 0) >= 3, run["collectives_per_step"]
        assert inter["trainable_params"] < full["trainable_params"]
        assert inter["grad_optimizer_bytes"] < full["grad_optimizer_bytes"]
        assert 0 < r["structural_limit"] < 1
        assert r["params"]["pruned"] < r["params"]["base"]
        assert all(v > 0 for side in r["speed"].values() for v in side.values())


def _bench_gpu() -> Any:
    import importlib.util

    mod = sys.modules.get("bench_gpu")  # the name tests/core/test_placement_checks.py loads it under
    if mod is None:
        spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "bench" / "gpu.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bench_gpu"] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
    return mod


def test_bench_gpu_tells_hopper_parts_apart() -> None:
    mod = _bench_gpu()
    gib = 2**30
    cases = [
        (("NVIDIA H100 80GB HBM3", 80 * gib, 132, 700.0), "H100 SXM"),
        (("NVIDIA H100 PCIe", 80 * gib, 114, 350.0), "H100 PCIe"),
        (("NVIDIA H100 PCIe", 80 * gib, None, None), "H100 PCIe"),
        (("NVIDIA H100", 80 * gib, 114, None), "H100 PCIe"),  # the SM count gives the PCIe card away
        (("NVIDIA H100 NVL", 94 * gib, 132, 400.0), "H100 NVL"),
        (("NVIDIA H100", 80 * gib, 132, 700.0), "H100 SXM"),
        (("NVIDIA H100", 80 * gib, 132, None), None),  # no evidence for SXM: no peak, never SXM's
        (("NVIDIA H100", 80 * gib, 132, 350.0), None),
        (("NVIDIA H200", 141 * gib, 132, 700.0), "H200 SXM"),
        (("NVIDIA H200 NVL", 141 * gib, 132, 600.0), "H200 NVL"),
        (("NVIDIA H200", 141 * gib, 132, 600.0), "H200 NVL"),
    ]
    for args, want in cases:
        got, why = mod.identify_gpu(*args)
        assert got == want, (args, got, why)
    assert mod.PEAK_TFLOPS["H100 PCIe"] == 756.0 and mod.PEAK_TFLOPS["H100 SXM"] == 989.0
    assert mod.PEAK_TFLOPS["H100 NVL"] == 835.0 and mod.PEAK_TFLOPS["H200 SXM"] == 989.0
