"""`interlace publish` (in-process CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interlace.cli import main
from tests.publish.helpers import PLAN, results, same_logits, saved_pruned


def test_publish_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir, pruned, _ = saved_pruned(tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps(PLAN.to_wire()))
    (tmp_path / "results.json").write_text(json.dumps(results().to_wire()))
    dest = tmp_path / "dest"
    rc = main(["publish", "--model", str(model_dir), "--to", f"file://{dest}", "--plan", str(tmp_path / "plan.json"),
               "--results", str(tmp_path / "results.json")])
    assert rc == 0
    assert capsys.readouterr().out.strip() == str(dest / "model")
    same_logits(dest / "model", pruned)
    card = (dest / "model" / "README.md").read_text()
    assert "| Dropped layers | 2, 5 |" in card and "**85.0 %**" in card


def test_publish_command_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir, _, _ = saved_pruned(tmp_path)
    assert main(["publish", "--model", str(tmp_path), "--to", str(tmp_path / "o")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["publish", "--model", str(model_dir), "--to", "ftp://x"]) == 2
    assert "the scheme must be file://, pvc://, s3:// or hf:// (got ftp://)" in capsys.readouterr().err
    assert main(["publish", "--model", str(model_dir), "--to", "s3://b/p", "--hub-repo", "no-slash"]) == 2
    assert "repo: Value error, 'no-slash' is not a Hub repo id" in capsys.readouterr().err
    assert not (model_dir / "README.md").exists()  # nothing written before the checks passed
