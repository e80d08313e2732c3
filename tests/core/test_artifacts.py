"""Atomic artifact writes: whole files only, and the modes a plain open()/mkdir() gives (not mkstemp's 0600)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from interlace.artifacts import atomic_write_bytes, atomic_write_json, current_umask, normal_modes, temp_dir


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    mask = getattr(request, "param", 0o022)
    old = os.umask(mask)
    try:
        yield mask
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_modes_under_022(tmp_path: Path, umask: int) -> None:
    assert current_umask() == 0o022
    f = atomic_write_json(tmp_path / "new" / "doc.json", {"a": [1, 2]})
    assert f.read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    assert _mode(f) == 0o644 and _mode(f.parent) == 0o755
    d = temp_dir(tmp_path, prefix=".x.", suffix=".partial")
    assert _mode(d) == 0o755 and d.name.startswith(".x.") and d.name.endswith(".partial")


@pytest.mark.parametrize("umask", [0o027, 0o077], indirect=True)
def test_modes_follow_the_umask(tmp_path: Path, umask: int) -> None:
    assert current_umask() == umask
    assert _mode(atomic_write_bytes(tmp_path / "b.bin", b"x")) == 0o666 & ~umask
    assert _mode(temp_dir(tmp_path, prefix="d")) == 0o777 & ~umask


def test_replace_is_whole_and_leaves_no_temp_file(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "doc.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"v": object()})  # fails while serialising: the old file stays
    assert json.loads(target.read_text()) == {"v": 1}
    atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]


def test_run_artifacts_are_readable_by_others(tmp_path: Path, umask: int) -> None:
    """`interlace plan` and the heatmap: files 0644 under a 022 umask, as a shared volume needs."""
    from interlace.cli import main
    from interlace.stages.analyze.heatmap import heatmap
    from interlace.stages.analyze.scores import LayerScores
    from interlace.stages.plan import load_plan

    scores = LayerScores(num_layers=8, scores={1: [0.5] * 7, 2: [0.4] * 6, 3: [0.1, 0.2, 0.9, 0.3, 0.4]})
    s = scores.save(tmp_path / "run" / "scores.json")
    plan_path = tmp_path / "run" / "plan.json"
    assert main(["plan", "--scores", str(s), "--num-drop", "1", "--output", str(plan_path)]) == 0
    png = heatmap(scores, tmp_path / "run" / "heatmap.png", plan=load_plan(plan_path))
    for f in (s, plan_path, png):
        assert _mode(f) == 0o644, f
    assert _mode(tmp_path / "run") == 0o755
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["heatmap.png", "plan.json", "scores.json"]


def test_normal_modes_fixes_a_tree_written_private(tmp_path: Path, umask: int) -> None:
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    for f in (root / "model.safetensors", root / "sub" / "x.json"):
        f.write_text("{}")
        f.chmod(0o600)
    (root / "sub").chmod(0o700)
    root.chmod(0o700)
    normal_modes(root)
    assert [_mode(p) for p in (root, root / "sub")] == [0o755, 0o755]
    assert [_mode(p) for p in (root / "model.safetensors", root / "sub" / "x.json")] == [0o644, 0o644]
