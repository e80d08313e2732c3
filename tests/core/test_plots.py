"""The heatmap PNG: written atomically, real image of the expected layout, with and without a plan."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from interlace.stages.analyze.heatmap import heatmap
from interlace.stages.analyze.scores import LayerScores
from interlace.stages.plan import select_layers


def test_heatmap_with_plan(tmp_path: Path) -> None:
    L = 12
    scores = LayerScores(
        num_layers=L,
        scores={k: [0.5 + 0.03 * i + 0.01 * k for i in range(L - k)] for k in (1, 2, 3)},
    )
    plan = select_layers(scores, n_drop=3, strategy="interlace")
    out = heatmap(scores, tmp_path / "sub" / "h.png", plan=plan)
    img = Image.open(out)
    assert img.format == "PNG" and img.width > img.height > 100
    plain = heatmap(scores, tmp_path / "plain.png")
    assert Image.open(plain).size[0] == img.size[0]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["h.png"]  # no temp files left
