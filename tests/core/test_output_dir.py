"""Where a run keeps its artifacts locally: the output directory itself, or a staging directory under
INTERLACE_CACHE (INTERLACE_WORK_DIR wins) for remote outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from interlace.pipeline.run import resolve_output_dir


def test_local_output_is_the_directory_itself(tmp_path: Path) -> None:
    assert resolve_output_dir(str(tmp_path / "out")) == tmp_path / "out"
    assert resolve_output_dir(f"file://{tmp_path}/out") == tmp_path / "out"


def test_remote_output_stages_under_the_project_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INTERLACE_WORK_DIR", raising=False)
    monkeypatch.setenv("INTERLACE_CACHE", str(tmp_path / "cache"))
    staged = resolve_output_dir("s3://models/runs/a")
    assert staged.parent == (tmp_path / "cache" / "runs").resolve()
    assert "/" not in staged.name and "models" in staged.name and staged.name.endswith("a")

    monkeypatch.setenv("INTERLACE_WORK_DIR", str(tmp_path / "work"))
    assert resolve_output_dir("s3://models/runs/a").parent == (tmp_path / "work").resolve()
