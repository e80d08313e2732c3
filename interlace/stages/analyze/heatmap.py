"""Heatmap of the pack-k similarity scores (rows k = 1..K, columns = start layer), optionally with a
plan drawn on (dropped layers marked D, finetuned F, anchors A). matplotlib with the Agg backend, so
it works on a headless job pod."""

from __future__ import annotations

import io
from pathlib import Path

from interlace.artifacts import atomic_write_bytes
from interlace.schema.spec import LayerPlan
from interlace.stages.analyze.scores import LayerScores


def heatmap(
    scores: LayerScores, path: str | Path, *, plan: LayerPlan | None = None, title: str | None = None
) -> Path:
    """Write a PNG heatmap of `scores` to `path` (atomically) and return the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    L = scores.num_layers
    ks = sorted(scores.scores)
    grid = np.full((len(ks), L), np.nan)
    for r, k in enumerate(ks):
        grid[r, : len(scores.scores[k])] = scores.scores[k]

    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * L + 2.5), 1.1 * len(ks) + 1.8), dpi=110)
    try:
        cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
        im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, interpolation="nearest")
        ax.set_yticks(range(len(ks)), [f"pack-{k}" for k in ks])
        step = 1 if L <= 40 else 2
        ax.set_xticks(range(0, L, step), [str(i) for i in range(0, L, step)], fontsize=7)
        ax.set_xlabel("start layer i (window i .. i+k-1)")
        fig.colorbar(im, ax=ax, label="mean cos(h_in[i], h_out[i+k-1])", fraction=0.04, pad=0.02)
        if plan is not None:
            marks = (
                {i: "D" for i in plan.drop} | {i: "F" for i in plan.finetune} | {i: "A" for i in plan.anchor}
            )
            for i, m in marks.items():
                color = {"D": "#d62728", "F": "#ff7f0e", "A": "#1f77b4"}[m]
                ax.text(i, -0.62, m, ha="center", va="bottom", fontsize=8, color=color, fontweight="bold")
            ax.set_ylim(len(ks) - 0.5, -0.95)
        heading = title or f"layer similarity ({L} decoder layers)"
        if plan is not None:
            heading += f" - {plan.strategy}: drop {plan.drop}"
        ax.set_title(heading, fontsize=9)
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png")
        out = atomic_write_bytes(path, png.getvalue())
    finally:
        plt.close(fig)
    return out
