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
