"""Choosing which decoder layers to drop, finetune and keep frozen (method section 2, plus baselines).

Pure Python on purpose: `interlace plan` imports this module and must not pay for torch.

Input is a `LayerScores`: for each window size k, a list of L-k scores where entry i is the mean
cosine similarity cos(h[i], h[i+k]) between the input of layer i and the output of layer i+k-1
(higher = the window changes the residual stream less = more redundant). Windows run i = 0..L-k-1 as
in the reference, so the last decoder layer is never a candidate for dropping by any strategy.

Every strategy returns a `LayerPlan` whose drop/finetune/anchor/frozen lists partition all layers.
The exact semantics of every strategy are in docs/method.md; the short version:

* ``interlace``: greedy non-overlapping triplets by pack-3, drop the first-two layer with the higher
  pack-1 (ties: the first), finetune the other, the third is a frozen anchor; then non-overlapping
  pairs by pack-2 (same rule, no anchor) if not enough triplets fit.
* ``oa``: the same windows, but always drop the first layer and finetune the second.
* ``tn``: layers ranked by pack-1; each dropped layer j forms a non-overlapping pair with j+1, which is
  finetuned.
* ``shortgpt``: drop the layers with the lowest Block Influence 1 - pack-1.
* ``consecutive``: the most redundant block of n consecutive layers.
* ``random``: n layers drawn with a seeded RNG.

For shortgpt/consecutive/random, the finetuned layer is the surviving layer right after each maximal
run of dropped layers (it always exists, since the last layer is never dropped), so interleaved
finetuning applies to every strategy.

Protected layers are never dropped, but may be finetuned or serve as anchors (protection is about
keeping a layer, not about freezing it).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interlace.artifacts import atomic_write_json
from interlace.errors import InterlaceError
from interlace.schema.limits import max_drop
from interlace.stages.analyze.scores import LayerScores

# The spec models (pydantic) load only where a LayerPlan is made, so LayerScores, the analysis and
# interlace_layers also work without pydantic (bench/gpu.py on a bare GPU host).
if TYPE_CHECKING:
    from interlace.schema.spec import LayerPlan, Strategy

# ------------------------------------------------------------------------------------------ plans


def save_plan(plan: LayerPlan, path: str | Path) -> Path:
    """Write plan.json: the one writer of the plan file, whichever command makes it (`interlace plan`,
    `interlace run`, the pruned checkpoint's interlace_plan.json).

    The API's own field names, as in a PruneJob's status.plan (camelCase: numLayers, strategy, ratio,
    drop, finetune, anchor, frozen, windows, scoresSummary; unset optional fields left out), 2-space
    indented with a final newline. `load_plan` also reads the snake_case files of older versions.
    """
    return atomic_write_json(path, plan.to_wire())


def load_plan(path: str | Path, *, num_layers: int | None = None) -> LayerPlan:
    """Read plan.json (snake_case or camelCase keys); InterlaceError naming the problem if invalid."""
    from pydantic import ValidationError

    from interlace.schema.spec import LayerPlan, format_validation_error

    p = Path(path)
    if not p.is_file():
        raise InterlaceError(f"{p}: no such plan file (run `interlace plan` first)")
    try:
        doc = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InterlaceError(f"{p}: not valid JSON: {err}") from None
    try:
        plan = LayerPlan.model_validate(doc)
    except ValidationError as err:
        raise InterlaceError(f"{p}: " + format_validation_error(err, "plan.").replace("\n", "; ")) from None
    if num_layers is not None and plan.num_layers != num_layers:
        raise InterlaceError(
            f"{p}: plan is for a {plan.num_layers}-layer model but the model has {num_layers} decoder layers"
        )
    return plan



def n_drop_for_ratio(num_layers: int, ratio: float) -> int:
    """n_drop = floor(L * r), with a clear error when that drops nothing or everything."""
    if not isinstance(ratio, int | float) or not math.isfinite(ratio) or ratio <= 0 or ratio >= 1:
        raise InterlaceError(f"ratio must be in (0, 1), got {ratio}")
    n = math.floor(num_layers * ratio)
    if n < 1:
        raise InterlaceError(
            f"ratio {ratio} drops no layer of a {num_layers}-layer model (floor({num_layers} * {ratio}) = 0); "
            f"use a ratio >= {1 / num_layers:.4f}"
        )
    if n > max_drop(num_layers):
        raise InterlaceError(
            f"ratio {ratio} would drop {n} of {num_layers} layers; too large: at most {max_drop(num_layers)} can go"
        )
    return n


def protected_layers(pruning: Any, parts: Any = None, *, num_layers: int | None = None) -> list[int]:
    """The layers a PruningSpec protects: protectedLayers, plus the DeepStack receivers under `protect`.

    `parts` is an `interlace.models.load.ModelParts` (or anything with `deepstack_layers`); `None` for
    callers that have no model at hand.
    """
    out = set(int(i) for i in getattr(pruning, "protected_layers", []) or [])
    policy = str(getattr(pruning, "deepstack_policy", "protect"))
    if parts is not None and policy in ("protect", "DeepstackPolicy.PROTECT"):
        out |= set(getattr(parts, "deepstack_layers", []) or [])
    if num_layers is not None:
        bad = sorted(i for i in out if not 0 <= i < num_layers)
        if bad:
            raise InterlaceError(
                f"spec.pruning.protectedLayers: {bad} outside 0..{num_layers - 1} for this model"
            )
    return sorted(out)


# ------------------------------------------------------------------------------------- strategies


def _ranked(values: Sequence[float]) -> list[int]:
    """Indices by value, highest first; ties broken by the lower index (deterministic)."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def _after_runs(dropped: Iterable[int], num_layers: int) -> list[int]:
    """The surviving layer right after each maximal run of dropped layers."""
    d = set(dropped)
    return sorted({i + 1 for i in d if i + 1 not in d and i + 1 < num_layers})


class _Builder:
    def __init__(self, num_layers: int, protected: set[int]) -> None:
        self.num_layers = num_layers
        self.protected = protected
        self.used: set[int] = set()
        self.drop: list[int] = []
        self.finetune: list[int] = []
        self.anchor: list[int] = []
        self.windows: list[list[int]] = []

    def free(self, layers: Iterable[int]) -> bool:
        return not any(i in self.used for i in layers)

    def accept(self, window: list[int], drop: int, finetune: int | None, anchor: int | None) -> None:
        self.used.update(window)
        self.windows.append(window)
        self.drop.append(drop)
        if finetune is not None:
            self.finetune.append(finetune)
        if anchor is not None:
            self.anchor.append(anchor)


def _pick_drop(
    strategy: Strategy, a: int, b: int, s1: Sequence[float] | None, protected: set[int]
) -> int | None:
    """Which of a window's first two layers (a, b = a+1) to drop, or None if the window is unusable."""
    if strategy == "oa":  # Strategy.OA (a StrEnum: equal to its value)
        return None if a in protected else a
    assert s1 is not None
    first, second = (a, b) if s1[a] >= s1[b] else (b, a)  # higher pack-1 is dropped; ties: a
    if first not in protected:
        return first
    if second not in protected:
        return second
    return None


def _windowed(scores: LayerScores, n_drop: int, strategy: Strategy, protected: set[int]) -> _Builder:
    """interlace / oa: triplets by pack-3, then pairs by pack-2."""
    L = scores.num_layers
    scores.require(3, 2) if strategy == "oa" else scores.require(1, 2, 3)
    s1 = scores.scores.get(1)
    b = _Builder(L, protected)
    for size in (3, 2):
        if len(b.drop) >= n_drop:
            break
        for i in _ranked(scores.scores[size]):
            if len(b.drop) >= n_drop:
                break
            window = list(range(i, i + size))
            if not b.free(window):
                continue
            d = _pick_drop(strategy, i, i + 1, s1, protected)
            if d is None:
                continue
            tune = i + 1 if d == i else i
            b.accept(window, d, tune, i + 2 if size == 3 else None)
    return b


def _tn(scores: LayerScores, n_drop: int, protected: set[int]) -> _Builder:
    scores.require(1)
    b = _Builder(scores.num_layers, protected)
    for j in _ranked(scores.scores[1]):
        if len(b.drop) >= n_drop:
            break
        if j in protected or not b.free((j, j + 1)):
            continue
        b.accept([j, j + 1], j, j + 1, None)
    return b


def _candidates(num_layers: int, protected: set[int]) -> list[int]:
    return [i for i in range(num_layers - 1) if i not in protected]


def _shortgpt(scores: LayerScores, n_drop: int, protected: set[int]) -> _Builder:
    scores.require(1)
    b = _Builder(scores.num_layers, protected)
    # Block Influence BI_i = 1 - cos(h_i, h_{i+1}); lowest BI = highest pack-1.
    ranked = [i for i in _ranked(scores.scores[1]) if i not in protected][:n_drop]
    for i in sorted(ranked):
        b.drop.append(i)
        b.windows.append([i])
    return b


def _consecutive(scores: LayerScores, n_drop: int, protected: set[int]) -> _Builder:
    scores.require(1)
    L = scores.num_layers
    s1 = scores.scores[1]
    exact = scores.scores.get(n_drop)
    best: tuple[float, int] | None = None
    for s in range(0, L - n_drop):  # block s..s+n-1, all <= L-2
        block = range(s, s + n_drop)
        if any(i in protected for i in block):
            continue
        # With the block's own pack-n score available, use it (angular distance of the block, as in
        # Gromov et al. 2024); otherwise the mean pack-1 of its layers.
        value = exact[s] if exact is not None else sum(s1[i] for i in block) / n_drop
        if best is None or value > best[0]:
            best = (value, s)
    b = _Builder(L, protected)
    if best is not None:
        s = best[1]
        b.drop = list(range(s, s + n_drop))
        b.windows.append(list(range(s, s + n_drop)))
    return b


def _random(num_layers: int, n_drop: int, protected: set[int], seed: int) -> _Builder:
    b = _Builder(num_layers, protected)
    cands = _candidates(num_layers, protected)
    if len(cands) >= n_drop:
        picked = sorted(random.Random(seed).sample(cands, n_drop))
        b.drop = picked
        b.windows = [[i] for i in picked]
    return b


def select_layers(
    scores: LayerScores | None,
    *,
    n_drop: int,
    strategy: Strategy | str,
    protected: Iterable[int] = (),
    seed: int = 0,
    ratio: float | None = None,
    num_layers: int | None = None,
) -> LayerPlan:
    """Choose the layers to drop/finetune. See the module docstring and docs/method.md.

    `scores` may be None only for the random strategy, which then needs `num_layers`.
    Raises InterlaceError when n_drop cannot be met (too large, or blocked by protected layers).
    """
    from interlace.schema.spec import PLANNING_STRATEGIES, LayerPlan, Strategy

    try:
        strat = Strategy(strategy)
    except ValueError:
        names = ", ".join(s.value for s in PLANNING_STRATEGIES)
        raise InterlaceError(f"unknown strategy {strategy!r}; choose one of: {names}") from None
    if strat == Strategy.AUTO:  # a job's choice among plans of these (interlace.pipeline.auto), not a plan
        names = ", ".join(s.value for s in PLANNING_STRATEGIES)
        raise InterlaceError(f"strategy auto picks among plans, it plans none itself; choose one of: {names}")
    if scores is None:
        if strat != Strategy.RANDOM or num_layers is None:
            raise InterlaceError(f"strategy {strat.value} needs layer scores (run `interlace analyze`)")
        L = num_layers
    else:
        scores.validate()
        L = scores.num_layers
        if num_layers is not None and num_layers != L:
            raise InterlaceError(f"scores are for {L} layers but the model has {num_layers}")
    if isinstance(n_drop, bool) or not isinstance(n_drop, int) or n_drop < 1:
        raise InterlaceError(f"number of layers to drop must be a positive integer, got {n_drop!r}")
    if n_drop > max_drop(L):
        raise InterlaceError(
            f"cannot drop {n_drop} of {L} layers: at most {max_drop(L)} can go (the last layer is never a "
            "candidate and at least one other must remain)"
        )
    prot = set()
    for i in protected:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < L:
            raise InterlaceError(f"protected layer {i!r} is outside 0..{L - 1}")
        prot.add(i)

    if strat in (Strategy.INTERLACE, Strategy.OA):
        assert scores is not None
        b = _windowed(scores, n_drop, strat, prot)
    elif strat == Strategy.TN:
        assert scores is not None
        b = _tn(scores, n_drop, prot)
    elif strat == Strategy.SHORTGPT:
        assert scores is not None
        b = _shortgpt(scores, n_drop, prot)
    elif strat == Strategy.CONSECUTIVE:
        assert scores is not None
        b = _consecutive(scores, n_drop, prot)
    else:
        b = _random(L, n_drop, prot, seed)

    if len(b.drop) < n_drop:
        hint = " or lower the ratio" if not prot else ", lower the ratio or protect fewer layers"
        raise InterlaceError(
            f"strategy {strat.value} can fit only {len(b.drop)} of the {n_drop} layers to drop in a "
            f"{L}-layer model with protected layers {sorted(prot)}; use another strategy{hint}"
        )
    if strat in (Strategy.SHORTGPT, Strategy.CONSECUTIVE, Strategy.RANDOM):
        b.finetune = _after_runs(b.drop, L)
    drop, tune, anchor = sorted(b.drop), sorted(b.finetune), sorted(b.anchor)
    taken = set(drop) | set(tune) | set(anchor)
    frozen = [i for i in range(L) if i not in taken]
    summary: dict[str, float] = {"num_drop": float(len(drop)), "num_layers": float(L)}
    if scores is not None and 1 in scores.scores:
        s1 = scores.scores[1]
        summary["mean_pack1_dropped"] = sum(s1[i] for i in drop) / len(drop)
        kept = [s1[i] for i in range(L - 1) if i not in set(drop)]
        if kept:
            summary["mean_pack1_kept"] = sum(kept) / len(kept)
    return LayerPlan(
        num_layers=L,
        strategy=strat,
        ratio=ratio,
        drop=drop,
        finetune=tune,
        anchor=anchor,
        frozen=frozen,
        windows=b.windows,
        scores_summary=summary,
    )


def interlace_layers(
    scores: LayerScores, *, n_drop: int, protected: Iterable[int] = ()
) -> tuple[list[int], list[int], list[int]]:
    """(drop, finetune, anchor) of the interlace strategy as sorted plain lists.

    The same windows select_layers(strategy="interlace") accepts, without its argument checks and
    without building a LayerPlan, so it runs where the spec models' pydantic is not installed
    (bench/gpu.py on a bare GPU host). Fewer than n_drop layers come back when the windows run out.
    """
    b = _windowed(scores, n_drop, "interlace", set(protected))  # type: ignore[arg-type]
    return sorted(b.drop), sorted(b.finetune), sorted(b.anchor)
