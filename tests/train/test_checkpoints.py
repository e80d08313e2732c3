"""Which checkpoint a restarting run resumes from: the newest COMPLETE one on disk, any run."""

from __future__ import annotations

import json
from pathlib import Path

from interlace.stages.finetune.checkpoint import (
    COMPLETE_FILE,
    STATE_FILE,
    newest_checkpoint,
    plan_fingerprint,
)
from tests.train.conftest import hand_plan


def _ckpt(root: Path, run: str, step: int, *, complete: bool = True, state: str | None = None) -> Path:
    d = root / run / f"step-{step:08d}"
    d.mkdir(parents=True)
    (d / STATE_FILE).write_text(state if state is not None else json.dumps({"step": step}))
    if complete:
        (d / COMPLETE_FILE).write_text(f"{step}\n")
    return d


def test_highest_complete_step_across_runs_wins(tmp_path: Path) -> None:
    _ckpt(tmp_path, "finetune-20260101T000000000000Z", 2)
    best = _ckpt(tmp_path, "finetune-20260101T000000000000Z", 4)
    _ckpt(tmp_path, "finetune-20260102T000000000000Z", 6, complete=False)  # died while persisting
    _ckpt(tmp_path, "finetune-20260102T000000000000Z", 3)
    _ckpt(tmp_path, "finetune-20260103T000000000000Z", 8, state="{not json")  # damaged: skipped
    assert newest_checkpoint(tmp_path) == best
    # one run's directory (spec.finetune.resume: false scans only the current run)
    assert newest_checkpoint(tmp_path / "finetune-20260102T000000000000Z").name == "step-00000003"
    assert newest_checkpoint(tmp_path / "nothing-here") is None


def test_plan_fingerprint_follows_drop_and_finetune() -> None:
    a = hand_plan()
    b = a.model_copy(update={"anchor": a.anchor, "windows": []})
    assert plan_fingerprint(a) == plan_fingerprint(b)  # windows/anchors do not change the weights
    c = a.model_copy(update={"finetune": [1], "frozen": [0, 4, 7]})
    assert plan_fingerprint(a) != plan_fingerprint(c)


def _conversations(root: Path, sizes: dict[str, int]) -> Path:
    for name, n in sizes.items():
        (root / name).mkdir(parents=True)
        rows = [json.dumps({"texts": [{"user": f"{name} {i}?", "assistant": "yes"}]}) for i in range(n)]
        (root / name / "train.jsonl").write_text("\n".join(rows) + "\n")
    return root


def test_a_resume_with_another_data_plan_is_refused(tmp_path: Path) -> None:
    """Checkpoints record the data plan's fingerprint (rows and order); a resume whose
    spec.finetune.data makes another plan (seed, sampling, maxSamples) is refused, naming the field,
    both in the driver (before Ray starts) and when a worker loads the checkpoint."""
    import pytest

    from interlace.data.dataplan import build_plan
    from interlace.errors import InterlaceError
    from interlace.schema.spec import DataSpec, FinetuneSpec
    from interlace.stages.finetune.checkpoint import check_resumable, run_fingerprint
    from interlace.stages.finetune.driver import finetune

    src = _conversations(tmp_path / "data", {"a": 120, "b": 80})
    data = DataSpec(path=str(src), fraction=0.5, seed=0)
    fp = build_plan(data).finetune_fingerprint()
    assert build_plan(data, calibration=30).finetune_fingerprint() == fp  # calibration rows: not training's
    others = {
        "seed": data.model_copy(update={"seed": 1}),
        "sampling": data.model_copy(update={"sampling": "random"}),
        "maxSamples": data.model_copy(update={"max_samples": 50}),
    }
    assert len({fp, *(build_plan(d).finetune_fingerprint() for d in others.values())}) == 4

    plan = hand_plan()
    layers = run_fingerprint(plan, None)
    ckpt = _ckpt(
        tmp_path / "out" / "checkpoints", "finetune-20260101T000000000000Z", 2,
        state=json.dumps({"step": 2, "plan_fingerprint": layers, "data_fingerprint": fp}),
    )
    saved = json.loads((ckpt / STATE_FILE).read_text())
    check_resumable(ckpt, saved, layers, fp)  # the same plan resumes
    check_resumable(ckpt, {"plan_fingerprint": layers}, layers, fp)  # a checkpoint from before: as before
    with pytest.raises(InterlaceError, match=r"different layer plan"):
        check_resumable(ckpt, saved, "0" * 16, fp)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    for other in others.values():
        new_fp = build_plan(other).finetune_fingerprint()
        with pytest.raises(InterlaceError, match=rf"trained on data plan {fp}, this run has data plan {new_fp}: "
                           r"spec\.finetune\.data changed \(seed, sampling, fraction, subsets or maxSamples"):
            check_resumable(ckpt, saved, layers, new_fp)
        with pytest.raises(InterlaceError, match=r"spec\.finetune\.data changed"):
            finetune(model_dir, plan, FinetuneSpec(data=other), output_dir=tmp_path / "out", max_steps=1)
    with pytest.raises(InterlaceError, match=r"this run has no data plan \(a sample stream\)"):
        check_resumable(ckpt, saved, layers, "")
