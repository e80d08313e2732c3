"""`LayerScores`: what the analysis produces and the plan reads (the `scores.json` artifact).

Pure Python on purpose (no torch, no pydantic): `interlace plan` and bench/gpu.py on a bare GPU host
read scores without the heavy dependencies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interlace.artifacts import atomic_write_json
from interlace.errors import InterlaceError


@dataclass
class LayerScores:
    """Pack-k similarity scores of one model: scores[k][i] = mean cos(h[i], h[i+k]).

    JSON form (the `interlace analyze` output, the `interlace plan` input):
    ``{"num_layers": L, "scores": {"1": [...], "2": [...], "3": [...]}}`` plus optional metadata.
    """

    num_layers: int
    scores: dict[int, list[float]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise InterlaceError naming the problem: wrong lengths, NaN/inf, bad keys."""
        if not isinstance(self.num_layers, int) or isinstance(self.num_layers, bool) or self.num_layers < 2:
            raise InterlaceError(f"scores: num_layers must be an integer >= 2, got {self.num_layers!r}")
        if not self.scores:
            raise InterlaceError("scores: no score lists (expected keys '1', '2', '3')")
        for k, vals in self.scores.items():
            if not isinstance(k, int) or k < 1 or k >= self.num_layers:
                raise InterlaceError(
                    f"scores: window size {k!r} must be an integer in 1..{self.num_layers - 1}"
                )
            if not isinstance(vals, list):
                raise InterlaceError(f"scores['{k}'] must be a list of numbers")
            want = self.num_layers - k
            if len(vals) != want:
                raise InterlaceError(
                    f"scores['{k}'] has {len(vals)} entries, expected num_layers - {k} = {want}"
                )
            for i, v in enumerate(vals):
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise InterlaceError(f"scores['{k}'][{i}] is {v!r}, not a number")
                if not math.isfinite(v):
                    raise InterlaceError(f"scores['{k}'][{i}] is {v} (NaN/inf scores cannot be ranked)")

    def require(self, *ks: int) -> None:
        missing = [k for k in ks if k not in self.scores]
        if missing:
            names = ", ".join(f"'{k}'" for k in missing)
            raise InterlaceError(f"scores: missing window size(s) {names} needed by this strategy")

    # -------------------------------------------------------------------------------- JSON

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "num_layers": self.num_layers,
            "scores": {str(k): [float(v) for v in self.scores[k]] for k in sorted(self.scores)},
        }
        if self.meta:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_json(cls, doc: Any, *, where: str = "scores") -> LayerScores:
        if not isinstance(doc, Mapping):
            raise InterlaceError(f"{where}: expected a JSON object with num_layers and scores")
        if "num_layers" not in doc or "scores" not in doc:
            raise InterlaceError(f"{where}: needs the keys num_layers and scores")
        raw = doc["scores"]
        if not isinstance(raw, Mapping):
            raise InterlaceError(f"{where}: 'scores' must map window sizes ('1', '2', '3') to lists")
        scores: dict[int, list[float]] = {}
        for key, vals in raw.items():
            try:
                k = int(key)
            except (TypeError, ValueError):
                raise InterlaceError(f"{where}: window size {key!r} is not an integer") from None
            if not isinstance(vals, list):
                raise InterlaceError(f"{where}: scores['{key}'] must be a list of numbers")
            # JSON has no NaN, but Python's json module reads the NaN literal; None = null.
            scores[k] = [float("nan") if v is None else v for v in vals]
        meta = doc.get("meta") or {}
        try:
            return cls(num_layers=doc["num_layers"], scores=scores, meta=dict(meta))
        except InterlaceError as err:
            msg = str(err).removeprefix("scores: ")
            raise InterlaceError(f"{where}: {msg}") from None

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> LayerScores:
        p = Path(path)
        if not p.is_file():
            raise InterlaceError(f"{p}: no such scores file (run `interlace analyze` first)")
        try:
            doc = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InterlaceError(f"{p}: not valid JSON: {err}") from None
        return cls.from_json(doc, where=str(p))
